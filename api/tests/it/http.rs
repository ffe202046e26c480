//! The HTTP API over the fake cluster: every route's success path, bad input, business
//! rejections and cluster failures, each with its exact status and JSON code.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use stockade_api::{ApiLimits, ClusterError, ReadLevel, Readiness};

use crate::common::*;

#[tokio::test]
async fn sale_lifecycle_create_get_list_update_stats_end() {
    let h = Http::new();
    let r = h.post("/v1/sales", spec_json(10)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body, json!({"sale_id": SALE}));
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));

    // Repeating the same spec is a no-op; a different spec under the same id conflicts.
    let r = h.post("/v1/sales", spec_json(10)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = h.post("/v1/sales", spec_json(11)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "sale_exists");
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));

    let r = h.get(&format!("/v1/sales/{SALE}")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "scheduled");
    assert_eq!(r.body["spec"], spec_json(10));
    assert_eq!(
        r.body["counters"],
        json!({"available": 10, "held": 0, "awaiting_payment": 0, "sold": 0})
    );
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));

    // Update before the start: allowed, and the path id must match the body's.
    let r = h.put(&format!("/v1/sales/{SALE}"), spec_json(12)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"sale_id": SALE}));
    let r = h.put("/v1/sales/other", spec_json(12)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    assert_eq!(
        r.body["message"],
        "invalid id: must equal the sale id in the path"
    );

    let r = h.get("/v1/sales").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["sales"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["sales"][0]["spec"]["quantity"], 12);
    assert_eq!(r.body["next_after"], json!(null));

    h.fake.set_clock(2_000);
    let r = h.put(&format!("/v1/sales/{SALE}"), spec_json(13)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "sale_already_started");

    let r = h.get(&format!("/v1/sales/{SALE}/stats")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["holds_granted"], 0);
    assert_eq!(r.body["waitlist_len"], 0);

    let r = h.post(&format!("/v1/sales/{SALE}/end"), json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"sale_id": SALE, "ended_at_ms": 2_000}));
    let r = h.get(&format!("/v1/sales/{SALE}")).await;
    assert_eq!(r.body["status"], "ended");
    assert_eq!(r.body["ended_early_at_ms"], 2_000);

    let r = h.get("/v1/sales/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "sale_not_found");
    let r = h.get("/v1/sales/Bad_Id").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    let r = h.post("/v1/sales/nope/end", json!(null)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "sale_not_found");
}

#[tokio::test]
async fn end_sale_without_body_is_accepted() {
    let h = Http::new();
    h.open_sale(3).await;
    let r = h.raw("POST", &format!("/v1/sales/{SALE}/end"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn list_sales_pages_and_bounds_the_limit() {
    let h = Http::new();
    for id in ["a-sale", "b-sale", "c-sale"] {
        let mut s = spec_json(5);
        s["id"] = json!(id);
        assert_eq!(h.post("/v1/sales", s).await.status, StatusCode::CREATED);
    }
    let r = h.get("/v1/sales?limit=2").await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<_> = r.body["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spec"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a-sale", "b-sale"]);
    assert_eq!(r.body["next_after"], "b-sale");
    let r = h.get("/v1/sales?limit=2&after=b-sale").await;
    assert_eq!(r.body["sales"][0]["spec"]["id"], "c-sale");
    assert_eq!(r.body["next_after"], json!(null));

    for bad in ["limit=0", "limit=501", "limit=-1", "limit=x", "bogus=1"] {
        let r = h.get(&format!("/v1/sales?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.code(), "invalid", "{bad}");
    }
}

#[tokio::test]
async fn reads_take_a_consistency_level() {
    let h = Http::new();
    h.open_sale(3).await;
    h.fake.reads.lock().unwrap().clear();
    assert_eq!(
        h.get(&format!("/v1/sales/{SALE}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get(&format!("/v1/sales/{SALE}?consistency=stale"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.get(&format!("/v1/sales/{SALE}?consistency=linearizable"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        *h.fake.reads.lock().unwrap(),
        [
            ReadLevel::Linearizable,
            ReadLevel::Stale,
            ReadLevel::Linearizable
        ]
    );
    let r = h.get(&format!("/v1/sales/{SALE}?consistency=bogus")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    assert!(
        r.body["message"].as_str().unwrap().contains("consistency"),
        "{}",
        r.text
    );
    let r = h.get("/v1/holds/1?consistency=bogus").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn hold_checkout_pay_flow() {
    let h = Http::new();
    h.open_sale(10).await;
    let r = h.reserve("alice", 2, "r1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"hold_id": 1, "sale_id": SALE, "qty": 2, "expires_at_ms": 7_000})
    );
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));
    // A retry with the same request id gets the same answer.
    let again = h.reserve("alice", 2, "r1").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, r.body);

    let r = h.get("/v1/holds/1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["state"], "active");
    assert_eq!(r.body["user_id"], "alice");
    assert_eq!(r.body["order_id"], json!(null));

    let r = h
        .post(
            "/v1/holds/1/checkout",
            json!({"user_id": "bob", "request_id": "c0"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "not_owner");

    let r = h
        .post(
            "/v1/holds/1/checkout",
            json!({"user_id": "alice", "request_id": "c1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"order_id": 2, "sale_id": SALE, "qty": 2, "amount_minor": 99_800,
               "currency": "EUR", "status": "awaiting_payment", "pay_by_ms": 12_000})
    );
    assert_eq!(h.get("/v1/holds/1").await.body["order_id"], 2);

    let r = h
        .post(
            "/v1/orders/2/payment",
            json!({"user_id": "alice", "amount_minor": 1, "currency": "EUR",
                   "payment_ref": "pay-1", "request_id": "p0"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "amount_mismatch");
    let r = h
        .post(
            "/v1/orders/2/payment",
            json!({"user_id": "alice", "amount_minor": 99_800, "currency": "EUR",
                   "payment_ref": "pay-1", "request_id": "p1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"order_id": 2}));

    let r = h.get("/v1/orders/2").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "paid");
    assert_eq!(r.body["payment_ref"], "pay-1");
    assert_eq!(r.body["hold_id"], 1);
    assert_eq!(r.body["created_at_ms"], 2_000);

    let r = h.get("/v1/users/alice/orders").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["orders"][0]["order_id"], 2);
    let r = h.get("/v1/users/alice/orders?after=2").await;
    assert_eq!(r.body["orders"], json!([]));
    let r = h.get("/v1/users/bad%20user/orders").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");

    let r = h.get("/v1/users/alice/holds").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["holds"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["holds"][0]["hold_id"], 1);
    assert_eq!(r.body["holds"][0]["state"], "checked_out");
    assert_eq!(r.body["holds"][0]["order_id"], 2);
    assert_eq!(r.body["holds"][0]["request_id"], "r1");
    assert_eq!(r.body["next_after"], json!(null));
    let r = h.get("/v1/users/alice/holds?after=1").await;
    assert_eq!(r.body["holds"], json!([]));
    let r = h.get("/v1/users/nobody/holds?limit=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let r = h
        .post(
            "/v1/orders/2/cancel",
            json!({"user_id": "alice", "request_id": "x1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "order_not_cancellable");

    let r = h.get(&format!("/v1/sales/{SALE}/stats")).await;
    assert_eq!(r.body["orders_paid"], 1);
    assert_eq!(r.body["unique_buyers"], 1);
}

#[tokio::test]
async fn release_payment_failure_and_cancel() {
    let h = Http::new();
    h.open_sale(10).await;
    assert_eq!(h.reserve("alice", 1, "r1").await.body["hold_id"], 1);
    let r = h
        .post(
            "/v1/holds/1/release",
            json!({"user_id": "alice", "request_id": "rel"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"hold_id": 1}));
    let r = h
        .post(
            "/v1/holds/1/checkout",
            json!({"user_id": "alice", "request_id": "c1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "hold_not_active");

    assert_eq!(h.reserve("alice", 1, "r2").await.body["hold_id"], 2);
    let r = h
        .post(
            "/v1/holds/2/checkout",
            json!({"user_id": "alice", "request_id": "c2"}),
        )
        .await;
    assert_eq!(r.body["order_id"], 3);
    let r = h
        .post(
            "/v1/orders/3/payment-failure",
            json!({"user_id": "alice", "reason": "card declined", "request_id": "f1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"order_id": 3}));
    let r = h.get("/v1/orders/3").await;
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(r.body["cancel_reason"], "payment_failed");

    assert_eq!(h.reserve("alice", 1, "r3").await.body["hold_id"], 4);
    let r = h
        .post(
            "/v1/holds/4/checkout",
            json!({"user_id": "alice", "request_id": "c3"}),
        )
        .await;
    assert_eq!(r.body["order_id"], 5);
    let r = h
        .post(
            "/v1/orders/5/cancel",
            json!({"user_id": "bob", "request_id": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "not_owner");
    let r = h
        .post(
            "/v1/orders/5/cancel",
            json!({"user_id": "alice", "request_id": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"order_id": 5}));
    assert_eq!(h.get("/v1/orders/5").await.body["cancel_reason"], "by_user");

    for (uri, code) in [
        ("/v1/holds/99", "hold_not_found"),
        ("/v1/orders/99", "order_not_found"),
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(r.code(), code);
        assert_eq!(r.header("x-stockade-served-by"), Some("7"));
    }
    let r = h
        .post(
            "/v1/holds/99/release",
            json!({"user_id": "alice", "request_id": "z"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "hold_not_found");
    let r = h
        .post(
            "/v1/orders/99/cancel",
            json!({"user_id": "alice", "request_id": "z2"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "order_not_found");
}

#[tokio::test]
async fn business_rejections_are_409_with_their_code() {
    let h = Http::new();
    let r = h.reserve("alice", 1, "r0").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "sale_not_found");

    let r = h.post("/v1/sales", spec_json(2)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = h.reserve("alice", 1, "r1").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "sale_not_started");
    assert_eq!(r.body["message"], "the sale starts at 1000 ms");

    h.fake.set_clock(2_000);
    let r = h.reserve("alice", 3, "r2").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "insufficient_stock");
    assert_eq!(
        h.reserve("alice", 2, "r3").await.status,
        StatusCode::CREATED
    );
    let r = h.reserve("bob", 1, "r4").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "sold_out");
    assert_eq!(r.body["message"], "sold out");
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));
    assert_eq!(r.header("content-type"), Some("application/json"));

    // The same request id for a different command.
    let r = h.reserve("alice", 1, "r3").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "request_id_reused");
}

#[tokio::test]
async fn per_user_limit_is_409_limit_exceeded() {
    let h = Http::new();
    h.open_sale(10).await;
    assert_eq!(
        h.reserve("alice", 2, "r1").await.status,
        StatusCode::CREATED
    );
    let r = h.reserve("alice", 1, "r2").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "limit_exceeded");
}

#[tokio::test]
async fn hold_expired_is_409() {
    let h = Http::new();
    h.open_sale(10).await;
    assert_eq!(
        h.reserve("alice", 1, "r1").await.status,
        StatusCode::CREATED
    );
    h.fake.set_clock(7_001);
    let r = h
        .post(
            "/v1/holds/1/checkout",
            json!({"user_id": "alice", "request_id": "c"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "hold_expired");
}

#[tokio::test]
async fn waitlist_join_position_leave() {
    let h = Http::new();
    h.open_sale(1).await;
    let uri = format!("/v1/sales/{SALE}/waitlist");
    let join = |user: &'static str, req: &'static str| {
        h.post(&uri, json!({"user_id": user, "qty": 1, "request_id": req}))
    };
    let r = join("bob", "w0").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "not_sold_out");

    assert_eq!(
        h.reserve("alice", 1, "r1").await.status,
        StatusCode::CREATED
    );
    let r = join("bob", "w1").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body, json!({"sale_id": SALE, "position": 1}));
    let r = join("bob", "w2").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "already_waitlisted");

    let r = h.get(&format!("/v1/sales/{SALE}/waitlist/bob")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"state": "waiting", "position": 1, "qty": 1, "hold_id": null})
    );

    let r = h
        .raw("DELETE", &format!("/v1/sales/{SALE}/waitlist/bob"), None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "request_id is required");
    assert_eq!(r.code(), "invalid");
    let r = h
        .raw(
            "DELETE",
            &format!("/v1/sales/{SALE}/waitlist/bob?request_id=l1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!({"sale_id": SALE}));
    let r = h
        .raw(
            "DELETE",
            &format!("/v1/sales/{SALE}/waitlist/bob?request_id=l2"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "not_waitlisted");

    let r = h.get(&format!("/v1/sales/{SALE}/waitlist/bob")).await;
    assert_eq!(r.body["state"], "not_waitlisted");
    let r = h.get("/v1/sales/nope/waitlist/bob").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "sale_not_found");
}

#[tokio::test]
async fn bad_bodies_get_exact_statuses_and_json_codes() {
    let h = Http::new();
    h.open_sale(10).await;
    let uri = format!("/v1/sales/{SALE}/holds");
    let cases: &[(&str, StatusCode, &str, &str)] = &[
        (
            "{\"user_id\": ",
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        ("not json", StatusCode::BAD_REQUEST, "invalid_json", ""),
        (
            r#"{"user_id":"a","qty":1,"request_id":"r","extra":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "extra",
        ),
        (
            r#"{"user_id":"a","qty":"two","request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        (
            r#"{"user_id":"a","qty":-1,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        (
            r#"{"user_id":"a","qty":99999999999999999999999,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        (
            r#"{"user_id":"a","qty":4294967296,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        (
            r#"{"user_id":"a","qty":1.5,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        (
            r#"{"user_id":"a","request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "qty",
        ),
        // Parsed, then refused by the state machine's validation (never proposed).
        (
            r#"{"user_id":"a","qty":0,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "invalid qty: must be 1..=100",
        ),
        (
            r#"{"user_id":"a b","qty":1,"request_id":"r"}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "invalid user_id",
        ),
        (
            r#"{"user_id":"a","qty":1,"request_id":""}"#,
            StatusCode::BAD_REQUEST,
            "invalid",
            "invalid request_id",
        ),
    ];
    let before = h.fake.proposals.lock().unwrap().len();
    for (body, status, code, mentions) in cases {
        let r = h.raw("POST", &uri, Some(body)).await;
        assert_eq!(r.status, *status, "{body}: {}", r.text);
        assert_eq!(r.code(), *code, "{body}: {}", r.text);
        assert_eq!(r.header("content-type"), Some("application/json"), "{body}");
        let msg = r.body["message"].as_str().unwrap();
        assert!(msg.contains(mentions), "{body}: {msg}");
    }
    assert_eq!(
        h.fake.proposals.lock().unwrap().len(),
        before,
        "nothing proposed"
    );

    // Negative and huge numbers in a sale spec.
    let mut s = spec_json(10);
    s["quantity"] = json!(-5);
    let r = h.post("/v1/sales", s).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    let mut s = spec_json(10);
    s["list_price_minor"] = json!(u64::MAX);
    s["sale_price_minor"] = json!(u64::MAX);
    let r = h.post("/v1/sales", s).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid list_price_minor"));
    let mut s = spec_json(10);
    s["product"]["color"] = json!("red");
    let r = h.post("/v1/sales", s).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid");
    assert!(
        r.body["message"].as_str().unwrap().contains("color"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn oversized_body_is_413_and_wrong_content_type_415() {
    let h = Http::with_limits(ApiLimits {
        request_body_bytes_max: 1024,
        ..ApiLimits::default()
    });
    let big = format!(
        r#"{{"user_id":"a","qty":1,"request_id":"r","pad":"{}"}}"#,
        "x".repeat(2000)
    );
    let r = h.raw("POST", "/v1/sales/s/holds", Some(&big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text);
    assert_eq!(r.code(), "payload_too_large");

    // The default limit is 64 KiB.
    let h = Http::new();
    let big = format!(
        r#"{{"user_id":"a","qty":1,"request_id":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let r = h.raw("POST", "/v1/sales/s/holds", Some(&big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "payload_too_large");

    let req = Request::builder()
        .method("POST")
        .uri("/v1/sales/s/holds")
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"user_id":"a","qty":1,"request_id":"r"}"#))
        .unwrap();
    let r = h.send(req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.code(), "unsupported_media_type");
}

#[tokio::test]
async fn bad_paths_unknown_routes_and_methods_are_json() {
    let h = Http::new();
    for uri in [
        "/v1/holds/abc",
        "/v1/holds/-1",
        "/v1/orders/99999999999999999999999",
    ] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(r.code(), "invalid", "{uri}");
    }
    let r = h.get("/v2/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "route_not_found");
    let r = h.raw("DELETE", "/v1/sales", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");
}

#[tokio::test]
async fn cluster_errors_map_to_status_code_and_retry_after() {
    let h = Http::new();
    h.open_sale(10).await;
    let cases = [
        (
            ClusterError::NoLeader {
                retry_after_ms: 1_500,
            },
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            Some("2"),
        ),
        (
            ClusterError::Overloaded { retry_after_ms: 1 },
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            Some("1"),
        ),
        (
            ClusterError::Unknown("leader lost".into()),
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            None,
        ),
        (
            ClusterError::Internal("disk".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            None,
        ),
    ];
    for (err, status, code, retry) in cases {
        h.fake.fail_with(Some(err.clone()));
        for r in [
            h.reserve("alice", 1, "r1").await,
            h.get(&format!("/v1/sales/{SALE}")).await,
        ] {
            assert_eq!(r.status, status, "{err:?}");
            assert_eq!(r.code(), code);
            assert_eq!(r.header("retry-after"), retry, "{err:?}");
            assert_eq!(r.body["message"], err.to_string());
        }
    }
    h.fake
        .fail_with(Some(ClusterError::Unknown("timeout".into())));
    let r = h.reserve("alice", 1, "r1").await;
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("retry with the same request_id"));

    h.fake.fail_with(Some(ClusterError::Refused(
        "membership change in progress".into(),
    )));
    let r = h.post("/admin/leader", json!({"to": 2})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "refused");
    assert_eq!(r.body["message"], "membership change in progress");
    h.fake.fail_with(None);
    assert_eq!(
        h.reserve("alice", 1, "r1").await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn slow_requests_time_out_with_504_json() {
    let h = Http::with_limits(ApiLimits {
        request_timeout_ms: 50,
        ..ApiLimits::default()
    });
    h.open_sale(10).await;
    h.fake
        .propose_delay_ms
        .store(2_000, std::sync::atomic::Ordering::SeqCst);
    let r = h.reserve("alice", 1, "r1").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.code(), "timeout");
}

#[tokio::test]
async fn admin_routes() {
    let h = Http::new();
    let r = h.get("/admin/status").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["role"], "leader");
    assert_eq!(r.body["members"][0]["api_addr"], "127.0.0.1:8000");
    assert_eq!(r.header("x-stockade-served-by"), Some("7"));
    let r = h.get("/admin/state-hash").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        json!({"node_id": 7, "applied_index": 3, "state_hash": 42})
    );

    let r = h
        .post(
            "/admin/learners",
            json!({"node_id": 2, "raft_addr": "10.0.0.2:7000", "api_addr": "10.0.0.2:8000"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["node_id"], 7);
    let r = h
        .post(
            "/admin/membership",
            json!({"voters": [7, 2], "retain": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = h.post("/admin/leader", json!({"to": 2})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.raw("POST", "/admin/snapshot", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h.raw("POST", "/admin/compact", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"node_id": 7, "sst_bytes_before": 2048, "sst_bytes_after": 1024, "took_ms": 5})
    );
    let r = h.post("/admin/init", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = h
        .post(
            "/admin/init",
            json!({"members": [{"node_id": 7, "raft_addr": "a:1", "api_addr": "a:2"},
                               {"node_id": 8, "raft_addr": "b:1", "api_addr": "b:2"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        *h.fake.admin_calls.lock().unwrap(),
        [
            "learner 2 10.0.0.2:7000 10.0.0.2:8000",
            "membership {2, 7} true",
            "leader 2",
            "snapshot",
            "compact",
            "init []",
            "init [7=a:1/a:2,8=b:1/b:2]"
        ]
    );

    for (uri, body, mentions) in [
        ("/admin/membership", json!({"voters": []}), "voters"),
        ("/admin/membership", json!({"voters": [1, 1]}), "voters"),
        (
            "/admin/learners",
            json!({"node_id": 2, "raft_addr": "", "api_addr": "x"}),
            "raft_addr",
        ),
        ("/admin/leader", json!({"to": -1}), "to"),
        ("/admin/leader", json!({"to": 1, "force": true}), "force"),
        (
            "/admin/init",
            json!({"members": [{"node_id": 1, "raft_addr": "a:1", "api_addr": "a:2"},
                               {"node_id": 1, "raft_addr": "b:1", "api_addr": "b:2"}]}),
            "twice",
        ),
    ] {
        let r = h.post(uri, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.code(), "invalid");
        assert!(
            r.body["message"].as_str().unwrap().contains(mentions),
            "{}",
            r.text
        );
    }
    assert_eq!(h.fake.admin_calls.lock().unwrap().len(), 7);
}

#[tokio::test]
async fn backup_streams_the_snapshot_file() {
    let h = Http::with_limits(ApiLimits {
        backup_chunk_bytes: 7,
        ..ApiLimits::default()
    });
    let r = h.get("/admin/backup").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "not_found");

    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    *h.fake.backup_bytes.lock().unwrap() = Some(bytes.clone());
    let resp = tower::ServiceExt::oneshot(
        h.app.clone(),
        Request::get("/admin/backup").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    assert_eq!(resp.headers()["content-length"], "1000");
    assert_eq!(resp.headers()["x-stockade-snapshot-index"], "8");
    let got = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(got.to_vec(), bytes);
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Http::new();
    let r = h.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"status": "ok", "node_id": 7}));
    let r = h.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"has_leader": true, "caught_up": true}));
    for (has_leader, caught_up) in [(false, true), (true, false)] {
        *h.fake.not_ready.lock().unwrap() = Some(Readiness {
            has_leader,
            caught_up,
        });
        let r = h.get("/readyz").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.code(), "not_ready");
        assert_eq!(
            r.body["message"],
            format!("not ready: has_leader={has_leader}, caught_up={caught_up}")
        );
    }
    // Health does not depend on the cluster.
    h.fake
        .fail_with(Some(ClusterError::NoLeader { retry_after_ms: 10 }));
    assert_eq!(h.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_routes_reservations_and_rejections() {
    let h = Http::new();
    h.open_sale(1).await;
    assert_eq!(
        h.reserve("alice", 1, "r1").await.status,
        StatusCode::CREATED
    );
    assert_eq!(h.reserve("bob", 1, "r2").await.status, StatusCode::CONFLICT);
    assert_eq!(
        h.reserve("carol", 1, "r3").await.status,
        StatusCode::CONFLICT
    );
    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let m = &r.text;
    for line in [
        r#"stockade_api_requests_total{route="/v1/sales/{id}/holds",method="POST",status="201"} 1"#,
        r#"stockade_api_requests_total{route="/v1/sales/{id}/holds",method="POST",status="409"} 2"#,
        r#"stockade_api_requests_total{route="/v1/sales",method="POST",status="201"} 1"#,
        r#"stockade_api_holds_granted_total 1"#,
        r#"stockade_api_units_reserved_total 1"#,
        r#"stockade_api_rejections_total{code="sold_out"} 2"#,
        r#"stockade_api_request_duration_seconds_count{route="/v1/sales/{id}/holds",method="POST"} 3"#,
        "stockade_raft_term 3",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line} in\n{m}");
    }
    assert!(m.ends_with("# EOF\n"), "{m}");
}

/// A node with refusals from reads on and a one-unit sale that alice's first attempt
/// (`a1`, answered here) has sold out.
async fn sold_out_with_refusals_from_reads() -> (Http, Reply) {
    let h = Http::new();
    h.fake
        .refusals_from_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.open_sale(1).await;
    let first = h.reserve_first("alice", 1, "a1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    (h, first)
}

/// A first attempt (`first_attempt: true`) at a sold-out sale is refused from a
/// linearizable read, without a proposal.
#[tokio::test]
async fn a_sold_out_sale_refuses_first_attempts_without_a_log_entry() {
    let (h, first) = sold_out_with_refusals_from_reads().await;
    let proposals = h.fake.proposals.lock().unwrap().len();
    for i in 0..5 {
        let r = h.reserve_first(&format!("u{i}"), 1, &format!("x{i}")).await;
        assert_eq!(r.status, StatusCode::CONFLICT);
        assert_eq!(r.code(), "sold_out");
        assert_eq!(r.header("x-stockade-served-by"), Some("7"));
    }
    assert_eq!(
        h.fake.proposals.lock().unwrap().len(),
        proposals,
        "refused from a linearizable read, without a proposal"
    );
    let m = h.get("/metrics").await.text;
    assert!(
        m.lines()
            .any(|l| l == "stockade_api_refusals_from_reads_total 5"),
        "{m}"
    );
    assert!(h
        .fake
        .reads
        .lock()
        .unwrap()
        .contains(&stockade_api::ReadLevel::Linearizable));
    // A retry of the request that got the unit gets its first answer, not a refusal.
    let again = h.reserve("alice", 1, "a1").await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["hold_id"], first.body["hold_id"]);
    assert_eq!(h.fake.proposals.lock().unwrap().len(), proposals + 1);
}

/// A retry (no `first_attempt`) is never refused from a read, even with refusals from
/// reads on: it goes through the log, so its refusal is recorded and comes back to every
/// later send of that request id even after a unit has returned (a late earlier send of
/// the id, still in flight when the retry was refused, gets it too). Had the retry been
/// refused from a read, the second send below would be looked at afresh and get the unit.
/// With refusals from reads off, a marked first attempt goes through the log as well.
#[tokio::test]
async fn a_retry_goes_through_the_log_and_its_refusal_is_recorded() {
    let (h, _) = sold_out_with_refusals_from_reads().await;
    let before = h.fake.proposals.lock().unwrap().len();
    let refused = h.reserve("bob", 1, "b1").await;
    assert_eq!(refused.code(), "sold_out", "{}", refused.text);
    assert_eq!(
        h.fake.proposals.lock().unwrap().len(),
        before + 1,
        "the retry's refusal went through the log"
    );
    let r = h
        .post(
            "/v1/holds/1/release",
            json!({"user_id": "alice", "request_id": "rel"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let again = h.reserve("bob", 1, "b1").await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    assert_eq!(
        again.code(),
        "sold_out",
        "the recorded first answer comes back"
    );
    let fresh = h.reserve_first("bob", 1, "b2").await;
    assert_eq!(fresh.status, StatusCode::CREATED, "{}", fresh.text);
    let m = h.get("/metrics").await.text;
    assert!(
        m.lines()
            .any(|l| l == "stockade_api_refusals_from_reads_total 0"),
        "a retry's refusal is not counted as one from a read: {m}"
    );

    // Turned off on the node: a marked first attempt is proposed too.
    h.fake
        .refusals_from_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let before = h.fake.proposals.lock().unwrap().len();
    let off = h.reserve_first("carol", 1, "c1").await;
    assert_eq!(off.code(), "sold_out", "{}", off.text);
    assert_eq!(h.fake.proposals.lock().unwrap().len(), before + 1);
}
