//! One short real run against real `stockade` processes: kill -9 of the leader once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stockade_jepsen::runner::nemesis::FaultKind;
use stockade_jepsen::runner::run::{run, RunConfig};
use stockade_jepsen::verdict::Verdict;

/// The `stockade` binary next to this test binary, built once if missing.
fn stockade_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/stockade
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("stockade");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "stockade-node", "--bin", "stockade"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo");
        assert!(status.success() && bin.exists(), "building stockade failed");
    }
    bin
}

#[test]
fn kill_leader_once_real_run_is_valid() {
    let out = tempfile::tempdir().expect("temp dir");
    let cfg = RunConfig {
        seed: 42,
        duration: Duration::from_secs(12),
        nemesis: vec![FaultKind::KillLeader],
        clients: 6,
        nodes: 3,
        out: out.path().to_path_buf(),
        bin: stockade_bin(),
        faults_max: Some(1),
        keep_data: false,
    };
    let started = Instant::now();
    let r = run(&cfg).expect("the run completes");
    let text = r.report.to_text();
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");

    assert_eq!(r.faults.len(), 1, "{text}");
    let f = &r.faults[0];
    assert_eq!(f.kind, FaultKind::KillLeader);
    assert!(f.took_effect && f.heal_ok, "{text}");
    assert!(f.heal_to_leader_ms.is_some(), "{text}");

    let ok: u64 = r.report.ops.values().map(|c| c.ok).sum();
    assert!(ok > 0, "{text}");
    assert!(r.report.ops["reserve"].ok > 0, "{text}");

    // Every checker decides: the API exposes what each needs (request ids, end times,
    // per-replica state hashes), so nothing may stay unknown.
    assert_eq!(r.report.verdict, Verdict::Valid, "{text}");
    for c in &r.report.checks {
        assert_eq!(
            c.verdict,
            Verdict::Valid,
            "{} is not valid\n{text}",
            c.checker
        );
    }
    for name in [
        "no_oversell",
        "no_lost_ack",
        "no_phantom",
        "idempotency",
        "conservation",
        "expiry",
        "linearizability",
    ] {
        assert!(r.report.check(name).is_some(), "{name} did not run\n{text}");
    }
    for f in [
        "history.jsonl",
        "report.json",
        "report.txt",
        "final_state.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} not written");
    }
}
