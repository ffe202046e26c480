//! The key schema of the state-machine column family.
//!
//! Every key is one tag byte, then its parts. Numbers are big-endian so that RocksDB's
//! byte order is numeric order; strings end with a 0x00 byte, which validation keeps out
//! of every id, so prefixes never collide and order is lexicographic. Scans over a tag
//! are therefore deterministic and ordered the same on every replica.

/// `meta/<name>`: clock, next id, last applied log id, last membership.
pub const META: u8 = 0x01;
/// `sale/<sale_id>` → `SaleRecord`.
pub const SALE: u8 = 0x10;
/// `hold/<id>` → `HoldRecord`.
pub const HOLD: u8 = 0x11;
/// `order/<id>` → `OrderRecord`.
pub const ORDER: u8 = 0x12;
/// `user_sale/<sale_id>/<user_id>` → `UserSaleRecord`.
pub const USER_SALE: u8 = 0x13;
/// `idem/<user_id>/<request_id>` → `IdemRecord`.
pub const IDEM: u8 = 0x14;
/// `deadline/<at_ms>/<kind>/<payload>` → empty. Ordered by time: `Tick` scans from the start.
pub const DEADLINE: u8 = 0x15;
/// `wait/<sale_id>/<seq>` → `WaitEntry`. Ordered by sequence: the head is the first key.
pub const WAIT: u8 = 0x16;
/// `wait_user/<sale_id>/<user_id>` → `WaitState`.
pub const WAIT_USER: u8 = 0x17;
/// `payref/<payment_ref>` → order id (u64, big-endian).
pub const PAYREF: u8 = 0x18;
/// `user_hold/<user_id>/<hold_id>` → empty: a user's holds, in id order.
pub const USER_HOLD: u8 = 0x19;
/// `user_order/<user_id>/<order_id>` → empty: a user's orders, in id order.
pub const USER_ORDER: u8 = 0x1a;

/// One past every key of the state machine (for whole-range deletes and scans).
pub const END: &[u8] = &[0xff];

pub const META_CLOCK: &[u8] = b"\x01clock";
pub const META_NEXT_ID: &[u8] = b"\x01next_id";
pub const META_LAST_APPLIED: &[u8] = b"\x01last_applied";
pub const META_MEMBERSHIP: &[u8] = b"\x01membership";

struct KeyBuf(Vec<u8>);

impl KeyBuf {
    fn new(tag: u8) -> Self {
        let mut v = Vec::with_capacity(48);
        v.push(tag);
        KeyBuf(v)
    }
    fn str(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn u8(mut self, n: u8) -> Self {
        self.0.push(n);
        self
    }
}

pub fn sale(id: &str) -> Vec<u8> {
    KeyBuf::new(SALE).str(id).0
}
pub fn hold(id: u64) -> Vec<u8> {
    KeyBuf::new(HOLD).u64(id).0
}
pub fn order(id: u64) -> Vec<u8> {
    KeyBuf::new(ORDER).u64(id).0
}
pub fn user_sale(sale_id: &str, user_id: &str) -> Vec<u8> {
    KeyBuf::new(USER_SALE).str(sale_id).str(user_id).0
}
pub fn idem(user_id: &str, request_id: &str) -> Vec<u8> {
    KeyBuf::new(IDEM).str(user_id).str(request_id).0
}
pub fn wait(sale_id: &str, seq: u64) -> Vec<u8> {
    KeyBuf::new(WAIT).str(sale_id).u64(seq).0
}
/// The sequence number of a waitlist entry key (its last eight bytes).
pub fn wait_seq(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    (key.first() == Some(&WAIT)).then(|| u64::from_be_bytes(tail))
}
/// All waitlist entries of one sale: `[lo, hi)`.
pub fn wait_range(sale_id: &str) -> (Vec<u8>, Vec<u8>) {
    let lo = KeyBuf::new(WAIT).str(sale_id).0;
    let hi = prefix_end(&lo);
    (lo, hi)
}
pub fn wait_user(sale_id: &str, user_id: &str) -> Vec<u8> {
    KeyBuf::new(WAIT_USER).str(sale_id).str(user_id).0
}
pub fn payref(payment_ref: &str) -> Vec<u8> {
    KeyBuf::new(PAYREF).str(payment_ref).0
}
pub fn user_hold(user_id: &str, hold_id: u64) -> Vec<u8> {
    KeyBuf::new(USER_HOLD).str(user_id).u64(hold_id).0
}
pub fn user_order(user_id: &str, order_id: u64) -> Vec<u8> {
    KeyBuf::new(USER_ORDER).str(user_id).u64(order_id).0
}
/// The keys of one user's holds (or orders): `[lo, hi)`.
pub fn user_index_range(tag: u8, user_id: &str) -> (Vec<u8>, Vec<u8>) {
    let lo = KeyBuf::new(tag).str(user_id).0;
    let hi = prefix_end(&lo);
    (lo, hi)
}
/// Every key with this tag: `[lo, hi)`.
pub fn tag_range(tag: u8) -> (Vec<u8>, Vec<u8>) {
    (vec![tag], vec![tag + 1])
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    END.to_vec()
}

/// What a deadline is for. The discriminant is persisted in keys: never renumber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// A hold expires.
    Hold(u64),
    /// An unpaid order times out.
    Order(u64),
    /// An idempotency record's retention ends.
    Idem { user_id: String, request_id: String },
    /// A sale closed (at its end, or early): its waitlist is dropped.
    SaleClose(String),
    /// A waitlist hand-off ran out of steps and continues.
    Handoff(String),
}

impl Deadline {
    fn kind(&self) -> u8 {
        match self {
            Deadline::Hold(_) => 1,
            Deadline::Order(_) => 2,
            Deadline::Idem { .. } => 3,
            Deadline::SaleClose(_) => 4,
            Deadline::Handoff(_) => 5,
        }
    }
}

pub fn deadline(at_ms: u64, what: &Deadline) -> Vec<u8> {
    let k = KeyBuf::new(DEADLINE).u64(at_ms).u8(what.kind());
    match what {
        Deadline::Hold(id) | Deadline::Order(id) => k.u64(*id).0,
        Deadline::Idem {
            user_id,
            request_id,
        } => k.str(user_id).str(request_id).0,
        Deadline::SaleClose(sale) | Deadline::Handoff(sale) => k.str(sale).0,
    }
}

/// Deadlines due at or before `clock_ms`, none of them before `floor_ms`: `[lo, hi)`.
pub fn deadlines_due(floor_ms: u64, clock_ms: u64) -> (Vec<u8>, Vec<u8>) {
    let lo = deadlines_from(floor_ms);
    let hi = match clock_ms.checked_add(1) {
        Some(next) => KeyBuf::new(DEADLINE).u64(next).0,
        None => vec![DEADLINE + 1],
    };
    (lo, hi)
}

/// The first possible deadline key at or after `at_ms`: where a scan for live deadlines
/// starts when none can be earlier (see `Machine::deadline_floor`).
pub fn deadlines_from(at_ms: u64) -> Vec<u8> {
    KeyBuf::new(DEADLINE).u64(at_ms).0
}

/// Parses a deadline key; `None` if it is not one (corruption, reported by the caller).
pub fn parse_deadline(key: &[u8]) -> Option<(u64, Deadline)> {
    let rest = key.strip_prefix(&[DEADLINE])?;
    let (at, rest) = split_u64(rest)?;
    let (&kind, rest) = rest.split_first()?;
    let what = match kind {
        1 => Deadline::Hold(whole_u64(rest)?),
        2 => Deadline::Order(whole_u64(rest)?),
        3 => {
            let (user_id, rest) = split_str(rest)?;
            let (request_id, rest) = split_str(rest)?;
            if !rest.is_empty() {
                return None;
            }
            Deadline::Idem {
                user_id,
                request_id,
            }
        }
        4 | 5 => {
            let (sale, rest) = split_str(rest)?;
            if !rest.is_empty() {
                return None;
            }
            if kind == 4 {
                Deadline::SaleClose(sale)
            } else {
                Deadline::Handoff(sale)
            }
        }
        _ => return None,
    };
    Some((at, what))
}

/// The sequence number at the end of a `wait/<sale>/<seq>` key.
pub fn parse_wait_seq(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// The id at the end of a `user_hold/…` or `user_order/…` key.
pub fn parse_trailing_id(key: &[u8]) -> Option<u64> {
    parse_wait_seq(key)
}

/// The sale id of a `sale/<id>` key.
pub fn parse_sale(key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(&[SALE])?;
    let (s, rest) = split_str(rest)?;
    rest.is_empty().then_some(s)
}

fn split_u64(b: &[u8]) -> Option<(u64, &[u8])> {
    if b.len() < 8 {
        return None;
    }
    let (n, rest) = b.split_at(8);
    Some((u64::from_be_bytes(n.try_into().ok()?), rest))
}

fn whole_u64(b: &[u8]) -> Option<u64> {
    let (n, rest) = split_u64(b)?;
    rest.is_empty().then_some(n)
}

fn split_str(b: &[u8]) -> Option<(String, &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(&b[..end]).ok()?.to_string();
    Some((s, &b[end + 1..]))
}

/// A key for error messages: printable bytes as is, the rest as `\xNN`.
pub fn display(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_keys_round_trip_and_sort_by_time() {
        let cases = [
            Deadline::Hold(7),
            Deadline::Order(u64::MAX),
            Deadline::Idem {
                user_id: "u-1".into(),
                request_id: "r:2".into(),
            },
            Deadline::SaleClose("spring".into()),
            Deadline::Handoff("spring".into()),
        ];
        for (i, d) in cases.iter().enumerate() {
            let k = deadline(1_000 + i as u64, d);
            assert_eq!(parse_deadline(&k), Some((1_000 + i as u64, d.clone())));
        }
        assert!(deadline(255, &Deadline::Hold(9)) < deadline(256, &Deadline::Hold(1)));
        let (lo, hi) = deadlines_due(0, 256);
        assert!(deadline(256, &Deadline::Hold(u64::MAX)) < hi);
        assert!(deadline(257, &Deadline::Hold(0)) >= hi);
        assert!(deadline(0, &Deadline::Hold(0)) >= lo);
        let (lo, _) = deadlines_due(255, 256);
        assert!(deadline(254, &Deadline::Order(u64::MAX)) < lo);
        assert!(deadline(255, &Deadline::Hold(0)) >= lo);
        assert_eq!(lo, deadlines_from(255));
        assert_eq!(parse_deadline(&[DEADLINE, 1, 2]), None);
    }

    #[test]
    fn string_parts_do_not_collide_across_prefixes() {
        // "ab" + "c" must not equal "a" + "bc".
        assert_ne!(user_sale("ab", "c"), user_sale("a", "bc"));
        let (lo, hi) = wait_range("a");
        assert!(wait("a", 0) >= lo && wait("a", u64::MAX) < hi);
        assert!(wait("ab", 0) >= hi || wait("ab", 0) < lo);
        assert_eq!(parse_wait_seq(&wait("x", 42)), Some(42));
        assert_eq!(parse_sale(&sale("spring-drop")), Some("spring-drop".into()));
    }

    #[test]
    fn prefix_end_is_above_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff]), END.to_vec());
    }
}
