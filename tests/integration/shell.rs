//! Fitting the shell: completion scripts loaded into a real bash, the man
//! page, and `NO_COLOR` on a pseudo-terminal.

use std::process::Command;

use crate::harness::*;

/// The bash completion script, as `xfer completions bash` prints it.
fn bash_script() -> tempfile::NamedTempFile {
    let out = xfer_command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &out.stdout).unwrap();
    file
}

/// What bash offers for the command line `words` (the last one being
/// completed), using the function the script registered for `xfer`,
/// called as bash's programmable completion calls it.
fn complete_in_bash(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = r#"
set -u
source "$SCRIPT"
spec=$(complete -p xfer) || { echo "no completion for xfer" >&2; exit 9; }
func=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
read -r -a COMP_WORDS <<<"$LINE"
[[ "$LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="$LINE"
COMP_POINT=${#LINE}
cur="${COMP_WORDS[COMP_CWORD]}"
prev="${COMP_WORDS[COMP_CWORD-1]}"
"$func" xfer "$cur" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", program])
        .env("SCRIPT", script)
        .env("LINE", &line)
        .output()
        .expect("bash is needed for this test");
    assert!(
        out.status.success(),
        "completing {line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_flags() {
    let script = bash_script();
    assert_eq!(complete_in_bash(script.path(), &["xfer", "re"]), ["recv"]);
    assert_eq!(complete_in_bash(script.path(), &["xfer", "sen"]), ["send"]);
    assert_eq!(complete_in_bash(script.path(), &["xfer", "ser"]), ["serve"]);
    let all = complete_in_bash(script.path(), &["xfer", ""]);
    for sub in ["send", "recv", "serve", "get", "completions", "man"] {
        assert!(all.iter().any(|w| w == sub), "no {sub} in {all:?}");
    }
    assert_eq!(
        complete_in_bash(script.path(), &["xfer", "recv", "--ov"]),
        ["--overwrite"]
    );
    assert_eq!(
        complete_in_bash(script.path(), &["xfer", "send", "--limit"]),
        ["--limit-rate"]
    );
    let shells = complete_in_bash(script.path(), &["xfer", "completions", ""]);
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        assert!(
            shells.iter().any(|w| w == shell),
            "no {shell} in {shells:?}"
        );
    }
}

#[test]
fn completions_print_for_every_shell_and_refuse_an_unknown_one() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = xfer_command()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("manifest"), "{shell}: {script}");
    }
    let out = xfer_command()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: invalid value 'tcsh'"), "{err}");
}

#[test]
fn the_man_page_is_roff_naming_every_subcommand() {
    let out = xfer_command().arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains("\n.TH xfer 1 "), "{page}");
    for needle in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH \"XFER SEND\"",
        ".SH \"XFER RECV\"",
        ".SH \"XFER COMPLETIONS\"",
        ".SH \"XFER MAN\"",
        ".SH \"EXIT STATUS\"",
        "\\-\\-limit\\-rate",
    ] {
        assert!(page.contains(needle), "no {needle:?} in the page");
    }
    // Typeset, where groff is installed: no warnings, and the words a
    // reader looks for.
    let Ok(mut groff) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-rLL=100n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return;
    };
    use std::io::Write;
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let typeset = groff.wait_with_output().unwrap();
    let warnings = String::from_utf8_lossy(&typeset.stderr);
    assert!(warnings.is_empty(), "{warnings}");
    // Bold and underline come out as overstrikes: X, backspace, X.
    let text = String::from_utf8_lossy(&typeset.stdout);
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    let text = plain;
    assert!(
        text.contains("XFER SEND") && text.contains("EXIT STATUS"),
        "{text}"
    );
}

/// Whether `text` holds a colour or style escape (SGR: ESC [ ... m).
fn has_sgr(text: &str) -> bool {
    text.match_indices("\x1b[").any(|(at, _)| {
        text[at + 2..]
            .chars()
            .find(|c| !(c.is_ascii_digit() || *c == ';'))
            == Some('m')
    })
}

/// Runs `xfer ARGS` under a pseudo-terminal (util-linux `script`), with
/// `NO_COLOR` set or not; returns everything it drew.
fn on_terminal(args: &str, no_color: bool) -> String {
    let mut command = Command::new("script");
    command
        .args([
            "-qefc",
            &format!("{} {args}", env!("CARGO_BIN_EXE_xfer")),
            "/dev/null",
        ])
        .env("XFER_CACHE_DIR", test_cache_dir())
        .env("TERM", "xterm-256color")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
    if no_color {
        command.env("NO_COLOR", "1");
    } else {
        command.env_remove("NO_COLOR");
    }
    let out = command
        .output()
        .expect("util-linux 'script' is needed for this test");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_takes_the_colour_out_of_help_and_usage_errors() {
    for args in ["--help", "send --bogus"] {
        // On a terminal, clap styles help and errors...
        let styled = on_terminal(args, false);
        assert!(has_sgr(&styled), "{args}: expected styling in {styled:?}");
        // ...and NO_COLOR turns all of it off.
        let plain = on_terminal(args, true);
        assert!(
            !has_sgr(&plain),
            "{args}: colour despite NO_COLOR: {plain:?}"
        );
        assert!(plain.contains("Usage: xfer"), "{plain:?}");
    }
}

#[test]
fn no_color_progress_bars_draw_without_colour() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let file = src.path().join("bar.bin");
    write_random(&file, 20_000_000, 8);
    let (recv, addr) = XferProcess::recv(&["--dir", dst.path().to_str().unwrap()]);
    let screen = on_terminal(&format!("send '{}' {addr}", file.display()), true);
    assert!(screen.contains("sent 1 file,"), "{screen:?}");
    // A bar was drawn (and redrawn, with cursor controls), without colour.
    assert!(screen.contains("\x1b["), "no bar drawn: {screen:?}");
    assert!(!has_sgr(&screen), "colour despite NO_COLOR: {screen:?}");
    drop(recv);
}

#[test]
fn sgr_detection_tells_colour_from_cursor_movement() {
    assert!(has_sgr("\x1b[1m\x1b[31merror:\x1b[0m"));
    assert!(has_sgr("a\x1b[mb"));
    assert!(!has_sgr("\x1b[2K\x1b[1A\rsending 10 MiB"));
    assert!(!has_sgr("plain"));
}

#[test]
fn a_reader_that_stops_early_is_no_error() {
    // `true` has exited before xfer writes: the pipe has no reader left.
    for args in ["man", "completions bash"] {
        let program = format!(
            "{{ sleep 0.3; '{}' {args}; }} | true; exit ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_xfer")
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.is_empty(), "{args}: {err}");
    }
}
