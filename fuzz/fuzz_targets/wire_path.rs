//! Any string as a path from the wire: validation never panics, and every
//! accepted path stays strictly inside the directory it is joined to.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use xfer::paths::WirePath;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = WirePath::parse(raw) else { return };
    let root = Path::new("/srv/inbox");
    let joined = path.under(root);
    assert!(joined.starts_with(root) && joined != root);
    for component in joined.strip_prefix(root).unwrap().components() {
        assert!(matches!(component, Component::Normal(_)), "{raw:?} gave {component:?}");
    }
});
