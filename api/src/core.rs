//! What both APIs do the same way: validate a command, propose it, turn a rejection into
//! an [`ApiError`] and count it; read a view at a level; stream a backup file in chunks.

use std::io::Read;
use std::sync::Arc;

use stockade_raft_store::kv::KvRead;
use stockade_raft_store::{keys, validate, Command, Reject, Response};
use tokio_stream::wrappers::ReceiverStream;

use crate::cluster::{Cluster, ReadLevel, Served};
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Whether the client may have sent a reservation's request id before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The client says this is its first send of the request id (`first_attempt`).
    First,
    /// A retry, or a client that does not say: an earlier send may still be in flight.
    MaybeRepeated,
}

impl Attempt {
    pub(crate) fn from_flag(first_attempt: bool) -> Self {
        if first_attempt {
            Attempt::First
        } else {
            Attempt::MaybeRepeated
        }
    }
}

/// Validates and proposes `cmd`. `Ok` carries a success response and the serving node;
/// a business rejection comes back as `ApiError::Rejected` with that node.
pub(crate) async fn propose<C: Cluster>(
    cluster: &C,
    metrics: &Metrics,
    cmd: Command,
) -> Result<Served<Response>, ApiError> {
    propose_as(cluster, metrics, cmd, Attempt::MaybeRepeated).await
}

/// [`propose`], where a reservation the client marks as its first attempt may be
/// refused from a read (see [`fast_reject`]).
pub(crate) async fn propose_as<C: Cluster>(
    cluster: &C,
    metrics: &Metrics,
    cmd: Command,
    attempt: Attempt,
) -> Result<Served<Response>, ApiError> {
    if let Err(reject) = validate::proposal(&cmd) {
        metrics.rejected(reject.code());
        return Err(ApiError::Rejected {
            reject,
            served_by: None,
        });
    }
    if attempt == Attempt::First && cluster.refusals_from_reads() {
        if let Some(rejected) = fast_reject(cluster, &cmd).await {
            metrics.rejected(rejected.0.code());
            metrics.refused_from_read();
            return Err(ApiError::Rejected {
                reject: rejected.0,
                served_by: Some(rejected.1),
            });
        }
    }
    let served = cluster.propose(cmd).await?;
    match served.value {
        Response::Rejected(reject) => {
            metrics.rejected(reject.code());
            Err(ApiError::Rejected {
                reject,
                served_by: Some(served.served_by),
            })
        }
        Response::Held(ref g) => {
            metrics.reserved(g.qty);
            Ok(served)
        }
        _ => Ok(served),
    }
}

/// After a sale sells out, almost every reservation is refused; deciding those without a
/// log entry keeps a sold-out crowd from costing one Raft write and fsync each.
///
/// A reserve is refused here only when a *linearizable* view (the leader's read index, no
/// write) shows that no one could get `qty` units now (`sale_not_found`, `sale_ended`,
/// `sold_out`, `insufficient_stock`; see `query::reserve_precheck`), so the refusal is a
/// correct answer linearized at that read. A request id that already has a recorded
/// answer is never decided here: that answer must come back (checked on the fresh view
/// only; the stale look below is just a filter). The local (stale) view is looked at
/// first, so while units remain a reservation costs no extra round. A refusal decided
/// here is not recorded: nothing happened, and the request id stays unused. The sale's
/// side of the check goes through [`Cluster::reserve_precheck`], which the node answers
/// from memory (no record read, no decode per refusal).
///
/// **Only for a first attempt** ([`Attempt::First`], the client's `first_attempt` flag).
/// A retry may have an earlier send still in flight: its forward to the leader timed out
/// during a partition, so its outcome was unknown, and it can still reach the leader and
/// take effect after the retry was refused here, giving one request id `sold_out` and,
/// later, a hold. The Jepsen-style suite found exactly that (docker backend, partition
/// then heal, 2026-11-21), when every attempt could be refused here. A retry, or a client
/// that does not say, goes through the log instead, where its answer is recorded and a
/// late earlier send gets that same answer back. A first send has no earlier send, so
/// nothing can take effect under its request id except through the log, later, by a
/// retry that is itself recorded. The node can turn the whole path off
/// (`--refusals-from-reads false`).
async fn fast_reject<C: Cluster>(cluster: &C, cmd: &Command) -> Option<(Reject, u64)> {
    let Command::Reserve {
        sale_id,
        user_id,
        qty,
        request_id,
    } = cmd
    else {
        return None;
    };
    // The local (possibly stale) state first: while units remain, no read round.
    let stale = cluster.read(ReadLevel::Stale).await.ok()?;
    cluster.reserve_precheck(&stale.value, sale_id, *qty)?;
    let fresh = cluster.read(ReadLevel::Linearizable).await.ok()?;
    let answered = fresh
        .value
        .get(&keys::idem(user_id, request_id))
        .ok()?
        .is_some();
    if answered {
        return None;
    }
    cluster
        .reserve_precheck(&fresh.value, sale_id, *qty)
        .map(|r| (r, fresh.served_by))
}

/// A view of the state at `level`.
pub(crate) async fn read<C: Cluster>(
    cluster: &C,
    level: ReadLevel,
) -> Result<Served<C::View>, ApiError> {
    Ok(cluster.read(level).await?)
}

/// An answer of the wrong kind for the command: a bug, never the client's fault.
pub(crate) fn unexpected(what: &str, r: &Response) -> ApiError {
    ApiError::Internal(format!("unexpected answer to {what}: {r:?}"))
}

/// Reads `len` bytes of `file` on a blocking thread and yields them in chunks of at most
/// `chunk_bytes`; the bounded channel makes the reader wait for a slow client.
pub(crate) fn file_chunks(
    file: std::fs::File,
    len: u64,
    chunk_bytes: usize,
) -> ReceiverStream<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let chunk_bytes = chunk_bytes.max(1);
    tokio::task::spawn_blocking(move || {
        let mut reader = file.take(len);
        loop {
            let mut buf = vec![0u8; chunk_bytes];
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        break; // the client went away
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The shared state of both APIs on one node.
pub(crate) struct Shared<C> {
    pub cluster: Arc<C>,
    pub limits: crate::ApiLimits,
    pub metrics: Arc<Metrics>,
}
