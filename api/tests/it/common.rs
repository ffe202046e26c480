//! A fake `Cluster`: the production apply code on an in-memory state behind a mutex,
//! a clock the test sets, a fixed `served_by`, and switches to make it fail.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use stockade_api::{
    ApiLimits, Backup, Cluster, ClusterError, ClusterStatus, Member, ReadLevel, Readiness, Served,
};
use stockade_raft_store::kv::MemKv;
use stockade_raft_store::machine::apply_to_mem;
use stockade_raft_store::{Command, LogEntry, NodeAddr, Response};
use tower::ServiceExt;

pub const SERVED_BY: u64 = 7;
pub const SALE: &str = "spring-drop";

#[derive(Default)]
pub struct Fake {
    pub state: Mutex<MemKv>,
    pub clock_ms: AtomicU64,
    /// Returned by every call while set.
    pub fail: Mutex<Option<ClusterError>>,
    pub propose_delay_ms: AtomicU64,
    pub proposals: Mutex<Vec<Command>>,
    pub reads: Mutex<Vec<ReadLevel>>,
    pub admin_calls: Mutex<Vec<String>>,
    pub not_ready: Mutex<Option<Readiness>>,
    pub backup_bytes: Mutex<Option<Vec<u8>>>,
    /// What `Cluster::refusals_from_reads` answers (off unless a test turns it on; a
    /// node has it on by default).
    pub refusals_from_reads: AtomicBool,
}

impl Fake {
    pub fn new() -> Arc<Fake> {
        Arc::new(Fake::default())
    }

    pub fn set_clock(&self, ms: u64) {
        self.clock_ms.store(ms, Ordering::SeqCst);
    }

    pub fn fail_with(&self, e: Option<ClusterError>) {
        *self.fail.lock().unwrap() = e;
    }

    fn failure(&self) -> Result<(), ClusterError> {
        match self.fail.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The last admin call the fake saw.
    pub fn last_admin_call(&self) -> Option<String> {
        self.admin_calls.lock().unwrap().last().cloned()
    }

    fn admin(&self, what: String) -> Result<(), ClusterError> {
        self.failure()?;
        self.admin_calls.lock().unwrap().push(what);
        Ok(())
    }
}

impl Cluster for Fake {
    type View = MemKv;

    fn node_id(&self) -> u64 {
        SERVED_BY
    }

    fn refusals_from_reads(&self) -> bool {
        self.refusals_from_reads.load(Ordering::SeqCst)
    }

    async fn propose(&self, cmd: Command) -> Result<Served<Response>, ClusterError> {
        self.failure()?;
        let delay = self.propose_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.proposals.lock().unwrap().push(cmd.clone());
        let entry = LogEntry {
            at_ms: self.clock_ms.load(Ordering::SeqCst),
            cmd: cmd.into(),
        };
        let value = apply_to_mem(&mut self.state.lock().unwrap(), &entry)
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        Ok(Served {
            value,
            served_by: SERVED_BY,
        })
    }

    async fn read(&self, level: ReadLevel) -> Result<Served<MemKv>, ClusterError> {
        self.failure()?;
        self.reads.lock().unwrap().push(level);
        Ok(Served {
            value: self.state.lock().unwrap().clone(),
            served_by: SERVED_BY,
        })
    }

    async fn status(&self) -> Result<ClusterStatus, ClusterError> {
        self.failure()?;
        Ok(ClusterStatus {
            node_id: SERVED_BY,
            role: "leader".into(),
            term: 3,
            leader_id: Some(SERVED_BY),
            last_log_index: 10,
            commit_index: 10,
            applied_index: 10,
            snapshot_index: Some(8),
            members: vec![Member {
                node_id: SERVED_BY,
                raft_addr: "127.0.0.1:7000".into(),
                api_addr: "127.0.0.1:8000".into(),
                voter: true,
            }],
            replication: vec![],
        })
    }

    fn readiness(&self) -> Readiness {
        self.not_ready.lock().unwrap().clone().unwrap_or(Readiness {
            has_leader: true,
            caught_up: true,
        })
    }

    async fn initialize(
        &self,
        members: std::collections::BTreeMap<u64, NodeAddr>,
    ) -> Result<(), ClusterError> {
        let list: Vec<String> = members
            .iter()
            .map(|(id, a)| format!("{id}={}/{}", a.raft_addr, a.api_addr))
            .collect();
        self.admin(format!("init [{}]", list.join(",")))
    }

    async fn state_hash(&self) -> Result<stockade_api::StateHash, ClusterError> {
        self.failure()?;
        Ok(stockade_api::StateHash {
            node_id: 7,
            applied_index: 3,
            state_hash: 42,
        })
    }

    async fn add_learner(&self, node_id: u64, addr: NodeAddr) -> Result<(), ClusterError> {
        self.admin(format!(
            "learner {node_id} {} {}",
            addr.raft_addr, addr.api_addr
        ))
    }

    async fn change_membership(
        &self,
        voters: BTreeSet<u64>,
        retain: bool,
    ) -> Result<(), ClusterError> {
        self.admin(format!("membership {voters:?} {retain}"))
    }

    async fn transfer_leader(&self, to: u64) -> Result<(), ClusterError> {
        self.admin(format!("leader {to}"))
    }

    async fn trigger_snapshot(&self) -> Result<(), ClusterError> {
        self.admin("snapshot".into())
    }

    async fn compact(&self) -> Result<stockade_raft_store::Compaction, ClusterError> {
        self.admin("compact".into())?;
        Ok(stockade_raft_store::Compaction {
            sst_bytes_before: 2_048,
            sst_bytes_after: 1_024,
            took_ms: 5,
        })
    }

    async fn backup(&self) -> Result<Backup, ClusterError> {
        self.failure()?;
        let Some(bytes) = self.backup_bytes.lock().unwrap().clone() else {
            return Err(ClusterError::NotFound("no snapshot yet".into()));
        };
        let mut file = tempfile::tempfile().map_err(|e| ClusterError::Internal(e.to_string()))?;
        file.write_all(&bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        Ok(Backup {
            file,
            len_bytes: bytes.len() as u64,
            last_index: Some(8),
        })
    }

    fn metrics_text(&self) -> String {
        "# TYPE stockade_raft_term gauge\nstockade_raft_term 3\n".into()
    }
}

/// A sale of `quantity` units from t=1_000 to t=100_000, limit 2, TTL 5 s, 10 s to pay.
pub fn spec_json(quantity: u32) -> Value {
    json!({
        "id": SALE,
        "product": {"sku": "SKU-1", "name": "Phone", "description": "A phone",
                    "image_url": "https://img.example/p.png"},
        "list_price_minor": 100_000,
        "sale_price_minor": 49_900,
        "currency": "EUR",
        "quantity": quantity,
        "starts_at_ms": 1_000,
        "ends_at_ms": 100_000,
        "per_user_limit": 2,
        "hold_ttl_ms": 5_000,
        "payment_window_ms": 10_000
    })
}

pub struct Http {
    pub fake: Arc<Fake>,
    pub app: Router,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("<no code>")
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Http {
    pub fn new() -> Http {
        Http::with_limits(ApiLimits::default())
    }

    pub fn with_limits(limits: ApiLimits) -> Http {
        let fake = Fake::new();
        let app = stockade_api::http_router(fake.clone(), limits);
        Http { fake, app }
    }

    /// Sends a request; `body` is sent as-is with `content-type: application/json`.
    pub async fn raw(&self, method: &str, uri: &str, body: Option<&str>) -> Reply {
        let mut b = Request::builder().method(method).uri(uri);
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(
                body.map(|s| Body::from(s.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.raw("GET", uri, None).await
    }

    pub async fn post(&self, uri: &str, body: Value) -> Reply {
        self.raw("POST", uri, Some(&body.to_string())).await
    }

    pub async fn put(&self, uri: &str, body: Value) -> Reply {
        self.raw("PUT", uri, Some(&body.to_string())).await
    }

    /// Creates the standard sale and opens it (clock inside the sale window).
    pub async fn open_sale(&self, quantity: u32) {
        let r = self.post("/v1/sales", spec_json(quantity)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        self.fake.set_clock(2_000);
    }

    pub async fn reserve(&self, user: &str, qty: u32, req: &str) -> Reply {
        self.post(
            &format!("/v1/sales/{SALE}/holds"),
            json!({"user_id": user, "qty": qty, "request_id": req}),
        )
        .await
    }

    /// A reservation the client marks as its first send of `req`.
    pub async fn reserve_first(&self, user: &str, qty: u32, req: &str) -> Reply {
        self.post(
            &format!("/v1/sales/{SALE}/holds"),
            json!({"user_id": user, "qty": qty, "request_id": req, "first_attempt": true}),
        )
        .await
    }
}
