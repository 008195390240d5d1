//! Reaching the listener (`recv` for a send, `serve` for a get): resolve,
//! then try each address in turn.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Destination;
use crate::error::{describe_io, Error};
use crate::protocol::Mode;

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const UNREACHABLE_HINT: &str =
    "is the address right, is the machine on this network, and does its firewall let the port through?";

/// The hints that name the command which should be listening, for a
/// connect made by `mode` (`send` or `get`).
struct Hints {
    running: &'static str,
    name: &'static str,
}

impl Hints {
    fn of(mode: Mode) -> Hints {
        match mode {
            Mode::Get => Hints {
                running: "is 'xfer serve' running there?",
                name: "check the name, or use the IP address that 'xfer serve' prints on the serving machine",
            },
            _ => Hints {
                running: "is 'xfer recv' running there?",
                name: "check the name, or use the IP address that 'xfer recv' prints on the receiving machine",
            },
        }
    }

    /// What to try next after `e` from a TCP connect.
    fn after(&self, e: &std::io::Error) -> &'static str {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => self.running,
            std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::TimedOut => UNREACHABLE_HINT,
            _ => self.running,
        }
    }
}

/// How much an error from one address says about the peer, most first:
/// a refusal means the machine answered (xfer is not listening there),
/// which says more than an unreachable address or a timeout.
fn telling(e: &std::io::Error) -> u8 {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => 0,
        _ => 1,
    }
}

/// A connected, no-delay TCP stream to `destination`, for `mode`: the
/// host's addresses in turn, then its fallbacks. When none answers, the
/// error is the most telling one (see [`telling`]; the first among
/// equals), naming the address it came from.
pub(crate) async fn connect(destination: &Destination, mode: Mode) -> Result<TcpStream, Error> {
    let hints = Hints::of(mode);
    let named = destination.to_string();
    let connect_error = |addr: &str, detail: String, hint| Error::Connect {
        addr: addr.to_owned(),
        detail,
        hint,
    };
    let candidates = tokio::net::lookup_host((destination.host.as_str(), destination.port))
        .await
        .map_err(|e| {
            connect_error(
                &named,
                format!("cannot resolve host name: {}", describe_io(&e)),
                hints.name,
            )
        })?;
    let fallbacks = destination.fallback.iter().map(|a| (*a, a.to_string()));
    let mut best: Option<(u8, Error)> = None;
    for (candidate, addr) in candidates.map(|a| (a, named.clone())).chain(fallbacks) {
        let (rank, error) =
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
                Ok(Ok(stream)) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|e| connect_error(&addr, describe_io(&e), hints.running))?;
                    return Ok(stream);
                }
                Ok(Err(e)) => {
                    log::info!("cannot connect to {candidate}: {}", describe_io(&e));
                    (
                        telling(&e),
                        connect_error(&addr, describe_io(&e), hints.after(&e)),
                    )
                }
                Err(_) => {
                    log::info!("cannot connect to {candidate}: timed out");
                    let detail = format!("timed out after {} s", CONNECT_TIMEOUT.as_secs());
                    (2, connect_error(&addr, detail, UNREACHABLE_HINT))
                }
            };
        if best.as_ref().is_none_or(|(most, _)| rank < *most) {
            best = Some((rank, error));
        }
    }
    Err(best.map_or_else(
        || connect_error(&named, "the host name has no addresses".into(), hints.name),
        |(_, error)| error,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on: bound, then let go.
    fn closed_port() -> u16 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn an_unreachable_first_address_falls_back_to_the_others() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live = listener.local_addr().unwrap();
        let dead = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
        let destination = Destination {
            host: "127.0.0.1".into(),
            port: closed_port(),
            fallback: vec![dead, live],
        };
        let stream =
            tokio::time::timeout(Duration::from_secs(10), connect(&destination, Mode::Send))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live);
    }

    /// The best address unreachable, a fallback refusing: the refusal is
    /// what the user hears (the machine is there, xfer is not), named
    /// with the address that refused.
    #[tokio::test]
    async fn a_refusal_is_reported_before_an_unreachable_address() {
        let refused = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
        for (host, fallback, named) in [
            // Unreachable first, the refusal from the fallback.
            ("255.255.255.255", "127.0.0.1", refused.to_string()),
            // The refusal first: it stays, though the fallback fails too.
            (
                "127.0.0.1",
                "255.255.255.255",
                format!("127.0.0.1:{}", refused.port()),
            ),
        ] {
            let destination = Destination {
                host: host.into(),
                port: refused.port(),
                fallback: vec![std::net::SocketAddr::new(
                    fallback.parse().unwrap(),
                    refused.port(),
                )],
            };
            let err = connect(&destination, Mode::Send).await.unwrap_err();
            match err {
                Error::Connect { addr, hint, .. } => {
                    assert_eq!(addr, named, "{host} then {fallback}");
                    assert!(hint.contains("xfer recv"), "{hint}");
                }
                other => panic!("{other}"),
            }
        }
    }

    #[tokio::test]
    async fn when_no_address_answers_the_error_says_what_to_check() {
        let destination = Destination {
            host: "127.0.0.1".into(),
            port: closed_port(),
            fallback: vec![std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()))],
        };
        let err = connect(&destination, Mode::Send).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&destination.to_string()), "{text}");
        assert!(matches!(err, Error::Connect { hint, .. } if hint.contains("xfer recv")));
    }
}
