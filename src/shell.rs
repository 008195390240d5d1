//! What fits xfer into a shell: completion scripts (`xfer completions
//! SHELL`) and the man page (`xfer man`), both generated from the clap
//! definition in [`crate::cli`], so a new subcommand or flag appears in
//! them without anyone remembering to.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`. A reader that
/// stops early (`| head`) is no error.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let mut command = Cli::command();
    // Generated into memory first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "xfer", &mut script);
    quiet_on_closed_pipe(out.write_all(&script).and_then(|()| out.flush()))
}

/// Writes xfer(1) to `out` as roff: one page with every subcommand in a
/// section of its own (synopsis, options, examples), then the exit codes.
pub fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let mut page = Vec::new();
    write_man_page(&mut page)?;
    quiet_on_closed_pipe(
        out.write_all(&once_preamble(&page))
            .and_then(|()| out.flush()),
    )
}

/// A closed pipe means the reader had what it wanted (`xfer man | head`).
fn quiet_on_closed_pipe(written: io::Result<()>) -> io::Result<()> {
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The page, each piece as clap_mangen renders it (with its preamble).
fn write_man_page(out: &mut Vec<u8>) -> io::Result<()> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let page = Man::new(command.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    let mut exit_codes = String::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(out, ".SH \"XFER {}\"", sub.get_name().to_uppercase())?;
        let sub_page = Man::new(sub.clone());
        let mut sections = Vec::new();
        sub_page.render_description_section(&mut sections)?;
        sub_page.render_synopsis_section(&mut sections)?;
        sub_page.render_options_section(&mut sections)?;
        // Sections of the subcommand's own page become subsections here.
        out.write_all(&subsections(&sections))?;
        let after = sub.get_after_long_help().map(|h| h.to_string());
        let (examples, codes) = match after.as_deref() {
            Some(text) => match text.split_once("Exit codes:") {
                Some((examples, codes)) => (examples.trim(), codes.trim_end()),
                None => (text.trim(), ""),
            },
            None => ("", ""),
        };
        if !examples.is_empty() {
            writeln!(out, ".SS Examples")?;
            let examples = examples.strip_prefix("Examples:").unwrap_or(examples);
            preformatted(out, examples)?;
        }
        if exit_codes.is_empty() {
            exit_codes = codes.to_owned();
        }
    }
    if !exit_codes.is_empty() {
        writeln!(out, ".SH \"EXIT STATUS\"")?;
        preformatted(out, &exit_codes)?;
    }
    writeln!(out, ".SH ENVIRONMENT")?;
    writeln!(out, ".TP\nXFER_CODE\nThe code for --code, kept out of ps.")?;
    writeln!(
        out,
        ".TP\nXFER_CACHE_DIR\nWhere the sender keeps its digest cache \
         (else $XDG_CACHE_HOME/xfer, else ~/.cache/xfer)."
    )?;
    writeln!(
        out,
        ".TP\nNO_COLOR\nWhen set to anything but the empty string, no colour in any output."
    )?;
    page.render_version_section(out)
}

/// `roff` with the lines that define `\*(Aq`, which clap_mangen puts
/// before every piece it renders, kept only at the top.
fn once_preamble(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut lines = text.split_inclusive('\n');
    let mut out: String = lines.by_ref().take(2).collect();
    let preamble = out.clone();
    for line in lines {
        if !preamble.split_inclusive('\n').any(|p| p == line) {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

/// `roff` with each `.SH` turned into `.SS`, but for the description,
/// which goes first and needs no heading of its own.
fn subsections(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_end() == ".SH DESCRIPTION" {
            continue;
        }
        match line.strip_prefix(".SH ") {
            Some(rest) => {
                out.push_str(".SS ");
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// `text` as a literal block, each line kept as it is.
fn preformatted(out: &mut dyn Write, text: &str) -> io::Result<()> {
    writeln!(out, ".PP\n.nf")?;
    for line in text.lines() {
        // A leading '.' or '\'' would be a roff request; backslashes escape.
        let line = line.replace('\\', "\\e");
        if line.starts_with(['.', '\'']) {
            write!(out, "\\&")?;
        }
        writeln!(out, "{line}")?;
    }
    writeln!(out, ".fi")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> String {
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_man_page_has_a_section_per_subcommand_with_its_flags() {
        let page = page();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains("\n.TH xfer 1 "), "{page}");
        assert_eq!(page.matches(".ds Aq").count(), 2, "one preamble: {page}");
        for needle in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH \"XFER SEND\"",
            ".SH \"XFER RECV\"",
            ".SH \"XFER COMPLETIONS\"",
            ".SH \"EXIT STATUS\"",
            ".SS OPTIONS",
            ".SS Examples",
            "limit\\-rate",
            "manifest",
            "overwrite",
        ] {
            assert!(page.contains(needle), "no {needle:?} in:\n{page}");
        }
        // The exit-code table once, not once per subcommand.
        assert_eq!(page.matches("130  interrupted").count(), 1, "{page}");
    }

    #[test]
    fn completions_are_generated_for_every_shell() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            assert!(
                script.contains("recv") && script.contains("limit-rate"),
                "{shell}: {script}"
            );
        }
    }

    #[test]
    fn literal_lines_cannot_become_roff_requests() {
        let mut out = Vec::new();
        preformatted(&mut out, ".so /etc/passwd\nC:\\dir").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            ".PP\n.nf\n\\&.so /etc/passwd\nC:\\edir\n.fi\n"
        );
    }
}
