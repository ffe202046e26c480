//! The one encoding of persisted values: bincode 2 with its standard configuration
//! (little-endian, variable-length integers), through serde. Keys are not encoded here:
//! they are hand-built big-endian bytes (`keys.rs`) so that RocksDB orders them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use bincode::enc::write::{SizeWriter, Writer};
use bincode::error::EncodeError;
use xxhash_rust::xxh3::Xxh3;

use crate::error::StoreError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Bytes reserved up front for one encoding. The records a command writes (a hold, an
/// order, a user's units, an idempotency record, a sale with a short description) encode
/// to less, so encoding one allocates once. bincode's own `serde::encode_to_vec` starts
/// from an empty `Vec` and grows it 8 → 16 → 32 → …, five or six reallocations per
/// record; with the encodings apply made only to hash a command (now [`fingerprint`]),
/// that was 8.5% of the apply path's instructions (callgrind over `storage_bench`;
/// `docs/benchmarks.md`, seventh session). Larger values (log entries, long sale specs)
/// grow from here as before. The spare capacity lives only until the bytes are written
/// to RocksDB (at the latest, the end of the apply call).
pub const ENCODE_BUF_BYTES: usize = 256;

/// A bincode sink appending to a `Vec` (bincode's own is crate-private).
struct VecSink(Vec<u8>);

impl Writer for VecSink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A bincode sink feeding xxh3: hashing an encoding without materialising it.
struct HashSink(Xxh3);

impl Writer for HashSink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.update(bytes);
        Ok(())
    }
}

fn encode_error(what: &'static str, e: EncodeError) -> StoreError {
    StoreError::Encode {
        what,
        reason: e.to_string(),
    }
}

/// Encodes a persisted value.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut sink = VecSink(Vec::with_capacity(ENCODE_BUF_BYTES));
    bincode::serde::encode_into_writer(value, &mut sink, config())
        .map_err(|e| encode_error(what, e))?;
    Ok(sink.0)
}

/// The length of `value`'s encoding, without building it.
pub fn encoded_len<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<usize, StoreError> {
    let mut sink = SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut sink, config())
        .map_err(|e| encode_error(what, e))?;
    Ok(sink.bytes_written)
}

/// xxh3-64 of `value`'s encoding, without building it: equal to
/// `xxh3_64(&encode(value))` (idempotency records store it, so it must never change).
pub fn fingerprint<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<u64, StoreError> {
    let mut sink = HashSink(Xxh3::new());
    bincode::serde::encode_into_writer(value, &mut sink, config())
        .map_err(|e| encode_error(what, e))?;
    Ok(sink.0.digest())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;

    fn commands() -> Vec<Command> {
        let reserve = |i: u32| Command::Reserve {
            sale_id: "drop-1".into(),
            user_id: format!("user-{i}"),
            qty: i,
            request_id: format!("req-{i:032}"),
        };
        vec![
            Command::Tick,
            reserve(1),
            // Larger than the initial buffer: the encoding must grow past it intact.
            Command::Batch((0..40).map(reserve).collect()),
        ]
    }

    /// The sinks write exactly bincode's bytes: the same encoding as `encode_to_vec`, its
    /// length, and the xxh3 that idempotency records already store.
    #[test]
    fn sinks_agree_with_bincodes_own_encoding() -> Result<(), StoreError> {
        for cmd in commands() {
            let reference = bincode::serde::encode_to_vec(&cmd, config())
                .map_err(|e| encode_error("command", e))?;
            assert_eq!(encode("command", &cmd)?, reference);
            assert_eq!(encoded_len("command", &cmd)?, reference.len());
            assert_eq!(
                fingerprint("command", &cmd)?,
                xxhash_rust::xxh3::xxh3_64(&reference)
            );
        }
        assert!(encoded_len("command", &commands()[2])? > ENCODE_BUF_BYTES);
        Ok(())
    }
}
