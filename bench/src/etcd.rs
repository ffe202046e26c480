//! etcd 3.4, three members, through its v3 JSON gateway (HTTP). Two designs a user might
//! build: compare-and-swap on one stock key, and one key per unit created if absent.
//! Expired holds are returned by a sweeper over an expiry index written in the same
//! transaction as the hold.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use stockade_cli::bench::{Granted, Ordered, Outcome, Target};
use stockade_cli::output::now_ms;

use crate::sys::{port_free, Proc};
use crate::system::{Counters, System};

/// Members.
pub const MEMBERS: usize = 3;
/// Timeout of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cluster may take to become healthy.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const READY_POLL: Duration = Duration::from_millis(200);
/// Read-then-CAS rounds of one reservation (or release) before it gives up.
pub const CAS_TRIES_MAX: u32 = 32;
/// Units one reservation tries to create before it counts what is left.
pub const UNIT_PROBES_MAX: u32 = 4;
/// Expired holds one sweep returns at most.
pub const REAP_BATCH_MAX: u64 = 500;
/// Keys per page when counting units.
pub const PAGE_KEYS: u64 = 10_000;
/// Pages read when counting units.
pub const PAGES_MAX: u64 = 1_000;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The first key after every key that starts with `p`.
fn prefix_end(p: &str) -> String {
    let mut b = p.as_bytes().to_vec();
    if let Some(last) = b.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn put(k: &str, v: &str) -> Value {
    json!({"request_put": {"key": b64(k), "value": b64(v)}})
}
fn del(k: &str) -> Value {
    json!({"request_delete_range": {"key": b64(k)}})
}
fn get(k: &str) -> Value {
    json!({"request_range": {"key": b64(k)}})
}
fn mod_eq(k: &str, rev: i64) -> Value {
    json!({"key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": rev.to_string()})
}
fn absent(k: &str) -> Value {
    json!({"key": b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
}
fn value_eq(k: &str, v: &str) -> Value {
    json!({"key": b64(k), "target": "VALUE", "result": "EQUAL", "value": b64(v)})
}

/// The client side of the cluster.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Gateway {
    async fn post(&self, idx: usize, path: &str, body: &Value) -> Result<Value, String> {
        let url = &self.urls[idx % self.urls.len()];
        let r = self
            .http
            .post(format!("{url}{path}"))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("etcd:{}", stockade_cli::client::describe(&e)))?;
        let ok = r.status().is_success();
        let v: Value = r
            .json()
            .await
            .map_err(|_| "etcd:bad_response".to_string())?;
        if ok {
            Ok(v)
        } else {
            Err(format!("etcd:{}", num(&v["code"])))
        }
    }

    /// (value, mod_revision) of `k`, if it exists.
    async fn get(&self, idx: usize, k: &str) -> Result<Option<(String, i64)>, String> {
        let v = self
            .post(idx, "/v3/kv/range", &json!({"key": b64(k)}))
            .await?;
        Ok(v["kvs"]
            .get(0)
            .map(|kv| (unb64(&kv["value"]), num(&kv["mod_revision"]))))
    }

    async fn count(&self, idx: usize, prefix: &str) -> Result<i64, String> {
        let v = self
            .post(
                idx,
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "count_only": true}),
            )
            .await?;
        Ok(num(&v["count"]))
    }

    /// Keys and values from `from` (inclusive) to `to` (exclusive), at most `limit`.
    async fn range(
        &self,
        idx: usize,
        from: &str,
        to: &str,
        limit: u64,
    ) -> Result<Vec<(String, String)>, String> {
        let v = self
            .post(
                idx,
                "/v3/kv/range",
                &json!({"key": b64(from), "range_end": b64(to), "limit": limit.to_string()}),
            )
            .await?;
        Ok(v["kvs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|kv| (unb64(&kv["key"]), unb64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Whether the transaction's compares held, and its responses.
    async fn txn(
        &self,
        idx: usize,
        compare: Vec<Value>,
        success: Vec<Value>,
        failure: Vec<Value>,
    ) -> Result<(bool, Value), String> {
        let v = self
            .post(
                idx,
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success, "failure": failure}),
            )
            .await?;
        Ok((v["succeeded"].as_bool().unwrap_or(false), v))
    }
}

pub struct Cluster {
    procs: Vec<Proc>,
    gw: Gateway,
}

impl Cluster {
    /// Clients on `port..port+3`, peers on `port+3..port+6`.
    pub fn start(dir: &Path, port: u16) -> Result<Cluster> {
        for p in port..port + 2 * MEMBERS as u16 {
            port_free(p)?;
        }
        let client = |i: usize| format!("http://127.0.0.1:{}", port + i as u16);
        let peer = |i: usize| format!("http://127.0.0.1:{}", port + (MEMBERS + i) as u16);
        let initial = (0..MEMBERS)
            .map(|i| format!("m{}={}", i + 1, peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        for i in 0..MEMBERS {
            let mut cmd = Command::new("etcd");
            cmd.arg("--name")
                .arg(format!("m{}", i + 1))
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{}", i + 1)))
                .arg("--listen-client-urls")
                .arg(client(i))
                .arg("--advertise-client-urls")
                .arg(client(i))
                .arg("--listen-peer-urls")
                .arg(peer(i))
                .arg("--initial-advertise-peer-urls")
                .arg(peer(i))
                .arg("--initial-cluster")
                .arg(&initial)
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "bench-peers"]);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            procs.push(Proc::spawn(
                &format!("etcd m{}", i + 1),
                cmd,
                &dir.join(format!("etcd-{}.log", i + 1)),
            )?);
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1_024)
            .build()?;
        Ok(Cluster {
            procs,
            gw: Gateway {
                http,
                urls: (0..MEMBERS).map(client).collect(),
            },
        })
    }

    pub async fn ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            for p in &mut self.procs {
                p.check_alive()?;
            }
            let mut healthy = 0;
            for u in &self.gw.urls {
                if let Ok(t) = crate::http_text(&format!("{u}/health")).await {
                    if t.contains("\"true\"") {
                        healthy += 1;
                    }
                }
            }
            if healthy == MEMBERS {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("etcd: {healthy}/{MEMBERS} healthy after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    async fn fsyncs(&self) -> Result<Option<u64>> {
        let mut sum = 0.0;
        for u in &self.gw.urls {
            let t = crate::http_text(&format!("{u}/metrics")).await?;
            sum += crate::metric(&t, "etcd_disk_wal_fsync_duration_seconds_count")
                .ok_or_else(|| anyhow!("{u}: no etcd_disk_wal_fsync_duration_seconds_count"))?;
        }
        Ok(Some(sum as u64))
    }

    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

/// Which design.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Design {
    /// Read the stock key, then a transaction that decrements it if its mod_revision did
    /// not change (retried on conflict).
    Cas,
    /// One key per unit, created if absent by a transaction.
    UnitKeys,
}

pub struct Etcd {
    pub cluster: Arc<Cluster>,
    pub design: Design,
}

/// A hold: its key, the value it was written with, its expiry-index key and expiry.
pub struct EtcdHold {
    key: String,
    val: String,
    exp_key: String,
    exp_ms: u64,
}

pub struct EtcdTarget {
    gw: Gateway,
    design: Design,
    p: String,
    units: u64,
    ttl_ms: u64,
    next: AtomicU64,
}

impl EtcdTarget {
    fn stock(&self) -> String {
        format!("{}/stock", self.p)
    }
    fn exp_prefix(&self) -> String {
        format!("{}/exp/", self.p)
    }
    fn hold_prefix(&self) -> String {
        match self.design {
            Design::Cas => format!("{}/hold/", self.p),
            Design::UnitKeys => format!("{}/unit/", self.p),
        }
    }

    /// Returns one hold to stock if it is still held. Ok(true) = returned.
    async fn give_back(&self, idx: usize, h: &EtcdHold) -> Result<bool, String> {
        match self.design {
            Design::UnitKeys => {
                let (ok, _) = self
                    .gw
                    .txn(
                        idx,
                        vec![value_eq(&h.key, &h.val)],
                        vec![del(&h.key), del(&h.exp_key)],
                        vec![],
                    )
                    .await?;
                Ok(ok)
            }
            Design::Cas => {
                for _ in 0..CAS_TRIES_MAX {
                    let Some((v, rev)) = self.gw.get(idx, &self.stock()).await? else {
                        return Err("etcd:no_stock_key".into());
                    };
                    let n: i64 = v.parse().unwrap_or(0);
                    let (ok, resp) = self
                        .gw
                        .txn(
                            idx,
                            vec![mod_eq(&self.stock(), rev), value_eq(&h.key, &h.val)],
                            vec![
                                put(&self.stock(), &(n + 1).to_string()),
                                del(&h.key),
                                del(&h.exp_key),
                            ],
                            vec![get(&h.key)],
                        )
                        .await?;
                    if ok {
                        return Ok(true);
                    }
                    let still = resp["responses"][0]["response_range"]["kvs"]
                        .get(0)
                        .map(|kv| unb64(&kv["value"]) == h.val)
                        .unwrap_or(false);
                    if !still {
                        return Ok(false);
                    }
                }
                Err("etcd:cas_retries_exhausted".into())
            }
        }
    }
}

impl Target for EtcdTarget {
    type Hold = EtcdHold;
    type Order = EtcdHold;

    fn endpoints(&self) -> usize {
        self.gw.urls.len()
    }

    async fn reserve(
        &self,
        idx: usize,
        user: &str,
        _rid: &str,
        _first: bool,
    ) -> Outcome<Granted<EtcdHold>> {
        let user_key = format!("{}/user/{user}", self.p);
        let exp_ms = now_ms() + self.ttl_ms;
        match self.design {
            Design::Cas => {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                let h = EtcdHold {
                    key: format!("{}{id}", self.hold_prefix()),
                    val: format!("h|{user}|{exp_ms}"),
                    exp_key: format!("{}{exp_ms:013}/{id}", self.exp_prefix()),
                    exp_ms,
                };
                for _ in 0..CAS_TRIES_MAX {
                    let (v, rev) = match self.gw.get(idx, &self.stock()).await {
                        Ok(Some(x)) => x,
                        Ok(None) => return Outcome::Rejected("sale_not_found".into()),
                        Err(e) => return Outcome::Transient(e),
                    };
                    let n: i64 = v.parse().unwrap_or(0);
                    if n < 1 {
                        return Outcome::Rejected("sold_out".into());
                    }
                    match self
                        .gw
                        .txn(
                            idx,
                            vec![mod_eq(&self.stock(), rev), absent(&user_key)],
                            vec![
                                put(&self.stock(), &(n - 1).to_string()),
                                put(&h.key, &h.val),
                                put(&h.exp_key, &h.key),
                                put(&user_key, &h.key),
                            ],
                            vec![],
                        )
                        .await
                    {
                        Ok((true, _)) => return Outcome::Ok(Granted { hold: h, qty: 1 }),
                        Ok((false, _)) => continue,
                        Err(e) => return Outcome::Transient(e),
                    }
                }
                Outcome::Rejected("cas_retries_exhausted".into())
            }
            Design::UnitKeys => {
                for _ in 0..UNIT_PROBES_MAX {
                    let k = self.next.fetch_add(1, Ordering::Relaxed) % self.units.max(1);
                    let h = EtcdHold {
                        key: format!("{}{k:07}", self.hold_prefix()),
                        val: format!("h|{user}|{exp_ms}"),
                        exp_key: format!("{}{exp_ms:013}/{k:07}", self.exp_prefix()),
                        exp_ms,
                    };
                    match self
                        .gw
                        .txn(
                            idx,
                            vec![absent(&h.key), absent(&user_key)],
                            vec![
                                put(&h.key, &h.val),
                                put(&h.exp_key, &h.key),
                                put(&user_key, &h.key),
                            ],
                            vec![],
                        )
                        .await
                    {
                        Ok((true, _)) => return Outcome::Ok(Granted { hold: h, qty: 1 }),
                        Ok((false, _)) => continue,
                        Err(e) => return Outcome::Transient(e),
                    }
                }
                match self.gw.count(idx, &self.hold_prefix()).await {
                    Ok(n) if n >= self.units as i64 => Outcome::Rejected("sold_out".into()),
                    Ok(_) => Outcome::Rejected("no_free_unit_found".into()),
                    Err(e) => Outcome::Transient(e),
                }
            }
        }
    }

    async fn checkout(
        &self,
        idx: usize,
        h: &EtcdHold,
        _u: &str,
        _r: &str,
    ) -> Outcome<Ordered<EtcdHold>> {
        if now_ms() >= h.exp_ms {
            return Outcome::Rejected("hold_expired".into());
        }
        let (order_key, order_val) = match self.design {
            Design::Cas => (
                format!("{}/order/{}", self.p, h.key),
                "awaiting".to_string(),
            ),
            Design::UnitKeys => (h.key.clone(), h.val.replacen("h|", "o|", 1)),
        };
        let mut ops = vec![del(&h.exp_key), put(&order_key, &order_val)];
        if self.design == Design::Cas {
            ops.push(del(&h.key));
        }
        match self
            .gw
            .txn(idx, vec![value_eq(&h.key, &h.val)], ops, vec![])
            .await
        {
            Ok((true, _)) => Outcome::Ok(Ordered {
                order: EtcdHold {
                    key: order_key,
                    val: order_val,
                    exp_key: String::new(),
                    exp_ms: 0,
                },
                awaiting_payment: true,
            }),
            Ok((false, _)) => Outcome::Rejected("hold_expired".into()),
            Err(e) => Outcome::Transient(e),
        }
    }

    async fn pay(&self, idx: usize, o: &EtcdHold, _u: &str, _r: &str) -> Outcome<()> {
        let paid = match self.design {
            Design::Cas => "paid".to_string(),
            Design::UnitKeys => o.val.replacen("o|", "p|", 1),
        };
        match self
            .gw
            .txn(
                idx,
                vec![value_eq(&o.key, &o.val)],
                vec![put(&o.key, &paid)],
                vec![],
            )
            .await
        {
            Ok((true, _)) => Outcome::Ok(()),
            Ok((false, _)) => Outcome::Rejected("not_awaiting_payment".into()),
            Err(e) => Outcome::Transient(e),
        }
    }

    async fn release(&self, idx: usize, h: &EtcdHold, _u: &str, _r: &str) -> Outcome<()> {
        match self.give_back(idx, h).await {
            Ok(true) => Outcome::Ok(()),
            Ok(false) => Outcome::Rejected("hold_gone".into()),
            Err(e) => Outcome::Transient(e),
        }
    }
}

impl System for Etcd {
    type T = EtcdTarget;

    fn name(&self) -> String {
        match self.design {
            Design::Cas => "etcd 3 members, CAS on one stock key".into(),
            Design::UnitKeys => "etcd 3 members, one key per unit".into(),
        }
    }

    async fn prepare(
        &self,
        sale: &str,
        units: u64,
        ttl_ms: u64,
        _clients: usize,
    ) -> Result<Arc<EtcdTarget>> {
        let t = EtcdTarget {
            gw: self.cluster.gw.clone(),
            design: self.design,
            p: format!("/{sale}"),
            units,
            ttl_ms,
            next: AtomicU64::new(0),
        };
        let mut ops = vec![put(&format!("{}/quantity", t.p), &units.to_string())];
        if self.design == Design::Cas {
            ops.push(put(&t.stock(), &units.to_string()));
        }
        t.gw.txn(0, vec![], ops, vec![])
            .await
            .map_err(|e| anyhow!(e))?;
        Ok(Arc::new(t))
    }

    async fn reap(&self, t: &EtcdTarget) -> Result<u64> {
        let from = t.exp_prefix();
        let to = format!("{from}{:013}", now_ms());
        let due =
            t.gw.range(0, &from, &to, REAP_BATCH_MAX)
                .await
                .map_err(|e| anyhow!(e))?;
        let mut n = 0;
        for (exp_key, key) in due {
            let exp_ms = exp_key[from.len()..]
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            // The hold's value, to return it only if it is still that hold.
            let Some((val, _)) = t.gw.get(0, &key).await.map_err(|e| anyhow!(e))? else {
                let _ = t.gw.txn(0, vec![], vec![del(&exp_key)], vec![]).await;
                continue;
            };
            if !val.starts_with("h|") {
                let _ = t.gw.txn(0, vec![], vec![del(&exp_key)], vec![]).await;
                continue;
            }
            let h = EtcdHold {
                key,
                val,
                exp_key,
                exp_ms,
            };
            if t.give_back(0, &h).await.map_err(|e| anyhow!(e))? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn counters(&self, t: &EtcdTarget) -> Result<Counters> {
        let q: i64 =
            t.gw.get(0, &format!("{}/quantity", t.p))
                .await
                .map_err(|e| anyhow!(e))?
                .context("quantity")?
                .0
                .parse()?;
        match t.design {
            Design::Cas => {
                let stock: i64 =
                    t.gw.get(0, &t.stock())
                        .await
                        .map_err(|e| anyhow!(e))?
                        .context("stock")?
                        .0
                        .parse()?;
                let held =
                    t.gw.count(0, &t.hold_prefix())
                        .await
                        .map_err(|e| anyhow!(e))?;
                let ordered =
                    t.gw.count(0, &format!("{}/order/", t.p))
                        .await
                        .map_err(|e| anyhow!(e))?;
                Ok(Counters {
                    quantity: q,
                    available: stock,
                    held,
                    ordered,
                })
            }
            Design::UnitKeys => {
                let prefix = t.hold_prefix();
                let end = prefix_end(&prefix);
                let (mut held, mut ordered, mut from) = (0i64, 0i64, prefix.clone());
                for _ in 0..PAGES_MAX {
                    let page =
                        t.gw.range(0, &from, &end, PAGE_KEYS)
                            .await
                            .map_err(|e| anyhow!(e))?;
                    for (_, v) in &page {
                        match v.as_bytes().first() {
                            Some(b'h') => held += 1,
                            _ => ordered += 1,
                        }
                    }
                    match page.last() {
                        Some((k, _)) if page.len() as u64 == PAGE_KEYS => from = format!("{k}\0"),
                        _ => break,
                    }
                }
                Ok(Counters {
                    quantity: q,
                    available: q - held - ordered,
                    held,
                    ordered,
                })
            }
        }
    }

    async fn fsyncs(&self) -> Result<Option<u64>> {
        self.cluster.fsyncs().await
    }

    fn pids(&self) -> Vec<u32> {
        self.cluster.pids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end("/s/hold/"), "/s/hold0");
        assert!("/s/hold/99" < prefix_end("/s/hold/").as_str());
        assert_eq!(unb64(&json!(b64("a/b"))), "a/b");
        assert_eq!(num(&json!("42")), 42);
        assert_eq!(num(&json!(7)), 7);
    }
}
