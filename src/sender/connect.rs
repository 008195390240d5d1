//! Reaching the receiver: resolve, then try each address in turn.

use std::time::Duration;

use tokio::net::TcpStream;

use super::Destination;
use crate::error::{describe_io, Error};

/// How long one TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected, no-delay TCP stream to `destination`, where `listener`
/// (the command named if nobody answers) should be listening.
pub(crate) async fn connect(
    destination: &Destination,
    listener: &'static str,
) -> Result<TcpStream, Error> {
    let addr = destination.to_string();
    let connect_error = |detail: String| Error::Connect {
        addr: addr.clone(),
        detail,
        listener,
    };
    let candidates = tokio::net::lookup_host((destination.host.as_str(), destination.port))
        .await
        .map_err(|e| connect_error(format!("cannot resolve host: {}", describe_io(&e))))?;
    let mut last = "the host name has no addresses".to_owned();
    for candidate in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| connect_error(describe_io(&e)))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = describe_io(&e),
            Err(_) => last = format!("timed out after {} s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(connect_error(last))
}
