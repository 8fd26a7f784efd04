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
use crate::common::assert_shown_settled;
use crate::common::assert_shown_voter;
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
pub async fn until_done<F, Fut>(what: &str, mut call: F)
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

/// Adds `node`, listening for peers at `peer_addr`, through `admin`, with
/// [`until_done`]'s retries; `what` names the step in a failure.
pub async fn add_until_done(
    what: &str,
    admin: &raftstream_client::Grpc,
    node: u64,
    peer_addr: &str,
) {
    until_done(what, || {
        let mut admin = admin.clone();
        let request = pb::AddNodeRequest {
            node_id: node,
            peer_addr: peer_addr.to_string(),
        };
        async move { admin.add_node(request).await.map(|_| ()) }
    })
    .await
}

/// Removes `node` through `admin`, calling again while its replicas move
/// away (UNAVAILABLE) or an attempt's outcome is unknown. After an unknown
/// outcome the removal may have happened already, so "not in the cluster"
/// then means done.
pub async fn remove_until_done(admin: &raftstream_client::Grpc, node: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut outcome_unknown = false;
    loop {
        let attempt = admin
            .clone()
            .remove_node(pb::RemoveNodeRequest { node_id: node })
            .await;
        match attempt {
            Ok(_) => return,
            Err(status)
                if outcome_unknown
                    && status.code() == Code::InvalidArgument
                    && status.message().contains("not in the cluster") =>
            {
                return;
            }
            Err(status) if status.code() == Code::Unavailable => {
                outcome_unknown |= !status.message().contains("moving away");
            }
            Err(status) if matches!(status.code(), Code::DeadlineExceeded | Code::Unknown) => {
                outcome_unknown = true;
            }
            Err(status) => panic!("removing node {node}: {status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out removing node {node}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let mut cluster = TestCluster::start_with_topic(3, "grow", 4, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = keep_publishing(cluster.client(2).await, "grow", stop.clone());

    // A new, empty node joins through node 1 and becomes a voter.
    let peer_addr = cluster.start_joining_node(4, 1).await;
    let mut admin = cluster.client(1).await;
    add_until_done("add node 4", &admin, 4, &peer_addr).await;
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
    remove_until_done(&via_two, 1).await;
    // The removal committed on the metadata leader; node 2 may apply it a
    // moment later.
    let two = &cluster.nodes[&2].node;
    eventually(
        "node 2 sees node 1 removed",
        Duration::from_secs(10),
        || async { (two.voters() == vec![NodeId(2), NodeId(3), NodeId(4)]).then_some(()) },
    )
    .await;
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
    let cluster = TestCluster::start_with_topic(4, "moved", 2, 3).await;
    let mut client = cluster.client(1).await;
    let mut acked: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    // Each attempt sends a new value: an attempt that fails is an unknown
    // outcome (a busy machine can time a forwarded call out), so it is not
    // counted, and sending it again could store it twice.
    let mut attempt = 0;
    while acked.get(&0).map_or(0, Vec::len) < 20 {
        let value = format!("before-{attempt}");
        attempt += 1;
        let request = pb::PublishRequest {
            topic: topic("moved"),
            record: Some(pb::Record {
                value: value.clone().into_bytes().into(),
                partition: Some(0),
                ..Default::default()
            }),
        };
        match client.publish(request).await {
            Ok(response) => {
                assert_eq!(response.into_inner().partition, 0);
                acked.entry(0).or_default().push(value);
            }
            Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                assert!(attempt < 1_000, "no publish acknowledged: {status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
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

/// Adding a node that is draining (its removal under way) cancels the
/// removal: it stays a voter, stops draining, and the balancer evens the
/// replicas out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_draining_node_cancels_its_removal() {
    let cluster = TestCluster::start_with_topic(4, "kept", 4, 3).await;
    // A removal as RemoveNode starts it (on the metadata leader), without
    // the caller that would finish it.
    until_done("mark node 4 draining", || async {
        let leader = cluster
            .nodes
            .values()
            .find(|n| {
                n.node
                    .meta_group()
                    .is_some_and(|g| g.is_leader(n.node.id()))
            })
            .ok_or_else(|| tonic::Status::unavailable("no metadata leader yet"))?;
        leader
            .node
            .write_meta_ack(raftstream_node::raft::types::MetaCommand::SetNodeDraining {
                node: NodeId(4),
                draining: true,
            })
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    })
    .await;
    let admin = cluster.client(2).await;
    let peer_addr = cluster.configs[&4].peer_addr.to_string();
    add_until_done("add node 4 again", &admin, 4, &peer_addr).await;
    eventually(
        "node 4 no longer draining, with its share",
        Duration::from_secs(60),
        || async {
            let draining = cluster.nodes[&1].node.metadata().draining;
            let (counts, busy) = placement(&cluster, 1);
            (draining.is_empty() && !busy && counts.get(&NodeId(4)) == Some(&3)).then_some(())
        },
    )
    .await;
    assert!(cluster.nodes[&1].node.voters().contains(&NodeId(4)));
    cluster.shutdown().await;
}
/// What an HTTP call to a membership route answered, or `None` while the
/// cluster is busy: 503, or 504 for a write whose outcome is unknown (these
/// calls are idempotent, so they may be sent again).
fn settled(
    (status, body): (reqwest::StatusCode, serde_json::Value),
) -> Option<(reqwest::StatusCode, serde_json::Value)> {
    match status.as_u16() {
        503 | 504 => None,
        _ => Some((status, body)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_shows_the_cluster_moves_partitions_and_adds_nodes() {
    use reqwest::StatusCode;
    use serde_json::json;

    use crate::http::Http;
    use crate::http::assert_error;

    let mut cluster = TestCluster::start(3).await;
    // Two replicas on three nodes: a move has somewhere to go.
    cluster.create_topic("over-http", 1, 2).await;
    cluster.wait_partition_leaders("over-http").await;
    let http = Http::new(&cluster, 2);

    let (status, shown) = http.get("/api/cluster").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    // Replicas 1, 1 and 0.
    assert_shown_settled(&shown, 3, 2, 1);

    let meta = cluster.nodes[&1].node.metadata();
    let before = meta.topic_by_name("over-http").unwrap().partitions[0].clone();
    let newcomer = (1..=3).map(NodeId).find(|n| !before.contains(n)).unwrap();
    let target = vec![newcomer.0, before[0].0];
    let move_path = "/api/topics/over-http/partitions/0/move";

    // Bad input is refused and changes nothing.
    for body in [
        json!({"to": [before[0].0]}),
        json!({"to": [newcomer.0, newcomer.0]}),
        json!({"to": [newcomer.0, 9]}),
        json!({"to": "2,3"}),
        json!({}),
    ] {
        let (status, error) = http.post(move_path, body.clone()).await;
        assert_error(status, &error, StatusCode::BAD_REQUEST, "invalid_request");
    }
    for (path, expected, code) in [
        (
            "/api/topics/over-http/partitions/7/move",
            StatusCode::BAD_REQUEST,
            "unknown_partition",
        ),
        (
            "/api/topics/missing/partitions/0/move",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (status, error) = http.post(path, json!({"to": target})).await;
        assert_error(status, &error, expected, code);
    }
    let (status, error) = http.delete("/api/cluster/nodes/9").await;
    assert_error(status, &error, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        cluster.nodes[&1].node.metadata(),
        meta,
        "refused calls change nothing"
    );

    let (status, moved) = eventually("a move over HTTP", Duration::from_secs(30), || {
        settled_post(&http, move_path, json!({"to": target}))
    })
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{moved}");
    let from: Vec<u64> = before.iter().map(|n| n.0).collect();
    assert_eq!(
        moved,
        json!({"topic": "over-http", "partition": 0, "from": from, "to": target})
    );
    let want: Vec<NodeId> = target.iter().copied().map(NodeId).collect();
    eventually("the partition moved", Duration::from_secs(60), || async {
        let meta = cluster.nodes[&1].node.metadata();
        (meta.moves.is_empty() && meta.topic_by_name("over-http")?.partitions[0] == want)
            .then_some(())
    })
    .await;
    eventually("its group follows", Duration::from_secs(30), || async {
        groups_match_placement(&cluster, "over-http").then_some(())
    })
    .await;

    // A joining node is not in the cluster until it is added.
    let peer_addr = cluster.start_joining_node(4, 1).await;
    let (status, error) = http.delete("/api/cluster/nodes/4").await;
    assert_error(status, &error, StatusCode::NOT_FOUND, "not_found");
    let (status, error) = http
        .post("/api/cluster/nodes", json!({"id": 4, "address": "nowhere"}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, error) = http
        .post("/api/cluster/nodes", json!({"id": 0, "address": peer_addr}))
        .await;
    assert_error(status, &error, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, added) = eventually("node 4 added over HTTP", Duration::from_secs(60), || {
        settled_post(
            &http,
            "/api/cluster/nodes",
            json!({"id": 4, "address": peer_addr}),
        )
    })
    .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["result"], "added", "{added}");
    assert!(cluster.nodes[&1].node.voters().contains(&NodeId(4)));
    let (_, shown) = http.get("/api/cluster").await;
    assert_shown_voter(&shown, 4);

    // Every route is in the API document.
    let (_, document) = http.get("/openapi.json").await;
    for path in [
        "/api/cluster",
        "/api/cluster/nodes",
        "/api/cluster/nodes/{node_id}",
        "/api/topics/{topic_id}/partitions/{partition}/move",
    ] {
        assert!(
            document["paths"][path].is_object(),
            "{path} is not documented"
        );
    }
    cluster.shutdown().await;
}

/// A POST that answers something other than "busy", see [`settled`].
async fn settled_post(
    http: &crate::http::Http,
    path: &str,
    body: serde_json::Value,
) -> Option<(reqwest::StatusCode, serde_json::Value)> {
    settled(http.post(path, body).await)
}

/// A node that never answers is never made a voter, however often it is
/// added: the second call finds it a learner already and must not promote
/// it, or a one-node cluster would need it for every metadata write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_an_unreachable_node_again_never_makes_it_a_voter() {
    let cluster = TestCluster::start(1).await;
    let mut admin = cluster.client(1).await;
    for _ in 0..2 {
        let refused = admin
            .add_node(pb::AddNodeRequest {
                node_id: 9,
                peer_addr: "127.0.0.1:1".into(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
            ),
            "{refused:?}"
        );
    }
    assert!(!cluster.nodes[&1].node.voters().contains(&NodeId(9)));
    // Metadata writes still commit on the one voter.
    cluster.create_topic("still", 1, 1).await;
    cluster.shutdown().await;
}
