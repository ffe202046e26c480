//! The one error type of this crate. A `StoreError` means the node cannot go on safely
//! (a disk failure, a corrupt record, a broken invariant); business outcomes are never
//! errors, they are `Response::Rejected`.

/// Storage failure, corruption or a violated invariant.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("invariant violated: {0}")]
    Invariant(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The store was recorded with another [`crate::store::SCHEMA_VERSION`].
    #[error(
        "this store was written with store schema {found}, and this build reads schema \
         {supported} only: run a build of schema {found} on it, or restore a backup taken \
         with a build of schema {supported} into a new data directory; the store was left \
         as it was"
    )]
    Schema { found: u32, supported: u32 },
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}
