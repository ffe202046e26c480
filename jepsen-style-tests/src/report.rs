//! The run report: every verdict and count, as text and as JSON, and the exit code.
//!
//! This module owns the report's shape and rendering. It summarises the history (ops
//! attempted / ok / fail / info per type, latency p50 / p99 of completed ops), carries
//! each checker's [`CheckResult`], and derives the overall verdict and the process exit
//! code the runner uses: 0 valid, 1 invalid, 2 unknown. Fault schedules and heal timings
//! are the runner's and go in `extra` (free-form JSON) until the runner exists.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checkers;
use crate::final_state::FinalState;
use crate::history::{History, CALL_KINDS};
use crate::verdict::{CheckConfig, CheckResult, Verdict};

/// Exit code of a valid run.
pub const EXIT_VALID: i32 = 0;
/// Exit code of a run with at least one invalid verdict.
pub const EXIT_INVALID: i32 = 1;
/// Exit code of a run with no invalid verdict but at least one unknown.
pub const EXIT_UNKNOWN: i32 = 2;

/// The exit code for a verdict.
pub fn exit_code(v: Verdict) -> i32 {
    match v {
        Verdict::Valid => EXIT_VALID,
        Verdict::Invalid => EXIT_INVALID,
        Verdict::Unknown => EXIT_UNKNOWN,
    }
}

/// Per op type: how many were attempted and how they ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct OpCounts {
    pub attempted: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// Latency of completed ops, in microseconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub seed: u64,
    pub verdict: Verdict,
    pub exit_code: i32,
    pub ops: BTreeMap<String, OpCounts>,
    /// Latency of ok ops per type.
    pub latency: BTreeMap<String, Latency>,
    pub skew_ms: u64,
    pub checks: Vec<CheckResult>,
    /// Whatever the runner adds (faults and whether each took effect, heal timings…).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Report {
    /// Runs every checker and builds the report.
    pub fn build(
        history: &History,
        final_state: Option<&FinalState>,
        config: &CheckConfig,
    ) -> Self {
        let checks = checkers::check_all(history, final_state, config);
        Report::from_results(history, checks, config)
    }

    /// Builds the report from checker results already computed.
    pub fn from_results(history: &History, checks: Vec<CheckResult>, config: &CheckConfig) -> Self {
        let verdict = checks.iter().fold(Verdict::Valid, |v, c| v.and(c.verdict));
        let mut ops: BTreeMap<String, OpCounts> = CALL_KINDS
            .iter()
            .map(|k| (k.to_string(), OpCounts::default()))
            .collect();
        let mut lat: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for op in &history.ops {
            let c = ops.entry(op.call.kind().into()).or_default();
            c.attempted += 1;
            match &op.outcome {
                o if o.is_ok() => c.ok += 1,
                o if o.is_fail() => c.fail += 1,
                _ => c.info += 1,
            }
            if let (true, Some(done)) = (op.outcome.is_ok(), op.complete_ns) {
                lat.entry(op.call.kind().into())
                    .or_default()
                    .push(done.saturating_sub(op.invoke_ns) / 1_000);
            }
        }
        let latency = lat
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_unstable();
                (k, latency_of(&v))
            })
            .collect();
        Report {
            seed: history.meta.seed,
            verdict,
            exit_code: exit_code(verdict),
            ops,
            latency,
            skew_ms: config.skew_ms,
            checks,
            extra: BTreeMap::new(),
        }
    }

    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.checker == name)
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(s: &str) -> Result<Report, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// A readable text report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "stockade jepsen report — seed {} — verdict {} (exit {})",
            self.seed, self.verdict, self.exit_code
        );
        let _ = writeln!(s, "clock-skew bound: {} ms", self.skew_ms);
        let _ = writeln!(
            s,
            "\noperations        attempted       ok     fail     info   p50 ms   p99 ms"
        );
        for (k, c) in &self.ops {
            if c.attempted == 0 {
                continue;
            }
            let l = self.latency.get(k).cloned().unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:<14} {:>9} {:>8} {:>8} {:>8} {:>8.1} {:>8.1}",
                k,
                c.attempted,
                c.ok,
                c.fail,
                c.info,
                l.p50_us as f64 / 1000.0,
                l.p99_us as f64 / 1000.0
            );
        }
        // The checkers come last: a CI log often keeps only the tail of a failed test's
        // output, and what was violated must be in it.
        if !self.extra.is_empty() {
            let _ = writeln!(s, "\nextra");
            for (k, v) in &self.extra {
                let _ = writeln!(s, "  {k}: {v}");
            }
        }
        // Valid checkers first, then unknown, then invalid ones with their anomalies.
        let _ = writeln!(s, "\ncheckers");
        let mut checks: Vec<_> = self.checks.iter().collect();
        checks.sort_by_key(|c| match c.verdict {
            Verdict::Valid => 0,
            Verdict::Unknown => 1,
            Verdict::Invalid => 2,
        });
        for c in checks {
            let _ = writeln!(s, "  {c}");
        }
        let _ = writeln!(s, "verdict {} (seed {})", self.verdict, self.seed);
        s
    }
}

fn latency_of(sorted: &[u64]) -> Latency {
    let pick = |q: f64| -> u64 {
        if sorted.is_empty() {
            return 0;
        }
        let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(idx).copied().unwrap_or_default()
    };
    Latency {
        count: sorted.len() as u64,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: sorted.last().copied().unwrap_or_default(),
    }
}
