//! `--limit-rate`: body bytes paced to a steady rate.
//!
//! A token bucket kept as a schedule (the "virtual scheduling" form of
//! GCRA): every byte taken moves the schedule on by 1/rate seconds, and a
//! taker sleeps while the schedule is more than [`BURST`] ahead of the
//! clock. Bytes are taken at most [`RateLimit::piece`] at a time, so the
//! stream moves in small steps rather than a burst per second. The
//! schedule is absolute: a sleep that overshoots (a loaded machine, the
//! timer's millisecond grain) is made up by the next takes, so the average
//! holds exactly; time spent idle earns no more than one burst of credit.
//!
//! Frame writers pace what they write of bodies, frame readers what they
//! hand out of bodies; control frames are never held back. One limit may
//! be shared by several connections (a receiver's senders together).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far ahead of the clock the schedule may run: the largest burst.
pub const BURST: Duration = Duration::from_millis(50);
/// The largest single step, whatever the rate.
const MAX_PIECE: u64 = 64 * 1024;

/// A shared limit of `rate` bytes per second.
#[derive(Debug)]
pub struct RateLimit {
    rate: u64,
    /// When the bytes taken so far are due, at the limit.
    due: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec`, which must be at least 1.
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            rate: bytes_per_sec.max(1),
            due: Mutex::new(None),
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The most bytes to move in one step: a twentieth of a second's
    /// worth, at most 64 KiB, at least one byte.
    pub fn piece(&self) -> usize {
        (self.rate / 20).clamp(1, MAX_PIECE) as usize
    }

    /// Waits until `bytes` more may go, and counts them as gone.
    pub async fn take(&self, bytes: usize) {
        if let Some(wake) = self.reserve(bytes as u64) {
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Moves the schedule on by `bytes`; returns when to go, if not now.
    fn reserve(&self, bytes: u64) -> Option<Instant> {
        let now = Instant::now();
        let cost = Duration::from_nanos(
            u64::try_from(u128::from(bytes) * 1_000_000_000 / u128::from(self.rate))
                .unwrap_or(u64::MAX),
        );
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        let start = due.map_or(now, |d| d.max(now));
        let next = start + cost;
        *due = Some(next);
        let wake = next.checked_sub(BURST)?;
        (wake > now).then_some(wake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_megabyte_at_a_megabyte_a_second_takes_a_second_less_one_burst() {
        let limit = RateLimit::new(1 << 20);
        let start = Instant::now();
        let mut left = 1usize << 20;
        while left > 0 {
            let n = left.min(limit.piece());
            limit.take(n).await;
            left -= n;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(1) - BURST && took <= Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn steps_are_small_and_evenly_spaced() {
        let limit = RateLimit::new(4 << 20);
        assert_eq!(limit.piece(), 64 * 1024);
        // Past the first burst, every step waits its own share: 1/64 s.
        let mut times = Vec::new();
        for _ in 0..40 {
            limit.take(limit.piece()).await;
            times.push(Instant::now());
        }
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let steady = &gaps[4..];
        for gap in steady {
            let ms = gap.as_secs_f64() * 1000.0;
            assert!((15.0..=16.5).contains(&ms), "{gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_one_burst_at_most() {
        let limit = RateLimit::new(1_000_000);
        limit.take(1000).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        // 50 ms worth go at once; the next 50 ms worth wait for their time.
        limit.take(50_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        limit.take(50_000).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(49) && took <= Duration::from_millis(51),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_wake_is_made_up_by_the_next_steps() {
        let limit = RateLimit::new(100_000);
        let start = Instant::now();
        for _ in 0..10 {
            limit.take(limit.piece()).await;
        }
        // The taker was busy for 40 ms; the schedule does not slip.
        tokio::time::sleep(Duration::from_millis(40)).await;
        for _ in 0..90 {
            limit.take(limit.piece()).await;
        }
        // 100 pieces of 5,000 bytes at 100,000 B/s: 5 s, less one burst.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4950) && took <= Duration::from_millis(4960),
            "{took:?}"
        );
    }

    #[test]
    fn tiny_rates_step_one_byte_at_a_time() {
        assert_eq!(RateLimit::new(10).piece(), 1);
        assert_eq!(RateLimit::new(0).rate(), 1);
        assert_eq!(RateLimit::new(100 << 20).piece(), 64 * 1024);
    }
}
