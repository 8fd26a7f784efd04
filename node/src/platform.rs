//! Platform event channels: what the cluster itself did, as messages of
//! three system topics that are consumed like any other.
//!
//! - `platform.activity`: topics, tokens, webhook sources and push
//!   subscriptions created, updated and deleted (subscriptions also paused,
//!   resumed and replayed), nodes joined and left, leaders changed;
//! - `platform.executions`: each push delivery attempt started, succeeded
//!   or failed, with its attempt number and latency;
//! - `platform.errors`: failed delivery attempts and dead-lettering, schema
//!   rejections on publish, webhook deliveries refused for their secret or
//!   signature, each with the reason.
//!
//! An operation says what happened with a [`PlatformEvent`] and hands it
//! to the node's [`PlatformEvents`]: a bounded queue that never waits. A
//! task (`api/service/platform.rs`) drains it and publishes the events
//! through the ordinary publish path, so they are replicated and durable
//! like any message. Events are best effort: a full queue drops the event
//! (counted in `raftstream_platform_events_dropped_total` and logged), and
//! neither a full queue nor a failed publish ever blocks or fails the
//! operation that caused the event.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use prometheus::IntCounter;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;
use tokio::sync::mpsc;

use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::rfc3339;
use crate::time::Clock;

/// Topic names user requests may not create, delete or publish to: the
/// system topics' namespace.
pub const RESERVED_PREFIX: &str = "platform.";

/// How many events wait for their publish at most; more are dropped.
const QUEUE_CAPACITY: usize = 4096;

/// Whether `name` is in the system topics' namespace.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// One of the three system topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Activity,
    Executions,
    Errors,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Activity, Channel::Executions, Channel::Errors];

    pub fn topic(self) -> &'static str {
        match self {
            Channel::Activity => "platform.activity",
            Channel::Executions => "platform.executions",
            Channel::Errors => "platform.errors",
        }
    }
}

/// What happened to a definition (topic, token, source, subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    Deleted,
    Paused,
    Resumed,
    Replayed,
    SecretRotated,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
            Change::Paused => "paused",
            Change::Resumed => "resumed",
            Change::Replayed => "replayed",
            Change::SecretRotated => "secret_rotated",
        }
    }
}

/// One push delivery attempt: a batch of messages of one partition sent
/// to a subscription's endpoint.
#[derive(Debug, Clone)]
pub struct DeliveryAttempt<'a> {
    pub subscription_id: &'a str,
    pub topic: &'a str,
    pub partition: u32,
    pub first_offset: u64,
    pub last_offset: u64,
    pub messages: usize,
    /// 1 for the first attempt of the batch.
    pub attempt: u32,
}

impl DeliveryAttempt<'_> {
    fn details(&self) -> serde_json::Map<String, Value> {
        let mut details = serde_json::Map::new();
        details.insert("subscription_id".into(), json!(self.subscription_id));
        details.insert("topic".into(), json!(self.topic));
        details.insert("partition".into(), json!(self.partition));
        details.insert("first_offset".into(), json!(self.first_offset));
        details.insert("last_offset".into(), json!(self.last_offset));
        details.insert("messages".into(), json!(self.messages));
        details.insert("attempt".into(), json!(self.attempt));
        details
    }
}

/// Something that happened, before the emitter stamps it with its id,
/// time and node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformEvent {
    pub channel: Channel,
    /// `topic.created`, `delivery.failed`, `schema.rejected`, …
    pub kind: String,
    /// The subscription or webhook source it concerns.
    pub flow_id: Option<String>,
    /// Activity is the cluster's: its workspace is the cluster.
    pub in_workspace: bool,
    pub details: Value,
}

impl PlatformEvent {
    fn new(channel: Channel, kind: String, flow_id: Option<String>, details: Value) -> Self {
        PlatformEvent {
            channel,
            kind,
            flow_id,
            in_workspace: channel == Channel::Activity,
            details,
        }
    }

    pub fn topic(change: Change, topic_id: u64, name: &str) -> Self {
        let details = json!({ "topic_id": topic_id, "name": name });
        Self::new(
            Channel::Activity,
            format!("topic.{}", change.as_str()),
            None,
            details,
        )
    }

    pub fn token(change: Change, token_id: u64, name: &str) -> Self {
        let details = json!({ "token_id": token_id, "name": name });
        Self::new(
            Channel::Activity,
            format!("token.{}", change.as_str()),
            None,
            details,
        )
    }

    pub fn source(change: Change, source_id: &str, topic: &str) -> Self {
        let details = json!({ "source_id": source_id, "topic": topic });
        Self::new(
            Channel::Activity,
            format!("source.{}", change.as_str()),
            Some(source_id.to_string()),
            details,
        )
    }

    pub fn subscription(change: Change, subscription_id: &str, topic: &str) -> Self {
        let details = json!({ "subscription_id": subscription_id, "topic": topic });
        Self::new(
            Channel::Activity,
            format!("subscription.{}", change.as_str()),
            Some(subscription_id.to_string()),
            details,
        )
    }

    pub fn node_joined(node: NodeId, addr: &str) -> Self {
        let details = json!({ "node": node.0, "addr": addr });
        Self::new(Channel::Activity, "node.joined".into(), None, details)
    }

    pub fn node_left(node: NodeId) -> Self {
        let details = json!({ "node": node.0 });
        Self::new(Channel::Activity, "node.left".into(), None, details)
    }

    /// `leader` took the leadership of `group` in `term`. `topic` is empty
    /// for the metadata group.
    pub fn leader_changed(
        group: GroupId,
        topic: &str,
        partition: u32,
        leader: NodeId,
        term: u64,
    ) -> Self {
        let details = if group == GroupId::META {
            json!({ "group": "metadata", "leader": leader.0, "term": term })
        } else {
            json!({
                "group": "partition",
                "topic": topic,
                "partition": partition,
                "leader": leader.0,
                "term": term,
            })
        };
        Self::new(Channel::Activity, "leader.changed".into(), None, details)
    }

    pub fn delivery_started(attempt: &DeliveryAttempt<'_>) -> Self {
        Self::new(
            Channel::Executions,
            "delivery.started".into(),
            Some(attempt.subscription_id.to_string()),
            Value::Object(attempt.details()),
        )
    }

    pub fn delivery_succeeded(attempt: &DeliveryAttempt<'_>, latency_ms: u64, status: u16) -> Self {
        let mut details = attempt.details();
        details.insert("latency_ms".into(), json!(latency_ms));
        details.insert("status".into(), json!(status));
        Self::new(
            Channel::Executions,
            "delivery.succeeded".into(),
            Some(attempt.subscription_id.to_string()),
            Value::Object(details),
        )
    }

    /// A failed attempt: the same event on the executions channel and, with
    /// its reason, on the errors channel.
    pub fn delivery_failed(
        attempt: &DeliveryAttempt<'_>,
        latency_ms: u64,
        reason: &str,
    ) -> [Self; 2] {
        let mut details = attempt.details();
        details.insert("latency_ms".into(), json!(latency_ms));
        details.insert("reason".into(), json!(reason));
        let details = Value::Object(details);
        let flow = Some(attempt.subscription_id.to_string());
        [
            Self::new(
                Channel::Executions,
                "delivery.failed".into(),
                flow.clone(),
                details.clone(),
            ),
            Self::new(Channel::Errors, "delivery.failed".into(), flow, details),
        ]
    }

    /// Every attempt failed: the messages went to the dead-letter topic.
    pub fn dead_lettered(
        attempt: &DeliveryAttempt<'_>,
        dead_letter_topic: &str,
        reason: &str,
    ) -> Self {
        let mut details = attempt.details();
        details.insert("dead_letter_topic".into(), json!(dead_letter_topic));
        details.insert("reason".into(), json!(reason));
        Self::new(
            Channel::Errors,
            "delivery.dead_lettered".into(),
            Some(attempt.subscription_id.to_string()),
            Value::Object(details),
        )
    }

    /// Published values the topic's schema refused: how many, and why
    /// (the first refusal's reason).
    pub fn schema_rejected(topic: &str, rejected: usize, reason: &str) -> Self {
        let details = json!({ "topic": topic, "rejected": rejected, "reason": reason });
        Self::new(Channel::Errors, "schema.rejected".into(), None, details)
    }

    /// A webhook delivery refused for its secret or signature.
    pub fn webhook_rejected(source_id: &str, reason: &str) -> Self {
        let details = json!({ "source_id": source_id, "reason": reason });
        Self::new(
            Channel::Errors,
            "webhook.rejected".into(),
            Some(source_id.to_string()),
            details,
        )
    }

    /// The event as its channel's consumers read it.
    pub fn stamp(self, id: String, time_ms: i64, node: NodeId, cluster_id: &str) -> StampedEvent {
        let workspace_id = self.in_workspace.then(|| cluster_id.to_string());
        StampedEvent {
            id,
            kind: self.kind,
            time: rfc3339(time_ms),
            node_id: node.0,
            cluster_id: cluster_id.to_string(),
            flow_id: self.flow_id,
            workspace_id,
            details: self.details,
        }
    }
}

/// A platform event as it is stored: every field always present (`null`
/// when it does not apply), so consumers can rely on the shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StampedEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub time: String,
    pub node_id: u64,
    pub cluster_id: String,
    pub flow_id: Option<String>,
    pub workspace_id: Option<String>,
    pub details: Value,
}

/// An event waiting for its publish: its channel, its time and the event.
#[derive(Debug)]
pub struct Queued {
    pub time_ms: i64,
    pub event: PlatformEvent,
}

/// The node's emitter: operations hand it events; it never waits.
pub struct PlatformEvents {
    queue: Option<mpsc::Sender<Queued>>,
    /// Taken once by the task that publishes the events.
    receiver: parking_lot::Mutex<Option<mpsc::Receiver<Queued>>>,
    time: Arc<dyn Clock>,
    dropped: IntCounter,
    dropped_here: AtomicU64,
}

impl std::fmt::Debug for PlatformEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformEvents")
            .field("enabled", &self.queue.is_some())
            .finish()
    }
}

impl PlatformEvents {
    /// An emitter; a disabled one (`platform_events = false`) drops
    /// nothing and sends nothing.
    pub fn new(enabled: bool, time: Arc<dyn Clock>, dropped: IntCounter) -> Self {
        let (queue, receiver) = if enabled {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        PlatformEvents {
            queue,
            receiver: parking_lot::Mutex::new(receiver),
            time,
            dropped,
            dropped_here: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// The queue's receiving end, for the one task that publishes it.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Queued>> {
        self.receiver.lock().take()
    }

    /// Queues `event` for its channel, or drops it when the queue is full.
    pub fn emit(&self, event: PlatformEvent) {
        let Some(queue) = &self.queue else {
            return;
        };
        let queued = Queued {
            time_ms: self.time.now_ms(),
            event,
        };
        if let Err(e) = queue.try_send(queued) {
            let kind = match &e {
                mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => {
                    q.event.kind.clone()
                }
            };
            self.dropped(&kind, "the platform event queue is full or closed");
        }
    }

    /// Counts and logs a dropped event. The log is thinned to the 1st,
    /// 2nd, 4th, 8th… drop so that a stuck publish does not flood it.
    pub fn dropped(&self, kind: &str, why: &str) {
        self.dropped.inc();
        let total = self.dropped_here.fetch_add(1, Ordering::Relaxed) + 1;
        if total.is_power_of_two() {
            tracing::warn!(kind, why, dropped_so_far = total, "platform event dropped");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    fn stamped(event: PlatformEvent) -> Value {
        let stamped = event.stamp("e-1".into(), 1_500, NodeId(3), "cluster-a");
        serde_json::to_value(stamped).unwrap()
    }

    #[test]
    fn every_event_has_the_same_top_level_shape() {
        let attempt = DeliveryAttempt {
            subscription_id: "sub-1",
            topic: "orders",
            partition: 2,
            first_offset: 10,
            last_offset: 12,
            messages: 3,
            attempt: 1,
        };
        let [failed_execution, failed_error] = PlatformEvent::delivery_failed(&attempt, 7, "503");
        let events = [
            PlatformEvent::topic(Change::Created, 1, "orders"),
            PlatformEvent::token(Change::Deleted, 4, "ci"),
            PlatformEvent::source(Change::SecretRotated, "src-1", "orders"),
            PlatformEvent::subscription(Change::Paused, "sub-1", "orders"),
            PlatformEvent::node_joined(NodeId(4), "127.0.0.1:1"),
            PlatformEvent::node_left(NodeId(4)),
            PlatformEvent::leader_changed(GroupId::META, "", 0, NodeId(2), 9),
            PlatformEvent::delivery_started(&attempt),
            PlatformEvent::delivery_succeeded(&attempt, 5, 200),
            failed_execution,
            failed_error,
            PlatformEvent::dead_lettered(&attempt, "orders.dlq", "503"),
            PlatformEvent::schema_rejected("orders", 1, "missing id"),
            PlatformEvent::webhook_rejected("src-1", "bad signature"),
        ];
        for event in events {
            let value = stamped(event);
            let keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            assert_eq!(
                keys,
                [
                    "cluster_id",
                    "details",
                    "flow_id",
                    "id",
                    "node_id",
                    "time",
                    "type",
                    "workspace_id"
                ],
                "{value}"
            );
            assert_eq!(value["time"], "1970-01-01T00:00:01.5Z", "{value}");
            assert_eq!(value["node_id"], 3);
            assert!(value["details"].is_object(), "{value}");
        }
    }

    #[test]
    fn flows_and_workspaces_are_set_where_they_apply() {
        let attempt = DeliveryAttempt {
            subscription_id: "sub-1",
            topic: "orders",
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            messages: 1,
            attempt: 2,
        };
        let succeeded = stamped(PlatformEvent::delivery_succeeded(&attempt, 12, 204));
        assert_eq!(succeeded["type"], "delivery.succeeded");
        assert_eq!(succeeded["flow_id"], "sub-1");
        assert_eq!(succeeded["workspace_id"], Value::Null);
        assert_eq!(succeeded["details"]["attempt"], 2);
        assert_eq!(succeeded["details"]["latency_ms"], 12);

        let created = stamped(PlatformEvent::topic(Change::Created, 7, "orders"));
        assert_eq!(created["type"], "topic.created");
        assert_eq!(created["flow_id"], Value::Null);
        assert_eq!(created["workspace_id"], "cluster-a");

        let [execution, error] = PlatformEvent::delivery_failed(&attempt, 3, "timed out");
        assert_eq!(
            (execution.channel, error.channel),
            (Channel::Executions, Channel::Errors)
        );
        assert_eq!(stamped(error)["details"]["reason"], "timed out");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let clock = Arc::new(ManualClock::new(0));
        let events = PlatformEvents::new(true, clock, dropped.clone());
        for _ in 0..QUEUE_CAPACITY + 3 {
            events.emit(PlatformEvent::node_left(NodeId(1)));
        }
        assert_eq!(dropped.get(), 3);
        let mut receiver = events.take_receiver().unwrap();
        assert!(events.take_receiver().is_none());
        assert!(receiver.try_recv().is_ok());

        let disabled = PlatformEvents::new(false, Arc::new(ManualClock::new(0)), dropped.clone());
        disabled.emit(PlatformEvent::node_left(NodeId(1)));
        assert_eq!(dropped.get(), 3);
        assert!(disabled.take_receiver().is_none());
    }

    #[test]
    fn reserved_names_are_the_platform_namespace() {
        for channel in Channel::ALL {
            assert!(is_reserved(channel.topic()));
        }
        assert!(is_reserved("platform.x"));
        assert!(!is_reserved("platform"));
        assert!(!is_reserved("orders.platform.x"));
    }
}
