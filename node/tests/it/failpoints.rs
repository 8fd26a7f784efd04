//! Faults inside one node of a cluster, by its failpoints (see
//! `failpoints.rs`): a failing or held-up fsync, apply, snapshot or reply,
//! and what the cluster guarantees through each.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftstream_client::pb;
use raftstream_node::api::read::read_committed;
use raftstream_node::failpoints::Action;
use raftstream_node::failpoints::Failpoint;
use raftstream_node::failpoints::Failpoints;
use raftstream_node::failpoints::Rule;
use raftstream_node::model::GroupId;
use raftstream_node::model::Offset;
use raftstream_node::model::TopicId;

use crate::common::*;

const TOPIC: &str = "faulty";

/// The first topic's only partition.
fn group_id() -> GroupId {
    GroupId::partition(TopicId(1), 0)
}

/// The values a node's own replica of the partition holds, in offset
/// order; `None` while the node does not host it.
fn replica_values(cluster: &TestCluster, id: u64) -> Option<Vec<String>> {
    let group = cluster.nodes.get(&id)?.node.group(group_id())?;
    let batch = read_committed(&group, Offset(0), 10_000, usize::MAX).ok()?;
    Some(
        batch
            .messages
            .iter()
            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
            .collect(),
    )
}

/// How many messages a node's replica has applied.
fn applied_offsets(cluster: &TestCluster, id: u64) -> Option<u64> {
    partition_figure(&cluster.nodes.get(&id)?.node, group_id(), |p| {
        p.next_offset.0
    })
}

/// Waits until every running replica holds the same log of at least
/// `len` messages, and returns it.
async fn converged_log(cluster: &TestCluster, len: usize) -> Vec<String> {
    eventually("replicas converge", Duration::from_secs(30), || {
        let logs: Option<Vec<Vec<String>>> = cluster
            .running_ids()
            .iter()
            .map(|id| replica_values(cluster, *id))
            .collect();
        async move {
            let logs = logs?;
            (logs.windows(2).all(|w| w[0] == w[1]) && logs[0].len() >= len).then(|| logs[0].clone())
        }
    })
    .await
}

/// Creates the topic and waits until its partition's preferred replica
/// leads it, where leadership stays: the leaders' upkeep would otherwise
/// hand it there in the middle of a test.
async fn create_topic_led_by_preferred(cluster: &TestCluster) -> u64 {
    cluster.create_topic(TOPIC, 1, 3).await;
    let preferred = cluster.nodes[&cluster.running_ids()[0]]
        .node
        .metadata()
        .topics
        .values()
        .find(|t| t.name == TOPIC)
        .unwrap()
        .partitions[0][0]
        .0;
    eventually(
        "the preferred replica leads",
        Duration::from_secs(30),
        || async { (cluster.partition_leader(TOPIC, 0).await == preferred).then_some(()) },
    )
    .await;
    preferred
}

async fn publish(
    client: &mut raftstream_client::Grpc,
    value: &str,
) -> Result<pb::PublishResponse, tonic::Status> {
    client
        .publish(publish_request(TOPIC, value))
        .await
        .map(tonic::Response::into_inner)
}

fn count(log: &[String], value: &str) -> usize {
    log.iter().filter(|v| *v == value).count()
}

/// A node stopped on its own: its storage is marked failed for `why` and
/// its groups are gone.
async fn wait_stopped_on_failure(cluster: &TestCluster, id: u64, why: &str) {
    let node = &cluster.nodes[&id].node;
    let reason = eventually(
        &format!("node {id} stopping on its failed storage"),
        Duration::from_secs(30),
        || async { node.failure() },
    )
    .await;
    assert!(reason.contains(why), "node {id} failed for {reason:?}");
    eventually(
        &format!("node {id} stopping its groups"),
        Duration::from_secs(30),
        || async { node.groups().is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fsync_failing_on_a_majority_acknowledges_nothing_and_stops_those_nodes() {
    let mut cluster = TestCluster::start(3).await;
    let leader = create_topic_led_by_preferred(&cluster).await;
    let mut to_leader = cluster.client(leader).await;
    publish(&mut to_leader, "before").await.unwrap();
    let followers: Vec<u64> = cluster
        .running_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        cluster
            .failpoints(*id)
            .arm(Failpoint::WalFsync, Rule::new(Action::Fail));
    }

    // Only the leader can make the entry durable: a majority never does,
    // so the publish is never acknowledged.
    let refused = publish(&mut to_leader, "unsynced").await.unwrap_err();
    assert_not_acknowledged(&refused);
    // A failed fsync stops a node as a failing disk does.
    for id in &followers {
        wait_stopped_on_failure(&cluster, *id, "WAL fsync failed").await;
        assert!(cluster.failpoints(*id).fired(Failpoint::WalFsync) > 0);
    }

    // Restarted on healthy disks, the cluster holds every acknowledged
    // message once, the unacknowledged one at most once, and takes writes.
    for id in &followers {
        cluster.stop(*id).await;
        cluster.restart(*id).await;
    }
    cluster.wait_ready().await;
    let client = cluster.client(followers[0]).await;
    publish_until_acked(&client, TOPIC, "after", Duration::from_secs(30)).await;
    let log = converged_log(&cluster, 2).await;
    assert_eq!(count(&log, "before"), 1, "{log:?}");
    assert_eq!(count(&log, "after"), 1, "{log:?}");
    assert!(count(&log, "unsynced") <= 1, "{log:?}");
    cluster.shutdown().await;
}

/// Starts three nodes whose partition its preferred replica leads,
/// publishes "m0", waits for a follower to apply it, then pauses that
/// follower's apply. Answers the cluster, the follower and a client of the
/// leader.
async fn a_follower_paused_after_m0() -> (TestCluster, u64, raftstream_client::Grpc) {
    let cluster = TestCluster::start(3).await;
    let leader = create_topic_led_by_preferred(&cluster).await;
    let follower = cluster.running_node_other_than(leader);
    let mut to_leader = cluster.client(leader).await;
    publish(&mut to_leader, "m0").await.unwrap();
    eventually(
        "the follower applied m0",
        Duration::from_secs(20),
        || async { (applied_offsets(&cluster, follower)? == 1).then_some(()) },
    )
    .await;
    cluster
        .failpoints(follower)
        .arm(Failpoint::Apply, Rule::new(Action::Pause));
    (cluster, follower, to_leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_apply_on_a_follower_holds_up_no_acknowledgement_and_it_catches_up_in_order() {
    let (cluster, follower, mut to_leader) = a_follower_paused_after_m0().await;
    let failpoints = cluster.failpoints(follower);

    // The leader and the other follower make a majority: every publish is
    // acknowledged while the follower applies nothing.
    let mut acked = vec!["m0".to_string()];
    for i in 1..=5 {
        let value = format!("m{i}");
        publish(&mut to_leader, &value).await.unwrap();
        acked.push(value);
    }
    eventually(
        "the follower's apply paused",
        Duration::from_secs(20),
        || async { (failpoints.waiting(Failpoint::Apply) > 0).then_some(()) },
    )
    .await;
    // Its replica serves only what it applied: a prefix of the log.
    assert_eq!(applied_offsets(&cluster, follower), Some(1));
    assert_eq!(
        replica_values(&cluster, follower).unwrap(),
        ["m0"],
        "a replica serves only what it applied"
    );
    let read = read_all(&mut to_leader, TOPIC, 0, acked.len()).await;
    assert_eq!(values(&read), acked);

    failpoints.release(Failpoint::Apply);
    let log = converged_log(&cluster, acked.len()).await;
    assert_eq!(log, acked, "every replica applies the same log in order");
    cluster.shutdown().await;
}

/// Whether a node purged its log of the partition as far as retention
/// allows.
fn purged_log(cluster: &TestCluster, id: u64) -> Option<()> {
    let node = &cluster.nodes.get(&id)?.node;
    let purgeable = partition_figure(node, group_id(), |p| p.purgeable_log_index)?;
    let group = node.group(group_id())?;
    let purged = group.raft.metrics().borrow_watched().purged?.index;
    (purgeable > 0 && purged >= purgeable).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_snapshot_build_stops_the_node_and_after_a_restart_it_snapshots_and_loses_nothing()
{
    let mut cluster = TestCluster::start(3).await;
    let leader = create_topic_led_by_preferred(&cluster).await;
    let follower = cluster.running_node_other_than(leader);
    let client = cluster.client(leader).await;
    let value = |i: u64| format!("{i:03}-{}", "x".repeat(96));
    for i in 0..10 {
        publish_until_acked(&client, TOPIC, &value(i), Duration::from_secs(30)).await;
    }
    cluster
        .failpoints(follower)
        .arm(Failpoint::SnapshotBuild, Rule::new(Action::Fail).times(1));
    // Retention keeps the newest three messages; every replica then
    // snapshots and purges its log below them.
    let mut admin = cluster.client(leader).await;
    admin
        .update_topic(pb::UpdateTopicRequest {
            topic: topic(TOPIC),
            retention: Some(pb::RetentionPolicy {
                retention_ms: 0,
                retention_bytes: 3 * value(0).len() as u64,
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    wait_stopped_on_failure(&cluster, follower, "SnapshotBuild").await;
    // The others purge, and go on acknowledging writes.
    publish_until_acked(&client, TOPIC, "after", Duration::from_secs(30)).await;
    eventually("the leader purged", Duration::from_secs(30), || async {
        purged_log(&cluster, leader)
    })
    .await;

    // Restarted, the follower takes the snapshot it failed to take, purges,
    // and holds the same retained messages as the others.
    cluster.stop(follower).await;
    cluster.restart(follower).await;
    eventually("the follower purged", Duration::from_secs(30), || async {
        purged_log(&cluster, follower)
    })
    .await;
    assert_eq!(
        cluster.failpoints(follower).fired(Failpoint::SnapshotBuild),
        1
    );
    let log = converged_log(&cluster, 2).await;
    // The newest messages, "after" last, and no other.
    let (last, kept) = log.split_last().unwrap();
    assert_eq!(last, "after", "{log:?}");
    let first_kept = 10 - kept.len() as u64;
    let expected: Vec<String> = (first_kept..10).map(value).collect();
    assert_eq!(kept, expected, "{log:?}");
    cluster.shutdown().await;
}

/// An idempotent producer's batch of one record.
fn producer_batch(value: &str, base_sequence: u64) -> pb::PublishBatchRequest {
    pb::PublishBatchRequest {
        topic: topic(TOPIC),
        records: vec![pb::Record {
            value: value.as_bytes().to_vec().into(),
            partition: Some(0),
            ..Default::default()
        }],
        producer: Some(pb::ProducerBatch {
            producer_id: 7,
            base_sequence,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_lost_after_commit_is_an_unknown_outcome_and_the_write_is_there_once() {
    let cluster = TestCluster::start(3).await;
    let leader = create_topic_led_by_preferred(&cluster).await;
    let mut to_leader = cluster.client(leader).await;
    // On every node, so that whichever leads when a write lands loses its
    // reply.
    let arm = |rule: Rule| {
        for failpoints in cluster.failpoints.values() {
            failpoints.arm(Failpoint::WriteReply, rule);
        }
    };
    let total =
        |of: fn(&Failpoints) -> u64| cluster.failpoints.values().map(|f| of(f)).sum::<u64>();

    // A reply held up past the caller's deadline: the caller cannot tell
    // whether the write happened.
    arm(Rule::new(Action::Pause).times(1));
    let mut request = tonic::Request::new(publish_request(TOPIC, "held"));
    request.set_timeout(Duration::from_secs(3));
    let held = tokio::spawn({
        let mut client = to_leader.clone();
        async move { client.publish(request).await }
    });
    eventually("the reply held", Duration::from_secs(20), || async {
        (total(|f| f.waiting(Failpoint::WriteReply) as u64) == 1).then_some(())
    })
    .await;
    // The caller's own deadline ends the call.
    let held = held.await.unwrap().unwrap_err();
    assert!(
        matches!(
            held.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{held:?}"
    );
    for failpoints in cluster.failpoints.values() {
        failpoints.release(Failpoint::WriteReply);
    }

    // A reply lost: the outcome is unknown, never a failure.
    arm(Rule::new(Action::Fail).times(1));
    let lost = publish(&mut to_leader, "lost").await.unwrap_err();
    assert_eq!(lost.code(), tonic::Code::DeadlineExceeded, "{lost:?}");

    // An idempotent producer retries after the unknown outcome, and the
    // retry finds its batch already written.
    arm(Rule::new(Action::Fail).times(1));
    let first = publish_batch(&mut to_leader, producer_batch("retried", 0)).await;
    assert!(
        matches!(&first[0].result, Some(pb::publish_result::Result::Error(e)) if e.code == "outcome_unknown"),
        "{first:?}"
    );
    for failpoints in cluster.failpoints.values() {
        failpoints.release(Failpoint::WriteReply);
    }
    let retry = publish_batch(&mut to_leader, producer_batch("retried", 0)).await;
    let Some(pb::publish_result::Result::Ok(retried)) = &retry[0].result else {
        panic!("the retry was refused: {retry:?}");
    };
    assert_eq!(total(|f| f.fired(Failpoint::WriteReply)), 3);

    let log = converged_log(&cluster, 3).await;
    assert_eq!(log, ["held", "lost", "retried"], "each write is there once");
    assert_eq!(log[retried.offset as usize], "retried");
    cluster.shutdown().await;
}

/// A leader elected while it had not applied everything its predecessor
/// committed must not say an acknowledged message does not exist: it
/// answers "retry" until it has caught up, then reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_behind_on_apply_never_denies_an_acknowledged_message() {
    let (cluster, follower, mut to_leader) = a_follower_paused_after_m0().await;
    let m1 = publish(&mut to_leader, "m1").await.unwrap();
    cluster.transfer_partition_leader(TOPIC, 0, follower).await;
    let cluster_ref = &cluster;
    let after_m1 = || {
        let id = m1.message_id.clone();
        async move {
            cluster_ref
                .client(follower)
                .await
                .consume(pb::ConsumeRequest {
                    topic: topic(TOPIC),
                    partition: 0,
                    position: Some(pb::Position {
                        position: Some(pb::position::Position::AfterMessageId(id)),
                    }),
                    max_messages: 10,
                    wait_ms: 0,
                    max_bytes: 0,
                })
                .await
        }
    };
    let behind = after_m1().await.unwrap_err();
    assert_eq!(behind.code(), tonic::Code::Unavailable, "{behind:?}");
    cluster.failpoints(follower).release(Failpoint::Apply);
    let caught_up = eventually(
        "the new leader caught up",
        Duration::from_secs(20),
        || async { after_m1().await.ok() },
    )
    .await
    .into_inner();
    assert!(caught_up.messages.is_empty());
    assert_eq!(caught_up.high_watermark, 2);
    cluster.shutdown().await;
}
