//! The only place that names bincode: how a [`Message`] becomes a frame and back.
//!
//! ```text
//! +----------------+---------------------------------+
//! | len: u32 BE    | payload: bincode(Message), len  |
//! +----------------+---------------------------------+
//! ```
//!
//! bincode runs with its "standard" configuration (little-endian, variable-length
//! integers) and a decode limit equal to the frame limit, so a declared string or
//! vector length larger than the frame is rejected before anything is allocated.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bytes::{Buf, BufMut, BytesMut};

use super::message::Message;
use super::MAX_FRAME_LEN;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_FRAME_LEN>>;

fn config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge(u64),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Appends one frame holding `message` to `dst`.
pub fn encode(message: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
    let payload = bincode::serde::encode_to_vec(message, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge(payload.len() as u64));
    }
    dst.reserve(LEN_PREFIX + payload.len());
    dst.put_u32(payload.len() as u32);
    dst.put_slice(&payload);
    Ok(())
}

/// Takes one whole frame off the front of `src`, if one is there.
///
/// `Ok(None)` means more bytes are needed; `src` is left untouched except that
/// room for the rest of a frame whose length is known and legal is reserved.
/// The length is checked before anything is reserved.
pub fn decode(src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
    let Some(prefix) = src.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge(len as u64));
    }
    let total = LEN_PREFIX + len;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    let payload = src.split_to(len);
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(&payload, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != len {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            len - used
        )));
    }
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{Action, Entry, EntryKind, Offer, Plan};
    use proptest::prelude::*;

    fn sample_messages() -> Vec<Message> {
        vec![
            Message::Offer(Offer {
                first_id: 7,
                entries: vec![Entry {
                    path: "dir/ünïcode name.txt".into(),
                    kind: EntryKind::File,
                    size: 12345,
                    mode: 0o644,
                    mtime_secs: 1_700_000_000,
                    mtime_nanos: 5,
                    sha256: Some([0xab; 32]),
                }],
            }),
            Message::Plan(Plan {
                first_id: 7,
                actions: vec![Action::Send { offset: 0 }, Action::DirReady],
            }),
            Message::FileBegin { id: 7, offset: 0 },
            Message::FileEnd {
                sha256: [1; 32],
                error: None,
            },
            Message::Done,
            Message::Bye { files: 1, bytes: 2 },
        ]
    }

    fn encode_all(messages: &[Message]) -> BytesMut {
        let mut buf = BytesMut::new();
        for m in messages {
            encode(m, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn read_single_frame() {
        let mut buf = encode_all(&[Message::Done]);
        assert_eq!(decode(&mut buf).unwrap(), Some(Message::Done));
        assert!(buf.is_empty());
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn read_multi_frame_single_packet() {
        let messages = sample_messages();
        let mut buf = encode_all(&messages);
        for m in &messages {
            assert_eq!(decode(&mut buf).unwrap().as_ref(), Some(m));
        }
        assert_eq!(decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn read_incomplete_head() {
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn read_incomplete_payload() {
        let full = encode_all(&sample_messages()[..1]);
        let mut buf = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&full[full.len() - 1..]);
        assert_eq!(
            decode(&mut buf).unwrap(),
            Some(sample_messages()[0].clone())
        );
    }

    #[test]
    fn read_max_frame_len_rejected_without_allocating() {
        let mut buf = BytesMut::with_capacity(8);
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        let capacity = buf.capacity();
        assert_eq!(
            decode(&mut buf),
            Err(CodecError::FrameTooLarge(MAX_FRAME_LEN as u64 + 1))
        );
        assert_eq!(
            buf.capacity(),
            capacity,
            "nothing reserved for a bad length"
        );
    }

    #[test]
    fn read_len_near_u32_max_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(matches!(
            decode(&mut buf),
            Err(CodecError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn read_huge_declared_string_rejected() {
        // An Abort whose reason claims u64::MAX bytes inside a 12-byte frame.
        let mut payload = vec![8u8]; // variant index of Abort
        payload.push(253); // varint marker: u64 follows
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(&payload);
        assert!(matches!(decode(&mut buf), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn read_unknown_variant_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u32(1);
        buf.put_u8(200);
        assert!(matches!(decode(&mut buf), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn read_trailing_bytes_rejected() {
        let mut buf = BytesMut::new();
        buf.put_u32(2);
        buf.put_u8(6); // Done
        buf.put_u8(0);
        assert!(matches!(decode(&mut buf), Err(CodecError::Malformed(_))));
    }

    /// A decoded frame holding `payload`.
    fn decode_payload(payload: &[u8]) -> Result<Option<Message>, CodecError> {
        let mut buf = BytesMut::new();
        buf.put_u32(payload.len() as u32);
        buf.put_slice(payload);
        decode(&mut buf)
    }

    /// An offer of one empty file "a" whose mode is encoded as `mode`.
    fn offer_with_mode_bytes(mode: &[u8]) -> Vec<u8> {
        // Offer, first_id 0, one entry, path "a", File, size 0
        let mut payload = vec![0, 0, 1, 1, b'a', 0, 0];
        payload.extend_from_slice(mode);
        // mtime_secs 0, mtime_nanos 0, no digest
        payload.extend_from_slice(&[0, 0, 0]);
        payload
    }

    #[test]
    fn read_non_canonical_varints_accepted() {
        // FileBegin, id 5 as 251 + u16, offset 0 as 252 + u32.
        let payload = [2, 251, 5, 0, 252, 0, 0, 0, 0];
        assert_eq!(
            decode_payload(&payload),
            Ok(Some(Message::FileBegin { id: 5, offset: 0 }))
        );
        // Done's variant index as 251 + u16.
        assert_eq!(decode_payload(&[251, 6, 0]), Ok(Some(Message::Done)));
    }

    #[test]
    fn read_u64_tag_in_a_u32_field_rejected() {
        let canonical = offer_with_mode_bytes(&[251, 0xa4, 0x01]);
        let Ok(Some(Message::Offer(offer))) = decode_payload(&canonical) else {
            panic!("the hand-built offer does not decode");
        };
        assert_eq!(offer.entries[0].mode, 0o644);
        let mut wide = vec![253];
        wide.extend_from_slice(&0o644u64.to_le_bytes());
        assert!(matches!(
            decode_payload(&offer_with_mode_bytes(&wide)),
            Err(CodecError::Malformed(_))
        ));
        // The same for a variant index, and for the tags no field has.
        for payload in [&[253, 6, 0, 0, 0, 0, 0, 0, 0][..], &[254, 6], &[255, 6]] {
            assert!(matches!(
                decode_payload(payload),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same_frames(cuts in proptest::collection::vec(0usize..4096, 0..8)) {
            let messages = sample_messages();
            let stream = encode_all(&messages);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            let mut start = 0;
            for cut in cuts {
                buf.extend_from_slice(&stream[start..cut]);
                start = cut;
                while let Some(m) = decode(&mut buf).unwrap() {
                    decoded.push(m);
                }
            }
            prop_assert_eq!(decoded, messages);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
            prop_assert!(buf.capacity() <= bytes.len().max(LEN_PREFIX + MAX_FRAME_LEN));
        }
    }
}
