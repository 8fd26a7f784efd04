//! A replica that lost its disk and caught up from a snapshot fetches the
//! retained messages the snapshot spans, and serves them itself.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use openraft::async_runtime::WatchReceiver;
use raftstream_client::pb;
use raftstream_node::model::GroupId;
use raftstream_node::model::TopicId;
use raftstream_node::raft::types::TypeConfig;
use raftstream_node::state_machine::GroupData;

/// Asks a node to answer from its own replica only (ARCHITECTURE.md,
/// Forwarding): no forwarding to the leader, no read from another replica.
const LOCAL_HEADER: &str = "x-raftstream-local";

const TOPIC: &str = "kept";

/// `len` bytes, distinct per message.
fn value(i: u64, len: usize) -> String {
    let tag = format!("{i:06}-");
    format!("{tag}{}", "x".repeat(len.saturating_sub(tag.len())))
}

/// What a partition replica holds: the log start offset, the log index of
/// each retained batch by base offset, the local first log index and the
/// purgeable log index.
struct View {
    log_start: u64,
    batches: Vec<(u64, u64)>,
    local_first: u64,
    purgeable: u64,
}

fn view(cluster: &TestCluster, node: u64, group_id: GroupId) -> Option<View> {
    let group = cluster.nodes.get(&node)?.node.group(group_id)?;
    group.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => Some(View {
            log_start: p.log_start_offset.0,
            batches: p
                .batches
                .iter()
                .map(|b| (b.base_offset.0, b.log_index))
                .collect(),
            local_first: inner.local_first_log_index,
            purgeable: p.purgeable_log_index,
        }),
        GroupData::Meta(_) => None,
    })
}

/// Reads offsets `from..to` from `node`'s own replica of the partition;
/// `None` while it cannot serve all of them itself.
async fn read_locally(cluster: &TestCluster, node: u64, from: u64, to: u64) -> Option<Vec<String>> {
    let mut client = cluster.client(node).await;
    let mut values = Vec::new();
    let mut next = from;
    while next < to {
        let mut request = tonic::Request::new(consume_now(TOPIC, 0, at_offset(next), 1000));
        request.metadata_mut().insert(
            LOCAL_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let response = client.consume(request).await.ok()?.into_inner();
        if response.messages.is_empty() {
            return None;
        }
        for message in &response.messages {
            assert_eq!(message.offset, next, "offsets are dense");
            values.push(String::from_utf8_lossy(&message.value).into_owned());
            next += 1;
        }
    }
    Some(values)
}

async fn set_retention_bytes(cluster: &TestCluster, bytes: u64) {
    let mut client = cluster.client(cluster.running_ids()[0]).await;
    client
        .update_topic(pb::UpdateTopicRequest {
            topic: topic(TOPIC),
            retention: Some(pb::RetentionPolicy {
                retention_ms: 0,
                retention_bytes: bytes,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A partition whose replicas all purged their Raft log below the retained
/// messages, and one of whose followers then lost its disk.
struct Wiped {
    cluster: TestCluster,
    group_id: GroupId,
    victim: u64,
    /// Another node, which kept its disk.
    survivor: u64,
    /// (base offset, log index) of every retained batch.
    retained: Vec<(u64, u64)>,
}

/// Publishes `published` messages of `value_len` bytes, keeps the newest
/// `kept` by retention, waits until every replica purged its log below
/// them, and replaces a follower's disk.
async fn wipe_a_follower_after_retention(published: u64, kept: u64, value_len: usize) -> Wiped {
    let mut cluster = TestCluster::start_with_topic(3, TOPIC, 1, 3).await;
    let group_id = GroupId::partition(TopicId(1), 0);
    let client = cluster.client(1).await;
    for i in 0..published {
        publish_until_acked(
            &client,
            TOPIC,
            &value(i, value_len),
            Duration::from_secs(30),
        )
        .await;
    }
    // Retention forgets all but the newest `kept` messages, and every
    // replica purges its Raft log below them, so a replica that comes back
    // empty must install a snapshot.
    set_retention_bytes(&cluster, kept * value_len as u64).await;
    let log_start = published - kept;
    for id in cluster.running_ids() {
        eventually(
            &format!("node {id} applied retention and purged its log"),
            Duration::from_secs(30),
            || async {
                let view = view(&cluster, id, group_id)?;
                let group = cluster.nodes[&id].node.group(group_id)?;
                let purged = group.raft.metrics().borrow_watched().purged?.index;
                (view.log_start == log_start && view.purgeable > 0 && purged >= view.purgeable)
                    .then_some(())
            },
        )
        .await;
    }
    let leader = cluster.partition_leader(TOPIC, 0).await;
    let retained = view(&cluster, leader, group_id).unwrap().batches;
    assert_eq!(retained.len() as u64, kept);
    let last_retained_index = retained.last().unwrap().1;
    // The snapshot the leader sends spans every retained message, so a
    // replica that installs it holds none of their bytes.
    let snapshot = cluster.nodes[&leader]
        .node
        .group(group_id)
        .unwrap()
        .raft
        .metrics()
        .borrow_watched()
        .snapshot
        .unwrap();
    assert!(
        snapshot.index >= last_retained_index,
        "snapshot {snapshot} does not span the retained batches (last at {last_retained_index})"
    );

    // A follower loses its disk. The whole cluster restarts around it, as
    // in rejoin.rs: a leader that still remembers what the follower held
    // would meet a log that went back, which openraft refuses (it asserts
    // in debug builds) unless told to allow it.
    let victim = cluster.running_node_other_than(leader);
    let survivors: Vec<u64> = cluster
        .running_ids()
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    for id in cluster.running_ids() {
        cluster.stop(id).await;
    }
    let new_disk = cluster.dir.path().join(format!("node-{victim}-replaced"));
    cluster.configs.get_mut(&victim).unwrap().data_dir = new_disk;
    for id in &survivors {
        cluster.restart(*id).await;
    }
    cluster.restart(victim).await;
    cluster.wait_ready().await;
    eventually(
        "the wiped replica installed a snapshot",
        Duration::from_secs(30),
        || async {
            let group = cluster.nodes[&victim].node.group(group_id)?;
            let metrics = group.raft.metrics().borrow_watched().clone();
            (metrics.snapshot?.index >= last_retained_index).then_some(())
        },
    )
    .await;
    Wiped {
        cluster,
        group_id,
        victim,
        survivor: survivors[0],
        retained,
    }
}

/// The wiped replica serves offsets `from..to` from its own log, with their
/// values, and holds their entries itself.
async fn assert_served_locally(wiped: &Wiped, from: u64, to: u64, value_len: usize) {
    let Wiped {
        cluster,
        group_id,
        victim,
        retained,
        ..
    } = wiped;
    let expected: Vec<String> = (from..to).map(|i| value(i, value_len)).collect();
    let served = eventually(
        "the wiped replica serves the retained messages itself",
        Duration::from_secs(60),
        || read_locally(cluster, *victim, from, to),
    )
    .await;
    assert_eq!(served, expected);
    let storage = &cluster.nodes[victim].node.storage;
    let view = view(cluster, *victim, *group_id).unwrap();
    for (base_offset, index) in retained {
        if *base_offset >= from {
            assert!(view.local_first <= *index, "{} > {index}", view.local_first);
            assert!(
                storage
                    .read_entry::<TypeConfig>(*group_id, *index)
                    .unwrap()
                    .is_some(),
                "entry {index} is not in the wiped replica's log"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_installed_a_snapshot_fetches_the_retained_messages_and_serves_them_itself()
{
    let wiped = wipe_a_follower_after_retention(60, 20, 100).await;
    assert_served_locally(&wiped, 40, 60, 100).await;

    // Retention moves on: the fetched entries it forgets are deleted from
    // the replica's log too (they lie below openraft's purge point, where
    // openraft's own purge does not reach), and the rest is still served.
    let client = wiped.cluster.client(wiped.survivor).await;
    for i in 60..65 {
        publish_until_acked(&client, TOPIC, &value(i, 100), Duration::from_secs(20)).await;
    }
    let forgotten: Vec<u64> = wiped
        .retained
        .iter()
        .filter(|(base_offset, _)| *base_offset < 45)
        .map(|(_, log_index)| *log_index)
        .collect();
    let storage = &wiped.cluster.nodes[&wiped.victim].node.storage;
    eventually(
        "the forgotten fetched entries deleted",
        Duration::from_secs(30),
        || async {
            let view = view(&wiped.cluster, wiped.victim, wiped.group_id)?;
            let gone = forgotten.iter().all(|index| {
                storage
                    .read_entry::<TypeConfig>(wiped.group_id, *index)
                    .unwrap()
                    .is_none()
            });
            (view.log_start == 45 && view.purgeable >= *forgotten.last()? && gone).then_some(())
        },
    )
    .await;
    assert_served_locally(&wiped, 45, 65, 100).await;
    wiped.cluster.shutdown().await;
}

/// More retained bytes than one `ReadLogRange` answer carries: the replica
/// fetches them newest chunk first, each chunk continuing the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retained_messages_larger_than_a_chunk_are_fetched_in_several() {
    let value_len = 512 << 10;
    let kept = 36;
    // Three chunks at least.
    assert!(kept * value_len as u64 > 2 * raftstream_node::raft::log_range::CHUNK_BYTES);
    let wiped = wipe_a_follower_after_retention(40, kept, value_len).await;
    assert_served_locally(&wiped, 4, 40, value_len).await;
    wiped.cluster.shutdown().await;
}
