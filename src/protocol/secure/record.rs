//! The sealed-record codec, without I/O: each direction of a coded session
//! is a sequence of AES-256-GCM records (docs/PROTOCOL.md §9.4).
//!
//! ```text
//! +--------------+-------------------------------------------+
//! | len: u32 BE  | AES-256-GCM(kind: u8 || payload) || tag   |
//! +--------------+-------------------------------------------+
//! ```
//!
//! `len` counts the sealed body (kind, payload and the 16-byte tag) and is
//! the additional data; the nonce is 4 zero bytes and the direction's
//! record counter (u64 BE, from 0). A dropped, repeated, reordered or
//! altered record therefore fails to open, and nothing of it is returned.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use bytes::{Buf, BytesMut};

/// Most plaintext payload one record carries.
pub const MAX_RECORD_PAYLOAD: usize = 64 * 1024;
/// Bytes of the length prefix.
pub const RECORD_LEN_PREFIX: usize = 4;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Smallest sealed body: the kind byte and the tag.
pub const MIN_SEALED_LEN: usize = 1 + TAG_LEN;
/// Largest sealed body a peer may declare.
pub const MAX_SEALED_LEN: usize = 1 + MAX_RECORD_PAYLOAD + TAG_LEN;
/// Largest whole record on the wire, prefix included.
pub const MAX_RECORD_LEN: usize = RECORD_LEN_PREFIX + MAX_SEALED_LEN;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Application bytes (1 to [`MAX_RECORD_PAYLOAD`] of them).
    Data,
    /// The sender of this direction is done: a clean close. Empty payload.
    End,
}

impl RecordKind {
    fn byte(self) -> u8 {
        match self {
            RecordKind::Data => 0,
            RecordKind::End => 1,
        }
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A declared length above the maximum, seen from the 4 prefix bytes.
    #[error("a sealed record declares {0} bytes, more than the maximum {MAX_SEALED_LEN}")]
    TooLarge(u32),
    /// A declared length that cannot hold a kind byte and a tag.
    #[error("a sealed record declares {0} bytes, fewer than the minimum {MIN_SEALED_LEN}")]
    TooShort(u32),
    /// The AEAD refused the record.
    #[error(
        "a sealed record failed authentication: the connection was tampered with or corrupted"
    )]
    Authentication,
    /// An authentic record whose content breaks the record rules.
    #[error("a sealed record is malformed: {0}")]
    Malformed(&'static str),
    /// Bytes after the end record.
    #[error("bytes follow the end-of-session record")]
    AfterEnd,
    /// A data record too large for one record (a caller's bug).
    #[error("a record payload of {0} bytes is more than the maximum {MAX_RECORD_PAYLOAD}")]
    PayloadTooLarge(usize),
    /// 2^64 - 1 records sealed in one direction: the counter stops there
    /// rather than wrap and repeat a nonce.
    #[error("the record counter is exhausted; start a new session")]
    CounterExhausted,
}

/// One direction's AEAD key and the counter of its next record.
struct Direction {
    key: LessSafeKey,
    next: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Self {
        // A 32-byte key is always accepted for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes 32-byte keys");
        Direction {
            key: LessSafeKey::new(unbound),
            next: 0,
        }
    }

    /// The nonce of the next record, advancing the counter; the last value
    /// is never used, so the counter cannot wrap.
    fn take_nonce(&mut self) -> Result<Nonce, RecordError> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(RecordError::CounterExhausted);
        }
        self.next = counter + 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// The sealing half of one direction.
pub struct SealState(Direction);

impl SealState {
    /// `key` is this direction's record key from the key schedule.
    pub fn new(key: &[u8; 32]) -> Self {
        SealState(Direction::new(key))
    }

    #[cfg(test)]
    pub(super) fn set_counter(&mut self, next: u64) {
        self.0.next = next;
    }
}

/// The opening half of one direction.
pub struct OpenState {
    direction: Direction,
    ended: bool,
}

impl OpenState {
    /// `key` is this direction's record key from the key schedule.
    pub fn new(key: &[u8; 32]) -> Self {
        OpenState {
            direction: Direction::new(key),
            ended: false,
        }
    }

    /// Whether the end record has been opened.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Starts a record at the end of `out`: the length prefix (filled in by
/// [`finish_record`]) and the kind byte's place. Returns where the record
/// begins; the caller appends plaintext payload bytes after it.
pub fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_LEN_PREFIX + 1]);
    start
}

/// Payload bytes of the record begun at `start`.
pub fn record_payload_len(out: &[u8], start: usize) -> usize {
    out.len().saturating_sub(start + RECORD_LEN_PREFIX + 1)
}

/// Seals, in place, the record begun at `start` with everything appended
/// since as its payload, and appends the tag.
pub fn finish_record(
    state: &mut SealState,
    kind: RecordKind,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), RecordError> {
    let payload = record_payload_len(out, start);
    let refused = if out.len() < start + RECORD_LEN_PREFIX + 1 {
        Some(RecordError::Malformed(
            "a record finished that was not begun",
        ))
    } else if payload > MAX_RECORD_PAYLOAD {
        Some(RecordError::PayloadTooLarge(payload))
    } else if (kind == RecordKind::End) != (payload == 0) {
        Some(RecordError::Malformed(
            "only an end record is empty, and it is always empty",
        ))
    } else {
        None
    };
    if let Some(e) = refused {
        out.truncate(start);
        return Err(e);
    }
    out.resize(out.len() + TAG_LEN, 0);
    match seal_in_slot(state, kind, &mut out[start..], payload) {
        Ok(_) => Ok(()),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Seals one record laid out at the front of `slot`: the prefix's and the
/// kind byte's places, `payload` plaintext bytes, then room for the tag.
/// Returns the whole record's length. The caller has checked the payload
/// against the record rules.
fn seal_in_slot(
    state: &mut SealState,
    kind: RecordKind,
    slot: &mut [u8],
    payload: usize,
) -> Result<usize, RecordError> {
    let len = RECORD_LEN_PREFIX + 1 + payload + TAG_LEN;
    let Some(record) = slot.get_mut(..len) else {
        return Err(RecordError::Malformed(
            "a record slot too small for its payload",
        ));
    };
    let nonce = state.0.take_nonce()?;
    let sealed_len = u32::try_from(1 + payload + TAG_LEN).expect("bounded by MAX_SEALED_LEN");
    let (prefix, rest) = record.split_at_mut(RECORD_LEN_PREFIX);
    let (body, tag_room) = rest.split_at_mut(1 + payload);
    prefix.copy_from_slice(&sealed_len.to_be_bytes());
    body[0] = kind.byte();
    let tag = state
        .0
        .key
        .seal_in_place_separate_tag(nonce, Aad::from(&*prefix), body)
        .expect("AES-256-GCM seals any record below its 64 GiB limit");
    tag_room.copy_from_slice(tag.as_ref());
    Ok(len)
}

/// Data records in a run.
pub const RUN_RECORDS: usize = 16;
/// Most payload a run carries: 1 MiB.
pub const RUN_PAYLOAD: usize = RUN_RECORDS * MAX_RECORD_PAYLOAD;

/// Up to [`RUN_RECORDS`] data records laid out back to back, each slot
/// the size of a whole record, so file bytes are read straight into their
/// payload places and sealed where they lie: no copy on their way from the
/// page cache to the socket. After sealing, every record but the last is
/// full, so the sealed run is one contiguous stretch of wire bytes.
pub struct RecordRun {
    buf: Vec<u8>,
    /// Payload bytes filled in.
    payload: usize,
    /// Wire bytes, once sealed (0 while not).
    sealed: usize,
}

/// Empty: the room for records is made as a fill needs it, so a run for a
/// small file costs that file's size, not a megabyte.
impl Default for RecordRun {
    fn default() -> Self {
        RecordRun {
            buf: Vec::new(),
            payload: 0,
            sealed: 0,
        }
    }
}

impl RecordRun {
    /// Payload bytes filled in.
    pub fn len(&self) -> usize {
        self.payload
    }

    pub fn is_empty(&self) -> bool {
        self.payload == 0
    }

    /// Empties the run, to be filled again.
    pub fn clear(&mut self) {
        self.payload = 0;
        self.sealed = 0;
    }

    /// Room for `want` payload bytes: whole slots, and the last one as
    /// long as its record. The room only grows, so a run refilled for the
    /// next megabyte of a file keeps its buffer.
    fn make_room(&mut self, want: usize) {
        let (full, rest) = (want / MAX_RECORD_PAYLOAD, want % MAX_RECORD_PAYLOAD);
        let last = match rest {
            0 => 0,
            n => RECORD_LEN_PREFIX + 1 + n + TAG_LEN,
        };
        let len = full * MAX_RECORD_LEN + last;
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
    }

    /// The payload places from `from` (a payload offset) up to `to`.
    fn places(&mut self, from: usize, to: usize) -> Vec<std::io::IoSliceMut<'_>> {
        self.buf
            .chunks_mut(MAX_RECORD_LEN)
            .enumerate()
            .filter_map(|(i, slot)| {
                let (first, last) = (i * MAX_RECORD_PAYLOAD, (i + 1) * MAX_RECORD_PAYLOAD);
                let (a, b) = (from.max(first), to.min(last));
                (a < b).then(|| {
                    let at = RECORD_LEN_PREFIX + 1 + (a - first);
                    std::io::IoSliceMut::new(&mut slot[at..at + (b - a)])
                })
            })
            .collect()
    }

    /// Fills the run with up to `want` payload bytes (at most
    /// [`RUN_PAYLOAD`]) from `read`, called with how many bytes are in
    /// already and the places still empty, until `want` are in or it
    /// returns 0 (the end of the source). Returns the payload length.
    pub fn fill(
        &mut self,
        want: usize,
        mut read: impl FnMut(usize, &mut [std::io::IoSliceMut<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let want = want.min(RUN_PAYLOAD);
        self.make_room(want);
        self.clear();
        while self.payload < want {
            let filled = self.payload;
            let mut places = self.places(filled, want);
            let n = match read(filled, &mut places) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            self.payload = (filled + n).min(want);
        }
        Ok(self.payload)
    }

    /// The payload filled in, record by record.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        let payload = self.payload;
        self.buf
            .chunks(MAX_RECORD_LEN)
            .enumerate()
            .map_while(move |(i, slot)| {
                let first = i * MAX_RECORD_PAYLOAD;
                let n = payload.saturating_sub(first).min(MAX_RECORD_PAYLOAD);
                (n > 0).then(|| &slot[RECORD_LEN_PREFIX + 1..RECORD_LEN_PREFIX + 1 + n])
            })
    }

    /// Seals every record in place, in order, and returns the length of
    /// the wire bytes ([`sealed`](Self::sealed)). The payload is ciphertext
    /// afterwards: fill the run again before reading it.
    pub fn seal(&mut self, state: &mut SealState) -> Result<usize, RecordError> {
        let mut end = 0;
        let mut left = self.payload;
        // Whatever happens, the payload is no longer plain text to read.
        self.payload = 0;
        for slot in self.buf.chunks_mut(MAX_RECORD_LEN) {
            if left == 0 {
                break;
            }
            let n = left.min(MAX_RECORD_PAYLOAD);
            end += seal_in_slot(state, RecordKind::Data, slot, n)?;
            left -= n;
        }
        self.sealed = end;
        Ok(end)
    }

    /// The wire bytes of a sealed run: empty unless it was sealed since it
    /// was last filled.
    pub fn sealed(&self) -> &[u8] {
        &self.buf[..self.sealed.min(self.buf.len())]
    }
}

/// Appends one sealed record of `kind` carrying `payload` to `out`.
pub fn seal_record(
    state: &mut SealState,
    kind: RecordKind,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    if payload.len() > MAX_RECORD_PAYLOAD {
        return Err(RecordError::PayloadTooLarge(payload.len()));
    }
    let start = begin_record(out);
    out.extend_from_slice(payload);
    finish_record(state, kind, out, start)
}

/// How many bytes `buf` must hold before [`open_record`] can make progress:
/// the prefix, then the whole record it declares (checked first).
pub fn bytes_needed(buf: &[u8]) -> Result<usize, RecordError> {
    let Some(prefix) = buf.first_chunk::<RECORD_LEN_PREFIX>() else {
        return Ok(RECORD_LEN_PREFIX);
    };
    let declared = u32::from_be_bytes(*prefix);
    let len = usize::try_from(declared).unwrap_or(usize::MAX);
    if len > MAX_SEALED_LEN {
        return Err(RecordError::TooLarge(declared));
    }
    if len < MIN_SEALED_LEN {
        return Err(RecordError::TooShort(declared));
    }
    Ok(RECORD_LEN_PREFIX + len)
}

/// Opens the record at the front of `buf`, removing it: `Ok(None)` while
/// `buf` holds less than a whole record. On an error nothing of the record
/// is returned, and the stream is finished: the caller must not go on.
pub fn open_record(
    state: &mut OpenState,
    buf: &mut BytesMut,
) -> Result<Option<(RecordKind, BytesMut)>, RecordError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if state.ended {
        return Err(RecordError::AfterEnd);
    }
    let needed = bytes_needed(buf)?;
    if buf.len() < needed {
        return Ok(None);
    }
    let mut body = buf.split_to(needed);
    let prefix = body.split_to(RECORD_LEN_PREFIX);
    let nonce = state.direction.take_nonce()?;
    let plain_len = state
        .direction
        .key
        .open_in_place(nonce, Aad::from(prefix), &mut body[..])
        .map_err(|_| RecordError::Authentication)?
        .len();
    body.truncate(plain_len);
    let kind = body.first().copied();
    body.advance(1);
    match (kind, body.is_empty()) {
        (Some(0), false) => Ok(Some((RecordKind::Data, body))),
        (Some(0), true) => Err(RecordError::Malformed("an empty data record")),
        (Some(1), true) => {
            state.ended = true;
            Ok(Some((RecordKind::End, body)))
        }
        (Some(1), false) => Err(RecordError::Malformed("an end record with a payload")),
        _ => Err(RecordError::Malformed("an unknown record kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn pair() -> (SealState, OpenState) {
        (SealState::new(&KEY), OpenState::new(&KEY))
    }

    fn sealed(state: &mut SealState, kind: RecordKind, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal_record(state, kind, payload, &mut out).unwrap();
        out
    }

    type Opened = Vec<(RecordKind, Vec<u8>)>;

    /// Opens every record of `bytes`, stopping at the first error.
    fn open_all(state: &mut OpenState, bytes: &[u8]) -> (Opened, Result<(), RecordError>) {
        let mut buf = BytesMut::from(bytes);
        let mut got = Vec::new();
        loop {
            match open_record(state, &mut buf) {
                Ok(Some((kind, payload))) => got.push((kind, payload.to_vec())),
                Ok(None) if buf.is_empty() => return (got, Ok(())),
                Ok(None) => return (got, Err(RecordError::Malformed("truncated"))),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn seal_open_round_trip_with_end() {
        let (mut s, mut o) = pair();
        let mut wire = sealed(&mut s, RecordKind::Data, b"hello");
        wire.extend(sealed(&mut s, RecordKind::Data, &[9; MAX_RECORD_PAYLOAD]));
        wire.extend(sealed(&mut s, RecordKind::End, b""));
        assert_eq!(
            wire.len(),
            3 * (RECORD_LEN_PREFIX + 1 + TAG_LEN) + 5 + MAX_RECORD_PAYLOAD
        );
        let (got, end) = open_all(&mut o, &wire);
        end.unwrap();
        assert_eq!(
            got,
            vec![
                (RecordKind::Data, b"hello".to_vec()),
                (RecordKind::Data, vec![9; MAX_RECORD_PAYLOAD]),
                (RecordKind::End, vec![]),
            ]
        );
        assert!(o.ended());
    }

    #[test]
    fn read_record_split_anywhere_waits_for_the_rest() {
        let (mut s, mut o) = pair();
        let wire = sealed(&mut s, RecordKind::Data, b"split me");
        for cut in 0..wire.len() {
            let mut o2 = OpenState::new(&KEY);
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(open_record(&mut o2, &mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&wire[cut..]);
            let (kind, payload) = open_record(&mut o2, &mut buf).unwrap().unwrap();
            assert_eq!((kind, &payload[..]), (RecordKind::Data, &b"split me"[..]));
        }
        let mut buf = BytesMut::from(&wire[..]);
        assert!(open_record(&mut o, &mut buf).unwrap().is_some());
    }

    #[test]
    fn any_flipped_bit_fails_authentication_and_returns_nothing() {
        let (mut s, _) = pair();
        let wire = sealed(&mut s, RecordKind::Data, b"secret");
        for i in RECORD_LEN_PREFIX..wire.len() {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                let (got, end) = open_all(&mut OpenState::new(&KEY), &bad);
                assert!(got.is_empty());
                assert_eq!(end, Err(RecordError::Authentication), "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn a_changed_length_prefix_is_refused() {
        let (mut s, _) = pair();
        let wire = sealed(&mut s, RecordKind::Data, b"secret");
        // Shorter: the record ends early and fails; longer: more bytes are
        // awaited, and with them the record fails too.
        let mut shorter = wire.clone();
        shorter[3] -= 1;
        let (got, end) = open_all(&mut OpenState::new(&KEY), &shorter);
        assert!(got.is_empty());
        assert_eq!(end, Err(RecordError::Authentication));
        let mut longer = wire.clone();
        longer[3] += 1;
        longer.push(0);
        let (got, end) = open_all(&mut OpenState::new(&KEY), &longer);
        assert!(got.is_empty());
        assert_eq!(end, Err(RecordError::Authentication));
    }

    #[test]
    fn read_max_record_len_from_the_prefix_alone() {
        let over = u32::try_from(MAX_SEALED_LEN + 1).unwrap();
        let mut buf = BytesMut::from(&over.to_be_bytes()[..]);
        let err = open_record(&mut OpenState::new(&KEY), &mut buf).unwrap_err();
        assert_eq!(err, RecordError::TooLarge(over));
        assert_eq!(
            bytes_needed(&u32::MAX.to_be_bytes()),
            Err(RecordError::TooLarge(u32::MAX))
        );
        let under = u32::try_from(MIN_SEALED_LEN - 1).unwrap();
        assert_eq!(
            bytes_needed(&under.to_be_bytes()),
            Err(RecordError::TooShort(under))
        );
        let max = u32::try_from(MAX_SEALED_LEN).unwrap();
        assert_eq!(bytes_needed(&max.to_be_bytes()), Ok(MAX_RECORD_LEN));
    }

    #[test]
    fn dropped_repeated_and_swapped_records_fail() {
        let (mut s, _) = pair();
        let a = sealed(&mut s, RecordKind::Data, b"first");
        let b = sealed(&mut s, RecordKind::Data, b"second");
        let c = sealed(&mut s, RecordKind::Data, b"third");
        for (name, wire, good) in [
            ("drop", [&a[..], &c[..]].concat(), 1),
            ("repeat", [&a[..], &a[..]].concat(), 1),
            ("swap", [&b[..], &a[..]].concat(), 0),
        ] {
            let (got, end) = open_all(&mut OpenState::new(&KEY), &wire);
            assert_eq!(got.len(), good, "{name}");
            assert_eq!(end, Err(RecordError::Authentication), "{name}");
        }
    }

    #[test]
    fn bytes_after_the_end_record_are_refused() {
        let (mut s, mut o) = pair();
        let mut wire = sealed(&mut s, RecordKind::End, b"");
        wire.extend(sealed(&mut s, RecordKind::Data, b"late"));
        let (got, end) = open_all(&mut o, &wire);
        assert_eq!(got, vec![(RecordKind::End, vec![])]);
        assert_eq!(end, Err(RecordError::AfterEnd));
    }

    #[test]
    fn authentic_but_malformed_records_are_refused() {
        // Sealed by hand with the right key, breaking the record rules.
        for (kind_byte, payload, why) in [
            (0u8, &b""[..], "an empty data record"),
            (1, b"x", "an end record with a payload"),
            (2, b"x", "an unknown record kind"),
        ] {
            let mut s = SealState::new(&KEY);
            let mut out = Vec::new();
            let start = begin_record(&mut out);
            out.extend_from_slice(payload);
            // Seal as an end (empty) or data record, then rewrite the kind
            // before sealing by going through the raw AEAD key.
            let len = u32::try_from(1 + payload.len() + TAG_LEN)
                .unwrap()
                .to_be_bytes();
            out[..4].copy_from_slice(&len);
            out[4] = kind_byte;
            let nonce = s.0.take_nonce().unwrap();
            let (head, body) = out.split_at_mut(start + 4);
            let tag =
                s.0.key
                    .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
                    .unwrap();
            out.extend_from_slice(tag.as_ref());
            let (got, end) = open_all(&mut OpenState::new(&KEY), &out);
            assert!(got.is_empty());
            assert_eq!(end, Err(RecordError::Malformed(why)));
        }
    }

    #[test]
    fn sealing_refuses_bad_payloads() {
        let (mut s, _) = pair();
        let mut out = vec![1, 2, 3];
        assert_eq!(
            seal_record(
                &mut s,
                RecordKind::Data,
                &[0; MAX_RECORD_PAYLOAD + 1],
                &mut out
            ),
            Err(RecordError::PayloadTooLarge(MAX_RECORD_PAYLOAD + 1))
        );
        assert!(seal_record(&mut s, RecordKind::Data, b"", &mut out).is_err());
        assert!(seal_record(&mut s, RecordKind::End, b"x", &mut out).is_err());
        assert_eq!(out, [1, 2, 3], "a refused record leaves nothing behind");
    }

    #[test]
    fn the_counter_stops_before_it_wraps() {
        let (mut s, _) = pair();
        s.set_counter(u64::MAX - 1);
        let mut out = Vec::new();
        seal_record(&mut s, RecordKind::Data, b"last", &mut out).unwrap();
        assert_eq!(
            seal_record(&mut s, RecordKind::Data, b"one too many", &mut out),
            Err(RecordError::CounterExhausted)
        );
    }

    #[test]
    fn the_nonce_is_the_counter() {
        // The second record sealed is the one a fresh opener cannot open
        // first, and opens once the counter is moved to 1.
        let (mut s, _) = pair();
        let _first = sealed(&mut s, RecordKind::Data, b"zero");
        let second = sealed(&mut s, RecordKind::Data, b"one");
        let (_, end) = open_all(&mut OpenState::new(&KEY), &second);
        assert_eq!(end, Err(RecordError::Authentication));
        let mut o = OpenState::new(&KEY);
        o.direction.next = 1;
        let (got, end) = open_all(&mut o, &second);
        end.unwrap();
        assert_eq!(got, vec![(RecordKind::Data, b"one".to_vec())]);
    }

    /// Deterministic bytes, different at every offset within a record.
    fn source(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Fills `run` from `data` at most `most` bytes per call, as a short
    /// `preadv` would.
    fn fill_from(run: &mut RecordRun, data: &[u8], want: usize, most: usize) -> usize {
        run.fill(want, |filled, places| {
            let mut rest = data.get(filled..).unwrap_or_default();
            let mut n = 0;
            for place in places.iter_mut() {
                let take = place.len().min(rest.len()).min(most - n);
                place[..take].copy_from_slice(&rest[..take]);
                rest = &rest[take..];
                n += take;
                if n == most || rest.is_empty() {
                    break;
                }
            }
            Ok(n)
        })
        .unwrap()
    }

    #[test]
    fn a_run_filled_in_uneven_reads_holds_the_bytes_in_record_order() {
        let data = source(RUN_PAYLOAD);
        let mut run = RecordRun::default();
        assert_eq!(fill_from(&mut run, &data, RUN_PAYLOAD, 10_007), RUN_PAYLOAD);
        assert_eq!(run.payloads().count(), RUN_RECORDS);
        assert!(
            run.payloads().collect::<Vec<_>>().concat() == data,
            "payload differs"
        );
    }

    #[test]
    fn a_run_of_a_source_that_ends_early_holds_what_there_was() {
        let data = source(3 * MAX_RECORD_PAYLOAD + 100);
        let mut run = RecordRun::default();
        assert_eq!(
            fill_from(&mut run, &data, RUN_PAYLOAD, usize::MAX),
            data.len()
        );
        assert_eq!(
            run.payloads().map(<[u8]>::len).collect::<Vec<_>>(),
            [
                MAX_RECORD_PAYLOAD,
                MAX_RECORD_PAYLOAD,
                MAX_RECORD_PAYLOAD,
                100
            ]
        );
        assert!(run.payloads().collect::<Vec<_>>().concat() == data);
    }

    /// A run for a small file takes room for that file's one record, not
    /// a megabyte (5,000 small coded files paid a 1 MiB zeroed buffer
    /// each); room grown for a full run is kept for the next fill.
    #[test]
    fn a_run_takes_the_room_its_fill_needs_and_keeps_what_it_grew() {
        let small = source(100);
        let mut run = RecordRun::default();
        fill_from(&mut run, &small, 100, usize::MAX);
        assert_eq!(run.buf.len(), RECORD_LEN_PREFIX + 1 + 100 + TAG_LEN);
        let (mut seal, mut open) = pair();
        assert_eq!(run.seal(&mut seal).unwrap(), run.buf.len());
        let (got, end) = open_all(&mut open, run.sealed());
        assert_eq!(end, Ok(()));
        assert_eq!(got.len(), 1);
        assert!(got[0].1[..] == small[..]);
        let full = source(RUN_PAYLOAD);
        fill_from(&mut run, &full, RUN_PAYLOAD, usize::MAX);
        assert_eq!(run.buf.len(), RUN_RECORDS * MAX_RECORD_LEN);
        fill_from(&mut run, &small, 100, usize::MAX);
        assert_eq!(run.buf.len(), RUN_RECORDS * MAX_RECORD_LEN);
        assert!(run.payloads().collect::<Vec<_>>().concat() == small);
    }

    /// A sealed run is the records `seal_record` would have made of the
    /// same payload, with the same counters, back to back.
    #[test]
    fn a_sealed_run_is_the_records_sealed_one_by_one() {
        let data = source(5 * MAX_RECORD_PAYLOAD + 12_345);
        let mut run = RecordRun::default();
        fill_from(&mut run, &data, data.len(), usize::MAX);
        let (mut by_run, mut one_by_one) = pair();
        let mut expected = sealed(&mut by_run, RecordKind::Data, b"before");
        let mut wire = expected.clone();
        let len = run.seal(&mut by_run).unwrap();
        assert_eq!(run.sealed().len(), len);
        wire.extend_from_slice(run.sealed());
        wire.extend(sealed(&mut by_run, RecordKind::End, b""));
        let mut again = SealState::new(&KEY);
        expected.clear();
        expected.extend(sealed(&mut again, RecordKind::Data, b"before"));
        for piece in data.chunks(MAX_RECORD_PAYLOAD) {
            expected.extend(sealed(&mut again, RecordKind::Data, piece));
        }
        expected.extend(sealed(&mut again, RecordKind::End, b""));
        assert!(wire == expected, "a sealed run differs from its records");
        let (got, end) = open_all(&mut one_by_one, &wire);
        end.unwrap();
        let payload: Vec<u8> = got[1..got.len() - 1]
            .iter()
            .flat_map(|(_, p)| p.clone())
            .collect();
        assert!(payload == data);
        assert!(run.is_empty(), "a sealed run holds no payload");
    }
}
