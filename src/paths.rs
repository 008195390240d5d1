//! The only way from a path received on the wire to a path under DIR.
//!
//! A [`WirePath`] can only be built by validation, and storage accepts nothing
//! else, so an unchecked peer string can never reach the filesystem.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest component accepted, in bytes (NAME_MAX on Linux and most filesystems).
pub const MAX_COMPONENT_LEN: usize = 255;
/// Longest whole path accepted, in bytes (PATH_MAX on Linux).
pub const MAX_PATH_LEN: usize = 4096;
/// Suffix of the hidden partial files the receiver writes; names that look
/// like one are refused so a peer cannot collide with another file's partial.
pub const PARTIAL_SUFFIX: &str = ".xfer-part";
/// Suffix of the resume record kept beside each partial; reserved likewise.
pub const SIDECAR_SUFFIX: &str = ".xfer-meta";

/// A relative, `/`-separated path that is safe to join under DIR.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WirePath(String);

/// Why a name from the wire was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("drive or UNC prefix")]
    Prefix,
    #[error("empty path component")]
    EmptyComponent,
    #[error("'.' or '..' component")]
    DotComponent,
    #[error("component longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    #[error("backslash in path")]
    Backslash,
    #[error("NUL or control character in path")]
    ControlChar,
    #[error("name reserved for xfer's partial files")]
    Reserved,
}

impl WirePath {
    /// Validates a peer-supplied path. See `docs/PROTOCOL.md` for the rules.
    pub fn parse(raw: &str) -> Result<WirePath, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::ControlChar);
        }
        let bytes = raw.as_bytes();
        if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
            return Err(PathError::Prefix);
        }
        for component in raw.split('/') {
            match component {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                c if c.len() > MAX_COMPONENT_LEN => return Err(PathError::ComponentTooLong),
                c if c.starts_with('.')
                    && (c.ends_with(PARTIAL_SUFFIX) || c.ends_with(SIDECAR_SUFFIX)) =>
                {
                    return Err(PathError::Reserved)
                }
                _ => {}
            }
        }
        Ok(WirePath(raw.to_owned()))
    }

    /// The path as sent, `/`-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first; never empty.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The directory part, if any: valid too, as every prefix of a valid
    /// path ending at a component boundary is.
    pub fn parent(&self) -> Option<WirePath> {
        self.0
            .rsplit_once('/')
            .map(|(dir, _)| WirePath(dir.to_owned()))
    }

    /// This path joined under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(self.components());
        p
    }
}

impl fmt::Display for WirePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Kept while call sites move to [`crate::term`], which now owns this.
pub fn escape_for_terminal(name: &str) -> String {
    crate::term::escape(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        let long_component = "a".repeat(MAX_COMPONENT_LEN + 1);
        let long_path = vec!["d"; MAX_PATH_LEN / 2 + 1].join("/");
        let table: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("//server/share", PathError::Absolute),
            ("C:/Windows", PathError::Prefix),
            ("c:evil", PathError::Prefix),
            ("..", PathError::DotComponent),
            ("../escape", PathError::DotComponent),
            ("a/../../escape", PathError::DotComponent),
            ("a/..", PathError::DotComponent),
            (".", PathError::DotComponent),
            ("./a", PathError::DotComponent),
            ("a/./b", PathError::DotComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("..\\escape", PathError::Backslash),
            ("a\\b", PathError::Backslash),
            ("nul\0byte", PathError::ControlChar),
            ("esc\x1b[2Jclear", PathError::ControlChar),
            ("new\nline", PathError::ControlChar),
            ("del\x7f", PathError::ControlChar),
            (&long_component, PathError::ComponentTooLong),
            (&long_path, PathError::TooLong),
            (".secret.xfer-part", PathError::Reserved),
            ("d/.x.xfer-part", PathError::Reserved),
            (".x.xfer-meta", PathError::Reserved),
        ];
        for (raw, want) in table {
            assert_eq!(WirePath::parse(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn ordinary_names_are_kept() {
        for raw in [
            "a",
            "-dash.txt",
            "dir/sub/file.bin",
            "ünïcödé name with spaces.txt",
            ".hidden",
            "...",
            "a..b",
            "x.xfer-part",
            "name:with:colons",
            &"a".repeat(MAX_COMPONENT_LEN),
        ] {
            let p = WirePath::parse(raw).unwrap();
            assert_eq!(p.as_str(), raw);
        }
    }

    #[test]
    fn parts_and_joining() {
        let p = WirePath::parse("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        let parent = p.parent().unwrap();
        assert_eq!(parent.as_str(), "a/b");
        assert_eq!(parent, WirePath::parse("a/b").unwrap());
        assert_eq!(parent.parent().unwrap().as_str(), "a");
        assert_eq!(p.under(Path::new("/in")), PathBuf::from("/in/a/b/c.txt"));
        assert_eq!(WirePath::parse("c").unwrap().parent(), None);
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_stay_strictly_inside_the_root(raw in "([a-z.]{0,3}[/\\\\]?){0,6}|\\PC{0,24}") {
            if let Ok(path) = WirePath::parse(&raw) {
                let root = Path::new("/srv/inbox");
                let joined = path.under(root);
                proptest::prop_assert!(joined.starts_with(root) && joined != root);
                for c in joined.strip_prefix(root).unwrap().components() {
                    proptest::prop_assert!(matches!(c, std::path::Component::Normal(_)), "{:?} gave {:?}", raw, c);
                }
                // A parent is built without validation: it must pass it anyway.
                if let Some(parent) = path.parent() {
                    proptest::prop_assert_eq!(WirePath::parse(parent.as_str()), Ok(parent));
                }
            }
        }
    }
}
