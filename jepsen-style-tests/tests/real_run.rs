//! Short real runs against real `stockade` processes and containers: kill -9 of the
//! leader, the proxy, membership, namespace partitions, and the docker backend (kill and
//! partition against the containers of the compose file).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stockade_jepsen::runner::docker::DockerOpts;
use stockade_jepsen::runner::nemesis::FaultKind;
use stockade_jepsen::runner::run::{run, Backend, RunConfig};
use stockade_jepsen::runner::workload::WAITLIST_JOIN_PERMILLE_DEFAULT;
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
        backend: Backend::Local,
        waitlist: false,
        waitlist_join_permille: WAITLIST_JOIN_PERMILLE_DEFAULT,
        docker: DockerOpts::default(),
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

/// A kept output directory for one test (histories and reports stay for reading after a
/// failure): `$CARGO_TARGET_TMPDIR/<name>-<pid>`.
fn out_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("output dir");
    d
}

fn cfg(seed: u64, secs: u64, nemesis: Vec<FaultKind>, out: &Path) -> RunConfig {
    RunConfig {
        seed,
        duration: Duration::from_secs(secs),
        nemesis,
        clients: 6,
        nodes: 3,
        out: out.to_path_buf(),
        bin: stockade_bin(),
        faults_max: None,
        keep_data: false,
        backend: Backend::Local,
        waitlist: false,
        waitlist_join_permille: WAITLIST_JOIN_PERMILLE_DEFAULT,
        docker: DockerOpts::default(),
    }
}

/// Every checker ran and none found a violation (unknown is allowed only for
/// linearizability, whose search has step and time limits).
fn assert_no_violation(r: &stockade_jepsen::runner::run::RunResult) {
    let text = r.report.to_text();
    assert_ne!(r.report.verdict, Verdict::Invalid, "{text}");
    for c in &r.report.checks {
        if c.checker != "linearizability" {
            assert_eq!(
                c.verdict,
                Verdict::Valid,
                "{} is not valid\n{text}",
                c.checker
            );
        }
    }
    assert!(r.report.ops["reserve"].ok > 0, "{text}");
}

#[test]
fn delay_and_loss_through_the_proxy_take_effect_and_stay_valid() {
    let out = out_dir("proxy");
    let r =
        run(&cfg(7, 16, vec![FaultKind::Delay, FaultKind::Loss], &out)).expect("the run completes");
    let text = r.report.to_text();
    assert!(!r.faults.is_empty(), "{text}");
    assert!(
        r.faults.iter().all(|f| f.took_effect && f.heal_ok),
        "{:#?}",
        r.faults
    );
    assert_no_violation(&r);
}

#[test]
fn membership_add_and_remove_under_load_take_effect_and_stay_valid() {
    let out = out_dir("membership");
    let r = run(&cfg(
        11,
        20,
        vec![FaultKind::MemberAdd, FaultKind::MemberRemove],
        &out,
    ))
    .expect("the run completes");
    assert!(!r.faults.is_empty());
    assert!(
        r.faults.iter().all(|f| f.took_effect && f.heal_ok),
        "{:#?}",
        r.faults
    );
    assert_no_violation(&r);
}

/// Namespaces need root; outside CI a machine without them skips this test loudly (the
/// tiers never skip: a refused partition is a failed run there).
fn netns_usable() -> bool {
    match stockade_jepsen::runner::netns::check_available() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {e}");
            false
        }
        Err(e) => panic!("CI must be able to run partitions: {e}"),
    }
}

fn our_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("sjep-{}-", std::process::id())))
        .map(str::to_string)
        .collect()
}

#[test]
fn partitions_in_namespaces_take_effect_heal_and_leave_nothing_behind() {
    if !netns_usable() {
        return;
    }
    let out = out_dir("partition");
    let mut c = cfg(
        5,
        18,
        vec![FaultKind::PartitionLeader, FaultKind::PartitionHalves],
        &out,
    );
    c.backend = Backend::Netns;
    let r = run(&c).expect("the run completes");
    assert!(!r.faults.is_empty());
    assert!(
        r.faults.iter().all(|f| f.took_effect && f.heal_ok),
        "{:#?}",
        r.faults
    );
    assert_no_violation(&r);
    assert_eq!(our_namespaces(), Vec::<String>::new(), "namespaces left");
}

#[test]
fn partition_faults_are_refused_without_the_namespace_backend() {
    let out = tempfile::tempdir().expect("temp dir");
    let e = run(&cfg(1, 5, vec![FaultKind::PartitionHalves], out.path())).expect_err("refused");
    assert!(e.contains("--backend netns"), "{e}");
    let mut c = cfg(1, 5, vec![FaultKind::PartitionRing], out.path());
    c.backend = Backend::Netns;
    let e = run(&c).expect_err("refused");
    assert!(e.contains("5") || e.contains("root"), "{e}");
}

#[test]
fn stale_namespaces_of_a_dead_run_are_removed() {
    if !netns_usable() {
        return;
    }
    // A pid above the kernel's pid_max cannot be alive.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let name = format!("sjep-{}-0-n1", pid_max + 1);
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip netns add");
    assert!(st.success());
    let removed = stockade_jepsen::runner::netns::cleanup_stale();
    assert!(removed.contains(&name), "{removed:?}");
}

/// The docker backend needs root and a docker daemon; outside CI a machine without them
/// skips this test loudly (the tiers never skip: a refused docker run is a failed run).
fn docker_usable() -> bool {
    match stockade_jepsen::runner::docker::check_available() {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {e}");
            false
        }
        Err(e) => panic!("CI must be able to run the docker backend: {e}"),
    }
}

/// Containers, networks and volumes of this process's compose projects.
fn our_docker_objects() -> Vec<String> {
    let prefix = format!("stockade-jepsen-{}-", std::process::id());
    let mut left = Vec::new();
    for args in [
        vec!["ps", "-a", "--format", "{{.Names}}"],
        vec!["network", "ls", "--format", "{{.Name}}"],
        vec!["volume", "ls", "--format", "{{.Name}}"],
    ] {
        let out = Command::new("docker").args(&args).output().expect("docker");
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
                .map(str::to_string),
        );
    }
    left
}

#[test]
fn docker_kill_and_partition_take_effect_heal_and_leave_nothing_behind() {
    if !docker_usable() {
        return;
    }
    let out = out_dir("docker");
    let mut c = cfg(
        9,
        18,
        vec![FaultKind::KillLeader, FaultKind::PartitionHalves],
        &out,
    );
    c.backend = Backend::Docker;
    let started = Instant::now();
    let r = run(&c).expect("the run completes");
    let text = r.report.to_text();
    eprintln!("docker run took {:?}", started.elapsed());
    for kind in [FaultKind::KillLeader, FaultKind::PartitionHalves] {
        assert!(
            r.faults.iter().any(|f| f.kind == kind),
            "no {kind:?}: {:#?}",
            r.faults
        );
    }
    assert!(
        r.faults.iter().all(|f| f.took_effect && f.heal_ok),
        "{:#?}",
        r.faults
    );
    assert_eq!(r.report.verdict, Verdict::Valid, "{text}");
    assert_no_violation(&r);
    assert_eq!(
        our_docker_objects(),
        Vec::<String>::new(),
        "containers, networks or volumes left"
    );
    // The nodes' logs were saved before the project went.
    assert!(out.join("node1.log").is_file());
    assert!(out.join("docker-compose.override.yml").is_file());
}

#[test]
fn delay_and_loss_are_refused_by_the_docker_backend() {
    let out = tempfile::tempdir().expect("temp dir");
    let mut c = cfg(1, 5, vec![FaultKind::Delay], out.path());
    c.backend = Backend::Docker;
    let e = run(&c).expect_err("refused");
    assert!(e.contains("not supported by the docker backend"), "{e}");
    c.nemesis = vec![FaultKind::KillOne];
    c.nodes = 2;
    let e = run(&c).expect_err("refused");
    assert!(e.contains("3..=9"), "{e}");
}

#[test]
fn stale_docker_projects_of_a_dead_run_are_removed() {
    if !docker_usable() {
        return;
    }
    // A pid above the kernel's pid_max cannot be alive.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let project = format!("stockade-jepsen-{}-0", pid_max + 1);
    let label = format!("com.docker.compose.project={project}");
    for (kind, name) in [
        ("network", format!("{project}_stockade")),
        ("volume", format!("{project}_node1-data")),
    ] {
        let st = Command::new("docker")
            .args([kind, "create", "--label", &label, &name])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("docker create");
        assert!(st.success(), "docker {kind} create {name}");
    }
    let removed = stockade_jepsen::runner::docker::cleanup_stale();
    assert!(removed.contains(&project), "{removed:?}");
    let (c, n, v) = stockade_jepsen::runner::docker::project_leftovers(&project);
    assert!(
        c.is_empty() && n.is_empty() && v.is_empty(),
        "{c:?} {n:?} {v:?}"
    );
}
