//! Server processes (started, watched and stopped by PID), their CPU time, and the disk
//! probe.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a process gets to stop after SIGTERM before SIGKILL.
pub const STOP_WAIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a process to stop.
pub const STOP_POLL: Duration = Duration::from_millis(50);
/// How long the disk probe writes.
pub const PROBE_DURATION: Duration = Duration::from_secs(2);
/// Most writes of the disk probe.
pub const PROBE_WRITES_MAX: u64 = 1_000_000;
/// Bytes per probe write.
pub const PROBE_WRITE_BYTES: usize = 4_096;

/// A server process this harness started; stopped by its PID when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Starts `cmd` with its output in `log` (a file in the run's temp dir).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let out = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        eprintln!("bench-peers: started {name} (pid {})", child.id());
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} (pid {}) exited: {st}", self.name, self.pid());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`STOP_WAIT`]; by this process's PID only.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            let _ = self.child.kill();
            return;
        };
        // SAFETY: kill(2) on a PID we spawned and have not yet reaped (so not reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                eprintln!("bench-peers: stopped {} (pid {pid})", self.name);
                return;
            }
            std::thread::sleep(STOP_POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("bench-peers: killed {} (pid {pid})", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Clock ticks per second of /proc/PID/stat.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime, cutime + cstime) of a process, in ticks.
fn stat_of(pid: u32) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3.. of proc(5): state=0, ppid=1, utime=11, stime=12, cutime=13, cstime=14.
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    Some((u32::try_from(n(1)?).ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU seconds used so far by `pid`, its reaped children, and its live children (so a
/// PostgreSQL postmaster counts its backends).
pub fn cpu_seconds_tree(pid: u32) -> f64 {
    let Some((_, own, reaped)) = stat_of(pid) else {
        return 0.0;
    };
    let mut ticks = own + reaped;
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, t, _)) = stat_of(child) {
                if ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    ticks as f64 / clock_ticks()
}

/// The disk's rate of 4 KiB write + fdatasync, per second, in `dir`.
pub fn fdatasync_rate(dir: &Path) -> Result<f64> {
    let path: PathBuf = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0x5au8; PROBE_WRITE_BYTES];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < PROBE_DURATION && n < PROBE_WRITES_MAX {
        f.write_all(&buf)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// CPU seconds (user + system, every thread) this process has used so far: the load
/// generator's own, without its children (the servers it started).
pub fn cpu_seconds_self() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Fails if something already listens on 127.0.0.1:`port`.
pub fn port_free(port: u16) -> Result<()> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| format!("127.0.0.1:{port} is in use (pass another --port-base)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the calling thread on the CPU for `d`.
    fn spin(d: Duration) {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < d {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
    }

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let me = std::process::id();
        let a = cpu_seconds_tree(me);
        spin(Duration::from_millis(300));
        let b = cpu_seconds_tree(me);
        assert!(b > a, "{a} {b}");
        assert_eq!(cpu_seconds_tree(u32::MAX), 0.0);
    }

    #[test]
    fn the_generators_own_cpu_time_counts_work_on_other_threads_and_grows() {
        let a = cpu_seconds_self();
        std::thread::spawn(|| spin(Duration::from_millis(300)))
            .join()
            .unwrap();
        let b = cpu_seconds_self();
        assert!(
            b - a >= 0.2,
            "a spinning thread's 300 ms counted as {} s",
            b - a
        );
    }
}
