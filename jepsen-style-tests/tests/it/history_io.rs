//! The JSON-lines form of a history.

use stockade_jepsen::history::*;

use crate::common::*;

#[test]
fn a_history_round_trips_through_json_lines() {
    let h = good().build();
    let text = h.to_jsonl_string().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // One meta line, one invoke per op, one completion per completed op.
    let completed = h.ops.iter().filter(|o| o.complete_ns.is_some()).count();
    assert_eq!(lines.len(), 1 + h.ops.len() + completed);
    assert!(lines[0].contains(r#""type":"meta""#), "{}", lines[0]);
    assert!(lines[1].contains(r#""type":"invoke""#), "{}", lines[1]);
    assert!(text.contains(r#""f":"reserve""#));
    assert!(text.contains(r#""type":"fail""#) && text.contains(r#""code":"sold_out""#));
    let back = History::from_jsonl_str(&text).unwrap();
    assert_eq!(back, h);
}

#[test]
fn an_invoke_without_completion_loads_as_info() {
    let mut b = builder();
    let r = b.reserve(1, SALE, "alice", 1, "r1");
    b.pending(r, 5);
    let h = b.build();
    let back = History::from_jsonl_str(&h.to_jsonl_string().unwrap()).unwrap();
    assert_eq!(back.ops[0].complete_ns, None);
    assert_eq!(
        back.ops[0].outcome,
        Outcome::Info {
            reason: NO_COMPLETION.into()
        }
    );
}

#[test]
fn a_hand_written_jepsen_style_log_loads() {
    let text = r#"{"type":"meta","seed":3,"wall_start_ms":1000,"sales":[{"sale_id":"s","quantity":1,"per_user_limit":1,"hold_ttl_ms":100,"payment_window_ms":0}]}
{"type":"invoke","op":1,"process":4,"time_ns":10,"call":{"f":"reserve","sale_id":"s","user_id":"u","qty":1,"request_id":"r"}}
{"type":"invoke","op":2,"process":5,"time_ns":11,"call":{"f":"read_sale","sale_id":"s"}}

{"type":"ok","op":1,"process":4,"time_ns":20,"value":{"kind":"held","hold_id":9,"qty":1,"expires_at_ms":1100}}
{"type":"info","op":2,"process":5,"time_ns":30,"reason":"connection reset"}
"#;
    let h = History::from_jsonl_str(text).unwrap();
    assert_eq!(h.meta.seed, 3);
    assert_eq!(h.ops.len(), 2);
    assert_eq!(h.ops[0].outcome.ok_value(), Some(&held(9, 1, 1100)));
    assert!(matches!(
        h.ops[1].call,
        Call::ReadSale {
            linearizable: true,
            ..
        }
    ));
    assert!(h.ops[1].outcome.is_info());
}

#[test]
fn malformed_logs_are_refused_with_the_line() {
    let meta = r#"{"type":"meta","wall_start_ms":0}"#;
    let orphan = format!(
        "{meta}\n{}",
        r#"{"type":"ok","op":1,"process":1,"time_ns":5,"value":{"kind":"released","hold_id":1}}"#
    );
    let err = History::from_jsonl_str(&orphan).unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("never invoked"),
        "{err}"
    );

    let garbage = format!("{meta}\nnot json");
    let err = History::from_jsonl_str(&garbage).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");

    let backwards = format!(
        "{meta}\n{}\n{}",
        r#"{"type":"invoke","op":1,"process":1,"time_ns":50,"call":{"f":"read_sale","sale_id":"s"}}"#,
        r#"{"type":"info","op":1,"process":1,"time_ns":40,"reason":"x"}"#
    );
    let err = History::from_jsonl_str(&backwards).unwrap_err().to_string();
    assert!(err.contains("before it was invoked"), "{err}");

    let no_meta = r#"{"type":"invoke","op":1,"process":1,"time_ns":50,"call":{"f":"read_sale","sale_id":"s"}}"#;
    assert!(History::from_jsonl_str(no_meta).is_err());
}
