//! `--manifest FILE`: a list of every file this side saw verified, in the
//! format of GNU `sha256sum`, so `sha256sum -c FILE` checks them again.
//!
//! [`Manifest`] sits in front of the reporter ([`in_front_of`]): each
//! final [`FileReport`] that is delivered (stored, or skipped because
//! identical content was already there) and carries its SHA-256 becomes one
//! line, written before the event goes on, so a `received`/`sent` JSON
//! event never precedes its manifest line. Files that were refused or
//! failed are left out.
//!
//! Paths: on the receiver, where the file is kept, relative to DIR (`cd
//! DIR && sha256sum -c FILE`); on the sender, the file it read, relative to
//! the directory `xfer send` ran in when it lies below it (so `sha256sum
//! -c FILE` from that directory), else absolute.
//!
//! The file is written as it goes, one whole line per write, rather than
//! to a temporary file renamed at the end: a receiver serves for days, and
//! its manifest should be checkable while it runs and after a crash (a
//! crash leaves a shorter list, never a torn line in the middle). It is
//! truncated when the command starts and synced when it ends.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::events::{Event, FileReport, Observer};
use crate::hashing::to_hex;

/// What a manifest line names.
#[derive(Debug, Clone)]
pub enum Paths {
    /// The receiver: where the file is kept, relative to DIR.
    StoredAs,
    /// The sender: the file it read, relative to `base` (the working
    /// directory) when below it, else absolute.
    ReadFrom { base: PathBuf },
}

/// A `sha256sum`-format list being written.
pub struct Manifest {
    paths: Paths,
    path: PathBuf,
    out: Mutex<Output>,
}

struct Output {
    file: File,
    /// The first write that failed; the command fails with it at the end.
    error: Option<String>,
}

impl Manifest {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path, paths: Paths) -> anyhow::Result<Arc<Manifest>> {
        let file = File::create(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot write the manifest '{}': {}",
                path.display(),
                crate::error::describe_io(&e)
            )
        })?;
        Ok(Arc::new(Manifest {
            paths,
            path: path.to_path_buf(),
            out: Mutex::new(Output { file, error: None }),
        }))
    }

    /// Syncs the list to disk; fails if any line could not be written.
    pub fn finish(&self) -> anyhow::Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| anyhow::anyhow!("the manifest's lock was poisoned"))?;
        if out.error.is_none() {
            if let Err(e) = out.file.sync_all() {
                out.error = Some(crate::error::describe_io(&e));
            }
        }
        match &out.error {
            None => Ok(()),
            Some(e) => Err(anyhow::anyhow!(
                "cannot write the manifest '{}': {e}",
                self.path.display()
            )),
        }
    }

    /// The bytes of the path a line names for `report`, if it gets one.
    fn name(&self, report: &FileReport) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        match &self.paths {
            Paths::StoredAs => report.stored_as.as_ref().map(|p| p.as_bytes().to_vec()),
            Paths::ReadFrom { base } => {
                let local = report.local.as_deref()?;
                let shown = local.strip_prefix(base).unwrap_or(local);
                Some(shown.as_os_str().as_bytes().to_vec())
            }
        }
    }

    fn record(&self, report: &FileReport) {
        if !report.outcome.delivered() {
            return;
        }
        let (Some(sha256), Some(name)) = (&report.sha256, self.name(report)) else {
            log::warn!(
                "'{}' is not in the manifest: its digest is not known here",
                report.path
            );
            return;
        };
        let line = line(&to_hex(sha256), &name);
        let Ok(mut out) = self.out.lock() else {
            return;
        };
        if out.error.is_some() {
            return;
        }
        if let Err(e) = out.file.write_all(&line) {
            let why = crate::error::describe_io(&e);
            log::warn!("cannot write the manifest '{}': {why}", self.path.display());
            out.error = Some(why);
        }
    }
}

/// `inner`, with `manifest` (when there is one) filled from the events
/// on their way to it.
pub fn in_front_of(
    manifest: Option<&Arc<Manifest>>,
    inner: Arc<dyn Observer>,
) -> Arc<dyn Observer> {
    match manifest {
        Some(manifest) => Arc::new(Listed {
            manifest: Arc::clone(manifest),
            inner,
        }),
        None => inner,
    }
}

/// An observer that writes the manifest line, then passes the event on.
struct Listed {
    manifest: Arc<Manifest>,
    inner: Arc<dyn Observer>,
}

impl Observer for Listed {
    fn event(&self, event: Event) {
        if let Event::FileDone { report, .. } = &event {
            self.manifest.record(report);
        }
        self.inner.event(event);
    }
}

/// One line as GNU `sha256sum` writes it: the digest, two spaces (text
/// mode, which is binary on POSIX), the name. A name holding a backslash,
/// newline or carriage return is written with those escaped (`\\`, `\n`,
/// `\r`) and the line begins with a backslash, which tells `sha256sum -c`
/// to unescape it.
pub fn line(hex: &str, name: &[u8]) -> Vec<u8> {
    let escape = name.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r'));
    let mut out = Vec::with_capacity(hex.len() + name.len() + 5);
    if escape {
        out.push(b'\\');
    }
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(b"  ");
    for &b in name {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Outcome;

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn a_plain_name_is_digest_two_spaces_name() {
        assert_eq!(
            line(HEX, b"photos/a b.jpg"),
            format!("{HEX}  photos/a b.jpg\n").into_bytes()
        );
    }

    #[test]
    fn backslash_newline_and_carriage_return_are_escaped_as_gnu_does() {
        assert_eq!(
            line(HEX, b"a\\b"),
            format!("\\{HEX}  a\\\\b\n").into_bytes()
        );
        assert_eq!(
            line(HEX, b"x\ny\rz"),
            format!("\\{HEX}  x\\ny\\rz\n").into_bytes()
        );
    }

    #[test]
    fn name_bytes_that_are_not_utf8_pass_through() {
        assert_eq!(
            line(HEX, b"caf\xe9"),
            [format!("{HEX}  caf").as_bytes(), b"\xe9\n"].concat()
        );
    }

    struct Nothing;
    impl Observer for Nothing {
        fn event(&self, _: Event) {}
    }

    fn report(outcome: Outcome, sha256: Option<[u8; 32]>) -> FileReport {
        FileReport {
            path: "d/a.txt".into(),
            stored_as: outcome.delivered().then(|| "d/a (1).txt".to_owned()),
            size: 5,
            sha256,
            outcome,
            digest_in_header: true,
            resumed_from: 0,
            attempts: 1,
            retried_after: None,
            local: Some("/work/src/d/a.txt".into()),
        }
    }

    fn done(report: FileReport) -> Event {
        Event::FileDone {
            session: 0,
            peer: "peer".into(),
            report,
        }
    }

    #[test]
    fn delivered_files_are_listed_and_the_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sha256");
        let manifest = Manifest::create(&path, Paths::StoredAs).unwrap();
        let observer = in_front_of(Some(&manifest), Arc::new(Nothing));
        observer.event(done(report(Outcome::Stored, Some([1; 32]))));
        observer.event(done(report(Outcome::Skipped, Some([2; 32]))));
        observer.event(done(report(Outcome::Refused("no".into()), None)));
        observer.event(done(report(Outcome::Failed("bad".into()), Some([3; 32]))));
        manifest.finish().unwrap();
        let ones = to_hex(&[1; 32]);
        let twos = to_hex(&[2; 32]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{ones}  d/a (1).txt\n{twos}  d/a (1).txt\n")
        );
    }

    #[test]
    fn the_sender_names_files_relative_to_its_directory_when_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sha256");
        let base = Paths::ReadFrom {
            base: "/work".into(),
        };
        let manifest = Manifest::create(&path, base).unwrap();
        let observer = in_front_of(Some(&manifest), Arc::new(Nothing));
        observer.event(done(report(Outcome::Stored, Some([1; 32]))));
        let mut elsewhere = report(Outcome::Stored, Some([1; 32]));
        elsewhere.local = Some("/tmp/b.txt".into());
        observer.event(done(elsewhere));
        manifest.finish().unwrap();
        let ones = to_hex(&[1; 32]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{ones}  src/d/a.txt\n{ones}  /tmp/b.txt\n")
        );
    }

    #[test]
    fn a_manifest_that_cannot_be_created_is_an_error_naming_it() {
        let e = Manifest::create(Path::new("/nonexistent-dir/m"), Paths::StoredAs)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("cannot write the manifest '/nonexistent-dir/m'"),
            "{e}"
        );
    }
}
