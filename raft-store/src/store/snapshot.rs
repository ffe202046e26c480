//! The snapshot file: a self-checking, streamable dump of the state-machine column family.
//!
//! ```text
//! "STKSNAP1" | format u32 LE | meta_len u32 LE | meta (bincode SnapshotMeta)
//! { key_len u32 LE | key | value_len u32 LE | value }*      ascending key order
//! END u32 = 0xFFFF_FFFF | record count u64 LE | xxh3-64 of every byte before it u64 LE
//! ```
//!
//! Files are written to `*.tmp` (synced every `SNAPSHOT_SYNC_BYTES` on the way, so the
//! node's WAL syncs never wait for a whole snapshot's dirty pages), fsynced, renamed to
//! `<last index, 20 digits>.snap`, and the directory is fsynced, so a crash leaves either
//! the old file or the whole new one.
//! Readers verify the checksum and count before a single record is installed.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::error::StoreError;
use crate::kv::Pair;
use crate::limits::{SNAPSHOT_FILES_KEPT, SNAPSHOT_SYNC_BYTES};
use crate::{codec, SnapshotMeta};

const MAGIC: &[u8; 8] = b"STKSNAP1";
const FORMAT_VERSION: u32 = 1;
const END: u32 = u32::MAX;
/// Bounds that protect a reader from a corrupt or hostile length field.
const META_BYTES_MAX: u32 = 16 * 1024 * 1024;
const KEY_BYTES_MAX: u32 = 64 * 1024;
const VALUE_BYTES_MAX: u32 = 64 * 1024 * 1024;

fn err(msg: impl Into<String>) -> StoreError {
    StoreError::Snapshot(msg.into())
}

/// The file name of the snapshot that ends at `meta.last_log_id`; names sort by index.
pub fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("{:020}.snap", id.index),
        None => "empty.snap".to_string(),
    }
}

/// Streams records into a new snapshot file.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    hasher: Xxh3,
    count: u64,
    /// Bytes written since the file was last synced (see `SNAPSHOT_SYNC_BYTES`).
    unsynced: u64,
    /// Syncs done while writing, the final one not counted.
    syncs: u64,
}

impl SnapshotWriter {
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{}.tmp", file_name(meta)));
        let mut w = SnapshotWriter {
            out: BufWriter::new(File::create(&tmp)?),
            tmp,
            hasher: Xxh3::new(),
            count: 0,
            unsynced: 0,
            syncs: 0,
        };
        let meta_bytes = codec::encode("snapshot meta", meta)?;
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        w.put(&len_u32(meta_bytes.len())?.to_le_bytes())?;
        w.put(&meta_bytes)?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(b);
        self.out.write_all(b)?;
        self.unsynced += b.len() as u64;
        if self.unsynced >= SNAPSHOT_SYNC_BYTES {
            // Never more than this much dirty: a WAL sync must not wait for the whole file.
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(())
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put(&len_u32(key.len())?.to_le_bytes())?;
        self.put(key)?;
        self.put(&len_u32(value.len())?.to_le_bytes())?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Seals the file and moves it into place as `dir/<file_name(meta)>`.
    pub fn finish(mut self, dir: &Path, meta: &SnapshotMeta) -> Result<PathBuf, StoreError> {
        self.put(&END.to_le_bytes())?;
        let count = self.count.to_le_bytes();
        self.out.write_all(&count)?;
        self.out.write_all(&self.hasher.digest().to_le_bytes())?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?;
        file.sync_all()?;
        drop(file);
        let path = dir.join(file_name(meta));
        fs::rename(&self.tmp, &path)?;
        File::open(dir)?.sync_all()?;
        prune(dir)?;
        Ok(path)
    }
}

fn len_u32(n: usize) -> Result<u32, StoreError> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n != END)
        .ok_or_else(|| err("record longer than 4 GiB"))
}

/// Reads a snapshot file: the meta first, then records one at a time.
pub struct SnapshotReader<R: Read> {
    input: R,
    hasher: Xxh3,
    count: u64,
    done: bool,
}

impl SnapshotReader<BufReader<File>> {
    /// Opens a snapshot from its start (the handle's position is reset).
    pub fn open(mut file: File) -> Result<(Self, SnapshotMeta), StoreError> {
        file.seek(SeekFrom::Start(0))?;
        SnapshotReader::new(BufReader::new(file))
    }
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<(Self, SnapshotMeta), StoreError> {
        let mut r = SnapshotReader {
            input,
            hasher: Xxh3::new(),
            count: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(err("not a Stockade snapshot (bad magic)"));
        }
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(err(format!(
                "snapshot format {version} is not supported (want {FORMAT_VERSION})"
            )));
        }
        let meta_len = r.u32()?;
        if meta_len > META_BYTES_MAX {
            return Err(err("snapshot meta too large"));
        }
        let meta_bytes = r.bytes(meta_len)?;
        let meta: SnapshotMeta = codec::decode(b"snapshot meta", &meta_bytes)?;
        Ok((r, meta))
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        self.input
            .read_exact(buf)
            .map_err(|e| err(format!("truncated snapshot: {e}")))?;
        self.hasher.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn bytes(&mut self, n: u32) -> Result<Vec<u8>, StoreError> {
        let mut v = vec![0u8; n as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next record, or `None` at the end once the count and checksum are verified.
    pub fn next_record(&mut self) -> Result<Option<Pair>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let klen = self.u32()?;
        if klen == END {
            let digest = self.hasher.digest();
            let mut trailer = [0u8; 16];
            self.input
                .read_exact(&mut trailer)
                .map_err(|e| err(format!("truncated trailer: {e}")))?;
            let (count, sum) = trailer.split_at(8);
            let count = u64::from_le_bytes(count.try_into().map_err(|_| err("trailer"))?);
            let sum = u64::from_le_bytes(sum.try_into().map_err(|_| err("trailer"))?);
            if count != self.count {
                return Err(err(format!(
                    "snapshot says {count} records, holds {}",
                    self.count
                )));
            }
            if sum != digest {
                return Err(err("snapshot checksum mismatch"));
            }
            self.done = true;
            return Ok(None);
        }
        if klen > KEY_BYTES_MAX {
            return Err(err(format!("key of {klen} bytes")));
        }
        let key = self.bytes(klen)?;
        let vlen = self.u32()?;
        if vlen > VALUE_BYTES_MAX {
            return Err(err(format!("value of {vlen} bytes")));
        }
        let value = self.bytes(vlen)?;
        self.count += 1;
        Ok(Some((key, value)))
    }
}

/// The newest complete snapshot file in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, StoreError> {
    Ok(list(dir)?.pop())
}

/// Complete snapshot files, oldest first.
fn list(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut files = Vec::new();
    for entry in rd {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "snap") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Keeps the newest `SNAPSHOT_FILES_KEPT` snapshots and removes stale temporary files.
fn prune(dir: &Path) -> Result<(), StoreError> {
    let files = list(dir)?;
    let excess = files.len().saturating_sub(SNAPSHOT_FILES_KEPT);
    for old in &files[..excess] {
        fs::remove_file(old)?;
    }
    Ok(())
}

/// Copies a snapshot (from any reader, e.g. a received stream) into `dir` as a verified
/// file, returning its path and meta. Nothing lands if the copy does not verify.
pub fn store_from(dir: &Path, input: impl Read) -> Result<(PathBuf, SnapshotMeta), StoreError> {
    let (mut reader, meta) = SnapshotReader::new(input)?;
    let mut writer = SnapshotWriter::create(dir, &meta)?;
    while let Some((k, v)) = reader.next_record()? {
        writer.record(&k, &v)?;
    }
    let path = writer.finish(dir, &meta)?;
    Ok((path, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A big snapshot is synced on the way (never more than `SNAPSHOT_SYNC_BYTES` dirty),
    /// and the syncs change nothing in what is read back.
    #[test]
    fn a_big_snapshot_is_synced_as_it_is_written() {
        let dir = tempfile::TempDir::new().unwrap();
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
        };
        let value = vec![7u8; 64 * 1024];
        let records = 56u64; // 3.5 MiB of values, plus framing
        let mut w = SnapshotWriter::create(dir.path(), &meta).unwrap();
        for i in 0..records {
            w.record(&i.to_be_bytes(), &value).unwrap();
        }
        assert_eq!(w.syncs, 3, "one sync per SNAPSHOT_SYNC_BYTES written");
        let path = w.finish(dir.path(), &meta).unwrap();
        let (mut r, back) = SnapshotReader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(back, meta);
        let mut n = 0u64;
        while let Some((k, v)) = r.next_record().unwrap() {
            assert_eq!(k, n.to_be_bytes());
            assert_eq!(v, value);
            n += 1;
        }
        assert_eq!(n, records);
    }
}
