//! The workload: producers sending unique values through random nodes over
//! gRPC (the client library's idempotent producer, and raw publishes) and
//! the HTTP gateway; consumers polling through random nodes by offset,
//! message id and timestamp, over gRPC (committing consumer-group offsets)
//! and over the HTTP gateway's consume API; and the
//! final read of every partition from every node. Every operation goes into
//! the history with its outcome; an indeterminate one is `Info`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Grpc;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_client::pb;
use raftstream_proto::call_outcome;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cluster::grpc_addr;
use crate::cluster::http_addr;
use crate::history::Kind;
use crate::history::Msg;
use crate::history::Op;
use crate::history::Outcome;
use crate::history::Start;
use crate::history::Via;

pub const TOPIC: &str = "jepsen";
pub const PARTITIONS: u32 = 3;
/// The deadline of one client request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects operations from every worker.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    next_id: AtomicU64,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn record(
        &self,
        process: &str,
        start_us: u64,
        end_us: u64,
        outcome: Outcome,
        error: Option<String>,
        kind: Kind,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.ops.lock().push(Op {
            id,
            process: process.to_string(),
            start_us,
            end_us,
            outcome,
            error,
            kind,
        });
    }

    /// [`Recorder::record`] for an operation that ends now.
    pub fn ended_now(
        &self,
        process: &str,
        start_us: u64,
        outcome: Outcome,
        error: Option<String>,
        kind: Kind,
    ) {
        self.record(process, start_us, self.now_us(), outcome, error, kind);
    }

    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().clone();
        ops.sort_by_key(|op| (op.start_us, op.id));
        ops
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A gRPC client for one node that connects lazily and carries the token.
pub fn grpc_to(node: u64, token: &str) -> anyhow::Result<Grpc> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", grpc_addr(node)))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    let header = format!("Bearer {token}").parse()?;
    Ok(pb::raftstream_client::RaftstreamClient::with_interceptor(
        channel,
        raftstream_client::Auth::new(Some(header)),
    ))
}

/// Decodes a stored value: gRPC sends store the raw string, HTTP sends a
/// JSON object `{"v": value}`.
pub fn decode(bytes: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(bytes)
        && let Some(serde_json::Value::String(v)) = map.get("v")
    {
        return v.clone();
    }
    String::from_utf8_lossy(bytes).into_owned()
}

fn messages_of(response: &pb::ConsumeResponse) -> Vec<Msg> {
    response
        .messages
        .iter()
        .map(|m| Msg {
            offset: m.offset,
            value: decode(&m.value),
            timestamp_ms: m.timestamp_ms,
        })
        .collect()
}

/// A status the server sent saying it did not run the request, or a
/// connection that was never made, is a definite failure; anything else
/// after the request may have left is indeterminate.
fn classify(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    if call_outcome::cut_off(status) {
        return Outcome::Info;
    }
    match status.code() {
        Code::Unavailable
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::ResourceExhausted => Outcome::Fail,
        _ => Outcome::Info,
    }
}

/// An HTTP client for the gateways, with the workload's deadlines.
fn http_client(process: &str) -> Option<reqwest::Client> {
    match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("{process}: no HTTP client: {e}");
            None
        }
    }
}

/// A gateway's answer other than success: 503, 507 (the leader refused the
/// publish before proposing it, its disk being nearly full: gRPC's
/// RESOURCE_EXHAUSTED, which `classify` counts as failed too) and client
/// errors say the request was not run; anything else (504 above all) leaves
/// it unknown.
fn classify_http(status: reqwest::StatusCode) -> Outcome {
    if matches!(status.as_u16(), 503 | 507) || status.is_client_error() {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

/// A connection never made is a definite failure; any later error is not.
fn classify_http_error(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Fail
    } else {
        Outcome::Info
    }
}

/// POSTs `body` to the test topic's `action` (publish, consume) on node
/// `node`'s gateway and turns the answer into (outcome, error, what `parse`
/// read from a successful body); `parse` gives the whole error message when
/// it cannot read the body.
async fn gateway_call<T>(
    http: &reqwest::Client,
    token: &str,
    node: u64,
    action: &str,
    body: &impl serde::Serialize,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> (Outcome, Option<String>, Option<T>) {
    let url = format!("http://{}/api/v1/topics/{TOPIC}/{action}", http_addr(node));
    let sent = http.post(&url).bearer_auth(token).json(body).send().await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return (classify_http_error(&e), Some(e.to_string()), None),
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return (
            classify_http(status),
            Some(format!("{status}: {body}")),
            None,
        );
    }
    match parse(&body) {
        Ok(read) => (Outcome::Ok, None, Some(read)),
        Err(unreadable) => (Outcome::Info, Some(unreadable), None),
    }
}

/// Runs one gRPC call with the workload's deadline, which the request
/// carries too (the extra second lets the server's deadline fire first),
/// and turns its answer into (outcome, error, response).
async fn grpc_call<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> (Outcome, Option<String>, Option<T>) {
    match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), call).await {
        Ok(Ok(response)) => (Outcome::Ok, None, Some(response.into_inner())),
        Ok(Err(status)) => (classify(&status), Some(status.to_string()), None),
        Err(_) => (Outcome::Info, Some("timed out".into()), None),
    }
}

/// A lazily connecting gRPC client per node, `None` for a node whose
/// address or token did not parse.
struct NodeClients(Vec<Option<Grpc>>);

impl NodeClients {
    fn new(nodes: u64, token: &str) -> Self {
        Self((1..=nodes).map(|n| grpc_to(n, token).ok()).collect())
    }

    /// The client for node `node` (numbered from 1).
    fn to(&self, node: u64) -> Option<Grpc> {
        self.0.get((node - 1) as usize).cloned().flatten()
    }
}

/// What the consumers may start from: acknowledged messages.
#[derive(Debug, Default)]
pub struct Acked {
    list: Mutex<Vec<(u32, u64, Option<i64>)>>,
}

impl Acked {
    fn push(&self, partition: u32, offset: u64, timestamp_ms: Option<i64>) {
        let mut list = self.list.lock();
        if list.len() < 100_000 {
            list.push((partition, offset, timestamp_ms));
        }
    }

    fn pick(&self, rng: &mut StdRng, partition: u32) -> Option<(u64, Option<i64>)> {
        let list = self.list.lock();
        let mine: Vec<_> = list.iter().filter(|a| a.0 == partition).collect();
        if mine.is_empty() {
            return None;
        }
        let a = mine[rng.random_range(0..mine.len())];
        Some((a.1, a.2))
    }
}

#[derive(Clone)]
pub struct Workload {
    pub recorder: Arc<Recorder>,
    pub acked: Arc<Acked>,
    pub nodes: u64,
    pub token: String,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    /// Whether the clock nemesis may move nodes' wall clocks in this run.
    pub clock_faults: bool,
}

impl Workload {
    fn rng(&self, worker: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ (worker.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// What HTTP worker `worker` of a kind (`http`, `hcons`) works with:
    /// its process name, its random numbers and its client; `None`, said
    /// on stderr, when no client can be built.
    fn http_worker(&self, kind: &str, worker: u64) -> Option<(String, StdRng, reqwest::Client)> {
        let process = format!("{kind}{worker}");
        let http = http_client(&process)?;
        Some((process, self.rng(worker), http))
    }

    /// Round numbers from 1 for as long as the workload runs: the next is
    /// taken only while it is not stopped.
    fn rounds(&self) -> impl Iterator<Item = u64> + '_ {
        (1..).take_while(|_| !self.stopped())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn seeds(&self, rng: &mut StdRng) -> Vec<String> {
        let mut nodes: Vec<u64> = (1..=self.nodes).collect();
        nodes.shuffle(rng);
        nodes.into_iter().map(grpc_addr).collect()
    }

    fn send_done(
        &self,
        process: &str,
        start: u64,
        value: String,
        via: Via,
        node: u64,
        result: SendResult,
    ) {
        let (outcome, error, at) = result;
        if let Some((p, o, ts)) = at {
            self.acked.push(p, o, ts);
        }
        self.recorder.ended_now(
            process,
            start,
            outcome,
            error,
            Kind::Send {
                value,
                via,
                node,
                partition: at.map(|a| a.0),
                offset: at.map(|a| a.1),
                timestamp_ms: at.and_then(|a| a.2),
            },
        );
    }

    /// The client library's idempotent producer.
    pub async fn idempotent_producer(self, worker: u64) {
        let process = format!("idem{worker}");
        let mut rng = self.rng(worker);
        let mut n = 0u64;
        while !self.stopped() {
            let mut config = ClientConfig::new(self.seeds(&mut rng)).with_token(&self.token);
            config.request_timeout = REQUEST_TIMEOUT;
            config.retry_for = Duration::from_secs(5);
            let producer = async {
                let client = Client::connect(config).await?;
                let producer_config = ProducerConfig {
                    linger: Duration::from_millis(2),
                    delivery_timeout: Duration::from_secs(10),
                    ..ProducerConfig::default()
                };
                Producer::new(&client, TOPIC, producer_config).await
            };
            let producer = match producer.await {
                Ok(p) => p,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // One producer for many sends, as an application would; a new
            // one (new producer id) after an indeterminate send.
            while !self.stopped() {
                n += 1;
                let value = format!("{process}-{n}");
                let start = self.recorder.now_us();
                let result = producer.send_and_wait(Record::new(value.clone())).await;
                let indeterminate = result.is_err();
                let result = match result {
                    Ok(ack) => (
                        Outcome::Ok,
                        None,
                        Some((ack.partition, ack.offset, Some(ack.timestamp_ms))),
                    ),
                    Err(e) => {
                        use raftstream_client::Error as E;
                        // The producer retries batches; after retries an
                        // error does not prove that no attempt was stored,
                        // except when the request itself was invalid.
                        let outcome = match e {
                            E::InvalidArgument(_)
                            | E::NotFound(_)
                            | E::PermissionDenied(_)
                            | E::Unauthenticated(_) => Outcome::Fail,
                            _ => Outcome::Info,
                        };
                        (outcome, Some(e.to_string()), None)
                    }
                };
                self.send_done(&process, start, value, Via::Idempotent, 0, result);
                if indeterminate {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
            }
        }
    }

    /// Raw gRPC publishes through random nodes; a publish is retried on
    /// another node only when the node said it did not run it.
    pub async fn grpc_producer(self, worker: u64) {
        let process = format!("grpc{worker}");
        let mut rng = self.rng(worker);
        let clients = NodeClients::new(self.nodes, &self.token);
        for n in self.rounds() {
            let value = format!("{process}-{n}");
            let start = self.recorder.now_us();
            let first = rng.random_range(1..=self.nodes);
            let mut node = first;
            let mut result: SendResult = (Outcome::Fail, Some("not attempted".into()), None);
            for attempt in 0..3 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    node = rng.random_range(1..=self.nodes);
                }
                let Some(mut grpc) = clients.to(node) else {
                    break;
                };
                let mut request = tonic::Request::new(pb::PublishRequest {
                    topic: Some(raftstream_client::topic_ref(TOPIC)),
                    record: Some(pb::Record {
                        value: value.clone().into_bytes().into(),
                        ..Default::default()
                    }),
                });
                request.set_timeout(REQUEST_TIMEOUT);
                let (outcome, error, response) = grpc_call(grpc.publish(request)).await;
                let at = response.map(|r| (r.partition, r.offset, Some(r.timestamp_ms)));
                result = (outcome, error, at);
                if result.0 != Outcome::Fail {
                    break;
                }
            }
            self.send_done(&process, start, value, Via::Grpc, first, result);
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        }
    }

    /// Publishes through the HTTP gateway of random nodes.
    pub async fn http_producer(self, worker: u64) {
        let Some((process, mut rng, http)) = self.http_worker("http", worker) else {
            return;
        };
        for n in self.rounds() {
            let value = format!("{process}-{n}");
            let start = self.recorder.now_us();
            let node = rng.random_range(1..=self.nodes);
            let body = serde_json::json!({ "v": value });
            let result: SendResult =
                gateway_call(&http, &self.token, node, "publish", &body, |answer| {
                    serde_json::from_str::<serde_json::Value>(answer)
                        .ok()
                        .and_then(|v| v.get("message_id")?.as_str().map(str::to_string))
                        .and_then(|id| {
                            let (p, o) = id.split_once('-')?;
                            Some((p.parse().ok()?, o.parse().ok()?, None))
                        })
                        .ok_or_else(|| format!("unreadable answer {answer}"))
                })
                .await;
            self.send_done(&process, start, value, Via::Http, node, result);
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        }
    }

    /// Consumer sessions: each reads one partition from a start position
    /// (an offset, after a message id, or a timestamp) through random
    /// nodes, and commits its position for its own consumer group.
    pub async fn consumer(self, worker: u64) {
        let process = format!("cons{worker}");
        let mut rng = self.rng(worker);
        let clients = NodeClients::new(self.nodes, &self.token);
        let mut client: Option<Client> = None;
        for session_no in self.rounds() {
            let session = worker * 1_000_000 + session_no;
            let group = format!("g{session}");
            let partition = rng.random_range(0..PARTITIONS);
            let mut start = match (rng.random_range(0..3), self.acked.pick(&mut rng, partition)) {
                (1, Some((offset, _))) => Start::After(offset),
                (2, Some((_, Some(ts)))) => Start::Timestamp(ts - rng.random_range(0..50)),
                (_, Some((offset, _))) => {
                    Start::Offset(offset.saturating_sub(rng.random_range(0..20)))
                }
                _ => Start::Offset(0),
            };
            for _ in 0..8 {
                if self.stopped() {
                    break;
                }
                let node = rng.random_range(1..=self.nodes);
                let Some(mut grpc) = clients.to(node) else {
                    break;
                };
                let position = match start {
                    Start::Offset(o) => pb::position::Position::Offset(o),
                    Start::After(o) => {
                        pb::position::Position::AfterMessageId(format!("{partition}-{o}"))
                    }
                    Start::Timestamp(ts) => pb::position::Position::SinceTimestampMs(ts),
                };
                let mut request = tonic::Request::new(pb::ConsumeRequest {
                    topic: Some(raftstream_client::topic_ref(TOPIC)),
                    partition,
                    position: Some(pb::Position {
                        position: Some(position),
                    }),
                    max_messages: 50,
                    wait_ms: 300,
                    max_bytes: 0,
                });
                request.set_timeout(REQUEST_TIMEOUT);
                let t0 = self.recorder.now_us();
                let (outcome, error, response) = grpc_call(grpc.consume(request)).await;
                let messages = response.as_ref().map(messages_of).unwrap_or_default();
                let next = response.map(|r| r.next_offset);
                self.recorder.ended_now(
                    &process,
                    t0,
                    outcome,
                    error,
                    Kind::Poll {
                        session,
                        node,
                        partition,
                        start,
                        messages: messages.clone(),
                        next_offset: next,
                    },
                );
                if outcome != Outcome::Ok {
                    // The node is down or cut off: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
                }
                let Some(last) = messages.last() else {
                    continue;
                };
                start = Start::Offset(last.offset + 1);
                self.commit(
                    &process,
                    &mut client,
                    &mut rng,
                    &group,
                    partition,
                    last.offset + 1,
                )
                .await;
            }
        }
    }

    /// Consumer sessions through the HTTP gateway's consume API, which
    /// reads every partition of the topic at once and hands out message ids
    /// that carry the position in each. A session starts at the beginning,
    /// after a published message's id or at a time, then resumes after the
    /// last id it received. Each answer is recorded as one poll per
    /// partition, in a session per partition, so the poll, phantom,
    /// divergence and timestamp checks cover it as they do gRPC polls.
    pub async fn http_consumer(self, worker: u64) {
        let Some((process, mut rng, http)) = self.http_worker("hcons", worker) else {
            return;
        };
        for session_no in self.rounds() {
            // Session `first_session + p` reads partition p.
            let first_session = worker * 1_000_000 + session_no * u64::from(PARTITIONS);
            let (mut position, mut starts) = self.http_start(&mut rng);
            let batch_size = rng.random_range(1..=50u32);
            let timeout_secs = rng.random_range(0..=1u32);
            for _ in 0..8 {
                if self.stopped() {
                    break;
                }
                let node = rng.random_range(1..=self.nodes);
                let mut body = position.clone();
                body.insert("batch_size".into(), batch_size.into());
                body.insert("timeout_secs".into(), timeout_secs.into());
                let t0 = self.recorder.now_us();
                let (outcome, error, batch) =
                    gateway_call(&http, &self.token, node, "consume", &body, |answer| {
                        parse_http_consume(answer)
                            .map_err(|why| format!("unreadable answer ({why}): {answer}"))
                    })
                    .await;
                let end = self.recorder.now_us();
                for partition in 0..PARTITIONS {
                    let p = partition as usize;
                    let (messages, next_offset) = match &batch {
                        Some(b) => (
                            b.messages.get(p).cloned().unwrap_or_default(),
                            b.next_offsets.as_ref().and_then(|n| n.get(p).copied()),
                        ),
                        None => (Vec::new(), None),
                    };
                    self.recorder.record(
                        &process,
                        t0,
                        end,
                        outcome,
                        error.clone(),
                        Kind::Poll {
                            session: first_session + u64::from(partition),
                            node,
                            partition,
                            start: starts[p],
                            messages,
                            next_offset,
                        },
                    );
                }
                match batch {
                    Some(HttpBatch {
                        last_id: Some(id),
                        next_offsets: Some(next),
                        ..
                    }) => {
                        position = serde_json::Map::new();
                        position.insert("after_message_id".into(), id.into());
                        starts = next.into_iter().map(Start::Offset).collect();
                    }
                    // Nothing yet: ask again from the same position.
                    Some(_) => {}
                    None => {
                        // The node is down or cut off: do not spin on it.
                        let pause = rng.random_range(50..150);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
            }
        }
    }

    /// Where an HTTP consume session starts: the request's position fields,
    /// and where that makes each partition start. A time goes in only when
    /// no node's clock is moved: the gateway reads a time in its own future
    /// from its own now, which the harness cannot know.
    fn http_start(
        &self,
        rng: &mut StdRng,
    ) -> (serde_json::Map<String, serde_json::Value>, Vec<Start>) {
        let mut position = serde_json::Map::new();
        let partition = rng.random_range(0..PARTITIONS);
        let every = |start| vec![start; PARTITIONS as usize];
        match (rng.random_range(0..3), self.acked.pick(rng, partition)) {
            // A published message's id names only its own partition; the
            // others start at its time.
            (1, Some((offset, Some(ts)))) => {
                position.insert(
                    "after_message_id".into(),
                    format!("{partition}-{offset}").into(),
                );
                let mut starts = every(Start::Timestamp(ts));
                starts[partition as usize] = Start::After(offset);
                (position, starts)
            }
            (2, Some((_, Some(ts)))) if !self.clock_faults => {
                let since = ts - rng.random_range(0..50);
                match rfc3339(since) {
                    Some(text) => {
                        position.insert("since_time".into(), text.into());
                        (position, every(Start::Timestamp(since)))
                    }
                    None => (position, every(Start::Offset(0))),
                }
            }
            // No position: the oldest message (the topic has no retention).
            _ => (position, every(Start::Offset(0))),
        }
    }

    async fn commit(
        &self,
        process: &str,
        client: &mut Option<Client>,
        rng: &mut StdRng,
        group: &str,
        partition: u32,
        offset: u64,
    ) {
        if client.is_none() {
            let mut config = ClientConfig::new(self.seeds(rng)).with_token(&self.token);
            config.request_timeout = REQUEST_TIMEOUT;
            config.retry_for = Duration::from_secs(3);
            *client = Client::connect(config).await.ok();
        }
        let Some(c) = client.clone() else {
            return;
        };
        let t0 = self.recorder.now_us();
        let result = c.commit_offset(TOPIC, group, partition, offset).await;
        let (outcome, error) = match result {
            Ok(()) => (Outcome::Ok, None),
            Err(e) => (Outcome::Info, Some(e.to_string())),
        };
        self.recorder.ended_now(
            process,
            t0,
            outcome,
            error,
            Kind::Commit {
                group: group.to_string(),
                partition,
                offset,
            },
        );
        let t0 = self.recorder.now_us();
        let result = c.committed_offsets(TOPIC, group).await;
        let (outcome, error, offset) = match result {
            Ok(offsets) => (
                Outcome::Ok,
                None,
                offsets
                    .iter()
                    .find(|(p, _)| *p == partition)
                    .map(|(_, o)| *o),
            ),
            Err(e) => (Outcome::Info, Some(e.to_string()), None),
        };
        self.recorder.ended_now(
            process,
            t0,
            outcome,
            error,
            Kind::FetchCommitted {
                group: group.to_string(),
                partition,
                offset,
            },
        );
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// One HTTP consume answer, split by partition.
#[derive(Debug, Default, PartialEq)]
struct HttpBatch {
    /// Per partition, its messages in the order returned.
    messages: Vec<Vec<Msg>>,
    /// The last message's id, and the next offset per partition it carries.
    last_id: Option<String>,
    next_offsets: Option<Vec<u64>>,
}

#[derive(serde::Deserialize)]
struct HttpConsumeAnswer {
    messages: Vec<HttpMessage>,
}

#[derive(serde::Deserialize)]
struct HttpMessage {
    message_id: String,
    payload: serde_json::Value,
    time: String,
}

/// `"<p>-<o>@<n0>.<n1>…"`: the message, and the next offset per partition.
fn parse_resume_id(id: &str) -> Option<(u32, u64, Vec<u64>)> {
    let (message, cursor) = id.split_once('@')?;
    let (p, o) = message.split_once('-')?;
    let next = cursor
        .split('.')
        .map(|n| n.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    Some((p.parse().ok()?, o.parse().ok()?, next))
}

/// Splits a consume answer of the `jepsen` topic by partition. Values come
/// back as the published JSON object (HTTP sends, `{"v": value}`) or, for
/// gRPC sends, whose raw values are not JSON, as a string.
fn parse_http_consume(body: &str) -> Result<HttpBatch, String> {
    let answer: HttpConsumeAnswer = serde_json::from_str(body).map_err(|e| e.to_string())?;
    let mut batch = HttpBatch {
        messages: vec![Vec::new(); PARTITIONS as usize],
        ..HttpBatch::default()
    };
    for m in answer.messages {
        let (partition, offset, next) = parse_resume_id(&m.message_id)
            .filter(|(p, _, next)| *p < PARTITIONS && next.len() == PARTITIONS as usize)
            .ok_or_else(|| format!("message id {:?}", m.message_id))?;
        let timestamp_ms = parse_rfc3339_ms(&m.time).ok_or_else(|| format!("time {:?}", m.time))?;
        let value = match m.payload {
            serde_json::Value::String(v) => v,
            serde_json::Value::Object(map) => match map.get("v") {
                Some(serde_json::Value::String(v)) => v.clone(),
                _ => serde_json::Value::Object(map).to_string(),
            },
            other => other.to_string(),
        };
        batch.messages[partition as usize].push(Msg {
            offset,
            value,
            timestamp_ms,
        });
        batch.last_id = Some(m.message_id);
        batch.next_offsets = Some(next);
    }
    Ok(batch)
}

/// (outcome, error, (partition, offset, timestamp) when acknowledged)
type SendResult = (Outcome, Option<String>, Option<(u32, u64, Option<i64>)>);

/// Reads one partition on one node from its own replica (no forwarding)
/// from offset 0 to its end. Returns the messages and the replica's high
/// watermark.
pub async fn read_local(grpc: &mut Grpc, partition: u32) -> Result<(Vec<Msg>, u64), tonic::Status> {
    let mut messages = Vec::new();
    let mut next = 0;
    loop {
        let mut request = tonic::Request::new(pb::ConsumeRequest {
            topic: Some(raftstream_client::topic_ref(TOPIC)),
            partition,
            position: Some(pb::Position {
                position: Some(pb::position::Position::Offset(next)),
            }),
            max_messages: 1000,
            wait_ms: 0,
            max_bytes: 0,
        });
        request.set_timeout(REQUEST_TIMEOUT);
        request.metadata_mut().insert(
            "x-raftstream-local",
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let response = grpc.consume(request).await?.into_inner();
        let batch = messages_of(&response);
        if batch.is_empty() {
            return Ok((messages, response.high_watermark));
        }
        next = response.next_offset;
        messages.extend(batch);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msg(offset: u64, value: &str, timestamp_ms: i64) -> Msg {
        Msg {
            offset,
            value: value.into(),
            timestamp_ms,
        }
    }

    #[test]
    fn an_http_consume_answer_splits_by_partition_and_keeps_the_last_cursor() {
        let body = r#"{"messages": [
            {"message_id": "1-4@0.5.7", "payload": {"v": "http20-3"}, "time": "2026-01-02T03:04:05.006Z"},
            {"message_id": "2-7@0.5.8", "payload": "grpc10-9", "time": "2026-01-02T03:04:05.007Z"},
            {"message_id": "1-5@0.6.8", "payload": {"other": 1}, "time": "2026-01-02T03:04:05.007Z"}
        ]}"#;
        let batch = parse_http_consume(body).unwrap();
        let t = parse_rfc3339_ms("2026-01-02T03:04:05.006Z").unwrap();
        assert_eq!(
            batch.messages,
            vec![
                vec![],
                vec![msg(4, "http20-3", t), msg(5, r#"{"other":1}"#, t + 1)],
                vec![msg(7, "grpc10-9", t + 1)],
            ]
        );
        assert_eq!(batch.last_id.as_deref(), Some("1-5@0.6.8"));
        assert_eq!(batch.next_offsets, Some(vec![0, 6, 8]));
    }

    #[test]
    fn an_empty_answer_has_no_cursor() {
        let batch = parse_http_consume(r#"{"messages": []}"#).unwrap();
        assert_eq!(batch.messages, vec![Vec::<Msg>::new(); PARTITIONS as usize]);
        assert_eq!((batch.last_id, batch.next_offsets), (None, None));
    }

    #[test]
    fn ids_without_a_cursor_for_every_partition_or_bad_times_are_unreadable() {
        for body in [
            r#"{"messages": [{"message_id": "1-4", "payload": "a", "time": "2026-01-02T03:04:05Z"}]}"#,
            r#"{"messages": [{"message_id": "1-4@1.2", "payload": "a", "time": "2026-01-02T03:04:05Z"}]}"#,
            r#"{"messages": [{"message_id": "7-4@1.2.3", "payload": "a", "time": "2026-01-02T03:04:05Z"}]}"#,
            r#"{"messages": [{"message_id": "1-4@1.5.3", "payload": "a", "time": "yesterday"}]}"#,
            r#"{"messages": 3}"#,
        ] {
            assert!(parse_http_consume(body).is_err(), "{body}");
        }
    }

    #[test]
    fn times_keep_their_milliseconds_both_ways() {
        let ms = 1_767_323_045_006;
        assert_eq!(parse_rfc3339_ms(&rfc3339(ms).unwrap()), Some(ms));
    }
}
