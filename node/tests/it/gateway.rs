//! The HTTP gateway (Workato Event Streams API) over real HTTP against a
//! 3-node cluster, through a follower's gateway as well as a leader's.

#![allow(clippy::unwrap_used)]

use crate::common;
use crate::http;

use std::time::Duration;

use crate::common::TestCluster;
use http::Http;
use http::assert_error;
use http::assert_error_naming;
use http::consume_all;
use http::create_topic;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_are_managed_in_workato_shapes_through_any_node() {
    let cluster = TestCluster::start(3).await;
    let http = Http::new(&cluster, 2);
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let topic = create_topic(
        &http,
        &cluster,
        json!({"name": "orders", "description": "all orders", "schema": schema, "partitions": 2, "retention_hours": 24}),
    )
    .await;
    assert_eq!(topic["partitions"], 2);
    assert_eq!(topic["replication_factor"], 3);
    assert_eq!(topic["retention_hours"], 24);
    assert_eq!(topic["schema"], schema);
    let id = topic["id"].as_u64().unwrap();

    let other = Http::new(&cluster, 3);
    let (status, by_id) = other.get(&format!("/api/event_streams/topics/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_id["name"], "orders");
    let (_, by_name) = other.get("/api/event_streams/topics/orders").await;
    assert_eq!(by_name["id"], id);

    let (_, list) = other.get("/api/event_streams/topics?name=orders").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("schema").is_none());
    let (_, list) = other
        .get("/api/event_streams/topics?include_schema=true")
        .await;
    assert_eq!(list["data"][0]["schema"], schema);

    let (status, body) = http
        .post("/api/event_streams/topics", json!({"name": "orders"}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    let (status, body) = http
        .post(
            "/api/event_streams/topics",
            json!({"name": "bad", "schema": {"type": 12}}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_schema");
    let (status, body) = http
        .post(
            "/api/event_streams/topics",
            json!({"description": "no name"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let (status, updated) = http
        .send(
            reqwest::Method::PUT,
            &format!("/api/event_streams/topics/{id}"),
            Some(json!({"description": "renamed", "schema": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["description"], "renamed");
    assert_eq!(updated["schema"], Value::Null);
    assert_eq!(updated["retention_hours"], 24, "untouched fields stay");

    let (status, _) = http
        .post(
            &format!("/api/v1/topics/{id}/publish"),
            json!({"anything": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "no schema any more");
    let (status, _) = http
        .send(
            reqwest::Method::PUT,
            &format!("/api/event_streams/topics/{id}/purge"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(consume_all(&http, "orders", 50).await.is_empty());

    let (status, _) = http
        .delete(&format!("/api/event_streams/topics/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = other.get(&format!("/api/event_streams/topics/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    cluster.shutdown().await;
}

/// The names of the topics a list answered, in order.
fn listed_names(list: &Value) -> Vec<&str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_topic_list_filters_by_part_of_the_name_and_pages_in_id_order() {
    let cluster = TestCluster::start(1).await;
    let http = Http::new(&cluster, 1);
    let schema = json!({"type": "object"});
    for name in [
        "orders-eu",
        "invoices",
        "orders-us",
        "Orders-archive",
        "refunds",
    ] {
        http.post_ok(
            "/api/event_streams/topics",
            json!({"name": name, "schema": schema}),
        )
        .await;
    }
    let list = |query: &'static str| {
        let http = &http;
        async move {
            let (status, body) = http.get(&format!("/api/event_streams/topics{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body
        }
    };

    let all = list("").await;
    assert_eq!(
        listed_names(&all),
        [
            "orders-eu",
            "invoices",
            "orders-us",
            "Orders-archive",
            "refunds"
        ]
    );
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("schema").is_none()),
        "schemas only with include_schema=true: {all}"
    );
    // Part of a name, case-sensitive.
    let orders = list("?name=orders").await;
    assert_eq!(listed_names(&orders), ["orders-eu", "orders-us"]);
    assert_eq!(listed_names(&list("?name=voice").await), ["invoices"]);
    assert!(listed_names(&list("?name=nothing").await).is_empty());
    let with_schema = list("?name=orders&include_schema=true").await;
    for topic in with_schema["data"].as_array().unwrap() {
        assert_eq!(topic["schema"], schema);
    }
    let without = list("?include_schema=false").await;
    assert!(without["data"][0].get("schema").is_none());

    assert_eq!(
        listed_names(&list("?per_page=2").await),
        ["orders-eu", "invoices"]
    );
    assert_eq!(
        listed_names(&list("?per_page=2&page=2").await),
        ["orders-us", "Orders-archive"]
    );
    assert_eq!(listed_names(&list("?per_page=2&page=3").await), ["refunds"]);
    assert!(listed_names(&list("?per_page=2&page=4").await).is_empty());
    // Pages count the matching topics only.
    assert_eq!(
        listed_names(&list("?name=orders&per_page=1&page=2").await),
        ["orders-us"]
    );
    for bad in ["?page=0", "?per_page=0", "?per_page=101", "?page=x"] {
        let (status, body) = http.get(&format!("/api/event_streams/topics{bad}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(listed_names(&list("?per_page=100").await).len(), 5);
    cluster.shutdown().await;
}

/// The creating call answers once the new topic's partitions have leaders,
/// and a node whose partitions are still starting waits for them, so
/// publishes sent the moment the create answers succeed through any node
/// on the first try: each is sent once (not through `http::finish`, which
/// retries a 503), and all at once. Node 3 starts new partitions late, as
/// a slow disk would: without the waits its publishes were refused ("group
/// is not hosted on this node").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_right_after_creating_a_topic_succeeds_first_time_through_every_node() {
    use raftstream_node::failpoints::Action;
    use raftstream_node::failpoints::Failpoint;
    use raftstream_node::failpoints::Rule;
    const PARTITIONS: u32 = 6;
    let cluster = TestCluster::start(3).await;
    cluster.failpoints(3).arm(
        Failpoint::GroupStart,
        Rule::new(Action::Delay(Duration::from_millis(700))).times(1),
    );
    let (status, topic) = Http::new(&cluster, 1)
        .post(
            "/api/event_streams/topics",
            json!({"name": "fresh", "partitions": PARTITIONS}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    let gateways: Vec<Http> = (1..=3).map(|node| Http::new(&cluster, node)).collect();
    // Each node spreads unkeyed publishes round-robin: as many publishes
    // as partitions through a node reach every partition through it.
    let publishes = gateways.iter().enumerate().flat_map(|(node, http)| {
        (0..PARTITIONS).map(move |i| async move {
            let response = http
                .request(reqwest::Method::POST, "/api/v1/topics/fresh/publish")
                .json(&json!({"node": node + 1, "i": i}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (node + 1, status, body)
        })
    });
    let mut reached: std::collections::BTreeMap<usize, std::collections::BTreeSet<u32>> =
        std::collections::BTreeMap::new();
    for (node, status, body) in futures::future::join_all(publishes).await {
        assert_eq!(status, StatusCode::OK, "through node {node}: {body}");
        let id = body["message_id"].as_str().unwrap();
        let (partition, _) = id.split_once('-').unwrap();
        reached
            .entry(node)
            .or_default()
            .insert(partition.parse().unwrap());
    }
    for node in 1..=3 {
        assert_eq!(
            reached[&node],
            (0..PARTITIONS).collect(),
            "node {node} did not publish to every partition"
        );
    }
    assert_eq!(cluster.failpoints(3).fired(Failpoint::GroupStart), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_validates_against_the_schema_and_batches_fail_item_by_item() {
    let cluster = TestCluster::start(3).await;
    let http = Http::new(&cluster, 1);
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    create_topic(&http, &cluster, json!({"name": "typed", "schema": schema})).await;

    let ack = http
        .post_ok("/api/v1/topics/typed/publish", json!({"n": 1}))
        .await;
    assert!(ack["message_id"].is_string());
    let (status, body) = http
        .post("/api/v1/topics/typed/publish", json!({"n": "one"}))
        .await;
    assert_error_naming(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "schema_mismatch",
        "/n",
    );
    let (status, body) = http
        .post("/api/v1/topics/typed/publish", json!([1, 2]))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let batch = http
        .post_ok(
            "/api/v1/batch/topics/typed/publish",
            json!({"payloads": [{"n": 2}, {"n": "bad"}, {"n": 3}]}),
        )
        .await;
    assert_eq!(batch["is_partial_error"], true);
    assert_eq!(batch["message_ids"]["0"]["result"], "success");
    assert!(batch["message_ids"]["1"]["message_id"].is_null());
    assert!(
        batch["message_ids"]["1"]["result"]
            .as_str()
            .unwrap()
            .contains("/n")
    );
    assert_eq!(batch["message_ids"]["2"]["result"], "success");

    let payloads: Vec<Value> = consume_all(&http, "typed", 50)
        .await
        .into_iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(
        payloads,
        vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_consumer_misses_and_repeats_nothing_on_a_multi_partition_topic() {
    let cluster = TestCluster::start(3).await;
    let http = Http::with_topic(&cluster, 3, json!({"name": "spread", "partitions": 3})).await;
    let payloads: Vec<Value> = (0..40).map(|i| json!({"i": i})).collect();
    for chunk in payloads.chunks(10) {
        let (status, _) = http
            .post(
                "/api/v1/batch/topics/spread/publish",
                json!({"payloads": chunk}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // Interleave more publishes with a consumer resuming from ids.
    let mut seen = consume_all(&http, "spread", 7).await;
    for i in 40..50 {
        http.post("/api/v1/topics/spread/publish", json!({"i": i}))
            .await;
    }
    let last_id = seen.last().unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, page) = http
        .post(
            "/api/v1/topics/spread/consume",
            json!({"after_message_id": last_id, "batch_size": 50}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    seen.extend(page["messages"].as_array().unwrap().clone());
    let mut values: Vec<i64> = seen
        .iter()
        .map(|m| m["payload"]["i"].as_i64().unwrap())
        .collect();
    values.sort();
    assert_eq!(
        values,
        (0..50).collect::<Vec<_>>(),
        "every message exactly once"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_since_time_and_long_poll_wake_up() {
    let cluster = TestCluster::start(3).await;
    let http = Http::with_topic(&cluster, 2, json!({"name": "timeline"})).await;
    for i in 0..3 {
        http.post("/api/v1/topics/timeline/publish", json!({"i": i}))
            .await;
    }
    let all = consume_all(&http, "timeline", 50).await;
    let second_time = all[1]["time"].as_str().unwrap().to_string();
    let (_, page) = http
        .post(
            "/api/v1/topics/timeline/consume",
            json!({"since_time": second_time}),
        )
        .await;
    let first = &page["messages"][0];
    assert!(first["time"].as_str().unwrap() >= second_time.as_str());
    assert!(page["messages"].as_array().unwrap().len() >= 2);
    let (_, future) = http
        .post(
            "/api/v1/topics/timeline/consume",
            json!({"since_time": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(future["messages"], json!([]));

    let last = all.last().unwrap()["message_id"]
        .as_str()
        .unwrap()
        .to_string();
    let poller = Http::new(&cluster, 3);
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (status, page) = poller
            .post(
                "/api/v1/topics/timeline/consume",
                json!({"after_message_id": last, "timeout_secs": 30}),
            )
            .await;
        (status, page, started.elapsed())
    });
    http.post("/api/v1/topics/timeline/publish", json!({"i": "late"}))
        .await;
    let (status, page, waited) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["messages"][0]["payload"]["i"], "late");
    assert!(waited < Duration::from_secs(30));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_http_requests_get_the_right_status_and_error_body() {
    let cluster = TestCluster::start(3).await;
    let http = Http::with_topic(&cluster, 1, json!({"name": "strict"})).await;
    http.post("/api/v1/topics/strict/publish", json!({"kept": true}))
        .await;

    let (status, body) = http
        .raw("/api/v1/topics/strict/publish", b"{not json".to_vec())
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = http
        .raw("/api/v1/topics/strict/publish", vec![b' '; 1024 * 1024 + 1])
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    let (status, body) = http.post("/api/v1/topics/missing/publish", json!({})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // A batch holds 1 to 100 payloads.
    let too_many: Vec<Value> = (0..101).map(|i| json!({"i": i})).collect();
    for payloads in [too_many, Vec::new()] {
        let (status, body) = http
            .post(
                "/api/v1/batch/topics/strict/publish",
                json!({ "payloads": payloads }),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    for bad in [
        json!({"batch_size": 0}),
        json!({"batch_size": 51}),
        json!({"timeout_secs": 61}),
        json!({"after_message_id": "0-0", "since_time": "2026-01-01T00:00:00Z"}),
        json!({"after_message_id": "0-99"}),
        json!({"after_message_id": "7-0"}),
        json!({"after_message_id": "nonsense"}),
    ] {
        let (status, body) = http
            .post("/api/v1/topics/strict/consume", bad.clone())
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, body) = http.get("/api/nothing/here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    for topic in [
        // Every partition is a Raft group: one request may not ask for a
        // million of them.
        json!({"name": "vast", "partitions": 1 << 20}),
        json!({"name": "typed", "partitions": "2"}),
    ] {
        let (status, body) = http.post("/api/event_streams/topics", topic).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Nothing above changed what was stored.
    let (_, page) = http.post("/api/v1/topics/strict/consume", json!({})).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_gate_every_api_route_by_scope_and_topic() {
    let cluster = TestCluster::start(3).await;
    let admin = Http::with_topic(&cluster, 2, json!({"name": "mine"})).await;
    create_topic(&admin, &cluster, json!({"name": "theirs"})).await;

    let (status, body) = admin
        .with_token(None)
        .post("/api/v1/topics/mine/publish", json!({}))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body) = admin
        .with_token(Some("rst_nope"))
        .post("/api/v1/topics/mine/publish", json!({}))
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, _) = admin.with_token(None).get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "health stays public");

    let created = admin
        .post_created(
            "/api/tokens",
            json!({"name": "writer", "scopes": ["publish"], "topics": ["mine"]}),
        )
        .await;
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("rst_"));
    let writer = Http::new(&cluster, 3).with_token(Some(&secret));
    let (status, _) = writer
        .post("/api/v1/topics/mine/publish", json!({"ok": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = writer
        .post("/api/v1/topics/theirs/publish", json!({"ok": 1}))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = writer.post("/api/v1/topics/mine/consume", json!({})).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (status, body) = writer.get("/api/event_streams/topics").await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");

    // The secret is shown once: listing shows no secret and no hash.
    let (_, list) = admin.get("/api/tokens").await;
    let listed = list["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "bootstrap admin and writer");
    assert!(!list.to_string().contains(&secret));
    let (status, body) = admin
        .post("/api/tokens", json!({"name": "x", "scopes": ["root"]}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let id = created["id"].as_u64().unwrap();
    let (status, _) = admin.delete(&format!("/api/tokens/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    eventually_status(&writer, StatusCode::UNAUTHORIZED).await;
    let (status, body) = admin.delete(&format!("/api/tokens/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    cluster.shutdown().await;
}

/// A revoked token stops working as the revocation reaches the node.
async fn eventually_status(http: &Http, expected: StatusCode) {
    common::eventually("token revoked", Duration::from_secs(10), || async {
        let (status, _) = http
            .post("/api/v1/topics/mine/publish", json!({"ok": 2}))
            .await;
        (status == expected).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_cluster_stores_its_admin_token_in_a_file_only_its_owner_reads() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let listeners = common::loopback_listeners().await;
    let http_addr = listeners.http.local_addr().unwrap();
    let config = raftstream_node::config::NodeConfig {
        admin_token: None,
        ..common::node_config(1, &listeners, dir.path())
    };
    let path = config.data_dir.join("admin-token");
    let node = raftstream_node::server::RunningNode::start_on(config, listeners)
        .await
        .unwrap();
    let secret = common::eventually("admin-token file", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&path).ok()?;
        (!text.trim().is_empty()).then(|| text.trim().to_string())
    })
    .await;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let client = reqwest::Client::new();
    let list = client
        .get(format!("http://{http_addr}/api/event_streams/topics"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert!(!sibling_exists(&path, "admin-token.new"));
    node.shutdown().await;
}

fn sibling_exists(token_file: &std::path::Path, name: &str) -> bool {
    token_file.with_file_name(name).exists()
}

/// Three nodes of one cluster on loopback: the test defaults, changed by
/// `tweak`.
async fn start_three(
    dir: &std::path::Path,
    tweak: impl Fn(&mut raftstream_node::config::NodeConfig),
) -> Vec<raftstream_node::server::RunningNode> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(common::loopback_listeners().await);
    }
    let peers: std::collections::BTreeMap<raftstream_node::model::NodeId, String> = (1..=3)
        .zip(&listeners)
        .map(|(id, l)| {
            (
                raftstream_node::model::NodeId(id),
                l.peer.local_addr().unwrap().to_string(),
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, listeners) in (1..=3).zip(listeners) {
        let mut config = raftstream_node::config::NodeConfig {
            peers: peers.clone(),
            ..common::node_config(id, &listeners, dir)
        };
        tweak(&mut config);
        nodes.push(
            raftstream_node::server::RunningNode::start_on(config, listeners)
                .await
                .unwrap(),
        );
    }
    nodes
}

/// In a cluster every node may try to create the first admin token; only
/// the one whose token is in the metadata keeps a file, and that token
/// works on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_three_node_cluster_keeps_one_admin_token_file_that_works_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_three(dir.path(), |config| config.admin_token = None).await;
    let token_files: Vec<_> = nodes
        .iter()
        .map(|n| n.node.config.data_dir.join("admin-token"))
        .collect();
    let secret = common::eventually("one admin-token file", Duration::from_secs(30), || async {
        let secrets: Vec<String> = token_files
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|text| text.trim().to_string())
            .collect();
        let pending = token_files
            .iter()
            .any(|path| sibling_exists(path, "admin-token.new"));
        (secrets.len() == 1 && !pending).then(|| secrets[0].clone())
    })
    .await;
    let client = reqwest::Client::new();
    for node in &nodes {
        let http_addr = node.http_addr;
        common::eventually("the admin token works", Duration::from_secs(20), || async {
            let list = client
                .get(format!("http://{http_addr}/api/event_streams/topics"))
                .bearer_auth(&secret)
                .send()
                .await
                .ok()?;
            (list.status() == StatusCode::OK).then_some(())
        })
        .await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// A node behind NAT or a port mapping binds one address and is reached at
/// another: clients learn the advertised one from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_gives_clients_each_nodes_advertised_grpc_address() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_three(dir.path(), |config| {
        config.advertise_grpc_addr = Some(format!(
            "node-{}.example:{}",
            config.node_id,
            config.grpc_addr.port()
        ));
    })
    .await;
    let client =
        raftstream_client::connect(&nodes[0].grpc_addr.to_string(), Some(common::ADMIN_TOKEN))
            .await
            .unwrap();
    let expected: Vec<(u64, String)> = nodes
        .iter()
        .map(|n| {
            let id = n.node.id().0;
            (id, format!("node-{id}.example:{}", n.grpc_addr.port()))
        })
        .collect();
    common::eventually("every advertised address", Duration::from_secs(20), || {
        let mut client = client.clone();
        let expected = expected.clone();
        async move {
            let status = client
                .cluster_status(raftstream_client::pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            let listed: Vec<(u64, String)> = status
                .nodes
                .into_iter()
                .map(|n| (n.id, n.grpc_addr))
                .collect();
            (listed == expected).then_some(())
        }
    })
    .await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_optional_rate_limit_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = common::loopback_listeners().await;
    let http_addr = listeners.http.local_addr().unwrap();
    let config = raftstream_node::config::NodeConfig {
        limits: raftstream_node::config::Limits {
            rate_limit_per_sec: Some(2),
            ..Default::default()
        },
        ..common::node_config(1, &listeners, dir.path())
    };
    let node = raftstream_node::server::RunningNode::start_on(config, listeners)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(format!("http://{http_addr}/api/event_streams/topics"))
            .bearer_auth(common::ADMIN_TOKEN)
            .send()
    };
    common::eventually("token ready", Duration::from_secs(20), || async {
        (get().await.ok()?.status() == StatusCode::OK).then_some(())
    })
    .await;
    // A burst of 2 per second: within a handful of immediate requests one
    // must be refused.
    let mut refused = None;
    for _ in 0..10 {
        let response = get().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("no request was rate limited");
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    node.shutdown().await;
}

/// Every `"$ref": "#/..."` in `document` names something in it.
fn assert_refs_resolve(document: &Value, node: &Value) {
    match node {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let pointer = target
                    .strip_prefix('#')
                    .unwrap_or_else(|| panic!("{target} is not a local reference"));
                assert!(
                    document.pointer(pointer).is_some(),
                    "{target} resolves to nothing"
                );
            }
            map.values().for_each(|v| assert_refs_resolve(document, v));
        }
        Value::Array(items) => items.iter().for_each(|v| assert_refs_resolve(document, v)),
        _ => {}
    }
}

/// What a local reference (`#/...`) points to.
fn resolve<'a>(document: &'a Value, target: &str) -> &'a Value {
    let pointer = target.strip_prefix('#').unwrap();
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{target} resolves to nothing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_documents_are_public_and_describe_every_route() {
    let cluster = TestCluster::start(1).await;
    let public = Http::new(&cluster, 1).with_token(None);
    let (status, openapi) = public.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{openapi}");
    assert!(
        openapi["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        openapi["openapi"]
    );
    assert_refs_resolve(&openapi, &openapi);
    let bearer = &openapi["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"]),
        (&json!("http"), &json!("bearer"))
    );

    let source_secret = &openapi["components"]["securitySchemes"]["source_secret"];
    assert_eq!(source_secret["scheme"], "bearer");
    // Webhook receivers authenticate with a source's secret, not a token.
    let is_webhook =
        |path: &str| path.starts_with("/api/ingest/webhook/") || path.starts_with("/webhook/");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let protected = path.starts_with("/api/") && !is_webhook(path);
            let security = &operation["security"];
            if protected {
                assert_eq!(security, &json!([{"bearer": []}]), "{method} {path}");
            } else if is_webhook(path) {
                assert_eq!(security, &json!([{"source_secret": []}]), "{method} {path}");
                let statuses = operation["responses"].as_object().unwrap();
                for status in ["401", "404", "500", "503", "504"] {
                    assert!(statuses.contains_key(status), "{method} {path} {status}");
                }
            } else {
                assert!(security.is_null(), "{method} {path} is public");
            }
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.as_str() >= "400" {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            let statuses = operation["responses"].as_object().unwrap();
            if protected {
                for status in ["401", "403", "429", "500", "503"] {
                    assert!(statuses.contains_key(status), "{method} {path} {status}");
                }
            }
        }
    }
    let served = [
        "GET /healthz",
        "GET /metrics",
        "GET /readyz",
        "GET /openapi.json",
        "GET /asyncapi.yaml",
        "POST /api/v1/topics/{topic_id}/publish",
        "POST /api/v1/batch/topics/{topic_id}/publish",
        "POST /api/v1/topics/{topic_id}/consume",
        "POST /api/v1/flow/{flow_id}/execution/consume",
        "POST /api/v1/flow/{flow_id}/error/consume",
        "POST /api/v1/workspace/{workspace_id}/activity/consume",
        "GET /api/event_streams/topics",
        "POST /api/event_streams/topics",
        "GET /api/event_streams/topics/{topic_id}",
        "PUT /api/event_streams/topics/{topic_id}",
        "DELETE /api/event_streams/topics/{topic_id}",
        "PUT /api/event_streams/topics/{topic_id}/purge",
        "GET /api/tokens",
        "POST /api/tokens",
        "DELETE /api/tokens/{token_id}",
        "GET /api/ingest/sources",
        "POST /api/ingest/sources",
        "GET /api/ingest/sources/{source_id}",
        "DELETE /api/ingest/sources/{source_id}",
        "POST /api/ingest/sources/{source_id}/rotate-secret",
        "GET /api/subscriptions",
        "POST /api/subscriptions",
        "GET /api/subscriptions/{subscription_id}",
        "PUT /api/subscriptions/{subscription_id}",
        "DELETE /api/subscriptions/{subscription_id}",
        "POST /api/subscriptions/{subscription_id}/pause",
        "POST /api/subscriptions/{subscription_id}/resume",
        "POST /api/subscriptions/{subscription_id}/replay",
        "POST /api/ingest/webhook/{source_id}",
        "GET /webhook/flow/{flow_id}",
        "POST /webhook/flow/{flow_id}",
        "GET /api/cluster",
        "POST /api/cluster/nodes",
        "DELETE /api/cluster/nodes/{node_id}",
        "POST /api/topics/{topic_id}/partitions/{partition}/move",
    ]
    .map(String::from);
    assert_eq!(documented, served.into_iter().collect());
    // A route's own 400 is the one documented, not a shared set's that
    // utoipa would let replace it.
    let move_400 = &openapi["paths"]["/api/topics/{topic_id}/partitions/{partition}/move"]["post"]
        ["responses"]["400"]["description"];
    assert!(
        move_400.as_str().unwrap().contains("unknown_partition"),
        "{move_400}"
    );
    // Every documented route is served: without a token, protected ones
    // and webhook receivers answer 401 and public ones 200.
    for route in &documented {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{topic_id}", "1")
            .replace("{token_id}", "1")
            .replace("{source_id}", "src_1")
            .replace("{workspace_id}", "w_1")
            .replace("{subscription_id}", "sub_1")
            .replace("{flow_id}", "src_1")
            .replace("{node_id}", "1")
            .replace("{partition}", "0");
        let (status, body) = public.send(method.parse().unwrap(), &path, None).await;
        let expected = if path.starts_with("/api/") || is_webhook(&path) {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{route}: {body}");
    }
    let (status, body) = public.get("/api/v1/topics/1/publish").await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    let response = reqwest::get(format!("{}/asyncapi.yaml", public.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    // JSON is a subset of YAML: the document parses as JSON.
    let asyncapi: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(asyncapi["asyncapi"].as_str().unwrap().starts_with("3.0."));
    assert_refs_resolve(&asyncapi, &asyncapi);
    // Channels as the seed APIs name them: Workato's publish, batch publish
    // and consume paths, and the flow model's topic and webhook channels.
    let addresses: std::collections::BTreeSet<&str> = asyncapi["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|channel| channel["address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses,
        [
            "/api/v1/topics/{topic_id}/publish",
            "/api/v1/batch/topics/{topic_id}/publish",
            "/api/v1/topics/{topic_id}/consume",
            "topic/{topicName}",
            "webhook/flow/{flowId}",
            "{endpoint}",
        ]
        .into_iter()
        .collect()
    );
    // Every parameter an address names is declared, and no other.
    for channel in asyncapi["channels"].as_object().unwrap().values() {
        let address = channel["address"].as_str().unwrap();
        let named: std::collections::BTreeSet<&str> = address
            .split('{')
            .skip(1)
            .filter_map(|part| part.split_once('}').map(|(name, _)| name))
            .collect();
        let declared: std::collections::BTreeSet<&str> = channel["parameters"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(named, declared, "{address}");
    }
    // Each Workato path is a route the gateway serves, and the operation
    // on it is the one clients use.
    for (operation, path, action) in [
        (
            "publishMessage",
            "/api/v1/topics/{topic_id}/publish",
            "send",
        ),
        (
            "publishBatch",
            "/api/v1/batch/topics/{topic_id}/publish",
            "send",
        ),
        (
            "consumeMessages",
            "/api/v1/topics/{topic_id}/consume",
            "receive",
        ),
    ] {
        let operation = &asyncapi["operations"][operation];
        assert_eq!(operation["action"], action, "{operation}");
        let channel = resolve(&asyncapi, operation["channel"]["$ref"].as_str().unwrap());
        assert_eq!(channel["address"], path);
        assert!(openapi["paths"][path]["post"].is_object(), "{path}");
    }
    let actions: Vec<&str> = asyncapi["operations"]
        .as_object()
        .unwrap()
        .values()
        .map(|op| op["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"send") && actions.contains(&"receive"),
        "{actions:?}"
    );
    // The message schemas are the OpenAPI document's own.
    assert_eq!(
        asyncapi["components"]["schemas"],
        openapi["components"]["schemas"]
    );
    assert_eq!(
        asyncapi["components"]["messages"]["published"]["payload"]["$ref"],
        "#/components/schemas/Payload"
    );
    assert_eq!(
        asyncapi["components"]["messages"]["consumed"]["payload"]["$ref"],
        "#/components/schemas/ConsumedMessage"
    );
    cluster.shutdown().await;
}

/// The gateway on TLS: HTTPS through any node (forwarded to leaders over
/// mutual TLS), and no plain HTTP on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_https_on_a_cluster_on_tls() {
    let cluster = TestCluster::start_tls(3).await;
    let http = Http::new(&cluster, 2);
    assert!(http.base.starts_with("https://"), "{}", http.base);
    create_topic(&http, &cluster, json!({"name": "secure", "partitions": 2})).await;
    for i in 0..6 {
        let via = Http::new(&cluster, 1 + i % 3);
        let (status, body) = via
            .post("/api/v1/topics/secure/publish", json!({"n": i}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let messages = consume_all(&Http::new(&cluster, 3), "secure", 6).await;
    assert_eq!(messages.len(), 6);

    let plain = reqwest::Client::new()
        .get(format!(
            "http://{}/api/event_streams/topics",
            cluster.configs[&2].http_addr
        ))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await;
    match plain {
        Err(_) => {}
        Ok(response) => assert!(
            !response.status().is_success(),
            "plain HTTP was served: {}",
            response.status()
        ),
    }
}

/// A gateway that asks clients for a certificate serves only those that
/// show one its client CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_requiring_client_certificates_refuses_clients_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = raftstream_node::tls::write_dev_certs(
        &dir.path().join("certs"),
        &[1],
        &["127.0.0.1".into()],
    )
    .unwrap();
    let listeners = common::loopback_listeners().await;
    let http_addr = listeners.http.local_addr().unwrap();
    let (_, cert, key) = &certs.nodes[0];
    let config = raftstream_node::config::NodeConfig {
        client_tls: Some(raftstream_node::config::ClientTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(certs.ca.clone()),
        }),
        ..common::node_config(1, &listeners, dir.path())
    };
    let node = raftstream_node::server::RunningNode::start_on(config, listeners)
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone());
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let url = format!("https://{http_addr}/healthz");
    let anonymous = client(None).get(&url).send().await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );
    let mut pem = std::fs::read(&certs.client.0).unwrap();
    pem.extend(std::fs::read(&certs.client.1).unwrap());
    let identity = reqwest::Identity::from_pem(&pem).unwrap();
    let with_certificate = client(Some(identity)).get(&url).send().await.unwrap();
    assert_eq!(with_certificate.status(), StatusCode::OK);
    node.shutdown().await;
}
