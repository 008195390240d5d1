//! Reaching the receiver: resolve, then try each address in turn.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Destination;
use crate::error::{describe_io, Error};

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const RUNNING_HINT: &str = "is 'xfer recv' running there?";
const UNREACHABLE_HINT: &str =
    "is the address right, is the machine on this network, and does its firewall let the port through?";

/// What to try next after `e` from a TCP connect.
fn hint_for(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => RUNNING_HINT,
        std::io::ErrorKind::HostUnreachable
        | std::io::ErrorKind::NetworkUnreachable
        | std::io::ErrorKind::TimedOut => UNREACHABLE_HINT,
        _ => RUNNING_HINT,
    }
}

/// A connected, no-delay TCP stream to `destination`.
pub(super) async fn connect(destination: &Destination) -> Result<TcpStream, Error> {
    let addr = destination.to_string();
    let connect_error = |detail: String, hint| Error::Connect {
        addr: addr.clone(),
        detail,
        hint,
    };
    const NAME_HINT: &str =
        "check the name, or use the IP address that 'xfer recv' prints on the receiving machine";
    let candidates = tokio::net::lookup_host((destination.host.as_str(), destination.port))
        .await
        .map_err(|e| {
            connect_error(
                format!("cannot resolve host name: {}", describe_io(&e)),
                NAME_HINT,
            )
        })?;
    let mut last = connect_error("the host name has no addresses".into(), NAME_HINT);
    for candidate in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| connect_error(describe_io(&e), RUNNING_HINT))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = connect_error(describe_io(&e), hint_for(&e)),
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
