//! The coded handshake without I/O: SPAKE2 on the code, the transcript,
//! the key schedule and key confirmation (docs/PROTOCOL.md §9.2–9.3).
//!
//! SPAKE2 (Ed25519 group, symmetric mode) turns the short code into a
//! shared key that an eavesdropper learns nothing from and an active
//! attacker can test one guess against per connection. The key is then
//! bound to everything both sides said (the transcript `T`) through HKDF,
//! and each side proves it holds the result with an HMAC over `T` before
//! any application byte moves.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, OsRng, RngCore};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use super::record::{OpenState, SealState};
use super::Role;

/// SPAKE2's identity for both sides (symmetric mode has one).
pub const CODE_IDENTITY: &[u8] = b"xfer/1 code";
/// Bytes of a PAKE message: the kind byte, then a compressed Edwards point.
pub const PAKE_MESSAGE_LEN: usize = 33;
/// The first byte of every PAKE message: SPAKE2's tag for symmetric mode.
pub const PAKE_MESSAGE_KIND: u8 = b'S';
/// Bytes of a key confirmation (HMAC-SHA256).
pub const CONFIRMATION_LEN: usize = 32;

/// HKDF `info` labels, one per derived key.
pub const LABEL_SENDER_TO_RECEIVER: &[u8] = b"xfer/1 record sender to receiver";
pub const LABEL_RECEIVER_TO_SENDER: &[u8] = b"xfer/1 record receiver to sender";
pub const LABEL_CONFIRM_SENDER: &[u8] = b"xfer/1 confirm sender";
pub const LABEL_CONFIRM_RECEIVER: &[u8] = b"xfer/1 confirm receiver";

/// A secret 32-byte key, wiped when dropped.
pub type Key = Zeroizing<[u8; 32]>;

/// Why the coded handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    /// The peer's PAKE message is not one.
    #[error("the peer's code message is malformed: {0}")]
    BadMessage(&'static str),
    /// The peer sent back our own PAKE message.
    #[error("the peer echoed this side's code message")]
    Reflected,
    /// The peer's confirmation does not match: the codes differ (or the
    /// hellos or PAKE messages were changed on the way).
    #[error("the code did not match")]
    Mismatch,
}

/// This side's half of SPAKE2, started and waiting for the peer's message.
pub struct PakeStart {
    spake: Spake2<Ed25519Group>,
    message: [u8; PAKE_MESSAGE_LEN],
}

impl PakeStart {
    /// Starts SPAKE2 on `code` with a fresh secret from the system RNG.
    pub fn new(code: &[u8]) -> Self {
        Self::with_rng(code, OsRng)
    }

    /// Starts SPAKE2 with the secret scalar drawn from `rng` (test vectors
    /// use a fixed one).
    pub(super) fn with_rng(code: &[u8], rng: impl RngCore + CryptoRng) -> Self {
        let (spake, sent) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(code),
            &Identity::new(CODE_IDENTITY),
            rng,
        );
        let message = sent
            .as_slice()
            .try_into()
            .expect("SPAKE2 on Ed25519 writes 33-byte messages");
        PakeStart { spake, message }
    }

    /// The message to send the peer.
    pub fn message(&self) -> &[u8; PAKE_MESSAGE_LEN] {
        &self.message
    }

    /// Finishes SPAKE2 with the peer's message and derives the session's
    /// keys. `hellos` are both hellos as sent, the sender's first.
    pub fn finish(
        self,
        role: Role,
        hellos: &[u8; 32],
        peer_message: &[u8],
    ) -> Result<SessionKeys, PakeError> {
        let peer: &[u8; PAKE_MESSAGE_LEN] = peer_message
            .try_into()
            .map_err(|_| PakeError::BadMessage("not 33 bytes"))?;
        if peer[0] != PAKE_MESSAGE_KIND {
            return Err(PakeError::BadMessage("not a symmetric SPAKE2 message"));
        }
        if *peer == self.message {
            return Err(PakeError::Reflected);
        }
        let (sender, receiver) = match role {
            Role::Sender => (&self.message, peer),
            Role::Receiver => (peer, &self.message),
        };
        let transcript = transcript(hellos, sender, receiver);
        let shared = Zeroizing::new(
            self.spake
                .finish(peer)
                .map_err(|_| PakeError::BadMessage("not a point of the Ed25519 group"))?,
        );
        Ok(SessionKeys {
            role,
            schedule: KeySchedule::derive(&shared, &transcript),
            transcript,
        })
    }
}

/// `T`: SHA-256 of both hellos and both PAKE messages, the sender's first.
pub fn transcript(
    hellos: &[u8; 32],
    sender_message: &[u8; PAKE_MESSAGE_LEN],
    receiver_message: &[u8; PAKE_MESSAGE_LEN],
) -> [u8; 32] {
    let mut t = Sha256::new();
    t.update(hellos);
    t.update(sender_message);
    t.update(receiver_message);
    t.finalize().into()
}

/// The four keys of a session.
pub struct KeySchedule {
    pub sender_to_receiver: Key,
    pub receiver_to_sender: Key,
    pub confirm_sender: Key,
    pub confirm_receiver: Key,
}

impl KeySchedule {
    /// HKDF-SHA256 with the SPAKE2 key as input and `T` as salt.
    pub fn derive(spake_key: &[u8], transcript: &[u8; 32]) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(transcript), spake_key);
        let expand = |label: &[u8]| {
            let mut key = Zeroizing::new([0u8; 32]);
            hkdf.expand(label, &mut key[..])
                .expect("32 bytes is a valid HKDF-SHA256 length");
            key
        };
        KeySchedule {
            sender_to_receiver: expand(LABEL_SENDER_TO_RECEIVER),
            receiver_to_sender: expand(LABEL_RECEIVER_TO_SENDER),
            confirm_sender: expand(LABEL_CONFIRM_SENDER),
            confirm_receiver: expand(LABEL_CONFIRM_RECEIVER),
        }
    }
}

/// HMAC-SHA256(`key`, `T`): what a side sends to prove it holds the keys.
pub fn confirmation(key: &[u8; 32], transcript: &[u8; 32]) -> [u8; CONFIRMATION_LEN] {
    confirmation_mac(key, transcript)
        .finalize()
        .into_bytes()
        .into()
}

fn confirmation_mac(key: &[u8; 32], transcript: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(transcript);
    mac
}

/// The keys of one session as seen from one side.
pub struct SessionKeys {
    role: Role,
    transcript: [u8; 32],
    schedule: KeySchedule,
}

impl SessionKeys {
    /// The transcript hash `T`.
    pub fn transcript(&self) -> &[u8; 32] {
        &self.transcript
    }

    /// This side's confirmation, to send.
    pub fn confirmation(&self) -> [u8; CONFIRMATION_LEN] {
        let key = match self.role {
            Role::Sender => &self.schedule.confirm_sender,
            Role::Receiver => &self.schedule.confirm_receiver,
        };
        confirmation(key, &self.transcript)
    }

    /// Checks the peer's confirmation in constant time.
    pub fn verify_peer(&self, peer_confirmation: &[u8]) -> Result<(), PakeError> {
        let key = match self.role {
            Role::Sender => &self.schedule.confirm_receiver,
            Role::Receiver => &self.schedule.confirm_sender,
        };
        confirmation_mac(key, &self.transcript)
            .verify_slice(peer_confirmation)
            .map_err(|_| PakeError::Mismatch)
    }

    /// The record states: this side's sealing direction and the peer's.
    pub fn into_record_states(self) -> (SealState, OpenState) {
        let s = &self.schedule;
        match self.role {
            Role::Sender => (
                SealState::new(&s.sender_to_receiver),
                OpenState::new(&s.receiver_to_sender),
            ),
            Role::Receiver => (
                SealState::new(&s.receiver_to_sender),
                OpenState::new(&s.sender_to_receiver),
            ),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::protocol::{CAP_CODE, MAGIC, PROTOCOL_VERSION};

    /// An "RNG" that yields one byte over and over: test vectors only.
    pub struct FixedRng(pub u8);

    impl RngCore for FixedRng {
        fn next_u32(&mut self) -> u32 {
            u32::from_ne_bytes([self.0; 4])
        }
        fn next_u64(&mut self) -> u64 {
            u64::from_ne_bytes([self.0; 8])
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(self.0);
            Ok(())
        }
    }

    impl CryptoRng for FixedRng {}

    /// A coded hello: magic, version 1, caps = CAP_CODE.
    pub fn coded_hello() -> [u8; 16] {
        let mut hello = [0u8; 16];
        hello[..8].copy_from_slice(&MAGIC);
        hello[8..12].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        hello[12..].copy_from_slice(&CAP_CODE.to_be_bytes());
        hello
    }

    pub fn coded_hellos() -> [u8; 32] {
        let mut both = [0u8; 32];
        both[..16].copy_from_slice(&coded_hello());
        both[16..].copy_from_slice(&coded_hello());
        both
    }

    pub fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn run(sender_code: &[u8], receiver_code: &[u8]) -> (SessionKeys, SessionKeys) {
        let s = PakeStart::new(sender_code);
        let r = PakeStart::new(receiver_code);
        let (sm, rm) = (*s.message(), *r.message());
        let hellos = coded_hellos();
        (
            s.finish(Role::Sender, &hellos, &rm).unwrap(),
            r.finish(Role::Receiver, &hellos, &sm).unwrap(),
        )
    }

    #[test]
    fn same_code_confirms_both_ways() {
        let (s, r) = run(b"7-code", b"7-code");
        assert_eq!(s.transcript(), r.transcript());
        s.verify_peer(&r.confirmation()).unwrap();
        r.verify_peer(&s.confirmation()).unwrap();
        // Each side's confirmation differs: a reflected one never passes.
        assert_ne!(s.confirmation(), r.confirmation());
        assert_eq!(s.verify_peer(&s.confirmation()), Err(PakeError::Mismatch));
    }

    #[test]
    fn different_codes_do_not_confirm() {
        let (s, r) = run(b"7-code", b"8-code");
        assert_eq!(s.verify_peer(&r.confirmation()), Err(PakeError::Mismatch));
        assert_eq!(r.verify_peer(&s.confirmation()), Err(PakeError::Mismatch));
    }

    #[test]
    fn a_changed_hello_does_not_confirm() {
        let s = PakeStart::new(b"7-code");
        let r = PakeStart::new(b"7-code");
        let (sm, rm) = (*s.message(), *r.message());
        let hellos = coded_hellos();
        let mut seen = hellos;
        seen[15] = 0; // the sender's caps, as the receiver saw them
        let s = s.finish(Role::Sender, &hellos, &rm).unwrap();
        let r = r.finish(Role::Receiver, &seen, &sm).unwrap();
        assert_eq!(r.verify_peer(&s.confirmation()), Err(PakeError::Mismatch));
        assert_eq!(s.verify_peer(&r.confirmation()), Err(PakeError::Mismatch));
    }

    #[test]
    fn malformed_pake_messages_are_refused() {
        let hellos = coded_hellos();
        let good = *PakeStart::new(b"x").message();
        let mut wrong_kind = good;
        wrong_kind[0] = b'A';
        // y = 2 is not the y-coordinate of any Edwards25519 point.
        let mut not_a_point = [0u8; 33];
        not_a_point[0] = b'S';
        not_a_point[1] = 2;
        for (bytes, want) in [
            (&good[..32], PakeError::BadMessage("not 33 bytes")),
            (
                &[good.as_slice(), &[0]].concat()[..],
                PakeError::BadMessage("not 33 bytes"),
            ),
            (
                &wrong_kind[..],
                PakeError::BadMessage("not a symmetric SPAKE2 message"),
            ),
            (
                &not_a_point[..],
                PakeError::BadMessage("not a point of the Ed25519 group"),
            ),
        ] {
            let err = PakeStart::new(b"x")
                .finish(Role::Receiver, &hellos, bytes)
                .err()
                .unwrap();
            assert_eq!(err, want);
        }
        let me = PakeStart::new(b"x");
        let echo = *me.message();
        assert_eq!(
            me.finish(Role::Sender, &hellos, &echo).err(),
            Some(PakeError::Reflected)
        );
    }

    /// docs/PROTOCOL.md §9.6: every value of a coded handshake from fixed
    /// secrets, for a second implementation to check itself against.
    pub const VECTOR_CODE: &[u8] = b"7-crossover-clockwork";
    pub const VECTOR_SENDER_MESSAGE: &str =
        "537b6484e7fbc8743be7ef494097e949cdf43a770deac9445aefa21d70e34a0b13";
    pub const VECTOR_SPAKE_KEY: &str =
        "9e82a43b54e26a58cc26122aee098f43a34e5f23766e522717272fbc67da2f2e";
    pub const VECTOR_RECEIVER_MESSAGE: &str =
        "531ad7ed418c4a0c1c07aa7e28d019ab76e274cc8b0355d5319e7535cfe6e70b98";
    pub const VECTOR_TRANSCRIPT: &str =
        "6f7ce861faf4ab5f218afc3359f5f651380a1df5aba342eff6179264a41ad787";
    pub const VECTOR_SENDER_TO_RECEIVER: &str =
        "5b24ab258f64058e155c3cf34a63ca53ae09ea46294fd6a77d0815d52e505bf8";
    pub const VECTOR_RECEIVER_TO_SENDER: &str =
        "63e92fd0dcbad6c9ac56284a5e29fc3f2052bf201bd2674b87eec94a71cb7e9c";
    pub const VECTOR_CONFIRM_SENDER_KEY: &str =
        "83fd6aa9b1bd8295d02a945fd0c6c6742f0750386dd6dd2bd109fa60bcbdc1df";
    pub const VECTOR_CONFIRM_RECEIVER_KEY: &str =
        "934bd8e526ca016d52e335e981b684985a4364196b4f70b2ee18c162186c1b6b";
    pub const VECTOR_SENDER_CONFIRMATION: &str =
        "d0d3eaf2191e3f2da00bd88ca054c833555d7105719dfe2fef2d22afaf00cd85";
    pub const VECTOR_RECEIVER_CONFIRMATION: &str =
        "e90a6df91b082ebefbd540919db09dbbb324f04220979732566c4a6cd600977c";

    /// Both sides of the test-vector handshake.
    pub fn vector_sessions() -> (SessionKeys, SessionKeys) {
        let s = PakeStart::with_rng(VECTOR_CODE, FixedRng(0x11));
        let r = PakeStart::with_rng(VECTOR_CODE, FixedRng(0x22));
        assert_eq!(hex(s.message()), VECTOR_SENDER_MESSAGE);
        assert_eq!(hex(r.message()), VECTOR_RECEIVER_MESSAGE);
        let (sm, rm) = (*s.message(), *r.message());
        let hellos = coded_hellos();
        (
            s.finish(Role::Sender, &hellos, &rm).unwrap(),
            r.finish(Role::Receiver, &hellos, &sm).unwrap(),
        )
    }

    #[test]
    fn test_vector_handshake() {
        let (s, r) = vector_sessions();
        assert_eq!(hex(s.transcript()), VECTOR_TRANSCRIPT);
        let k = &s.schedule;
        assert_eq!(hex(&k.sender_to_receiver[..]), VECTOR_SENDER_TO_RECEIVER);
        assert_eq!(hex(&k.receiver_to_sender[..]), VECTOR_RECEIVER_TO_SENDER);
        assert_eq!(hex(&k.confirm_sender[..]), VECTOR_CONFIRM_SENDER_KEY);
        assert_eq!(hex(&k.confirm_receiver[..]), VECTOR_CONFIRM_RECEIVER_KEY);
        assert_eq!(hex(&s.confirmation()), VECTOR_SENDER_CONFIRMATION);
        assert_eq!(hex(&r.confirmation()), VECTOR_RECEIVER_CONFIRMATION);
        s.verify_peer(&r.confirmation()).unwrap();
        r.verify_peer(&s.confirmation()).unwrap();
    }

    /// The SPAKE2 key of the test-vector handshake, computed on its own.
    fn vector_spake_key() -> Vec<u8> {
        let (spake, _) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(VECTOR_CODE),
            &Identity::new(CODE_IDENTITY),
            FixedRng(0x11),
        );
        let receiver = PakeStart::with_rng(VECTOR_CODE, FixedRng(0x22));
        spake.finish(receiver.message()).unwrap()
    }

    /// The key schedule alone, from the vector's SPAKE2 key and transcript,
    /// for implementations whose SPAKE2 cannot take a fixed secret.
    #[test]
    fn test_vector_key_schedule() {
        let key = vector_spake_key();
        assert_eq!(hex(&key), VECTOR_SPAKE_KEY);
        let mut transcript = [0u8; 32];
        for (i, byte) in transcript.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&VECTOR_TRANSCRIPT[2 * i..2 * i + 2], 16).unwrap();
        }
        let k = KeySchedule::derive(&key, &transcript);
        assert_eq!(hex(&k.sender_to_receiver[..]), VECTOR_SENDER_TO_RECEIVER);
        assert_eq!(hex(&k.receiver_to_sender[..]), VECTOR_RECEIVER_TO_SENDER);
        assert_eq!(hex(&k.confirm_sender[..]), VECTOR_CONFIRM_SENDER_KEY);
        assert_eq!(hex(&k.confirm_receiver[..]), VECTOR_CONFIRM_RECEIVER_KEY);
        assert_eq!(
            hex(&confirmation(&k.confirm_sender, &transcript)),
            VECTOR_SENDER_CONFIRMATION
        );
    }
}
