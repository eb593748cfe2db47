//! The crate's error type, and the one place that decides what a client is told about a failure.

use crate::engine::{Chain, EngineError, offset_list};
use redistribute_protocol::{ErrorCode, ProtocolError};

/// Errors of the server library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or accepting failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS key or certificate could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The storage engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A channel name or publish argument is invalid.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// What a client is told about an engine failure. Unexpected failures are logged here, once.
pub(crate) fn client_error(e: &EngineError) -> ProtocolError {
    match e {
        EngineError::Unavailable { .. } => {
            ProtocolError::new(ErrorCode::Unavailable, "storage is unavailable right now; retry later")
        }
        EngineError::UnknownOutcome { .. } => ProtocolError::new(
            ErrorCode::UnknownOutcome,
            "storage did not answer in time: the entry may or may not have been stored",
        ),
        EngineError::WrongType { channel } => {
            ProtocolError::bad_request(format!("the Redis key of channel {channel:?} is not a stream"))
        }
        EngineError::NoGroup { .. } => ProtocolError::bad_request(format!("no such consumer group ({e})")),
        EngineError::HeldByOthers(offsets) => ProtocolError::new(
            ErrorCode::Forbidden,
            format!("pending for another consumer, nothing acknowledged: {}", offset_list(offsets)),
        ),
        EngineError::NotPending(offsets) => ProtocolError::bad_request(format!(
            "not pending in the group, nothing acknowledged: {}",
            offset_list(offsets)
        )),
        _ => {
            tracing::error!(error = %Chain(e), "unexpected storage failure");
            ProtocolError::new(ErrorCode::Internal, "internal error; see the server log")
        }
    }
}
