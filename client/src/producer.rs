//! The batching, idempotent producer.
//!
//! Records are gathered per partition into batches (closed by record count,
//! bytes or linger time, like Kafka's batch.size and linger.ms). Every
//! partition has its own sender, so batches for different partitions are in
//! flight together, and each partition keeps up to `max_in_flight` batches
//! in flight, appended in order. The client bounds the publish requests in
//! flight to each node over all partitions
//! (`ClientConfig::max_publishes_in_flight_per_node`); while a batch waits
//! for a slot, the records behind it gather into larger batches. Each batch
//! carries the producer id and the sequence number of its first record; the
//! partition appends a sequenced batch at most once, so retrying after a
//! timeout or a leader change never stores a message twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raftstream_proto::ErrorCode;
use raftstream_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;

use crate::client::Client;
use crate::client::PublishSlot;
use crate::client::Target;
use crate::client::timed;
use crate::error::Error;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch closes at this many records...
    pub batch_max_records: usize,
    /// ...or this many bytes...
    pub batch_max_bytes: usize,
    /// ...or this long after its first record.
    pub linger: Duration,
    /// How long a batch is retried before its outcome is reported unknown.
    pub delivery_timeout: Duration,
    /// Records waiting per partition before `send` waits (back-pressure).
    pub buffer_records: usize,
    /// Batches per partition sent before the oldest is acknowledged (1–5).
    pub max_in_flight: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_max_records: 1000,
            batch_max_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(60),
            buffer_records: 10_000,
            max_in_flight: 5,
        }
    }
}

/// A stored message: where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: u32,
    pub offset: u64,
    pub timestamp_ms: i64,
    pub message_id: String,
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
    pub partition: Option<u32>,
}

impl Record {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Record {
            value: value.into(),
            ..Default::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = key.into();
        self
    }

    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header. Headers travel as a map: a second header of the same
    /// name replaces the first.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn size(&self) -> usize {
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        raftstream_proto::record_size(&self.key, &self.value, headers)
    }
}

/// Resolves when the record is stored (or definitely not, or unknowably).
pub type Delivery = oneshot::Receiver<Result<Ack>>;

enum Work {
    Record(Record, oneshot::Sender<Result<Ack>>),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug)]
pub struct Producer {
    topic: pb::Topic,
    senders: Vec<mpsc::Sender<Work>>,
    round_robin: AtomicU64,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Record(r, _) => write!(f, "Record({} bytes)", r.size()),
            Work::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl Producer {
    pub async fn new(client: &Client, topic: &str, config: ProducerConfig) -> Result<Producer> {
        let topic = client.topic(topic).await?;
        let config = Arc::new(config);
        let senders = topic
            .partitions
            .iter()
            .map(|p| {
                let (tx, rx) = mpsc::channel(config.buffer_records.max(1));
                let sender = PartitionSender {
                    client: client.clone(),
                    topic_id: topic.id,
                    partition: p.partition,
                    group_id: p.group_id,
                    config: config.clone(),
                };
                tokio::spawn(sender.run(rx));
                tx
            })
            .collect();
        Ok(Producer {
            topic,
            senders,
            round_robin: AtomicU64::new(0),
        })
    }

    /// The partition a record goes to: its own, its key's hash (as the
    /// server hashes), or round-robin.
    pub fn partition_for(&self, record: &Record) -> Result<u32> {
        let count = self.senders.len() as u64;
        match record.partition {
            Some(p) if u64::from(p) < count => Ok(p),
            Some(p) => Err(Error::InvalidArgument(format!(
                "topic {} has no partition {p}",
                self.topic.name
            ))),
            None if !record.key.is_empty() => {
                Ok((xxhash_rust::xxh3::xxh3_64(&record.key) % count) as u32)
            }
            None => Ok((self.round_robin.fetch_add(1, Ordering::Relaxed) % count) as u32),
        }
    }

    /// Queues a record; waits only when the partition's buffer is full.
    pub async fn send(&self, record: Record) -> Result<Delivery> {
        let partition = self.partition_for(&record)? as usize;
        let (done, delivery) = oneshot::channel();
        self.senders[partition]
            .send(Work::Record(record, done))
            .await
            .map_err(|_| Error::ProducerClosed)?;
        Ok(delivery)
    }

    /// Sends one record and waits for its acknowledgement.
    pub async fn send_and_wait(&self, record: Record) -> Result<Ack> {
        self.send(record)
            .await?
            .await
            .map_err(|_| Error::ProducerClosed)?
    }

    /// Waits until every record sent so far has its outcome.
    pub async fn flush(&self) -> Result<()> {
        let mut waits = Vec::new();
        for sender in &self.senders {
            let (tx, rx) = oneshot::channel();
            sender
                .send(Work::Flush(tx))
                .await
                .map_err(|_| Error::ProducerClosed)?;
            waits.push(rx);
        }
        for wait in waits {
            wait.await.map_err(|_| Error::ProducerClosed)?;
        }
        Ok(())
    }
}

struct PartitionSender {
    client: Client,
    topic_id: u64,
    partition: u32,
    group_id: u64,
    config: Arc<ProducerConfig>,
}

/// The partition answers retries of a producer's last five batches.
const MAX_IN_FLIGHT: usize = 5;

/// Whether a per-record code lets the producer send its batch again: the
/// code table's `retryable` ones (of the codes a record gets, `unavailable`
/// and `outcome_unknown`). An unknown outcome is safe to retry here because
/// the batch's sequence numbers make the partition store it at most once.
fn retryable(code: &str) -> bool {
    ErrorCode::parse(code).is_some_and(ErrorCode::retryable)
}

/// Why a lane can take no more batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// A batch was refused whole: the batches after it were not stored.
    Refused,
    /// A batch's outcome is unknown: the batches after it may or may not be.
    Unknown,
}

#[derive(Debug, Clone, Copy, Default)]
struct LaneState {
    /// Every sequence below this is stored (the partition appends a
    /// producer's batches only in sequence order).
    stored_through: u64,
    broken: Option<Broken>,
}

/// One producer id's sequence space on one partition, shared by its
/// batches in flight.
struct Lane {
    producer_id: u64,
    state: watch::Sender<LaneState>,
}

impl Lane {
    fn new() -> Arc<Lane> {
        Arc::new(Lane {
            producer_id: rand::random(),
            state: watch::channel(LaneState::default()).0,
        })
    }

    fn broken(&self) -> Option<Broken> {
        self.state.borrow().broken
    }

    fn break_with(&self, why: Broken) {
        self.state.send_modify(|s| {
            // Unknown is the weaker claim: it wins over refused.
            if s.broken != Some(Broken::Unknown) {
                s.broken = Some(why);
            }
        });
    }
}

impl PartitionSender {
    async fn run(self, mut rx: mpsc::Receiver<Work>) {
        let this = Arc::new(self);
        // Batches in flight, oldest first. A new batch waits for the oldest
        // to finish rather than for any: so however long one batch retries,
        // fewer than `max_in_flight` batches are stored after it, and the
        // partition still remembers it (it keeps a producer's last five).
        let max_in_flight = this.config.max_in_flight.clamp(1, MAX_IN_FLIGHT);
        let mut in_flight: VecDeque<tokio::task::JoinHandle<()>> = VecDeque::new();
        let mut lane = Lane::new();
        let mut next_sequence = 0u64;
        let mut pending: Option<Work> = None;
        loop {
            let first = match pending.take() {
                Some(work) => work,
                None => match rx.recv().await {
                    Some(work) => work,
                    None => return,
                },
            };
            let (record, done) = match first {
                Work::Flush(reply) => {
                    while let Some(batch) = in_flight.pop_front() {
                        let _ = batch.await;
                    }
                    let _ = reply.send(());
                    continue;
                }
                Work::Record(record, done) => (record, done),
            };
            let mut bytes = record.size();
            let mut batch = vec![(record, done)];
            let deadline = tokio::time::Instant::now() + this.config.linger;
            while batch.len() < this.config.batch_max_records && bytes < this.config.batch_max_bytes
            {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(Work::Record(record, done))) => {
                        bytes += record.size();
                        batch.push((record, done));
                    }
                    // A flush closes the batch now; it is answered after.
                    Ok(Some(flush @ Work::Flush(_))) => {
                        pending = Some(flush);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            // Until the batch can go (a free place among this partition's
            // batches in flight, and a slot of its leader's node), it keeps
            // taking records: under load batches grow instead of queueing.
            let slot = {
                let ready = async {
                    while in_flight.len() >= max_in_flight {
                        if let Some(oldest) = in_flight.pop_front() {
                            let _ = oldest.await;
                        }
                    }
                    this.client.publish_slot(Target::Group(this.group_id)).await
                };
                tokio::pin!(ready);
                loop {
                    let full = pending.is_some()
                        || batch.len() >= this.config.batch_max_records
                        || bytes >= this.config.batch_max_bytes;
                    tokio::select! {
                        biased;
                        slot = &mut ready => break slot,
                        work = rx.recv(), if !full => match work {
                            Some(Work::Record(record, done)) => {
                                bytes += record.size();
                                batch.push((record, done));
                            }
                            Some(flush @ Work::Flush(_)) => pending = Some(flush),
                            // The producer is gone: send what we have.
                            None => break (&mut ready).await,
                        },
                    }
                }
            };
            // A broken lane cannot take more batches in sequence: continue
            // under a fresh producer id, whose sequences start over.
            if lane.broken().is_some() {
                lane = Lane::new();
                next_sequence = 0;
            }
            let base_sequence = next_sequence;
            next_sequence += batch.len() as u64;
            let sender = this.clone();
            let lane = lane.clone();
            in_flight.push_back(tokio::spawn(async move {
                let (records, waiters): (Vec<Record>, Vec<_>) = batch.into_iter().unzip();
                let outcome = sender.deliver(&lane, base_sequence, records, slot).await;
                match outcome {
                    Ok(acks) => {
                        for (waiter, ack) in waiters.into_iter().zip(acks) {
                            let _ = waiter.send(ack);
                        }
                    }
                    Err(e) => {
                        for waiter in waiters {
                            let _ = waiter.send(Err(record_error(&e)));
                        }
                    }
                }
            }));
        }
    }

    /// Sends one sequenced batch until it is stored, definitely refused, or
    /// the delivery timeout passes. Batches of one lane may reach the leader
    /// out of order; one that arrives early is refused as out of sequence and
    /// sent again once the batches before it are stored.
    async fn deliver(
        &self,
        lane: &Lane,
        base_sequence: u64,
        records: Vec<Record>,
        mut slot: Option<PublishSlot>,
    ) -> Result<Vec<Result<Ack>>> {
        let count = records.len() as u64;
        let request = pb::PublishBatchRequest {
            topic: Some(pb::TopicRef {
                topic: Some(pb::topic_ref::Topic::Id(self.topic_id)),
            }),
            records: records
                .into_iter()
                .map(|r| pb::Record {
                    key: r.key.into(),
                    value: r.value.into(),
                    headers: r.headers.into_iter().collect(),
                    partition: Some(self.partition),
                })
                .collect(),
            producer: Some(pb::ProducerBatch {
                producer_id: lane.producer_id,
                base_sequence,
            }),
        };
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.delivery_timeout;
        let mut maybe_stored = false;
        let mut stored = lane.state.subscribe();
        loop {
            match lane.broken() {
                Some(Broken::Unknown) => {
                    return Err(Error::OutcomeUnknown(
                        "an earlier batch to this partition has an unknown outcome".into(),
                    ));
                }
                Some(Broken::Refused) if !maybe_stored => {
                    return Err(Error::Server {
                        code: "sequence_broken".into(),
                        message: "an earlier batch to this partition was refused, so this one was not stored; send it again"
                            .into(),
                    });
                }
                _ => {}
            }
            let attempt = self
                .client
                .call_publish(
                    Target::Group(self.group_id),
                    slot.take(),
                    |mut g, timeout| {
                        let r = timed(request.clone(), timeout);
                        async move { g.publish_batch(r).await }
                    },
                )
                .await;
            let retry_reason = match attempt {
                Ok(response) => {
                    let code = |r: &pb::PublishResult| match &r.result {
                        Some(pb::publish_result::Result::Error(e)) => Some(e.code.clone()),
                        _ => None,
                    };
                    let codes: Vec<Option<String>> = response.results.iter().map(code).collect();
                    if codes.iter().all(Option::is_none) {
                        lane.state.send_modify(|s| {
                            s.stored_through = s.stored_through.max(base_sequence + count)
                        });
                        return Ok(response.results.into_iter().map(ack_of).collect());
                    }
                    if codes
                        .iter()
                        .flatten()
                        .any(|c| c == ErrorCode::OutOfSequence.as_str())
                    {
                        if stored.borrow().stored_through >= base_sequence {
                            // The batch ahead finished meanwhile: send again.
                            // (Should the partition have forgotten this
                            // producer, these retries run into the delivery
                            // timeout and the lane starts over.)
                            if tokio::time::Instant::now() >= deadline {
                                lane.break_with(Broken::Unknown);
                                return Err(Error::OutcomeUnknown(
                                    "the partition kept refusing this batch's sequence".into(),
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                        // Arrived before a batch ahead of it: wait for that one.
                        let ready = stored
                            .wait_for(|s| s.stored_through >= base_sequence || s.broken.is_some());
                        if tokio::time::timeout_at(deadline, ready).await.is_err() {
                            lane.break_with(Broken::Unknown);
                            return Err(Error::OutcomeUnknown(
                                "the batches ahead of this one did not finish in time".into(),
                            ));
                        }
                        continue;
                    }
                    if !codes.iter().flatten().any(|c| retryable(c)) {
                        // Refused whole: the batches after it can no longer
                        // follow in sequence.
                        lane.break_with(Broken::Refused);
                        return Ok(response.results.into_iter().map(ack_of).collect());
                    }
                    maybe_stored = true;
                    "the partition had no reachable leader".to_string()
                }
                Err(Error::OutcomeUnknown(why)) => {
                    maybe_stored = true;
                    why
                }
                Err(e @ Error::Unavailable { .. }) => e.to_string(),
                Err(e) => {
                    lane.break_with(Broken::Refused);
                    return Err(e);
                }
            };
            if started.elapsed() >= self.config.delivery_timeout {
                lane.break_with(if maybe_stored {
                    Broken::Unknown
                } else {
                    Broken::Refused
                });
                return Err(if maybe_stored {
                    Error::OutcomeUnknown(retry_reason)
                } else {
                    Error::Unavailable {
                        message: retry_reason,
                        elapsed_ms: started.elapsed().as_millis() as u64,
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The error each record of a failed batch gets: the batch's own kind and
/// words (its Display already says what the kind means), or, for a refusal,
/// `batch_failed` naming it.
fn record_error(batch_error: &Error) -> Error {
    match batch_error {
        Error::OutcomeUnknown(why) => Error::OutcomeUnknown(why.clone()),
        Error::Unavailable {
            message,
            elapsed_ms,
        } => Error::Unavailable {
            message: message.clone(),
            elapsed_ms: *elapsed_ms,
        },
        other => Error::Server {
            code: "batch_failed".into(),
            message: other.to_string(),
        },
    }
}

fn ack_of(result: pb::PublishResult) -> Result<Ack> {
    match result.result {
        Some(pb::publish_result::Result::Ok(ok)) => Ok(Ack {
            partition: ok.partition,
            offset: ok.offset,
            timestamp_ms: ok.timestamp_ms,
            message_id: ok.message_id,
        }),
        Some(pb::publish_result::Result::Error(e))
            if matches!(
                ErrorCode::parse(&e.code),
                Some(ErrorCode::MessageTooLarge | ErrorCode::UnknownPartition)
            ) =>
        {
            Err(Error::InvalidArgument(format!("{}: {}", e.code, e.message)))
        }
        Some(pb::publish_result::Result::Error(e)) => Err(Error::Server {
            code: e.code,
            message: e.message,
        }),
        None => Err(Error::Server {
            code: "no_result".into(),
            message: "the server sent no result".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_again_only_after_a_passing_failure() {
        for (code, again) in [
            ("unavailable", true),
            ("outcome_unknown", true),
            ("insufficient_storage", false),
            ("failed", false),
            ("batch_refused", false),
            ("duplicate_sequence", false),
            ("out_of_sequence", false),
            ("message_too_large", false),
            ("a_code_from_a_newer_node", false),
        ] {
            assert_eq!(retryable(code), again, "{code}");
        }
    }

    #[test]
    fn a_record_of_a_failed_batch_says_what_happened_once() {
        let unknown = record_error(&Error::OutcomeUnknown("the leader went away".into()));
        assert_eq!(
            unknown.to_string(),
            "outcome unknown: the leader went away; the write may or may not have been stored"
        );
        let unavailable = record_error(&Error::Unavailable {
            message: "no leader".into(),
            elapsed_ms: 7,
        });
        assert!(matches!(
            unavailable,
            Error::Unavailable { elapsed_ms: 7, .. }
        ));
        assert_eq!(unavailable.to_string().matches("unavailable").count(), 1);
        let refused = record_error(&Error::NotFound("topic t".into()));
        assert!(
            matches!(&refused, Error::Server { code, message } if code == "batch_failed" && message == "not found: topic t"),
            "{refused:?}"
        );
    }
}
