//! Limits that hold before work is done: request sizes, read byte budgets,
//! and the reads a node keeps open.

#![allow(clippy::unwrap_used)]

use crate::http;

use std::time::Duration;

use crate::common::*;
use raftstream_client::pb;
use raftstream_node::config::Limits;
use reqwest::StatusCode;
use serde_json::json;

fn consume_request(name: &str, offset: u64, wait_ms: u32, max_bytes: u32) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        topic: topic(name),
        partition: 0,
        position: at_offset(offset),
        max_messages: 100,
        wait_ms,
        max_bytes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_stops_at_its_byte_budget_and_the_next_read_continues_there() {
    let cluster = TestCluster::start_with_limits(
        1,
        Limits {
            max_read_bytes: 10 * 1024,
            ..TestCluster::limits()
        },
    )
    .await;
    cluster.create_topic("big", 1, 1).await;
    let mut client = cluster.client(1).await;
    let records = (0..10u8)
        .map(|i| pb::Record {
            value: vec![i; 4096].into(),
            ..Default::default()
        })
        .collect();
    client
        .publish_batch(pb::PublishBatchRequest {
            topic: topic("big"),
            records,
            ..Default::default()
        })
        .await
        .unwrap();

    // (from, the caller's own byte budget, messages read, next offset): 4
    // KiB messages under the node's 10 KiB budget are two a read; under a
    // smaller budget of the caller's own, the first message always comes.
    for (from, max_bytes, messages, next_offset) in [(0, 0, 2, 2), (2, 1, 1, 3)] {
        let read = client
            .consume(consume_request("big", from, 0, max_bytes))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (read.messages.len(), read.next_offset),
            (messages, next_offset),
            "from {from} with a budget of {max_bytes} bytes"
        );
    }
    // A larger one is capped at the node's.
    let mut offset = 3;
    let mut seen = vec![0u8, 1, 2];
    while offset < 10 {
        let read = client
            .consume(consume_request("big", offset, 0, u32::MAX))
            .await
            .unwrap()
            .into_inner();
        assert!(read.messages.len() <= 2, "{} messages", read.messages.len());
        seen.extend(read.messages.iter().map(|m| m.value[0]));
        offset = read.next_offset;
    }
    assert_eq!(seen, (0..10).collect::<Vec<u8>>());

    // The HTTP consume is held to the same budget, and resumes in order.
    let http = http::Http::new(&cluster, 1);
    let page = http
        .post_ok("/api/v1/topics/big/consume", json!({"batch_size": 50}))
        .await;
    assert!(page["messages"].as_array().unwrap().len() < 10, "{page}");
    let all = http::consume_all(&http, "big", 50).await;
    assert_eq!(all.len(), 10);
}

/// After a refused request, a small publish to `name` (a topic of one
/// partition that held nothing) is stored, and is all the partition holds.
async fn assert_publishes_still_go_through(
    client: &mut raftstream_client::Grpc,
    name: &str,
    value: &str,
) {
    client.publish(publish_request(name, value)).await.unwrap();
    let read = client
        .consume(consume_request(name, 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    let values: Vec<&[u8]> = read.messages.iter().map(|m| &m.value[..]).collect();
    assert_eq!(values, vec![value.as_bytes()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_the_size_limit_is_refused_and_the_node_keeps_serving() {
    let cluster = TestCluster::start_with_limits(
        1,
        Limits {
            max_request_bytes: 1024 * 1024,
            max_batch_bytes: 512 * 1024,
            max_message_bytes: 256 * 1024,
            ..TestCluster::limits()
        },
    )
    .await;
    cluster.create_topic("sized", 1, 1).await;
    let mut client = cluster.client(1).await;
    let refused = client
        .publish(pb::PublishRequest {
            topic: topic("sized"),
            record: Some(pb::Record {
                value: vec![b'x'; 2 * 1024 * 1024].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{refused:?}"
    );
    assert_publishes_still_go_through(&mut client, "sized", "small").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_request_that_would_decode_into_too_much_is_refused() {
    let cluster = TestCluster::start_with_topic(1, "flood", 1, 1).await;
    let mut client = cluster.client(1).await;
    // About 1 MiB on the wire, far under the byte limits, yet over 50 MiB
    // of records once decoded.
    let limit = raftstream_proto::decode_budget::MAX_DECODED_ELEMENTS;
    let flood = pb::PublishBatchRequest {
        topic: topic("flood"),
        records: vec![pb::Record::default(); limit + 1],
        ..Default::default()
    };
    let refused = client.publish_batch(flood).await.unwrap_err();
    assert_refused(&refused, tonic::Code::ResourceExhausted, "split it");
    assert_publishes_still_go_through(&mut client, "flood", "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_polls_and_subscriptions_past_the_node_limits_are_refused() {
    let cluster = TestCluster::start_with_limits(
        1,
        Limits {
            max_long_polls: 1,
            max_subscriptions: 1,
            ..TestCluster::limits()
        },
    )
    .await;
    cluster.create_topic("quiet", 1, 1).await;
    let client = cluster.client(1).await;

    // One long poll parks on the empty topic; a second is refused.
    let parked = tokio::spawn({
        let mut client = client.clone();
        async move { client.consume(consume_request("quiet", 0, 10_000, 0)).await }
    });
    let slots = &cluster.nodes[&1].node.read_slots;
    eventually("the poll parked", Duration::from_secs(10), || async {
        (slots.long_polls_open() == 1).then_some(())
    })
    .await;
    let refused = client
        .clone()
        .consume(consume_request("quiet", 0, 1_000, 0))
        .await
        .unwrap_err();
    assert_refused(&refused, tonic::Code::ResourceExhausted, "long polls");
    // The HTTP gateway answers 429 with the error shape.
    let http = http::Http::new(&cluster, 1);
    let (status, body) = http
        .post("/api/v1/topics/quiet/consume", json!({"timeout_secs": 1}))
        .await;
    http::assert_error(
        status,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_long_polls",
    );
    // Reads that do not wait are not limited.
    client
        .clone()
        .consume(consume_request("quiet", 0, 0, 0))
        .await
        .unwrap();
    // A message ends the parked poll, which gives its slot back.
    client
        .clone()
        .publish(publish_request("quiet", "wake"))
        .await
        .unwrap();
    assert_eq!(
        parked.await.unwrap().unwrap().into_inner().messages.len(),
        1
    );
    client
        .clone()
        .consume(consume_request("quiet", 1, 100, 0))
        .await
        .unwrap();

    let subscribe = || {
        let mut client = client.clone();
        async move {
            client
                .subscribe(pb::SubscribeRequest {
                    topic: topic("quiet"),
                    partition: 0,
                    position: at_offset(0),
                })
                .await
        }
    };
    let open = subscribe().await.unwrap().into_inner();
    let refused = subscribe().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    // Closing the stream frees its slot.
    drop(open);
    eventually(
        "the subscription slot back",
        Duration::from_secs(10),
        || async { subscribe().await.ok().map(|_| ()) },
    )
    .await;
}

/// The token is checked from the headers, before the body is read: a
/// caller without one is refused even when its request is too large to
/// decode, and so costs the node no decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_without_a_valid_token_is_refused_before_its_body_is_decoded() {
    let cluster = TestCluster::start_with_topic(1, "guarded", 1, 1).await;
    let oversized = || pb::PublishRequest {
        topic: topic("guarded"),
        record: Some(pb::Record {
            value: vec![b'x'; 9 * 1024 * 1024].into(),
            ..Default::default()
        }),
    };
    let addr = cluster.addr(1).to_string();
    let mut anonymous = raftstream_client::connect(&addr, None).await.unwrap();
    let refused = anonymous.publish(oversized()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let mut forged = raftstream_client::connect(&addr, Some("rst_not-a-token"))
        .await
        .unwrap();
    let refused = forged.publish(oversized()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // With a valid token the same request gets as far as its size.
    let mut client = cluster.client(1).await;
    let too_large = client.publish(oversized()).await.unwrap_err();
    assert!(
        matches!(
            too_large.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{too_large:?}"
    );
}
