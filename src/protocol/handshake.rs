//! The hello both sides write first, and what a side does with the
//! peer's: a fixed 16-byte layout that never changes, so any two versions
//! can tell each other apart (docs/PROTOCOL.md section 1).

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{FrameReader, FrameWriter};
use super::{CAPABILITIES, HELLO_LEN, MAGIC, PROTOCOL_VERSION};
use crate::error::Error;

/// Exchanges hellos announcing [`CAPABILITIES`]; see [`handshake_with`].
pub async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<u32, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    handshake_with(reader, writer, CAPABILITIES).await
}

/// Exchanges hellos: both sides write theirs at once (ours announcing
/// `caps`), then check the peer's. Returns the peer's capability bits.
pub async fn handshake_with<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    caps: u32,
) -> Result<u32, Error>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Write and read at once: neither side may depend on its hello fitting
    // in the transport's buffer before the peer reads.
    let (written, read) = tokio::join!(writer.write_hello(caps), reader.read_array::<HELLO_LEN>());
    let hello = read?;
    written?;
    if hello[..8] != MAGIC {
        return Err(
            reader.protocol("the peer is not speaking the xfer protocol (bad magic bytes)".into())
        );
    }
    let version = u32::from_be_bytes([hello[8], hello[9], hello[10], hello[11]]);
    if version != PROTOCOL_VERSION {
        return Err(Error::Version {
            peer: reader.peer().to_string(),
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    Ok(u32::from_be_bytes([
        hello[12], hello[13], hello[14], hello[15],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::Message;
    use crate::protocol::CAPABILITIES;
    use std::time::Duration;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_secs(5);

    /// Everything `write` puts on the wire through a [`FrameWriter`].
    async fn wire_bytes<F>(write: F) -> Vec<u8>
    where
        F: AsyncFnOnce(&mut FrameWriter<tokio::io::DuplexStream>) -> Result<(), Error>,
    {
        let (near, mut far) = duplex(64 * 1024);
        let mut w = FrameWriter::new(near, "peer".into(), T);
        tokio::time::timeout(T, async {
            write(&mut w).await?;
            w.shutdown().await
        })
        .await
        .unwrap()
        .unwrap();
        let mut bytes = Vec::new();
        tokio::time::timeout(T, far.read_to_end(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        bytes
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// docs/PROTOCOL.md's worked example, sender to receiver, piece by piece.
    const EXAMPLE_SENDER: [(&str, &str); 6] = [
        ("hello", "58 46 45 52 0d 0a 1a 0a 00 00 00 01 00 00 00 00"),
        (
            "Offer",
            "00 00 00 36 00 00 01 06 68 69 2e 74 78 74 00 03 fb a4 01 fc 00 e2 a7 ca 00 01 \
             98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4",
        ),
        ("FileBegin", "00 00 00 03 02 00 00"),
        ("body", "68 69 0a"),
        (
            "FileEnd",
            "00 00 00 22 03 98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4 00",
        ),
        ("Done", "00 00 00 01 06"),
    ];

    /// ...and receiver to sender.
    const EXAMPLE_RECEIVER: [(&str, &str); 4] = [
        ("hello", "58 46 45 52 0d 0a 1a 0a 00 00 00 01 00 00 00 00"),
        ("Plan", "00 00 00 05 01 00 01 00 00"),
        (
            "Verdict",
            "00 00 00 2a 05 00 00 06 68 69 2e 74 78 74 \
             98 ea 6e 4f 21 6f 2f b4 b6 9f ff 9b 3a 44 84 2c 38 68 6c a6 85 f3 f5 5d c4 8c 5d 3f b1 10 7b e4",
        ),
        ("Bye", "00 00 00 03 07 01 03"),
    ];

    /// Asserts that `bytes` are `pieces`, one after another, naming the
    /// first piece that differs.
    fn assert_pieces(bytes: &[u8], pieces: &[(&str, &str)]) {
        let mut rest = hex(bytes);
        for (name, want) in pieces {
            let got: String = rest.chars().take(want.len()).collect();
            assert_eq!(got, *want, "{name} differs");
            rest = rest.chars().skip(want.len() + 1).collect();
        }
        assert!(
            rest.is_empty(),
            "unexpected bytes after the last piece: {rest}"
        );
    }

    /// The worked example of docs/PROTOCOL.md: a session sending one 3-byte
    /// file, both directions byte for byte.
    #[tokio::test]
    async fn worked_example_session_bytes() {
        use crate::protocol::{Action, Entry, EntryKind, Offer, Outcome, Plan, Verdict};
        let body = b"hi\n";
        let sha256 = crate::hashing::digest(body);
        let offer = Message::Offer(Offer {
            first_id: 0,
            entries: vec![Entry {
                path: "hi.txt".into(),
                kind: EntryKind::File,
                size: 3,
                mode: 0o644,
                mtime_secs: 1_700_000_000,
                mtime_nanos: 0,
                sha256: Some(sha256),
            }],
        });
        let sent = wire_bytes(async |w| {
            w.write_hello(CAPABILITIES).await?;
            w.send(&offer).await?;
            w.send(&Message::FileBegin { id: 0, offset: 0 }).await?;
            w.send_raw(body).await?;
            w.send(&Message::FileEnd {
                sha256,
                error: None,
            })
            .await?;
            w.send(&Message::Done).await
        })
        .await;
        assert_pieces(&sent, &EXAMPLE_SENDER);
        let answered = wire_bytes(async |w| {
            w.write_hello(CAPABILITIES).await?;
            let plan = Plan {
                first_id: 0,
                actions: vec![Action::Send { offset: 0 }],
            };
            w.send(&Message::Plan(plan)).await?;
            let outcome = Outcome::Stored {
                path: "hi.txt".into(),
                sha256,
            };
            w.send(&Message::Verdict(Verdict { id: 0, outcome }))
                .await?;
            w.send(&Message::Bye { files: 1, bytes: 3 }).await
        })
        .await;
        assert_pieces(&answered, &EXAMPLE_RECEIVER);
    }

    /// docs/PROTOCOL.md §3: the hello xfer sends, and its `Totals` frame.
    #[tokio::test]
    async fn totals_frame_bytes() {
        let sent = wire_bytes(async |w| {
            w.write_hello(crate::protocol::CAP_TOTALS).await?;
            w.send(&Message::Totals { files: 1, bytes: 3 }).await
        })
        .await;
        assert_pieces(
            &sent,
            &[
                ("hello", "58 46 45 52 0d 0a 1a 0a 00 00 00 01 00 00 00 02"),
                ("Totals", "00 00 00 03 09 01 03"),
            ],
        );
    }

    #[tokio::test]
    async fn handshake_agrees_on_same_version() {
        let (a, b) = duplex(8);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut left = (
            FrameReader::new(ar, "b".into(), T),
            FrameWriter::new(aw, "b".into(), T),
        );
        let mut right = (
            FrameReader::new(br, "a".into(), T),
            FrameWriter::new(bw, "a".into(), T),
        );
        let (x, y) = tokio::time::timeout(T, async {
            tokio::join!(
                handshake(&mut left.0, &mut left.1),
                handshake(&mut right.0, &mut right.1)
            )
        })
        .await
        .expect("handshake over a tiny pipe must not deadlock");
        assert_eq!(x.unwrap(), CAPABILITIES);
        assert_eq!(y.unwrap(), CAPABILITIES);
    }

    #[tokio::test]
    async fn handshake_rejects_other_version_and_garbage() {
        for (bytes, want_version) in [
            ([&MAGIC[..], &99u32.to_be_bytes(), &[0; 4]].concat(), true),
            (b"GET / HTTP/1.1\r\n".to_vec(), false),
        ] {
            let (a, b) = duplex(64);
            let (br, bw) = tokio::io::split(b);
            let (mut ar, mut aw) = tokio::io::split(a);
            aw.write_all(&bytes).await.unwrap();
            let mut r = FrameReader::new(br, "peer".into(), T);
            let mut w = FrameWriter::new(bw, "peer".into(), T);
            let err = tokio::time::timeout(T, handshake(&mut r, &mut w))
                .await
                .unwrap()
                .unwrap_err();
            if want_version {
                assert!(matches!(err, Error::Version { theirs: 99, .. }), "{err}");
            } else {
                assert!(matches!(err, Error::Protocol { .. }), "{err}");
            }
            // The peer got our hello, then the close: no Abort.
            drop((r, w));
            let mut got = Vec::new();
            tokio::time::timeout(T, ar.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.len(), HELLO_LEN);
            assert_eq!(got[..8], MAGIC);
        }
    }
}
