//! The HTTP API: the axum router, strict JSON extractors, one handler per route, the
//! request middleware (timeout + metrics), and the OpenAPI document generated from the
//! handlers' annotations.
//!
//! Handlers parse, build a `Command` or pick a read level, call the cluster through
//! [`crate::core`], and shape the answer; every failure goes through [`ApiError`].

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, request::Parts, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stockade_raft_store::types::Reject;
use stockade_raft_store::{query, validate, Command, NodeAddr, Response as Answer};
use utoipa::OpenApi;

use crate::cluster::{Cluster, ReadLevel};
use crate::core::{self, Shared};
use crate::dto::*;
use crate::error::{ApiError, SERVED_BY_HEADER};
use crate::ApiLimits;

/// Most voters one membership change may name (a sanity bound on the request body).
pub const MEMBERSHIP_VOTERS_MAX: usize = 64;
/// Longest address an operator may give for a node.
pub const NODE_ADDR_BYTES_MAX: usize = 256;

type St<C> = State<Arc<Shared<C>>>;
type ApiResult = Result<Response, ApiError>;

/// The HTTP router over `cluster` (its own metrics; use [`crate::Api`] to share them
/// with gRPC).
pub fn http_router<C: Cluster>(cluster: Arc<C>, limits: ApiLimits) -> Router {
    crate::Api::new(cluster, limits).http_router()
}

// ---- extractors ------------------------------------------------------------------

/// `axum::Json` whose rejections (bad JSON, unknown fields, wrong types, too large,
/// wrong content type) become the API's JSON errors instead of axum's plain text.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(r.into()),
        }
    }
}

/// `axum::extract::Path` with JSON errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(r.into()),
        }
    }
}

/// `axum::extract::Query` with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(r.into()),
        }
    }
}

// ---- router ----------------------------------------------------------------------

/// One route of the router: what the OpenAPI test compares with the document.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteSpec {
    /// Upper-case HTTP method.
    pub method: &'static str,
    /// axum/OpenAPI path template (`/v1/sales/{id}`).
    pub path: &'static str,
}

#[derive(Clone, Copy)]
enum M {
    Get,
    Post,
    Put,
    Delete,
}

impl M {
    fn parts(self) -> (&'static str, MethodFilter) {
        match self {
            M::Get => ("GET", MethodFilter::GET),
            M::Post => ("POST", MethodFilter::POST),
            M::Put => ("PUT", MethodFilter::PUT),
            M::Delete => ("DELETE", MethodFilter::DELETE),
        }
    }
}

/// Builds the router and records every (method, path) it adds.
struct Builder<S> {
    router: Router<S>,
    table: Vec<RouteSpec>,
}

impl<S: Clone + Send + Sync + 'static> Builder<S> {
    fn add<H, T>(mut self, m: M, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let (method, filter) = m.parts();
        self.table.push(RouteSpec { method, path });
        self.router = self.router.route(path, on(filter, handler));
        self
    }
}

pub(crate) fn build<C: Cluster>(shared: Arc<Shared<C>>) -> (Router, Vec<RouteSpec>) {
    use M::*;
    let b = Builder {
        router: Router::new(),
        table: Vec::new(),
    };
    let b = b
        .add(Post, "/v1/sales", create_sale::<C>)
        .add(Get, "/v1/sales", list_sales::<C>)
        .add(Get, "/v1/sales/{id}", get_sale::<C>)
        .add(Put, "/v1/sales/{id}", update_sale::<C>)
        .add(Post, "/v1/sales/{id}/end", end_sale::<C>)
        .add(Get, "/v1/sales/{id}/stats", sale_stats::<C>)
        .add(Post, "/v1/sales/{id}/holds", reserve::<C>)
        .add(Get, "/v1/holds/{id}", get_hold::<C>)
        .add(Post, "/v1/holds/{id}/release", release::<C>)
        .add(Post, "/v1/holds/{id}/checkout", checkout::<C>)
        .add(Get, "/v1/orders/{id}", get_order::<C>)
        .add(Get, "/v1/users/{user_id}/orders", user_orders::<C>)
        .add(Get, "/v1/users/{user_id}/holds", user_holds::<C>)
        .add(Post, "/v1/orders/{id}/payment", confirm_payment::<C>)
        .add(Post, "/v1/orders/{id}/payment-failure", fail_payment::<C>)
        .add(Post, "/v1/orders/{id}/cancel", cancel_order::<C>)
        .add(Post, "/v1/sales/{id}/waitlist", join_waitlist::<C>)
        .add(
            Delete,
            "/v1/sales/{id}/waitlist/{user_id}",
            leave_waitlist::<C>,
        )
        .add(
            Get,
            "/v1/sales/{id}/waitlist/{user_id}",
            waitlist_position::<C>,
        )
        .add(Get, "/admin/status", admin_status::<C>)
        .add(Get, "/admin/state-hash", admin_state_hash::<C>)
        .add(Post, "/admin/init", init_cluster::<C>)
        .add(Post, "/admin/learners", add_learner::<C>)
        .add(Post, "/admin/membership", change_membership::<C>)
        .add(Post, "/admin/leader", transfer_leader::<C>)
        .add(Post, "/admin/snapshot", trigger_snapshot::<C>)
        .add(Post, "/admin/compact", compact::<C>)
        .add(Get, "/admin/backup", backup::<C>)
        .add(Get, "/healthz", healthz::<C>)
        .add(Get, "/readyz", readyz::<C>)
        .add(Get, "/metrics", metrics::<C>)
        .add(Get, "/openapi.json", openapi_json);
    let body_limit = shared.limits.request_body_bytes_max;
    let router = b
        .router
        .fallback(|uri: Uri| async move { ApiError::RouteNotFound(uri.path().to_string()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Tracking {
                shared: shared.clone(),
                routes: Arc::new(b.table.iter().map(|r| r.path).collect()),
            },
            track::<C>,
        ))
        .with_state(shared);
    (router, b.table)
}

/// What [`track`] needs: the shared state and the route templates, so that a request's
/// metric labels are the router's own `&'static str`s (nothing allocated per request).
struct Tracking<C> {
    shared: Arc<Shared<C>>,
    routes: Arc<HashSet<&'static str>>,
}

// By hand: a derive would ask `C: Clone`, and only the `Arc`s are cloned.
impl<C> Clone for Tracking<C> {
    fn clone(&self) -> Self {
        Tracking {
            shared: self.shared.clone(),
            routes: self.routes.clone(),
        }
    }
}

/// A method's metric label: the methods the router serves (HEAD with GET), else `other`.
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Bounds each request by the timeout and records its route, status and latency.
async fn track<C: Cluster>(State(t): State<Tracking<C>>, req: Request, next: Next) -> Response {
    let s = &t.shared;
    let route: &'static str = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| t.routes.get(m.as_str()).copied())
        .unwrap_or("unmatched");
    let method = method_label(req.method());
    let timeout_ms = if route.starts_with("/admin/") {
        s.limits.admin_request_timeout_ms
    } else {
        s.limits.request_timeout_ms
    };
    let start = Instant::now();
    let resp = match tokio::time::timeout(Duration::from_millis(timeout_ms), next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout {
            after_ms: timeout_ms,
        }
        .into_response(),
    };
    s.metrics.request(
        route,
        method,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

// ---- helpers ---------------------------------------------------------------------

/// A JSON success answer tagged with the node that served it.
fn reply<T: Serialize>(status: StatusCode, served_by: u64, body: T) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut()
        .insert(SERVED_BY_HEADER, HeaderValue::from(served_by));
    r
}

fn level(c: Option<Consistency>) -> ReadLevel {
    c.unwrap_or_default().into()
}

/// The page size a client asked for, within the named limits.
pub(crate) fn page_limit(limit: Option<u32>, l: &ApiLimits) -> Result<usize, ApiError> {
    let n = match limit {
        None => l.list_limit_default,
        Some(n) if (1..=l.list_limit_max).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                format!("must be 1..={}", l.list_limit_max),
            ))
        }
    };
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn check_sale_id(id: &str) -> Result<(), ApiError> {
    validate::sale_id_field("sale_id", id).map_err(|reject| ApiError::Rejected {
        reject,
        served_by: None,
    })
}

fn check_user_id(id: &str) -> Result<(), ApiError> {
    validate::user_id_field(id).map_err(|reject| ApiError::Rejected {
        reject,
        served_by: None,
    })
}

fn not_found(reject: Reject, served_by: u64) -> ApiError {
    ApiError::Rejected {
        reject,
        served_by: Some(served_by),
    }
}

async fn propose<C: Cluster>(s: &Shared<C>, cmd: Command) -> Result<(Answer, u64), ApiError> {
    let served = core::propose(&*s.cluster, &s.metrics, cmd).await?;
    Ok((served.value, served.served_by))
}

// ---- sales -----------------------------------------------------------------------

/// Create a sale (idempotent by content: repeating the same spec is a no-op).
#[utoipa::path(post, path = "/v1/sales", tag = "sales", request_body = SaleSpecDto,
    responses(
        (status = 201, description = "Created", body = SaleIdDto),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "A different sale with this id exists", body = ErrorBody),
        (status = 503, description = "No leader; retry after Retry-After", body = ErrorBody)))]
async fn create_sale<C: Cluster>(
    State(s): St<C>,
    ApiJson(spec): ApiJson<SaleSpecDto>,
) -> ApiResult {
    match propose(&s, Command::CreateSale(Box::new(spec.into()))).await? {
        (Answer::SaleCreated { sale_id }, by) => {
            Ok(reply(StatusCode::CREATED, by, SaleIdDto { sale_id }))
        }
        (other, _) => Err(core::unexpected("create_sale", &other)),
    }
}

/// Replace the spec of a sale that has not started.
#[utoipa::path(put, path = "/v1/sales/{id}", tag = "sales", request_body = SaleSpecDto,
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 200, description = "Updated", body = SaleIdDto),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such sale", body = ErrorBody),
        (status = 409, description = "The sale has started", body = ErrorBody)))]
async fn update_sale<C: Cluster>(
    State(s): St<C>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<SaleSpecDto>,
) -> ApiResult {
    if spec.id != id {
        return Err(ApiError::invalid(
            "id",
            "must equal the sale id in the path",
        ));
    }
    match propose(&s, Command::UpdateSale(Box::new(spec.into()))).await? {
        (Answer::SaleUpdated { sale_id }, by) => {
            Ok(reply(StatusCode::OK, by, SaleIdDto { sale_id }))
        }
        (other, _) => Err(core::unexpected("update_sale", &other)),
    }
}

/// List sales in id order.
#[utoipa::path(get, path = "/v1/sales", tag = "sales", params(ListSalesQuery),
    responses(
        (status = 200, description = "A page of sales", body = SaleListDto),
        (status = 400, description = "Invalid query", body = ErrorBody)))]
async fn list_sales<C: Cluster>(
    State(s): St<C>,
    ApiQuery(q): ApiQuery<ListSalesQuery>,
) -> ApiResult {
    let limit = page_limit(q.limit, &s.limits)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    let sales = query::sales(&view.value, q.after.as_deref(), limit)?;
    let next_after = next_after(&sales, limit, |v| v.spec.id.clone());
    let sales = sales.into_iter().map(SaleDto::from).collect();
    Ok(reply(
        StatusCode::OK,
        view.served_by,
        SaleListDto { sales, next_after },
    ))
}

/// A sale: product, prices, status and live counters.
#[utoipa::path(get, path = "/v1/sales/{id}", tag = "sales",
    params(("id" = String, Path, description = "Sale id"), ReadQuery),
    responses(
        (status = 200, description = "The sale", body = SaleDto),
        (status = 404, description = "No such sale", body = ErrorBody)))]
async fn get_sale<C: Cluster>(
    State(s): St<C>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult {
    check_sale_id(&id)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    match query::sale(&view.value, &id)? {
        Some(sale) => Ok(reply(StatusCode::OK, view.served_by, SaleDto::from(sale))),
        None => Err(not_found(Reject::SaleNotFound, view.served_by)),
    }
}

/// End a sale now (idempotent).
#[utoipa::path(post, path = "/v1/sales/{id}/end", tag = "sales",
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 200, description = "Ended", body = SaleEndedDto),
        (status = 404, description = "No such sale", body = ErrorBody)))]
async fn end_sale<C: Cluster>(State(s): St<C>, ApiPath(id): ApiPath<String>) -> ApiResult {
    match propose(&s, Command::EndSale { sale_id: id }).await? {
        (
            Answer::SaleEnded {
                sale_id,
                ended_at_ms,
            },
            by,
        ) => Ok(reply(
            StatusCode::OK,
            by,
            SaleEndedDto {
                sale_id,
                ended_at_ms,
            },
        )),
        (other, _) => Err(core::unexpected("end_sale", &other)),
    }
}

/// A sale's statistics.
#[utoipa::path(get, path = "/v1/sales/{id}/stats", tag = "sales",
    params(("id" = String, Path, description = "Sale id"), ReadQuery),
    responses(
        (status = 200, description = "Statistics", body = SaleStatsDto),
        (status = 404, description = "No such sale", body = ErrorBody)))]
async fn sale_stats<C: Cluster>(
    State(s): St<C>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult {
    check_sale_id(&id)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    match query::sale(&view.value, &id)? {
        Some(sale) => Ok(reply(StatusCode::OK, view.served_by, stats_dto(&sale))),
        None => Err(not_found(Reject::SaleNotFound, view.served_by)),
    }
}

// ---- holds -----------------------------------------------------------------------

/// Reserve units: a hold that expires unless checked out.
#[utoipa::path(post, path = "/v1/sales/{id}/holds", tag = "holds", request_body = ReserveBody,
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 201, description = "Held", body = HoldGrantDto),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such sale", body = ErrorBody),
        (status = 409, description = "sold_out, limit_exceeded, sale_not_started, ...", body = ErrorBody),
        (status = 429, description = "Overloaded; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "No leader or outcome unknown", body = ErrorBody)))]
async fn reserve<C: Cluster>(
    State(s): St<C>,
    ApiPath(sale_id): ApiPath<String>,
    ApiJson(b): ApiJson<ReserveBody>,
) -> ApiResult {
    let cmd = Command::Reserve {
        sale_id,
        user_id: b.user_id,
        qty: b.qty,
        request_id: b.request_id,
    };
    let attempt = core::Attempt::from_flag(b.first_attempt);
    let served = core::propose_as(&*s.cluster, &s.metrics, cmd, attempt).await?;
    match (served.value, served.served_by) {
        (Answer::Held(g), by) => Ok(reply(StatusCode::CREATED, by, HoldGrantDto::from(g))),
        (other, _) => Err(core::unexpected("reserve", &other)),
    }
}

/// A hold and its state.
#[utoipa::path(get, path = "/v1/holds/{id}", tag = "holds",
    params(("id" = u64, Path, description = "Hold id"), ReadQuery),
    responses(
        (status = 200, description = "The hold", body = HoldDto),
        (status = 404, description = "No such hold", body = ErrorBody)))]
async fn get_hold<C: Cluster>(
    State(s): St<C>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult {
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    match query::hold(&view.value, id)? {
        Some(h) => Ok(reply(StatusCode::OK, view.served_by, HoldDto::from(h))),
        None => Err(not_found(Reject::HoldNotFound, view.served_by)),
    }
}

/// Give a hold's units back.
#[utoipa::path(post, path = "/v1/holds/{id}/release", tag = "holds", request_body = UserRequestBody,
    params(("id" = u64, Path, description = "Hold id")),
    responses(
        (status = 200, description = "Released", body = HoldIdDto),
        (status = 403, description = "Another user's hold", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 409, description = "The hold is not active", body = ErrorBody)))]
async fn release<C: Cluster>(
    State(s): St<C>,
    ApiPath(hold_id): ApiPath<u64>,
    ApiJson(b): ApiJson<UserRequestBody>,
) -> ApiResult {
    let cmd = Command::Release {
        user_id: b.user_id,
        hold_id,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::Released { hold_id }, by) => Ok(reply(StatusCode::OK, by, HoldIdDto { hold_id })),
        (other, _) => Err(core::unexpected("release", &other)),
    }
}

/// Turn a hold into an order.
#[utoipa::path(post, path = "/v1/holds/{id}/checkout", tag = "holds", request_body = UserRequestBody,
    params(("id" = u64, Path, description = "Hold id")),
    responses(
        (status = 201, description = "Order created", body = OrderInfoDto),
        (status = 403, description = "Another user's hold", body = ErrorBody),
        (status = 404, description = "No such hold", body = ErrorBody),
        (status = 409, description = "hold_expired, hold_not_active", body = ErrorBody)))]
async fn checkout<C: Cluster>(
    State(s): St<C>,
    ApiPath(hold_id): ApiPath<u64>,
    ApiJson(b): ApiJson<UserRequestBody>,
) -> ApiResult {
    let cmd = Command::Checkout {
        user_id: b.user_id,
        hold_id,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::CheckedOut(o), by) => Ok(reply(StatusCode::CREATED, by, OrderInfoDto::from(o))),
        (other, _) => Err(core::unexpected("checkout", &other)),
    }
}

// ---- orders ----------------------------------------------------------------------

/// An order.
#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = u64, Path, description = "Order id"), ReadQuery),
    responses(
        (status = 200, description = "The order", body = OrderDto),
        (status = 404, description = "No such order", body = ErrorBody)))]
async fn get_order<C: Cluster>(
    State(s): St<C>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult {
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    match query::order(&view.value, id)? {
        Some(o) => Ok(reply(StatusCode::OK, view.served_by, OrderDto::from(o))),
        None => Err(not_found(Reject::OrderNotFound, view.served_by)),
    }
}

/// A user's orders in id order.
#[utoipa::path(get, path = "/v1/users/{user_id}/orders", tag = "orders",
    params(("user_id" = String, Path, description = "User id"), ListOrdersQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderListDto),
        (status = 400, description = "Invalid query", body = ErrorBody)))]
async fn user_orders<C: Cluster>(
    State(s): St<C>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListOrdersQuery>,
) -> ApiResult {
    check_user_id(&user_id)?;
    let limit = page_limit(q.limit, &s.limits)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    let orders = query::user_orders(&view.value, &user_id, q.after, limit)?;
    let next_after = next_after(&orders, limit, |o| o.id);
    let orders = orders.into_iter().map(OrderDto::from).collect();
    Ok(reply(
        StatusCode::OK,
        view.served_by,
        OrderListDto { orders, next_after },
    ))
}

/// The key to continue a listing after a full page; `None` after the last page.
fn next_after<T, K>(page: &[T], limit: usize, key: impl Fn(&T) -> K) -> Option<K> {
    if page.len() == limit {
        page.last().map(key)
    } else {
        None
    }
}

/// A user's holds in id order, in every state (a waitlist promotion shows up here too).
#[utoipa::path(get, path = "/v1/users/{user_id}/holds", tag = "holds",
    params(("user_id" = String, Path, description = "User id"), ListOrdersQuery),
    responses(
        (status = 200, description = "A page of holds", body = HoldListDto),
        (status = 400, description = "Invalid query", body = ErrorBody)))]
async fn user_holds<C: Cluster>(
    State(s): St<C>,
    ApiPath(user_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListOrdersQuery>,
) -> ApiResult {
    check_user_id(&user_id)?;
    let limit = page_limit(q.limit, &s.limits)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    let holds = query::user_holds(&view.value, &user_id, q.after, limit)?;
    let next_after = next_after(&holds, limit, |h| h.id);
    let holds = holds.into_iter().map(HoldDto::from).collect();
    Ok(reply(
        StatusCode::OK,
        view.served_by,
        HoldListDto { holds, next_after },
    ))
}

/// Record a payment (the payment provider's callback).
#[utoipa::path(post, path = "/v1/orders/{id}/payment", tag = "orders", request_body = PaymentBody,
    params(("id" = u64, Path, description = "Order id")),
    responses(
        (status = 200, description = "Paid", body = OrderIdDto),
        (status = 409, description = "amount_mismatch, payment_window_expired, ...", body = ErrorBody)))]
async fn confirm_payment<C: Cluster>(
    State(s): St<C>,
    ApiPath(order_id): ApiPath<u64>,
    ApiJson(b): ApiJson<PaymentBody>,
) -> ApiResult {
    let cmd = Command::ConfirmPayment {
        user_id: b.user_id,
        order_id,
        amount_minor: b.amount_minor,
        currency: b.currency,
        payment_ref: b.payment_ref,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::Paid { order_id }, by) => Ok(reply(StatusCode::OK, by, OrderIdDto { order_id })),
        (other, _) => Err(core::unexpected("confirm_payment", &other)),
    }
}

/// Record a failed payment: the order is cancelled and its units return.
#[utoipa::path(post, path = "/v1/orders/{id}/payment-failure", tag = "orders", request_body = PaymentFailureBody,
    params(("id" = u64, Path, description = "Order id")),
    responses(
        (status = 200, description = "Cancelled", body = OrderIdDto),
        (status = 409, description = "The order is not awaiting payment", body = ErrorBody)))]
async fn fail_payment<C: Cluster>(
    State(s): St<C>,
    ApiPath(order_id): ApiPath<u64>,
    ApiJson(b): ApiJson<PaymentFailureBody>,
) -> ApiResult {
    let cmd = Command::FailPayment {
        user_id: b.user_id,
        order_id,
        reason: b.reason,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::PaymentFailed { order_id }, by) => {
            Ok(reply(StatusCode::OK, by, OrderIdDto { order_id }))
        }
        (other, _) => Err(core::unexpected("fail_payment", &other)),
    }
}

/// Cancel an order awaiting payment.
#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders", request_body = UserRequestBody,
    params(("id" = u64, Path, description = "Order id")),
    responses(
        (status = 200, description = "Cancelled", body = OrderIdDto),
        (status = 403, description = "Another user's order", body = ErrorBody),
        (status = 409, description = "The order cannot be cancelled", body = ErrorBody)))]
async fn cancel_order<C: Cluster>(
    State(s): St<C>,
    ApiPath(order_id): ApiPath<u64>,
    ApiJson(b): ApiJson<UserRequestBody>,
) -> ApiResult {
    let cmd = Command::CancelOrder {
        user_id: b.user_id,
        order_id,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::Cancelled { order_id }, by) => {
            Ok(reply(StatusCode::OK, by, OrderIdDto { order_id }))
        }
        (other, _) => Err(core::unexpected("cancel_order", &other)),
    }
}

// ---- waitlist --------------------------------------------------------------------

/// Queue for units of a sold-out sale.
#[utoipa::path(post, path = "/v1/sales/{id}/waitlist", tag = "waitlist", request_body = ReserveBody,
    params(("id" = String, Path, description = "Sale id")),
    responses(
        (status = 201, description = "Queued", body = WaitlistJoinedDto),
        (status = 409, description = "not_sold_out, already_waitlisted, waitlist_full", body = ErrorBody)))]
async fn join_waitlist<C: Cluster>(
    State(s): St<C>,
    ApiPath(sale_id): ApiPath<String>,
    ApiJson(b): ApiJson<ReserveBody>,
) -> ApiResult {
    let cmd = Command::JoinWaitlist {
        sale_id,
        user_id: b.user_id,
        qty: b.qty,
        request_id: b.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::WaitlistJoined { sale_id, position }, by) => Ok(reply(
            StatusCode::CREATED,
            by,
            WaitlistJoinedDto { sale_id, position },
        )),
        (other, _) => Err(core::unexpected("join_waitlist", &other)),
    }
}

/// Leave a sale's waitlist.
#[utoipa::path(delete, path = "/v1/sales/{id}/waitlist/{user_id}", tag = "waitlist",
    params(("id" = String, Path, description = "Sale id"),
           ("user_id" = String, Path, description = "User id"), LeaveWaitlistQuery),
    responses(
        (status = 200, description = "Left", body = SaleIdDto),
        (status = 409, description = "not_waitlisted", body = ErrorBody)))]
async fn leave_waitlist<C: Cluster>(
    State(s): St<C>,
    ApiPath((sale_id, user_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<LeaveWaitlistQuery>,
) -> ApiResult {
    let cmd = Command::LeaveWaitlist {
        sale_id,
        user_id,
        request_id: q.request_id,
    };
    match propose(&s, cmd).await? {
        (Answer::WaitlistLeft { sale_id }, by) => {
            Ok(reply(StatusCode::OK, by, SaleIdDto { sale_id }))
        }
        (other, _) => Err(core::unexpected("leave_waitlist", &other)),
    }
}

/// Where a user stands on a sale's waitlist.
#[utoipa::path(get, path = "/v1/sales/{id}/waitlist/{user_id}", tag = "waitlist",
    params(("id" = String, Path, description = "Sale id"),
           ("user_id" = String, Path, description = "User id"), ReadQuery),
    responses(
        (status = 200, description = "Position", body = WaitlistStatusDto),
        (status = 404, description = "No such sale", body = ErrorBody)))]
async fn waitlist_position<C: Cluster>(
    State(s): St<C>,
    ApiPath((sale_id, user_id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> ApiResult {
    check_sale_id(&sale_id)?;
    check_user_id(&user_id)?;
    let view = core::read(&*s.cluster, level(q.consistency)).await?;
    if query::sale(&view.value, &sale_id)?.is_none() {
        return Err(not_found(Reject::SaleNotFound, view.served_by));
    }
    let w = query::waitlist_status(&view.value, &sale_id, &user_id)?;
    Ok(reply(
        StatusCode::OK,
        view.served_by,
        WaitlistStatusDto::from(w),
    ))
}

// ---- admin -----------------------------------------------------------------------

async fn status_reply<C: Cluster>(s: &Shared<C>) -> ApiResult {
    let st = s.cluster.status().await?;
    Ok(reply(
        StatusCode::OK,
        s.cluster.node_id(),
        ClusterStatusDto::from(st),
    ))
}

pub(crate) fn check_addr(field: &str, addr: &str) -> Result<(), ApiError> {
    if addr.is_empty() || addr.len() > NODE_ADDR_BYTES_MAX {
        return Err(ApiError::invalid(
            field,
            format!("must be 1..={NODE_ADDR_BYTES_MAX} bytes"),
        ));
    }
    if !addr.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

pub(crate) fn check_voters(voters: &[u64]) -> Result<BTreeSet<u64>, ApiError> {
    if voters.is_empty() || voters.len() > MEMBERSHIP_VOTERS_MAX {
        return Err(ApiError::invalid(
            "voters",
            format!("must name 1..={MEMBERSHIP_VOTERS_MAX} nodes"),
        ));
    }
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    if set.len() != voters.len() {
        return Err(ApiError::invalid("voters", "must not repeat a node"));
    }
    Ok(set)
}

/// This node's view of the cluster.
#[utoipa::path(get, path = "/admin/status", tag = "admin",
    responses((status = 200, description = "Cluster status", body = ClusterStatusDto)))]
async fn admin_status<C: Cluster>(State(s): St<C>) -> ApiResult {
    status_reply(&s).await
}

/// This replica's applied index and state hash (replicas at the same applied index have
/// equal hashes). Reads the whole state machine: for audits and fault-injection checks.
#[utoipa::path(get, path = "/admin/state-hash", tag = "admin",
    responses((status = 200, description = "State fingerprint", body = StateHashDto)))]
async fn admin_state_hash<C: Cluster>(State(s): St<C>) -> ApiResult {
    let h = s.cluster.state_hash().await?;
    Ok(reply(
        StatusCode::OK,
        s.cluster.node_id(),
        StateHashDto {
            node_id: h.node_id,
            applied_index: h.applied_index,
            state_hash: h.state_hash,
        },
    ))
}

/// Initialize a new cluster on a node started with `--init never`: the given voters (or
/// this node alone). Refused with 409 if the node already belongs to a cluster.
#[utoipa::path(post, path = "/admin/init", tag = "admin", request_body = InitBody,
    responses(
        (status = 200, description = "Initialized; the new status", body = ClusterStatusDto),
        (status = 409, description = "Already initialized", body = ErrorBody)))]
async fn init_cluster<C: Cluster>(State(s): St<C>, ApiJson(b): ApiJson<InitBody>) -> ApiResult {
    let members = init_members(
        b.members
            .into_iter()
            .map(|m| (m.node_id, m.raft_addr, m.api_addr)),
    )?;
    s.cluster.initialize(members).await?;
    status_reply(&s).await
}

/// Checks the first voters of a new cluster (shared by HTTP and gRPC `init`).
pub(crate) fn init_members(
    items: impl ExactSizeIterator<Item = (u64, String, String)>,
) -> Result<std::collections::BTreeMap<u64, NodeAddr>, ApiError> {
    if items.len() > MEMBERSHIP_VOTERS_MAX {
        return Err(ApiError::invalid(
            "members",
            format!("at most {MEMBERSHIP_VOTERS_MAX}"),
        ));
    }
    let mut members = std::collections::BTreeMap::new();
    for (node_id, raft_addr, api_addr) in items {
        check_addr("raft_addr", &raft_addr)?;
        check_addr("api_addr", &api_addr)?;
        let addr = NodeAddr {
            raft_addr,
            api_addr,
        };
        if members.insert(node_id, addr).is_some() {
            return Err(ApiError::invalid(
                "members",
                format!("node {node_id} is listed twice"),
            ));
        }
    }
    Ok(members)
}

/// Add a node as a learner (it catches up before it may become a voter).
#[utoipa::path(post, path = "/admin/learners", tag = "admin", request_body = AddLearnerBody,
    responses(
        (status = 200, description = "Added; the new status", body = ClusterStatusDto),
        (status = 409, description = "Refused", body = ErrorBody)))]
async fn add_learner<C: Cluster>(
    State(s): St<C>,
    ApiJson(b): ApiJson<AddLearnerBody>,
) -> ApiResult {
    check_addr("raft_addr", &b.raft_addr)?;
    check_addr("api_addr", &b.api_addr)?;
    let addr = NodeAddr {
        raft_addr: b.raft_addr,
        api_addr: b.api_addr,
    };
    s.cluster.add_learner(b.node_id, addr).await?;
    status_reply(&s).await
}

/// Set the voters.
#[utoipa::path(post, path = "/admin/membership", tag = "admin", request_body = MembershipBody,
    responses(
        (status = 200, description = "Changed; the new status", body = ClusterStatusDto),
        (status = 409, description = "Refused", body = ErrorBody)))]
async fn change_membership<C: Cluster>(
    State(s): St<C>,
    ApiJson(b): ApiJson<MembershipBody>,
) -> ApiResult {
    let voters = check_voters(&b.voters)?;
    s.cluster.change_membership(voters, b.retain).await?;
    status_reply(&s).await
}

/// Hand leadership to another voter.
#[utoipa::path(post, path = "/admin/leader", tag = "admin", request_body = TransferLeaderBody,
    responses(
        (status = 200, description = "Transferred; the new status", body = ClusterStatusDto),
        (status = 409, description = "Refused", body = ErrorBody)))]
async fn transfer_leader<C: Cluster>(
    State(s): St<C>,
    ApiJson(b): ApiJson<TransferLeaderBody>,
) -> ApiResult {
    s.cluster.transfer_leader(b.to).await?;
    status_reply(&s).await
}

/// Build a snapshot now.
#[utoipa::path(post, path = "/admin/snapshot", tag = "admin",
    responses((status = 200, description = "Built; the new status", body = ClusterStatusDto)))]
async fn trigger_snapshot<C: Cluster>(State(s): St<C>) -> ApiResult {
    s.cluster.trigger_snapshot().await?;
    status_reply(&s).await
}

/// Compact this node's state machine now: RocksDB rewrites its files without the versions
/// deleted or overwritten since (a sale leaves a tombstone for every expired hold and,
/// an hour on, every idempotency record). Local to this node; run it on each. Requests
/// go on meanwhile; the compaction runs at the node's `--compaction-priority`.
#[utoipa::path(post, path = "/admin/compact", tag = "admin",
    responses((status = 200, description = "Compacted", body = CompactedDto)))]
async fn compact<C: Cluster>(State(s): St<C>) -> ApiResult {
    let c = s.cluster.compact().await?;
    Ok(reply(
        StatusCode::OK,
        s.cluster.node_id(),
        CompactedDto {
            node_id: s.cluster.node_id(),
            sst_bytes_before: c.sst_bytes_before,
            sst_bytes_after: c.sst_bytes_after,
            took_ms: c.took_ms,
        },
    ))
}

/// Download this node's latest snapshot (a backup `stockctl restore` can load).
#[utoipa::path(get, path = "/admin/backup", tag = "admin",
    responses(
        (status = 200, description = "The snapshot file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No snapshot yet", body = ErrorBody)))]
async fn backup<C: Cluster>(State(s): St<C>) -> ApiResult {
    let b = s.cluster.backup().await?;
    let stream = core::file_chunks(b.file, b.len_bytes, s.limits.backup_chunk_bytes)
        .map(|r| r.map(axum::body::Bytes::from));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len_bytes));
    h.insert(SERVED_BY_HEADER, HeaderValue::from(s.cluster.node_id()));
    if let Some(i) = b.last_index {
        h.insert("x-stockade-snapshot-index", HeaderValue::from(i));
    }
    Ok(resp)
}

// ---- operations ------------------------------------------------------------------

/// 200 while the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Up", body = HealthDto)))]
async fn healthz<C: Cluster>(State(s): St<C>) -> Response {
    let id = s.cluster.node_id();
    reply(
        StatusCode::OK,
        id,
        HealthDto {
            status: "ok".into(),
            node_id: id,
        },
    )
}

/// 200 only when a leader is known and this node has applied what it knows committed.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = ReadinessDto),
        (status = 503, description = "Not ready", body = ErrorBody)))]
async fn readyz<C: Cluster>(State(s): St<C>) -> ApiResult {
    let r = s.cluster.readiness();
    if r.has_leader && r.caught_up {
        Ok(reply(
            StatusCode::OK,
            s.cluster.node_id(),
            ReadinessDto {
                has_leader: true,
                caught_up: true,
            },
        ))
    } else {
        Err(ApiError::NotReady {
            has_leader: r.has_leader,
            caught_up: r.caught_up,
        })
    }
}

/// Prometheus (OpenMetrics) text: the API's metrics, then the cluster's.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String)))]
async fn metrics<C: Cluster>(State(s): St<C>) -> Response {
    let text = s.metrics.encode(&s.cluster.metrics_text());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Stockade",
        description = "Raft-replicated flash-sale inventory: sales, holds, orders, waitlists, and cluster administration."
    ),
    paths(
        create_sale,
        list_sales,
        get_sale,
        update_sale,
        end_sale,
        sale_stats,
        reserve,
        get_hold,
        release,
        checkout,
        get_order,
        user_orders,
        user_holds,
        confirm_payment,
        fail_payment,
        cancel_order,
        join_waitlist,
        leave_waitlist,
        waitlist_position,
        admin_status,
        admin_state_hash,
        init_cluster,
        add_learner,
        change_membership,
        transfer_leader,
        trigger_snapshot,
        compact,
        backup,
        healthz,
        readyz,
        metrics,
        openapi_json,
    )
)]
struct ApiDoc;

/// The OpenAPI 3 document of the HTTP API, generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
