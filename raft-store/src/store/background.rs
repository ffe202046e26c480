//! Background work on its own thread at a lower CPU priority: the snapshot build.
//!
//! Apply, the log's sync thread and every other blocking call of the node share tokio's
//! blocking pool; a snapshot build used to run there too, at the same priority as the
//! request path. It gets a thread of its own instead, because a priority is a property
//! of the thread: a pool thread set to nice 19 or `SCHED_IDLE` would later run apply at
//! that priority, and an unprivileged process cannot raise it again (`RLIMIT_NICE`). The
//! thread ends with the build, so nothing else ever runs at its priority. Builds are rare
//! (one per many thousand log entries), so the thread's start costs nothing that matters.

use std::io;

use crate::error::StoreError;
use crate::limits::SNAPSHOT_BUILD_NICE;

/// The CPU priority of background work (`StoreOptions::snapshot_build_priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BuildPriority {
    /// Linux `SCHED_IDLE` (and nice `SNAPSHOT_BUILD_NICE`): the thread runs only on CPU
    /// time no other thread wants, and a waking request thread takes its core at once.
    #[default]
    Idle,
    /// Nice `SNAPSHOT_BUILD_NICE` under the normal policy: a small share under load.
    Low,
    /// The node's own priority (on a thread of its own all the same).
    Normal,
}

/// The priority a thread ran at, read back from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RanAt {
    pub nice: i32,
    /// Whether its scheduling policy was `SCHED_IDLE`.
    pub sched_idle: bool,
}

/// Runs `f` on a new thread named `name` at `priority` (a nice value is only ever raised:
/// a process already running nicer keeps its own), and answers with `f`'s result and
/// the priority the thread ran at (`None` where the platform has no such thing or it
/// could not be read).
pub(crate) async fn run_at<T: Send + 'static>(
    name: &str,
    priority: BuildPriority,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<(T, Option<RanAt>), io::Error> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let ran_at = lower_priority(priority);
            // The receiver is gone only if the caller was dropped: nobody to tell.
            let _ = tx.send(f().map(|v| (v, ran_at)));
        })?;
    let answer = rx
        .await
        .map_err(|_| io::Error::other("background thread ended without an answer"))?;
    Ok(answer?)
}

/// Lowers the calling thread's priority and returns what is now in effect.
#[cfg(target_os = "linux")]
fn lower_priority(priority: BuildPriority) -> Option<RanAt> {
    if priority != BuildPriority::Normal {
        let now = current()?;
        // SAFETY: gettid and setpriority take no pointers; on Linux a PRIO_PROCESS
        // priority with a thread id applies to that thread alone (setpriority(2), "BUGS").
        let rc = if SNAPSHOT_BUILD_NICE > now.nice {
            unsafe {
                let tid = libc::gettid();
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SNAPSHOT_BUILD_NICE)
            }
        } else {
            0
        };
        if rc != 0 {
            warn_not_lowered("setpriority");
        }
        if priority == BuildPriority::Idle {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` outlives the call; pid 0 is the calling thread. Any thread
            // may move itself to SCHED_IDLE without privileges (sched(7)).
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
                warn_not_lowered("sched_setscheduler(SCHED_IDLE)");
            }
        }
    }
    current()
}

#[cfg(target_os = "linux")]
fn warn_not_lowered(call: &str) {
    tracing::warn!(
        call,
        error = %io::Error::last_os_error(),
        "could not lower the snapshot builder's priority"
    );
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_priority: BuildPriority) -> Option<RanAt> {
    None
}

/// The calling thread's nice value and policy (on Linux both are per thread).
#[cfg(target_os = "linux")]
fn current() -> Option<RanAt> {
    // SAFETY: getpriority and sched_getscheduler take no pointers; -1 is a valid nice
    // value, so errno is cleared first and read after to tell it from a failure.
    unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::gettid();
        let nice = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        if *libc::__errno_location() != 0 {
            return None;
        }
        let policy = libc::sched_getscheduler(0);
        (policy >= 0).then_some(RanAt {
            nice,
            sched_idle: policy == libc::SCHED_IDLE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_work_runs_at_its_priority_on_its_own_thread_and_the_caller_keeps_its_own() {
        let caller_thread = std::thread::current().id();
        let caller = current().expect("read the caller's priority");
        assert!(!caller.sched_idle, "the test itself runs under SCHED_IDLE");
        let nice = SNAPSHOT_BUILD_NICE.max(caller.nice);
        for (priority, want) in [
            (
                BuildPriority::Idle,
                RanAt {
                    nice,
                    sched_idle: true,
                },
            ),
            (
                BuildPriority::Low,
                RanAt {
                    nice,
                    sched_idle: false,
                },
            ),
            (BuildPriority::Normal, caller),
        ] {
            let (seen, ran_at) = run_at("test-bg", priority, move || {
                Ok((std::thread::current().id(), current()))
            })
            .await
            .expect("background work");
            assert_ne!(
                seen.0, caller_thread,
                "{priority:?}: ran on the caller's thread"
            );
            assert_eq!(seen.1, Some(want), "{priority:?}: the work's priority");
            assert_eq!(ran_at, Some(want), "{priority:?}: the priority reported");
            assert_eq!(current(), Some(caller), "{priority:?}: the caller changed");
        }
    }

    #[tokio::test]
    async fn an_error_or_a_panic_in_the_work_reaches_the_caller() {
        let err = run_at(
            "test-bg",
            BuildPriority::Idle,
            || -> Result<(), StoreError> { Err(StoreError::Snapshot("boom".into())) },
        )
        .await
        .expect_err("the error was lost");
        assert!(err.to_string().contains("boom"), "{err}");
        let err = run_at(
            "test-bg",
            BuildPriority::Idle,
            || -> Result<(), StoreError> { panic!("bang") },
        )
        .await
        .expect_err("the panic was lost");
        assert!(err.to_string().contains("without an answer"), "{err}");
    }
}
