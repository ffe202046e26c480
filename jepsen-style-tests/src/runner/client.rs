//! The HTTP client: one request to one node, classified the way the history needs it.
//!
//! This module owns the mapping from what a node answered to an [`Answer`]:
//! - 2xx with a JSON body → `Ok(body)`;
//! - 4xx (a business rejection, bad input, 429 overloaded) → `Fail(code)`: it did not
//!   happen; the code is the API's stable `code` field;
//! - 5xx (503 no leader / outcome unknown, 504 timeout, 500), a timeout, a connection lost
//!   after the request may have been sent, or an unreadable body → `Info(reason)`;
//! - a refused TCP connect (the request never left) → `Fail("connect_failed")`.
//!
//! It also reads `/admin/status`. It must not decide what an op means for the model
//! (that is the workload's) and must not retry (the workload retries with the same
//! request id).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// Timeout of one client request (longer than the nodes' forward timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one admin status poll.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(700);
/// Idle connections kept per node.
const POOL_IDLE_PER_HOST: usize = 8;
/// Bytes of an error body kept in a message.
const MESSAGE_BYTES_MAX: usize = 200;

/// Fail code of a request whose TCP connect was refused (it was never sent).
pub const CONNECT_FAILED: &str = "connect_failed";

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok(Value),
    Fail { code: String, message: String },
    Info(String),
}

/// A node's `/admin/status`, the fields the runner uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub node_id: u64,
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub applied_index: u64,
    pub commit_index: u64,
    #[serde(default)]
    pub members: Vec<Member>,
}

/// One member in `/admin/status`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    pub voter: bool,
}

impl Status {
    /// The voters this node sees, in id order.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        v.sort_unstable();
        v
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
}

#[derive(Debug, Deserialize)]
struct ErrBody {
    code: String,
    #[serde(default)]
    message: String,
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MESSAGE_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_string()
}

impl Client {
    pub fn new() -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .no_proxy()
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Client { http })
    }

    async fn answer(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Answer::Fail {
                    code: CONNECT_FAILED.into(),
                    message: clip(&e.to_string()),
                }
            }
            Err(e) if e.is_timeout() => return Answer::Info("timeout".into()),
            Err(e) => return Answer::Info(format!("transport: {}", clip(&e.to_string()))),
        };
        let status = resp.status();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Answer::Info("timeout reading body".into()),
            Err(e) => return Answer::Info(format!("body lost: {}", clip(&e.to_string()))),
        };
        if status.is_success() {
            return match serde_json::from_slice::<Value>(&body) {
                Ok(v) => Answer::Ok(v),
                Err(e) => Answer::Info(format!("unreadable {status} body: {e}")),
            };
        }
        let err: Option<ErrBody> = serde_json::from_slice(&body).ok();
        let (code, message) = match err {
            Some(e) => (e.code, clip(&e.message)),
            None => (
                format!("http_{}", status.as_u16()),
                clip(&String::from_utf8_lossy(&body)),
            ),
        };
        if status.is_client_error() {
            Answer::Fail { code, message }
        } else {
            Answer::Info(format!("{} {code}: {message}", status.as_u16()))
        }
    }

    pub async fn post(&self, node: &str, path: &str, body: &Value) -> Answer {
        self.answer(self.http.post(format!("http://{node}{path}")).json(body))
            .await
    }

    /// A POST with its own timeout (admin calls that wait for replication).
    pub async fn post_timeout(
        &self,
        node: &str,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Answer {
        self.answer(
            self.http
                .post(format!("http://{node}{path}"))
                .json(body)
                .timeout(timeout),
        )
        .await
    }

    pub async fn get(&self, node: &str, path: &str) -> Answer {
        self.answer(self.http.get(format!("http://{node}{path}")))
            .await
    }

    /// `/admin/status` of one node, `None` if it does not answer within [`STATUS_TIMEOUT`].
    pub async fn status(&self, node: &str) -> Option<Status> {
        let req = self
            .http
            .get(format!("http://{node}/admin/status"))
            .timeout(STATUS_TIMEOUT);
        match self.answer(req).await {
            Answer::Ok(v) => serde_json::from_value(v).ok(),
            _ => None,
        }
    }
}
