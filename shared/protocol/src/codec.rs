//! MessagePack encoding with named fields.

use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what} as MessagePack: {source}")]
pub struct EncodeError {
    pub what: &'static str,
    #[source]
    pub source: rmp_serde::encode::Error,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what} from {len} bytes of MessagePack: {source}")]
pub struct DecodeError {
    pub what: &'static str,
    pub len: usize,
    #[source]
    pub source: rmp_serde::decode::Error,
}

/// Encodes `value` as a MessagePack map with field names (readable by Python's `msgpack`).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    rmp_serde::to_vec_named(value).map_err(|source| EncodeError {
        what: std::any::type_name::<T>(),
        source,
    })
}

/// Decodes a MessagePack payload; the error names the expected type and the payload length.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|source| DecodeError {
        what: short_type_name::<T>(),
        len: bytes.len(),
        source,
    })
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}
