//! Wire protocol v1 of Redistribute, shared by the server and the WebAssembly client.
//!
//! One JSON object travels in each WebSocket text frame. Requests carry a client-chosen `id` and an
//! `op`, and get exactly one [`Reply`]; [`Push`] frames carry a channel and a batch of stream entries.
//! `PROTOCOL.md` at the repository root is the normative description; this crate is its executable
//! form. It does no I/O, so it builds for native targets and `wasm32` alike.
//!
//! # Layout
//! - [`offset`]: stream IDs (`1518951480106-0`) and subscription start points (`$`, `0`, an ID).
//! - [`request`]: parsing and validating client requests, with precise error messages.
//! - [`frame`]: replies and pushes, the frames the server sends.
//! - [`error`]: stable error codes and close codes.
//! - [`backoff`]: the reconnect schedule servers and clients share.

pub mod backoff;
pub mod error;
pub mod frame;
pub mod offset;
pub mod request;

pub use backoff::Backoff;
pub use error::{ErrorCode, ProtocolError, close};
pub use frame::{Entry, ErrorBody, Push, Reply};
pub use offset::{ParseOffsetError, Start, StreamId};
pub use request::{Limits, Op, Request, RequestError};

/// The WebSocket subprotocol name a v1 client offers and a v1 server selects.
pub const SUBPROTOCOL: &str = "redistribute.v1";
