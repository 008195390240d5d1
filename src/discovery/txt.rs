//! The TXT record of an xfer announcement (docs/PROTOCOL.md, "Discovery"):
//!
//! | key | value |
//! | --- | --- |
//! | `txtvers` | `1`, this record's format |
//! | `role` | `recv` or `serve` |
//! | `proto` | the protocol version the peer speaks, decimal |
//! | `code` | `yes` when the peer requires a code, else `no` |
//! | `num` | with `code=yes`: the code's public number, 4 digits |
//!
//! Read leniently: unknown keys are ignored, a missing `proto` is unknown,
//! a missing `code` is `no`; only a missing or unknown `role` (or another
//! `txtvers`) rejects the record.

use super::PeerRole;
use crate::protocol::PROTOCOL_VERSION;

/// The TXT format this build writes and reads.
pub const TXT_VERSION: &str = "1";

/// What a TXT record says about its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub role: PeerRole,
    pub protocol: Option<u32>,
    pub code_required: bool,
    pub code_number: Option<u16>,
}

/// The key/value pairs to announce.
pub fn encode(role: PeerRole, code_number: Option<u16>) -> Vec<(&'static str, String)> {
    let mut pairs = vec![
        ("txtvers", TXT_VERSION.to_owned()),
        ("role", role.as_str().to_owned()),
        ("proto", PROTOCOL_VERSION.to_string()),
        (
            "code",
            if code_number.is_some() { "yes" } else { "no" }.to_owned(),
        ),
    ];
    if let Some(number) = code_number {
        pairs.push(("num", format!("{number:04}")));
    }
    pairs
}

/// Reads the keys through `get` (a key's value, if present).
pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Keys> {
    if get("txtvers").is_some_and(|v| v != TXT_VERSION) {
        return None;
    }
    let role = PeerRole::from_txt(get("role")?)?;
    let code_required = get("code") == Some("yes");
    let code_number = get("num")
        .filter(|n| n.len() == 4 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
        .filter(|_| code_required);
    Some(Keys {
        role,
        protocol: get("proto").and_then(|v| v.parse().ok()),
        code_required,
        code_number,
    })
}
