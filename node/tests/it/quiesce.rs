//! Idle partition groups quiesce (no ticks, no per-group heartbeats) and
//! still take writes at once and fail over when their leader's node stops.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use raftstream_client::pb;

async fn publish_to(
    client: &mut raftstream_client::Grpc,
    name: &str,
    partition: u32,
    value: &str,
) -> Option<pb::PublishResponse> {
    client
        .publish(pb::PublishRequest {
            topic: topic(name),
            record: Some(pb::Record {
                value: value.as_bytes().to_vec().into(),
                partition: Some(partition),
                ..Default::default()
            }),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until every running node has quiesced all `partitions` groups it hosts.
async fn wait_all_quiesced(cluster: &TestCluster, partitions: usize) {
    for (id, running) in &cluster.nodes {
        let quiescer = running.node.quiescer().expect("quiescing is on by default");
        eventually(
            &format!("node {id} quiesces its {partitions} idle groups"),
            Duration::from_secs(30),
            || async { (quiescer.quiesced_count() == partitions).then_some(()) },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_groups_quiesce_and_a_write_wakes_them() {
    let cluster = TestCluster::start_with_topic(3, "idle", 4, 3).await;
    wait_all_quiesced(&cluster, 4).await;

    // The cluster status reports it (benches/compare.sh waits on this before
    // measuring idle CPU); the metadata group never quiesces.
    let mut client = cluster.client(1).await;
    let status = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let quiesced: Vec<(String, bool)> = status
        .groups
        .iter()
        .map(|g| (g.topic.clone(), g.quiesced))
        .collect();
    assert_eq!(quiesced.len(), 5, "{quiesced:?}");
    for (topic, quiet) in &quiesced {
        assert_eq!(*quiet, topic == "idle", "{quiesced:?}");
    }

    for partition in 0..4 {
        let started = std::time::Instant::now();
        let response = publish_to(&mut client, "idle", partition, "wake up").await;
        assert!(
            response.is_some(),
            "a publish to quiesced partition {partition} failed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "waking partition {partition} for a write took {:?}",
            started.elapsed()
        );
    }
    for partition in 0..4 {
        let messages = read_all(&mut client, "idle", partition, 1).await;
        assert_eq!(messages[0].value.as_ref(), b"wake up");
    }
    // Once idle again, the groups quiesce again.
    wait_all_quiesced(&cluster, 4).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiesced_group_elects_a_new_leader_when_its_leader_node_stops() {
    let mut cluster = TestCluster::start_with_topic(3, "sleepy", 1, 3).await;
    let mut client = cluster.client(1).await;
    publish_to(&mut client, "sleepy", 0, "before")
        .await
        .unwrap();
    wait_all_quiesced(&cluster, 1).await;

    let mut client = cluster.stop_partition_leader("sleepy", 0).await;
    eventually(
        "a publish on a new leader of the quiesced partition",
        Duration::from_secs(15),
        || {
            let mut client = client.clone();
            async move { publish_to(&mut client, "sleepy", 0, "after").await }
        },
    )
    .await;
    let messages = read_all(&mut client, "sleepy", 0, 2).await;
    let values: Vec<&[u8]> = messages.iter().map(|m| m.value.as_ref()).collect();
    assert_eq!(&values[..2], &[b"before".as_slice(), b"after".as_slice()]);
    cluster.shutdown().await;
}
