//! Stable error codes carried by error replies, and the WebSocket close codes the server uses.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The machine-readable part of an error reply. The strings are stable: clients may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame or a field in it is malformed or out of range.
    BadRequest,
    /// The `op` is not one this server knows.
    UnknownOp,
    /// The connection's permissions (channel rules, token grants or a hook) do not allow it.
    Forbidden,
    /// A token was refused (malformed, expired, wrongly signed, or not accepted here).
    Unauthorized,
    /// The request clashes with another connection's (a consumer name held by a live member).
    Conflict,
    /// The frame exceeds the configured size limit.
    TooLarge,
    /// A per-connection limit was reached (for example the number of subscriptions).
    LimitExceeded,
    /// Too many requests or publishes in too short a time; `retry_after_ms` says when to retry.
    /// Nothing was done.
    RateLimited,
    /// The storage engine (Redis) cannot be reached right now; nothing was stored, so retrying
    /// later is safe.
    Unavailable,
    /// A publish was sent to storage but its outcome is unknown (the engine did not answer in
    /// time): it may or may not have been stored. A retry may store it twice.
    UnknownOutcome,
    /// A bug or an unexpected engine reply; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnknownOutcome => "unknown_outcome",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that becomes an error reply: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// Stable code for programs.
    pub code: ErrorCode,
    /// Explanation for people; wording may change between releases.
    pub message: String,
    /// When retrying can succeed, in milliseconds (`rate_limited`).
    pub retry_after_ms: Option<u64>,
}

impl ProtocolError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError { code, message: message.into(), retry_after_ms: None }
    }

    /// The same error, saying that a retry can succeed after `delay`.
    pub fn retry_after(mut self, delay: std::time::Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1));
        self
    }

    /// Shorthand for a [`ErrorCode::BadRequest`] error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// WebSocket close codes, used only where a reply cannot answer.
pub mod close {
    /// Normal closure (the client asked to close).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down or restarting: reconnect, preferably to another instance.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (RFC 6455), e.g. an unmasked or malformed frame.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The connect hook refused the connection; the close reason says why.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame exceeded the hard size limit, so it could not even be read to answer it.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected error on this connection.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The client read too slowly and its send queue overflowed. Nothing is lost: reconnect and
    /// resubscribe after the last offset received.
    pub const LAGGING: u16 = 4000;
    /// The connection's token expired without a fresh one (`auth` again before `exp`): fetch a new
    /// token, reconnect and authenticate.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The server heard nothing from the client (no frame, no answer to its pings) for its idle
    /// timeout, or a frame took longer than that to arrive. Reconnect and resume.
    pub const IDLE_TIMEOUT: u16 = 4002;
    /// The client kept sending after being told `rate_limited`: reconnect after a pause and slow
    /// down.
    pub const RATE_LIMITED: u16 = 4003;
}
