//! Which of the receivers seen `xfer send` should use: a pure decision, so
//! every rule is a unit test.
//!
//! - `--to NAME`: the receiver with that instance name (DNS compares names
//!   without case; `NAME.local` also matches the instance `NAME`).
//! - With a code: the receivers that require a code with the same public
//!   number. A coded sender never picks a receiver without a code.
//! - Without one: the receivers that require no code.
//!
//! Exactly one candidate is the choice; several are for the user to pick
//! from; none is an error that can say what was seen instead.

use super::Peer;

/// What the sender is looking for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted<'a> {
    /// `--to NAME`.
    pub name: Option<&'a str>,
    /// The public number of the sender's code.
    pub code_number: Option<u16>,
}

/// The outcome of [`select`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    One(Peer),
    /// More than one fits; all of them, sorted by name.
    Many(Vec<Peer>),
    /// None fits; `seen` is everything that was seen.
    Nothing {
        seen: Vec<Peer>,
    },
}

impl Wanted<'_> {
    /// Whether `peer` is a candidate.
    pub fn fits(&self, peer: &Peer) -> bool {
        if let Some(name) = self.name {
            return names_match(name, &peer.name);
        }
        match self.code_number {
            Some(number) => peer.code_required && peer.code_number == Some(number),
            None => !peer.code_required,
        }
    }
}

/// Picks among `seen` (see the module docs).
pub fn select(seen: Vec<Peer>, wanted: &Wanted) -> Choice {
    let mut fitting: Vec<Peer> = seen.iter().filter(|p| wanted.fits(p)).cloned().collect();
    match fitting.len() {
        0 => Choice::Nothing { seen },
        1 => Choice::One(fitting.remove(0)),
        _ => Choice::Many(fitting),
    }
}

fn names_match(wanted: &str, instance: &str) -> bool {
    let stem = wanted
        .strip_suffix(".local.")
        .or_else(|| wanted.strip_suffix(".local"));
    wanted.eq_ignore_ascii_case(instance) || stem.is_some_and(|s| s.eq_ignore_ascii_case(instance))
}
