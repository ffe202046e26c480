//! Verdicts, counterexamples and the configuration every checker shares.
//!
//! This module owns the result vocabulary: a [`Verdict`] (valid, invalid, unknown), an
//! [`Anomaly`] (one concrete counterexample, naming the ops involved), and a
//! [`CheckResult`] (one checker's verdict, counts, anomalies and per-sale sub-verdicts).
//! It also owns [`CheckConfig`] (the clock-skew bound and the linearizability search
//! limits) and the mapping from the leader's wall-clock deadlines to run time.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A checker's conclusion. Ordered by severity: `Invalid` beats `Unknown` beats `Valid`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Unknown,
    Invalid,
}

impl Verdict {
    /// The more severe of two verdicts.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One concrete counterexample.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// A stable snake_case kind, e.g. `oversell`, `lost_order`, `phantom_hold`.
    pub kind: String,
    pub sale_id: Option<String>,
    /// History op ids involved (may be empty for final-state anomalies).
    pub ops: Vec<u64>,
    /// A readable sentence with the numbers.
    pub detail: String,
}

impl Anomaly {
    pub fn new(kind: &str, sale_id: Option<&str>, ops: Vec<u64>, detail: String) -> Self {
        Anomaly {
            kind: kind.into(),
            sale_id: sale_id.map(str::to_string),
            ops,
            detail,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(s) = &self.sale_id {
            write!(f, " [sale {s}]")?;
        }
        if !self.ops.is_empty() {
            let ids: Vec<String> = self.ops.iter().map(u64::to_string).collect();
            write!(f, " ops {}", ids.join(","))?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// A sub-verdict, e.g. linearizability of one sale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubVerdict {
    pub key: String,
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub counts: BTreeMap<String, u64>,
}

/// Anomalies kept per checker; the count of all of them is always reported.
pub const ANOMALIES_KEPT_MAX: usize = 50;

/// One checker's result.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub checker: String,
    pub verdict: Verdict,
    /// Why the verdict is `Unknown`, if it is.
    pub reason: Option<String>,
    pub counts: BTreeMap<String, u64>,
    pub anomalies: Vec<Anomaly>,
    /// Anomalies found in total (only [`ANOMALIES_KEPT_MAX`] are kept).
    pub anomaly_count: u64,
    pub sub: Vec<SubVerdict>,
}

impl CheckResult {
    pub fn new(checker: &str) -> Self {
        CheckResult {
            checker: checker.into(),
            verdict: Verdict::Valid,
            reason: None,
            counts: BTreeMap::new(),
            anomalies: Vec::new(),
            anomaly_count: 0,
            sub: Vec::new(),
        }
    }

    /// Records a counterexample and makes the verdict `Invalid`.
    pub fn anomaly(&mut self, a: Anomaly) {
        self.verdict = Verdict::Invalid;
        self.anomaly_count += 1;
        *self.counts.entry(a.kind.clone()).or_insert(0) += 1;
        if self.anomalies.len() < ANOMALIES_KEPT_MAX {
            self.anomalies.push(a);
        }
    }

    /// Makes the verdict at least `Unknown`, keeping the first reason.
    pub fn unknown(&mut self, reason: impl Into<String>) {
        self.verdict = self.verdict.and(Verdict::Unknown);
        if self.reason.is_none() {
            self.reason = Some(reason.into());
        }
    }

    pub fn count(&mut self, key: &str, n: u64) {
        *self.counts.entry(key.into()).or_insert(0) += n;
    }

    pub fn has_anomaly(&self, kind: &str) -> bool {
        self.anomalies.iter().any(|a| a.kind == kind)
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<22} {}", self.checker, self.verdict)?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !counts.is_empty() {
            write!(f, "  [{}]", counts.join(" "))?;
        }
        for s in &self.sub {
            write!(f, "\n    {:<18} {}", s.key, s.verdict)?;
            if let Some(r) = &s.reason {
                write!(f, " ({r})")?;
            }
            let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !counts.is_empty() {
                write!(f, "  [{}]", counts.join(" "))?;
            }
        }
        for a in &self.anomalies {
            write!(f, "\n    - {a}")?;
        }
        if self.anomaly_count > self.anomalies.len() as u64 {
            write!(
                f,
                "\n    … and {} more",
                self.anomaly_count - self.anomalies.len() as u64
            )?;
        }
        Ok(())
    }
}

/// Default clock-skew bound between any node's wall clock and the client's.
pub const DEFAULT_SKEW_MS: u64 = 500;
/// Default step limit of one sale's linearizability search (model steps tried).
pub const DEFAULT_LIN_STEP_LIMIT: u64 = 5_000_000;
/// Default time limit of one sale's linearizability search.
pub const DEFAULT_LIN_TIME_LIMIT: Duration = Duration::from_secs(20);

/// Limits on one sale's linearizability search; exceeding either yields `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchLimits {
    pub max_steps: u64,
    pub max_time: Duration,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            max_steps: DEFAULT_LIN_STEP_LIMIT,
            max_time: DEFAULT_LIN_TIME_LIMIT,
        }
    }
}

/// Settings shared by the checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// The largest difference between any node's wall clock and the client's, in ms.
    /// Deadlines in answers are the leader's clock; a hold is surely live until
    /// `expires_at − skew` and surely expired (for checkout/release) after
    /// `expires_at + skew`, in client time.
    pub skew_ms: u64,
    pub lin: SearchLimits,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            skew_ms: DEFAULT_SKEW_MS,
            lin: SearchLimits::default(),
        }
    }
}

/// Maps leader wall-clock ms to run nanoseconds (signed: a deadline may precede the run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub wall_start_ms: u64,
    pub skew_ns: i128,
}

impl Clock {
    pub fn new(wall_start_ms: u64, skew_ms: u64) -> Self {
        Clock {
            wall_start_ms,
            skew_ns: i128::from(skew_ms) * 1_000_000,
        }
    }

    /// A wall-clock deadline in run ns.
    pub fn run_ns(&self, wall_ms: u64) -> i128 {
        (i128::from(wall_ms) - i128::from(self.wall_start_ms)) * 1_000_000
    }

    /// The earliest run time at which a deadline may have passed on the server.
    pub fn earliest(&self, wall_ms: u64) -> i128 {
        self.run_ns(wall_ms) - self.skew_ns
    }

    /// The run time after which a deadline has surely passed on the server.
    pub fn latest(&self, wall_ms: u64) -> i128 {
        self.run_ns(wall_ms) + self.skew_ns
    }
}

/// Formats run ns as milliseconds with three decimals.
pub fn fmt_ns(ns: i128) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:03}ms", a / 1_000_000, (a / 1_000) % 1_000)
}
