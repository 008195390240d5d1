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

/// A connected, no-delay TCP stream to `destination`, for `mode`.
pub(crate) async fn connect(destination: &Destination, mode: Mode) -> Result<TcpStream, Error> {
    let hints = Hints::of(mode);
    let addr = destination.to_string();
    let connect_error = |detail: String, hint| Error::Connect {
        addr: addr.clone(),
        detail,
        hint,
    };
    let candidates = tokio::net::lookup_host((destination.host.as_str(), destination.port))
        .await
        .map_err(|e| {
            connect_error(
                format!("cannot resolve host name: {}", describe_io(&e)),
                hints.name,
            )
        })?;
    let mut last = connect_error("the host name has no addresses".into(), hints.name);
    for candidate in candidates.chain(destination.fallback.iter().copied()) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| connect_error(describe_io(&e), hints.running))?;
                return Ok(stream);
            }
            Ok(Err(e)) => {
                log::info!("cannot connect to {candidate}: {}", describe_io(&e));
                last = connect_error(describe_io(&e), hints.after(&e))
            }
            Err(_) => {
                log::info!("cannot connect to {candidate}: timed out");
                last = connect_error(
                    format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
                    UNREACHABLE_HINT,
                )
            }
        }
    }
    Err(last)
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
