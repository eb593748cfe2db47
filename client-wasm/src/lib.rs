//! placeholder
pub mod core;
pub mod store;
