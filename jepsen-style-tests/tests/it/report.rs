//! The report: text, JSON, exit codes.

use stockade_jepsen::report::{exit_code, Report, EXIT_INVALID, EXIT_UNKNOWN, EXIT_VALID};
use stockade_jepsen::verdict::Verdict;

use crate::common::*;

#[test]
fn a_valid_run_reports_every_checker_and_exits_zero() {
    let h = good().build();
    let r = Report::build(&h, Some(&good_final()), &config());
    assert_eq!(r.verdict, Verdict::Valid);
    assert_eq!(r.exit_code, EXIT_VALID);
    assert_eq!(r.seed, 7);
    let reserve = &r.ops["reserve"];
    assert_eq!(
        (reserve.attempted, reserve.ok, reserve.fail, reserve.info),
        (5, 3, 1, 1)
    );
    assert_eq!(r.latency["reserve"].count, 3);
    let text = r.to_text();
    for name in [
        "no_oversell",
        "no_lost_ack",
        "no_phantom",
        "idempotency",
        "conservation",
        "expiry",
        "linearizability",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
        assert!(r.check(name).is_some());
    }
    let back = Report::from_json(&r.to_json().unwrap()).unwrap();
    assert_eq!(back, r);
}

#[test]
fn an_invalid_run_prints_its_counterexample_and_exits_one() {
    let h = good().build();
    let mut fs = good_final();
    fs.orders.clear();
    let r = Report::build(&h, Some(&fs), &config());
    assert_eq!(r.exit_code, EXIT_INVALID);
    let text = r.to_text();
    assert!(text.contains("lost_order"), "{text}");
    assert!(r.to_json().unwrap().contains("lost_order"));
}

#[test]
fn a_run_without_a_final_state_is_unknown_and_exits_two() {
    let r = Report::build(&good().build(), None, &config());
    assert_eq!(r.verdict, Verdict::Unknown);
    assert_eq!(r.exit_code, EXIT_UNKNOWN);
}

#[test]
fn exit_codes() {
    assert_eq!(exit_code(Verdict::Valid), 0);
    assert_eq!(exit_code(Verdict::Invalid), 1);
    assert_eq!(exit_code(Verdict::Unknown), 2);
    assert_eq!(Verdict::Unknown.and(Verdict::Invalid), Verdict::Invalid);
    assert_eq!(Verdict::Valid.and(Verdict::Unknown), Verdict::Unknown);
}
