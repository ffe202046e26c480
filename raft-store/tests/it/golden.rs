//! Golden bytes of every persisted type. Persisted formats only grow: if one of these
//! fails, an on-disk or on-the-wire format changed, and old logs, snapshots or replicas
//! would be misread. Add a new variant or field at the end and a new golden row instead.

use std::collections::{BTreeMap, BTreeSet};

use openraft::entry::RaftEntry;
use openraft::vote::{RaftLeaderId, RaftVote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use stockade_raft_store::codec;
use stockade_raft_store::keys::{self, Deadline};
use stockade_raft_store::types::*;
use stockade_raft_store::{
    Entry, LogId, Membership, NodeAddr, SnapshotMeta, StoredMembership, Vote,
};

use crate::common::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Encodes, compares with the golden hex, decodes back and compares with the value.
fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    value: &T,
    golden: &str,
    failures: &mut Vec<String>,
) {
    let bytes = codec::encode("golden", value).unwrap();
    if hex(&bytes) != golden {
        failures.push(format!(
            "{name}: encoded {} but golden is {golden}",
            hex(&bytes)
        ));
        return;
    }
    let back: T = codec::decode(name.as_bytes(), &bytes).unwrap();
    if back != *value {
        failures.push(format!("{name}: decoded {back:?}, want {value:?}"));
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<stockade_raft_store::TypeConfig>(term, node, index)
}

fn membership() -> Membership {
    let nodes: BTreeMap<u64, NodeAddr> = [(
        1,
        NodeAddr {
            raft_addr: "10.0.0.1:50051".into(),
            api_addr: "10.0.0.1:8080".into(),
        },
    )]
    .into_iter()
    .collect();
    Membership::new(vec![BTreeSet::from([1u64])], nodes).unwrap()
}

#[test]
fn persisted_types_keep_their_bytes() {
    let mut f = Vec::new();
    let f = &mut f;
    let s = spec(10);
    check("SaleSpec", &s, GOLDEN_SPEC, f);
    check(
        "LogEntry(Reserve)",
        &LogEntry {
            at_ms: 1_700_000_000_123,
            cmd: reserve("u1", 2, "r-1").into(),
        },
        GOLDEN_ENTRY_RESERVE,
        f,
    );
    let commands: Vec<Command> = vec![
        Command::CreateSale(Box::new(s.clone())),
        Command::UpdateSale(Box::new(s.clone())),
        Command::EndSale {
            sale_id: SALE.into(),
        },
        reserve("u1", 1, "r1"),
        release("u1", 7, "r2"),
        checkout("u1", 7, "r3"),
        pay("u1", 8, 49_900, "psp-1", "r4"),
        fail("u1", 8, "r5"),
        cancel("u1", 8, "r6"),
        join("u1", 1, "r7"),
        leave("u1", "r8"),
        Command::Tick,
        Command::Batch(vec![Command::Tick]),
    ];
    check("Command::*", &commands, GOLDEN_COMMANDS, f);
    let rejects = vec![
        Reject::Invalid {
            field: "qty".into(),
            reason: "x".into(),
        },
        Reject::SaleNotFound,
        Reject::SaleExists,
        Reject::SaleNotStarted { starts_at_ms: 5 },
        Reject::SaleEnded,
        Reject::SaleAlreadyStarted,
        Reject::SoldOut,
        Reject::InsufficientStock { available: 3 },
        Reject::LimitExceeded { limit: 2, used: 1 },
        Reject::TooManyHolds { max: 16 },
        Reject::HoldNotFound,
        Reject::NotOwner,
        Reject::HoldExpired,
        Reject::HoldNotActive {
            state: HoldState::Released { at_ms: 9 },
        },
        Reject::OrderNotFound,
        Reject::OrderNotAwaitingPayment {
            status: OrderStatus::Confirmed,
        },
        Reject::PaymentWindowExpired,
        Reject::AmountMismatch {
            expected_minor: 10,
            currency: "EUR".into(),
        },
        Reject::PaymentRefConflict,
        Reject::OrderNotCancellable {
            status: OrderStatus::Paid {
                payment_ref: "p".into(),
                at_ms: 1,
            },
        },
        Reject::NotSoldOut { available: 1 },
        Reject::AlreadyWaitlisted { position: 2 },
        Reject::NotWaitlisted,
        Reject::WaitlistFull { max: 100_000 },
        Reject::RequestIdReused,
    ];
    check("Reject::*", &rejects, GOLDEN_REJECTS, f);
    let order_info = OrderInfo {
        order_id: 8,
        sale_id: SALE.into(),
        qty: 1,
        amount_minor: 49_900,
        currency: "EUR".into(),
        status: OrderStatus::AwaitingPayment,
        pay_by_ms: Some(20_000),
    };
    let responses = vec![
        Response::Applied,
        Response::SaleCreated {
            sale_id: SALE.into(),
        },
        Response::SaleUpdated {
            sale_id: SALE.into(),
        },
        Response::SaleEnded {
            sale_id: SALE.into(),
            ended_at_ms: 3,
        },
        Response::Held(HoldGrant {
            hold_id: 7,
            sale_id: SALE.into(),
            qty: 1,
            expires_at_ms: 6_000,
        }),
        Response::Released { hold_id: 7 },
        Response::CheckedOut(order_info.clone()),
        Response::Paid { order_id: 8 },
        Response::PaymentFailed { order_id: 8 },
        Response::Cancelled { order_id: 8 },
        Response::WaitlistJoined {
            sale_id: SALE.into(),
            position: 4,
        },
        Response::WaitlistLeft {
            sale_id: SALE.into(),
        },
        Response::Ticked(TickReport {
            holds_expired: 1,
            orders_expired: 2,
            records_purged: 3,
            waitlist_dropped: 4,
            waitlist_promoted: 5,
            more_due: true,
            next_deadline_ms: Some(6),
        }),
        Response::Batch(vec![Response::Applied]),
        Response::Rejected(Reject::SoldOut),
    ];
    check("Response::*", &responses, GOLDEN_RESPONSES, f);
    let sale = SaleRecord {
        spec: s.clone().into(),
        created_at_ms: 1,
        ended_early_at_ms: Some(2),
        counters: Counters {
            available: 4,
            held: 3,
            awaiting_payment: 2,
            sold: 1,
        },
        stats: SaleStats {
            holds_granted: 1,
            units_reserved: 2,
            holds_expired: 3,
            holds_released: 4,
            checkouts: 5,
            orders_paid: 6,
            orders_cancelled: 7,
            orders_timed_out: 8,
            unique_buyers: 9,
            waitlist_joined: 10,
            waitlist_promoted: 11,
            sold_out_at_ms: Some(12),
            fully_sold_at_ms: None,
        },
        waitlist_next_seq: 13,
        waitlist_len: 14,
    };
    check("SaleRecord", &sale, GOLDEN_SALE, f);
    let holds = vec![
        HoldRecord {
            id: 7,
            sale_id: SALE.into(),
            user_id: "u1".into(),
            qty: 2,
            created_at_ms: 1_000,
            expires_at_ms: 6_000,
            from_waitlist: true,
            state: HoldState::Active,
            request_id: "w-1".into(),
        },
        HoldRecord {
            id: 9,
            sale_id: SALE.into(),
            user_id: "u2".into(),
            qty: 1,
            created_at_ms: 1,
            expires_at_ms: 2,
            from_waitlist: false,
            state: HoldState::CheckedOut { order_id: 10 },
            request_id: "r-9".into(),
        },
    ];
    check("HoldRecord", &holds, GOLDEN_HOLDS, f);
    let states = vec![
        HoldState::Active,
        HoldState::Released { at_ms: 1 },
        HoldState::Expired { at_ms: 2 },
        HoldState::CheckedOut { order_id: 3 },
    ];
    check("HoldState::*", &states, GOLDEN_HOLD_STATES, f);
    let statuses = vec![
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid {
            payment_ref: "psp".into(),
            at_ms: 1,
        },
        OrderStatus::Confirmed,
        OrderStatus::Cancelled {
            reason: CancelReason::PaymentFailed,
            at_ms: 2,
        },
        OrderStatus::Cancelled {
            reason: CancelReason::PaymentTimeout,
            at_ms: 3,
        },
        OrderStatus::Cancelled {
            reason: CancelReason::ByUser,
            at_ms: 4,
        },
    ];
    check("OrderStatus::*", &statuses, GOLDEN_ORDER_STATUSES, f);
    let order = OrderRecord {
        id: 8,
        sale_id: SALE.into(),
        user_id: "u1".into(),
        hold_id: 7,
        qty: 1,
        amount_minor: 49_900,
        currency: "EUR".into(),
        created_at_ms: 1_000,
        pay_by_ms: None,
        status: OrderStatus::Confirmed,
        request_id: "r-3".into(),
    };
    check("OrderRecord", &order, GOLDEN_ORDER, f);
    let user = UserSaleRecord {
        held: 1,
        awaiting_payment: 2,
        bought: 3,
        live_holds: 1,
        counted_as_buyer: true,
    };
    check("UserSaleRecord", &user, GOLDEN_USER, f);
    let idem = IdemRecord {
        fingerprint: 0x0123_4567_89ab_cdef,
        recorded_at_ms: 5,
        response: Response::Paid { order_id: 8 },
    };
    check("IdemRecord", &idem, GOLDEN_IDEM, f);
    check(
        "WaitEntry",
        &WaitEntry {
            user_id: "u1".into(),
            qty: 2,
            joined_at_ms: 3,
            request_id: "w-2".into(),
        },
        GOLDEN_WAIT_ENTRY,
        f,
    );
    check(
        "WaitState::*",
        &vec![
            WaitState::Waiting { seq: 1 },
            WaitState::Promoted { hold_id: 2 },
        ],
        GOLDEN_WAIT_STATES,
        f,
    );

    // openraft types as this crate persists them (log and raft column families).
    let entry: Entry = Entry::new_normal(
        log_id(3, 1, 42),
        LogEntry {
            at_ms: 9,
            cmd: Command::Tick.into(),
        },
    );
    check("Entry(normal)", &entry, GOLDEN_RAFT_ENTRY, f);
    let m_entry: Entry = Entry::new_membership(log_id(3, 1, 43), membership());
    check(
        "Entry(membership)",
        &m_entry,
        GOLDEN_RAFT_MEMBERSHIP_ENTRY,
        f,
    );
    let vote = Vote::from_leader_id(RaftLeaderId::new(3u64, 1u64), true);
    check("Vote", &vote, GOLDEN_VOTE, f);
    check("LogId", &log_id(3, 1, 42), GOLDEN_LOG_ID, f);
    let stored = StoredMembership::new(Some(log_id(3, 1, 43)), membership());
    check("StoredMembership", &stored, GOLDEN_STORED_MEMBERSHIP, f);
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 44)),
        last_membership: stored,
    };
    check("SnapshotMeta", &meta, GOLDEN_SNAPSHOT_META, f);

    assert!(f.is_empty(), "golden bytes changed:\n{}", f.join("\n"));
}

#[test]
fn keys_keep_their_bytes() {
    let t = "0000000000000005";
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("sale", keys::sale("s-1"), "10732d3100".into()),
        ("hold", keys::hold(258), "110000000000000102".into()),
        ("order", keys::order(1), "120000000000000001".into()),
        ("user_sale", keys::user_sale("s", "u"), "1373007500".into()),
        ("idem", keys::idem("u", "r"), "1475007200".into()),
        ("wait", keys::wait("s", 2), "1673000000000000000002".into()),
        ("wait_user", keys::wait_user("s", "u"), "1773007500".into()),
        ("payref", keys::payref("p"), "187000".into()),
        (
            "user_hold",
            keys::user_hold("u", 3),
            "1975000000000000000003".into(),
        ),
        (
            "user_order",
            keys::user_order("u", 4),
            "1a75000000000000000004".into(),
        ),
        (
            "deadline hold",
            keys::deadline(5, &Deadline::Hold(6)),
            format!("15{t}010000000000000006"),
        ),
        (
            "deadline order",
            keys::deadline(5, &Deadline::Order(6)),
            format!("15{t}020000000000000006"),
        ),
        (
            "deadline idem",
            keys::deadline(
                5,
                &Deadline::Idem {
                    user_id: "u".into(),
                    request_id: "r".into(),
                },
            ),
            format!("15{t}0375007200"),
        ),
        (
            "deadline close",
            keys::deadline(5, &Deadline::SaleClose("s".into())),
            format!("15{t}047300"),
        ),
        (
            "deadline handoff",
            keys::deadline(5, &Deadline::Handoff("s".into())),
            format!("15{t}057300"),
        ),
        (
            "meta clock",
            keys::META_CLOCK.to_vec(),
            "01636c6f636b".into(),
        ),
        (
            "meta next_id",
            keys::META_NEXT_ID.to_vec(),
            "016e6578745f6964".into(),
        ),
        (
            "meta last_applied",
            keys::META_LAST_APPLIED.to_vec(),
            "016c6173745f6170706c696564".into(),
        ),
        (
            "meta membership",
            keys::META_MEMBERSHIP.to_vec(),
            "016d656d62657273686970".into(),
        ),
    ];
    let bad: Vec<String> = cases
        .iter()
        .filter(|(_, k, want)| hex(k) != *want)
        .map(|(name, k, want)| format!("{name}: {} != {want}", hex(k)))
        .collect();
    assert!(bad.is_empty(), "key bytes changed:\n{}", bad.join("\n"));
}

const GOLDEN_SPEC: &str = concat!(
    "0b737072696e672d64726f7005534b552d310550686f6e6507412070686f6e651968747470733a2f",
    "2f696d672e6578616d706c652f702e706e67fca0860100fbecc2034555520afbe803fca086010002",
    "fb8813fb1027"
);
const GOLDEN_ENTRY_RESERVE: &str = "fd7b68e5cf8b010000030b737072696e672d64726f700275310203722d31";
const GOLDEN_COMMANDS: &str = concat!(
    "0d000b737072696e672d64726f7005534b552d310550686f6e6507412070686f6e65196874747073",
    "3a2f2f696d672e6578616d706c652f702e706e67fca0860100fbecc2034555520afbe803fca08601",
    "0002fb8813fb1027010b737072696e672d64726f7005534b552d310550686f6e6507412070686f6e",
    "651968747470733a2f2f696d672e6578616d706c652f702e706e67fca0860100fbecc2034555520a",
    "fbe803fca086010002fb8813fb1027020b737072696e672d64726f70030b737072696e672d64726f",
    "7002753101027231040275310702723205027531070272330602753108fbecc20345555205707370",
    "2d3102723407027531080d63617264206465636c696e65640272350802753108027236090b737072",
    "696e672d64726f70027531010272370a0b737072696e672d64726f700275310272380b0c010b"
);
const GOLDEN_REJECTS: &str = concat!(
    "190003717479017801020305040506070308020109100a0b0c0d01090e0f0210110a034555521213",
    "01017001140115021617fca086010018"
);
const GOLDEN_RESPONSES: &str = concat!(
    "0f00010b737072696e672d64726f70020b737072696e672d64726f70030b737072696e672d64726f",
    "700304070b737072696e672d64726f7001fb7017050706080b737072696e672d64726f7001fbecc2",
    "034555520001fb204e0708080809080a0b737072696e672d64726f70040b0b737072696e672d6472",
    "6f700c01020304050101060d01000e06"
);
const GOLDEN_SALE: &str = concat!(
    "0b737072696e672d64726f7005534b552d310550686f6e6507412070686f6e651968747470733a2f",
    "2f696d672e6578616d706c652f702e706e67fca0860100fbecc2034555520afbe803fca086010002",
    "fb8813fb1027010102040302010102030405060708090a0b010c000d0e"
);
const GOLDEN_HOLDS: &str = concat!(
    "02070b737072696e672d64726f7002753102fbe803fb7017010003772d31090b737072696e672d64",
    "726f7002753201010200030a03722d39"
);
const GOLDEN_HOLD_STATES: &str = "0400010102020303";
const GOLDEN_ORDER_STATUSES: &str = "060001037073700102030002030103030204";
const GOLDEN_ORDER: &str = "080b737072696e672d64726f700275310701fbecc203455552fbe803000203722d33";
const GOLDEN_USER: &str = "0102030101";
const GOLDEN_IDEM: &str = "fdefcdab8967452301050708";
const GOLDEN_WAIT_ENTRY: &str = "027531020303772d32";
const GOLDEN_WAIT_STATES: &str = "0200010102";
const GOLDEN_RAFT_ENTRY: &str = "03012a01090b";
const GOLDEN_RAFT_MEMBERSHIP_ENTRY: &str =
    "03012b0201010101010e31302e302e302e313a35303035310d31302e302e302e313a38303830";
const GOLDEN_VOTE: &str = "030101";
const GOLDEN_LOG_ID: &str = "03012a";
const GOLDEN_STORED_MEMBERSHIP: &str =
    "0103012b01010101010e31302e302e302e313a35303035310d31302e302e302e313a38303830";
const GOLDEN_SNAPSHOT_META: &str = concat!(
    "0103012c0103012b01010101010e31302e302e302e313a35303035310d31302e302e302e313a3830",
    "383000"
);
