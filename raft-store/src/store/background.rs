//! Background work on its own thread at a lower CPU priority: the snapshot build.
//!
//! Apply, the log's sync thread and every other blocking call of the node share tokio's
//! blocking pool; a snapshot build used to run there too, at the same priority as the
//! request path. It gets a thread of its own instead, because a priority is a property
//! of the thread: a pool thread set to nice 19 would later run apply at nice 19, and an
//! unprivileged process cannot lower a nice value again (`RLIMIT_NICE`). The thread ends
//! with the build, so nothing else ever runs at its priority. Builds are rare (one per
//! many thousand log entries), so the thread's start costs nothing that matters.

use std::io;

use crate::error::StoreError;

/// Runs `f` on a new thread named `name` whose nice value is raised to `nice` (never
/// lowered: a process already running nicer keeps its own), and answers with `f`'s result
/// and the nice value the thread ran at (`None` where the platform has none or it could
/// not be read).
pub(crate) async fn at_nice<T: Send + 'static>(
    name: &str,
    nice: i32,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<(T, Option<i32>), io::Error> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let ran_at = lower_priority(nice);
            // The receiver is gone only if the caller was dropped: nobody to tell.
            let _ = tx.send(f().map(|v| (v, ran_at)));
        })?;
    let answer = rx
        .await
        .map_err(|_| io::Error::other("background thread ended without an answer"))?;
    Ok(answer?)
}

/// Raises the calling thread's nice value to `nice` and returns the value now in effect.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) -> Option<i32> {
    let now = current_nice()?;
    if nice <= now {
        return Some(now);
    }
    // SAFETY: gettid and setpriority take no pointers; on Linux a PRIO_PROCESS priority
    // with a thread id applies to that thread alone (setpriority(2), "BUGS").
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        tracing::warn!(
            nice,
            error = %io::Error::last_os_error(),
            "could not lower the snapshot builder's priority; it runs at the node's"
        );
    }
    current_nice()
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) -> Option<i32> {
    None
}

/// The calling thread's nice value (on Linux a per-thread attribute).
#[cfg(target_os = "linux")]
fn current_nice() -> Option<i32> {
    // SAFETY: getpriority takes no pointers; -1 is a valid answer, so errno is cleared
    // first and read after to tell it from a failure.
    unsafe {
        *libc::__errno_location() = 0;
        let tid = libc::gettid();
        let v = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        (*libc::__errno_location() == 0).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_work_runs_niced_on_its_own_thread_and_the_caller_keeps_its_priority() {
        let caller_thread = std::thread::current().id();
        let caller_nice = current_nice().expect("read the caller's nice");
        let want = (caller_nice + 7).min(19);
        let (seen, ran_at) = at_nice("test-bg", want, move || {
            Ok((std::thread::current().id(), current_nice()))
        })
        .await
        .expect("background work");
        assert_ne!(seen.0, caller_thread, "ran on the caller's thread");
        assert_eq!(seen.1, Some(want), "the work's thread was not reniced");
        assert_eq!(ran_at, Some(want));
        assert_eq!(current_nice(), Some(caller_nice), "the caller was reniced");

        // Never raises a priority: asking for less than the thread has keeps its own.
        let (_, ran_at) = at_nice("test-bg", caller_nice - 1, || Ok(()))
            .await
            .expect("background work");
        assert_eq!(ran_at, Some(caller_nice));
    }

    #[tokio::test]
    async fn an_error_or_a_panic_in_the_work_reaches_the_caller() {
        let err = at_nice("test-bg", 19, || -> Result<(), StoreError> {
            Err(StoreError::Snapshot("boom".into()))
        })
        .await
        .expect_err("the error was lost");
        assert!(err.to_string().contains("boom"), "{err}");
        let err = at_nice("test-bg", 19, || -> Result<(), StoreError> {
            panic!("bang")
        })
        .await
        .expect_err("the panic was lost");
        assert!(err.to_string().contains("without an answer"), "{err}");
    }
}
