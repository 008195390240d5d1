//! Discovery as a person or a script sees it: finding the peer for
//! `xfer send` (a receiver) or `xfer get` (a server) — say which, list
//! several, offer a numbered choice on a terminal, explain none — and the
//! output of `xfer peers`. Every name a peer announced is untrusted text,
//! made safe here before it is shown.

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{browse, browse_until, select, Choice, Peer, PeerRole, Wanted, SEND_BROWSE_WAIT};
use crate::cli::parse_destination;
use crate::error::Error;
use crate::progress::EVENTS_VERSION;
use crate::sender::Destination;
use crate::term;

/// What commonly keeps mDNS from working, for the "none found" errors.
const MDNS_HINT: &str = "if one is running, something may block mDNS (UDP 5353 multicast): \
     a firewall, Wi-Fi client isolation, or the machines being on different subnets or VLANs";

/// How `xfer send` or `xfer get` without an address looks.
#[derive(Debug, Clone)]
pub struct FindOptions {
    /// What is looked for: `Recv` for `send`, `Serve` for `get`.
    pub role: PeerRole,
    /// `--to NAME`.
    pub name: Option<String>,
    /// The public number of the code held, if any.
    pub code_number: Option<u16>,
    /// `--quiet`: no "looking" and "found" lines.
    pub quiet: bool,
}

/// How the search talks about the peers of one role and the command that
/// looks for them.
struct Words {
    /// The kind of peer, singular and plural.
    one: &'static str,
    many: &'static str,
    /// What the command does with the peer found: "sending to 'den'".
    doing: &'static str,
    /// The command with an address, as the "none found" error suggests it.
    with_address: &'static str,
    /// The same, as the "several found" error suggests it.
    with_its_address: &'static str,
    /// The command the peer runs, which prints its address.
    peer_command: &'static str,
    /// The choice prompt.
    which: &'static str,
    /// What an impostor could do without a code.
    risk: &'static str,
    /// The command that looks, for "run it with --code".
    command: &'static str,
}

fn words(role: PeerRole) -> &'static Words {
    match role {
        PeerRole::Recv => &Words {
            one: "receiver",
            many: "receivers",
            doing: "sending to",
            with_address: "give the address last (xfer send PATH... HOST:PORT",
            with_its_address: "give its address last: xfer send PATH... ADDR",
            peer_command: "xfer recv",
            which: "send to which receiver?",
            risk: "receive what you send",
            command: "send",
        },
        PeerRole::Serve => &Words {
            one: "server",
            many: "servers",
            doing: "getting from",
            with_address: "give the address (xfer get HOST:PORT",
            with_its_address: "give its address: xfer get ADDR",
            peer_command: "xfer serve",
            which: "get from which server?",
            risk: "choose what you store",
            command: "get",
        },
    }
}

/// Finds the peer of `options.role` (see [`select`] for the rules).
/// Blocks for up to [`SEND_BROWSE_WAIT`] (less when `--to` names one that
/// answers sooner), plus the person's answer when they are asked to choose.
pub fn find_peer(options: &FindOptions) -> Result<Destination, Error> {
    let words = words(options.role);
    if options.code_number.is_none() {
        log::warn!(
            "a {} found on the LAN is not authenticated: anyone on this network can \
             announce one and {}; use a code (--code) or an address you \
             trust (see SECURITY.md)",
            words.one,
            words.risk
        );
    }
    let wanted = Wanted {
        name: options.name.as_deref(),
        code_number: options.code_number,
    };
    let secs = SEND_BROWSE_WAIT.as_secs_f64();
    if !options.quiet {
        eprintln!("looking for {} on the LAN ({secs} s)...", words.many);
    }
    let seen = browse_until(Some(options.role), SEND_BROWSE_WAIT, |peer| {
        options.name.is_some() && wanted.fits(peer)
    })?;
    let peer = match select(seen, &wanted) {
        Choice::One(peer) => peer,
        Choice::Many(peers) => choose(&peers, words)?,
        Choice::Nothing { seen } => {
            let by_system = options
                .name
                .as_deref()
                .and_then(|n| system_resolved(n, &seen));
            if let Some(destination) = by_system {
                if !options.quiet {
                    eprintln!(
                        "{} {} (resolved by the system, not announced by xfer)",
                        words.doing,
                        term::for_stderr(&destination.to_string())
                    );
                }
                return Ok(destination);
            }
            return Err(nothing_fits(&wanted, &seen, secs, words));
        }
    };
    let destination = peer
        .destination()
        .ok_or_else(|| Error::Internal("a discovered peer without an address was kept".into()))?;
    if !options.quiet {
        eprintln!(
            "{} '{}' at {} (found on the LAN)",
            words.doing,
            term::for_stderr(&peer.name),
            destination
        );
    }
    Ok(destination)
}

/// The longest wait for the system's resolver to answer for a `.local` name.
const SYSTEM_LOOKUP: std::time::Duration = std::time::Duration::from_secs(3);

/// `--to NAME.local` that no xfer peer announced: ask the system's
/// resolver (nss-mdns, /etc/hosts). The port is the one a peer announced
/// at that address, else the one given, else the default.
fn system_resolved(name: &str, seen: &[Peer]) -> Option<Destination> {
    let given = parse_destination(name).ok()?;
    let host = given.host.trim_end_matches('.');
    if !host.to_ascii_lowercase().ends_with(".local") {
        return None;
    }
    // getaddrinfo has no bound of its own (nss-mdns may wait seconds), so it
    // runs apart and is given up on after SYSTEM_LOOKUP.
    let (tx, rx) = std::sync::mpsc::channel();
    let (lookup, port) = (host.to_owned(), given.port);
    std::thread::spawn(move || {
        let found: Vec<IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(lookup.as_str(), port))
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default();
        let _ = tx.send(found);
    });
    let resolved = rx.recv_timeout(SYSTEM_LOOKUP).ok()?;
    let first = *resolved.first()?;
    let explicit_port = name.contains(':');
    let announced = seen
        .iter()
        .find(|p| p.addrs.iter().any(|a| resolved.contains(&a.ip())));
    let port = match announced {
        Some(peer) if !explicit_port => peer.port,
        _ => given.port,
    };
    Some(Destination {
        host: first.to_string(),
        port,
        fallback: Vec::new(),
    })
}

/// Several peers fit: on a terminal the person picks one by number;
/// otherwise they are listed and the command stops with exit 2.
fn choose(peers: &[Peer], words: &Words) -> Result<Peer, Error> {
    let refuse = || {
        Error::Usage(format!(
            "{} {} found on the LAN; choose one with --to NAME, or {}",
            peers.len(),
            words.many,
            words.with_its_address
        ))
    };
    let tty = std::io::stderr()
        .is_terminal()
        .then(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/tty")
                .ok()
        })
        .flatten();
    let Some(mut tty) = tty else {
        eprint!("{}", table(peers, false));
        return Err(refuse());
    };
    let _ = write!(
        tty,
        "{}{} [1-{}, Enter to cancel]: ",
        table(peers, true),
        words.which,
        peers.len()
    );
    let _ = tty.flush();
    let mut answer = String::new();
    std::io::BufReader::new(&tty)
        .read_line(&mut answer)
        .map_err(|e| Error::Usage(format!("cannot read the choice: {e}")))?;
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=peers.len()).contains(&n) => Ok(peers[n - 1].clone()),
        _ => Err(refuse()),
    }
}

/// Why nothing fits, with what was seen and what to do.
fn nothing_fits(wanted: &Wanted, seen: &[Peer], secs: f64, words: &Words) -> Error {
    let list = seen
        .iter()
        .map(|p| format!("'{}' ({})", p.name, code_words(p)))
        .collect::<Vec<_>>()
        .join(", ");
    let one = words.one;
    if seen.is_empty() {
        let what = match wanted.name {
            Some(name) => format!("no {one} named '{name}'"),
            None => format!("no xfer {one}"),
        };
        return Error::Discovery(format!(
            "{what} answered on the LAN within {secs} s; {}, as '{}' prints it), or, \
             {MDNS_HINT}",
            words.with_address, words.peer_command
        ));
    }
    if let Some(name) = wanted.name {
        return Error::Discovery(format!(
            "no {one} named '{name}' answered within {secs} s (found {list}); \
             check the name with 'xfer peers', or give the address"
        ));
    }
    match wanted.code_number {
        Some(number) => Error::Discovery(format!(
            "no {one} on the LAN announces code number {number:04} (found {list}); \
             check the code, or give the address"
        )),
        None => Error::Auth(format!(
            "every {one} found requires a code ({list}); {} with --code",
            words.command
        )),
    }
}

fn code_words(peer: &Peer) -> String {
    match (peer.code_required, peer.code_number) {
        (true, Some(n)) => format!("code {n:04}"),
        (true, None) => "code".to_owned(),
        (false, _) => "no code".to_owned(),
    }
}

/// Peers as an aligned table, names made terminal-safe; `numbered` adds
/// the choice numbers.
fn table(peers: &[Peer], numbered: bool) -> String {
    let rows: Vec<[String; 4]> = peers
        .iter()
        .map(|p| {
            [
                term::for_stderr(&p.name).into_owned(),
                p.role.as_str().to_owned(),
                p.addr().map(|a| a.to_string()).unwrap_or_default(),
                match (p.code_required, p.code_number) {
                    (true, Some(n)) => format!("yes ({n:04})"),
                    (true, None) => "yes".to_owned(),
                    (false, _) => "no".to_owned(),
                },
            ]
        })
        .collect();
    let header = ["NAME", "ROLE", "ADDRESS", "CODE"].map(str::to_owned);
    let mut widths = [0; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for (i, row) in std::iter::once(&header).chain(&rows).enumerate() {
        if numbered {
            out.push_str(&if i == 0 {
                "     ".to_owned()
            } else {
                format!("{i:>3}) ")
            });
        }
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `xfer peers`: browses for `wait`, then prints a table (or JSON Lines:
/// one `peer` per peer, then one `browsed`).
pub fn list_peers(wait: Duration, json: bool) -> Result<(), Error> {
    let started = Instant::now();
    let result = browse(None, wait);
    let secs = started.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if let Ok(peers) = &result {
        if json {
            for peer in peers {
                let _ = writeln!(out, "{}", peer_event(peer));
            }
        } else if peers.is_empty() {
            eprintln!(
                "no xfer peers answered on the LAN within {:.1} s; {MDNS_HINT}",
                wait.as_secs_f64()
            );
        } else {
            let _ = write!(out, "{}", table(peers, false));
        }
    }
    if json {
        let mut end = json!({
            "v": EVENTS_VERSION, "event": "browsed",
            "found": result.as_ref().map_or(0, Vec::len), "secs": secs,
            "exit_code": result.as_ref().err().map_or(0, Error::exit_code),
        });
        if let Err(e) = &result {
            end["error"] = json!(e.to_string());
        }
        let _ = writeln!(out, "{end}");
    }
    let _ = out.flush();
    result.map(drop)
}

fn peer_event(peer: &Peer) -> serde_json::Value {
    let mut value = json!({
        "v": EVENTS_VERSION, "event": "peer",
        "name": peer.name, "role": peer.role.as_str(), "host": peer.host,
        "port": peer.port,
        "addr": peer.addr().map(|a| a.to_string()).unwrap_or_default(),
        "addrs": peer.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "code_required": peer.code_required,
    });
    if let Some(protocol) = peer.protocol {
        value["protocol"] = json!(protocol);
    }
    if let Some(number) = peer.code_number {
        value["code_number"] = json!(number);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn peer(name: &str, port: u16, code_number: Option<u16>) -> Peer {
        Peer {
            name: name.into(),
            role: PeerRole::Recv,
            host: "h.local".into(),
            port,
            addrs: vec![SocketAddr::from(([10, 0, 0, 1], port))],
            protocol: Some(1),
            code_required: code_number.is_some(),
            code_number,
        }
    }

    #[test]
    fn the_table_aligns_and_escapes_names() {
        let shown = table(
            &[peer("a\u{1b}[2J", 7171, None), peer("den", 80, Some(42))],
            true,
        );
        assert!(!shown.contains('\u{1b}'), "{shown:?}");
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("     NAME"), "{shown}");
        assert!(lines[2].starts_with("  2) den"), "{shown}");
        assert!(lines[2].ends_with("yes (0042)"), "{shown}");
        // Columns line up: the code column starts at the same place.
        assert_eq!(lines[1].find("no"), lines[2].find("yes"), "{shown}");
        assert_eq!(lines[0].find("CODE"), lines[2].find("yes"), "{shown}");
    }

    #[test]
    fn nothing_fitting_says_what_was_seen_and_what_to_do() {
        let recv = words(PeerRole::Recv);
        let none = nothing_fits(&Wanted::default(), &[], 1.5, recv).to_string();
        assert!(
            none.contains("no xfer receiver answered on the LAN within 1.5 s"),
            "{none}"
        );
        assert!(none.contains("firewall") && none.contains("VLAN"), "{none}");
        let coded = nothing_fits(&Wanted::default(), &[peer("den", 1, Some(7))], 1.5, recv);
        assert!(
            matches!(&coded, Error::Auth(m) if m.contains("'den' (code 0007)")),
            "{coded}"
        );
        let wrong = Wanted {
            name: None,
            code_number: Some(9),
        };
        let other = nothing_fits(&wrong, &[peer("den", 1, Some(7))], 1.5, recv).to_string();
        assert!(other.contains("announces code number 0009"), "{other}");
    }

    #[test]
    fn a_get_is_told_about_servers_and_xfer_get() {
        let serve = words(PeerRole::Serve);
        let none = nothing_fits(&Wanted::default(), &[], 1.5, serve).to_string();
        assert!(
            none.contains("no xfer server answered on the LAN within 1.5 s")
                && none
                    .contains("give the address (xfer get HOST:PORT, as 'xfer serve' prints it)"),
            "{none}"
        );
        let named = Wanted {
            name: Some("gamma"),
            code_number: None,
        };
        let other = nothing_fits(&named, &[peer("den", 1, None)], 1.5, serve).to_string();
        assert!(other.starts_with("no server named 'gamma'"), "{other}");
        let coded = nothing_fits(&Wanted::default(), &[peer("den", 1, Some(7))], 1.5, serve);
        assert!(
            matches!(&coded, Error::Auth(m) if m.starts_with("every server found requires a code")
                && m.ends_with("get with --code")),
            "{coded}"
        );
        for words in [serve, words(PeerRole::Recv)] {
            let text = format!("{}{}{}", words.with_address, words.which, words.doing);
            let other = if words.one == "server" { "send" } else { "get" };
            assert!(!text.contains(other), "{text}");
        }
    }

    #[test]
    fn peer_events_carry_every_address() {
        let mut p = peer("den", 7171, Some(4821));
        p.addrs.push("[fe80::1%2]:7171".parse().unwrap());
        let event = peer_event(&p);
        assert_eq!(event["addr"], "10.0.0.1:7171");
        assert_eq!(event["addrs"][1], "[fe80::1%2]:7171");
        assert_eq!(event["code_number"], 4821);
    }
}
