//! A node whose data directory was wiped must not vote until it caught up.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use raftstream_node::model::TopicId;

/// Node 2 misses the newest messages while it is down; node 3 then loses
/// its disk. Had node 3 voted with its empty log, node 2 would have been
/// elected with its stale one and, once node 1 came back, the messages only
/// node 1 still held would have been truncated away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_node_does_not_elect_a_stale_leader_and_no_acknowledged_message_is_lost() {
    let mut cluster = TestCluster::start_with_topic(3, "survive", 1, 3).await;
    let client = cluster.client(1).await;
    publish_until_acked(&client, "survive", "while-all-up", Duration::from_secs(20)).await;
    // A node that started a moment after the others found a cluster formed
    // and starts cautious too; it takes appends once both other replicas
    // told it the current term. Stopping one before that would leave it
    // waiting for that node, and the partition without a quorum.
    let group_id = GroupId::partition(TopicId(1), 0);
    let meta = GroupId::META;
    eventually("every node votes", Duration::from_secs(20), || async {
        let caught_up = cluster.nodes.values().all(|running| {
            !running.node.rejoin.is_cautious(meta) && !running.node.rejoin.is_cautious(group_id)
        });
        caught_up.then_some(())
    })
    .await;

    cluster.stop(2).await;
    let client = cluster.client(1).await;
    let mut acked = vec!["while-all-up".to_string()];
    for i in 0..20 {
        let value = format!("without-2-{i}");
        publish_until_acked(&client, "survive", &value, Duration::from_secs(20)).await;
        acked.push(value);
    }

    cluster.stop(1).await;
    cluster.stop(3).await;
    // A new, empty disk for node 3 (the old one's files may still be
    // closing as the stopped node's last tasks end).
    let new_disk = cluster.dir.path().join("node-3-replaced");
    cluster.configs.get_mut(&3).unwrap().data_dir = new_disk;
    cluster.restart(2).await;
    cluster.restart(3).await;
    // Node 2's log is stale and node 3's is empty: without node 3's vote
    // node 2 cannot win. Watch the partition for a few election timeouts.
    let watched_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < watched_until {
        for id in [2, 3] {
            if let Some(group) = cluster.nodes[&id].node.group(group_id) {
                // Node 2 may come back believing it still leads the term it
                // led before it stopped; what must not happen is a leader
                // that a quorum acknowledges.
                use openraft::async_runtime::WatchReceiver;
                let metrics = group.raft.metrics().borrow_watched().clone();
                assert!(
                    metrics.state != openraft::ServerState::Leader
                        || metrics.last_quorum_acked.is_none(),
                    "node {id} leads with a quorum without node 1: {metrics:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Node 3 has not even caught up its metadata: it holds back there too.
    assert!(cluster.nodes[&3].node.rejoin.is_cautious(meta));
    // Nor does it take appends, of any term: with node 1 down only one of
    // the other replicas can tell it the current term, and a stale leader
    // could be among those that answer.
    let refused = append_to(&cluster, 3, meta, 1_000).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("learning"), "{refused}");
    // Restarted before it caught up, node 3 finds a database, but not what
    // it once acknowledged: it stays cautious.
    cluster.stop(3).await;
    cluster.restart(3).await;
    assert!(cluster.nodes[&3].node.rejoin.is_cautious(meta));

    cluster.restart(1).await;
    cluster.wait_ready().await;
    let mut reader = cluster.client(3).await;
    let read = read_all(&mut reader, "survive", 0, acked.len()).await;
    let values = values(&read);
    for value in &acked {
        assert!(
            values.contains(value),
            "acknowledged {value} lost: {values:?}"
        );
    }
    // Node 3 caught up and votes again.
    eventually("node 3 caught up", Duration::from_secs(20), || async {
        let rejoin = &cluster.nodes[&3].node.rejoin;
        (!rejoin.is_cautious(meta) && !rejoin.is_cautious(group_id)).then_some(())
    })
    .await;
}

/// Sends node `to` an AppendEntries without entries for `group`, from node 2
/// as the leader of `term`, over the peer transport.
async fn append_to(
    cluster: &TestCluster,
    to: u64,
    group: GroupId,
    term: u64,
) -> Result<raftstream_client::pb::RaftMessage, tonic::Status> {
    use raftstream_node::raft::types::TypeConfig;
    let request = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: raftstream_node::raft::types::Vote::new_committed(term, NodeId(2)),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        cluster.configs[&to].peer_addr
    ))
    .unwrap()
    .connect_lazy();
    let mut transport =
        raftstream_client::pb::raft_transport_client::RaftTransportClient::new(channel);
    transport
        .append_entries(raftstream_client::pb::RaftMessage {
            group_id: group.0,
            payload: bincode::serialize(&request).unwrap().into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A data directory keeps the node id it was created for: started under
/// another id (a disk moved between machines, a wrong `--node-id`), the
/// node refuses to start rather than speak with another node's log and vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_directory_of_another_node_is_refused_at_start() {
    let mut cluster = TestCluster::start(1).await;
    let config = cluster.configs[&1].clone();
    cluster.stop(1).await;
    let mut wrong = config.clone();
    wrong.node_id = NodeId(2);
    wrong.peers = [(NodeId(2), config.peer_addr.to_string())].into();
    let refused = eventually(
        "the stopped node's storage is released",
        Duration::from_secs(20),
        || {
            let wrong = wrong.clone();
            async move {
                match raftstream_node::server::RunningNode::start(wrong).await {
                    Ok(_) => panic!("node 2 started on node 1's data directory"),
                    // The old node's ports and RocksDB lock may not be
                    // released yet.
                    Err(e)
                        if e.to_string().contains("in use") || e.to_string().contains("lock") =>
                    {
                        None
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
        },
    )
    .await;
    assert!(
        refused.contains("belongs to node 1, not to node 2"),
        "{refused}"
    );
    // Under its own id the directory still starts.
    cluster.restart(1).await;
}

/// A follower loses its disk while the leaders stay up: the leaders find
/// entries they counted as replicated there gone, expect it (openraft
/// stops a leader that finds a follower's log reverted unexpectedly, in
/// debug builds), and bring the follower back to a full copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_lost_its_disk_catches_up_while_the_leaders_stay_up() {
    let mut cluster = TestCluster::start_with_topic(3, "kept", 1, 3).await;
    let group_id = GroupId::partition(TopicId(1), 0);
    let meta = GroupId::META;
    // Leaders elsewhere, so that node 3's log is one a leader counted on.
    cluster.transfer_partition_leader("kept", 0, 1).await;
    let client = cluster.client(1).await;
    let mut acked = vec![];
    for i in 0..10 {
        let value = format!("before-{i}");
        publish_until_acked(&client, "kept", &value, Duration::from_secs(20)).await;
        acked.push(value);
    }
    node_3_applied_all(&cluster, group_id).await;

    cluster.stop(3).await;
    cluster.configs.get_mut(&3).unwrap().data_dir = cluster.dir.path().join("node-3-replaced");
    cluster.restart(3).await;
    for i in 0..10 {
        let value = format!("after-{i}");
        publish_until_acked(&client, "kept", &value, Duration::from_secs(20)).await;
        acked.push(value);
    }
    eventually("node 3 caught up", Duration::from_secs(30), || async {
        let rejoin = &cluster.nodes[&3].node.rejoin;
        (!rejoin.is_cautious(meta) && !rejoin.is_cautious(group_id)).then_some(())
    })
    .await;
    // The leaders survived: the partition still takes publishes, node 3
    // applies them, and no acknowledged message is lost.
    publish_until_acked(&client, "kept", "last", Duration::from_secs(20)).await;
    acked.push("last".into());
    node_3_applied_all(&cluster, group_id).await;
    let mut reader = cluster.client(3).await;
    let read = read_all(&mut reader, "kept", 0, acked.len()).await;
    let values = values(&read);
    assert_eq!(values, acked);
}

async fn node_3_applied_all(cluster: &TestCluster, group_id: GroupId) {
    use openraft::async_runtime::WatchReceiver;
    eventually(
        "node 3 applied every entry",
        Duration::from_secs(30),
        || async {
            let applied = |id: u64| {
                let group = cluster.nodes[&id].node.group(group_id)?;
                let metrics = group.raft.metrics().borrow_watched().clone();
                metrics.last_applied.map(|l| l.index)
            };
            (applied(3)? == applied(1)?).then_some(())
        },
    )
    .await;
}
