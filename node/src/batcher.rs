//! Group commit: concurrent proposals on the leader share one log entry.
//!
//! The batcher takes whatever is queued (up to `batch_max` commands, optionally waiting
//! `linger` for more), stamps the entry with the leader's clock, and proposes it as one
//! `Command::Batch`: one Raft round, one fsync and one apply pass serve every command in
//! it, and each gets its own response. A batch of one is proposed unwrapped. Up to
//! `inflight_max` entries are in flight at once (openraft pipelines them); a batch is
//! formed only when a slot is free, so the queue that builds up behind busy slots is
//! what makes batches large under load, with no added wait when idle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_api::ClusterError;
use stockade_raft_store::{Command, LogEntry, Raft, Response};
use tokio::sync::{mpsc, Semaphore};

use crate::cluster::{raft_err, Proposal, ProposeError, WriteStats};
use crate::stamp::Stamper;

#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Commands per entry (1 disables group commit).
    pub batch_max: usize,
    /// How long the first proposal of a batch may wait for company (0 = never wait).
    pub linger: Duration,
    /// Entries proposed and not yet answered.
    pub inflight_max: usize,
}

pub async fn run(
    raft: Raft,
    stamper: Arc<Stamper>,
    mut rx: mpsc::Receiver<Proposal>,
    cfg: BatchConfig,
    stats: Arc<WriteStats>,
) {
    let inflight = Arc::new(Semaphore::new(cfg.inflight_max.max(1)));
    while let Some(first) = rx.recv().await {
        // Wait for room in the pipeline first: while every slot is busy, proposals queue
        // up, and the next batch takes them all. Under load batches grow by themselves;
        // idle, a proposal goes out at once.
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let first_queued = first.queued_at;
        let mut batch = vec![first];
        if !cfg.linger.is_zero() && cfg.batch_max > 1 {
            let deadline = tokio::time::Instant::now() + cfg.linger;
            while batch.len() < cfg.batch_max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while batch.len() < cfg.batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        stats.entries.fetch_add(1, Ordering::Relaxed);
        // The queue is first in, first out: the first proposal waited longest.
        stats
            .batch_wait
            .observe(first_queued.elapsed().as_secs_f64());
        let raft = raft.clone();
        let at_ms = stamper.stamp();
        let stats = stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            propose(&raft, at_ms, batch).await;
            stats.raft_round.observe(started.elapsed().as_secs_f64());
            drop(permit);
        });
    }
}

async fn propose(raft: &Raft, at_ms: u64, batch: Vec<Proposal>) {
    let (mut cmds, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
    let single = cmds.len() == 1;
    let cmd = match cmds.pop() {
        Some(c) if single => c,
        Some(c) => {
            cmds.push(c);
            Command::Batch(cmds)
        }
        None => return,
    };
    let n = replies.len();
    let answers: Vec<Result<Response, ProposeError>> = match raft
        .client_write(LogEntry::new(at_ms, cmd))
        .await
    {
        Ok(resp) => match resp.data {
            Response::Batch(items) if !single && items.len() == n => {
                items.into_iter().map(Ok).collect()
            }
            r if single => vec![Ok(r)],
            // A whole batch rejected up front (e.g. invalid as a batch): every command
            // gets that answer.
            Response::Rejected(r) => (0..n).map(|_| Ok(Response::Rejected(r.clone()))).collect(),
            other => (0..n)
                .map(|_| {
                    Err(ProposeError::Cluster(ClusterError::Internal(format!(
                        "batch answered {other:?}"
                    ))))
                })
                .collect(),
        },
        Err(e) => {
            let err = raft_err(e);
            (0..n)
                .map(|_| match &err {
                    ProposeError::NotLeader(h) => Err(ProposeError::NotLeader(*h)),
                    ProposeError::Cluster(c) => Err(ProposeError::Cluster(c.clone())),
                })
                .collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}
