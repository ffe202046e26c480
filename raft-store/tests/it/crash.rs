//! Crash recovery: a child process appends and applies through the real store, printing
//! each index only after the store acknowledged it; the parent kills it with SIGKILL
//! (no clean shutdown, no destructors) and reopens the store. Every acknowledged entry
//! must be there, intact, the applied state must be a valid prefix of the log, and
//! re-applying the log after it (openraft's start-up) must give the whole state.

use std::io::{BufRead, BufReader};
use std::process::{Command as Proc, Stdio};

use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::vote::{RaftLeaderId, RaftVote};
use openraft::RaftLogReader;
use stockade_raft_store::kv::MemKv;
use stockade_raft_store::machine::apply_to_mem;
use stockade_raft_store::{keys, open, StoreOptions, TypeConfig, Vote};

use crate::snapshot::{apply_all, entries, log_id, workload};

const CHILD_ENV: &str = "STOCKADE_CRASH_CHILD_DIR";
const ENTRIES: u64 = 100_000;
/// How many acknowledged entries the parent waits for before killing the child.
const KILL_AFTER_ACKS: u64 = 1_500;

fn vote() -> Vote {
    Vote::from_leader_id(RaftLeaderId::new(1u64, 1u64), true)
}

/// The child side; does nothing unless started by `acknowledged_writes_survive_kill_9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of acknowledged_writes_survive_kill_9, not a test on its own"]
#[allow(clippy::disallowed_methods)] // the child learns its directory from the parent
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (mut log, mut sm) = open(&StoreOptions::new(dir)).unwrap();
    log.save_vote(&vote()).await.unwrap();
    println!("vote");
    let all = entries(1, &workload(ENTRIES));
    for chunk in all.chunks(10) {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(chunk.to_vec(), IOFlushed::signal(tx))
            .await
            .unwrap();
        rx.await.unwrap().unwrap();
        let last = chunk.last().unwrap().log_id.index;
        println!("acked {last}");
        apply_all(&mut sm, chunk.to_vec()).await;
        println!("applied {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = Proc::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (mut acked, mut applied, mut voted) = (0u64, 0u64, false);
    for line in out.lines() {
        let line = line.unwrap();
        if line.ends_with("vote") {
            voted = true;
        } else if let Some(n) = line.strip_prefix("acked ") {
            acked = n.parse().unwrap();
        } else if let Some(n) = line.strip_prefix("applied ") {
            applied = n.parse().unwrap();
        }
        // Ends at the threshold, or at EOF if the child died on its own (asserted below).
        if acked >= KILL_AFTER_ACKS {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        voted && acked >= KILL_AFTER_ACKS,
        "child did not get far enough: acked {acked}"
    );

    let (mut log, mut sm) = open(&StoreOptions::new(dir.path())).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(vote()));
    let state = log.get_log_state().await.unwrap();
    let last = state.last_log_id.expect("log survived").index;
    assert!(
        last >= acked,
        "acknowledged {acked} but the log ends at {last}"
    );
    let want = workload(ENTRIES);
    let got = log.try_get_log_entries(1..=acked).await.unwrap();
    assert_eq!(got.len() as u64, acked);
    for e in &got {
        assert_eq!(e.log_id, log_id(e.log_id.index));
        match &e.payload {
            openraft::EntryPayload::Normal(le) => {
                assert_eq!(*le, want[e.log_id.index as usize - 1])
            }
            other => panic!("unexpected payload {other:?}"),
        }
    }
    // The applied state is exactly the replay of the prefix it claims. Apply batches
    // bypass the WAL (`store/sm.rs`), so after SIGKILL it is the state as of the column
    // family's last flush: any prefix, here usually none, never ahead of the log.
    let (applied_id, _) = sm.applied_state().await.unwrap();
    let applied_index = applied_id.map_or(0, |id| id.index);
    assert!(
        applied_index <= last,
        "applied {applied_index} is ahead of the log's last entry {last} (printed applied {applied})"
    );
    let mut mem = MemKv::new();
    for le in &want[..applied_index as usize] {
        apply_to_mem(&mut mem, le).unwrap();
    }
    assert_eq!(state_dump(&sm), mem.clone().into_iter().collect::<Vec<_>>());
    // What openraft does on start-up (`StorageHelper::get_initial_state`): re-apply the
    // log after the applied index. The result is the replay of every logged entry, every
    // acknowledged one among them.
    // To the log's last entry: the child may have applied past what the parent read.
    let rest = log
        .try_get_log_entries(applied_index + 1..=last)
        .await
        .unwrap();
    apply_all(&mut sm, rest).await;
    for le in &want[applied_index as usize..last as usize] {
        apply_to_mem(&mut mem, le).unwrap();
    }
    assert_eq!(state_dump(&sm), mem.into_iter().collect::<Vec<_>>());
}

/// The state machine's records without its bookkeeping keys.
fn state_dump(sm: &stockade_raft_store::StateMachineStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    sm.dump()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k != keys::META_LAST_APPLIED && k != keys::META_MEMBERSHIP)
        .collect()
}
