//! The closing lines of a session, for a person: what arrived, what did not
//! and why, what is kept for a resume. Read off the ledger's [`Summary`].

use indicatif::HumanBytes;

use super::line::thousands;
use crate::events::Summary;

/// How many failed files a summary names before it only counts the rest.
pub const FAILED_NAMED: usize = 10;

/// The receiver's closing line for one sender: what arrived and, when the
/// session was cut short, why and what is kept for a resume.
pub fn session_line(peer: &str, summary: &Summary, error: Option<&str>) -> String {
    let mut text = match error {
        None => format!("from {peer}: received {}", describe(summary, true)),
        Some(e) => format!(
            "from {peer}: session ended early ({e}); received {}",
            describe(summary, false)
        ),
    };
    if summary.kept_files > 0 {
        text.push_str(&format!(
            "; kept {} of {} for resume",
            HumanBytes(summary.kept_bytes),
            HumanBytes(summary.kept_of)
        ));
    }
    text
}

/// "3 of 4 files (1 already there, 1 refused), 1.50 MiB in 0.40 s (3.75 MiB/s), all verified"
pub fn describe(s: &Summary, complete: bool) -> String {
    let rate = if s.secs > 0.0 {
        s.bytes as f64 / s.secs
    } else {
        0.0
    };
    let delivered = s.delivered();
    let count = if delivered == s.offered {
        let noun = if delivered == 1 { "file" } else { "files" };
        format!("{} {noun}", thousands(delivered))
    } else {
        format!("{} of {} files", thousands(delivered), thousands(s.offered))
    };
    let notes: Vec<String> = [
        (s.skipped, "already there"),
        (s.resumed, "resumed"),
        (s.renamed, "renamed"),
        (s.refused, "refused"),
        (s.failed, "failed"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{} {what}", thousands(n)))
    .collect();
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    let verdict = if complete && s.undelivered() == 0 {
        ", all verified"
    } else {
        ""
    };
    format!(
        "{count}{notes}, {} in {:.2} s ({}/s){verdict}",
        HumanBytes(s.bytes),
        s.secs,
        HumanBytes(rate as u64)
    )
}

/// "failed: a.bin, b/c.txt and 3 more" — the files a summary counted as
/// failed, by name, so they need not be searched for in the scrollback.
pub fn failed_line(names: &[String], failed: u64) -> Option<String> {
    if failed == 0 || names.is_empty() {
        return None;
    }
    let more = failed.saturating_sub(names.len() as u64);
    let mut text = format!("failed: {}", names.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {} more", thousands(more)));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_reads_well() {
        let s = Summary {
            offered: 3,
            stored: 2,
            skipped: 1,
            bytes: 2048,
            secs: 2.0,
            ..Summary::default()
        };
        assert_eq!(
            describe(&s, true),
            "3 files (1 already there), 2.00 KiB in 2.00 s (1.00 KiB/s), all verified"
        );
        let s = Summary {
            offered: 4,
            stored: 1,
            refused: 1,
            failed: 2,
            ..Summary::default()
        };
        assert!(describe(&s, true).starts_with("1 of 4 files (1 refused, 2 failed), "));
        assert!(!describe(&s, true).contains("verified"));
    }

    #[test]
    fn resumed_and_renamed_files_are_named_by_count() {
        let s = Summary {
            offered: 3000,
            stored: 1801,
            skipped: 1199,
            resumed: 1,
            renamed: 2,
            bytes: 3 << 20,
            secs: 1.0,
            ..Summary::default()
        };
        assert_eq!(
            describe(&s, true),
            "3,000 files (1,199 already there, 1 resumed, 2 renamed), 3.00 MiB in 1.00 s (3.00 MiB/s), all verified"
        );
    }

    #[test]
    fn failed_files_are_listed_by_name_then_counted() {
        assert_eq!(failed_line(&[], 0), None);
        assert_eq!(
            failed_line(&["a.bin".into()], 1).as_deref(),
            Some("failed: a.bin")
        );
        assert_eq!(
            failed_line(&["a".into(), "b".into()], 5).as_deref(),
            Some("failed: a, b and 3 more")
        );
    }

    #[test]
    fn a_cut_session_says_what_was_kept_for_resume() {
        let s = Summary {
            offered: 1,
            kept_files: 1,
            kept_bytes: 118 << 20,
            kept_of: 1 << 30,
            ..Summary::default()
        };
        let line = session_line("10.0.0.2:5000", &s, Some("the sender was interrupted"));
        assert!(
            line.starts_with("from 10.0.0.2:5000: session ended early (the sender was interrupted); received 0 of 1 files,"),
            "{line}"
        );
        assert!(
            line.ends_with("; kept 118.00 MiB of 1.00 GiB for resume"),
            "{line}"
        );
        assert!(!line.contains("verified"), "{line}");
    }

    #[test]
    fn an_unfinished_session_is_never_all_verified() {
        let s = Summary::default();
        assert!(!describe(&s, false).contains("verified"));
    }
}
