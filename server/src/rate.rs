//! Per-connection rate limits: token buckets for requests, publishes, the publishes of channel
//! rules that set their own rate, and token checks (`auth`: verifying a signature costs tens of
//! microseconds), and the count of refusals in a row after which a client that ignores
//! `rate_limited` is closed (4003). Pure logic: the caller passes the time.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Tokens the bucket holds when full: how many may go at once after a quiet spell.
    pub burst: u32,
}

// Rates are checked to be finite and positive (`Rate::new`), so equality is total.
impl Eq for Rate {}

impl Rate {
    /// A rate of `per_second` with `burst` at once.
    ///
    /// # Errors
    /// When the rate is not a positive finite number or the burst is zero.
    pub fn new(per_second: f64, burst: u32) -> Result<Rate, String> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(format!("rate {per_second} must be a positive number"));
        }
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(Rate { per_second, burst })
    }
}

/// The server-wide per-connection limits; `None` turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests of any kind (frames), per connection.
    pub requests: Option<Rate>,
    /// Publishes, per connection (on top of the request limit).
    pub publishes: Option<Rate>,
    /// `auth` requests, per connection (on top of the request limit).
    pub auths: Option<Rate>,
    /// `rate_limited` replies in a row after which the connection is closed with 4003.
    pub strikes: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests: Some(Rate { per_second: 2000.0, burst: 4000 }),
            publishes: Some(Rate { per_second: 1000.0, burst: 2000 }),
            // A client authenticates once, then refreshes before expiry: a few a minute at most.
            auths: Some(Rate { per_second: 1.0, burst: 10 }),
            strikes: 100,
        }
    }
}

/// One token bucket, filling at its rate up to its burst.
#[derive(Debug, Clone)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket { rate, tokens: f64::from(rate.burst), at: now }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let Rate { per_second, burst } = self.rate;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        }
    }
}

/// Takes a token from `bucket`; no bucket, no limit.
fn take(bucket: &mut Option<Bucket>, now: Instant) -> Result<(), Duration> {
    bucket.as_mut().map_or(Ok(()), |bucket| bucket.take(now))
}

/// One connection's buckets, and its refusals in a row.
#[derive(Debug)]
pub(crate) struct Throttle {
    requests: Option<Bucket>,
    publishes: Option<Bucket>,
    auths: Option<Bucket>,
    /// Buckets of channel rules with their own publish rate, by rule index (bounded by the
    /// number of rules).
    per_rule: HashMap<usize, Bucket>,
    strikes: u32,
    /// Refusals in a row after which the connection is closed.
    max_strikes: u32,
}

impl Throttle {
    pub(crate) fn new(limits: RateLimits, now: Instant) -> Throttle {
        let bucket = |rate: Option<Rate>| rate.map(|rate| Bucket::full(rate, now));
        Throttle {
            requests: bucket(limits.requests),
            publishes: bucket(limits.publishes),
            auths: bucket(limits.auths),
            per_rule: HashMap::new(),
            strikes: 0,
            max_strikes: limits.strikes,
        }
    }

    /// Admits one request (any frame), or says how long until one would be.
    pub(crate) fn request(&mut self, now: Instant) -> Result<(), Duration> {
        take(&mut self.requests, now)
    }

    /// Admits one `auth`.
    pub(crate) fn auth(&mut self, now: Instant) -> Result<(), Duration> {
        take(&mut self.auths, now)
    }

    /// Admits one publish: the connection's publish bucket, then the bucket of the channel rule
    /// (`rule`: its index and rate) if it sets one.
    pub(crate) fn publish(&mut self, rule: Option<(usize, Rate)>, now: Instant) -> Result<(), Duration> {
        take(&mut self.publishes, now)?;
        match rule {
            Some((index, rate)) => self.per_rule.entry(index).or_insert_with(|| Bucket::full(rate, now)).take(now),
            None => Ok(()),
        }
    }

    /// Counts a `rate_limited` reply; true once the client has ignored more than the allowed
    /// number in a row (close it).
    pub(crate) fn strike(&mut self) -> bool {
        self.strikes = self.strikes.saturating_add(1);
        self.strikes > self.max_strikes
    }

    /// Any other reply: the client slowed down.
    pub(crate) fn forgive(&mut self) {
        self.strikes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: Option<Rate>, publishes: Option<Rate>, strikes: u32) -> RateLimits {
        RateLimits { requests, publishes, auths: None, strikes }
    }

    #[test]
    fn token_checks_have_their_own_bucket() {
        let start = Instant::now();
        let auths = Some(Rate::new(1.0, 2).unwrap());
        let mut throttle = Throttle::new(RateLimits { auths, ..limits(None, None, 100) }, start);
        assert!(throttle.auth(start).is_ok() && throttle.auth(start).is_ok());
        assert_eq!(throttle.auth(start), Err(Duration::from_secs(1)));
        assert!(throttle.request(start).is_ok(), "other requests are not affected");
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let start = Instant::now();
        let rate = Rate::new(10.0, 3).unwrap();
        let mut throttle = Throttle::new(limits(Some(rate), None, 100), start);
        for _ in 0..3 {
            assert!(throttle.request(start).is_ok());
        }
        assert_eq!(throttle.request(start), Err(Duration::from_millis(100)));
        assert!(throttle.request(start + Duration::from_millis(100)).is_ok(), "one token per 100 ms");
        assert!(throttle.request(start + Duration::from_millis(150)).is_err());
        // A long pause refills to the burst, no more.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| throttle.request(later).is_ok()).count(), 3);
    }

    #[test]
    fn rule_rates_apply_on_top_of_the_connection_rate() {
        let start = Instant::now();
        let mut throttle = Throttle::new(limits(None, Some(Rate::new(100.0, 100).unwrap()), 100), start);
        let slow = Some((0, Rate::new(0.5, 1).unwrap()));
        assert!(throttle.publish(slow, start).is_ok());
        assert_eq!(throttle.publish(slow, start), Err(Duration::from_secs(2)), "one per two seconds");
        assert!(throttle.publish(Some((1, Rate::new(0.5, 1).unwrap())), start).is_ok(), "another rule's own bucket");
        assert!(throttle.publish(None, start).is_ok(), "channels without a rule rate");
        let mut tight = Throttle::new(limits(None, Some(Rate::new(1.0, 1).unwrap()), 100), start);
        assert!(tight.publish(None, start).is_ok());
        assert!(tight.publish(None, start).is_err(), "the connection's publish rate");
    }

    #[test]
    fn ignoring_refusals_closes_and_any_other_reply_forgives() {
        let start = Instant::now();
        let mut throttle = Throttle::new(limits(None, None, 3), start);
        assert_eq!((0..4).map(|_| throttle.strike()).collect::<Vec<_>>(), [false, false, false, true]);
        throttle.forgive();
        assert!(!throttle.strike());
    }

    #[test]
    fn unlimited_when_off_and_bad_rates_are_refused() {
        let start = Instant::now();
        let mut throttle = Throttle::new(limits(None, None, 0), start);
        assert!((0..100_000).all(|_| throttle.request(start).is_ok() && throttle.publish(None, start).is_ok()));
        assert!(Rate::new(0.0, 1).is_err() && Rate::new(f64::NAN, 1).is_err() && Rate::new(1.0, 0).is_err());
    }
}
