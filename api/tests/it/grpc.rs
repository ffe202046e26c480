//! The gRPC API over a real tonic server on 127.0.0.1: unary calls, error codes with
//! `x-stockade-code`, the bidirectional ReserveStream and PurchaseStream, Admin backup,
//! and reflection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use stockade_api::{Api, ApiLimits, ClusterError};
use stockade_proto::v1 as pb;
use stockade_proto::v1::admin_client::AdminClient;
use stockade_proto::v1::stockade_client::StockadeClient;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::*;

struct Server {
    fake: Arc<Fake>,
    addr: SocketAddr,
}

impl Server {
    async fn start() -> Server {
        Server::with_limits(ApiLimits::default()).await
    }

    async fn with_limits(limits: ApiLimits) -> Server {
        let fake = Fake::new();
        let routes = Api::new(fake.clone(), limits).grpc_routes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Server { fake, addr }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn client(&self) -> StockadeClient<Channel> {
        StockadeClient::new(self.channel().await)
    }
}

fn spec(quantity: u32) -> pb::SaleSpec {
    pb::SaleSpec {
        id: SALE.into(),
        product: Some(pb::Product {
            sku: "SKU-1".into(),
            name: "Phone".into(),
            description: "A phone".into(),
            image_url: "https://img.example/p.png".into(),
        }),
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

fn reserve_req(user: &str, qty: u32, req: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        sale_id: SALE.into(),
        user_id: user.into(),
        qty,
        request_id: req.into(),
        first_attempt: false,
    }
}

async fn open_sale(s: &Server, c: &mut StockadeClient<Channel>, quantity: u32) {
    let r = c
        .create_sale(pb::CreateSaleRequest {
            spec: Some(spec(quantity)),
        })
        .await
        .unwrap();
    assert_eq!(r.get_ref().sale_id, SALE);
    assert_eq!(r.metadata().get("x-stockade-served-by").unwrap(), "7");
    s.fake.set_clock(2_000);
}

fn code_of(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("x-stockade-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
}

#[tokio::test]
async fn reserve_ok_then_sold_out_is_failed_precondition() {
    let s = Server::start().await;
    let mut c = s.client().await;
    open_sale(&s, &mut c, 1).await;

    let r = c.reserve(reserve_req("alice", 1, "r1")).await.unwrap();
    assert_eq!(r.metadata().get("x-stockade-served-by").unwrap(), "7");
    assert_eq!(
        r.into_inner(),
        pb::HoldGrant {
            hold_id: 1,
            sale_id: SALE.into(),
            qty: 1,
            expires_at_ms: 7_000
        }
    );

    let e = c.reserve(reserve_req("bob", 1, "r2")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(code_of(&e), "sold_out");
    assert_eq!(e.message(), "sold out");
    assert_eq!(e.metadata().get("x-stockade-served-by").unwrap(), "7");

    let e = c.reserve(reserve_req("bob", 0, "r3")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(code_of(&e), "invalid");

    let e = c
        .reserve(pb::ReserveRequest {
            sale_id: "nope".into(),
            ..reserve_req("bob", 1, "r4")
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(code_of(&e), "sale_not_found");

    let e = c
        .checkout(pb::CheckoutRequest {
            user_id: "bob".into(),
            hold_id: 1,
            request_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(code_of(&e), "not_owner");
}

#[tokio::test]
async fn reads_checkout_and_orders_over_grpc() {
    let s = Server::start().await;
    let mut c = s.client().await;
    open_sale(&s, &mut c, 5).await;
    c.reserve(reserve_req("alice", 2, "r1")).await.unwrap();
    let order = c
        .checkout(pb::CheckoutRequest {
            user_id: "alice".into(),
            hold_id: 1,
            request_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.order_id, 2);
    assert_eq!(order.status, "awaiting_payment");
    assert_eq!(order.created_at_ms, 2_000);
    assert_eq!(order.amount_minor, 99_800);

    let sale = c
        .get_sale(pb::GetSaleRequest {
            sale_id: SALE.into(),
            consistency: pb::Consistency::Stale as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sale.status, "active");
    assert_eq!(sale.counters.unwrap().awaiting_payment, 2);
    assert_eq!(
        s.fake.reads.lock().unwrap().last(),
        Some(&stockade_api::ReadLevel::Stale)
    );
    let e = c
        .get_sale(pb::GetSaleRequest {
            sale_id: SALE.into(),
            consistency: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let hold = c
        .get_hold(pb::GetHoldRequest {
            hold_id: 1,
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hold.state, "checked_out");
    assert_eq!(hold.order_id, Some(2));

    let paid = c
        .confirm_payment(pb::ConfirmPaymentRequest {
            user_id: "alice".into(),
            order_id: 2,
            amount_minor: 99_800,
            currency: "EUR".into(),
            payment_ref: "pay-1".into(),
            request_id: "p1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paid.order_id, 2);
    let orders = c
        .list_orders(pb::ListOrdersRequest {
            user_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .orders;
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].status, "paid");
    assert_eq!(orders[0].payment_ref.as_deref(), Some("pay-1"));

    let e = c
        .get_order(pb::GetOrderRequest {
            order_id: 99,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(code_of(&e), "order_not_found");
}

#[tokio::test]
async fn reserve_stream_answers_each_request_and_survives_rejections() {
    let s = Server::with_limits(ApiLimits {
        stream_in_flight_max: 2,
        ..ApiLimits::default()
    })
    .await;
    let mut c = s.client().await;
    open_sale(&s, &mut c, 3).await;

    let reqs = vec![
        reserve_req("u1", 1, "a"),
        reserve_req("u2", 1, "b"),
        reserve_req("u3", 0, "bad-qty"),
        reserve_req("u4", 1, "c"),
        reserve_req("u5", 1, "d"),
    ];
    let resp = c.reserve_stream(tokio_stream::iter(reqs)).await.unwrap();
    assert_eq!(resp.metadata().get("x-stockade-served-by").unwrap(), "7");
    let mut inbound = resp.into_inner();
    let mut answers = BTreeMap::new();
    while let Some(item) = inbound.next().await {
        let item = item.unwrap();
        answers.insert(item.request_id.clone(), item);
    }
    assert_eq!(answers.len(), 5, "{answers:?}");
    use pb::reserve_stream_response::Result as R;
    let mut held = 0;
    let mut sold_out = 0;
    for (id, a) in &answers {
        match a.result.as_ref().unwrap() {
            R::Hold(g) => {
                held += 1;
                assert_eq!(g.qty, 1);
                assert_eq!(a.served_by, 7);
            }
            R::Error(e) if id == "bad-qty" => {
                assert_eq!(e.code, "invalid");
                assert_eq!(e.message, "invalid qty: must be 1..=100");
                assert_eq!(a.served_by, 0, "refused before proposing");
            }
            R::Error(e) => {
                assert_eq!(e.code, "sold_out", "{id}");
                assert_eq!(a.served_by, 7);
                sold_out += 1;
            }
        }
    }
    assert_eq!((held, sold_out), (3, 1));
    assert!(matches!(answers["bad-qty"].result, Some(R::Error(_))));
}

/// A `PurchaseStream` caller: sends one request, waits for its answer.
struct PurchaseCaller {
    out: tokio::sync::mpsc::Sender<pb::PurchaseStreamRequest>,
    inbound: tonic::Streaming<pb::PurchaseStreamResponse>,
    next_tag: u64,
}

impl PurchaseCaller {
    async fn open(c: &mut StockadeClient<Channel>) -> PurchaseCaller {
        let (out, rx) = tokio::sync::mpsc::channel(16);
        let resp = c
            .purchase_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        assert_eq!(resp.metadata().get("x-stockade-served-by").unwrap(), "7");
        PurchaseCaller {
            out,
            inbound: resp.into_inner(),
            next_tag: 100,
        }
    }

    /// The answer to `cmd`, which must carry the request's tag.
    async fn call(
        &mut self,
        cmd: Option<pb::purchase_stream_request::Command>,
    ) -> pb::PurchaseStreamResponse {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.out
            .send(pb::PurchaseStreamRequest { tag, command: cmd })
            .await
            .unwrap();
        let answer = self.inbound.next().await.unwrap().unwrap();
        assert_eq!(answer.tag, tag, "{answer:?}");
        answer
    }

    /// Reserves one unit for `user` and checks it out: the order's id.
    async fn order_for(&mut self, user: &str) -> u64 {
        use pb::purchase_stream_response::Result as Out;
        let reserve = reserve_req(user, 1, &format!("{user}-r"));
        let a = self
            .call(Some(pb::purchase_stream_request::Command::Reserve(reserve)))
            .await;
        let Some(Out::Hold(h)) = a.result else {
            panic!("{a:?}")
        };
        let a = self
            .call(checkout_cmd(user, h.hold_id, &format!("{user}-c")))
            .await;
        let Some(Out::Order(o)) = a.result else {
            panic!("{a:?}")
        };
        o.order_id
    }
}

fn checkout_cmd(
    user: &str,
    hold_id: u64,
    rid: &str,
) -> Option<pb::purchase_stream_request::Command> {
    Some(pb::purchase_stream_request::Command::Checkout(
        pb::CheckoutRequest {
            user_id: user.into(),
            hold_id,
            request_id: rid.into(),
        },
    ))
}

fn release_cmd(
    user: &str,
    hold_id: u64,
    rid: &str,
) -> Option<pb::purchase_stream_request::Command> {
    Some(pb::purchase_stream_request::Command::Release(
        pb::ReleaseRequest {
            user_id: user.into(),
            hold_id,
            request_id: rid.into(),
        },
    ))
}

/// Every write of the purchase flow over one `PurchaseStream`: each answered with what
/// its unary call returns, tagged; rejections (and a request without a command) are
/// items, the stream goes on; a retried request id gets the recorded answer.
#[tokio::test]
async fn purchase_stream_carries_every_write_of_the_flow() {
    use pb::purchase_stream_request::Command as In;
    use pb::purchase_stream_response::Result as Out;
    let s = Server::start().await;
    let mut c = s.client().await;
    open_sale(&s, &mut c, 3).await;
    let mut p = PurchaseCaller::open(&mut c).await;
    let error = |a: &pb::PurchaseStreamResponse| match &a.result {
        Some(Out::Error(e)) => e.clone(),
        other => panic!("expected an error item, got {other:?}"),
    };

    // alice: reserve, check out, pay (the payment sent twice: one recorded answer).
    let a = p
        .call(Some(In::Reserve(reserve_req("alice", 1, "a-r"))))
        .await;
    let Some(Out::Hold(hold)) = a.result else {
        panic!("{a:?}")
    };
    assert_eq!((hold.qty, a.served_by), (1, 7));
    let a = p.call(checkout_cmd("alice", hold.hold_id, "a-c")).await;
    let Some(Out::Order(order)) = a.result else {
        panic!("{a:?}")
    };
    assert_eq!(order.status, "awaiting_payment");
    assert_eq!(order.hold_id, hold.hold_id);
    assert_eq!(order.created_at_ms, 2_000, "read back like the unary call");
    assert_eq!(order.amount_minor, 49_900);
    let pay = Some(In::ConfirmPayment(pb::ConfirmPaymentRequest {
        user_id: "alice".into(),
        order_id: order.order_id,
        amount_minor: 49_900,
        currency: "EUR".into(),
        payment_ref: "pay-a".into(),
        request_id: "a-p".into(),
    }));
    for _ in 0..2 {
        let a = p.call(pay.clone()).await;
        assert_eq!(
            a.result,
            Some(Out::OrderId(pb::OrderIdResponse {
                order_id: order.order_id
            }))
        );
    }

    // bob: reserve, release; releasing a hold that does not exist, or is not his, is a
    // rejection item.
    let a = p
        .call(Some(In::Reserve(reserve_req("bob", 1, "b-r"))))
        .await;
    let Some(Out::Hold(bob)) = a.result else {
        panic!("{a:?}")
    };
    let a = p.call(release_cmd("bob", 999, "b-x")).await;
    assert_eq!(error(&a).code, "hold_not_found", "{a:?}");
    assert_eq!(a.served_by, 7);
    let a = p.call(release_cmd("bob", hold.hold_id, "b-y")).await;
    assert_eq!(error(&a).code, "not_owner", "{a:?}");
    let a = p.call(release_cmd("bob", bob.hold_id, "b-l")).await;
    assert_eq!(
        a.result,
        Some(Out::Released(pb::ReleaseResponse {
            hold_id: bob.hold_id
        }))
    );

    // carol cancels her order, dave's payment fails: both answered with the order id.
    let carol = p.order_for("carol").await;
    let dave = p.order_for("dave").await;
    let a = p
        .call(Some(In::CancelOrder(pb::CancelOrderRequest {
            user_id: "carol".into(),
            order_id: carol,
            request_id: "carol-x".into(),
        })))
        .await;
    assert_eq!(
        a.result,
        Some(Out::OrderId(pb::OrderIdResponse { order_id: carol }))
    );
    let a = p
        .call(Some(In::FailPayment(pb::FailPaymentRequest {
            user_id: "dave".into(),
            order_id: dave,
            reason: "card_declined".into(),
            request_id: "dave-f".into(),
        })))
        .await;
    assert_eq!(
        a.result,
        Some(Out::OrderId(pb::OrderIdResponse { order_id: dave }))
    );

    // A request without a command: an item naming the field, served by no node.
    let a = p.call(None).await;
    let e = error(&a);
    assert_eq!(e.code, "invalid");
    assert!(
        e.message.contains("command") && e.message.contains("reserve"),
        "{e:?}"
    );
    assert_eq!(a.served_by, 0);

    // erin takes the two units left; frank joins the waitlist, then leaves it.
    let a = p
        .call(Some(In::Reserve(reserve_req("erin", 2, "e-r"))))
        .await;
    assert!(
        matches!(a.result, Some(Out::Hold(ref g)) if g.qty == 2),
        "{a:?}"
    );
    let join = |rid: &str| {
        Some(In::JoinWaitlist(pb::JoinWaitlistRequest {
            sale_id: SALE.into(),
            user_id: "frank".into(),
            qty: 1,
            request_id: rid.into(),
        }))
    };
    let a = p.call(join("f-j")).await;
    assert_eq!(
        a.result,
        Some(Out::Joined(pb::JoinWaitlistResponse { position: 1 }))
    );
    let a = p.call(join("f-j2")).await;
    assert_eq!(error(&a).code, "already_waitlisted", "{a:?}");
    let a = p
        .call(Some(In::LeaveWaitlist(pb::LeaveWaitlistRequest {
            sale_id: SALE.into(),
            user_id: "frank".into(),
            request_id: "f-l".into(),
        })))
        .await;
    assert_eq!(a.result, Some(Out::Left(pb::LeaveWaitlistResponse {})));

    // The state the stream's writes left, read over a unary call.
    let sale = c
        .get_sale(pb::GetSaleRequest {
            sale_id: SALE.into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let counters = sale.counters.unwrap();
    assert_eq!(
        (
            counters.available,
            counters.held,
            counters.awaiting_payment,
            counters.sold
        ),
        (0, 2, 0, 1),
        "{counters:?}"
    );
    let stats = sale.stats.unwrap();
    assert_eq!(
        (
            stats.orders_paid,
            stats.orders_cancelled,
            stats.holds_released
        ),
        (1, 2, 1)
    );
}

/// Requests sent together on one `PurchaseStream` are answered out of order when they
/// complete so, each under its own tag; tags are the client's (repeats are echoed).
#[tokio::test]
async fn purchase_stream_answers_many_in_flight_by_tag() {
    use pb::purchase_stream_request::Command as In;
    use pb::purchase_stream_response::Result as Out;
    let s = Server::with_limits(ApiLimits {
        stream_in_flight_max: 2,
        ..ApiLimits::default()
    })
    .await;
    let mut c = s.client().await;
    open_sale(&s, &mut c, 2).await;
    let reqs: Vec<_> = [("u1", 5), ("u2", 9), ("u3", 1), ("u4", 3)]
        .into_iter()
        .map(|(user, tag)| pb::PurchaseStreamRequest {
            tag,
            command: Some(In::Reserve(reserve_req(user, 1, &format!("{user}-r")))),
        })
        .chain([pb::PurchaseStreamRequest {
            tag: 5,
            command: None,
        }])
        .collect();
    let mut inbound = c
        .purchase_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut answers: BTreeMap<u64, Vec<Out>> = BTreeMap::new();
    while let Some(item) = inbound.next().await {
        let item = item.unwrap();
        answers
            .entry(item.tag)
            .or_default()
            .push(item.result.unwrap());
    }
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), [1, 3, 5, 9]);
    let codes = |tag: u64| -> Vec<String> {
        answers[&tag]
            .iter()
            .map(|r| match r {
                Out::Hold(_) => "hold".to_string(),
                Out::Error(e) => e.code.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let mut all: Vec<String> = [1, 3, 5, 9].into_iter().flat_map(codes).collect();
    all.sort();
    assert_eq!(
        all,
        ["hold", "hold", "invalid", "sold_out", "sold_out"],
        "{answers:?}"
    );
    assert_eq!(answers[&5].len(), 2, "tag 5 was used twice: {answers:?}");
}

/// Both gRPC reservation paths pass the client's `first_attempt` on: a marked first
/// attempt at a sold-out sale is refused from a read (no proposal), an unmarked one (a
/// retry) is proposed.
#[tokio::test]
async fn grpc_first_attempts_may_be_refused_from_a_read_retries_are_proposed() {
    let s = Server::start().await;
    s.fake
        .refusals_from_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut c = s.client().await;
    open_sale(&s, &mut c, 1).await;
    c.reserve(reserve_req("alice", 1, "a1")).await.unwrap();
    let proposals = || s.fake.proposals.lock().unwrap().len();
    let first = |user: &str, req: &str| pb::ReserveRequest {
        first_attempt: true,
        ..reserve_req(user, 1, req)
    };

    let before = proposals();
    let e = c.reserve(first("bob", "b1")).await.unwrap_err();
    assert_eq!(code_of(&e), "sold_out");
    assert_eq!(
        proposals(),
        before,
        "unary first attempt: refused from a read"
    );
    let e = c.reserve(reserve_req("bob", 1, "b1")).await.unwrap_err();
    assert_eq!(code_of(&e), "sold_out");
    assert_eq!(proposals(), before + 1, "unary retry: proposed");

    let before = proposals();
    let reqs = vec![first("carol", "c1"), reserve_req("dave", 1, "d1")];
    let mut inbound = c
        .reserve_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let mut codes = BTreeMap::new();
    while let Some(item) = inbound.next().await {
        let item = item.unwrap();
        if let Some(pb::reserve_stream_response::Result::Error(e)) = item.result {
            codes.insert(item.request_id, e.code);
        }
    }
    assert_eq!(codes.get("c1").map(String::as_str), Some("sold_out"));
    assert_eq!(codes.get("d1").map(String::as_str), Some("sold_out"));
    assert_eq!(
        proposals(),
        before + 1,
        "stream: only the retry was proposed"
    );
}

#[tokio::test]
async fn no_leader_is_unavailable_with_code_and_retry_hint() {
    let s = Server::start().await;
    let mut c = s.client().await;
    s.fake.fail_with(Some(ClusterError::NoLeader {
        retry_after_ms: 250,
    }));
    let e = c.reserve(reserve_req("alice", 1, "r1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(code_of(&e), "no_leader");
    assert_eq!(
        e.metadata().get("x-stockade-retry-after-ms").unwrap(),
        "250"
    );
    s.fake
        .fail_with(Some(ClusterError::Overloaded { retry_after_ms: 5 }));
    let e = c
        .list_sales(pb::ListSalesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(code_of(&e), "overloaded");
}

#[tokio::test]
async fn admin_status_and_backup_in_chunks() {
    let s = Server::with_limits(ApiLimits {
        backup_chunk_bytes: 100,
        ..ApiLimits::default()
    })
    .await;
    let mut a = AdminClient::new(s.channel().await);
    let st = a.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(st.role, "leader");
    assert_eq!(st.leader_id, Some(7));
    let st = a
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![7, 8],
            retain: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.node_id, 7);
    assert_eq!(
        s.fake.admin_calls.lock().unwrap().as_slice(),
        ["membership {7, 8} false"]
    );
    let e = a
        .change_membership(pb::ChangeMembershipRequest {
            voters: vec![],
            retain: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    a.init(pb::InitRequest {
        members: vec![pb::AddLearnerRequest {
            node_id: 7,
            raft_addr: "a:1".into(),
            api_addr: "a:2".into(),
        }],
    })
    .await
    .unwrap();
    let twice = pb::AddLearnerRequest {
        node_id: 7,
        raft_addr: "a:1".into(),
        api_addr: "a:2".into(),
    };
    let e = a
        .init(pb::InitRequest {
            members: vec![twice.clone(), twice],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        s.fake.last_admin_call().as_deref(),
        Some("init [7=a:1/a:2]")
    );
    let h = a
        .state_hash(pb::StateHashRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((h.node_id, h.applied_index, h.state_hash), (7, 3, 42));
    let c = a.compact(pb::CompactRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (c.node_id, c.sst_bytes_before, c.sst_bytes_after, c.took_ms),
        (7, 2_048, 1_024, 5)
    );
    assert_eq!(s.fake.last_admin_call().as_deref(), Some("compact"));

    let e = a.backup(pb::BackupRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(code_of(&e), "not_found");

    let bytes: Vec<u8> = (0..1050u32).map(|i| (i % 253) as u8).collect();
    *s.fake.backup_bytes.lock().unwrap() = Some(bytes.clone());
    let mut stream = a.backup(pb::BackupRequest {}).await.unwrap().into_inner();
    let mut got = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.data.len() <= 100);
        got.extend_from_slice(&chunk.data);
        chunks += 1;
    }
    assert_eq!(chunks, 11);
    assert_eq!(got, bytes);
}

#[tokio::test]
async fn reflection_lists_the_public_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let s = Server::start().await;
    let mut r = ServerReflectionClient::new(s.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = r
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let first = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("unexpected reflection answer: {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"stockade.v1.Stockade".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"stockade.v1.Admin".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("stockade.raft")),
        "internal transport is not advertised: {names:?}"
    );
}
