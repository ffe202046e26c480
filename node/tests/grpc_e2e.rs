//! End to end over the public gRPC API of real in-process nodes: a client talks to a
//! follower, which forwards to the leader; answers carry who served them, rejections
//! carry their stable code.

use std::time::{SystemTime, UNIX_EPOCH};

use stockade_node::NodeHandle;
use stockade_proto::v1::stockade_client::StockadeClient;
use stockade_proto::v1::{
    admin_client::AdminClient, CreateSaleRequest, GetSaleRequest, Product, ReserveRequest,
    SaleSpec, StatusRequest,
};
use tempfile::TempDir;

async fn three_nodes(dir: &std::path::Path) -> Vec<NodeHandle> {
    stockade_node::local::start_cluster(3, dir, &[])
        .await
        .expect("cluster")
}

fn served_by<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("x-stockade-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_of_a_follower_is_served_by_the_leader_over_grpc() {
    let dir = TempDir::new().unwrap();
    let nodes = three_nodes(dir.path()).await;
    let leader = nodes.iter().find(|n| n.raft.is_leader()).unwrap().id;
    let follower = nodes.iter().find(|n| n.id != leader).unwrap();
    let mut client = StockadeClient::connect(format!("http://{}", follower.grpc_addr))
        .await
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let spec = SaleSpec {
        id: "grpc-drop".into(),
        product: Some(Product {
            sku: "G".into(),
            name: "Gadget".into(),
            description: String::new(),
            image_url: String::new(),
        }),
        list_price_minor: 2_000,
        sale_price_minor: 1_000,
        currency: "EUR".into(),
        quantity: 1,
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        per_user_limit: 1,
        hold_ttl_ms: 60_000,
        payment_window_ms: 60_000,
    };
    let created = client
        .create_sale(CreateSaleRequest { spec: Some(spec) })
        .await
        .unwrap();
    assert_eq!(served_by(&created), leader.to_string());
    let reserve = |user: &str, req: &str| ReserveRequest {
        sale_id: "grpc-drop".into(),
        user_id: user.into(),
        qty: 1,
        request_id: req.into(),
        first_attempt: false,
    };
    let held = client.reserve(reserve("ann", "a1")).await.unwrap();
    assert_eq!(served_by(&held), leader.to_string());
    assert_eq!(held.into_inner().qty, 1);
    let err = client
        .reserve(reserve("bob", "b1"))
        .await
        .expect_err("sold out");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        err.metadata()
            .get("x-stockade-code")
            .and_then(|v| v.to_str().ok()),
        Some("sold_out")
    );
    // A linearizable read through the follower sees the hold.
    let sale = client
        .get_sale(GetSaleRequest {
            sale_id: "grpc-drop".into(),
            consistency: 1,
        })
        .await
        .unwrap();
    assert_eq!(served_by(&sale), follower.id.to_string());
    let counters = sale.into_inner().counters.unwrap();
    assert_eq!((counters.available, counters.held), (0, 1));
    let mut admin = AdminClient::connect(format!("http://{}", follower.grpc_addr))
        .await
        .unwrap();
    let status = admin.status(StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.leader_id, Some(leader));
    assert_eq!(status.members.len(), 3);
    for n in nodes {
        n.shutdown().await;
    }
}
