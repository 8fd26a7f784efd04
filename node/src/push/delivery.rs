//! One subscription's delivery from one partition this node leads.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::api::read::ReadMessage;
use crate::api::read::StartAt;
use crate::api::service::Caller;
use crate::api::service::Consume;
use crate::api::service::Hops;
use crate::api::service::Publish;
use crate::api::service::Record;
use crate::api::service::SchemaCheck;
use crate::api::service::Service;
use crate::api::service::ServiceError;
use crate::group::Group;
use crate::model::GroupId;
use crate::model::MessageId;
use crate::model::Offset;
use crate::model::TopicName;
use crate::model::rfc3339;
use crate::platform::DeliveryAttempt;
use crate::platform::PlatformEvent;
use crate::raft::types::CommitWriter;
use crate::raft::types::DeliveryStart;
use crate::raft::types::PartitionCommand;
use crate::raft::types::Subscription;
use crate::raft::types::Topic;

/// How long one read waits for new messages before looking again at
/// whether this node still leads.
const LONG_POLL_MS: u32 = 1_000;
/// The pause before a task starts over after an error of the cluster (not
/// of the endpoint): a read or a position write that failed.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(500);
/// The writer id position commits carry, with the offset as sequence, so
/// a late commit of an older position can never move one back.
const POSITION_WRITER: u64 = u64::from_be_bytes(*b"$pushpos");

pub const SIGNATURE_HEADER: &str = "X-Raftstream-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Raftstream-Timestamp";
pub const SUBSCRIPTION_HEADER: &str = "X-Raftstream-Subscription";
pub const ATTEMPT_HEADER: &str = "X-Raftstream-Attempt";

/// The client every delivery of this node shares (its connection pool).
/// Redirects are not followed: a delivery goes where it was configured to.
pub(super) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("raftstream/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// How a batch's delivery ended.
enum Outcome {
    Delivered,
    /// Every attempt failed; the last error.
    Failed(String),
    /// This node no longer leads the partition: another delivers now.
    NotLeader,
}

pub(super) struct PartitionDelivery {
    pub service: Arc<Service>,
    pub http: reqwest::Client,
    pub subscription: Subscription,
    pub partition: u32,
    /// The subscription's deliveries in flight on this node.
    pub permits: Arc<Semaphore>,
}

impl PartitionDelivery {
    /// Delivers until this node stops leading the partition (or the
    /// supervisor aborts the task for a changed definition).
    pub async fn run(self) {
        loop {
            match self.deliver_from_position().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::info!(
                        subscription = %self.subscription.id,
                        partition = self.partition,
                        error = %e,
                        "push delivery starts over from its stored position"
                    );
                    tokio::time::sleep(PAUSE_AFTER_ERROR).await;
                }
            }
        }
    }

    /// The partition's group while this node leads it.
    fn led_group(&self) -> Option<Arc<Group>> {
        let node = &self.service.node;
        let group_id = GroupId::partition(self.subscription.topic_id, self.partition);
        node.group(group_id).filter(|g| g.is_leader(node.id()))
    }

    async fn deliver_from_position(&self) -> Result<(), ServiceError> {
        let topic_name = TopicName::Id(self.subscription.topic_id);
        let Some(topic) = self.service.node.find_topic(&topic_name) else {
            return Ok(());
        };
        let Some(mut position) = self.position().await? else {
            return Ok(());
        };
        let settings = self.subscription.settings;
        let shutdown = self.service.node.shutdown_signal();
        loop {
            // A stopping node answers every read at once, so reading on
            // would spin without ever yielding, and hold the thread that
            // its shutdown needs.
            if *shutdown.borrow() {
                return Ok(());
            }
            let Some(group) = self.led_group() else {
                return Ok(());
            };
            let read = Consume {
                partition: self.partition,
                start: StartAt::Offset(position),
                max_messages: settings.batch_size,
                wait_ms: LONG_POLL_MS,
                max_bytes: 0,
            };
            let page = self
                .service
                .consume_from(&Caller::Node, &topic, read, Hops::LOCAL_ONLY)
                .await?;
            let wanted: Vec<&ReadMessage> = page
                .batch
                .messages
                .iter()
                .filter(|m| {
                    self.subscription
                        .filter
                        .as_ref()
                        .is_none_or(|f| f.matches(&m.value))
                })
                .collect();
            if !wanted.is_empty() {
                match self.deliver(&topic, &wanted).await {
                    Outcome::Delivered => {}
                    Outcome::Failed(error) => {
                        if !self.dead_letter(&topic, &wanted, &error).await {
                            return Ok(());
                        }
                    }
                    Outcome::NotLeader => return Ok(()),
                }
            }
            if page.batch.next_offset > position {
                position = page.batch.next_offset;
                self.store_position(&group, position).await?;
            }
        }
    }

    /// Where delivery stands: the stored position, or, the first time for
    /// this generation, its start, stored at once so that every later
    /// leader starts from the same place. `None` once this node no longer
    /// leads.
    async fn position(&self) -> Result<Option<Offset>, ServiceError> {
        let topic = TopicName::Id(self.subscription.topic_id);
        let group_name = self.subscription.position_group();
        // On the leader this first confirms leadership and catches up with
        // every committed entry, older positions included.
        let stored = self
            .service
            .committed_offsets(
                &Caller::Node,
                &topic,
                &group_name,
                Some(self.partition),
                Hops::LOCAL_ONLY,
            )
            .await?;
        if let Some((_, offset)) = stored.first() {
            return Ok(Some(*offset));
        }
        let Some(group) = self.led_group() else {
            return Ok(None);
        };
        let start = match self.subscription.start {
            DeliveryStart::Earliest => StartAt::Earliest,
            DeliveryStart::Latest => StartAt::Latest,
            DeliveryStart::Offset(offset) => StartAt::Offset(offset),
            DeliveryStart::TimeMs(ms) => StartAt::Timestamp(ms),
        };
        let offset = crate::api::read::resolve(&group, &start)?;
        self.store_position(&group, offset).await?;
        Ok(Some(offset))
    }

    /// Replicates the position with the partition; it fails once this node
    /// no longer leads.
    async fn store_position(&self, group: &Group, offset: Offset) -> Result<(), ServiceError> {
        let command = PartitionCommand::CommitOffset {
            group: self.subscription.position_group(),
            offset,
            writer: Some(CommitWriter {
                id: POSITION_WRITER,
                seq: offset.0,
            }),
        };
        self.service.node.write_partition(group, command).await?;
        Ok(())
    }

    /// POSTs one batch until the endpoint takes it or the attempts run out,
    /// with exponential backoff and jitter between attempts.
    async fn deliver(&self, topic: &Topic, messages: &[&ReadMessage]) -> Outcome {
        let settings = self.subscription.settings;
        let body = delivery_body(&self.subscription, topic, self.partition, messages);
        let mut backoff = backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(settings.initial_backoff_ms))
            .with_max_interval(Duration::from_millis(settings.max_backoff_ms))
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_elapsed_time(None)
            .build();
        let mut last_error = String::new();
        for attempt in 1..=settings.max_attempts {
            if self.led_group().is_none() {
                return Outcome::NotLeader;
            }
            let report = self.attempt_report(topic, messages, attempt);
            self.platform_event(|| PlatformEvent::delivery_started(&report));
            let started = self.service.node.time.now();
            let result = match self.permits.acquire().await {
                Ok(_permit) => self.post(&body, attempt).await,
                // Closed only when the subscription's limit changed, which
                // also restarts this task.
                Err(_) => return Outcome::NotLeader,
            };
            let latency_ms = self
                .service
                .node
                .time
                .now()
                .saturating_duration_since(started)
                .as_millis() as u64;
            match result {
                Ok(status) => {
                    self.platform_event(|| {
                        PlatformEvent::delivery_succeeded(&report, latency_ms, status)
                    });
                    return Outcome::Delivered;
                }
                Err(error) => {
                    for event in PlatformEvent::delivery_failed(&report, latency_ms, &error) {
                        self.platform_event(|| event);
                    }
                    tracing::debug!(
                        subscription = %self.subscription.id,
                        partition = self.partition,
                        attempt,
                        %error,
                        "push delivery attempt failed"
                    );
                    last_error = error;
                }
            }
            if attempt < settings.max_attempts {
                let pause = backoff
                    .next_backoff()
                    .unwrap_or(Duration::from_millis(settings.max_backoff_ms));
                tokio::time::sleep(pause).await;
            }
        }
        Outcome::Failed(last_error)
    }

    /// What platform events say about one attempt at `messages`.
    fn attempt_report<'a>(
        &'a self,
        topic: &'a Topic,
        messages: &[&ReadMessage],
        attempt: u32,
    ) -> DeliveryAttempt<'a> {
        DeliveryAttempt {
            subscription_id: &self.subscription.id,
            topic: &topic.name,
            partition: self.partition,
            first_offset: messages.first().map_or(0, |m| m.offset.0),
            last_offset: messages.last().map_or(0, |m| m.offset.0),
            messages: messages.len(),
            attempt,
        }
    }

    /// Emits a platform event about this delivery, unless the subscription
    /// delivers a system topic: its deliveries' events would be delivered
    /// in turn, each making more, without end.
    fn platform_event(&self, event: impl FnOnce() -> PlatformEvent) {
        let node = &self.service.node;
        let delivers_platform_events = node
            .find_topic(&TopicName::Id(self.subscription.topic_id))
            .is_some_and(|t| crate::platform::is_reserved(&t.name));
        if !delivers_platform_events {
            node.platform.emit(event());
        }
    }

    /// One POST: the status of an answer that counts as delivered, or why
    /// it did not.
    async fn post(&self, body: &[u8], attempt: u32) -> Result<u16, String> {
        let timeout_ms = self.subscription.settings.timeout_ms;
        let timestamp_s = self.service.node.time.now_ms().div_euclid(1000);
        let signature =
            crate::ingest::signature::sign(self.subscription.secret.as_bytes(), timestamp_s, body);
        let sent = self
            .http
            .post(&self.subscription.endpoint)
            .timeout(Duration::from_millis(timeout_ms))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp_s.to_string())
            .header(SIGNATURE_HEADER, format!("v1={signature}"))
            .header(SUBSCRIPTION_HEADER, &self.subscription.id)
            .header(ATTEMPT_HEADER, attempt.to_string())
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(response.status().as_u16()),
            Ok(response) => Err(format!("the endpoint answered {}", response.status())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {timeout_ms} ms")),
            Err(e) => Err(format!("the request failed: {e}")),
        }
    }

    /// Writes each message, with the last error, to the dead-letter topic,
    /// retrying until stored. `false` once this node no longer leads (the
    /// next leader delivers the batch again).
    async fn dead_letter(&self, topic: &Topic, messages: &[&ReadMessage], error: &str) -> bool {
        let now_ms = self.service.node.time.now_ms();
        let records: Vec<Record> = messages
            .iter()
            .map(|message| Record {
                partition: None,
                key: message.key.clone(),
                value: dead_letter_value(
                    &self.subscription,
                    topic,
                    self.partition,
                    message,
                    error,
                    now_ms,
                )
                .into(),
                headers: message.headers.clone(),
            })
            .collect();
        let dead_letter_topic = TopicName::Id(self.subscription.dead_letter_topic_id);
        loop {
            if self.led_group().is_none() {
                return false;
            }
            let publish = Publish {
                records: records.clone(),
                producer: None,
                // A dead letter is an envelope around a message the topic
                // already took; a schema on the dead-letter topic must not
                // leave it nowhere to go.
                schema_check: SchemaCheck::Done,
            };
            let stored = self
                .service
                .publish(&Caller::Node, &dead_letter_topic, publish, Hops::default())
                .await;
            match stored {
                Ok(outcomes) if outcomes.iter().all(Result::is_ok) => {
                    let attempts = self.subscription.settings.max_attempts;
                    let report = self.attempt_report(topic, messages, attempts);
                    let dead_letter_name = self
                        .service
                        .node
                        .find_topic(&dead_letter_topic)
                        .map(|t| t.name)
                        .unwrap_or_default();
                    self.platform_event(|| {
                        PlatformEvent::dead_lettered(&report, &dead_letter_name, error)
                    });
                    tracing::warn!(
                        subscription = %self.subscription.id,
                        partition = self.partition,
                        messages = messages.len(),
                        %error,
                        "push delivery gave up; messages dead-lettered"
                    );
                    return true;
                }
                // A record that failed may have been stored anyway (an
                // unknown outcome): writing the batch again can repeat a
                // dead letter, never lose one.
                Ok(_) | Err(_) => tokio::time::sleep(PAUSE_AFTER_ERROR).await,
            }
        }
    }
}

/// A stored value as JSON in a delivery: as stored when it is JSON (byte
/// for byte), else as a string.
fn payload_json(value: &[u8]) -> Box<RawValue> {
    let as_text = || {
        let text = serde_json::to_string(&String::from_utf8_lossy(value)).unwrap_or_default();
        RawValue::from_string(text).unwrap_or_default()
    };
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::from_str::<&RawValue>(text)
            .map(|raw| raw.to_owned())
            .unwrap_or_else(|_| as_text()),
        Err(_) => as_text(),
    }
}

#[derive(serde::Serialize)]
struct DeliveredMessage {
    message_id: String,
    offset: u64,
    time: String,
    payload: Box<RawValue>,
}

#[derive(serde::Serialize)]
struct DeliveryBody<'a> {
    subscription_id: &'a str,
    topic: &'a str,
    topic_id: u64,
    partition: u32,
    messages: Vec<DeliveredMessage>,
}

fn delivered_message(partition: u32, message: &ReadMessage) -> DeliveredMessage {
    DeliveredMessage {
        message_id: MessageId::new(partition, message.offset).to_string(),
        offset: message.offset.0,
        time: rfc3339(message.timestamp_ms),
        payload: payload_json(&message.value),
    }
}

/// The body of one POST.
fn delivery_body(
    subscription: &Subscription,
    topic: &Topic,
    partition: u32,
    messages: &[&ReadMessage],
) -> Vec<u8> {
    let body = DeliveryBody {
        subscription_id: &subscription.id,
        topic: &topic.name,
        topic_id: topic.id.0,
        partition,
        messages: messages
            .iter()
            .map(|m| delivered_message(partition, m))
            .collect(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    subscription_id: &'a str,
    topic: &'a str,
    partition: u32,
    #[serde(flatten)]
    message: DeliveredMessage,
    error: &'a str,
    attempts: u32,
    dead_lettered_at: String,
}

/// A dead-lettered message: where it came from, the message as a delivery
/// carries it, and why it was given up.
fn dead_letter_value(
    subscription: &Subscription,
    topic: &Topic,
    partition: u32,
    message: &ReadMessage,
    error: &str,
    now_ms: i64,
) -> Vec<u8> {
    let letter = DeadLetter {
        subscription_id: &subscription.id,
        topic: &topic.name,
        partition,
        message: delivered_message(partition, message),
        error,
        attempts: subscription.settings.max_attempts,
        dead_lettered_at: rfc3339(now_ms),
    };
    serde_json::to_vec(&letter).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn payloads_keep_their_bytes_and_non_json_becomes_a_string() {
        let stored = br#"{"b": 1, "a": 12345678901234567890}"#;
        assert_eq!(
            payload_json(stored).get(),
            std::str::from_utf8(stored).unwrap()
        );
        assert_eq!(payload_json(b"plain text").get(), r#""plain text""#);
        assert_eq!(payload_json(&[0xff, b'a']).get(), "\"\u{fffd}a\"");
    }
}
