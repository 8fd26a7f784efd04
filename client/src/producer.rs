//! The batching, idempotent producer.
//!
//! Records are gathered per partition into batches (closed by record count,
//! bytes or linger time, like Kafka's batch.size and linger.ms). Every
//! partition has its own sender, so batches for different partitions are in
//! flight together while each partition's batches go in order. Each batch
//! carries the producer id and the sequence number of its first record; the
//! partition appends a sequenced batch at most once, so retrying after a
//! timeout or a leader change never stores a message twice.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use raftstream_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::client::Client;
use crate::client::Retry;
use crate::client::Target;
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
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            batch_max_records: 1000,
            batch_max_bytes: 1024 * 1024,
            linger: Duration::from_millis(5),
            delivery_timeout: Duration::from_secs(60),
            buffer_records: 10_000,
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

    fn size(&self) -> usize {
        self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
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
                    producer_id: rand::random(),
                    next_sequence: 0,
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
    producer_id: u64,
    next_sequence: u64,
}

/// Per-record codes of a batch that did not reach its leader: safe to retry.
const RETRYABLE_CODES: &[&str] = &["unavailable", "outcome_unknown"];

impl PartitionSender {
    async fn run(mut self, mut rx: mpsc::Receiver<Work>) {
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
                    let _ = reply.send(());
                    continue;
                }
                Work::Record(record, done) => (record, done),
            };
            let mut bytes = record.size();
            let mut batch = vec![(record, done)];
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while batch.len() < self.config.batch_max_records && bytes < self.config.batch_max_bytes
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
            let (records, waiters): (Vec<Record>, Vec<_>) = batch.into_iter().unzip();
            let outcome = self.deliver(records).await;
            match outcome {
                Ok(acks) => {
                    for (waiter, ack) in waiters.into_iter().zip(acks) {
                        let _ = waiter.send(ack);
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for waiter in waiters {
                        let error = match &e {
                            Error::OutcomeUnknown(_) => Error::OutcomeUnknown(message.clone()),
                            Error::Unavailable { elapsed_ms, .. } => Error::Unavailable {
                                message: message.clone(),
                                elapsed_ms: *elapsed_ms,
                            },
                            _ => Error::Server {
                                code: "batch_failed".into(),
                                message: message.clone(),
                            },
                        };
                        let _ = waiter.send(Err(error));
                    }
                }
            }
        }
    }

    /// Sends one batch until it is stored, definitely refused, or the
    /// delivery timeout passes.
    async fn deliver(&mut self, records: Vec<Record>) -> Result<Vec<Result<Ack>>> {
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
                producer_id: self.producer_id,
                base_sequence: self.next_sequence,
            }),
        };
        let started = Instant::now();
        let mut maybe_stored = false;
        loop {
            let attempt = self
                .client
                .call(
                    Target::Group(self.group_id),
                    Retry::Idempotent,
                    |mut g, timeout| {
                        let mut r = tonic::Request::new(request.clone());
                        r.set_timeout(timeout);
                        async move { g.publish_batch(r).await }
                    },
                )
                .await;
            let retry_reason = match attempt {
                Ok(response) => {
                    let retryable = response.results.iter().any(|r| match &r.result {
                        Some(pb::publish_result::Result::Error(e)) => {
                            RETRYABLE_CODES.contains(&e.code.as_str())
                        }
                        _ => false,
                    });
                    if !retryable {
                        let acks: Vec<Result<Ack>> =
                            response.results.into_iter().map(ack_of).collect();
                        if acks.iter().all(Result::is_ok) {
                            self.next_sequence += count;
                        } else {
                            // The batch was refused whole (the server appends
                            // an idempotent batch all or nothing).
                        }
                        return Ok(acks);
                    }
                    maybe_stored = true;
                    "the partition had no reachable leader".to_string()
                }
                Err(Error::OutcomeUnknown(why)) => {
                    maybe_stored = true;
                    why
                }
                Err(e @ Error::Unavailable { .. }) => e.to_string(),
                Err(e) => return Err(e),
            };
            if started.elapsed() >= self.config.delivery_timeout {
                // Whether the batch landed cannot be known; continue with a
                // fresh producer id, whose sequences start over, so later
                // batches are not refused as out of sequence.
                self.producer_id = rand::random();
                self.next_sequence = 0;
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

fn ack_of(result: pb::PublishResult) -> Result<Ack> {
    match result.result {
        Some(pb::publish_result::Result::Ok(ok)) => Ok(Ack {
            partition: ok.partition,
            offset: ok.offset,
            timestamp_ms: ok.timestamp_ms,
            message_id: ok.message_id,
        }),
        Some(pb::publish_result::Result::Error(e))
            if e.code == "message_too_large" || e.code == "unknown_partition" =>
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
