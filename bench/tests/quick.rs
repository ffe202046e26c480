//! The quick mode end to end against Stockade and the peers that are installed: nothing
//! oversold, every unit accounted for after the holds expired, figures present.
//!
//! Ignored by default (it starts servers and takes about a minute; the harness is not
//! part of the README test command). Run it with
//! `cargo nextest run -p stockade-bench --run-ignored only` after
//! `cargo build --release -p stockade-node`. It asserts no timing.

use std::path::PathBuf;
use std::process::Command;

fn node_bin_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("STOCKADE_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|t| PathBuf::from(t).join("release"))
        })?;
    dir.join("stockade").exists().then_some(dir)
}

#[test]
#[ignore = "starts servers; run with --run-ignored only"]
fn quick_mode_never_oversells_and_conserves_units() {
    let Some(bin_dir) = node_bin_dir() else {
        panic!("no release stockade (node) binary: set STOCKADE_BIN_DIR or CARGO_TARGET_DIR");
    };
    let out = std::env::temp_dir().join(format!("bench-peers-test-{}", std::process::id()));
    let mut only = vec!["stockade"];
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
    {
        only.push("redis");
    }
    let st = Command::new(env!("CARGO_BIN_EXE_bench-peers"))
        .arg("--quick")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .args(["--port-base", "27400", "--only", &only.join(",")])
        .status()
        .expect("bench-peers runs");
    assert!(st.success(), "{st}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json"))
            .expect("json");
    let runs = v["runs"].as_array().expect("runs");
    assert!(runs.len() >= 2, "{v}");
    for r in runs {
        assert_eq!(r["oversell"], 0, "{r}");
        assert_eq!(r["conserved"], true, "{r}");
        assert!(r["holds_granted"].as_u64().unwrap_or(0) > 0, "{r}");
        assert_eq!(r["final_held"], 0, "{r}");
        // What the bench saw ordered is what the system counts as ordered.
        assert_eq!(r["bench_ordered"], r["final_ordered"], "{r}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
