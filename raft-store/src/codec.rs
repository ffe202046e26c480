//! The one encoding of persisted values: bincode 2 with its standard configuration
//! (little-endian, variable-length integers), through serde. Keys are not encoded here:
//! they are hand-built big-endian bytes (`keys.rs`) so that RocksDB orders them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a persisted value.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StoreError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a persisted value; trailing bytes are corruption, not slack.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| StoreError::Corrupt {
            key: crate::keys::display(key),
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(StoreError::Corrupt {
            key: crate::keys::display(key),
            reason: format!("{} trailing bytes", bytes.len() - read),
        });
    }
    Ok(value)
}
