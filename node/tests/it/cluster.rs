//! Multi-node behaviour over real gRPC on loopback.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use raftstream_client::pb;
use raftstream_node::model::GroupId;
use raftstream_node::model::TopicId;
use raftstream_node::time::Clock;
use raftstream_node::time::SystemClock;

async fn publish(
    client: &mut raftstream_client::Grpc,
    name: &str,
    value: &str,
) -> pb::PublishResponse {
    client
        .publish(publish_request(name, value))
        .await
        .unwrap()
        .into_inner()
}

/// Three nodes with a topic `name` of one partition on three replicas whose
/// messages are kept for `retention_ms` and up to `retention_bytes` (0:
/// without that limit), holding `values` published in order; answers them
/// and a client of node 1.
async fn start_with_retained_topic(
    name: &str,
    retention_ms: u64,
    retention_bytes: u64,
    values: impl IntoIterator<Item = String>,
) -> (TestCluster, raftstream_client::Grpc) {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.client(1).await;
    cluster
        .create_topic_from(pb::CreateTopicRequest {
            name: name.into(),
            partitions: 1,
            replication_factor: 3,
            retention: Some(pb::RetentionPolicy {
                retention_ms,
                retention_bytes,
            }),
            ..Default::default()
        })
        .await;
    for value in values {
        publish(&mut client, name, &value).await;
    }
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_through_any_node_reads_identical_sequence_from_every_node() {
    let cluster = TestCluster::start_with_topic(3, "orders", 3, 3).await;
    for i in 0..30u32 {
        let mut client = cluster.client(1 + u64::from(i % 3)).await;
        let key = format!("customer-{}", i % 5);
        let ack = client
            .publish(pb::PublishRequest {
                topic: topic("orders"),
                record: Some(pb::Record {
                    key: key.into_bytes().into(),
                    value: format!("m{i}").into_bytes().into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.message_id, format!("{}-{}", ack.partition, ack.offset));
    }
    let mut per_node = Vec::new();
    for id in 1..=3 {
        let mut client = cluster.client(id).await;
        let mut all = Vec::new();
        for p in 0..3 {
            let hw = client
                .consume(consume_now("orders", p, at_offset(0), 1))
                .await
                .unwrap()
                .into_inner()
                .high_watermark;
            let messages = read_all(&mut client, "orders", p, hw as usize).await;
            let offsets: Vec<u64> = messages.iter().map(|m| m.offset).collect();
            assert_eq!(offsets, (0..hw).collect::<Vec<_>>(), "offsets are dense");
            all.push(values(&messages));
        }
        per_node.push(all);
    }
    assert_eq!(
        per_node
            .iter()
            .map(|p| p.iter().map(Vec::len).sum::<usize>())
            .next(),
        Some(30)
    );
    assert!(
        per_node.windows(2).all(|w| w[0] == w[1]),
        "every node reads the same sequence"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_new_leader_and_keeps_acknowledged_messages() {
    let mut cluster = TestCluster::start_with_topic(3, "events", 1, 3).await;
    let mut acked = Vec::new();
    let mut client = cluster.client(1).await;
    for i in 0..20 {
        publish(&mut client, "events", &format!("before-{i}")).await;
        acked.push(format!("before-{i}"));
    }
    let mut client = cluster.stop_partition_leader("events", 0).await;
    // The first publish after the loss may meet the election: retry until
    // the new leader takes it. A failed attempt was never acknowledged.
    let started = std::time::Instant::now();
    publish_until_acked(&client, "events", "after-0", Duration::from_secs(15)).await;
    let failover = started.elapsed();
    acked.push("after-0".into());
    for i in 1..10 {
        publish(&mut client, "events", &format!("after-{i}")).await;
        acked.push(format!("after-{i}"));
    }
    let messages = read_all(&mut client, "events", 0, acked.len()).await;
    let read = values(&messages);
    assert_acknowledged_in_order(&acked, &read);
    assert!(
        failover < Duration::from_secs(15),
        "failover took {failover:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_follower_catches_up() {
    let mut cluster = TestCluster::start_with_topic(3, "logs", 1, 3).await;
    let leader = cluster.partition_leader("logs", 0).await;
    let follower = cluster.running_node_other_than(leader);
    cluster.stop(follower).await;
    let mut client = cluster.client(leader).await;
    for i in 0..25 {
        publish(&mut client, "logs", &format!("v{i}")).await;
    }
    cluster.restart(follower).await;
    let node = cluster.nodes[&follower].node.clone();
    let group_id = GroupId::partition(TopicId(1), 0);
    eventually("follower caught up", Duration::from_secs(20), || async {
        let hw = partition_figure(&node, group_id, |p| p.next_offset.0)?;
        (hw == 25).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_keeps_messages_offsets_and_group_offsets() {
    let mut cluster = TestCluster::start_with_topic(3, "audit", 2, 3).await;
    let mut client = cluster.client(2).await;
    for i in 0..40 {
        client
            .publish(pb::PublishRequest {
                topic: topic("audit"),
                record: Some(pb::Record {
                    value: format!("a{i}").into_bytes().into(),
                    partition: Some(i % 2),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    for partition in 0..2 {
        client
            .commit_offset(pb::CommitOffsetRequest {
                topic: topic("audit"),
                group: "billing".into(),
                partition,
                offset: 7 + partition as u64,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Partition 1's commit again, now ordered as writer 5's second commit.
    let ordered = |offset, writer_seq| pb::CommitOffsetRequest {
        topic: topic("audit"),
        group: "billing".into(),
        partition: 1,
        offset,
        writer_id: 5,
        writer_seq,
    };
    client.commit_offset(ordered(8, 2)).await.unwrap();
    let before: Vec<Vec<String>> = {
        let mut out = Vec::new();
        for p in 0..2 {
            out.push(values(&read_all(&mut client, "audit", p, 20).await));
        }
        out
    };
    for id in cluster.running_ids() {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    cluster.wait_ready().await;
    cluster.wait_partition_leaders("audit").await;
    let mut client = cluster.client(3).await;
    for p in 0..2 {
        let after = values(&read_all(&mut client, "audit", p, 20).await);
        assert_eq!(after, before[p as usize]);
    }
    // A late attempt of writer 5's first commit, after the restart: the
    // order survived it, so the group does not move back to offset 2.
    client.commit_offset(ordered(2, 1)).await.unwrap();
    let offsets = client
        .get_committed_offsets(pb::GetCommittedOffsetsRequest {
            topic: topic("audit"),
            group: "billing".into(),
            partition: None,
        })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    let offsets: Vec<(u32, u64)> = offsets.iter().map(|o| (o.partition, o.offset)).collect();
    assert_eq!(offsets, vec![(0, 7), (1, 8)]);
    // The groups that committed, in name order, in every partition or one.
    client
        .commit_offset(pb::CommitOffsetRequest {
            topic: topic("audit"),
            group: "alerts".into(),
            partition: 1,
            offset: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    for (partition, expected) in [
        (None, vec!["alerts", "billing"]),
        (Some(0), vec!["billing"]),
        (Some(1), vec!["alerts", "billing"]),
    ] {
        let groups = client
            .list_groups(pb::ListGroupsRequest {
                topic: topic("audit"),
                partition,
            })
            .await
            .unwrap()
            .into_inner()
            .groups;
        assert_eq!(groups, expected, "partition {partition:?}");
    }
    // New publishes continue the offsets rather than restart them.
    let ack = client
        .publish(pb::PublishRequest {
            topic: topic("audit"),
            record: Some(pb::Record {
                value: b"next".to_vec().into(),
                partition: Some(0),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.offset, 20);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_by_offset_message_id_and_timestamp_returns_exactly_the_right_messages() {
    let cluster = TestCluster::start_with_topic(3, "replay", 1, 3).await;
    let mut client = cluster.client(1).await;
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.push(publish(&mut client, "replay", &format!("r{i}")).await);
        // Give each batch its own millisecond so the timestamp seek has
        // distinct times to land between; wait on the clock, not a sleep.
        let last = acks.last().unwrap().timestamp_ms;
        eventually("clock tick", Duration::from_secs(1), || async move {
            (SystemClock.now_ms() > last).then_some(())
        })
        .await;
    }
    let consume = |position: pb::position::Position| {
        let position = Some(pb::Position {
            position: Some(position),
        });
        consume_now("replay", 0, position, 100)
    };
    let by_offset = client
        .consume(consume(pb::position::Position::Offset(4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        values(&by_offset.messages),
        (4..10).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    let by_id = client
        .consume(consume(pb::position::Position::AfterMessageId(
            acks[6].message_id.clone(),
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(&by_id.messages), vec!["r7", "r8", "r9"]);
    let by_time = client
        .consume(consume(pb::position::Position::SinceTimestampMs(
            acks[3].timestamp_ms,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        values(&by_time.messages),
        (3..10).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    let future = client
        .consume(consume(pb::position::Position::SinceTimestampMs(i64::MAX)))
        .await
        .unwrap()
        .into_inner();
    assert!(future.messages.is_empty());
    let bad = client
        .consume(consume(pb::position::Position::AfterMessageId(
            "0-99".into(),
        )))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_poll_returns_as_soon_as_a_message_commits() {
    let cluster = TestCluster::start_with_topic(3, "poll", 1, 3).await;
    let mut reader = cluster.client(2).await;
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let response = reader
            .consume(pb::ConsumeRequest {
                wait_ms: 30_000,
                ..consume_now("poll", 0, at_offset(0), 10)
            })
            .await
            .unwrap()
            .into_inner();
        (response, started.elapsed())
    });
    // Publish only once the poll is parked: its reply must come from the wake-up.
    let mut writer = cluster.client(3).await;
    publish(&mut writer, "poll", "wake").await;
    let (response, waited) = poll.await.unwrap();
    assert_eq!(values(&response.messages), vec!["wake"]);
    assert!(
        waited < Duration::from_secs(30),
        "the poll ran to its timeout"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_partitions_spread_leaders_across_three_nodes() {
    let cluster = TestCluster::start_with_topic(3, "wide", 12, 3).await;
    let mut client = cluster.client(1).await;
    let batch = pb::PublishBatchRequest {
        topic: topic("wide"),
        records: (0..120)
            .map(|i| pb::Record {
                value: format!("w{i}").into_bytes().into(),
                ..Default::default()
            })
            .collect(),
        producer: None,
    };
    let results = publish_batch(&mut client, batch).await;
    assert_eq!(results.len(), 120);
    assert!(
        results
            .iter()
            .all(|r| matches!(r.result, Some(pb::publish_result::Result::Ok(_))))
    );
    // Cluster status shows each group as its leader (else a replica) last
    // applied it: while a leader moves, a replica's view can lag briefly.
    eventually_in_status(
        &client,
        "every publish in the status",
        Duration::from_secs(20),
        |status| {
            let wide: Vec<_> = status.groups.iter().filter(|g| g.topic == "wide").collect();
            let total: u64 = wide.iter().map(|g| g.high_watermark).sum();
            (wide.len() == 12 && total == 120).then_some(())
        },
    )
    .await;
    // Leadership settles on each partition's preferred (first) replica,
    // which placement spreads over the nodes.
    let topic_info = client
        .get_topic(topic("wide").unwrap())
        .await
        .unwrap()
        .into_inner();
    let settled = eventually_in_status(
        &client,
        "leaders on preferred replicas",
        Duration::from_secs(30),
        |status| {
            let settled = topic_info.partitions.iter().all(|p| {
                status
                    .groups
                    .iter()
                    .any(|g| g.group_id == p.group_id && g.leader == p.replicas.first().copied())
            });
            settled.then_some(status)
        },
    )
    .await;
    let mut leaders: Vec<u64> = settled
        .groups
        .iter()
        .filter(|g| g.topic == "wide")
        .filter_map(|g| g.leader)
        .collect();
    leaders.sort();
    leaders.dedup();
    assert_eq!(leaders, vec![1, 2, 3]);
    assert!(settled.nodes.iter().all(|n| n.reachable));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let cluster = TestCluster::start_with_topic(3, "strict", 2, 3).await;
    let mut client = cluster.client(2).await;
    publish(&mut client, "strict", "kept").await;

    let oversize = pb::Record {
        value: vec![0u8; 1024 * 1024 + 1].into(),
        ..Default::default()
    };
    let bad_partition = pb::Record {
        value: b"x".to_vec().into(),
        partition: Some(9),
        ..Default::default()
    };
    // (what is wrong, the publish, its code, what its message names)
    for (wrong, request, code, named) in [
        (
            "an unknown topic",
            publish_request("nope", "x"),
            tonic::Code::NotFound,
            None,
        ),
        (
            "an oversized record",
            pb::PublishRequest {
                topic: topic("strict"),
                record: Some(oversize.clone()),
            },
            tonic::Code::InvalidArgument,
            Some("message_too_large"),
        ),
        (
            "a partition the topic lacks",
            pb::PublishRequest {
                topic: topic("strict"),
                record: Some(bad_partition),
            },
            tonic::Code::InvalidArgument,
            None,
        ),
        (
            "no topic",
            pb::PublishRequest {
                topic: None,
                record: record("x"),
            },
            tonic::Code::InvalidArgument,
            None,
        ),
    ] {
        let refused = client.publish(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{wrong}: {refused:?}");
        if let Some(named) = named {
            assert!(refused.message().contains(named), "{wrong}: {refused:?}");
        }
    }

    // In a batch, the bad record fails alone.
    let batch = pb::PublishBatchRequest {
        topic: topic("strict"),
        records: vec![
            pb::Record {
                value: b"good".to_vec().into(),
                partition: Some(0),
                ..Default::default()
            },
            pb::Record {
                partition: Some(0),
                ..oversize
            },
        ],
        producer: None,
    };
    let results = publish_batch(&mut client, batch).await;
    assert!(matches!(
        results[0].result,
        Some(pb::publish_result::Result::Ok(_))
    ));
    assert!(
        matches!(&results[1].result, Some(pb::publish_result::Result::Error(e)) if e.code == "message_too_large")
    );

    // (what is wrong, the topic asked for, its code)
    for (wrong, request, code) in [
        (
            "a taken name",
            pb::CreateTopicRequest {
                name: "strict".into(),
                partitions: 1,
                ..Default::default()
            },
            tonic::Code::AlreadyExists,
        ),
        (
            "more replicas than nodes",
            pb::CreateTopicRequest {
                name: "x".into(),
                partitions: 1,
                replication_factor: 5,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let refused = client.create_topic(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{wrong}: {refused:?}");
    }

    let wait_too_long = client
        .consume(pb::ConsumeRequest {
            wait_ms: 60_001,
            ..consume_now("strict", 0, None, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(wait_too_long.code(), tonic::Code::InvalidArgument);

    let count: usize = {
        let mut n = 0;
        for p in 0..2 {
            let r = client
                .consume(consume_now("strict", p, at_offset(0), 100))
                .await
                .unwrap()
                .into_inner();
            n += r.messages.len();
        }
        n
    };
    assert_eq!(count, 2, "only the two good messages were stored");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_update_purge_and_delete_through_a_follower() {
    let cluster = TestCluster::start_with_topic(3, "admin", 1, 3).await;
    let mut client = cluster.client(3).await;
    for i in 0..5 {
        publish(&mut client, "admin", &format!("p{i}")).await;
    }
    let updated = client
        .update_topic(pb::UpdateTopicRequest {
            topic: topic("admin"),
            description: Some("audited".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.description, "audited");
    assert_eq!(updated.version, 2);
    client
        .purge_topic(pb::PurgeTopicRequest {
            topic: topic("admin"),
            partition: None,
        })
        .await
        .unwrap();
    let after = client
        .consume(consume_now("admin", 0, None, 10))
        .await
        .unwrap()
        .into_inner();
    assert!(after.messages.is_empty());
    assert_eq!(after.log_start_offset, 5);
    let ack = publish(&mut client, "admin", "fresh").await;
    assert_eq!(ack.offset, 5, "offsets continue after a purge");
    client.delete_topic(topic("admin").unwrap()).await.unwrap();
    let gone = client.get_topic(topic("admin").unwrap()).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let listed = client
        .list_topics(pb::ListTopicsRequest { name: None })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.topics.is_empty());
    cluster.shutdown().await;
}

/// Expired messages of a partition that went quiet are dropped too: a
/// quiesced leader has no lease, and the retention write must wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_age_expires_the_messages_of_a_quiesced_partition() {
    // Longer than the 2 s after which an idle group quiesces.
    let old = (0..3).map(|i| format!("old-{i}"));
    let (cluster, client) = start_with_retained_topic("aging", 4_000, 0, old).await;
    let aging =
        |status: pb::ClusterStatusResponse| status.groups.into_iter().find(|g| g.topic == "aging");
    eventually_in_status(
        &client,
        "the partition quiesced",
        Duration::from_secs(20),
        |status| aging(status)?.quiesced.then_some(()),
    )
    .await;
    eventually_in_status(
        &client,
        "the expired messages dropped",
        Duration::from_secs(20),
        |status| (aging(status)?.log_start_offset == 3).then_some(()),
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_by_bytes_advances_log_start_on_every_replica() {
    // 50-byte values: only the newest two fit in 100 bytes.
    let values = (0..10).map(|i| format!("{i:050}"));
    let (cluster, mut client) = start_with_retained_topic("short", 0, 100, values).await;
    let group_id = GroupId::partition(TopicId(1), 0);
    for id in 1..=3 {
        let node = cluster.nodes[&id].node.clone();
        eventually("retention applied", Duration::from_secs(20), || async {
            let start = partition_figure(&node, group_id, |p| p.log_start_offset.0)?;
            (start == 8).then_some(())
        })
        .await;
        // The Raft log itself shrinks too, on every replica.
        eventually("log purged", Duration::from_secs(20), || async {
            use openraft::async_runtime::WatchReceiver;
            let forgotten = partition_figure(&node, group_id, |p| p.forgotten_log_index)?;
            let group = node.group(group_id)?;
            let purged = group
                .raft
                .metrics()
                .borrow_watched()
                .purged
                .map(|id| id.index);
            (forgotten > 0 && purged >= Some(forgotten)).then_some(())
        })
        .await;
    }
    let response = client
        .consume(consume_now("short", 0, None, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.log_start_offset, 8);
    assert_eq!(
        response
            .messages
            .iter()
            .map(|m| m.offset)
            .collect::<Vec<_>>(),
        vec![8, 9]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_streams_existing_then_new_messages_in_order() {
    let cluster = TestCluster::start_with_topic(3, "tail", 1, 3).await;
    let mut client = cluster.client(2).await;
    for i in 0..3 {
        publish(&mut client, "tail", &format!("t{i}")).await;
    }
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            topic: topic("tail"),
            partition: 0,
            position: at_offset(1),
        })
        .await
        .unwrap()
        .into_inner();
    let mut writer = cluster.client(3).await;
    for i in 3..6 {
        publish(&mut writer, "tail", &format!("t{i}")).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(String::from_utf8_lossy(&message.value).into_owned());
    }
    assert_eq!(seen, vec!["t1", "t2", "t3", "t4", "t5"]);
    drop(stream);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_quorum_a_publish_gets_a_clear_status_and_the_node_recovers() {
    let mut cluster = TestCluster::start_with_topic(3, "quorum", 1, 3).await;
    let mut client = cluster.client(1).await;
    publish(&mut client, "quorum", "before").await;
    cluster.stop(2).await;
    cluster.stop(3).await;
    let err = client
        .publish(publish_request("quorum", "lonely"))
        .await
        .unwrap_err();
    // Either no leader could be reached, or the entry could not commit and
    // its outcome is unknown; never a plain failure, never a hang.
    assert_not_acknowledged(&err);
    cluster.restart(2).await;
    cluster.restart(3).await;
    cluster.wait_ready().await;
    publish_until_acked(&client, "quorum", "after", Duration::from_secs(20)).await;
    let read = values(&read_all(&mut client, "quorum", 0, 2).await);
    assert_eq!(read.first().map(String::as_str), Some("before"));
    assert_eq!(read.last().map(String::as_str), Some("after"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_down_during_topic_deletion_drops_the_data_when_it_returns() {
    let mut cluster = TestCluster::start_with_topic(3, "doomed", 2, 3).await;
    let mut client = cluster.client(1).await;
    publish(&mut client, "doomed", "x").await;
    let groups = [
        GroupId::partition(TopicId(1), 0),
        GroupId::partition(TopicId(1), 1),
    ];
    let on_disk = |cluster: &TestCluster| cluster.nodes[&3].node.storage.groups_on_disk().unwrap();
    // A publish needs two of the three replicas: node 3 may still be
    // creating its groups.
    eventually(
        "node 3 holds both partitions",
        Duration::from_secs(20),
        || {
            let held = groups.iter().all(|g| on_disk(&cluster).contains(g));
            async move { held.then_some(()) }
        },
    )
    .await;
    cluster.stop(3).await;
    // The stopped node may have led the metadata group: like any client,
    // retry UNAVAILABLE until a new leader answers.
    eventually("topic deleted", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            match client.delete_topic(topic("doomed").unwrap()).await {
                Ok(_) => Some(()),
                Err(status) if status.code() == tonic::Code::NotFound => Some(()),
                Err(status) if status.code() == tonic::Code::Unavailable => None,
                Err(status) => panic!("delete failed: {status:?}"),
            }
        }
    })
    .await;
    cluster.restart(3).await;
    eventually(
        "orphaned partitions deleted",
        Duration::from_secs(20),
        || {
            let left = on_disk(&cluster);
            async move { groups.iter().all(|g| !left.contains(g)).then_some(()) }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutting_down_ends_parked_long_polls() {
    let mut cluster = TestCluster::start_with_topic(3, "idle", 1, 3).await;
    let group_id = GroupId::partition(TopicId(1), 0);
    let waiters = |cluster: &TestCluster| -> Vec<(u64, usize)> {
        cluster
            .nodes
            .iter()
            .filter_map(|(id, n)| Some((*id, n.node.group(group_id)?.state.waiters())))
            .collect()
    };
    let idle = waiters(&cluster);
    let mut reader = cluster.client(1).await;
    let poll = tokio::spawn(async move {
        reader
            .consume(pb::ConsumeRequest {
                wait_ms: 60_000,
                ..consume_now("idle", 0, at_offset(0), 10)
            })
            .await
    });
    // The poll parks on whichever node leads the partition at that moment.
    let parked_on = eventually("the long poll parked", Duration::from_secs(10), || {
        let now = waiters(&cluster);
        let parked = now
            .iter()
            .find(|(id, n)| idle.iter().any(|(i, before)| i == id && n > before))
            .map(|(id, _)| *id);
        async move { parked }
    })
    .await;
    // Nothing is published: the poll can only return through the shutdown.
    cluster.stop(parked_on).await;
    let answer = tokio::time::timeout(Duration::from_secs(30), poll).await;
    assert!(
        answer.is_ok(),
        "a 60 s long poll kept the node from shutting down"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_batches_survive_retries_and_leader_changes_exactly_once() {
    let mut cluster = TestCluster::start_with_topic(3, "exactly", 1, 3).await;
    let batch = |base_sequence: u64, values: &[&str]| pb::PublishBatchRequest {
        topic: topic("exactly"),
        records: values
            .iter()
            .map(|v| pb::Record {
                value: v.as_bytes().to_vec().into(),
                partition: Some(0),
                ..Default::default()
            })
            .collect(),
        producer: Some(pb::ProducerBatch {
            producer_id: 42,
            base_sequence,
        }),
    };
    let offsets = |results: Vec<pb::PublishResult>| -> Vec<u64> {
        results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::publish_result::Result::Ok(ok)) => ok.offset,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    };
    let mut client = cluster.client(1).await;
    let first = offsets(publish_batch(&mut client, batch(0, &["a", "b"])).await);
    assert_eq!(first, vec![0, 1]);
    // The same batch again, as a retry after an unknown outcome would send it.
    let retry = offsets(publish_batch(&mut client, batch(0, &["a", "b"])).await);
    assert_eq!(retry, first);
    // The retry survives a leader change: the sequence state is replicated.
    let client = cluster.stop_partition_leader("exactly", 0).await;
    let retry = eventually("retry on the new leader", Duration::from_secs(20), || {
        let mut client = client.clone();
        let request = batch(0, &["a", "b"]);
        // An unreachable old leader shows as a per-record "unavailable":
        // retry those, as a client does.
        async move {
            let results = client
                .publish_batch(request)
                .await
                .ok()?
                .into_inner()
                .results;
            results
                .iter()
                .all(|r| matches!(r.result, Some(pb::publish_result::Result::Ok(_))))
                .then_some(results)
        }
    })
    .await;
    assert_eq!(offsets(retry), first);
    let mut client = client.clone();
    let next = offsets(publish_batch(&mut client, batch(2, &["c"])).await);
    assert_eq!(next, vec![2]);
    // A gap is refused and stores nothing.
    let gap = publish_batch(&mut client, batch(9, &["z"])).await;
    assert!(
        matches!(&gap[0].result, Some(pb::publish_result::Result::Error(e)) if e.code == "out_of_sequence")
    );
    let mixed = pb::PublishBatchRequest {
        records: vec![pb::Record {
            partition: None,
            ..Default::default()
        }],
        ..batch(3, &[])
    };
    assert_eq!(
        client.publish_batch(mixed).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let read = values(&read_all(&mut client, "exactly", 0, 3).await);
    assert_eq!(read, vec!["a", "b", "c"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_calls_need_a_token_with_the_right_scope_and_topic() {
    let cluster = TestCluster::start_with_topic(3, "guarded", 1, 3).await;
    cluster.create_topic("other", 1, 3).await;
    let addr = cluster.addr(2).to_string();

    let mut anonymous = raftstream_client::connect(&addr, None).await.unwrap();
    let err = anonymous
        .publish(publish_request("guarded", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut wrong = raftstream_client::connect(&addr, Some("rst_wrong"))
        .await
        .unwrap();
    let err = wrong
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // The scheme is matched in any case, as on the HTTP gateway.
    let mut lowercase = tonic::Request::new(pb::ClusterStatusRequest {});
    lowercase.metadata_mut().insert(
        "authorization",
        format!("bearer {}", crate::common::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    anonymous.cluster_status(lowercase).await.unwrap();

    let mut admin = cluster.client(1).await;
    let created = admin
        .create_token(pb::CreateTokenRequest {
            name: "writer".into(),
            scopes: vec!["publish".into()],
            topics: vec!["guarded".into()],
        })
        .await
        .unwrap()
        .into_inner();
    // Through every node, leader or not: forwarding carries the node
    // credential, so the leader accepts work a follower authorized.
    for id in 1..=3 {
        let mut writer =
            raftstream_client::connect(&cluster.addr(id).to_string(), Some(&created.secret))
                .await
                .unwrap();
        eventually(
            "token replicated to the node",
            Duration::from_secs(10),
            || {
                let mut writer = writer.clone();
                async move { writer.publish(publish_request("guarded", "ok")).await.ok() }
            },
        )
        .await;
        let err = writer
            .publish(publish_request("other", "no"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = writer
            .consume(consume_now("guarded", 0, at_offset(0), 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = writer
            .create_topic(pb::CreateTopicRequest {
                name: "mine".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    // A forged node credential is refused.
    let mut forged = tonic::Request::new(pb::ClusterStatusRequest {});
    forged
        .metadata_mut()
        .insert("x-raftstream-node-auth", "00".parse().unwrap());
    assert_eq!(
        anonymous.cluster_status(forged).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    cluster.shutdown().await;
}

/// A batch of appends answers each message on its own, in order: a group the
/// node does not host and an undecodable message fail alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_batch_answers_each_message_in_order() {
    use raftstream_proto::v1::RaftBatch;
    use raftstream_proto::v1::RaftMessage;
    use raftstream_proto::v1::raft_batch_result::Result as Answer;
    use raftstream_proto::v1::raft_transport_client::RaftTransportClient;

    let cluster = TestCluster::start(1).await;
    let peer_addr = cluster.nodes[&1].peer_addr;
    let mut transport = RaftTransportClient::connect(format!("http://{peer_addr}"))
        .await
        .unwrap();
    let messages = vec![
        RaftMessage {
            group_id: 987_654_321,
            payload: vec![0; 8].into(),
        },
        RaftMessage {
            group_id: 0,
            payload: b"not a raft message".to_vec().into(),
        },
    ];
    let reply = transport
        .append_entries_batch(RaftBatch { messages })
        .await
        .unwrap()
        .into_inner();
    let answers: Vec<(u64, Option<Answer>)> = reply
        .results
        .into_iter()
        .map(|r| (r.group_id, r.result))
        .collect();
    assert_eq!(answers.len(), 2);
    assert!(
        matches!(&answers[0], (987_654_321, Some(Answer::NotHosted(_)))),
        "{answers:?}"
    );
    assert!(
        matches!(&answers[1], (0, Some(Answer::Error(why))) if why.contains("undecodable")),
        "{answers:?}"
    );
    cluster.shutdown().await;
}

/// A caller that cancels many calls before the node takes them up (a busy
/// node's peers time out hundreds of vote calls at once) keeps its
/// connection: h2's default closes it with ENHANCE_YOUR_CALM after 20, and
/// with it every other call it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_cancelled_at_once_do_not_close_the_connection() {
    let cluster = TestCluster::start(1).await;
    // Peers are the callers that cancel many calls at once.
    let peer_addr = cluster.nodes[&1].peer_addr;
    let tcp = tokio::net::TcpStream::connect(peer_addr).await.unwrap();
    let (mut calls, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let call = || {
        http::Request::post(format!(
            "http://{peer_addr}/raftstream.v1.Raftstream/ListTopics"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
    };
    // Headers and cancellations go out back to back, so the node reads them
    // before it has taken the calls up.
    for _ in 0..200 {
        calls = calls.ready().await.unwrap();
        let (_, mut body) = calls.send_request(call(), false).unwrap();
        body.send_reset(h2::Reason::CANCEL);
    }
    // An empty unary call: the node answers it with a gRPC error, which is
    // enough to show the connection still carries calls.
    calls = calls.ready().await.unwrap();
    let (answer, mut body) = calls.send_request(call(), false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("an answer within 10 s")
        .expect("the connection is still open");
    assert_eq!(answer.status(), http::StatusCode::OK);
    drop(calls);
    connection.abort();
}

/// Who may call what on which listener (ARCHITECTURE.md, "Trust
/// boundaries"): the public port serves clients only, the peer port nodes
/// only, and the node credential works on the peer port alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_port_refuses_node_credentials_and_the_peer_port_refuses_clients() {
    let cluster = TestCluster::start(1).await;
    let running = &cluster.nodes[&1];
    let secret = running
        .node
        .with_metadata(|m| m.cluster_secret)
        .flatten()
        .unwrap();
    let credential: tonic::metadata::AsciiMetadataValue = hex::encode(secret).parse().unwrap();
    let channel = |addr: std::net::SocketAddr| {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy()
    };
    let as_node = || {
        let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
        request
            .metadata_mut()
            .insert("x-raftstream-node-auth", credential.clone());
        request
    };
    let as_client = || {
        let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        request
    };
    let mut public = pb::raftstream_client::RaftstreamClient::new(channel(running.grpc_addr));
    let mut peer = pb::raftstream_client::RaftstreamClient::new(channel(running.peer_addr));

    let refused = public.cluster_status(as_node()).await.unwrap_err();
    assert_refused(&refused, tonic::Code::Unauthenticated, "peer listener");
    public.cluster_status(as_client()).await.unwrap();

    let refused = peer.cluster_status(as_client()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    peer.cluster_status(as_node()).await.unwrap();

    // Raft transport and node heartbeats are not on the public port.
    let heartbeat = || pb::NodeHeartbeatRequest {
        from: 1,
        ..Default::default()
    };
    let mut transport =
        pb::raft_transport_client::RaftTransportClient::new(channel(running.grpc_addr));
    let refused = transport.node_heartbeat(heartbeat()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused}");
    let mut transport =
        pb::raft_transport_client::RaftTransportClient::new(channel(running.peer_addr));
    transport.node_heartbeat(heartbeat()).await.unwrap();

    // A node of another cluster is refused on the Raft transport; one of
    // this cluster, or one that does not know its cluster yet, is not.
    let ours = raftstream_node::identity::cluster_id(&secret);
    let from_cluster = |cluster: &str| {
        let mut request = tonic::Request::new(heartbeat());
        request
            .metadata_mut()
            .insert("x-raftstream-cluster", cluster.parse().unwrap());
        request
    };
    let other = raftstream_node::identity::cluster_id(&[0; 32]);
    let refused = eventually(
        "the node knows its cluster id",
        Duration::from_secs(10),
        || {
            let mut transport = transport.clone();
            let request = from_cluster(&other);
            async move { transport.node_heartbeat(request).await.err() }
        },
    )
    .await;
    assert_refused(&refused, tonic::Code::PermissionDenied, &ours);
    transport.node_heartbeat(from_cluster(&ours)).await.unwrap();
    transport.node_heartbeat(heartbeat()).await.unwrap();
}
