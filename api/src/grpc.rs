//! The gRPC API: `stockade.v1.Stockade` and `stockade.v1.Admin` over the same
//! [`Cluster`], validation and error mapping as HTTP, plus server reflection.
//!
//! `ReserveStream` and `PurchaseStream` propose up to `ApiLimits::stream_in_flight_max`
//! requests of one stream at once and answer each as it completes; a business rejection
//! is an item's `error`, never the end of the stream. Every write is one function here
//! (`reserve`, `checkout`, ...) that the unary call and both streams share, so a command
//! is validated, proposed and answered the same way on every path.

use std::pin::Pin;
use std::sync::Arc;

use futures::future::{self, Either};
use futures::{FutureExt, Stream, StreamExt};
use stockade_proto::v1 as pb;
use stockade_raft_store::query::{self, SaleView};
use stockade_raft_store::types::{self as t, HoldRecord, OrderRecord};
use stockade_raft_store::{validate, Command, NodeAddr, Reject, Response as Answer};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::cluster::{Cluster, ClusterStatus, ReadLevel};
use crate::core::{self, Shared};
use crate::error::{ApiError, SERVED_BY_HEADER};
use crate::http::{check_addr, check_voters};
use crate::ApiLimits;

type GrpcResult<T> = Result<Response<T>, Status>;

/// The gRPC services over `cluster` (its own metrics; use [`crate::Api`] to share them
/// with HTTP), with default limits.
pub fn grpc_routes<C: Cluster>(cluster: Arc<C>) -> tonic::service::Routes {
    crate::Api::new(cluster, ApiLimits::default()).grpc_routes()
}

pub(crate) fn routes<C: Cluster>(shared: Arc<Shared<C>>) -> tonic::service::Routes {
    let routes =
        tonic::service::Routes::new(pb::stockade_server::StockadeServer::new(StockadeService {
            s: shared.clone(),
        }))
        .add_service(pb::admin_server::AdminServer::new(AdminService {
            s: shared,
        }));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(stockade_proto::FILE_DESCRIPTOR_SET)
        // The internal Raft transport is in the same descriptor set; clients need not see it.
        .with_service_name("stockade.v1.Stockade")
        .with_service_name("stockade.v1.Admin")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1();
    match reflection {
        Ok(svc) => routes.add_service(svc),
        Err(e) => {
            // Only a corrupt embedded descriptor set can get here; serve without it.
            tracing::error!(error = %e, "gRPC reflection disabled");
            routes
        }
    }
}

/// `stockade.v1.Stockade`.
pub struct StockadeService<C> {
    s: Arc<Shared<C>>,
}

/// `stockade.v1.Admin`.
pub struct AdminService<C> {
    s: Arc<Shared<C>>,
}

/// A success answer tagged with the node that served it.
fn ok<T>(msg: T, served_by: u64) -> GrpcResult<T> {
    let mut r = Response::new(msg);
    r.metadata_mut()
        .insert(SERVED_BY_HEADER, MetadataValue::from(served_by));
    Ok(r)
}

fn level(consistency: i32) -> Result<ReadLevel, ApiError> {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Unspecified | pb::Consistency::Linearizable) => {
            Ok(ReadLevel::Linearizable)
        }
        Ok(pb::Consistency::Stale) => Ok(ReadLevel::Stale),
        Err(_) => Err(ApiError::invalid("consistency", "unknown value")),
    }
}

fn page_limit(limit: u32, l: &ApiLimits) -> Result<usize, ApiError> {
    // 0 is proto3's "unset": the server's default page size.
    crate::http::page_limit((limit != 0).then_some(limit), l)
}

fn rejected(reject: Reject, served_by: u64) -> ApiError {
    ApiError::Rejected {
        reject,
        served_by: Some(served_by),
    }
}

fn check(r: Result<(), Reject>) -> Result<(), ApiError> {
    r.map_err(|reject| ApiError::Rejected {
        reject,
        served_by: None,
    })
}

fn spec_from_pb(spec: Option<pb::SaleSpec>) -> Result<t::SaleSpec, ApiError> {
    let s = spec.ok_or_else(|| ApiError::invalid("spec", "required"))?;
    let p = s
        .product
        .ok_or_else(|| ApiError::invalid("spec.product", "required"))?;
    Ok(t::SaleSpec {
        id: s.id,
        product: t::Product {
            sku: p.sku,
            name: p.name,
            description: p.description,
            image_url: p.image_url,
        },
        list_price_minor: s.list_price_minor,
        sale_price_minor: s.sale_price_minor,
        currency: s.currency,
        quantity: s.quantity,
        starts_at_ms: s.starts_at_ms,
        ends_at_ms: s.ends_at_ms,
        per_user_limit: s.per_user_limit,
        hold_ttl_ms: s.hold_ttl_ms,
        payment_window_ms: s.payment_window_ms,
    })
}

fn sale_to_pb(v: SaleView) -> pb::Sale {
    let st = &v.stats;
    let stats = pb::SaleStats {
        holds_granted: st.holds_granted,
        units_reserved: st.units_reserved,
        holds_expired: st.holds_expired,
        holds_released: st.holds_released,
        checkouts: st.checkouts,
        orders_paid: st.orders_paid,
        orders_cancelled: st.orders_cancelled,
        orders_timed_out: st.orders_timed_out,
        unique_buyers: st.unique_buyers,
        waitlist_joined: st.waitlist_joined,
        waitlist_promoted: st.waitlist_promoted,
        sold_out_at_ms: st.sold_out_at_ms,
        fully_sold_at_ms: st.fully_sold_at_ms,
        waitlist_len: v.waitlist_len,
    };
    let s = v.spec;
    pb::Sale {
        spec: Some(pb::SaleSpec {
            id: s.id,
            product: Some(pb::Product {
                sku: s.product.sku,
                name: s.product.name,
                description: s.product.description,
                image_url: s.product.image_url,
            }),
            list_price_minor: s.list_price_minor,
            sale_price_minor: s.sale_price_minor,
            currency: s.currency,
            quantity: s.quantity,
            starts_at_ms: s.starts_at_ms,
            ends_at_ms: s.ends_at_ms,
            per_user_limit: s.per_user_limit,
            hold_ttl_ms: s.hold_ttl_ms,
            payment_window_ms: s.payment_window_ms,
        }),
        status: v.status.name().to_string(),
        counters: Some(pb::Counters {
            available: v.counters.available,
            held: v.counters.held,
            awaiting_payment: v.counters.awaiting_payment,
            sold: v.counters.sold,
        }),
        stats: Some(stats),
        ended_early_at_ms: v.ended_early_at_ms,
        as_of_ms: v.as_of_ms,
    }
}

/// Through the JSON shape, so both APIs derive states and times in one place.
fn hold_to_pb(h: HoldRecord) -> pb::Hold {
    let d = crate::dto::HoldDto::from(h);
    pb::Hold {
        hold_id: d.hold_id,
        sale_id: d.sale_id,
        user_id: d.user_id,
        qty: d.qty,
        created_at_ms: d.created_at_ms,
        expires_at_ms: d.expires_at_ms,
        from_waitlist: d.from_waitlist,
        state: d.state,
        order_id: d.order_id,
        state_at_ms: d.state_at_ms,
        request_id: d.request_id,
    }
}

fn order_to_pb(o: OrderRecord) -> pb::Order {
    let d = crate::dto::OrderDto::from(o);
    pb::Order {
        order_id: d.order_id,
        sale_id: d.sale_id,
        user_id: d.user_id,
        hold_id: d.hold_id,
        qty: d.qty,
        amount_minor: d.amount_minor,
        currency: d.currency,
        status: d.status,
        pay_by_ms: d.pay_by_ms,
        created_at_ms: d.created_at_ms,
        payment_ref: d.payment_ref,
        cancel_reason: d.cancel_reason,
        status_at_ms: d.status_at_ms,
        request_id: d.request_id,
    }
}

fn grant_to_pb(g: t::HoldGrant) -> pb::HoldGrant {
    pb::HoldGrant {
        hold_id: g.hold_id,
        sale_id: g.sale_id,
        qty: g.qty,
        expires_at_ms: g.expires_at_ms,
    }
}

fn status_to_pb(s: ClusterStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        node_id: s.node_id,
        role: s.role,
        term: s.term,
        leader_id: s.leader_id,
        last_log_index: s.last_log_index,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        members: s
            .members
            .into_iter()
            .map(|m| pb::Member {
                node_id: m.node_id,
                raft_addr: m.raft_addr,
                api_addr: m.api_addr,
                voter: m.voter,
            })
            .collect(),
        replication: s
            .replication
            .into_iter()
            .map(|r| pb::Replication {
                node_id: r.node_id,
                matched_index: r.matched_index,
                lag: r.lag,
            })
            .collect(),
    }
}

/// A write's answer and the node that applied it.
type Served<T> = Result<(T, u64), ApiError>;

/// The unary form of a write's answer.
fn unary<T>(r: Served<T>) -> GrpcResult<T> {
    let (value, by) = r?;
    ok(value, by)
}

/// A stream item's result: the answer, or the error (with the node that produced it; 0
/// when none did: refused before proposing, or the cluster failed).
fn item<T, O>(
    r: Served<T>,
    answer: impl FnOnce(T) -> O,
    error: impl FnOnce(pb::Error) -> O,
) -> (O, u64) {
    match r {
        Ok((value, by)) => (answer(value), by),
        Err(e) => (error(error_to_pb(&e)), e.served_by().unwrap_or(0)),
    }
}

async fn propose<C: Cluster>(s: &Shared<C>, cmd: Command) -> Result<(Answer, u64), ApiError> {
    let served = core::propose(&*s.cluster, &s.metrics, cmd).await?;
    Ok((served.value, served.served_by))
}

async fn reserve<C: Cluster>(s: &Shared<C>, r: pb::ReserveRequest) -> Served<pb::HoldGrant> {
    let cmd = Command::Reserve {
        sale_id: r.sale_id,
        user_id: r.user_id,
        qty: r.qty,
        request_id: r.request_id,
    };
    let attempt = core::Attempt::from_flag(r.first_attempt);
    let served = core::propose_as(&*s.cluster, &s.metrics, cmd, attempt).await?;
    match served.value {
        Answer::Held(g) => Ok((grant_to_pb(g), served.served_by)),
        other => Err(core::unexpected("reserve", &other)),
    }
}

async fn release<C: Cluster>(s: &Shared<C>, r: pb::ReleaseRequest) -> Served<pb::ReleaseResponse> {
    let cmd = Command::Release {
        user_id: r.user_id,
        hold_id: r.hold_id,
        request_id: r.request_id,
    };
    match propose(s, cmd).await? {
        (Answer::Released { hold_id }, by) => Ok((pb::ReleaseResponse { hold_id }, by)),
        (other, _) => Err(core::unexpected("release", &other)),
    }
}

async fn checkout<C: Cluster>(s: &Shared<C>, r: pb::CheckoutRequest) -> Served<pb::Order> {
    let (user_id, hold_id, request_id) = (r.user_id.clone(), r.hold_id, r.request_id.clone());
    let cmd = Command::Checkout {
        user_id: r.user_id,
        hold_id,
        request_id: r.request_id,
    };
    match propose(s, cmd).await? {
        (Answer::CheckedOut(info), by) => {
            // The answer lacks the record's creation time: read it back when this node
            // already has it, else answer from what checkout returned.
            let full = match s.cluster.read(ReadLevel::Stale).await {
                Ok(view) => query::order(&view.value, info.order_id).ok().flatten(),
                Err(_) => None,
            };
            let order = match full {
                Some(o) => order_to_pb(o),
                None => pb::Order {
                    order_id: info.order_id,
                    sale_id: info.sale_id,
                    user_id,
                    hold_id,
                    qty: info.qty,
                    amount_minor: info.amount_minor,
                    currency: info.currency,
                    status: info.status.name().to_string(),
                    pay_by_ms: info.pay_by_ms,
                    created_at_ms: 0,
                    payment_ref: None,
                    cancel_reason: None,
                    status_at_ms: None,
                    request_id,
                },
            };
            Ok((order, by))
        }
        (other, _) => Err(core::unexpected("checkout", &other)),
    }
}

/// Payment confirmed or failed, or an order cancelled: answered with the order's id.
async fn order_op<C: Cluster>(
    s: &Shared<C>,
    what: &str,
    cmd: Command,
) -> Served<pb::OrderIdResponse> {
    match propose(s, cmd).await? {
        (Answer::Paid { order_id }, by)
        | (Answer::PaymentFailed { order_id }, by)
        | (Answer::Cancelled { order_id }, by) => Ok((pb::OrderIdResponse { order_id }, by)),
        (other, _) => Err(core::unexpected(what, &other)),
    }
}

fn confirm_payment_cmd(r: pb::ConfirmPaymentRequest) -> Command {
    Command::ConfirmPayment {
        user_id: r.user_id,
        order_id: r.order_id,
        amount_minor: r.amount_minor,
        currency: r.currency,
        payment_ref: r.payment_ref,
        request_id: r.request_id,
    }
}

fn fail_payment_cmd(r: pb::FailPaymentRequest) -> Command {
    Command::FailPayment {
        user_id: r.user_id,
        order_id: r.order_id,
        reason: r.reason,
        request_id: r.request_id,
    }
}

fn cancel_order_cmd(r: pb::CancelOrderRequest) -> Command {
    Command::CancelOrder {
        user_id: r.user_id,
        order_id: r.order_id,
        request_id: r.request_id,
    }
}

async fn join_waitlist<C: Cluster>(
    s: &Shared<C>,
    r: pb::JoinWaitlistRequest,
) -> Served<pb::JoinWaitlistResponse> {
    let cmd = Command::JoinWaitlist {
        sale_id: r.sale_id,
        user_id: r.user_id,
        qty: r.qty,
        request_id: r.request_id,
    };
    match propose(s, cmd).await? {
        (Answer::WaitlistJoined { position, .. }, by) => {
            Ok((pb::JoinWaitlistResponse { position }, by))
        }
        (other, _) => Err(core::unexpected("join_waitlist", &other)),
    }
}

async fn leave_waitlist<C: Cluster>(
    s: &Shared<C>,
    r: pb::LeaveWaitlistRequest,
) -> Served<pb::LeaveWaitlistResponse> {
    let cmd = Command::LeaveWaitlist {
        sale_id: r.sale_id,
        user_id: r.user_id,
        request_id: r.request_id,
    };
    match propose(s, cmd).await? {
        (Answer::WaitlistLeft { .. }, by) => Ok((pb::LeaveWaitlistResponse {}, by)),
        (other, _) => Err(core::unexpected("leave_waitlist", &other)),
    }
}

/// One reservation of a `ReserveStream`, answered as an item (errors included).
async fn reserve_item<C: Cluster>(
    s: Arc<Shared<C>>,
    r: pb::ReserveRequest,
) -> pb::ReserveStreamResponse {
    use pb::reserve_stream_response::Result as R;
    let request_id = r.request_id.clone();
    let (result, served_by) = item(reserve(&s, r).await, R::Hold, R::Error);
    pb::ReserveStreamResponse {
        request_id,
        result: Some(result),
        served_by,
    }
}

/// Bytes of the futures that answer one `PurchaseStream` and one `ReserveStream` request
/// on a cluster `C`: each is copied once into its box as its request arrives (see
/// `Answering`, and `NodeCluster::on_leader` in the node crate, "Size"). For the node's
/// tests, which know `C`.
#[doc(hidden)]
pub fn stream_request_future_bytes<C: Cluster>() -> [usize; 2] {
    fn bytes<A, B, F>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }
    [bytes(purchase_item::<C>), bytes(reserve_item::<C>)]
}

/// What a `PurchaseStreamRequest` without a command is told.
const PURCHASE_COMMANDS: &str = "required: one of reserve, checkout, confirm_payment, \
     fail_payment, cancel_order, release, join_waitlist, leave_waitlist";

/// One write of a `PurchaseStream`, answered as an item (errors included).
async fn purchase_item<C: Cluster>(
    s: Arc<Shared<C>>,
    r: pb::PurchaseStreamRequest,
) -> pb::PurchaseStreamResponse {
    use pb::purchase_stream_request::Command as In;
    use pb::purchase_stream_response::Result as Out;
    let s = &*s;
    let (result, served_by) = match r.command {
        Some(In::Reserve(x)) => item(reserve(s, x).await, Out::Hold, Out::Error),
        Some(In::Checkout(x)) => item(checkout(s, x).await, Out::Order, Out::Error),
        Some(In::ConfirmPayment(x)) => {
            let answer = order_op(s, "confirm_payment", confirm_payment_cmd(x)).await;
            item(answer, Out::OrderId, Out::Error)
        }
        Some(In::FailPayment(x)) => {
            let answer = order_op(s, "fail_payment", fail_payment_cmd(x)).await;
            item(answer, Out::OrderId, Out::Error)
        }
        Some(In::CancelOrder(x)) => {
            let answer = order_op(s, "cancel_order", cancel_order_cmd(x)).await;
            item(answer, Out::OrderId, Out::Error)
        }
        Some(In::Release(x)) => item(release(s, x).await, Out::Released, Out::Error),
        Some(In::JoinWaitlist(x)) => item(join_waitlist(s, x).await, Out::Joined, Out::Error),
        Some(In::LeaveWaitlist(x)) => item(leave_waitlist(s, x).await, Out::Left, Out::Error),
        None => {
            let e = ApiError::invalid("command", PURCHASE_COMMANDS);
            (Out::Error(error_to_pb(&e)), 0)
        }
    };
    pb::PurchaseStreamResponse {
        tag: r.tag,
        served_by,
        result: Some(result),
    }
}

/// What answers one request of a stream: `handle`'s future, boxed, or the error that ends
/// the stream. `buffer_unordered` moves each into its task set as its request arrives,
/// and the value has been moved a few times before (out of the closure, into `Map`, into
/// the task); a request's future is a kilobyte or two (`stream_request_future_bytes`),
/// so it is boxed once where it is made and only the pointer moves. (The `async` block
/// this replaced also kept the captured `Result<Fut, Status>` beside the `Fut` it
/// awaited.)
type Answering<Fut, Resp> = Either<
    future::Map<Pin<Box<Fut>>, fn(Resp) -> Result<Resp, Status>>,
    future::Ready<Result<Resp, Status>>,
>;

/// Answers a request stream: up to `in_flight` requests handled at once, each answer
/// sent as it completes. `buffer_unordered` pulls a new request only while fewer than
/// `in_flight` are pending, so a fast sender waits (HTTP/2 flow control) instead of
/// queueing without bound. A broken request stream (decode or transport error) ends ours.
fn answer_stream<Req, Resp, F, Fut>(
    inbound: Streaming<Req>,
    in_flight: usize,
    handle: F,
) -> BoxStream<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Resp> + Send + 'static,
{
    let out = inbound
        .map(move |request| -> Answering<Fut, Resp> {
            match request {
                Ok(r) => {
                    Either::Left(Box::pin(handle(r)).map(Ok as fn(Resp) -> Result<Resp, Status>))
                }
                Err(status) => Either::Right(future::ready(Err(status))),
            }
        })
        .buffer_unordered(in_flight.max(1));
    Box::pin(out)
}

fn error_to_pb(e: &ApiError) -> pb::Error {
    let b = e.body();
    pb::Error {
        code: b.code,
        message: b.message,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<C: Cluster> pb::stockade_server::Stockade for StockadeService<C> {
    async fn create_sale(
        &self,
        req: Request<pb::CreateSaleRequest>,
    ) -> GrpcResult<pb::SaleIdResponse> {
        let spec = spec_from_pb(req.into_inner().spec)?;
        match propose(&self.s, Command::CreateSale(Box::new(spec))).await? {
            (Answer::SaleCreated { sale_id }, by) => ok(pb::SaleIdResponse { sale_id }, by),
            (other, _) => Err(core::unexpected("create_sale", &other).into()),
        }
    }

    async fn update_sale(
        &self,
        req: Request<pb::UpdateSaleRequest>,
    ) -> GrpcResult<pb::SaleIdResponse> {
        let spec = spec_from_pb(req.into_inner().spec)?;
        match propose(&self.s, Command::UpdateSale(Box::new(spec))).await? {
            (Answer::SaleUpdated { sale_id }, by) => ok(pb::SaleIdResponse { sale_id }, by),
            (other, _) => Err(core::unexpected("update_sale", &other).into()),
        }
    }

    async fn get_sale(&self, req: Request<pb::GetSaleRequest>) -> GrpcResult<pb::Sale> {
        let r = req.into_inner();
        check(validate::sale_id_field("sale_id", &r.sale_id))?;
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        match query::sale(&view.value, &r.sale_id).map_err(ApiError::from)? {
            Some(v) => ok(sale_to_pb(v), view.served_by),
            None => Err(rejected(Reject::SaleNotFound, view.served_by).into()),
        }
    }

    async fn list_sales(
        &self,
        req: Request<pb::ListSalesRequest>,
    ) -> GrpcResult<pb::ListSalesResponse> {
        let r = req.into_inner();
        let limit = page_limit(r.limit, &self.s.limits)?;
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        let after = (!r.after.is_empty()).then_some(r.after.as_str());
        let sales = query::sales(&view.value, after, limit).map_err(ApiError::from)?;
        ok(
            pb::ListSalesResponse {
                sales: sales.into_iter().map(sale_to_pb).collect(),
            },
            view.served_by,
        )
    }

    async fn end_sale(&self, req: Request<pb::EndSaleRequest>) -> GrpcResult<pb::EndSaleResponse> {
        let sale_id = req.into_inner().sale_id;
        match propose(&self.s, Command::EndSale { sale_id }).await? {
            (
                Answer::SaleEnded {
                    sale_id,
                    ended_at_ms,
                },
                by,
            ) => ok(
                pb::EndSaleResponse {
                    sale_id,
                    ended_at_ms,
                },
                by,
            ),
            (other, _) => Err(core::unexpected("end_sale", &other).into()),
        }
    }

    async fn reserve(&self, req: Request<pb::ReserveRequest>) -> GrpcResult<pb::HoldGrant> {
        unary(reserve(&self.s, req.into_inner()).await)
    }

    type ReserveStreamStream = BoxStream<pb::ReserveStreamResponse>;

    async fn reserve_stream(
        &self,
        req: Request<Streaming<pb::ReserveRequest>>,
    ) -> GrpcResult<Self::ReserveStreamStream> {
        let s = self.s.clone();
        let out = answer_stream(req.into_inner(), s.limits.stream_in_flight_max, move |r| {
            reserve_item(s.clone(), r)
        });
        ok(out, self.s.cluster.node_id())
    }

    type PurchaseStreamStream = BoxStream<pb::PurchaseStreamResponse>;

    async fn purchase_stream(
        &self,
        req: Request<Streaming<pb::PurchaseStreamRequest>>,
    ) -> GrpcResult<Self::PurchaseStreamStream> {
        let s = self.s.clone();
        let out = answer_stream(req.into_inner(), s.limits.stream_in_flight_max, move |r| {
            purchase_item(s.clone(), r)
        });
        ok(out, self.s.cluster.node_id())
    }

    async fn get_hold(&self, req: Request<pb::GetHoldRequest>) -> GrpcResult<pb::Hold> {
        let r = req.into_inner();
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        match query::hold(&view.value, r.hold_id).map_err(ApiError::from)? {
            Some(h) => ok(hold_to_pb(h), view.served_by),
            None => Err(rejected(Reject::HoldNotFound, view.served_by).into()),
        }
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> GrpcResult<pb::ReleaseResponse> {
        unary(release(&self.s, req.into_inner()).await)
    }

    async fn checkout(&self, req: Request<pb::CheckoutRequest>) -> GrpcResult<pb::Order> {
        unary(checkout(&self.s, req.into_inner()).await)
    }

    async fn get_order(&self, req: Request<pb::GetOrderRequest>) -> GrpcResult<pb::Order> {
        let r = req.into_inner();
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        match query::order(&view.value, r.order_id).map_err(ApiError::from)? {
            Some(o) => ok(order_to_pb(o), view.served_by),
            None => Err(rejected(Reject::OrderNotFound, view.served_by).into()),
        }
    }

    async fn list_orders(
        &self,
        req: Request<pb::ListOrdersRequest>,
    ) -> GrpcResult<pb::ListOrdersResponse> {
        let r = req.into_inner();
        check(validate::user_id_field(&r.user_id))?;
        let limit = page_limit(r.limit, &self.s.limits)?;
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        let after = (r.after_id != 0).then_some(r.after_id);
        let orders =
            query::user_orders(&view.value, &r.user_id, after, limit).map_err(ApiError::from)?;
        ok(
            pb::ListOrdersResponse {
                orders: orders.into_iter().map(order_to_pb).collect(),
            },
            view.served_by,
        )
    }

    async fn confirm_payment(
        &self,
        req: Request<pb::ConfirmPaymentRequest>,
    ) -> GrpcResult<pb::OrderIdResponse> {
        let cmd = confirm_payment_cmd(req.into_inner());
        unary(order_op(&self.s, "confirm_payment", cmd).await)
    }

    async fn fail_payment(
        &self,
        req: Request<pb::FailPaymentRequest>,
    ) -> GrpcResult<pb::OrderIdResponse> {
        let cmd = fail_payment_cmd(req.into_inner());
        unary(order_op(&self.s, "fail_payment", cmd).await)
    }

    async fn cancel_order(
        &self,
        req: Request<pb::CancelOrderRequest>,
    ) -> GrpcResult<pb::OrderIdResponse> {
        let cmd = cancel_order_cmd(req.into_inner());
        unary(order_op(&self.s, "cancel_order", cmd).await)
    }

    async fn join_waitlist(
        &self,
        req: Request<pb::JoinWaitlistRequest>,
    ) -> GrpcResult<pb::JoinWaitlistResponse> {
        unary(join_waitlist(&self.s, req.into_inner()).await)
    }

    async fn leave_waitlist(
        &self,
        req: Request<pb::LeaveWaitlistRequest>,
    ) -> GrpcResult<pb::LeaveWaitlistResponse> {
        unary(leave_waitlist(&self.s, req.into_inner()).await)
    }

    async fn waitlist_position(
        &self,
        req: Request<pb::WaitlistPositionRequest>,
    ) -> GrpcResult<pb::WaitlistPositionResponse> {
        let r = req.into_inner();
        check(validate::sale_id_field("sale_id", &r.sale_id))?;
        check(validate::user_id_field(&r.user_id))?;
        let view = core::read(&*self.s.cluster, level(r.consistency)?).await?;
        if query::sale(&view.value, &r.sale_id)
            .map_err(ApiError::from)?
            .is_none()
        {
            return Err(rejected(Reject::SaleNotFound, view.served_by).into());
        }
        let w =
            query::waitlist_status(&view.value, &r.sale_id, &r.user_id).map_err(ApiError::from)?;
        let msg = match w {
            query::WaitlistStatus::NotWaitlisted => pb::WaitlistPositionResponse {
                state: "not_waitlisted".into(),
                ..Default::default()
            },
            query::WaitlistStatus::Waiting { position, qty } => pb::WaitlistPositionResponse {
                state: "waiting".into(),
                position,
                qty,
                hold_id: None,
            },
            query::WaitlistStatus::Promoted { hold_id } => pb::WaitlistPositionResponse {
                state: "promoted".into(),
                hold_id: Some(hold_id),
                ..Default::default()
            },
        };
        ok(msg, view.served_by)
    }
}

impl<C: Cluster> AdminService<C> {
    async fn status_answer(&self) -> GrpcResult<pb::ClusterStatus> {
        let st = self.s.cluster.status().await.map_err(ApiError::from)?;
        ok(status_to_pb(st), self.s.cluster.node_id())
    }
}

#[tonic::async_trait]
impl<C: Cluster> pb::admin_server::Admin for AdminService<C> {
    async fn status(&self, _req: Request<pb::StatusRequest>) -> GrpcResult<pb::ClusterStatus> {
        self.status_answer().await
    }

    async fn init(&self, req: Request<pb::InitRequest>) -> GrpcResult<pb::ClusterStatus> {
        let members = crate::http::init_members(
            req.into_inner()
                .members
                .into_iter()
                .map(|m| (m.node_id, m.raft_addr, m.api_addr)),
        )?;
        self.s
            .cluster
            .initialize(members)
            .await
            .map_err(ApiError::from)?;
        self.status_answer().await
    }

    async fn state_hash(
        &self,
        _req: Request<pb::StateHashRequest>,
    ) -> GrpcResult<pb::StateHashResponse> {
        let h = self.s.cluster.state_hash().await.map_err(ApiError::from)?;
        ok(
            pb::StateHashResponse {
                node_id: h.node_id,
                applied_index: h.applied_index,
                state_hash: h.state_hash,
            },
            self.s.cluster.node_id(),
        )
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> GrpcResult<pb::ClusterStatus> {
        let r = req.into_inner();
        check_addr("raft_addr", &r.raft_addr)?;
        check_addr("api_addr", &r.api_addr)?;
        let addr = NodeAddr {
            raft_addr: r.raft_addr,
            api_addr: r.api_addr,
        };
        self.s
            .cluster
            .add_learner(r.node_id, addr)
            .await
            .map_err(ApiError::from)?;
        self.status_answer().await
    }

    async fn change_membership(
        &self,
        req: Request<pb::ChangeMembershipRequest>,
    ) -> GrpcResult<pb::ClusterStatus> {
        let r = req.into_inner();
        let voters = check_voters(&r.voters)?;
        self.s
            .cluster
            .change_membership(voters, r.retain)
            .await
            .map_err(ApiError::from)?;
        self.status_answer().await
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> GrpcResult<pb::ClusterStatus> {
        self.s
            .cluster
            .transfer_leader(req.into_inner().to)
            .await
            .map_err(ApiError::from)?;
        self.status_answer().await
    }

    async fn trigger_snapshot(
        &self,
        _req: Request<pb::TriggerSnapshotRequest>,
    ) -> GrpcResult<pb::ClusterStatus> {
        self.s
            .cluster
            .trigger_snapshot()
            .await
            .map_err(ApiError::from)?;
        self.status_answer().await
    }

    async fn compact(&self, _req: Request<pb::CompactRequest>) -> GrpcResult<pb::CompactResponse> {
        let c = self.s.cluster.compact().await.map_err(ApiError::from)?;
        ok(
            pb::CompactResponse {
                node_id: self.s.cluster.node_id(),
                sst_bytes_before: c.sst_bytes_before,
                sst_bytes_after: c.sst_bytes_after,
                took_ms: c.took_ms,
            },
            self.s.cluster.node_id(),
        )
    }

    type BackupStream = BoxStream<pb::BackupChunk>;

    async fn backup(&self, _req: Request<pb::BackupRequest>) -> GrpcResult<Self::BackupStream> {
        let b = self.s.cluster.backup().await.map_err(ApiError::from)?;
        let chunks = core::file_chunks(b.file, b.len_bytes, self.s.limits.backup_chunk_bytes).map(
            |r| match r {
                Ok(data) => Ok(pb::BackupChunk { data }),
                Err(e) => Err(ApiError::Internal(format!("reading the snapshot: {e}")).to_status()),
            },
        );
        let mut resp = ok(
            Box::pin(chunks) as Self::BackupStream,
            self.s.cluster.node_id(),
        )?;
        if let Some(i) = b.last_index {
            resp.metadata_mut()
                .insert("x-stockade-snapshot-index", MetadataValue::from(i));
        }
        Ok(resp)
    }
}
