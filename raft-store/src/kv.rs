//! The key-value view the state machine reads and the transaction it writes into.
//!
//! `apply` is written against [`KvRead`] + [`Txn`] rather than against RocksDB, so the
//! same code runs on the real column family in production and on a `BTreeMap` in the
//! property tests, and the whole effect of an apply call is one set of writes that the
//! store commits as one `WriteBatch`.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::StoreError;

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Ordered key-value reads.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// At most `limit` pairs with `lo <= key < hi`, in ascending key order.
    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError>;
}

/// The in-memory state used by tests and by the reference replays.
pub type MemKv = BTreeMap<Vec<u8>, Vec<u8>>;

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        if lo >= hi {
            return Ok(Vec::new());
        }
        Ok(self
            .range(lo.to_vec()..hi.to_vec())
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Pending writes over a base view: `None` is a delete. Reads see the writes.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A write overlay over a read view, committed by the caller as one batch.
pub struct Txn<'a, R: KvRead + ?Sized> {
    base: &'a R,
    writes: Writes,
}

impl<'a, R: KvRead + ?Sized> Txn<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Txn {
            base,
            writes: Writes::new(),
        }
    }

    pub fn into_writes(self) -> Writes {
        self.writes
    }

    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            Some(bytes) => Ok(Some(codec::decode(key, &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<T: Serialize>(
        &mut self,
        what: &'static str,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = codec::encode(what, value)?;
        self.put_raw(key, bytes);
        Ok(())
    }

    pub fn exists(&self, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get_raw(key)?.is_some())
    }

    /// At most `limit` live pairs with `lo <= key < hi`, merging the base with the
    /// pending writes (a pending delete hides a base key, a pending put adds or replaces).
    pub fn scan(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Pair>, StoreError> {
        if lo >= hi || limit == 0 {
            return Ok(Vec::new());
        }
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.writes.range(lo.to_vec()..hi.to_vec()).collect();
        // Every pending delete may hide one base key, so read that many more.
        let deletes = pending.iter().filter(|(_, v)| v.is_none()).count();
        let base = self.base.scan(lo, hi, limit.saturating_add(deletes))?;

        let mut out = Vec::with_capacity(limit.min(base.len() + pending.len()));
        let mut b = base.into_iter().peekable();
        let mut p = pending.into_iter().peekable();
        while out.len() < limit {
            let take_pending = match (b.peek(), p.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((pk, _))) => {
                    if *pk == bk {
                        b.next(); // the pending write replaces the base value
                        true
                    } else {
                        *pk < bk
                    }
                }
            };
            if take_pending {
                if let Some((k, Some(v))) = p.next() {
                    out.push((k.clone(), v.clone()));
                }
            } else if let Some(pair) = b.next() {
                out.push(pair);
            }
        }
        Ok(out)
    }
}

/// Applies committed writes to an in-memory state.
pub fn commit_to_mem(state: &mut MemKv, writes: Writes) {
    for (k, v) in writes {
        match v {
            Some(v) => {
                state.insert(k, v);
            }
            None => {
                state.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&[u8], &[u8])]) -> MemKv {
        pairs
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn scan_merges_pending_puts_and_deletes_in_order() -> Result<(), StoreError> {
        let base = kv(&[(b"a", b"1"), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]);
        let mut t = Txn::new(&base);
        t.delete(b"a".to_vec());
        t.put_raw(b"bb".to_vec(), b"x".to_vec());
        t.put_raw(b"c".to_vec(), b"33".to_vec());
        let got = t.scan(b"a", b"z", 3)?;
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"b".to_vec(), b"2".to_vec()),
            (b"bb".to_vec(), b"x".to_vec()),
            (b"c".to_vec(), b"33".to_vec()),
        ];
        assert_eq!(got, want);
        // The limit counts live keys, not deleted ones.
        assert_eq!(t.scan(b"a", b"b", 5)?, vec![]);
        assert_eq!(t.scan(b"c", b"e", 10)?.len(), 2);
        Ok(())
    }

    #[test]
    fn reads_see_pending_writes() -> Result<(), StoreError> {
        let base = kv(&[(b"k", b"old")]);
        let mut t = Txn::new(&base);
        assert_eq!(t.get_raw(b"k")?, Some(b"old".to_vec()));
        t.put_raw(b"k".to_vec(), b"new".to_vec());
        assert_eq!(t.get_raw(b"k")?, Some(b"new".to_vec()));
        t.delete(b"k".to_vec());
        assert!(!t.exists(b"k")?);
        let mut state = base.clone();
        commit_to_mem(&mut state, t.into_writes());
        assert!(state.is_empty());
        Ok(())
    }
}
