#![allow(dead_code)] // shared by several test binaries, each using a subset
//! Shared helpers: a sale spec, command builders and an in-memory machine.

use stockade_raft_store::kv::MemKv;
use stockade_raft_store::machine::apply_to_mem;
use stockade_raft_store::types::*;

pub const SALE: &str = "spring-drop";

/// A sale of `quantity` units from t=1_000 to t=100_000, limit 2, TTL 5 s, 10 s to pay.
pub fn spec(quantity: u32) -> SaleSpec {
    SaleSpec {
        id: SALE.to_string(),
        product: Product {
            sku: "SKU-1".into(),
            name: "Phone".into(),
            description: "A phone".into(),
            image_url: "https://img.example/p.png".into(),
        },
        list_price_minor: 100_000,
        sale_price_minor: 49_900,
        currency: "EUR".into(),
        quantity,
        starts_at_ms: 1_000,
        ends_at_ms: 100_000,
        per_user_limit: 2,
        hold_ttl_ms: 5_000,
        payment_window_ms: 10_000,
    }
}

pub fn reserve(user: &str, qty: u32, req: &str) -> Command {
    Command::Reserve {
        sale_id: SALE.into(),
        user_id: user.into(),
        qty,
        request_id: req.into(),
    }
}
pub fn release(user: &str, hold_id: u64, req: &str) -> Command {
    Command::Release {
        user_id: user.into(),
        hold_id,
        request_id: req.into(),
    }
}
pub fn checkout(user: &str, hold_id: u64, req: &str) -> Command {
    Command::Checkout {
        user_id: user.into(),
        hold_id,
        request_id: req.into(),
    }
}
pub fn pay(user: &str, order_id: u64, amount: u64, pref: &str, req: &str) -> Command {
    Command::ConfirmPayment {
        user_id: user.into(),
        order_id,
        amount_minor: amount,
        currency: "EUR".into(),
        payment_ref: pref.into(),
        request_id: req.into(),
    }
}
pub fn fail(user: &str, order_id: u64, req: &str) -> Command {
    Command::FailPayment {
        user_id: user.into(),
        order_id,
        reason: "card declined".into(),
        request_id: req.into(),
    }
}
pub fn cancel(user: &str, order_id: u64, req: &str) -> Command {
    Command::CancelOrder {
        user_id: user.into(),
        order_id,
        request_id: req.into(),
    }
}
pub fn join(user: &str, qty: u32, req: &str) -> Command {
    Command::JoinWaitlist {
        sale_id: SALE.into(),
        user_id: user.into(),
        qty,
        request_id: req.into(),
    }
}
pub fn leave(user: &str, req: &str) -> Command {
    Command::LeaveWaitlist {
        sale_id: SALE.into(),
        user_id: user.into(),
        request_id: req.into(),
    }
}

/// An in-memory replica: applies entries with the production apply code.
#[derive(Default)]
pub struct Mem {
    pub state: MemKv,
    pub log: Vec<LogEntry>,
}

impl Mem {
    pub fn apply(&mut self, at_ms: u64, cmd: Command) -> Response {
        let entry = LogEntry::new(at_ms, cmd);
        let r =
            apply_to_mem(&mut self.state, &entry).expect("apply must not fail on a healthy store");
        self.log.push(entry);
        r
    }

    pub fn sale(&self) -> stockade_raft_store::query::SaleView {
        stockade_raft_store::query::sale(&self.state, SALE)
            .unwrap()
            .expect("sale exists")
    }

    pub fn counters(&self) -> Counters {
        self.sale().counters
    }
}

pub fn held(r: &Response) -> HoldGrant {
    match r {
        Response::Held(g) => g.clone(),
        other => panic!("expected Held, got {other:?}"),
    }
}

pub fn order_of(r: &Response) -> OrderInfo {
    match r {
        Response::CheckedOut(o) => o.clone(),
        other => panic!("expected CheckedOut, got {other:?}"),
    }
}

pub fn code(r: &Response) -> &'static str {
    match r {
        Response::Rejected(rej) => rej.code(),
        _ => "ok",
    }
}
