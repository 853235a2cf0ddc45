//! Flotilla's domain types and validation rules.
//!
//! This crate is pure: it must not depend on tokio, gRPC, RocksDB or any I/O, so that
//! every other crate (and every test) can use it freely.

pub mod cidr;
pub mod cluster;
pub mod error;
pub mod exposition;
pub mod keys;
pub mod limits;
pub mod names;
pub mod quantity;
pub mod selector;

pub use error::CoreError;
