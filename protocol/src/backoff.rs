//! The reconnect schedule: exponential backoff with full jitter.
//!
//! Used by the server's stream readers (Redis reconnects) and by clients (WebSocket reconnects).
//! Attempt `n` waits a uniformly random time in `[0, min(max, base · 2ⁿ)]`, so a fleet of clients
//! cut off at once does not come back at once. The randomness is passed in, keeping this pure.

use std::time::Duration;

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A schedule starting at `base` and capped at `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base), attempt: 0 }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// The next delay, given `random` uniform in `[0, 1)`; advances the schedule.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let delay = self.ceiling().mul_f64(random.clamp(0.0, 1.0));
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Number of delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..7)
            .map(|_| {
                let c = b.ceiling().as_millis();
                b.next_delay(0.5);
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        assert_eq!(b.next_delay(0.999_999), Duration::from_millis(200).mul_f64(0.999_999));
        assert_eq!(b.attempts(), 2);
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(30));
        }
    }
}
