//! Printing: aligned tables and key/value blocks for people, JSON for scripts.
//!
//! Pure string building; it never talks to a server, so every format is unit-tested.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// An aligned text table: a header row, then rows; columns are padded to the widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned.
pub fn kv(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{:<w$} {v}\n", format!("{k}:")));
    }
    out
}

/// Pretty JSON of any answer (falls back to the debug form, which cannot happen for the
/// plain data types printed here).
pub fn json<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// `-` for an absent value.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".to_string())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's part of every request id it makes: the time of its first id and its
/// pid, computed once. Two processes never share it (a pid is reused only after its
/// process ended, at a later time), and the counter tells this process's ids apart.
/// Computed per id before, it cost a `getpid` system call and a clock read per request:
/// 1.1% of the whole machine's samples during a `bench` over `ReserveStream`.
static REQUEST_ID_BASE: OnceLock<String> = OnceLock::new();

/// A fresh idempotency key: time, process and a counter, unique enough that two
/// invocations never share one (at most 64 bytes, the server's limit).
pub fn new_request_id(prefix: &str) -> String {
    let base = REQUEST_ID_BASE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{nanos:x}-{:x}", std::process::id())
    });
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = format!("{prefix}-{base}-{n:x}");
    // The server's limit (bytes); a long prefix is cut, never the process or counter of
    // a short one.
    if id.len() > stockade_raft_store::limits::REQUEST_ID_BYTES_MAX {
        let cut = (0..=stockade_raft_store::limits::REQUEST_ID_BYTES_MAX)
            .rev()
            .find(|&i| id.is_char_boundary(i))
            .unwrap_or(0);
        id.truncate(cut);
    }
    id
}

/// Milliseconds as seconds with three decimals (`1.234s`).
pub fn secs(ms: u64) -> String {
    format!("{}.{:03}s", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NODE", "ROLE"],
            &[
                vec!["1".into(), "leader".into()],
                vec!["22".into(), "follower".into()],
            ],
        );
        assert_eq!(t, "NODE  ROLE\n1     leader\n22    follower\n");
    }

    #[test]
    fn request_ids_are_unique_and_bounded() {
        let a = new_request_id("cli");
        let b = new_request_id("cli");
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("cli-"));
        // Same process part, different counters.
        let (pa, pb) = (a.rsplit_once('-').unwrap().0, b.rsplit_once('-').unwrap().0);
        assert_eq!(pa, pb);
        // A prefix past the limit is cut at 64 bytes, on a character boundary.
        assert_eq!(new_request_id(&"x".repeat(100)).len(), 64);
        let cut = new_request_id(&"é".repeat(40));
        assert_eq!(cut.len(), 64);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn kv_aligns_values() {
        assert_eq!(
            kv(&[("a", "1".into()), ("bbb", "2".into())]),
            "a:   1\nbbb: 2\n"
        );
    }
}
