//! Push subscriptions against a real HTTP receiver on loopback that fails,
//! times out and recovers: every acknowledged message is delivered, in
//! order per partition, signed; what the endpoint keeps refusing goes to
//! the dead-letter topic; a leader kill resumes where delivery stopped.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use raftstream_client::pb;
use raftstream_client::pb::subscriptions_client::SubscriptionsClient;
use tonic::Request;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::common::*;
use crate::receiver::Answer;
use crate::receiver::Receiver;

type Subscriptions = SubscriptionsClient<
    InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>,
>;

fn with_admin_token(mut request: Request<()>) -> Result<Request<()>, Status> {
    let value = format!("Bearer {ADMIN_TOKEN}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

async fn subscriptions(cluster: &TestCluster, id: u64) -> Subscriptions {
    let channel = Channel::from_shared(format!("http://{}", cluster.addr(id)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SubscriptionsClient::with_interceptor(channel, with_admin_token as fn(_) -> _)
}

async fn create_subscription(
    admin: &mut Subscriptions,
    request: pb::CreateSubscriptionRequest,
) -> pb::SubscriptionWithSecret {
    admin
        .create_subscription(request)
        .await
        .unwrap()
        .into_inner()
}

fn settings(max_attempts: u32, timeout_ms: u64) -> Option<pb::SubscriptionSettings> {
    Some(pb::SubscriptionSettings {
        batch_size: 5,
        max_attempts,
        initial_backoff_ms: 20,
        max_backoff_ms: 200,
        timeout_ms,
        max_in_flight: 2,
    })
}

/// A subscription named `name` pushing `topic_name` to `endpoint` from its
/// earliest message.
fn from_earliest(
    name: &str,
    topic_name: &str,
    endpoint: &str,
    settings: Option<pb::SubscriptionSettings>,
) -> pb::CreateSubscriptionRequest {
    pb::CreateSubscriptionRequest {
        name: name.into(),
        topic: topic(topic_name),
        endpoint: endpoint.into(),
        settings,
        start: Some(pb::DeliveryStart {
            from: Some(pb::delivery_start::From::Earliest(true)),
        }),
        ..Default::default()
    }
}

/// Acknowledged publishes of `values` to topic `name`: (partition, offset)
/// of each.
async fn publish_all(
    client: &mut raftstream_client::Grpc,
    name: &str,
    values: impl IntoIterator<Item = String>,
) -> Vec<(u32, u64)> {
    let mut acked = Vec::new();
    for value in values {
        let answer = publish_until_acked(client, name, &value, Duration::from_secs(30)).await;
        acked.push((answer.partition, answer.offset));
    }
    acked
}

/// Each partition's accepted deliveries, repeats dropped, are exactly its
/// acknowledged offsets in order: nothing skipped, nothing out of order.
fn assert_delivered_in_order(receiver: &Receiver, acked: &[(u32, u64)]) {
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (partition, offset) in acked {
        by_partition.entry(*partition).or_default().push(*offset);
    }
    for (partition, mut expected) in by_partition {
        expected.sort_unstable();
        let mut first_seen = Vec::new();
        for offset in receiver.accepted_offsets(partition) {
            if !first_seen.contains(&offset) {
                first_seen.push(offset);
            }
        }
        first_seen.retain(|o| expected.contains(o));
        assert_eq!(
            first_seen, expected,
            "partition {partition}: first deliveries out of order or missing"
        );
    }
}

/// Waits until the delivery positions of subscription `id` pass `check`.
async fn eventually_positions(
    admin: &Subscriptions,
    id: &str,
    what: &str,
    check: impl Fn(&[pb::PartitionPosition]) -> bool,
) {
    eventually(what, Duration::from_secs(20), || {
        let (mut admin, id, check) = (admin.clone(), id.to_string(), &check);
        async move {
            let view = admin
                .get_subscription(pb::GetSubscriptionRequest { id })
                .await
                .ok()?
                .into_inner();
            check(&view.positions).then_some(())
        }
    })
    .await;
}

async fn all_delivered(receiver: &Receiver, acked: &[(u32, u64)]) {
    eventually(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            acked
                .iter()
                .all(|(p, o)| receiver.accepted_offsets(*p).contains(o))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_survive_failures_timeouts_and_a_leader_kill_in_order() {
    let mut cluster = TestCluster::start_with_topic(3, "orders", 2, 3).await;
    let secret = Arc::new(Mutex::new(String::new()));
    // The first requests fail, the fifth hangs past the timeout, the rest
    // are taken: the endpoint fails, times out and recovers.
    let receiver = Receiver::start(secret.clone(), |arrival, _| match arrival {
        0..=3 => Answer::Fail,
        4 => Answer::Hang,
        _ => Answer::Ok,
    })
    .await;
    let mut admin = subscriptions(&cluster, 2).await;
    let request = from_earliest(
        "orders to billing",
        "orders",
        &receiver.url,
        settings(100, 300),
    );
    let created = create_subscription(&mut admin, request).await;
    *secret.lock().unwrap() = created.secret.clone();
    let subscription = created.subscription.unwrap();
    assert_eq!(subscription.dead_letter_topic_name, "orders.dead-letter");
    assert!(created.secret.len() >= 16);

    let mut client = cluster.client(1).await;
    let mut acked = publish_all(
        &mut client,
        "orders",
        (0..30).map(|n| format!("{{\"n\":{n}}}")),
    )
    .await;
    eventually("some deliveries", Duration::from_secs(30), || async {
        (receiver.accepted_payloads().len() >= 10).then_some(())
    })
    .await;
    // Kill the leader of partition 0 while delivery is under way.
    let mut survivor = cluster.stop_partition_leader("orders", 0).await;
    acked.extend(
        publish_all(
            &mut survivor,
            "orders",
            (30..60).map(|n| format!("{{\"n\":{n}}}")),
        )
        .await,
    );
    all_delivered(&receiver, &acked).await;
    assert_delivered_in_order(&receiver, &acked);
    let received = receiver.received();
    assert!(
        received.iter().all(|r| r.signature_ok),
        "a delivery was not signed with the secret"
    );
    assert!(
        received.iter().any(|r| !r.accepted),
        "the endpoint never failed"
    );
    // Payloads arrive as published.
    let payloads = receiver.accepted_payloads();
    assert!(payloads.contains(&serde_json::json!({"n": 59})));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_messages_are_dead_lettered_and_a_dead_endpoint_stalls_no_one_else() {
    let cluster = TestCluster::start_with_topic(1, "jobs", 1, 1).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let receiver = Receiver::start(secret.clone(), |_, body| {
        if body["messages"][0]["payload"]["poison"] == serde_json::json!(true) {
            Answer::Fail
        } else {
            Answer::Ok
        }
    })
    .await;
    let dead = Receiver::start(Arc::default(), |_, _| Answer::Hang).await;
    let mut admin = subscriptions(&cluster, 1).await;
    let create = |endpoint: &str, name: &str| {
        let one_at_a_time = pb::SubscriptionSettings {
            batch_size: 1,
            ..settings(3, 300).unwrap()
        };
        from_earliest(name, "jobs", endpoint, Some(one_at_a_time))
    };
    let created = create_subscription(&mut admin, create(&receiver.url, "worker")).await;
    *secret.lock().unwrap() = created.secret.clone();
    let stuck = create_subscription(
        &mut admin,
        pb::CreateSubscriptionRequest {
            dead_letter_topic: "stuck-letters".into(),
            settings: Some(pb::SubscriptionSettings {
                max_attempts: 100,
                ..settings(100, 300).unwrap()
            }),
            ..create(&dead.url, "stuck")
        },
    )
    .await;
    let mut client = cluster.client(1).await;
    let values = [r#"{"a":1}"#, r#"{"poison":true,"id":7}"#, r#"{"b":2}"#];
    let acked = publish_all(&mut client, "jobs", values.map(String::from)).await;
    eventually("the good messages", Duration::from_secs(30), || async {
        (receiver.accepted_offsets(0) == vec![acked[0].1, acked[2].1]).then_some(())
    })
    .await;
    let poison_attempts = receiver
        .received()
        .iter()
        .filter(|r| r.offsets == vec![acked[1].1])
        .count();
    assert_eq!(poison_attempts, 3, "max_attempts is 3");
    // The dead letter names the message and the last error.
    let letters = eventually_read(
        &client,
        "a dead letter",
        Duration::from_secs(10),
        consume_now("jobs.dead-letter", 0, at_offset(0), 0),
        |read| (!read.messages.is_empty()).then_some(read.messages),
    )
    .await;
    assert_eq!(letters.len(), 1);
    let letter: serde_json::Value = serde_json::from_slice(&letters[0].value).unwrap();
    assert_eq!(
        letter["payload"],
        serde_json::json!({"poison": true, "id": 7})
    );
    assert_eq!(letter["offset"], serde_json::json!(acked[1].1));
    assert_eq!(letter["attempts"], serde_json::json!(3));
    assert!(
        letter["error"].as_str().unwrap().contains("503"),
        "{letter}"
    );
    // The dead endpoint's subscription is still retrying its first message.
    let stuck_id = stuck.subscription.unwrap().id;
    let stuck_view = admin
        .get_subscription(pb::GetSubscriptionRequest { id: stuck_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stuck_view.positions[0].next_offset, Some(0));
    assert!(!dead.received().is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_pause_resume_and_replay() {
    let cluster = TestCluster::start_with_topic(1, "events", 1, 1).await;
    let secret = Arc::new(Mutex::new(String::new()));
    let receiver = Receiver::start(secret, |_, _| Answer::Ok).await;
    let mut admin = subscriptions(&cluster, 1).await;
    let created = create_subscription(
        &mut admin,
        pb::CreateSubscriptionRequest {
            filter: Some(pb::PayloadFilter {
                pointer: "/type".into(),
                equals_json: "\"keep\"".into(),
            }),
            ..from_earliest("keepers", "events", &receiver.url, settings(3, 1_000))
        },
    )
    .await;
    let id = created.subscription.unwrap().id;
    let mut client = cluster.client(1).await;
    let kept = |n: u32| serde_json::json!({"type": "keep", "n": n});
    let values = [
        r#"{"type":"keep","n":1}"#,
        r#"{"type":"drop","n":2}"#,
        r#"{"type":"keep","n":3}"#,
    ];
    publish_all(&mut client, "events", values.map(String::from)).await;
    eventually("the kept messages", Duration::from_secs(20), || async {
        (receiver.accepted_payloads() == vec![kept(1), kept(3)]).then_some(())
    })
    .await;
    eventually_positions(&admin, &id, "the position past them", |positions| {
        positions[0].next_offset == Some(3)
    })
    .await;

    let paused = admin
        .pause_subscription(pb::GetSubscriptionRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    publish_all(
        &mut client,
        "events",
        [r#"{"type":"keep","n":4}"#.to_string()],
    )
    .await;
    // Paused: nothing more arrives while a delivery would have had ample
    // time (the others took milliseconds).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.accepted_payloads().len(), 2);
    admin
        .resume_subscription(pb::GetSubscriptionRequest { id: id.clone() })
        .await
        .unwrap();
    eventually(
        "the message published while paused",
        Duration::from_secs(20),
        || async { (receiver.accepted_payloads().last() == Some(&kept(4))).then_some(()) },
    )
    .await;

    let replayed = admin
        .replay_subscription(pb::ReplaySubscriptionRequest {
            id: id.clone(),
            from: Some(pb::DeliveryStart {
                from: Some(pb::delivery_start::From::Offset(1)),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.generation, 1);
    eventually("the replay", Duration::from_secs(20), || async {
        (receiver.accepted_payloads() == vec![kept(1), kept(3), kept(4), kept(3), kept(4)])
            .then_some(())
    })
    .await;

    // Bad input is refused and changes nothing.
    let refused = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            id: id.clone(),
            endpoint: Some("ftp://nowhere/".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let missing = admin
        .get_subscription(pb::GetSubscriptionRequest {
            id: "sub_nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let deleted = admin
        .delete_subscription(pb::DeleteSubscriptionRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.endpoint, receiver.url);
    let listed = admin
        .list_subscriptions(pb::ListSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.subscriptions.is_empty());
    cluster.shutdown().await;
}

/// A node shutting down while it delivers ends its deliveries and stops.
/// Its reads then answer at once (a stopping node ends every long poll),
/// and a delivery that kept reading would never yield: on a runtime with
/// one thread nothing else could run again, the shutdown included. So the
/// cluster runs on such a runtime, on a thread of its own, and this thread
/// only waits for it to finish.
#[test]
fn a_node_shutting_down_ends_its_deliveries() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            // One node: it leads every partition and has no one to hand
            // leadership to before it stops.
            let cluster = TestCluster::start_with_topic(1, "orders", 2, 1).await;
            let receiver = Receiver::start(Arc::default(), |_, _| Answer::Ok).await;
            let mut admin = subscriptions(&cluster, 1).await;
            let request = from_earliest("orders out", "orders", &receiver.url, settings(3, 1_000));
            let id = create_subscription(&mut admin, request)
                .await
                .subscription
                .unwrap()
                .id;
            let mut client = cluster.client(1).await;
            let acked = publish_all(&mut client, "orders", (0..4).map(|n| n.to_string())).await;
            all_delivered(&receiver, &acked).await;
            // Every position stored at the end: each delivery now waits in
            // a read for more.
            eventually_positions(&admin, &id, "the positions at the end", |positions| {
                let at_end = |p: &pb::PartitionPosition| {
                    p.next_offset.is_some() && p.next_offset == p.high_watermark
                };
                positions.len() == 2 && positions.iter().all(at_end)
            })
            .await;
            cluster.shutdown().await;
        });
        let _ = done_tx.send(());
    });
    // A thread stuck in a delivery that never yields cannot be stopped; it
    // ends with the test process.
    assert!(
        done_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "the node did not finish shutting down within 60 s"
    );
}
