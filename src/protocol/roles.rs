//! Who plays which part: the four commands, the capability bits that
//! announce a reversed session in the hello, and the check each side makes
//! of its peer's hello before anything else moves (docs/PROTOCOL.md §11).
//!
//! The hello's layout never changes; pull mode only sets two more bits.
//! A push session (`send` to `recv`) sets neither, so its bytes are exactly
//! those of every earlier release.

use super::{CAP_CODE, CAP_TOTALS};
use crate::error::Error;

/// Capability bit: this side is a listener that offers files and stores
/// nothing (`xfer serve`).
pub const CAP_SERVES: u32 = 1 << 2;

/// Capability bit: this side connected to fetch files and store them
/// (`xfer get`).
pub const CAP_FETCHES: u32 = 1 << 3;

/// The role bits: a peer's hello is judged on these and [`CAP_CODE`];
/// any other bit is ignored.
const ROLE_BITS: u32 = CAP_SERVES | CAP_FETCHES;

/// What this side of a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `xfer send`: connects, offers.
    Send,
    /// `xfer recv`: listens, stores.
    Recv,
    /// `xfer serve`: listens, offers.
    Serve,
    /// `xfer get`: connects, stores.
    Get,
}

impl Mode {
    /// The capability bits this side announces: its role, its code, and
    /// the optional features every mode takes ([`CAP_TOTALS`]).
    pub fn caps(self, coded: bool) -> u32 {
        let code = if coded { CAP_CODE } else { 0 };
        CAP_TOTALS | code | self.role_bits()
    }

    fn role_bits(self) -> u32 {
        match self {
            Mode::Send | Mode::Recv => 0,
            Mode::Serve => CAP_SERVES,
            Mode::Get => CAP_FETCHES,
        }
    }

    /// The role bits the one peer this side can work with announces.
    fn partner_bits(self) -> u32 {
        match self {
            Mode::Send | Mode::Recv => 0,
            Mode::Serve => CAP_FETCHES,
            Mode::Get => CAP_SERVES,
        }
    }

    /// The command line that plays this mode, for messages.
    fn command(self) -> &'static str {
        match self {
            Mode::Send => "xfer send",
            Mode::Recv => "xfer recv",
            Mode::Serve => "xfer serve",
            Mode::Get => "xfer get",
        }
    }

    /// What the peer is, going by its role bits and which end it is.
    fn peer_mode(self, theirs: u32) -> Option<Mode> {
        let listening = matches!(self, Mode::Send | Mode::Get);
        match (theirs & ROLE_BITS, listening) {
            (0, true) => Some(Mode::Recv),
            (0, false) => Some(Mode::Send),
            (CAP_SERVES, true) => Some(Mode::Serve),
            (CAP_FETCHES, false) => Some(Mode::Get),
            _ => None,
        }
    }

    /// Checks the peer's hello (`theirs`) against this side's roles, then
    /// its code bit against whether this side has a code (`coded`). The
    /// error says what to run instead; a listener logs it, and tells a
    /// plain peer in an `Abort` ([`Mode::refusal`]).
    pub fn check_peer(self, coded: bool, theirs: u32, peer: &str) -> Result<(), Error> {
        self.check_roles(theirs, peer)?;
        self.check_code(coded, theirs & CAP_CODE != 0, peer)
    }

    fn check_roles(self, theirs: u32, peer: &str) -> Result<(), Error> {
        if theirs & ROLE_BITS == self.partner_bits() {
            return Ok(());
        }
        let detail = match (self, self.peer_mode(theirs)) {
            (Mode::Send, Some(Mode::Serve)) => format!(
                "{peer} is serving files for download ('xfer serve'), it does not take any: \
                 fetch them with 'xfer get {peer}', or send to an 'xfer recv'"
            ),
            (Mode::Get, Some(Mode::Recv)) => format!(
                "{peer} is receiving files ('xfer recv'), it has none to give: \
                 send to it with 'xfer send PATH... {peer}', or run 'xfer serve PATH...' there"
            ),
            (Mode::Serve, Some(Mode::Send)) => format!(
                "{peer} tried to send files, but this is 'xfer serve', which only offers them: \
                 run 'xfer get' there to fetch them, or 'xfer recv' here to take them"
            ),
            (Mode::Recv, Some(Mode::Get)) => format!(
                "{peer} came to fetch files ('xfer get'), but this is 'xfer recv', which only \
                 takes them: run 'xfer serve PATH...' here to offer them"
            ),
            _ => format!(
                "{peer} announced roles (capability bits {:#x}) that no xfer peer of '{}' has",
                theirs & ROLE_BITS,
                self.command()
            ),
        };
        Err(Error::WrongRole(detail))
    }

    /// What a listener tells a plain peer it turns away for its role, in
    /// an `Abort` (a peer of an older release ignores the role bits and
    /// only learns it from this).
    pub fn refusal(self) -> String {
        match self {
            Mode::Serve => "this is 'xfer serve': it offers files and takes none; \
                            fetch them with 'xfer get ADDR'"
                .into(),
            Mode::Recv => "this is 'xfer recv': it takes files and offers none; \
                           send to it with 'xfer send PATH... ADDR'"
                .into(),
            Mode::Send | Mode::Get => format!("this is '{}'", self.command()),
        }
    }

    fn check_code(self, ours: bool, theirs: bool, peer: &str) -> Result<(), Error> {
        let listener = match self {
            Mode::Send | Mode::Recv => "receiver",
            Mode::Serve | Mode::Get => "server",
        };
        let connector = match self {
            Mode::Send | Mode::Recv => "xfer send",
            Mode::Serve | Mode::Get => "xfer get",
        };
        let listening = match self {
            Mode::Send | Mode::Recv => "xfer recv",
            Mode::Serve | Mode::Get => "xfer serve",
        };
        let what = match self {
            Mode::Send | Mode::Recv => "send",
            Mode::Serve | Mode::Get => "get",
        };
        let text = match (self, ours, theirs) {
            (_, false, false) | (_, true, true) => return Ok(()),
            (Mode::Send | Mode::Get, false, true) => format!(
                "{peer} requires a code: add --code to this {what} \
                 (the code from XFER_CODE, --code-file FILE, or typed when asked)"
            ),
            (Mode::Send | Mode::Get, true, false) => format!(
                "{peer} does not use a code, and a coded {what} never falls back to clear text: \
                 start the {listener} with '{listening} --code', or {what} without --code on a \
                 trusted network"
            ),
            (Mode::Recv | Mode::Serve, false, true) => format!(
                "{peer} {what}s with a code, but this {listener} has none \
                 (start it with '{listening} --code' to take coded {what}s)"
            ),
            (Mode::Recv | Mode::Serve, true, false) => format!(
                "{peer} sent no code, and this {listener} requires one \
                 (it must run '{connector} --code ...')"
            ),
        };
        Err(Error::Auth(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Mode; 4] = [Mode::Send, Mode::Recv, Mode::Serve, Mode::Get];

    fn connects(mode: Mode) -> bool {
        matches!(mode, Mode::Send | Mode::Get)
    }

    /// docs/PROTOCOL.md §11.2, every pairing of a connecting and a
    /// listening mode, both sides' verdicts.
    #[test]
    fn only_send_with_recv_and_get_with_serve_pair_up() {
        for connector in ALL.into_iter().filter(|m| connects(*m)) {
            for listener in ALL.into_iter().filter(|m| !connects(*m)) {
                let works = matches!(
                    (connector, listener),
                    (Mode::Send, Mode::Recv) | (Mode::Get, Mode::Serve)
                );
                for coded in [false, true] {
                    let c = connector.check_peer(coded, listener.caps(coded), "l");
                    let l = listener.check_peer(coded, connector.caps(coded), "c");
                    assert_eq!(c.is_ok(), works, "{connector:?} -> {listener:?}: {c:?}");
                    assert_eq!(l.is_ok(), works, "{listener:?} <- {connector:?}: {l:?}");
                    if !works {
                        for e in [c.unwrap_err(), l.unwrap_err()] {
                            assert!(matches!(e, Error::WrongRole(_)), "{e}");
                            let text = e.to_string();
                            let named = ["'xfer get", "'xfer serve", "'xfer send", "'xfer recv"];
                            assert!(named.iter().any(|n| text.contains(n)), "{text}");
                        }
                    }
                }
            }
        }
    }

    /// docs/PROTOCOL.md §11.1: the bits, and the hellos they make.
    #[test]
    fn role_bits_and_their_hellos() {
        assert_eq!((CAP_SERVES, CAP_FETCHES), (0x4, 0x8));
        assert_eq!((CAP_SERVES | CAP_FETCHES) & (CAP_CODE | CAP_TOTALS), 0);
        let tail = |caps: u32| crate::protocol::hello_bytes(caps)[12..].to_vec();
        assert_eq!(tail(Mode::Get.caps(false)), [0, 0, 0, 0x0a]);
        assert_eq!(tail(Mode::Serve.caps(false)), [0, 0, 0, 0x06]);
        assert_eq!(tail(Mode::Serve.caps(true)), [0, 0, 0, 0x07]);
        assert_eq!(tail(Mode::Get.caps(true)), [0, 0, 0, 0x0b]);
    }

    /// A push session's hello has no role bits; every mode takes totals.
    #[test]
    fn push_hellos_carry_no_role_bits() {
        assert_eq!(Mode::Send.caps(false), CAP_TOTALS);
        assert_eq!(Mode::Recv.caps(false), CAP_TOTALS);
        assert_eq!(Mode::Send.caps(true), CAP_TOTALS | CAP_CODE);
        assert_eq!(Mode::Serve.caps(true), CAP_TOTALS | CAP_CODE | CAP_SERVES);
        assert_eq!(Mode::Get.caps(false), CAP_TOTALS | CAP_FETCHES);
    }

    /// Both role bits at once, or a listener claiming to fetch, is no mode
    /// at all; unknown bits above them are ignored.
    #[test]
    fn nonsense_roles_are_refused_and_unknown_bits_ignored() {
        for mode in ALL {
            assert!(mode.check_peer(false, ROLE_BITS, "p").is_err(), "{mode:?}");
        }
        assert!(Mode::Send.check_peer(false, CAP_FETCHES, "p").is_err());
        assert!(Mode::Get
            .check_peer(false, CAP_SERVES | 1 << 9, "p")
            .is_ok());
        assert!(Mode::Recv.check_peer(false, 1 << 20, "p").is_ok());
    }

    #[test]
    fn code_mismatches_name_the_command_to_run() {
        let e = Mode::Get
            .check_peer(false, CAP_SERVES | CAP_CODE, "s")
            .unwrap_err();
        assert!(matches!(e, Error::Auth(_)) && e.to_string().contains("add --code to this get"));
        let e = Mode::Serve.check_peer(true, CAP_FETCHES, "g").unwrap_err();
        assert!(e.to_string().contains("'xfer get --code ...'"), "{e}");
        let e = Mode::Send.check_peer(true, 0, "r").unwrap_err();
        assert!(e.to_string().contains("'xfer recv --code'"), "{e}");
    }
}
