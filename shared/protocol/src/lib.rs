//! The contract between segtune services: every message on the bus, every subject, stream
//! and durable consumer name, the dataset manifest stored next to preprocessed cases, and the
//! names a strategy is written in ([`strategy`]: augmentations, learning rate, the paper's
//! space and routine).
//!
//! Serde only (no NATS, no tokio): Python, Go or shell users can decode every payload with a
//! plain MessagePack reader, because everything is encoded as maps with field names
//! ([`encode`] uses `rmp_serde::to_vec_named`). Every message carries [`SCHEMA_VERSION`] in
//! its `schema` field; new fields are added with `#[serde(default)]` so old readers and old
//! messages keep working.

pub mod codec;
pub mod dataset;
pub mod messages;
pub mod strategy;
pub mod streams;
pub mod subjects;

pub use codec::{DecodeError, EncodeError, decode, encode};
pub use dataset::*;
pub use messages::*;

/// Wire schema version written into every message's `schema` field.
pub const SCHEMA_VERSION: u32 = 1;
