//! `stockade-jepsen`: runs the Jepsen-style suite against real `stockade` processes.
//!
//! This binary owns the command line only: it builds a [`RunConfig`], runs it (or the PR
//! tier), prints the report and exits 0 valid / 1 invalid / 2 unknown (3 on a setup
//! error). Everything else is in `stockade_jepsen::runner`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use stockade_jepsen::report::{exit_code, EXIT_INVALID, EXIT_UNKNOWN};
use stockade_jepsen::runner::docker::{default_compose_file, DockerOpts};
use stockade_jepsen::runner::nemesis::FaultKind;
use stockade_jepsen::runner::run::{
    default_bin, long_plans, pr_plans, run, run_tier, Backend, RunConfig, INTERRUPTED, LONG_SEEDS,
};
use stockade_jepsen::runner::workload::WAITLIST_JOIN_PERMILLE_DEFAULT;
use stockade_jepsen::verdict::Verdict;

/// Exit code of a run that could not be set up.
const EXIT_SETUP: u8 = 3;
/// Exit code after SIGINT / SIGTERM (everything was cleaned up).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(Parser)]
#[command(
    name = "stockade-jepsen",
    about = "Jepsen-style fault injection for Stockade"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run (or, with --tier pr, several short runs covering each fault kind).
    Run {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        /// Comma-separated: kill, kill-leader, kill-one, kill-minority, pause, skew,
        /// partition (leader isolation, majority/minority; needs --backend netns),
        /// partition5 (also bridge, ring; 5 nodes), proxy (delay, loss), delay, loss,
        /// membership (member-add, member-remove); or none.
        #[arg(long, default_value = "kill,pause,skew")]
        nemesis: String,
        #[arg(long, default_value_t = 6)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Output directory (default: target/jepsen/seed-S).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        stockade_bin: Option<PathBuf>,
        /// Inject at most this many faults.
        #[arg(long)]
        faults_max: Option<usize>,
        /// Keep the nodes' data directories.
        #[arg(long)]
        keep_data: bool,
        /// `local` (processes on loopback), `netns` (each node in its own network
        /// namespace: real partitions with nftables; root) or `docker` (the containers of
        /// the top-level docker-compose.yml as a compose project of the run's own:
        /// kill, pause, skew, partitions, membership; root and a docker daemon; no
        /// delay/loss).
        #[arg(long, default_value = "local")]
        backend: String,
        /// Docker backend: the image the containers run. Built from --stockade-bin with
        /// scripts/build-image first (a no-op when unchanged) unless --no-build-image.
        #[arg(long, default_value = stockade_jepsen::runner::docker::DEFAULT_IMAGE)]
        image: String,
        /// Docker backend: use --image as it is (it must exist; nothing is pulled).
        #[arg(long)]
        no_build_image: bool,
        /// Docker backend: the compose file (default: the workspace's docker-compose.yml).
        #[arg(long)]
        compose_file: Option<PathBuf>,
        /// Heavy waitlist traffic on one sale (js-w): its clients keep reserving it when
        /// sold out and join its waitlist at 500 per mille. Every run has joins anyway
        /// (see --waitlist-join-permille).
        #[arg(long)]
        waitlist: bool,
        /// Per mille of sold_out / insufficient_stock answers followed by a waitlist join
        /// of that user, on every sale (0: none).
        #[arg(long, default_value_t = WAITLIST_JOIN_PERMILLE_DEFAULT)]
        waitlist_join_permille: u64,
        /// `pr`: 8 × 45 s runs, one per fault family (kill, pause, skew, partition,
        /// proxy, membership), one mixed, and docker-mixed (kill, pause, skew, partition
        /// against containers). `long`: every family alone and mixed, 60 s runs, 3 seeds,
        /// 5 nodes for bridge and ring. Overrides --nemesis, --nodes, --backend and
        /// --duration-s.
        #[arg(long)]
        tier: Option<String>,
        /// Seeds per plan of the long tier.
        #[arg(long, default_value_t = LONG_SEEDS)]
        seeds: u64,
    },
}

fn parse_nemesis(s: &str) -> Result<Vec<FaultKind>, String> {
    let mut out = Vec::new();
    for w in s.split(',').filter(|w| !w.trim().is_empty()) {
        if w.trim() == "none" {
            continue;
        }
        let ks = FaultKind::parse_group(w).ok_or_else(|| format!("unknown nemesis {w:?}"))?;
        for k in ks {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let Cli { cmd } = Cli::parse();
    let Cmd::Run {
        seed,
        duration_s,
        nemesis,
        clients,
        nodes,
        out,
        stockade_bin,
        faults_max,
        keep_data,
        backend,
        image,
        no_build_image,
        compose_file,
        waitlist,
        waitlist_join_permille,
        tier,
        seeds,
    } = cmd;
    let setup = |e: String| {
        eprintln!("stockade-jepsen: {e}");
        ExitCode::from(EXIT_SETUP)
    };
    let Some(backend) = Backend::parse(&backend) else {
        return setup(format!(
            "unknown backend {backend:?} (known: local, netns, docker)"
        ));
    };
    let nemesis = match parse_nemesis(&nemesis) {
        Ok(n) => n,
        Err(e) => return setup(e),
    };
    let bin = match stockade_bin.map(Ok).unwrap_or_else(default_bin) {
        Ok(b) => b,
        Err(e) => return setup(e),
    };
    let out = out.unwrap_or_else(|| {
        let base = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().and_then(|d| d.parent()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("target"));
        base.join("jepsen").join(format!("seed-{seed}"))
    });
    let cfg = RunConfig {
        seed,
        duration: Duration::from_secs(duration_s),
        nemesis,
        clients,
        nodes,
        out,
        bin,
        faults_max,
        keep_data,
        backend,
        waitlist,
        waitlist_join_permille,
        docker: DockerOpts {
            image,
            compose_file: compose_file.unwrap_or_else(default_compose_file),
            build_image: !no_build_image,
        },
    };
    let started = std::time::Instant::now();
    let results = match tier.as_deref() {
        None => vec![(format!("seed {seed}"), run(&cfg))],
        Some("pr") => run_tier(&cfg, &pr_plans()),
        Some("long") => run_tier(&cfg, &long_plans(seeds)),
        Some(t) => return setup(format!("unknown tier {t:?} (known: pr, long)")),
    };
    let mut overall = Verdict::Valid;
    let mut setup_failed = false;
    let mut summary = Vec::new();
    for (name, r) in results {
        match r {
            Ok(r) => {
                println!("{}", r.report.to_text());
                println!("saved to {}\n", r.out.display());
                overall = overall.and(r.report.verdict);
                let took = r.faults.iter().filter(|f| f.took_effect).count();
                let healed = r.faults.iter().filter(|f| f.heal_ok).count();
                summary.push(format!(
                    "{name}: {:?}; faults {} injected, {took} took effect, {healed} healed",
                    r.report.verdict,
                    r.faults.len()
                ));
            }
            Err(e) => {
                eprintln!("stockade-jepsen: run {name} failed: {e}");
                summary.push(format!("{name}: FAILED TO RUN: {e}"));
                setup_failed = true;
            }
        }
    }
    if tier.is_some() {
        println!(
            "== tier summary ({:.0} s) ==",
            started.elapsed().as_secs_f64()
        );
        for l in &summary {
            println!("{l}");
        }
    }
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    let code = exit_code(overall);
    if code == EXIT_INVALID || code == EXIT_UNKNOWN || !setup_failed {
        return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_SETUP));
    }
    ExitCode::from(EXIT_SETUP)
}
