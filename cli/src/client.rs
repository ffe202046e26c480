//! The HTTP client: sends one request to the cluster, failing over between endpoints.
//!
//! It owns endpoint choice and retry policy, and nothing else: it knows the API's error
//! body (`{"code","message"}`), the `x-stockade-served-by` header and `Retry-After`, but
//! not what any command means. Endpoints are tried in order, starting from the last one
//! that answered; a connection error, a timeout, a 503 (no leader, outcome unknown) or a
//! 429 moves on to the next one. Retrying a write is safe: every mutating request
//! carries an idempotency key (or is idempotent by content), so the cluster acts at most
//! once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Full passes over the endpoint list before giving up.
pub const FAILOVER_ROUNDS_MAX: usize = 3;
/// Longest pause between two passes, whatever `Retry-After` says, milliseconds.
pub const RETRY_WAIT_MS_MAX: u64 = 2_000;
/// Pause between passes when the server gave no hint, milliseconds.
pub const RETRY_WAIT_MS_DEFAULT: u64 = 200;
/// Longest error body read from a server, bytes.
pub const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// The response header that names the node that served a request.
pub const SERVED_BY_HEADER: &str = "x-stockade-served-by";

/// Why a request failed. [`ClientError::exit_code`] maps it to the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (a business rejection or bad input).
    #[error("{code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Every endpoint answered "unavailable" (503/429) until the retries ran out.
    #[error("{code}: {message} (after trying every endpoint)")]
    Unavailable { code: String, message: String },
    /// No endpoint could be reached.
    #[error("unreachable: no endpoint answered ({endpoints}): {last}")]
    Unreachable { endpoints: String, last: String },
    /// An answer that is not what the API documents.
    #[error("bad_response: {0}")]
    BadResponse(String),
    /// A local failure (a file, the runtime).
    #[error("local: {0}")]
    Local(String),
}

impl ClientError {
    /// 1 when the server refused, 2 for everything that kept the request from a decision.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Rejected { .. } | ClientError::BadResponse(_) => 1,
            ClientError::Unavailable { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Local(_) => 2,
        }
    }

    /// The server's stable code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Rejected { code, .. } | ClientError::Unavailable { code, .. } => {
                Some(code)
            }
            _ => None,
        }
    }
}

/// The error body every API error carries.
#[derive(serde::Deserialize, Debug)]
struct ErrorBody {
    code: String,
    message: String,
}

/// Reads an error answer into (code, message), whatever its body holds.
pub fn error_of(status: StatusCode, body: &[u8]) -> (String, String) {
    let body = &body[..body.len().min(ERROR_BODY_BYTES_MAX)];
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.code, b.message),
        Err(_) => (
            format!("http_{}", status.as_u16()),
            String::from_utf8_lossy(body).trim().to_string(),
        ),
    }
}

/// The `Retry-After` header (seconds) as milliseconds.
fn retry_after_ms(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1_000))
}

/// The node that served an answer.
pub fn served_by(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(SERVED_BY_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A successful answer and where it came from.
pub struct Answer<T> {
    pub value: T,
    pub served_by: Option<u64>,
    /// Index in the endpoint list of the endpoint that answered.
    pub endpoint: usize,
}

/// The cluster client. Cheap to share behind an `Arc`.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    preferred: AtomicUsize,
}

/// What one attempt on one endpoint came to.
pub enum Attempt {
    /// 2xx.
    Ok(reqwest::Response),
    /// 503 or 429: try another endpoint, or later.
    Unavailable {
        code: String,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// Any other error status: the answer.
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Connection refused, reset, timed out.
    Transport(String),
}

impl Client {
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1_024)
            .build()
            .map_err(|e| ClientError::Local(format!("http client: {e}")))?;
        if endpoints.is_empty() {
            return Err(ClientError::Local("no endpoints".into()));
        }
        Ok(Client {
            http,
            endpoints,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// A client for one endpoint only (e.g. to read a backup from the node that built it).
    pub fn pinned(&self, endpoint: usize) -> Result<Client, ClientError> {
        let e = self
            .endpoints
            .get(endpoint)
            .ok_or_else(|| ClientError::Local(format!("no endpoint {endpoint}")))?;
        Ok(Client {
            http: self.http.clone(),
            endpoints: vec![e.clone()],
            preferred: AtomicUsize::new(0),
        })
    }

    /// One attempt on endpoint `idx`, no retry.
    pub async fn attempt<B: Serialize + ?Sized>(
        &self,
        idx: usize,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Attempt {
        let Some(base) = self.endpoints.get(idx) else {
            return Attempt::Transport(format!("no endpoint {idx}"));
        };
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Transport(format!("{base}: {}", describe(&e))),
        };
        let status = resp.status();
        if status.is_success() {
            return Attempt::Ok(resp);
        }
        let retry = retry_after_ms(&resp);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Transport(format!("{base}: {}", describe(&e))),
        };
        let (code, message) = error_of(status, &bytes);
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            Attempt::Unavailable {
                code,
                message,
                retry_after_ms: retry,
            }
        } else {
            Attempt::Rejected {
                status: status.as_u16(),
                code,
                message,
            }
        }
    }

    /// Sends a request with failover; returns the first successful response.
    pub async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer<reqwest::Response>, ClientError> {
        let n = self.endpoints.len();
        let mut last_unavailable: Option<(String, String)> = None;
        let mut last_transport = String::new();
        for round in 0..FAILOVER_ROUNDS_MAX {
            let start = self.preferred.load(Ordering::Relaxed) % n;
            let mut wait_ms = RETRY_WAIT_MS_DEFAULT;
            for k in 0..n {
                let idx = (start + k) % n;
                match self.attempt(idx, method.clone(), path, body).await {
                    Attempt::Ok(resp) => {
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Ok(Answer {
                            served_by: served_by(&resp),
                            value: resp,
                            endpoint: idx,
                        });
                    }
                    Attempt::Rejected {
                        status,
                        code,
                        message,
                    } => {
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Err(ClientError::Rejected {
                            status,
                            code,
                            message,
                        });
                    }
                    Attempt::Unavailable {
                        code,
                        message,
                        retry_after_ms,
                    } => {
                        if let Some(ms) = retry_after_ms {
                            wait_ms = wait_ms.max(ms);
                        }
                        last_unavailable = Some((code, message));
                    }
                    Attempt::Transport(e) => last_transport = e,
                }
            }
            if round + 1 < FAILOVER_ROUNDS_MAX {
                tokio::time::sleep(Duration::from_millis(wait_ms.min(RETRY_WAIT_MS_MAX))).await;
            }
        }
        match last_unavailable {
            Some((code, message)) => Err(ClientError::Unavailable { code, message }),
            None => Err(ClientError::Unreachable {
                endpoints: self.endpoints.join(","),
                last: last_transport,
            }),
        }
    }

    /// A JSON request with failover, decoded into `T`.
    pub async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer<T>, ClientError> {
        let a = self.send(method, path, body).await?;
        let bytes =
            a.value.bytes().await.map_err(|e| {
                ClientError::BadResponse(format!("reading {path}: {}", describe(&e)))
            })?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::BadResponse(format!("{path}: {e}")))?;
        Ok(Answer {
            value,
            served_by: a.served_by,
            endpoint: a.endpoint,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, ClientError> {
        self.json::<(), T>(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Answer<T>, ClientError> {
        self.json(Method::POST, path, Some(body)).await
    }
}

/// A reqwest error as one line, with its cause (reqwest's own text omits it).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

/// Percent-encodes one path segment (ids are slugs, but user ids may hold anything).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_and_exit_codes() {
        let (c, m) = error_of(
            StatusCode::CONFLICT,
            br#"{"code":"sold_out","message":"gone"}"#,
        );
        assert_eq!((c.as_str(), m.as_str()), ("sold_out", "gone"));
        let (c, m) = error_of(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!((c.as_str(), m.as_str()), ("http_502", "upstream down"));
        let rejected = ClientError::Rejected {
            status: 409,
            code: "sold_out".into(),
            message: "gone".into(),
        };
        assert_eq!(rejected.exit_code(), 1);
        assert_eq!(rejected.to_string(), "sold_out: gone");
        let down = ClientError::Unreachable {
            endpoints: "http://a".into(),
            last: "refused".into(),
        };
        assert_eq!(down.exit_code(), 2);
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(seg("ann"), "ann");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }
}
