//! A topic's JSON Schema holds on every write path, not only the HTTP
//! gateway's: gRPC `Publish` and `PublishBatch` through the partition leader
//! and through a node that forwards, topic creation and update, and webhook
//! deliveries.

#![allow(clippy::unwrap_used)]

use crate::http;

use crate::common::TestCluster;
use crate::common::read_all;
use crate::common::topic;
use http::Http;
use raftstream_client::pb;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;
use tonic::Code;

/// Every value must be an object with an integer `n`.
fn n_schema() -> String {
    json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
        .to_string()
}

fn records(values: &[&str]) -> Vec<pb::Record> {
    values
        .iter()
        .map(|v| pb::Record {
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .collect()
}

async fn create_topic_with_schema(cluster: &TestCluster, name: &str, schema: String) {
    let mut client = cluster.client(cluster.running_ids()[0]).await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: name.into(),
            partitions: 1,
            schema: Some(schema),
            ..Default::default()
        })
        .await
        .unwrap();
    cluster.wait_partition_leaders(name).await;
}

async fn publish(
    client: &mut raftstream_client::Grpc,
    name: &str,
    value: &str,
) -> Result<tonic::Response<pb::PublishResponse>, tonic::Status> {
    client
        .publish(pb::PublishRequest {
            topic: topic(name),
            record: records(&[value]).pop(),
        })
        .await
}

async fn publish_batch(
    client: &mut raftstream_client::Grpc,
    name: &str,
    values: &[&str],
) -> Result<tonic::Response<pb::PublishBatchResponse>, tonic::Status> {
    client
        .publish_batch(pb::PublishBatchRequest {
            topic: topic(name),
            records: records(values),
            producer: None,
        })
        .await
}

fn assert_invalid(outcome: Result<impl std::fmt::Debug, tonic::Status>, expected: &[&str]) {
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for part in expected {
        assert!(status.message().contains(part), "{part:?} in {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_publishes_that_fail_the_schema_are_refused_whole_on_leader_and_follower() {
    let cluster = TestCluster::start(3).await;
    create_topic_with_schema(&cluster, "typed", n_schema()).await;
    let leader = cluster.partition_leader("typed", 0).await;
    let follower = cluster.running_node_other_than(leader);

    let mut stored = Vec::new();
    for (node, first) in [(leader, 0), (follower, 10)] {
        let mut client = cluster.client(node).await;
        let good = |n: u32| json!({"n": first + n}).to_string();

        let ack = publish(&mut client, "typed", &good(1)).await.unwrap();
        assert_eq!(
            ack.metadata()
                .contains_key(raftstream_proto::FORWARDED_HEADER),
            node == follower,
            "node {node} forwards only when it does not lead"
        );
        stored.push(good(1));
        assert_invalid(
            publish(&mut client, "typed", "not json").await,
            &["record 0", "not JSON"],
        );
        assert_invalid(
            publish(&mut client, "typed", r#"{"n": "one"}"#).await,
            &["record 0", "/n"],
        );

        let refused = [good(2), r#"{"n": "bad"}"#.to_string(), good(3)];
        let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
        assert_invalid(
            publish_batch(&mut client, "typed", &refused).await,
            &["record 1", "/n"],
        );
        assert_invalid(
            publish_batch(&mut client, "typed", &[good(4).as_str(), "{oops"]).await,
            &["record 1", "not JSON"],
        );

        let accepted = [good(5), good(6)];
        let values: Vec<&str> = accepted.iter().map(String::as_str).collect();
        let results = publish_batch(&mut client, "typed", &values)
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(
            results
                .iter()
                .all(|r| matches!(r.result, Some(pb::publish_result::Result::Ok(_)))),
            "{results:?}"
        );
        stored.extend(accepted);
    }

    // Only the accepted values were appended, in order, on every node.
    for node in cluster.running_ids() {
        let mut client = cluster.client(node).await;
        let messages = read_all(&mut client, "typed", 0, stored.len()).await;
        let values: Vec<String> = messages
            .iter()
            .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
            .collect();
        assert_eq!(values, stored, "node {node}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemas_that_do_not_compile_or_are_too_large_are_refused_at_create_and_update() {
    let cluster = TestCluster::start(1).await;
    let mut client = cluster.client(1).await;
    let create = |schema: String| pb::CreateTopicRequest {
        name: "refused".into(),
        schema: Some(schema),
        ..Default::default()
    };
    assert_invalid(
        client.create_topic(create(r#"{"type": 12}"#.into())).await,
        &["does not compile"],
    );
    let huge = json!({"description": "x".repeat(64 * 1024)}).to_string();
    assert_invalid(client.create_topic(create(huge.clone())).await, &["limit"]);

    create_topic_with_schema(&cluster, "typed", n_schema()).await;
    let update = |schema: String| pb::UpdateTopicRequest {
        topic: topic("typed"),
        schema: Some(schema),
        ..Default::default()
    };
    assert_invalid(
        client.update_topic(update(r#"{"type": 12}"#.into())).await,
        &["does not compile"],
    );
    assert_invalid(client.update_topic(update(huge)).await, &["limit"]);
    let kept = client.get_topic(topic("typed").unwrap()).await.unwrap();
    assert_eq!(kept.into_inner().schema, Some(n_schema()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catastrophic_pattern_costs_a_refused_publish_not_a_stalled_node() {
    let cluster = TestCluster::start(1).await;
    // The backreference puts the nested quantifier on the backtracking
    // matcher: without a budget, 64 a's would take longer than any test.
    let schema = json!({"type": "object", "properties": {"s": {"pattern": "^(a+)+\\1$"}}});
    create_topic_with_schema(&cluster, "patterns", schema.to_string()).await;
    let mut client = cluster.client(1).await;
    let hostile = json!({"s": format!("{}!", "a".repeat(64))}).to_string();
    assert_invalid(
        publish(&mut client, "patterns", &hostile).await,
        &["record 0", "/s"],
    );
    publish(&mut client, "patterns", r#"{"s": "aa"}"#)
        .await
        .unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_deliveries_are_checked_against_the_topic_schema() {
    let cluster = TestCluster::start(1).await;
    // The stored message is the delivery's envelope, the body as JSON in
    // `payload` (and as a string in `rawPayload`).
    let schema = json!({
        "type": "object",
        "required": ["eventId", "rawPayload", "payload"],
        "properties": {
            "rawPayload": {"type": "string"},
            "payload": {"type": "object", "required": ["order"]}
        }
    });
    create_topic_with_schema(&cluster, "hooks", schema.to_string()).await;
    let admin = Http::new(&cluster, 1);
    let source = admin
        .create_source(json!({"name": "shop", "source_type": "generic", "topic": "hooks"}))
        .await;
    let id = source["id"].as_str().unwrap();
    let receiver = admin.with_token(source["secret"].as_str());
    let path = format!("/api/ingest/webhook/{id}");

    let (status, refused) = receiver.post(&path, json!({"total": 3})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("/payload"), "{refused}");
    let (status, accepted) = receiver.post(&path, json!({"order": 7})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");

    let stored: Vec<Value> = http::consume_all(&admin, "hooks", 50)
        .await
        .into_iter()
        .map(|m| m["payload"]["payload"].clone())
        .collect();
    assert_eq!(stored, vec![json!({"order": 7})]);
    cluster.shutdown().await;
}
