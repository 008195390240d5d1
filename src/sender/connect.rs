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
    for candidate in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| connect_error(describe_io(&e), hints.running))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = connect_error(describe_io(&e), hints.after(&e)),
            Err(_) => {
                last = connect_error(
                    format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
                    UNREACHABLE_HINT,
                )
            }
        }
    }
    Err(last)
}
