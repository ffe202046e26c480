//! The store's schema record: a new store records this build's `SCHEMA_VERSION`, a store
//! without a record (written before it existed) gets one, and a store recorded with
//! another version is refused at open with an error naming both, its data untouched.

use stockade_raft_store::{open, StoreError, StoreOptions, SCHEMA_VERSION};
use tempfile::TempDir;

use crate::snapshot::{apply_all, entries, workload};

/// Opens the store's RocksDB directly (as another build would find it) and returns the
/// `raft` column family's `schema` record, after `change` ran on it.
fn with_raw_db(dir: &TempDir, change: impl FnOnce(&rocksdb::DB)) -> Option<Vec<u8>> {
    let db = rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        dir.path().join("db"),
        ["log", "raft", "sm"],
    )
    .expect("the store's database opens");
    change(&db);
    let raft = db.cf_handle("raft").expect("raft column family");
    db.get_cf(raft, b"schema").expect("read")
}

/// The store's record as it stands.
fn recorded(dir: &TempDir) -> Option<Vec<u8>> {
    with_raw_db(dir, |_| {})
}

/// What a store of this build records.
fn this_builds() -> Option<Vec<u8>> {
    Some(SCHEMA_VERSION.to_be_bytes().to_vec())
}

/// The error `open` refuses the store with (`what`: why it must be refused).
fn refused(dir: &TempDir, what: &str) -> StoreError {
    match open(&StoreOptions::new(dir.path())) {
        Ok(_) => panic!("{what} must be refused"),
        Err(e) => e,
    }
}

fn set_schema(db: &rocksdb::DB, value: Option<&[u8]>) {
    let raft = db.cf_handle("raft").expect("raft column family");
    match value {
        Some(v) => db.put_cf(raft, b"schema", v).expect("put"),
        None => db.delete_cf(raft, b"schema").expect("delete"),
    }
}

/// A store with some state in it, closed; and that state's hash.
async fn store_with_state() -> (TempDir, u64) {
    let dir = TempDir::new().unwrap();
    let (_log, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    apply_all(&mut sm, entries(1, &workload(200))).await;
    let hash = sm.state_hash().unwrap();
    (dir, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_records_this_builds_schema_version() {
    let (dir, _) = store_with_state().await;
    assert_eq!(recorded(&dir), this_builds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_record_opens_and_gets_one() {
    let (dir, hash) = store_with_state().await;
    assert_eq!(with_raw_db(&dir, |db| set_schema(db, None)), None);
    let (_log, sm) = open(&StoreOptions::new(dir.path())).expect("a store from before the record");
    assert_eq!(sm.state_hash().unwrap(), hash);
    drop((_log, sm));
    assert_eq!(recorded(&dir), this_builds());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_another_schema_is_refused_and_left_as_it_was() {
    let (dir, hash) = store_with_state().await;
    for other in [SCHEMA_VERSION + 1, SCHEMA_VERSION - 1] {
        with_raw_db(&dir, |db| set_schema(db, Some(&other.to_be_bytes())));
        let err = refused(&dir, &format!("a store of schema {other}"));
        assert!(
            matches!(err, StoreError::Schema { found, supported }
                if found == other && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("schema {other}"))
                && msg.contains(&format!("schema {SCHEMA_VERSION} only")),
            "{msg}"
        );
        // The refusal wrote nothing: the record is still the other build's.
        assert_eq!(recorded(&dir), Some(other.to_be_bytes().to_vec()));
    }
    // Put back, the store opens with its state intact.
    with_raw_db(&dir, |db| {
        set_schema(db, Some(&SCHEMA_VERSION.to_be_bytes()))
    });
    let (_log, sm) = open(&StoreOptions::new(dir.path())).unwrap();
    assert_eq!(sm.state_hash().unwrap(), hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_record_is_refused_as_corrupt() {
    let (dir, _) = store_with_state().await;
    with_raw_db(&dir, |db| set_schema(db, Some(b"\x01")));
    let err = refused(&dir, "a 1-byte schema record");
    assert!(
        matches!(&err, StoreError::Corrupt { key, .. } if key == "raft/schema"),
        "{err:?}"
    );
}
