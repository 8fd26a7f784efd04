//! Membership changes and partition moves on a live cluster: a node joins
//! and gets its share of replicas, a node leaves after its replicas moved,
//! an operator moves a partition, and a producer publishing all along loses
//! nothing and gets nothing twice.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftstream_client::pb;
use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use tonic::Code;

use crate::common::TestCluster;
use crate::common::assert_acknowledged_in_order;
use crate::common::eventually;
use crate::common::publish_request;
use crate::common::read_all;
use crate::common::topic;
use crate::common::values;

/// Publishes numbered messages through `client` until `stop`; returns the
/// acknowledged values per partition. Failed publishes are unknown
/// outcomes: they may or may not be stored, so they are not counted.
fn keep_publishing(
    client: raftstream_client::Grpc,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(BTreeMap<u32, Vec<String>>, usize)> {
    tokio::spawn(async move {
        let mut acked: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let value = format!("m-{sent}");
            sent += 1;
            if let Ok(response) = client.clone().publish(publish_request(name, &value)).await {
                acked
                    .entry(response.into_inner().partition)
                    .or_default()
                    .push(value);
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        (acked, sent)
    })
}

/// Every acknowledged message is read back in order, and no message is
/// stored twice.
async fn check_nothing_lost_or_doubled(
    client: &mut raftstream_client::Grpc,
    name: &str,
    partitions: u32,
    acked: &BTreeMap<u32, Vec<String>>,
) {
    for partition in 0..partitions {
        let expected = acked.get(&partition).cloned().unwrap_or_default();
        let read = values(&read_all(client, name, partition, expected.len()).await);
        assert_acknowledged_in_order(&expected, &read);
        let distinct: BTreeSet<&String> = read.iter().collect();
        assert_eq!(
            distinct.len(),
            read.len(),
            "partition {partition} stored a message twice"
        );
    }
}

/// Calls `call` until it succeeds, retrying what a membership call answers
/// while work is under way (UNAVAILABLE, an unknown outcome).
async fn until_done<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    eventually(what, Duration::from_secs(90), || {
        let attempt = call();
        async move {
            match attempt.await {
                Ok(()) => Some(()),
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
                    ) =>
                {
                    None
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await
}

/// The replicas placed on each node by the metadata `node` holds, and
/// whether moves or balancing are still under way.
fn placement(cluster: &TestCluster, node: u64) -> (BTreeMap<NodeId, usize>, bool) {
    let meta = cluster.nodes[&node].node.metadata();
    let mut counts = BTreeMap::new();
    for replicas in meta.topics.values().flat_map(|t| t.partitions.iter()) {
        for replica in replicas {
            *counts.entry(*replica).or_default() += 1;
        }
    }
    (counts, !meta.moves.is_empty() || meta.balancing)
}

/// Every partition group's voters, as its leader has them, equal the
/// metadata's replicas.
fn groups_match_placement(cluster: &TestCluster, name: &str) -> bool {
    let meta = cluster.nodes.values().next().unwrap().node.metadata();
    let Some(topic) = meta.topic_by_name(name) else {
        return false;
    };
    topic.partitions.iter().enumerate().all(|(p, replicas)| {
        let group = topic.group_id(p as u32);
        let want: BTreeSet<NodeId> = replicas.iter().copied().collect();
        cluster.nodes.values().any(|running| {
            running
                .node
                .group(group)
                .is_some_and(|g| g.is_leader(running.node.id()) && g.voters() == want)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_takes_its_share_and_a_node_leaves_without_loss() {
    let mut cluster = TestCluster::start(3).await;
    cluster.create_topic("grow", 4, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = keep_publishing(cluster.client(2).await, "grow", stop.clone());

    // A new, empty node joins through node 1 and becomes a voter.
    let peer_addr = cluster.start_joining_node(4, 1).await;
    let mut admin = cluster.client(1).await;
    until_done("add node 4", || {
        let mut admin = admin.clone();
        let peer_addr = peer_addr.clone();
        async move {
            admin
                .add_node(pb::AddNodeRequest {
                    node_id: 4,
                    peer_addr,
                })
                .await
                .map(|_| ())
        }
    })
    .await;
    assert!(cluster.nodes[&1].node.voters().contains(&NodeId(4)));
    // The balancer gives it a quarter of the 12 replicas, and every
    // group's voters follow the placement.
    eventually(
        "replicas balanced onto node 4",
        Duration::from_secs(60),
        || async {
            let (counts, busy) = placement(&cluster, 1);
            (!busy && counts.get(&NodeId(4)) == Some(&3) && counts.values().all(|c| *c == 3))
                .then_some(())
        },
    )
    .await;
    eventually(
        "groups follow the placement",
        Duration::from_secs(30),
        || async { groups_match_placement(&cluster, "grow").then_some(()) },
    )
    .await;
    let status = admin
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let four = status.nodes.iter().find(|n| n.id == 4).unwrap();
    assert!(
        four.voter && !four.draining && four.replicas == 3,
        "{four:?}"
    );

    // Node 1 leaves: its replicas move first, then it stops being a voter.
    let mut via_two = cluster.client(2).await;
    until_done("remove node 1", || {
        let mut client = via_two.clone();
        async move {
            client
                .remove_node(pb::RemoveNodeRequest { node_id: 1 })
                .await
                .map(|_| ())
        }
    })
    .await;
    let two = &cluster.nodes[&2].node;
    assert_eq!(two.voters(), vec![NodeId(2), NodeId(3), NodeId(4)]);
    let (counts, _) = placement(&cluster, 2);
    assert_eq!(counts.get(&NodeId(1)), None, "{counts:?}");
    // Node 1 deletes the partitions it no longer holds.
    eventually(
        "node 1 let go of its partitions",
        Duration::from_secs(30),
        || async {
            (cluster.nodes[&1]
                .node
                .groups()
                .iter()
                .all(|g| g.id == GroupId::META))
            .then_some(())
        },
    )
    .await;

    stop.store(true, Ordering::Relaxed);
    let (acked, sent) = producer.await.unwrap();
    let acked_count: usize = acked.values().map(Vec::len).sum();
    assert!(acked_count > 0 && acked_count <= sent);
    check_nothing_lost_or_doubled(&mut via_two, "grow", 4, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_moves_a_partition_and_bad_moves_change_nothing() {
    let cluster = TestCluster::start(4).await;
    cluster.create_topic("moved", 2, 3).await;
    let mut client = cluster.client(1).await;
    let mut acked = BTreeMap::new();
    for i in 0..20 {
        let value = format!("before-{i}");
        // Creating the topic answered once its partitions had leaders: the
        // first publish right after it is acknowledged, through any node.
        let request = pb::PublishRequest {
            topic: topic("moved"),
            record: Some(pb::Record {
                value: value.clone().into_bytes().into(),
                partition: Some(0),
                ..Default::default()
            }),
        };
        let response = client.publish(request).await.unwrap().into_inner();
        assert_eq!(response.partition, 0);
        acked.entry(0).or_insert_with(Vec::new).push(value);
    }
    let meta = cluster.nodes[&1].node.metadata();
    let before = meta.topic_by_name("moved").unwrap().partitions[0].clone();
    // The node the partition is not on yet, preferred leader from now on.
    let newcomer = (1..=4).map(NodeId).find(|n| !before.contains(n)).unwrap();
    let target = vec![newcomer.0, before[1].0, before[2].0];

    let refusals = [
        (vec![before[1].0, before[2].0], Code::InvalidArgument),
        (
            vec![newcomer.0, newcomer.0, before[1].0],
            Code::InvalidArgument,
        ),
        (vec![newcomer.0, before[1].0, 9], Code::InvalidArgument),
    ];
    for (replicas, code) in refusals {
        let refused = client
            .move_partition(pb::MovePartitionRequest {
                topic: topic("moved"),
                partition: 0,
                replicas: replicas.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), code, "{replicas:?}: {refused:?}");
    }
    let missing = client
        .move_partition(pb::MovePartitionRequest {
            topic: topic("moved"),
            partition: 7,
            replicas: target.clone(),
        })
        .await
        .unwrap_err();
    // As a publish to a partition the topic lacks.
    assert_eq!(missing.code(), Code::InvalidArgument, "{missing:?}");
    assert_eq!(
        missing.metadata().get("x-raftstream-error").unwrap(),
        "unknown_partition"
    );
    assert_eq!(
        cluster.nodes[&1].node.metadata(),
        meta,
        "refused moves change nothing"
    );
    // A client token may not complete moves: only nodes do.
    let forbidden = client
        .complete_partition_move(pb::CompletePartitionMoveRequest {
            group_id: GroupId::partition(raftstream_node::model::TopicId(1), 0).0,
            replicas: target.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(forbidden.code(), Code::PermissionDenied, "{forbidden:?}");

    // A metadata call may meet a moving leadership (UNAVAILABLE, retry).
    until_done("move partition 0", || {
        let mut client = client.clone();
        let replicas = target.clone();
        async move {
            client
                .move_partition(pb::MovePartitionRequest {
                    topic: topic("moved"),
                    partition: 0,
                    replicas,
                })
                .await
                .map(|_| ())
        }
    })
    .await;
    let want: Vec<NodeId> = target.iter().copied().map(NodeId).collect();
    eventually("the partition moved", Duration::from_secs(60), || async {
        let meta = cluster.nodes[&1].node.metadata();
        (meta.moves.is_empty() && meta.topic_by_name("moved")?.partitions[0] == want).then_some(())
    })
    .await;
    eventually("its group follows", Duration::from_secs(30), || async {
        groups_match_placement(&cluster, "moved").then_some(())
    })
    .await;
    // The replica that left deletes the group; the newcomer holds every
    // message, and leadership goes to the preferred leader.
    let left = before[0];
    let group = GroupId::partition(raftstream_node::model::TopicId(1), 0);
    eventually(
        "the old replica let go",
        Duration::from_secs(30),
        || async {
            cluster.nodes[&left.0]
                .node
                .group(group)
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        "the preferred leader leads",
        Duration::from_secs(30),
        || async { (cluster.partition_leader("moved", 0).await == newcomer.0).then_some(()) },
    )
    .await;
    let mut on_newcomer = cluster.client(newcomer.0).await;
    check_nothing_lost_or_doubled(&mut on_newcomer, "moved", 1, &acked).await;
    cluster.shutdown().await;
}
