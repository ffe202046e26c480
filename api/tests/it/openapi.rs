//! The OpenAPI document must describe exactly the routes the router serves.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use stockade_api::{Api, ApiLimits};

use crate::common::*;

fn documented() -> BTreeSet<(String, String)> {
    let doc = stockade_api::openapi();
    let mut out = BTreeSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if op.is_some() {
                out.insert((method.to_string(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let (_, table) = Api::new(Fake::new(), ApiLimits::default()).http_router_and_table();
    let routed: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(routed.len(), table.len(), "a route is added twice");
    let documented = documented();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the document: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes the router lacks: {extra:?}"
    );
    assert_eq!(routed.len(), 32);
}

#[tokio::test]
async fn the_document_is_served_and_names_its_schemas() {
    let h = Http::new();
    let r = h.get("/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        serde_json::to_value(stockade_api::openapi()).unwrap()
    );
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let schemas = &r.body["components"]["schemas"];
    for name in [
        "SaleSpecDto",
        "HoldGrantDto",
        "ErrorBody",
        "ReserveBody",
        "ClusterStatusDto",
    ] {
        assert!(schemas.get(name).is_some(), "schema {name} missing");
    }
    assert_eq!(
        r.body["paths"]["/v1/sales/{id}/holds"]["post"]["responses"]["409"]["content"]
            ["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorBody"
    );
}
