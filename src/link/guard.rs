//! Bounds how fast anyone can guess a coded listener's code (`recv` or
//! `serve`). Each code attempt (a PAKE run) needs a token from one bucket
//! shared by all peers;
//! a wrong code keeps its token, a right one gives it back, so wrong codes
//! cost at most [`FAILURES_PER_SEC`] per second overall, whoever sends them.
//! An address that gets [`PEER_FAILURES`] wrong within [`PEER_WINDOW`] is
//! refused outright for [`COOL_DOWN`]; other addresses are not affected.
//! SECURITY.md states what this means for the code's entropy.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Wrong codes from one address that trigger its cool-down...
pub const PEER_FAILURES: usize = 5;
/// ...within this window...
pub const PEER_WINDOW: Duration = Duration::from_secs(60);
/// ...and how long it is then refused.
pub const COOL_DOWN: Duration = Duration::from_secs(15 * 60);
/// Wrong codes per second, from all addresses together, at most (the
/// bucket's refill rate).
pub const FAILURES_PER_SEC: u32 = 2;
/// Attempts that may fail in a burst before the refill rate binds.
const BURST: u32 = 10;

/// Why an attempt may not go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// This address guessed wrong too often; it may try again after this.
    CoolingDown(Duration),
}

#[derive(Debug)]
struct State {
    /// Tokens left, in thousandths (refilled continuously).
    milli_tokens: u64,
    refilled: Instant,
    /// Recent wrong codes per address, oldest first.
    failures: HashMap<IpAddr, VecDeque<Instant>>,
    /// Addresses cooling down, and until when.
    cooling: HashMap<IpAddr, Instant>,
}

/// A listener's one guard, shared by its sessions.
#[derive(Debug)]
pub struct Guard {
    state: Mutex<State>,
}

/// One code attempt under way; say how it ended with [`Attempt::right`] or
/// [`Attempt::wrong`] (the session calls `wrong` for any failed handshake,
/// a cut one included). Dropped without a word — the session itself was
/// dropped, at the receiver's shutdown — it gives its token back.
#[must_use]
pub struct Attempt {
    guard: Arc<Guard>,
    peer: IpAddr,
    settled: bool,
}

impl Guard {
    pub fn new() -> Arc<Guard> {
        Arc::new(Guard {
            state: Mutex::new(State {
                milli_tokens: u64::from(BURST) * 1000,
                refilled: Instant::now(),
                failures: HashMap::new(),
                cooling: HashMap::new(),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned guard still guards: its counters are plain numbers.
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// Waits for a token for an attempt from `peer`; refuses at once an
    /// address that is cooling down.
    pub async fn attempt(self: &Arc<Guard>, peer: IpAddr) -> Result<Attempt, Refused> {
        loop {
            let wait = self.with(|s| -> Result<Option<Duration>, Refused> {
                let now = Instant::now();
                if let Some(until) = s.cooling.get(&peer).copied() {
                    if until > now {
                        return Err(Refused::CoolingDown(until - now));
                    }
                    s.cooling.remove(&peer);
                }
                s.refill(now);
                if s.milli_tokens >= 1000 {
                    s.milli_tokens -= 1000;
                    return Ok(None);
                }
                let missing = 1000 - s.milli_tokens;
                Ok(Some(Duration::from_millis(
                    missing.div_ceil(u64::from(FAILURES_PER_SEC)),
                )))
            })?;
            match wait {
                None => {
                    return Ok(Attempt {
                        guard: Arc::clone(self),
                        peer,
                        settled: false,
                    })
                }
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

impl State {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_millis() as u64 * u64::from(FAILURES_PER_SEC);
        self.milli_tokens = (self.milli_tokens + earned).min(u64::from(BURST) * 1000);
        self.refilled = now;
    }

    fn give_back(&mut self) {
        self.milli_tokens = (self.milli_tokens + 1000).min(u64::from(BURST) * 1000);
    }
}

impl Attempt {
    /// The peer held the code: its token goes back.
    pub fn right(mut self) {
        self.settled = true;
        self.guard.with(State::give_back);
    }

    /// The peer did not hold the code: the token stays spent, and the
    /// address may have earned its cool-down. Returns whether it did.
    pub fn wrong(mut self) -> bool {
        self.settled = true;
        let peer = self.peer;
        self.guard.with(|s| {
            let now = Instant::now();
            let recent = s.failures.entry(peer).or_default();
            recent.push_back(now);
            while recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > PEER_WINDOW)
            {
                recent.pop_front();
            }
            let cooled = recent.len() >= PEER_FAILURES;
            if cooled {
                s.failures.remove(&peer);
                s.cooling.insert(peer, now + COOL_DOWN);
            }
            // Old entries of quiet addresses would otherwise pile up.
            s.failures.retain(|_, r| {
                r.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) <= PEER_WINDOW)
            });
            s.cooling.retain(|_, until| *until > now);
            cooled
        })
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.guard.with(State::give_back);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_guesses_wrong_five_times_cools_down_and_others_do_not() {
        let guard = Guard::new();
        for n in 1..=PEER_FAILURES {
            let cooled = guard.attempt(ip(1)).await.unwrap().wrong();
            assert_eq!(cooled, n == PEER_FAILURES);
        }
        let Err(Refused::CoolingDown(left)) = guard.attempt(ip(1)).await else {
            panic!("the guessing address must be refused");
        };
        assert!(left > COOL_DOWN - Duration::from_secs(1) && left <= COOL_DOWN);
        // Another address still gets its attempt, and a right code.
        guard.attempt(ip(2)).await.unwrap().right();
        tokio::time::advance(COOL_DOWN).await;
        assert!(guard.attempt(ip(1)).await.is_ok(), "the cool-down ends");
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_codes_from_everywhere_are_held_to_the_global_rate() {
        let guard = Guard::new();
        let start = Instant::now();
        // 40 wrong codes from 40 addresses (none reaches its own limit).
        for n in 0..40u8 {
            guard.attempt(ip(n)).await.unwrap().wrong();
        }
        // The burst goes at once; the other 30 at FAILURES_PER_SEC.
        let took = start.elapsed();
        let expected = Duration::from_secs(u64::from(40 - BURST) / u64::from(FAILURES_PER_SEC));
        assert!(
            took >= expected && took <= expected + Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn right_codes_and_broken_attempts_cost_nothing() {
        let guard = Guard::new();
        let start = Instant::now();
        for n in 0..100u8 {
            let attempt = guard.attempt(ip(n)).await.unwrap();
            if n % 2 == 0 {
                attempt.right();
            } else {
                drop(attempt);
            }
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
