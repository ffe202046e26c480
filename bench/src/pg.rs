//! PostgreSQL 15, `synchronous_commit=on`. Two designs: a hot row
//! (`UPDATE stock SET n = n - 1 WHERE n > 0` and a hold row, in one statement) and one
//! row per unit taken with `FOR UPDATE SKIP LOCKED`. Expired holds are returned by a
//! sweeper statement.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stockade_cli::bench::{Granted, Ordered, Outcome, Target};
use tokio_postgres::{Client, NoTls, Statement};

use crate::sys::{port_free, Proc};
use crate::system::{Counters, System};

/// Connections the clients share (a pool, as an application server would have).
pub const POOL_MAX: usize = 64;
/// `max_connections` of the server.
pub const SERVER_CONNECTIONS_MAX: usize = 200;
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const READY_POLL: Duration = Duration::from_millis(200);
/// Expired holds one sweep returns at most.
pub const REAP_BATCH_MAX: i64 = 1_000;
/// The operating-system user PostgreSQL runs as (it refuses root).
pub const PG_USER: &str = "postgres";

const SCHEMA: &str = "
CREATE TABLE stock (sale text PRIMARY KEY, n int NOT NULL, quantity int NOT NULL);
CREATE TABLE holds (id bigserial PRIMARY KEY, sale text NOT NULL, user_id text NOT NULL,
  expires_at timestamptz NOT NULL, state text NOT NULL, UNIQUE (sale, user_id));
CREATE INDEX holds_due ON holds (sale, expires_at) WHERE state = 'held';
CREATE TABLE units (sale text NOT NULL, id int NOT NULL, state text NOT NULL DEFAULT 'free',
  user_id text, expires_at timestamptz, PRIMARY KEY (sale, id));
CREATE UNIQUE INDEX units_user ON units (sale, user_id);
CREATE INDEX units_free ON units (sale, id) WHERE state = 'free';
CREATE INDEX units_due ON units (sale, expires_at) WHERE state = 'held';
";

pub struct Server {
    proc: Proc,
    port: u16,
}

fn pg_bin(name: &str) -> String {
    format!("/usr/lib/postgresql/15/bin/{name}")
}

/// uid and gid of [`PG_USER`].
fn pg_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id").arg(flag).arg(PG_USER).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

impl Server {
    pub fn start(dir: &Path, port: u16) -> Result<Server> {
        use std::os::unix::process::CommandExt;
        port_free(port)?;
        let data = dir.join("postgres");
        std::fs::create_dir_all(&data)?;
        let (uid, gid) = pg_ids().context("the postgres user")?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        let st = Command::new(pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .status()
            .context("initdb")?;
        if !st.success() {
            bail!("initdb failed: {st}");
        }
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .args(["-c", "synchronous_commit=on", "-c", "fsync=on"])
            .args(["-c", &format!("max_connections={SERVER_CONNECTIONS_MAX}")])
            .args(["-c", "shared_buffers=256MB"])
            .uid(uid)
            .gid(gid)
            .process_group(0);
        let proc = Proc::spawn("postgres", cmd, &dir.join("postgres.log"))?;
        Ok(Server { proc, port })
    }

    async fn connect(&self) -> Result<Client> {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10",
                self.port
            ),
            NoTls,
        )
        .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    pub async fn ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.proc.check_alive()?;
            if let Ok(c) = self.connect().await {
                c.batch_execute(SCHEMA).await.context("schema")?;
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("postgres: no connection after {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Design {
    HotRow,
    SkipLocked,
}

pub struct Postgres {
    pub server: Arc<Server>,
    pub design: Design,
}

struct Conn {
    c: Client,
    reserve: Statement,
    checkout: Statement,
    pay: Statement,
    release: Statement,
}

pub struct PgTarget {
    conns: Vec<Conn>,
    sale: String,
    ttl_ms: f64,
}

fn sql(d: Design) -> [&'static str; 5] {
    match d {
        Design::HotRow => [
            // reserve: $1 sale, $2 user, $3 ttl ms
            "WITH s AS (UPDATE stock SET n = n - 1 WHERE sale = $1 AND n > 0 RETURNING 1)
             INSERT INTO holds (sale, user_id, expires_at, state)
             SELECT $1, $2, now() + $3 * interval '1 millisecond', 'held' FROM s RETURNING id",
            // checkout: $1 sale, $2 hold id, $3 user
            "UPDATE holds SET state = 'awaiting' WHERE sale = $1 AND id = $2 AND user_id = $3
             AND state = 'held' AND expires_at > now()",
            "UPDATE holds SET state = 'paid' WHERE sale = $1 AND id = $2 AND user_id = $3
             AND state = 'awaiting'",
            "WITH h AS (UPDATE holds SET state = 'released' WHERE sale = $1 AND id = $2
             AND user_id = $3 AND state = 'held' RETURNING 1)
             UPDATE stock SET n = n + 1 WHERE sale = $1 AND EXISTS (SELECT 1 FROM h)",
            // reap: $1 sale, $2 batch
            "WITH e AS (UPDATE holds SET state = 'expired' WHERE id IN (SELECT id FROM holds
             WHERE sale = $1 AND state = 'held' AND expires_at < now() LIMIT $2
             FOR UPDATE SKIP LOCKED) RETURNING 1)
             UPDATE stock SET n = n + (SELECT count(*) FROM e) WHERE sale = $1
             AND EXISTS (SELECT 1 FROM e)",
        ],
        Design::SkipLocked => [
            "UPDATE units SET state = 'held', user_id = $2,
             expires_at = now() + $3 * interval '1 millisecond'
             WHERE sale = $1 AND id = (SELECT id FROM units WHERE sale = $1 AND state = 'free'
             LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id::bigint",
            "UPDATE units SET state = 'awaiting' WHERE sale = $1 AND id = $2::bigint::int
             AND user_id = $3 AND state = 'held' AND expires_at > now()",
            "UPDATE units SET state = 'paid' WHERE sale = $1 AND id = $2::bigint::int
             AND user_id = $3 AND state = 'awaiting'",
            "UPDATE units SET state = 'free', user_id = NULL, expires_at = NULL
             WHERE sale = $1 AND id = $2::bigint::int AND user_id = $3 AND state = 'held'",
            "UPDATE units SET state = 'free', user_id = NULL, expires_at = NULL
             WHERE sale = $1 AND id IN (SELECT id FROM units WHERE sale = $1 AND state = 'held'
             AND expires_at < now() LIMIT $2 FOR UPDATE SKIP LOCKED)",
        ],
    }
}

fn transient(e: &tokio_postgres::Error) -> Outcome<()> {
    match e.code() {
        Some(c) if c.code() == "23505" => Outcome::Rejected("limit_exceeded".into()),
        Some(c) => Outcome::Transient(format!("pg:{}", c.code())),
        None => Outcome::Transient("pg:connection".into()),
    }
}

fn one_row(r: Result<u64, tokio_postgres::Error>, no: &str) -> Outcome<()> {
    match r {
        Ok(1) => Outcome::Ok(()),
        Ok(_) => Outcome::Rejected(no.into()),
        Err(e) => transient(&e),
    }
}

impl PgTarget {
    fn conn(&self, idx: usize) -> &Conn {
        &self.conns[idx % self.conns.len()]
    }
}

impl Target for PgTarget {
    type Hold = i64;
    type Order = i64;

    fn endpoints(&self) -> usize {
        self.conns.len()
    }

    async fn reserve(
        &self,
        idx: usize,
        user: &str,
        _rid: &str,
        _first: bool,
    ) -> Outcome<Granted<i64>> {
        let c = self.conn(idx);
        match c
            .c
            .query_opt(&c.reserve, &[&self.sale, &user, &self.ttl_ms])
            .await
        {
            Ok(Some(row)) => match row.try_get::<_, i64>(0) {
                Ok(id) => Outcome::Ok(Granted { hold: id, qty: 1 }),
                Err(_) => Outcome::Transient("pg:bad_row".into()),
            },
            Ok(None) => Outcome::Rejected("sold_out".into()),
            Err(e) => transient(&e).map(|()| unreachable_grant()),
        }
    }

    async fn checkout(
        &self,
        idx: usize,
        hold: &i64,
        user: &str,
        _r: &str,
    ) -> Outcome<Ordered<i64>> {
        let c = self.conn(idx);
        one_row(
            c.c.execute(&c.checkout, &[&self.sale, hold, &user]).await,
            "hold_expired",
        )
        .map(|()| Ordered {
            order: *hold,
            awaiting_payment: true,
        })
    }

    async fn pay(&self, idx: usize, order: &i64, user: &str, _r: &str) -> Outcome<()> {
        let c = self.conn(idx);
        one_row(
            c.c.execute(&c.pay, &[&self.sale, order, &user]).await,
            "not_awaiting_payment",
        )
    }

    async fn release(&self, idx: usize, hold: &i64, user: &str, _r: &str) -> Outcome<()> {
        let c = self.conn(idx);
        one_row(
            c.c.execute(&c.release, &[&self.sale, hold, &user]).await,
            "hold_gone",
        )
    }
}

/// Never called: `transient` never returns `Ok`.
fn unreachable_grant() -> Granted<i64> {
    Granted { hold: -1, qty: 0 }
}

impl System for Postgres {
    type T = PgTarget;

    fn name(&self) -> String {
        match self.design {
            Design::HotRow => "PostgreSQL 15, hot row".into(),
            Design::SkipLocked => "PostgreSQL 15, row per unit, SKIP LOCKED".into(),
        }
    }

    async fn prepare(
        &self,
        sale: &str,
        units: u64,
        ttl_ms: u64,
        clients: usize,
    ) -> Result<Arc<PgTarget>> {
        let q = i32::try_from(units).context("units")?;
        let mut conns = Vec::new();
        let [reserve, checkout, pay, release, _] = sql(self.design);
        for _ in 0..clients.clamp(1, POOL_MAX) {
            let c = self.server.connect().await?;
            conns.push(Conn {
                reserve: c.prepare(reserve).await.context("prepare reserve")?,
                checkout: c.prepare(checkout).await.context("prepare checkout")?,
                pay: c.prepare(pay).await.context("prepare pay")?,
                release: c.prepare(release).await.context("prepare release")?,
                c,
            });
        }
        let c = &conns[0].c;
        match self.design {
            Design::HotRow => {
                c.execute(
                    "INSERT INTO stock (sale, n, quantity) VALUES ($1, $2, $2)",
                    &[&sale, &q],
                )
                .await?;
            }
            Design::SkipLocked => {
                c.execute(
                    "INSERT INTO stock (sale, n, quantity) VALUES ($1, 0, $2)",
                    &[&sale, &q],
                )
                .await?;
                c.execute(
                    "INSERT INTO units (sale, id) SELECT $1, g FROM generate_series(0, $2 - 1) g",
                    &[&sale, &q],
                )
                .await?;
                c.batch_execute("ANALYZE units").await?;
            }
        }
        Ok(Arc::new(PgTarget {
            conns,
            sale: sale.to_string(),
            ttl_ms: ttl_ms as f64,
        }))
    }

    async fn reap(&self, t: &PgTarget) -> Result<u64> {
        let c = &t.conns[0].c;
        let n = c
            .execute(sql(self.design)[4], &[&t.sale, &REAP_BATCH_MAX])
            .await?;
        Ok(n)
    }

    async fn counters(&self, t: &PgTarget) -> Result<Counters> {
        let c = &t.conns[0].c;
        let (table, quantity_row) = match self.design {
            Design::HotRow => ("holds", true),
            Design::SkipLocked => ("units", false),
        };
        let r = c
            .query_one(
                &format!(
                    "SELECT s.n::bigint, s.quantity::bigint,
                       (SELECT count(*) FROM {table} WHERE sale = $1 AND state = 'held'),
                       (SELECT count(*) FROM {table} WHERE sale = $1 AND state IN ('awaiting', 'paid')),
                       (SELECT count(*) FROM {table} WHERE sale = $1 AND state = 'free')
                     FROM stock s WHERE s.sale = $1"
                ),
                &[&t.sale],
            )
            .await?;
        let (n, q, held, ordered, free): (i64, i64, i64, i64, i64) = (
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
        );
        Ok(Counters {
            quantity: q,
            available: if quantity_row { n } else { free },
            held,
            ordered,
        })
    }

    async fn fsyncs(&self) -> Result<Option<u64>> {
        let c = self.server.connect().await?;
        // Statistics reach pg_stat_wal when a backend reports them: ask for a fresh view.
        let r = c.query_one("SELECT wal_sync FROM pg_stat_wal", &[]).await?;
        Ok(Some(u64::try_from(r.try_get::<_, i64>(0)?).unwrap_or(0)))
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.server.proc.pid()]
    }

    /// A checkpoint now: otherwise the checkpointer writes the run's dirty buffers out
    /// later, into another system's run (seen: Stockade's followers missed heartbeats
    /// during PostgreSQL's SKIP LOCKED rounds, `docs/benchmarks.md`).
    async fn flush(&self) -> Result<()> {
        self.server
            .connect()
            .await?
            .batch_execute("CHECKPOINT")
            .await?;
        Ok(())
    }
}
