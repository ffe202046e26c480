//! Offline restore: turns a backup (a snapshot file from `GET /admin/backup`) into the
//! data directory of a node of a *new* cluster, without any node running.
//!
//! A backup carries the old cluster's membership, whose addresses and ids mean nothing
//! to the new cluster. So restore rewrites the snapshot's membership (in the meta and in
//! the state's own membership record, which must agree) to the new members, keeping the
//! log id it was taken at, and installs it through the store's own
//! `RaftStateMachine::install_snapshot` (which verifies the checksum and conservation of
//! every sale). It then stores a vote for the backup's last term, so the first election
//! of the new cluster happens in a later term than any entry it holds: its first leader's
//! log ids stay above the restored ones. The log is empty; on start the node sees the
//! state machine ahead of its log and purges up to it (openraft's normal recovery path
//! after a snapshot install).
//!
//! Run it once per node of the new cluster, each with its own `--node-id` and
//! `--data-dir` and the same `--peers`, then start the nodes with those flags. This
//! module must not touch an existing directory: it refuses a non-empty `--data-dir`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use stockade_raft_store::store::snapshot::{SnapshotReader, SnapshotWriter};
use stockade_raft_store::{
    codec, keys, open, Membership, NodeAddr, SnapshotMeta, StoreOptions, StoredMembership, Vote,
};

use crate::args::{parse_peers, RestoreArgs};

/// Name of the staging folder (inside the new data directory) for the rewritten file.
const STAGING_DIR: &str = "restore-staging";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("backup {path}: {source}")]
    Backup {
        path: String,
        source: stockade_raft_store::StoreError,
    },
    #[error("writing the new store: {0}")]
    Store(String),
}

/// What a restore wrote.
#[derive(Debug, serde::Serialize)]
pub struct RestoreReport {
    pub data_dir: String,
    pub node_id: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub voters: Vec<u64>,
    pub state_records: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuses a directory that holds anything: restore only ever creates.
fn check_empty(dir: &Path) -> Result<(), RestoreError> {
    match fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(RestoreError::Usage(format!(
                    "--data-dir {} is not empty; restore writes a fresh directory only",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Writes a fresh node data directory from a backup file.
pub async fn restore(args: &RestoreArgs) -> Result<RestoreReport, RestoreError> {
    let peers = parse_peers(&args.peers).map_err(|e| RestoreError::Usage(e.to_string()))?;
    if !peers.contains_key(&args.node_id) {
        return Err(RestoreError::Usage(format!(
            "--peers does not include --node-id {}",
            args.node_id
        )));
    }
    check_empty(&args.data_dir)?;
    let backup_err = |source| RestoreError::Backup {
        path: args.file.display().to_string(),
        source,
    };

    let file = File::open(&args.file).map_err(io(&args.file))?;
    let (mut reader, old_meta) = SnapshotReader::open(file).map_err(backup_err)?;
    let Some(last) = old_meta.last_log_id else {
        return Err(RestoreError::Usage(format!(
            "backup {} is of an empty state: nothing to restore",
            args.file.display()
        )));
    };

    // The new membership, recorded at the backup's last log id.
    let voters: BTreeSet<u64> = peers.keys().copied().collect();
    let nodes: BTreeMap<u64, NodeAddr> = peers
        .iter()
        .map(|(id, (grpc, http))| {
            (
                *id,
                NodeAddr {
                    raft_addr: grpc.clone(),
                    api_addr: http.clone(),
                },
            )
        })
        .collect();
    let membership = Membership::new(vec![voters.clone()], nodes)
        .map_err(|e| RestoreError::Usage(format!("--peers: {e}")))?;
    let stored = StoredMembership::new(Some(last), membership);
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: stored.clone(),
    };
    let encoded = codec::encode("membership", &stored)
        .map_err(|e| RestoreError::Store(format!("encoding the membership: {e}")))?;

    // Stage the rewritten snapshot inside the new directory, then install it. The copy
    // streams record by record (memory does not grow with the backup); the backup's
    // count and checksum are verified at its end, and a backup that fails leaves no
    // staging behind.
    let staging = args.data_dir.join(STAGING_DIR);
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    let (staged, state_records) = match rewrite(&mut reader, &staging, &meta, &encoded) {
        Ok(done) => done,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(match e {
                Rewrite::Backup(source) => backup_err(source),
                Rewrite::Store(e) => e,
            });
        }
    };
    let (mut log, mut sm) = open(&StoreOptions::new(&args.data_dir))
        .map_err(|e| RestoreError::Store(format!("opening {}: {e}", args.data_dir.display())))?;
    let snap = File::open(&staged).map_err(io(&staged))?;
    sm.install_snapshot(&meta, snap)
        .await
        .map_err(|e| RestoreError::Store(format!("installing the snapshot: {e}")))?;
    let term = last.committed_leader_id().term();
    log.save_vote(&Vote::new(term, args.node_id))
        .await
        .map_err(|e| RestoreError::Store(format!("saving the vote: {e}")))?;
    log.save_committed(Some(last))
        .await
        .map_err(|e| RestoreError::Store(format!("saving the commit index: {e}")))?;
    drop(sm);
    drop(log);
    fs::remove_dir_all(&staging).map_err(io(&staging))?;
    Ok(RestoreReport {
        data_dir: args.data_dir.display().to_string(),
        node_id: args.node_id,
        last_log_index: last.index,
        last_log_term: term,
        voters: voters.into_iter().collect(),
        state_records,
    })
}

/// Why a streamed rewrite stopped: the backup (unreadable, corrupt) or the staged copy.
enum Rewrite {
    Backup(stockade_raft_store::StoreError),
    Store(RestoreError),
}

/// Copies the backup's records from `reader` into a snapshot in `dir` under `meta`, with
/// the membership record replaced by `membership` (inserted where it sorts if the backup
/// had none). Returns the staged file and how many records it holds.
fn rewrite<R: std::io::Read>(
    reader: &mut SnapshotReader<R>,
    dir: &Path,
    meta: &SnapshotMeta,
    membership: &[u8],
) -> Result<(PathBuf, u64), Rewrite> {
    let store = |e: stockade_raft_store::StoreError| {
        Rewrite::Store(RestoreError::Store(format!(
            "writing the staged snapshot: {e}"
        )))
    };
    let mut w = SnapshotWriter::create(dir, meta).map_err(store)?;
    let mut count = 0u64;
    let mut membership_written = false;
    while let Some((k, v)) = reader.next_record().map_err(Rewrite::Backup)? {
        if !membership_written && k.as_slice() >= keys::META_MEMBERSHIP {
            w.record(keys::META_MEMBERSHIP, membership).map_err(store)?;
            count += 1;
            membership_written = true;
            if k.as_slice() == keys::META_MEMBERSHIP {
                continue;
            }
        }
        w.record(&k, &v).map_err(store)?;
        count += 1;
    }
    if !membership_written {
        w.record(keys::META_MEMBERSHIP, membership).map_err(store)?;
        count += 1;
    }
    Ok((w.finish(dir, meta).map_err(store)?, count))
}
