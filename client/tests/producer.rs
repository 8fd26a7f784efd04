//! The idempotent producer against a real cluster whose leader is stopped
//! mid-stream: every acknowledged message appears exactly once, in the order
//! sent.

#![allow(clippy::unwrap_used)]

#[path = "../../node/tests/it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::ADMIN_TOKEN;
use common::TestCluster;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Consumer;
use raftstream_client::Error;
use raftstream_client::Position;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_node::config::Limits;

/// A client of every running node of `cluster`, as the admin.
fn client_config(cluster: &TestCluster) -> ClientConfig {
    let seeds: Vec<String> = cluster
        .running_ids()
        .iter()
        .map(|id| cluster.addr(*id).to_string())
        .collect();
    ClientConfig::new(seeds).with_token(ADMIN_TOKEN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_lost_mid_stream_stores_every_acknowledged_message_exactly_once_in_order() {
    let mut cluster = TestCluster::start_with_topic(3, "ledger", 1, 3).await;
    let client = Client::connect(client_config(&cluster)).await.unwrap();
    let config = ProducerConfig {
        linger: Duration::from_millis(2),
        batch_max_records: 20,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, "ledger", config).await.unwrap();

    let leader = cluster.partition_leader("ledger", 0).await;
    let mut deliveries = Vec::new();
    for i in 0..600 {
        deliveries.push(producer.send(Record::new(format!("m{i}"))).await.unwrap());
        if i == 200 {
            // Lose the leader while batches are in flight.
            cluster.stop(leader).await;
        }
    }
    let mut acked = Vec::new();
    for (i, delivery) in deliveries.into_iter().enumerate() {
        match delivery.await.unwrap() {
            Ok(ack) => acked.push((i, ack.offset)),
            Err(Error::OutcomeUnknown(_)) => {}
            Err(e) => panic!("message {i} failed: {e}"),
        }
    }
    assert!(
        acked.len() >= 500,
        "most messages are acknowledged: {}",
        acked.len()
    );
    let mut consumer = Consumer::new(&client, "ledger", 0, Position::Earliest)
        .await
        .unwrap();
    let mut read = Vec::new();
    loop {
        let batch = consumer.poll(1000, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            break;
        }
        read.extend(
            batch
                .into_iter()
                .map(|m| (String::from_utf8(m.value.to_vec()).unwrap(), m.offset)),
        );
    }
    // Exactly once: no value twice.
    let mut values: Vec<&String> = read.iter().map(|(v, _)| v).collect();
    values.sort();
    let unique = values.len();
    values.dedup();
    assert_eq!(values.len(), unique, "a message was stored twice");
    // Every acknowledged message is at its acknowledged offset, in send order.
    for (i, offset) in &acked {
        assert_eq!(
            read.get(*offset as usize).map(|(v, _)| v.clone()),
            Some(format!("m{i}"))
        );
    }
    let offsets: Vec<u64> = acked.iter().map(|(_, o)| *o).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "acknowledged messages out of send order"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_one_publish_slot_per_node_every_record_of_many_partitions_lands_once_in_order() {
    let cluster = TestCluster::start(3).await;
    let partitions = 8u32;
    cluster.create_topic("fanout", partitions, 3).await;
    let mut config = client_config(&cluster);
    config.max_publishes_in_flight_per_node = 1;
    let client = Client::connect(config).await.unwrap();
    let producer = Producer::new(
        &client,
        "fanout",
        ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();

    // Records trickle in, one per partition at a time, so that batches of
    // every partition wait for the node's one slot while more records come.
    let per_partition = 150u32;
    let mut deliveries = Vec::new();
    for i in 0..per_partition {
        for p in 0..partitions {
            let record = Record::new(format!("{p}/{i}")).with_partition(p);
            deliveries.push((p, i, producer.send(record).await.unwrap()));
        }
        tokio::task::yield_now().await;
    }
    let mut offsets = vec![Vec::new(); partitions as usize];
    for (p, i, delivery) in deliveries {
        let ack = delivery.await.unwrap().unwrap();
        assert_eq!(ack.partition, p);
        offsets[p as usize].push((i, ack.offset));
    }
    for (p, acked) in offsets.iter().enumerate() {
        let mut consumer = Consumer::new(&client, "fanout", p as u32, Position::Earliest)
            .await
            .unwrap();
        let read = consumer.poll(1000, Duration::ZERO).await.unwrap();
        let values: Vec<String> = read
            .iter()
            .map(|m| String::from_utf8(m.value.to_vec()).unwrap())
            .collect();
        let expected: Vec<String> = (0..per_partition).map(|i| format!("{p}/{i}")).collect();
        assert_eq!(
            values, expected,
            "partition {p} holds each record once, in order"
        );
        assert!(acked.iter().all(|(i, offset)| *offset == u64::from(*i)));
    }
    cluster.shutdown().await;
}

/// A topic created after the client learnt the cluster: its partition's
/// leader is unknown, and a node that is not the leader forwards every call
/// (correct, but one hop longer). Publishing makes the client learn it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_learns_the_leader_of_a_topic_created_after_it_connected() {
    let cluster = TestCluster::start(3).await;
    let client = Client::connect(client_config(&cluster)).await.unwrap();
    let topic = cluster.create_topic("late", 1, 3).await;
    let group_id = topic.partitions[0].group_id;
    assert_eq!(client.known_leader(group_id), None);
    let leader = cluster
        .addr(cluster.partition_leader("late", 0).await)
        .to_string();

    let producer = Producer::new(&client, "late", ProducerConfig::default())
        .await
        .unwrap();
    let learnt = common::eventually(
        "the client knows the leader",
        Duration::from_secs(20),
        || {
            let (client, producer) = (&client, &producer);
            async move {
                producer.send_and_wait(Record::new("m")).await.unwrap();
                client.known_leader(group_id)
            }
        },
    )
    .await;
    assert_eq!(learnt, leader);
}

/// A leader that hands leadership on and stays up forwards every call it
/// still gets. Its answers say so, and the client learns the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_follows_a_leader_that_moved_while_the_old_one_stayed_up() {
    // No hand-back to the preferred replica: the leader stays where the
    // test moves it.
    let limits = Limits {
        retention_interval_ms: 3_600_000,
        ..TestCluster::limits()
    };
    let cluster = TestCluster::start_with_limits(3, limits).await;
    let topic = cluster.create_topic("moved", 1, 3).await;
    let group_id = topic.partitions[0].group_id;
    let client = Client::connect(client_config(&cluster)).await.unwrap();
    let producer = Producer::new(&client, "moved", ProducerConfig::default())
        .await
        .unwrap();
    let first = cluster.partition_leader("moved", 0).await;
    let knows = |id: u64| {
        let (client, producer) = (&client, &producer);
        let addr = cluster.addr(id).to_string();
        move || {
            let addr = addr.clone();
            async move {
                producer.send_and_wait(Record::new("m")).await.unwrap();
                (client.known_leader(group_id) == Some(addr)).then_some(())
            }
        }
    };
    common::eventually(
        "the client knows the first leader",
        Duration::from_secs(20),
        knows(first),
    )
    .await;

    let to = cluster.running_node_other_than(first);
    cluster.transfer_partition_leader("moved", 0, to).await;
    common::eventually(
        "the client knows the new leader",
        Duration::from_secs(20),
        knows(to),
    )
    .await;
}
