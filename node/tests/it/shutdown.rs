//! Graceful shutdown: a stopping node hands off the leadership of its
//! groups first, so their clients see a new leader at once.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::common::*;

/// Publishes to `name` partition 0 through `client` until `stop` turns true.
/// Every attempt sends a new value, so a failed attempt (an unknown
/// outcome: it may or may not have been appended) can never be mistaken for
/// an acknowledged one.
async fn publish_continuously(
    mut client: raftstream_client::Grpc,
    name: &'static str,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    let stopped = stop.subscribe();
    for attempt in 0u64.. {
        if *stopped.borrow() {
            break;
        }
        let value = format!("m-{attempt}");
        let mut request = publish_request(name, &value);
        if let Some(record) = request.record.as_mut() {
            record.partition = Some(0);
        }
        match tokio::time::timeout(Duration::from_secs(5), client.publish(request)).await {
            Ok(Ok(response)) => acked.push(Acked {
                offset: response.into_inner().offset,
                value,
            }),
            // Unknown outcome: the next attempt sends a new value.
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_leader_hands_off_leadership_and_publishes_continue_without_loss() {
    let mut cluster = TestCluster::start_with_topic(3, "handoff", 1, 3).await;
    let leader = cluster.partition_leader("handoff", 0).await;
    let survivor = cluster.running_node_other_than(leader);
    // The publisher talks to a node that stays up; it forwards to whichever
    // node leads.
    let stop = Arc::new(tokio::sync::watch::Sender::new(false));
    let publisher = tokio::spawn(publish_continuously(
        cluster.client(survivor).await,
        "handoff",
        stop.clone(),
    ));
    let client = cluster.client(survivor).await;
    high_watermark_reaches(&client, "first publishes", 20).await;

    let started = Instant::now();
    // Generous: a loaded machine may be slow, but without a handoff the
    // leader would keep every group it leads however long it waited.
    let handed_off = cluster.nodes[&leader]
        .node
        .hand_off_leadership(Duration::from_secs(20))
        .await;
    assert!(
        handed_off,
        "node {leader} still leads groups after the handoff"
    );
    let handoff = started.elapsed();
    cluster.stop(leader).await;
    let new_leader = cluster.partition_leader("handoff", 0).await;
    let failover = started.elapsed();
    assert_ne!(new_leader, leader);
    println!(
        "leadership handoff took {handoff:?}, new leader {new_leader} known after {failover:?}"
    );

    // Publishes keep succeeding after the old leader stopped.
    let before = {
        let mut client = client.clone();
        cluster_status(&mut client)
            .await
            .and_then(|s| s.groups.into_iter().find(|g| g.topic == "handoff"))
            .map(|g| g.high_watermark)
            .unwrap_or(0)
    };
    high_watermark_reaches(&client, "publishes after the stop", before + 20).await;
    stop.send_replace(true);
    let acked = publisher.await.unwrap();
    assert!(
        acked.len() >= 40,
        "only {} publishes acknowledged",
        acked.len()
    );

    let mut reader = client.clone();
    let read = read_all(&mut reader, "handoff", 0, acked.len()).await;
    assert_each_acknowledged_once_in_order(&acked, &read);
    cluster.shutdown().await;
}

/// Waits until the "handoff" topic's partition holds `at_least` messages.
async fn high_watermark_reaches(client: &raftstream_client::Grpc, what: &str, at_least: u64) {
    eventually_in_status(client, what, Duration::from_secs(20), |status| {
        status
            .groups
            .iter()
            .find(|g| g.topic == "handoff")
            .filter(|g| g.high_watermark >= at_least)
            .map(|_| ())
    })
    .await;
}
