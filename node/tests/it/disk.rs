//! Disk faults: free-space headroom, and a node whose storage fails.

#![allow(clippy::unwrap_used)]

use crate::http;

use std::time::Duration;

use crate::common::*;
use raftstream_node::config::Limits;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_free_space_headroom_publishes_are_refused_but_metadata_changes_go_through() {
    let cluster = TestCluster::start_with_limits(
        1,
        Limits {
            // More than any disk has: every publish is under the headroom.
            min_free_disk_bytes: u64::MAX,
            ..TestCluster::limits()
        },
    )
    .await;
    // Topic changes still work, so an operator can free space.
    cluster.create_topic("full", 1, 1).await;
    let mut client = cluster.client(1).await;
    let refused = client
        .publish(publish_request("full", "x"))
        .await
        .unwrap_err();
    assert_refused(&refused, tonic::Code::ResourceExhausted, "headroom");

    let http = http::Http::new(&cluster, 1);
    let (status, body) = http
        .post("/api/v1/topics/full/publish", json!({"n": 1}))
        .await;
    http::assert_error(
        status,
        &body,
        StatusCode::INSUFFICIENT_STORAGE,
        "insufficient_storage",
    );

    let read = client
        .consume(consume_now("full", 0, at_offset(0), 10))
        .await
        .unwrap()
        .into_inner();
    assert!(read.messages.is_empty(), "a refused publish was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_storage_fails_stops_serving_and_the_rest_carry_on() {
    let cluster = TestCluster::start_with_topic(3, "carry-on", 1, 3).await;
    let failing = cluster.partition_leader("carry-on", 0).await;
    let http = http::Http::new(&cluster, failing);
    let (status, _) = http.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);

    // What a failed fsync or write does (see storage::tests).
    cluster.nodes[&failing]
        .node
        .storage
        .mark_failed("injected: disk gone");
    let (status, body) = http.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "storage_failed", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("disk gone"),
        "{body}"
    );
    // Its groups stop, so the others elect a new leader and take writes.
    eventually(
        "the failed node's groups stopped",
        Duration::from_secs(20),
        || async {
            cluster.nodes[&failing]
                .node
                .groups()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let survivor = cluster.running_node_other_than(failing);
    let client = cluster.client(survivor).await;
    publish_until_acked(&client, "carry-on", "after", Duration::from_secs(20)).await;
}
