//! Why an engine operation failed: one error type for both engines. Redis errors are classified
//! into it in one place (`redis::error::classify`), keeping the Redis error as the source.

use redistribute_protocol::StreamId;
use std::fmt;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The storage cannot be reached (connection refused, dropped or timed out, or Redis is
    /// loading, busy or without a master): nothing was done, and retrying later is safe.
    #[error("storage unavailable ({target})")]
    Unavailable {
        /// The Redis target (password removed).
        target: String,
        /// What failed.
        #[source]
        source: redis::RedisError,
    },
    /// A write was sent, but no answer came (a timeout, or the connection broke while waiting):
    /// it may or may not have been applied, so a retry may apply it twice.
    #[error("storage did not answer ({target}): the write may or may not have been applied")]
    UnknownOutcome {
        /// The Redis target (password removed).
        target: String,
        /// What failed.
        #[source]
        source: redis::RedisError,
    },
    /// The channel's key exists but does not hold a stream.
    #[error("the key for channel {channel:?} holds a value that is not a stream")]
    WrongType {
        /// The channel.
        channel: String,
    },
    /// The consumer group does not exist (any more).
    #[error("no consumer group {group:?} on channel {channel:?}")]
    NoGroup {
        /// The channel.
        channel: String,
        /// The group.
        group: String,
    },
    /// Offsets that are not pending in the group.
    #[error("not pending in the group: {}", list(.0))]
    NotPending(Vec<StreamId>),
    /// Offsets pending for another consumer than the one acknowledging.
    #[error("pending for another consumer: {}", list(.0))]
    HeldByOthers(Vec<StreamId>),
    /// Redis refused a command for a reason the server does not expect.
    #[error("storage refused a command")]
    Refused(#[source] redis::RedisError),
    /// The storage answered something the server cannot decode.
    #[error("unexpected storage reply: {0}")]
    Reply(String),
}

impl EngineError {
    /// True when the storage could not be reached: the operation did nothing and may be retried.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EngineError::Unavailable { .. })
    }
}

/// Offsets as `a, b, c`, for messages.
pub(crate) fn list(offsets: &[StreamId]) -> String {
    offsets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Displays an error with its chain of sources (`a: b: c`), for logs and health answers.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shows_the_sources() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = EngineError::Unavailable { target: "redis://h".into(), source: io.into() };
        let shown = Chain(&e).to_string();
        assert!(shown.starts_with("storage unavailable (redis://h): "), "{shown}");
        assert!(shown.contains("refused"), "{shown}");
        assert_eq!(
            EngineError::NotPending(vec![StreamId::new(1, 1), StreamId::new(2, 0)]).to_string(),
            "not pending in the group: 1-1, 2-0"
        );
    }
}
