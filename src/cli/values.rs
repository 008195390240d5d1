//! Values on the command line: sizes, waits, addresses, timeouts; each
//! parsed once, with a message that says what was expected.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::DEFAULT_PORT;
use crate::error::Error;
use crate::sender::Destination;

pub(super) fn idle(secs: u64) -> Result<Duration, Error> {
    if secs == 0 {
        return Err(Error::Usage(
            "--idle-timeout must be at least 1 second".into(),
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// `--limit-rate`: 0 (or none) means no limit.
pub(super) fn rate(flag: Option<u64>) -> Option<u64> {
    flag.filter(|r| *r > 0)
}

pub(super) fn parse_wait(raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 3600.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "'{raw}' is not a number of seconds from 0.1 to 3600"
        )),
    }
}

/// A byte count: a number, possibly with a fraction, then an optional
/// unit, case-insensitive, with or without a trailing `B`: `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB` are powers of 1024 (as `ls -h`, `dd` and
/// curl read them), `KB`, `MB`, `GB`, `TB` powers of 1000, `B` or nothing
/// bytes. `1.5G` is 1610612736; a fraction of a byte is dropped.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let text = raw.trim();
    let hint = "a size is a number of bytes with an optional unit, e.g. 500M, 1.5G, 10MB";
    if text.is_empty() {
        return Err(format!("the size is empty; {hint}"));
    }
    if text.starts_with('-') {
        return Err(format!("'{text}' is negative; {hint}"));
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return Err(format!("'{text}' is not a number; {hint}"));
    }
    let multiplier: u128 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "m" | "mi" | "mib" => 1 << 20,
        "g" | "gi" | "gib" => 1 << 30,
        "t" | "ti" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{}' (K, M, G, T or KiB... are powers of 1024; \
                 KB, MB, GB, TB powers of 1000; none means bytes)",
                unit.trim_start()
            ))
        }
    };
    let too_large = || format!("'{text}' is too large (at most {} bytes)", u64::MAX);
    let mut bytes: u128 = 0;
    for digit in whole.bytes() {
        bytes = bytes
            .checked_mul(10)
            .and_then(|b| b.checked_add(u128::from(digit - b'0')))
            .filter(|b| *b <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
    }
    bytes = bytes.checked_mul(multiplier).ok_or_else(too_large)?;
    // The fraction, exactly: digits past the 24th cannot move the result
    // by a whole byte, even in TiB.
    let (mut numerator, mut denominator) = (0u128, 1u128);
    for digit in fraction.bytes().take(24) {
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    bytes += numerator * multiplier / denominator;
    u64::try_from(bytes).map_err(|_| too_large())
}

/// `HOST:PORT`, `[IPv6]:PORT`, `HOST`, `[IPv6]` or a bare IPv6 address.
pub fn parse_destination(raw: &str) -> Result<Destination, Error> {
    let bad = |why: &str| Error::Usage(format!("invalid address '{raw}': {why}"));
    let port_of = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port must be a number from 1 to 65535")),
        Ok(port) => Ok(port),
    };
    if let Some(rest) = raw.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address inside [ ]"))?;
        let port = match tail {
            "" => DEFAULT_PORT,
            t => port_of(
                t.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
            )?,
        };
        return Ok(Destination {
            host: host.to_owned(),
            port,
            fallback: Vec::new(),
        });
    }
    match raw.matches(':').count() {
        0 if !raw.is_empty() => Ok(Destination {
            host: raw.to_owned(),
            port: DEFAULT_PORT,
            fallback: Vec::new(),
        }),
        0 => Err(bad("empty")),
        1 => {
            let (host, port) = raw.split_once(':').unwrap_or((raw, ""));
            if host.is_empty() {
                return Err(bad("the host is missing"));
            }
            Ok(Destination {
                host: host.to_owned(),
                port: port_of(port)?,
                fallback: Vec::new(),
            })
        }
        _ => match raw.parse::<Ipv6Addr>() {
            Ok(_) => Ok(Destination {
                host: raw.to_owned(),
                port: DEFAULT_PORT,
                fallback: Vec::new(),
            }),
            Err(_) => Err(bad("write IPv6 addresses with a port as [ADDR]:PORT")),
        },
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or an IP alone for the default port.
pub fn parse_listen(raw: &str) -> Result<SocketAddr, Error> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = raw.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, DEFAULT_PORT)).map_err(|_| {
        Error::Usage(format!(
            "invalid listen address '{raw}': expected IP:PORT, e.g. 0.0.0.0:{DEFAULT_PORT} or [::]:{DEFAULT_PORT}"
        ))
    })
}
