//! Redis 7, one node: the seeds' Lua check-and-decrement, plus a hold key with a TTL and
//! a sorted set of hold expiries that a sweeper uses to return expired holds to stock.
//! Run once with `appendfsync always` and once with AOF off. Single node: not
//! failover-safe (a replica is asynchronous).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::Script;
use stockade_cli::bench::{Granted, Ordered, Outcome, Target};

use crate::sys::{port_free, Proc};
use crate::system::{Counters, System};

/// Connections the clients share (each multiplexes many requests).
pub const CONNECTIONS_MAX: usize = 8;
/// How long the server may take to answer PING after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval while waiting for it.
pub const READY_POLL: Duration = Duration::from_millis(100);
/// Expired holds one sweep returns at most.
pub const REAP_BATCH_MAX: u64 = 1_000;

/// The seeds' check-and-decrement, with the per-user limit, the hold key (TTL) and the
/// expiry index added. KEYS: stock, holds (zset), user, hold. ARGV: hold id, user, now
/// ms, ttl ms. 1 = held, 0 = sold out, -1 = the user already holds one.
const RESERVE: &str = r#"
if redis.call('exists', KEYS[3]) == 1 then return -1 end
local current_stock = tonumber(redis.call('get', KEYS[1]))
if current_stock >= 1 then
  redis.call('decrby', KEYS[1], 1)
  redis.call('set', KEYS[4], ARGV[2], 'PX', ARGV[4])
  redis.call('zadd', KEYS[2], tonumber(ARGV[3]) + tonumber(ARGV[4]), ARGV[1])
  redis.call('set', KEYS[3], ARGV[1])
  return 1
end
return 0
"#;

/// KEYS: hold, holds, orders (hash). ARGV: hold id. 1 = ordered, 0 = expired or gone.
const CHECKOUT: &str = r#"
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('del', KEYS[1])
redis.call('hset', KEYS[3], ARGV[1], 'awaiting')
return 1
"#;

/// KEYS: orders. ARGV: hold id. 1 = paid.
const PAY: &str = r#"
if redis.call('hget', KEYS[1], ARGV[1]) ~= 'awaiting' then return 0 end
redis.call('hset', KEYS[1], ARGV[1], 'paid')
return 1
"#;

/// KEYS: hold, holds, stock. ARGV: hold id. 1 = released.
const RELEASE: &str = r#"
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('del', KEYS[1])
redis.call('incrby', KEYS[3], 1)
return 1
"#;

/// KEYS: holds, stock. ARGV: now ms, batch max, hold key prefix. Returns holds returned.
const REAP: &str = r#"
local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('zrem', KEYS[1], id)
  redis.call('del', ARGV[3] .. id)
end
if #ids > 0 then redis.call('incrby', KEYS[2], #ids) end
return #ids
"#;

pub struct Server {
    proc: Proc,
    client: redis::Client,
}

impl Server {
    /// `aof_always`: `appendonly yes`, `appendfsync always`; else no AOF and no RDB.
    pub fn start(dir: &Path, port: u16, aof_always: bool) -> Result<Server> {
        port_free(port)?;
        let data = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(&data)
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"]);
        if aof_always {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let proc = Proc::spawn(
            &format!("redis-server :{port}"),
            cmd,
            &dir.join(format!("redis-{port}.log")),
        )?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        Ok(Server { proc, client })
    }

    pub async fn ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.proc.check_alive()?;
            if let Ok(mut c) = self.client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("redis: no answer after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

pub struct Redis {
    pub server: Server,
    pub aof_always: bool,
}

pub struct RedisTarget {
    conns: Vec<MultiplexedConnection>,
    prefix: String,
    ttl_ms: u64,
    next_hold: AtomicU64,
    reserve: Script,
    checkout: Script,
    pay: Script,
    release: Script,
    reap: Script,
}

fn transient(e: redis::RedisError) -> String {
    format!("redis:{:?}", e.kind())
}

impl RedisTarget {
    fn conn(&self, idx: usize) -> MultiplexedConnection {
        self.conns[idx % self.conns.len()].clone()
    }
    fn k(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }
    fn hold_key(&self, id: u64) -> String {
        format!("{}:hold:{id}", self.prefix)
    }
}

fn outcome(r: redis::RedisResult<i64>, no: &str) -> Outcome<()> {
    match r {
        Ok(1) => Outcome::Ok(()),
        Ok(-1) => Outcome::Rejected("limit_exceeded".into()),
        Ok(_) => Outcome::Rejected(no.into()),
        Err(e) => Outcome::Transient(transient(e)),
    }
}

impl Target for RedisTarget {
    type Hold = u64;
    type Order = u64;

    fn endpoints(&self) -> usize {
        self.conns.len()
    }

    async fn reserve(
        &self,
        idx: usize,
        user: &str,
        _rid: &str,
        _first: bool,
    ) -> Outcome<Granted<u64>> {
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        let mut c = self.conn(idx);
        let r = self
            .reserve
            .key(self.k("stock"))
            .key(self.k("holds"))
            .key(self.k(&format!("user:{user}")))
            .key(self.hold_key(id))
            .arg(id)
            .arg(user)
            .arg(stockade_cli::output::now_ms())
            .arg(self.ttl_ms)
            .invoke_async::<i64>(&mut c)
            .await;
        outcome(r, "sold_out").map(|()| Granted { hold: id, qty: 1 })
    }

    async fn checkout(&self, idx: usize, hold: &u64, _u: &str, _r: &str) -> Outcome<Ordered<u64>> {
        let mut c = self.conn(idx);
        let r = self
            .checkout
            .key(self.hold_key(*hold))
            .key(self.k("holds"))
            .key(self.k("orders"))
            .arg(*hold)
            .invoke_async::<i64>(&mut c)
            .await;
        outcome(r, "hold_expired").map(|()| Ordered {
            order: *hold,
            awaiting_payment: true,
        })
    }

    async fn pay(&self, idx: usize, order: &u64, _u: &str, _r: &str) -> Outcome<()> {
        let mut c = self.conn(idx);
        let r = self
            .pay
            .key(self.k("orders"))
            .arg(*order)
            .invoke_async::<i64>(&mut c)
            .await;
        outcome(r, "not_awaiting_payment")
    }

    async fn release(&self, idx: usize, hold: &u64, _u: &str, _r: &str) -> Outcome<()> {
        let mut c = self.conn(idx);
        let r = self
            .release
            .key(self.hold_key(*hold))
            .key(self.k("holds"))
            .key(self.k("stock"))
            .arg(*hold)
            .invoke_async::<i64>(&mut c)
            .await;
        outcome(r, "hold_gone")
    }
}

impl System for Redis {
    type T = RedisTarget;

    fn name(&self) -> String {
        if self.aof_always {
            "Redis 1 node, AOF fsync always (not failover-safe)".into()
        } else {
            "Redis 1 node, AOF off (not failover-safe)".into()
        }
    }

    async fn prepare(
        &self,
        sale: &str,
        units: u64,
        ttl_ms: u64,
        clients: usize,
    ) -> Result<Arc<RedisTarget>> {
        let mut conns = Vec::new();
        for _ in 0..clients.clamp(1, CONNECTIONS_MAX) {
            conns.push(
                self.server
                    .client
                    .get_multiplexed_async_connection()
                    .await?,
            );
        }
        let prefix = format!("{{{sale}}}");
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:stock"))
            .arg(units)
            .query_async(&mut conns[0])
            .await?;
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:quantity"))
            .arg(units)
            .query_async(&mut conns[0])
            .await?;
        Ok(Arc::new(RedisTarget {
            conns,
            prefix,
            ttl_ms,
            next_hold: AtomicU64::new(1),
            reserve: Script::new(RESERVE),
            checkout: Script::new(CHECKOUT),
            pay: Script::new(PAY),
            release: Script::new(RELEASE),
            reap: Script::new(REAP),
        }))
    }

    async fn reap(&self, t: &RedisTarget) -> Result<u64> {
        let mut c = t.conn(0);
        let n: i64 = t
            .reap
            .key(t.k("holds"))
            .key(t.k("stock"))
            .arg(stockade_cli::output::now_ms())
            .arg(REAP_BATCH_MAX)
            .arg(format!("{}:hold:", t.prefix))
            .invoke_async(&mut c)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn counters(&self, t: &RedisTarget) -> Result<Counters> {
        let mut c = t.conn(0);
        let stock: i64 = redis::cmd("GET")
            .arg(t.k("stock"))
            .query_async(&mut c)
            .await?;
        let held: i64 = redis::cmd("ZCARD")
            .arg(t.k("holds"))
            .query_async(&mut c)
            .await?;
        let ordered: i64 = redis::cmd("HLEN")
            .arg(t.k("orders"))
            .query_async(&mut c)
            .await?;
        let q: i64 = redis::cmd("GET")
            .arg(t.k("quantity"))
            .query_async::<Option<i64>>(&mut c)
            .await?
            .context("quantity")?;
        Ok(Counters {
            quantity: q,
            available: stock,
            held,
            ordered,
        })
    }

    async fn fsyncs(&self) -> Result<Option<u64>> {
        // Redis counts no fsyncs (INFO persistence has only delayed ones).
        Ok(None)
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.server.proc.pid()]
    }
}
