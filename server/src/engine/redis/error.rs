//! The one place that turns a Redis error into an [`EngineError`].

use crate::engine::EngineError;
use redis::RedisError;

/// Server error codes that mean "not now": Redis is loading, busy, or has no master; on a
/// cluster, the slot moved or the node became a replica (a dedicated connection then reconnects
/// to the slot's master as the cluster describes it).
const TRANSIENT: [&str; 8] = ["LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "READONLY"];

/// What the command context knows: the target it ran on and the channel (and group) it was for.
pub(crate) struct Context<'a> {
    pub(crate) target: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) group: Option<&'a str>,
}

impl<'a> Context<'a> {
    /// A command on `target` for no channel in particular.
    pub(crate) fn on(target: &'a str) -> Self {
        Context { target, channel: "", group: None }
    }
}

/// The error code Redis answered with, also for a failed command inside a pipeline or
/// transaction (where the crate keeps it in the list of server errors: the first command's code
/// says why, e.g. `MOVED` rather than the transaction's `EXECABORT`).
pub(crate) fn server_code(e: &RedisError) -> Option<String> {
    if let Some(errors) = e.clone().into_server_errors()
        && let Some((_, error)) = errors.first()
    {
        return Some(error.code().to_owned());
    }
    e.code().map(str::to_owned)
}

/// Whether a cluster node answered that the key's slot is served elsewhere.
pub(crate) fn redirected(e: &RedisError) -> bool {
    matches!(server_code(e).as_deref(), Some("MOVED" | "ASK"))
}

/// Classifies `e`, keeping it as the source.
pub(crate) fn classify(e: RedisError, at: &Context<'_>) -> EngineError {
    let code = server_code(&e);
    match code.as_deref() {
        Some("WRONGTYPE") => EngineError::WrongType { channel: at.channel.to_owned() },
        Some("NOGROUP") => {
            EngineError::NoGroup { channel: at.channel.to_owned(), group: at.group.unwrap_or_default().to_owned() }
        }
        Some(code) if TRANSIENT.contains(&code) => EngineError::Unavailable { target: at.target.to_owned(), source: e },
        _ if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() => {
            EngineError::Unavailable { target: at.target.to_owned(), source: e }
        }
        _ => EngineError::Refused(e),
    }
}

/// Classifies the failure of a write that is not safe to repeat (`XADD`): once the command may
/// have reached Redis, a timeout or a broken connection leaves its outcome unknown. Only a
/// refused connection, or an error Redis itself answered with, says it was not applied.
pub(crate) fn classify_write(e: RedisError, at: &Context<'_>) -> EngineError {
    let sent = server_code(&e).is_none() && !e.is_connection_refusal();
    match classify(e, at) {
        EngineError::Unavailable { target, source } if sent => EngineError::UnknownOutcome { target, source },
        other => other,
    }
}

/// A deadline the server put on a command passed.
pub(crate) fn timed_out(target: &str, what: String) -> EngineError {
    let io = std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    EngineError::Unavailable { target: target.to_owned(), source: io.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ErrorKind;

    fn at() -> Context<'static> {
        Context { target: "redis://h", channel: "c", group: Some("g") }
    }

    #[test]
    fn classifies_by_kind_and_code() {
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert!(classify(refused, &at()).is_unavailable());
        assert!(timed_out("redis://h", "XREAD".into()).is_unavailable());
        let parse = RedisError::from((ErrorKind::Parse, "bad"));
        assert!(matches!(classify(parse, &at()), EngineError::Refused(_)));
    }

    #[test]
    fn a_write_that_may_have_reached_redis_has_an_unknown_outcome() {
        let refused = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no"));
        assert!(classify_write(refused, &at()).is_unavailable(), "never sent");
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(matches!(classify_write(timeout, &at()), EngineError::UnknownOutcome { .. }));
        let reset = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(matches!(classify_write(reset, &at()), EngineError::UnknownOutcome { .. }));
        let loading = RedisError::from((ErrorKind::Server(redis::ServerErrorKind::BusyLoading), "loading"));
        assert!(classify_write(loading, &at()).is_unavailable(), "Redis answered: not applied");
    }
}
