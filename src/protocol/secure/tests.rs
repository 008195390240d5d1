//! Both ends of a coded session over in-memory pipes: the handshake, the
//! sealed streams, and an attacker rewriting the records between them.

use std::time::Duration;

use tokio::io::{duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

use super::pake::tests::{coded_hellos, hex, vector_sessions};
use super::record::{bytes_needed, RECORD_LEN_PREFIX};
use super::*;

mod writer;

const T: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(5);

/// The handshake's bytes in each direction: PAKE message, confirmation.
const HANDSHAKE_LEN: usize = pake::PAKE_MESSAGE_LEN + pake::CONFIRMATION_LEN;

type Halves = (
    SealedReader<tokio::io::ReadHalf<DuplexStream>>,
    SealedWriter<tokio::io::WriteHalf<DuplexStream>>,
);

/// Runs `secure` on both ends of a pipe of `capacity` bytes.
async fn pair(
    capacity: usize,
    sender: (&[u8], [u8; 32]),
    receiver: (&[u8], [u8; 32]),
) -> (Result<Halves, Error>, Result<Halves, Error>) {
    let (a, b) = duplex(capacity);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let run = async {
        tokio::join!(
            secure(ar, aw, Role::Sender, sender.0, &sender.1, "receiver", IDLE),
            secure(
                br,
                bw,
                Role::Receiver,
                receiver.0,
                &receiver.1,
                "sender",
                IDLE
            ),
        )
    };
    tokio::time::timeout(T, run).await.expect("no deadlock")
}

/// Deterministic bytes that differ from record to record.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Writes `data` in uneven pieces, flushing now and then, then shuts down.
async fn write_all_then_close<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> io::Result<()> {
    let mut rest = data;
    let mut piece = 1;
    while !rest.is_empty() {
        let n = piece.min(rest.len());
        w.write_all(&rest[..n]).await?;
        if piece % 3 == 0 {
            w.flush().await?;
        }
        rest = &rest[n..];
        piece = piece * 7 % 100_003;
    }
    w.shutdown().await
}

/// Reads until the end or the first error: what was returned, and how it
/// ended (the typed error recovered).
async fn read_until_end<R: AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, Result<(), Error>) {
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 10_000];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => {
                let typed = recover_error(e).expect("sealed readers fail with a typed error");
                return (got, Err(typed));
            }
        }
    }
}

#[tokio::test]
async fn same_code_round_trips_both_ways_and_closes_cleanly() {
    let hellos = coded_hellos();
    let (s, r) = pair(
        4096,
        (b"4-purple-sausages", hellos),
        (b"4-purple-sausages", hellos),
    )
    .await;
    let ((mut sr, mut sw), (mut rr, mut rw)) = (s.unwrap(), r.unwrap());
    // Several maximum records each way, through a pipe smaller than one.
    let to_receiver = pattern(5 * record::MAX_RECORD_PAYLOAD + 1234, 1);
    let to_sender = pattern(3 * record::MAX_RECORD_PAYLOAD - 7, 2);
    let run = async {
        tokio::join!(
            write_all_then_close(&mut sw, &to_receiver),
            write_all_then_close(&mut rw, &to_sender),
            read_until_end(&mut rr),
            read_until_end(&mut sr),
        )
    };
    let (a, b, (at_receiver, end_r), (at_sender, end_s)) =
        tokio::time::timeout(T, run).await.unwrap();
    a.unwrap();
    b.unwrap();
    end_r.unwrap();
    end_s.unwrap();
    assert!(
        at_receiver == to_receiver,
        "sender to receiver bytes differ"
    );
    assert!(at_sender == to_sender, "receiver to sender bytes differ");
}

#[tokio::test]
async fn different_codes_fail_on_both_sides_before_any_data() {
    let hellos = coded_hellos();
    let (s, r) = pair(
        4096,
        (b"4-purple-sausages", hellos),
        (b"4-purple-sausage", hellos),
    )
    .await;
    assert!(matches!(s, Err(Error::CodeMismatch)), "{:?}", s.err());
    assert!(matches!(r, Err(Error::CodeMismatch)), "{:?}", r.err());
    let text = Error::CodeMismatch.to_string();
    assert_eq!(
        text,
        "the code did not match (no data was exchanged): check the code on both machines"
    );
    assert_eq!(Error::CodeMismatch.exit_code(), crate::error::EXIT_AUTH);
}

#[tokio::test]
async fn a_hello_changed_on_the_way_fails_the_code() {
    let hellos = coded_hellos();
    let mut seen = hellos;
    seen[15] ^= 2; // the sender's caps as the receiver read them
    let (s, r) = pair(4096, (b"same", hellos), (b"same", seen)).await;
    assert!(matches!(s, Err(Error::CodeMismatch)));
    assert!(matches!(r, Err(Error::CodeMismatch)));
}

#[tokio::test]
async fn a_peer_that_closes_mid_handshake_is_a_lost_connection() {
    let (a, b) = duplex(4096);
    let (ar, aw) = tokio::io::split(a);
    drop(b);
    let got = tokio::time::timeout(
        T,
        secure(ar, aw, Role::Sender, b"c", &coded_hellos(), "r", IDLE),
    )
    .await
    .unwrap();
    assert!(
        matches!(got, Err(Error::ConnectionLost { .. })),
        "{:?}",
        got.err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_in_the_handshake() {
    let (a, _b) = duplex(4096);
    let (ar, aw) = tokio::io::split(a);
    let got = tokio::time::timeout(
        10 * IDLE,
        secure(ar, aw, Role::Receiver, b"c", &coded_hellos(), "s", IDLE),
    )
    .await
    .unwrap();
    let err = got.err().unwrap();
    assert!(
        err.to_string().contains("no code message within 5 s"),
        "{err}"
    );
}

/// What an attacker on the sender-to-receiver path does to the records.
#[derive(Debug, Clone, Copy)]
enum Attack {
    None,
    FlipByte(usize),
    Drop(usize),
    Duplicate(usize),
    SwapFirstTwo,
    CutBeforeEnd,
    CutInsideRecord(usize),
    OversizeLength(usize),
    AppendAfterEnd,
}

/// Splits a sealed stream into its records (the attacker can read lengths).
fn records(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let n = bytes_needed(bytes).unwrap();
        out.push(bytes[..n].to_vec());
        bytes = &bytes[n..];
    }
    out
}

fn attack(stream: &[u8], how: Attack) -> Vec<u8> {
    let mut recs = records(stream);
    match how {
        Attack::None => {}
        Attack::FlipByte(i) => recs[i][RECORD_LEN_PREFIX + 3] ^= 0x40,
        Attack::Drop(i) => {
            recs.remove(i);
        }
        Attack::Duplicate(i) => recs.insert(i, recs[i].clone()),
        Attack::SwapFirstTwo => recs.swap(0, 1),
        Attack::CutBeforeEnd => {
            recs.pop();
        }
        Attack::CutInsideRecord(i) => {
            recs.truncate(i + 1);
            recs[i].truncate(10);
        }
        Attack::OversizeLength(i) => {
            let over = u32::try_from(record::MAX_SEALED_LEN + 1).unwrap();
            recs[i][..4].copy_from_slice(&over.to_be_bytes());
        }
        Attack::AppendAfterEnd => {
            let first = recs[0].clone();
            recs.push(first);
        }
    }
    recs.concat()
}

/// The sender writes three records and closes; the attacker relays the
/// handshake untouched, then rewrites the records. Returns what the
/// receiver read and how its reading ended.
async fn attacked(how: Attack) -> (Vec<u8>, Vec<u8>, Result<(), Error>) {
    let (sender_end, mut attacker_in) = duplex(256 * 1024);
    let (mut attacker_out, receiver_end) = duplex(256 * 1024);
    let (back_s, back_r) = duplex(4096);
    let (sender_reads, _) = tokio::io::split(back_s);
    let (_, receiver_writes) = tokio::io::split(back_r);
    let (_, sender_writes) = tokio::io::split(sender_end);
    let (receiver_reads, _) = tokio::io::split(receiver_end);
    let hellos = coded_hellos();
    let records: Vec<Vec<u8>> = (0..3).map(|i| pattern(1000 + i, i as u8)).collect();
    let sender = async {
        let (_r, mut w) = secure(
            sender_reads,
            sender_writes,
            Role::Sender,
            b"k",
            &hellos,
            "r",
            IDLE,
        )
        .await
        .unwrap();
        for rec in &records {
            w.write_all(rec).await.unwrap();
            w.flush().await.unwrap();
        }
        w.shutdown().await.unwrap();
    };
    let relay = async {
        let mut handshake = [0u8; HANDSHAKE_LEN];
        attacker_in
            .read_exact(&mut handshake[..pake::PAKE_MESSAGE_LEN])
            .await
            .unwrap();
        attacker_out
            .write_all(&handshake[..pake::PAKE_MESSAGE_LEN])
            .await
            .unwrap();
        attacker_in
            .read_exact(&mut handshake[pake::PAKE_MESSAGE_LEN..])
            .await
            .unwrap();
        attacker_out
            .write_all(&handshake[pake::PAKE_MESSAGE_LEN..])
            .await
            .unwrap();
        let mut stream = Vec::new();
        attacker_in.read_to_end(&mut stream).await.unwrap();
        attacker_out.write_all(&attack(&stream, how)).await.unwrap();
        attacker_out.shutdown().await.unwrap();
    };
    let receiver = async {
        let (mut r, _w) = secure(
            receiver_reads,
            receiver_writes,
            Role::Receiver,
            b"k",
            &hellos,
            "s",
            IDLE,
        )
        .await
        .unwrap();
        read_until_end(&mut r).await
    };
    let (_, _, (got, end)) =
        tokio::time::timeout(T, async { tokio::join!(sender, relay, receiver) })
            .await
            .unwrap();
    (records.concat(), got, end)
}

#[tokio::test]
async fn records_rewritten_on_the_way_fail_and_return_only_authentic_bytes() {
    let auth =
        "a sealed record failed authentication: the connection was tampered with or corrupted";
    let cut = "the connection was cut (no end-of-session record)";
    let first = 1000;
    let two = 1000 + 1001;
    let all = 1000 + 1001 + 1002;
    for (how, returned, want) in [
        (Attack::None, all, None),
        (Attack::FlipByte(1), first, Some(auth)),
        (Attack::FlipByte(3), all, Some(auth)), // the end record
        (Attack::Drop(1), first, Some(auth)),
        (Attack::Duplicate(0), first, Some(auth)),
        (Attack::SwapFirstTwo, 0, Some(auth)),
        (Attack::CutBeforeEnd, all, Some(cut)),
        (Attack::CutInsideRecord(2), two, Some(cut)),
        (
            Attack::OversizeLength(1),
            first,
            Some("more than the maximum 65553"),
        ),
        (
            Attack::AppendAfterEnd,
            all,
            Some("bytes follow the end-of-session record"),
        ),
    ] {
        let (sent, got, end) = attacked(how).await;
        assert_eq!(got.len(), returned, "{how:?}: bytes returned");
        assert!(
            got[..] == sent[..returned],
            "{how:?}: returned bytes are not authentic"
        );
        match (want, end) {
            (None, Ok(())) => {}
            (Some(text), Err(e)) => {
                let is_cut = text == cut;
                assert!(e.to_string().contains(text), "{how:?}: {e}");
                if is_cut {
                    assert!(matches!(e, Error::ConnectionLost { .. }), "{how:?}: {e:?}");
                } else {
                    assert!(matches!(e, Error::Protocol { .. }), "{how:?}: {e:?}");
                }
            }
            (want, end) => panic!("{how:?}: wanted {want:?}, got {end:?}"),
        }
    }
}

#[tokio::test]
async fn a_reader_stays_failed_after_a_bad_record() {
    let key = [3u8; 32];
    let mut wire = Vec::new();
    seal_record(
        &mut SealState::new(&key),
        RecordKind::Data,
        b"payload",
        &mut wire,
    )
    .unwrap();
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let mut r = SealedReader::new(&wire[..], OpenState::new(&key), "peer".into());
    let mut buf = [0u8; 64];
    for _ in 0..3 {
        let err = tokio::time::timeout(T, r.read(&mut buf))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(recover_error(err), Ok(Error::Protocol { .. })));
    }
    assert_eq!(buf, [0u8; 64], "nothing of the bad record was handed out");
}

#[tokio::test]
async fn one_read_takes_every_record_already_here_and_stops_before_a_bad_one() {
    let key = [5u8; 32];
    let mut seal = SealState::new(&key);
    let mut wire = Vec::new();
    // Four full records and a fifth that was tampered with.
    let data = pattern(4 * record::MAX_RECORD_PAYLOAD + 10, 9);
    for piece in data.chunks(record::MAX_RECORD_PAYLOAD) {
        seal_record(&mut seal, RecordKind::Data, piece, &mut wire).unwrap();
    }
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let mut r = SealedReader::new(&wire[..], OpenState::new(&key), "peer".into());
    let mut buf = vec![0u8; 1 << 20];
    // As from a plain socket: a large read gets all the good records at
    // once (not one 64 KiB record per call), and none of the bad one.
    let n = tokio::time::timeout(T, r.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 4 * record::MAX_RECORD_PAYLOAD);
    assert_eq!(&buf[..n], &data[..n]);
    let err = tokio::time::timeout(T, r.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(recover_error(err), Ok(Error::Protocol { .. })));
}

/// Body bytes from a sealed source come out of the records they were
/// opened in, several records per call when they are here, never past
/// `max`, and the good records before a bad one are all handed over
/// before its error.
#[tokio::test]
async fn body_chunks_are_the_opened_records_up_to_max_then_the_fault() {
    use crate::protocol::FrameReader;
    let key = [6u8; 32];
    let mut seal = SealState::new(&key);
    let mut wire = Vec::new();
    let data = pattern(5 * record::MAX_RECORD_PAYLOAD + 10, 4);
    for piece in data.chunks(record::MAX_RECORD_PAYLOAD) {
        seal_record(&mut seal, RecordKind::Data, piece, &mut wire).unwrap();
    }
    let last = wire.len() - 1;
    wire[last] ^= 1;
    let sealed = SealedReader::new(&wire[..], OpenState::new(&key), "peer".into());
    let mut fr = FrameReader::new(sealed, "peer".into(), IDLE);
    let mut chunks = Vec::new();
    // A max inside the second record: the first whole, then part of it.
    let max = record::MAX_RECORD_PAYLOAD + 1000;
    let n = tokio::time::timeout(T, fr.read_body_chunks(max, &mut chunks))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, max);
    assert_eq!(
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
        [record::MAX_RECORD_PAYLOAD, 1000]
    );
    // Then the rest of the good records in one call.
    let n = tokio::time::timeout(T, fr.read_body_chunks(1 << 30, &mut chunks))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 5 * record::MAX_RECORD_PAYLOAD - max);
    assert_eq!(chunks.len(), 6, "one chunk per record, no copies joined");
    let got: Vec<u8> = chunks.concat();
    assert!(got == data[..got.len()], "the good records, in order");
    let err = tokio::time::timeout(T, fr.read_body_chunks(1 << 30, &mut chunks))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert_eq!(chunks.len(), 6, "nothing of the bad record");
}

/// A session's framed reader and writer run over the sealed halves
/// unchanged, the clean close included.
#[tokio::test]
async fn frames_and_bodies_run_over_sealed_halves() {
    use crate::protocol::{FrameReader, FrameWriter, Message};
    let hellos = coded_hellos();
    let (s, r) = pair(1000, (b"c", hellos), (b"c", hellos)).await;
    let ((_sr, sw), (rr, _rw)) = (s.unwrap(), r.unwrap());
    let mut w = FrameWriter::new(sw, "receiver".into(), IDLE);
    let mut fr = FrameReader::new(rr, "sender".into(), IDLE);
    let body = pattern(200_000, 9);
    let send = async {
        w.send(&Message::FileBegin { id: 0, offset: 0 }).await?;
        w.send_raw(&body).await?;
        w.send(&Message::Done).await?;
        w.shutdown().await
    };
    let receive = async {
        let first = fr.read_message().await?;
        let mut got = Vec::new();
        // Both ways of reading a body, in turns.
        let mut turn = 0;
        while got.len() < body.len() {
            let left = body.len() - got.len();
            if turn % 2 == 0 {
                got.extend_from_slice(&fr.read_body(left.min(30_000)).await?);
            } else {
                let mut chunks = Vec::new();
                fr.read_body_chunks(left, &mut chunks).await?;
                chunks.iter().for_each(|c| got.extend_from_slice(c));
            }
            turn += 1;
        }
        let done = fr.read_message().await?;
        let end = fr.read_message().await?;
        Ok::<_, Error>((first, got, done, end))
    };
    let (sent, received) = tokio::time::timeout(T, async { tokio::join!(send, receive) })
        .await
        .unwrap();
    sent.unwrap();
    let (first, got, done, end) = received.unwrap();
    assert_eq!(first, Some(Message::FileBegin { id: 0, offset: 0 }));
    assert!(got == body);
    assert_eq!(done, Some(Message::Done));
    assert_eq!(end, None, "the end record is a clean close");
}

#[test]
fn recover_error_keeps_plain_io_errors() {
    let plain = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
    let back = recover_error(plain).unwrap_err();
    assert_eq!(back.kind(), io::ErrorKind::ConnectionReset);
    let typed = io::Error::new(io::ErrorKind::InvalidData, Error::CodeMismatch);
    assert!(matches!(recover_error(typed), Ok(Error::CodeMismatch)));
}

/// docs/PROTOCOL.md §9.6: the first record in each direction of the
/// test-vector session (each direction's counter starts at 0).
pub const VECTOR_SENDER_RECORD: &str =
    "0000002064831110740ebd59f072eeb6f5d54f3084d9f9cdc194c241b18e3460db3a3237";
pub const VECTOR_RECEIVER_RECORD: &str =
    "0000001e25d473ed9839ba02fc4de29f9b002ef468f838de0b1607d3b3a130796780";
pub const VECTOR_SENDER_END: &str = "000000114151d1de9e4ed6eac448cfc7f7c1ea4d7f";

#[test]
fn test_vector_first_records() {
    let (s, r) = vector_sessions();
    let (mut s_seal, mut s_open) = s.into_record_states();
    let (mut r_seal, mut r_open) = r.into_record_states();
    let mut out = Vec::new();
    seal_record(&mut s_seal, RecordKind::Data, b"hello, receiver", &mut out).unwrap();
    assert_eq!(hex(&out), VECTOR_SENDER_RECORD);
    let mut back = Vec::new();
    seal_record(&mut r_seal, RecordKind::Data, b"hello, sender", &mut back).unwrap();
    assert_eq!(hex(&back), VECTOR_RECEIVER_RECORD);
    let mut end = Vec::new();
    seal_record(&mut s_seal, RecordKind::End, b"", &mut end).unwrap();
    assert_eq!(hex(&end), VECTOR_SENDER_END);
    // Each side opens the other's, in order.
    let mut wire = bytes::BytesMut::from(&[out, end].concat()[..]);
    let (kind, payload) = open_record(&mut r_open, &mut wire).unwrap().unwrap();
    assert_eq!(
        (kind, &payload[..]),
        (RecordKind::Data, &b"hello, receiver"[..])
    );
    let (kind, _) = open_record(&mut r_open, &mut wire).unwrap().unwrap();
    assert_eq!(kind, RecordKind::End);
    let mut wire = bytes::BytesMut::from(&back[..]);
    let (_, payload) = open_record(&mut s_open, &mut wire).unwrap().unwrap();
    assert_eq!(&payload[..], b"hello, sender");
}

/// docs/PROTOCOL.md §9.6 shows the same values the tests assert.
#[test]
fn test_vectors_appear_in_the_protocol_document() {
    use super::pake::tests as p;
    let doc = include_str!("../../../docs/PROTOCOL.md");
    for value in [
        p::VECTOR_SENDER_MESSAGE,
        p::VECTOR_RECEIVER_MESSAGE,
        p::VECTOR_SPAKE_KEY,
        p::VECTOR_TRANSCRIPT,
        p::VECTOR_SENDER_TO_RECEIVER,
        p::VECTOR_RECEIVER_TO_SENDER,
        p::VECTOR_CONFIRM_SENDER_KEY,
        p::VECTOR_CONFIRM_RECEIVER_KEY,
        p::VECTOR_SENDER_CONFIRMATION,
        p::VECTOR_RECEIVER_CONFIRMATION,
        VECTOR_SENDER_RECORD,
        VECTOR_RECEIVER_RECORD,
        VECTOR_SENDER_END,
    ] {
        assert!(doc.contains(value), "docs/PROTOCOL.md lacks {value}");
    }
    let code = std::str::from_utf8(p::VECTOR_CODE).unwrap();
    assert!(doc.contains(&format!("\"{code}\"")));
}
