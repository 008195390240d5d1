//! Terminal-safe text: how untrusted text (names and reasons from a peer,
//! local file names) is made safe to print, in one place.
//!
//! Two strengths, one per kind of destination:
//! - [`escape`], for a terminal, shows as `\u{..}` everything a terminal
//!   would act on or draw as nothing: control characters (C0 with ESC, CR,
//!   backspace and tab; DEL; C1), the line and paragraph separators, bidi
//!   overrides, embeddings, isolates and marks, and the other characters
//!   Unicode says to draw as nothing (zero-width spaces and joiners, word
//!   joiner, byte-order mark, soft hyphen, Hangul fillers, tag characters,
//!   ...). So text cannot move the cursor, recolour or clear the screen,
//!   retitle the window, reorder what is shown, or hide characters in a
//!   name. Variation selectors stay: they only pick a glyph (emoji), and
//!   emoji joined by a zero-width joiner show as their parts.
//! - [`escape_controls`], for a pipe or a file, escapes only the control
//!   characters and the line and paragraph separators: that is all a line
//!   reader needs for one message to stay one line a peer cannot extend
//!   with a forged one. Everything else reaches scripts byte for byte.
//!
//! [`for_stderr`] picks between them by whether stderr is a terminal.
//!
//! An escape is plain ASCII that neither function changes again, so text
//! escaped twice reads as text escaped once. Backslashes are left alone: a
//! name may imitate an escape, never perform one.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::sync::LazyLock;

/// Decided once: whether stderr is a terminal does not change while we run.
static STDERR_IS_TERMINAL: LazyLock<bool> = LazyLock::new(|| std::io::stderr().is_terminal());

/// `text` made safe for a terminal; see the module docs for what changes.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_where(text, unsafe_on_a_terminal)
}

/// `text` kept on one line for a pipe or file: only control characters and
/// line or paragraph separators are escaped.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    escape_where(text, breaks_a_line)
}

/// `text` as it should be written to stderr: [`escape`] on a terminal,
/// [`escape_controls`] elsewhere.
pub fn for_stderr(text: &str) -> Cow<'_, str> {
    if *STDERR_IS_TERMINAL {
        escape(text)
    } else {
        escape_controls(text)
    }
}

fn escape_where(text: &str, unsafe_char: fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Characters a line reader may act on: Cc (C0, DEL, C1, which hold every
/// ASCII line break and NEL) plus U+2028 and U+2029, which some readers
/// (Python's `splitlines`, JavaScript) also split on.
fn breaks_a_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

fn unsafe_on_a_terminal(c: char) -> bool {
    breaks_a_line(c) || is_bidi_control(c) || is_invisible(c)
}

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Unicode's default-ignorable code points (drawn as nothing when not
/// understood), less the variation selectors and bidi controls.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2065}'
            | '\u{206A}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (hostile text, as shown on a terminal, as written to a pipe)
    const HOSTILE: &[(&str, &str, &str)] = &[
        (
            "colour\x1b[31mred",
            "colour\\u{1b}[31mred",
            "colour\\u{1b}[31mred",
        ),
        (
            "\x1b[2J\x1b[H",
            "\\u{1b}[2J\\u{1b}[H",
            "\\u{1b}[2J\\u{1b}[H",
        ),
        (
            "title\x1b]0;pwned\x07",
            "title\\u{1b}]0;pwned\\u{7}",
            "title\\u{1b}]0;pwned\\u{7}",
        ),
        (
            "a.txt\nerror: forged",
            "a.txt\\u{a}error: forged",
            "a.txt\\u{a}error: forged",
        ),
        ("over\rwrite", "over\\u{d}write", "over\\u{d}write"),
        ("back\x08\x08up", "back\\u{8}\\u{8}up", "back\\u{8}\\u{8}up"),
        ("tab\tbed", "tab\\u{9}bed", "tab\\u{9}bed"),
        ("nul\0", "nul\\u{0}", "nul\\u{0}"),
        ("del\x7f", "del\\u{7f}", "del\\u{7f}"),
        ("c1 csi\u{9b}31m", "c1 csi\\u{9b}31m", "c1 csi\\u{9b}31m"),
        ("next\u{85}line", "next\\u{85}line", "next\\u{85}line"),
        (
            "line\u{2028}para\u{2029}",
            "line\\u{2028}para\\u{2029}",
            "line\\u{2028}para\\u{2029}",
        ),
        (
            "invoice\u{202E}fdp.exe",
            "invoice\\u{202e}fdp.exe",
            "invoice\u{202E}fdp.exe",
        ),
        (
            "\u{202A}\u{202B}\u{202C}\u{202D}",
            "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
            "\u{202A}\u{202B}\u{202C}\u{202D}",
        ),
        (
            "\u{2066}iso\u{2067}\u{2068}\u{2069}",
            "\\u{2066}iso\\u{2067}\\u{2068}\\u{2069}",
            "\u{2066}iso\u{2067}\u{2068}\u{2069}",
        ),
        (
            "marks\u{200E}\u{200F}\u{061C}",
            "marks\\u{200e}\\u{200f}\\u{61c}",
            "marks\u{200E}\u{200F}\u{061C}",
        ),
        (
            "zero\u{200B}\u{200C}\u{200D}width",
            "zero\\u{200b}\\u{200c}\\u{200d}width",
            "zero\u{200B}\u{200C}\u{200D}width",
        ),
        (
            "join\u{2060}bom\u{FEFF}",
            "join\\u{2060}bom\\u{feff}",
            "join\u{2060}bom\u{FEFF}",
        ),
        (
            "tag\u{E0001}\u{E0041}\u{E007F}",
            "tag\\u{e0001}\\u{e0041}\\u{e007f}",
            "tag\u{E0001}\u{E0041}\u{E007F}",
        ),
        ("soft\u{AD}hyphen", "soft\\u{ad}hyphen", "soft\u{AD}hyphen"),
        (
            "blank\u{3164}\u{115F}",
            "blank\\u{3164}\\u{115f}",
            "blank\u{3164}\u{115F}",
        ),
    ];

    /// Ordinary text in many scripts, unchanged everywhere.
    const ORDINARY: &[&str] = &[
        "plain name.txt",
        "café déjà vu, Straße",
        "e\u{301}te (decomposed accent, as macOS stores names)",
        "日本語のファイル 한국어 中文",
        "עברית and العربية without controls",
        "emoji 😀🚀 heart ❤\u{FE0F}",
        "  spaces\u{A0}and\u{3000}wide  ",
        "C:\\look\\u{1b}alike",
    ];

    #[test]
    fn hostile_text_is_escaped_for_terminals_and_kept_to_one_line_for_pipes() {
        for (raw, terminal, pipe) in HOSTILE {
            assert_eq!(escape(raw), *terminal, "terminal: {raw:?}");
            assert_eq!(escape_controls(raw), *pipe, "pipe: {raw:?}");
        }
    }

    #[test]
    fn ordinary_text_is_untouched_and_not_copied() {
        for raw in ORDINARY {
            assert!(
                matches!(escape(raw), Cow::Borrowed(s) if s == *raw),
                "{raw:?}"
            );
            assert!(matches!(escape_controls(raw), Cow::Borrowed(s) if s == *raw));
        }
    }

    #[test]
    fn stderr_gets_the_strength_for_what_it_is() {
        let raw = "a\u{202E}b\nc";
        let want = if std::io::stderr().is_terminal() {
            escape(raw)
        } else {
            escape_controls(raw)
        };
        assert_eq!(for_stderr(raw), want);
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_is_safe_and_escaping_again_changes_nothing(raw in "(?s).{0,24}") {
            let shown = escape(&raw);
            proptest::prop_assert!(!shown.chars().any(unsafe_on_a_terminal));
            proptest::prop_assert_eq!(&escape(&shown), &shown);
            proptest::prop_assert_eq!(&escape_controls(&shown), &shown);
            let piped = escape_controls(&raw);
            proptest::prop_assert!(!piped.chars().any(breaks_a_line));
            proptest::prop_assert_eq!(&escape(&piped), &shown);
        }
    }
}
