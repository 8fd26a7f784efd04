//! Clusters whose links a test cuts: partitions between named nodes, in
//! one process (see `link_faults.rs`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use raftstream_client::pb;
use raftstream_node::api::read::read_committed;
use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use raftstream_node::model::Offset;
use raftstream_node::model::TopicId;

use crate::common::*;

/// The values a node's own replica of partition 0 of topic 1 holds, in
/// offset order.
fn replica_values(cluster: &TestCluster, id: u64) -> Vec<String> {
    let group = cluster.nodes[&id]
        .node
        .group(GroupId::partition(TopicId(1), 0))
        .unwrap();
    let batch = read_committed(&group, Offset(0), 1_000, usize::MAX).unwrap();
    batch
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

async fn publish(
    client: &mut raftstream_client::Grpc,
    value: &str,
) -> Result<pb::PublishResponse, tonic::Status> {
    client
        .publish(publish_request("split", value))
        .await
        .map(tonic::Response::into_inner)
}

/// A three-node cluster with the one-partition topic "split"; answers it,
/// the partition's leader and a client of that leader.
async fn cluster_with_split_topic() -> (TestCluster, u64, raftstream_client::Grpc) {
    let cluster = TestCluster::start_with_topic(3, "split", 1, 3).await;
    let leader = cluster.partition_leader("split", 0).await;
    let to_leader = cluster.client(leader).await;
    (cluster, leader, to_leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_acknowledges_nothing_and_the_majority_carries_on() {
    let (cluster, leader, mut to_leader) = cluster_with_split_topic().await;
    publish(&mut to_leader, "before").await.unwrap();
    let others = cluster.isolate(leader);

    // The old leader cannot reach a majority: its answer is never an
    // acknowledgement, and a timeout is reported as an unknown outcome.
    let refused = publish(&mut to_leader, "unacknowledged").await.unwrap_err();
    assert_not_acknowledged(&refused);

    // The majority elects a leader of its own and takes writes.
    let mut to_majority = cluster.client(others[0]).await;
    let after = eventually(
        "a write on the majority side",
        Duration::from_secs(30),
        || {
            let mut client = to_majority.clone();
            async move { publish(&mut client, "after").await.ok() }
        },
    )
    .await;

    cluster.links.heal();
    // Every replica converges on the same log, holding every acknowledged
    // message once; the unacknowledged one is there at most once.
    let logs = eventually("replicas converge", Duration::from_secs(30), || {
        let logs: Vec<Vec<String>> = cluster
            .running_ids()
            .iter()
            .map(|id| replica_values(&cluster, *id))
            .collect();
        let agree = logs.windows(2).all(|w| w[0] == w[1]);
        let complete = logs[0].len() as u64 > after.offset;
        async move { (agree && complete).then_some(logs) }
    })
    .await;
    let log = &logs[0];
    assert_eq!(log.iter().filter(|v| *v == "before").count(), 1, "{log:?}");
    assert_eq!(log.iter().filter(|v| *v == "after").count(), 1, "{log:?}");
    assert!(log.iter().filter(|v| *v == "unacknowledged").count() <= 1);
    assert_eq!(log[after.offset as usize], "after");
    to_majority = cluster.client(leader).await;
    let read = read_all(&mut to_majority, "split", 0, log.len()).await;
    assert_eq!(&values(&read), log, "the healed node reads the same log");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_replica_never_calls_an_acknowledged_message_missing() {
    let (cluster, leader, mut to_leader) = cluster_with_split_topic().await;
    publish(&mut to_leader, "m0").await.unwrap();
    let cut_off = cluster.running_node_other_than(leader);
    cluster.isolate(cut_off);
    // Acknowledged by the leader and the third replica only.
    let m1 = publish(&mut to_leader, "m1").await.unwrap();

    // Reading after m1 on the cut-off replica: it never saw m1 and cannot
    // reach the leader, so it may not say m1 does not exist (400); it says
    // it cannot answer (a retry elsewhere will).
    let mut to_cut_off = cluster.client(cut_off).await;
    let answer = to_cut_off
        .consume(pb::ConsumeRequest {
            topic: topic("split"),
            partition: 0,
            position: Some(pb::Position {
                position: Some(pb::position::Position::AfterMessageId(
                    m1.message_id.clone(),
                )),
            }),
            max_messages: 10,
            wait_ms: 0,
            max_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(answer.code(), tonic::Code::Unavailable, "{answer:?}");

    cluster.links.heal();
    let read = eventually_read(
        &to_cut_off,
        "the replica catches up",
        Duration::from_secs(30),
        consume_now("split", 0, at_offset(0), 10),
        |read| (read.messages.len() == 2).then_some(read),
    )
    .await;
    assert_eq!(values(&read.messages), vec!["m0", "m1"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lossy_and_slow_links_delay_writes_but_lose_none() {
    let (cluster, leader, _) = cluster_with_split_topic().await;
    for id in cluster.running_ids() {
        if id != leader {
            // Seeded (RAFTSTREAM_TEST_SEED): the same messages are lost on
            // every run with the same seed.
            cluster.links.lose(NodeId(leader), NodeId(id), 0.2);
            cluster
                .links
                .delay(NodeId(id), NodeId(leader), Duration::from_millis(20));
        }
    }
    let mut client = cluster.client(leader).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let value = format!("m{i}");
        // A write whose outcome is unknown is retried, as a producer does;
        // a retry may store it twice, so only acknowledgements are counted.
        let ack = eventually("an acknowledged publish", Duration::from_secs(30), || {
            let (mut client, value) = (client.clone(), value.clone());
            async move { publish(&mut client, &value).await.ok() }
        })
        .await;
        acknowledged.push((ack.offset, value));
    }
    cluster.links.heal();
    let read = read_all(
        &mut client,
        "split",
        0,
        acknowledged.last().unwrap().0 as usize + 1,
    )
    .await;
    for (offset, value) in &acknowledged {
        assert_eq!(
            &values(&read)[*offset as usize],
            value,
            "acknowledged at {offset}"
        );
    }
    cluster.shutdown().await;
}
