//! Results: one run's figures, the median of several runs with min–max, and the table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What one run of one system measured.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunFigures {
    pub system: String,
    /// "closed" or "open@RATE/s".
    pub mode: String,
    pub clients: usize,
    pub units: u64,
    /// Which of the interleaved rounds (0-based).
    pub round: usize,
    pub elapsed_s: f64,
    pub attempts: u64,
    pub holds_granted: u64,
    /// Successful reservations per second until the first sold-out (or the whole run).
    pub reservations_per_s: f64,
    pub attempts_per_s: f64,
    /// Sold-out refusals per second after the first one (the hammer phase).
    pub rejections_per_s_after_sell_out: Option<f64>,
    pub reserve_p50_ms: f64,
    pub reserve_p99_ms: f64,
    pub reserve_p999_ms: f64,
    pub time_to_sell_out_s: Option<f64>,
    /// Units in use (held + ordered) above the quantity, from the system's own counters.
    pub oversell: i64,
    /// available + held + ordered == quantity and nothing held, after every TTL passed.
    pub conserved: bool,
    /// The system's counters after expiry: available, held, ordered (awaiting + paid).
    pub final_available: i64,
    pub final_held: i64,
    pub final_ordered: i64,
    /// What the bench saw: orders it made, holds it released or left to expire.
    pub bench_ordered: u64,
    pub bench_released: u64,
    pub bench_left_to_expire: u64,
    pub unknown_outcomes: u64,
    pub rejections: BTreeMap<String, u64>,
    pub transient_errors: BTreeMap<String, u64>,
    /// CPU seconds of each server process during the run.
    pub cpu_s: Vec<f64>,
    /// CPU seconds of the load generator (this process: the crowd's workers, the
    /// adapters' clients, the sweeper) while the crowd ran. The same generator drives
    /// every system, so a figure that moves from run to run with the server unchanged
    /// points at the generator, not the server.
    #[serde(default)]
    pub generator_cpu_s: f64,
    /// Disk syncs per successful reservation (every write of the run counted), if the
    /// system reports a real counter.
    pub fsyncs_per_reservation: Option<f64>,
    pub fsyncs: Option<u64>,
    /// Seconds the harness waited after the run for the system's writes to reach the
    /// disk (its own flush, e.g. PostgreSQL's `CHECKPOINT`, then `sync(2)`), so they do
    /// not land in the next system's run. Not part of any figure above.
    #[serde(default)]
    pub settle_s: f64,
}

/// Median, min and max of a set of figures.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The median (mean of the two middle values for an even count), min and max; `None`
/// for no values.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// One row of the table: the runs of one system at one concurrency, size and mode.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Row {
    pub system: String,
    pub mode: String,
    pub clients: usize,
    pub units: u64,
    pub runs: usize,
    pub reservations_per_s: Option<Spread>,
    pub attempts_per_s: Option<Spread>,
    pub rejections_per_s_after_sell_out: Option<Spread>,
    pub reserve_p50_ms: Option<Spread>,
    pub reserve_p99_ms: Option<Spread>,
    pub reserve_p999_ms: Option<Spread>,
    /// Over the runs that sold out; `sold_out_runs` says how many did.
    pub time_to_sell_out_s: Option<Spread>,
    pub sold_out_runs: usize,
    /// The largest oversell of any run (must be 0).
    pub oversell_max: i64,
    /// Runs that conserved / runs.
    pub conserved_runs: usize,
    /// CPU seconds of all server processes together.
    pub cpu_s: Option<Spread>,
    /// The load generator's CPU per attempt, microseconds.
    #[serde(default)]
    pub generator_cpu_us_per_attempt: Option<Spread>,
    pub fsyncs_per_reservation: Option<Spread>,
}

/// Groups runs by (system, mode, clients, units), in first-seen order.
pub fn rows(runs: &[RunFigures]) -> Vec<Row> {
    let mut order: Vec<(String, String, usize, u64)> = Vec::new();
    for r in runs {
        let k = (r.system.clone(), r.mode.clone(), r.clients, r.units);
        if !order.contains(&k) {
            order.push(k);
        }
    }
    order
        .into_iter()
        .map(|(system, mode, clients, units)| {
            let g: Vec<&RunFigures> = runs
                .iter()
                .filter(|r| {
                    r.system == system && r.mode == mode && r.clients == clients && r.units == units
                })
                .collect();
            let f = |x: &dyn Fn(&RunFigures) -> Option<f64>| {
                spread(&g.iter().filter_map(|r| x(r)).collect::<Vec<_>>())
            };
            Row {
                runs: g.len(),
                reservations_per_s: f(&|r| Some(r.reservations_per_s)),
                attempts_per_s: f(&|r| Some(r.attempts_per_s)),
                rejections_per_s_after_sell_out: f(&|r| r.rejections_per_s_after_sell_out),
                reserve_p50_ms: f(&|r| Some(r.reserve_p50_ms)),
                reserve_p99_ms: f(&|r| Some(r.reserve_p99_ms)),
                reserve_p999_ms: f(&|r| Some(r.reserve_p999_ms)),
                time_to_sell_out_s: f(&|r| r.time_to_sell_out_s),
                sold_out_runs: g.iter().filter(|r| r.time_to_sell_out_s.is_some()).count(),
                oversell_max: g.iter().map(|r| r.oversell).max().unwrap_or(0),
                conserved_runs: g.iter().filter(|r| r.conserved).count(),
                cpu_s: f(&|r| Some(r.cpu_s.iter().sum())),
                generator_cpu_us_per_attempt: f(&|r| {
                    (r.attempts > 0).then(|| r.generator_cpu_s * 1e6 / r.attempts as f64)
                }),
                fsyncs_per_reservation: f(&|r| r.fsyncs_per_reservation),
                system,
                mode,
                clients,
                units,
            }
        })
        .collect()
}

/// A figure with few significant digits.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{:.0}", x)
    } else if a >= 10.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    }
}

/// "median (min–max)", or the median alone for one run.
pub fn cell(s: Option<Spread>) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.min == s.max => num(s.median),
        Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
    }
}

/// The table, Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| system | mode | clients | N | runs | reservations/s | attempts/s | sold-out refusals/s | \
         p50 ms | p99 ms | p99.9 ms | sell-out s | oversell | conserved | server CPU s | \
         generator CPU µs/attempt | fsyncs/reservation |\n",
    );
    out.push_str(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for r in rows {
        let sell_out = if r.sold_out_runs == 0 {
            "not sold out".to_string()
        } else if r.sold_out_runs < r.runs {
            format!(
                "{} ({}/{} runs)",
                cell(r.time_to_sell_out_s),
                r.sold_out_runs,
                r.runs
            )
        } else {
            cell(r.time_to_sell_out_s)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} |",
            r.system,
            r.mode,
            r.clients,
            r.units,
            r.runs,
            cell(r.reservations_per_s),
            cell(r.attempts_per_s),
            cell(r.rejections_per_s_after_sell_out),
            cell(r.reserve_p50_ms),
            cell(r.reserve_p99_ms),
            cell(r.reserve_p999_ms),
            sell_out,
            r.oversell_max,
            r.conserved_runs,
            r.runs,
            cell(r.cpu_s),
            cell(r.generator_cpu_us_per_attempt),
            r.fsyncs_per_reservation
                .map(|s| cell(Some(s)))
                .unwrap_or_else(|| "n/a".into()),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_even_and_empty() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = spread(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(spread(&[]).is_none());
        assert!(spread(&[f64::NAN]).is_none());
    }

    pub(crate) fn run(system: &str, clients: usize, round: usize, rps: f64) -> RunFigures {
        RunFigures {
            system: system.into(),
            mode: "closed".into(),
            clients,
            units: 1_000,
            round,
            elapsed_s: 1.0,
            attempts: 10,
            holds_granted: 5,
            reservations_per_s: rps,
            attempts_per_s: 2.0 * rps,
            rejections_per_s_after_sell_out: None,
            reserve_p50_ms: 1.0,
            reserve_p99_ms: 2.0,
            reserve_p999_ms: 3.0,
            time_to_sell_out_s: if round == 0 { Some(1.5) } else { None },
            oversell: 0,
            conserved: round != 2,
            final_available: 0,
            final_held: 0,
            final_ordered: 0,
            bench_ordered: 0,
            bench_released: 0,
            bench_left_to_expire: 0,
            unknown_outcomes: 0,
            rejections: BTreeMap::new(),
            transient_errors: BTreeMap::new(),
            cpu_s: vec![0.5, 0.25],
            generator_cpu_s: 0.001 * (round as f64 + 1.0),
            fsyncs_per_reservation: None,
            fsyncs: None,
            settle_s: 0.0,
        }
    }

    #[test]
    fn rows_group_interleaved_runs_and_take_medians() {
        let runs = vec![
            run("a", 1, 0, 10.0),
            run("b", 1, 0, 1.0),
            run("a", 1, 1, 30.0),
            run("b", 1, 1, 2.0),
            run("a", 1, 2, 20.0),
            run("a", 50, 0, 99.0),
        ];
        let rs = rows(&runs);
        assert_eq!(rs.len(), 3);
        let a = &rs[0];
        assert_eq!((a.system.as_str(), a.clients, a.runs), ("a", 1, 3));
        assert_eq!(
            a.reservations_per_s,
            Some(Spread {
                median: 20.0,
                min: 10.0,
                max: 30.0
            })
        );
        assert_eq!(a.sold_out_runs, 1);
        assert_eq!(a.conserved_runs, 2);
        assert_eq!(a.cpu_s.unwrap().median, 0.75);
        // 1, 2 and 3 ms of generator CPU over 10 attempts each.
        let g = a.generator_cpu_us_per_attempt.unwrap();
        assert_eq!((g.median, g.min, g.max), (200.0, 100.0, 300.0));
        assert_eq!(rs[1].system, "b");
        assert_eq!(rs[2].clients, 50);
    }

    #[test]
    fn table_shows_median_min_max_and_flags() {
        let mut r = run("a", 1, 0, 10.0);
        r.oversell = 3;
        let mut r2 = run("a", 1, 1, 30.0);
        r2.fsyncs_per_reservation = Some(0.5);
        let t = table(&rows(&[r, run("a", 1, 2, 20.0), r2]));
        let line = t.lines().nth(2).unwrap();
        assert!(line.contains("| 20.0 (10.0–30.0) |"), "{line}");
        assert!(line.contains("| 3 |"), "{line}");
        assert!(line.contains("(1/3 runs)"), "{line}");
        assert!(line.contains("| 2/3 |"), "{line}");
        assert!(line.contains("| 0.75 | 200 (100–300) | 0.50 |"), "{line}");
        assert!(line.ends_with("| 0.50 |"), "{line}");
    }
}
