//! The API's Prometheus metrics: requests by route, method and status, request latency,
//! units reserved, and rejections by code. `/metrics` encodes them and appends the
//! cluster's own text.
//!
//! Labels are `&'static str` (route templates, method names and rejection codes are all
//! fixed at build time), so counting a request allocates nothing: with `String` labels
//! every request built six strings (two to find its counter, two its histogram, two
//! before that in the HTTP layer) just to look up counters that already existed.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: a reservation is a Raft round trip; slow ones are what matters.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// One node's API metrics, shared by the HTTP and gRPC servers.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    holds_granted: Counter,
    units_reserved: Counter,
    rejections: Family<CodeLabels, Counter>,
    refusals_from_reads: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stockade_api");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let holds_granted = Counter::default();
        let units_reserved = Counter::default();
        let rejections = Family::<CodeLabels, Counter>::default();
        let refusals_from_reads = Counter::default();
        registry.register(
            "requests",
            "Requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by route and method",
            latency.clone(),
        );
        registry.register(
            "holds_granted",
            "Reservations granted (holds)",
            holds_granted.clone(),
        );
        registry.register(
            "units_reserved",
            "Units reserved by granted holds",
            units_reserved.clone(),
        );
        registry.register(
            "rejections",
            "Business rejections by code",
            rejections.clone(),
        );
        registry.register(
            "refusals_from_reads",
            "Rejections of first-attempt reservations decided from a linearizable read, \
             without a log entry (also counted in rejections)",
            refusals_from_reads.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            holds_granted,
            units_reserved,
            rejections,
            refusals_from_reads,
        }
    }

    /// Counts one finished request. `route` is the route template, never the raw path,
    /// so ids do not explode the label space.
    pub fn request(&self, route: &'static str, method: &'static str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route, method })
            .observe(seconds);
    }

    pub fn reserved(&self, qty: u32) {
        self.holds_granted.inc();
        self.units_reserved.inc_by(u64::from(qty));
    }

    /// A rejection decided from a read (counted by code in `rejected` too).
    pub fn refused_from_read(&self) {
        self.refusals_from_reads.inc();
    }

    pub fn rejected(&self, code: &'static str) {
        self.rejections.get_or_create(&CodeLabels { code }).inc();
    }

    /// OpenMetrics text of the API's metrics followed by `extra` (the cluster's), then
    /// the closing `# EOF`.
    pub fn encode(&self, extra: &str) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail except through a bug in a label encoder;
        // a partial page is still better than none.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        out.push_str(extra);
        if !extra.is_empty() && !extra.ends_with('\n') {
            out.push('\n');
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}
