//! Stream IDs and subscription start points.
//!
//! Every message has an offset: the Redis stream entry ID `<ms>-<seq>`, two unsigned 64-bit
//! integers ordered lexicographically. A subscription starts *after* an offset, so `0` (= `0-0`)
//! means "everything retained" and `$` means "only what is added from now on".

use std::fmt;
use std::str::FromStr;

/// A Redis stream entry ID, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    /// Milliseconds part (Unix time in ms when Redis generated the ID).
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// The smallest ID, `0-0`; no entry can have it.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Builds an ID from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// The previous ID in stream order, or `None` for `0-0`.
    pub fn predecessor(self) -> Option<StreamId> {
        match self.seq.checked_sub(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_sub(1).map(|ms| StreamId { ms, seq: u64::MAX }),
        }
    }

    /// The next ID in stream order, or `None` at the maximum.
    pub fn successor(self) -> Option<StreamId> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(StreamId { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| StreamId { ms, seq: 0 }),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a valid offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offset must be \"$\", \"0\" or a stream ID like \"1518951480106-0\", got \"{0}\"")]
pub struct ParseOffsetError(pub String);

impl FromStr for StreamId {
    type Err = ParseOffsetError;

    /// Parses `<ms>-<seq>` or a bare `<ms>` (sequence 0), as Redis does for XREAD.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseOffsetError(s.to_owned());
        let digits = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u64>().map_err(|_| bad())
        };
        match s.split_once('-') {
            Some((ms, seq)) => Ok(StreamId { ms: digits(ms)?, seq: digits(seq)? }),
            None => Ok(StreamId { ms: digits(s)?, seq: 0 }),
        }
    }
}

/// Where a subscription starts: strictly after this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `$`: after the stream's last generated ID at the moment the subscription is accepted.
    Latest,
    /// After the given ID (`0` is `0-0`: everything retained).
    After(StreamId),
}

impl FromStr for Start {
    type Err = ParseOffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "$" { Ok(Start::Latest) } else { s.parse().map(Start::After) }
    }
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Start::Latest => f.write_str("$"),
            Start::After(id) => id.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_bare_ids() {
        assert_eq!("1518951480106-3".parse(), Ok(StreamId::new(1518951480106, 3)));
        assert_eq!("0".parse(), Ok(StreamId::ZERO));
        assert_eq!("42".parse(), Ok(StreamId::new(42, 0)));
        assert_eq!(format!("{}", StreamId::new(5, 7)), "5-7");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in ["", "-", "1-", "-1", "1-2-3", "a-1", "1-b", " 1-1", "+1-0", "18446744073709551616-0", "1.5"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ids_order_like_redis() {
        let a: StreamId = "9-5".parse().unwrap();
        let b: StreamId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(StreamId::new(1, u64::MAX).successor(), Some(StreamId::new(2, 0)));
        assert_eq!(StreamId::new(u64::MAX, u64::MAX).successor(), None);
    }

    #[test]
    fn start_points() {
        assert_eq!("$".parse(), Ok(Start::Latest));
        assert_eq!("0".parse(), Ok(Start::After(StreamId::ZERO)));
        assert_eq!(Start::After(StreamId::new(3, 1)).to_string(), "3-1");
        assert!("$$".parse::<Start>().is_err());
    }
}
