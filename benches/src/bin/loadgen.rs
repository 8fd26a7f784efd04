//! `loadgen`: drives Raftstream (gRPC through the client library, or the HTTP
//! gateway) or NATS JetStream with one workload, reports throughput and
//! latency, and verifies that consumers read exactly what was acknowledged.
//!
//! A run: create a fresh topic (stream), publish from `--producers`
//! producers (pipelined, or one message at a time), optionally consume live
//! for publish-to-consume latency, then consume everything from the start
//! (the catch-up figure) and check it against the acknowledgements.
//! `--json` prints the figures as one JSON object for scripts.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Parser;
use clap::ValueEnum;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use raftstream_benches::LatencySummary;
use raftstream_benches::Ledger;
use raftstream_benches::Outcome;
use raftstream_benches::Reads;
use raftstream_benches::Stamp;
use raftstream_benches::Verification;
use raftstream_benches::latency_histogram;
use raftstream_benches::now_ns;
use raftstream_benches::verify;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Consumer;
use raftstream_client::Position;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_client::pb;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;

/// glibc's allocator spent 40% of loadgen's CPU in malloc and free of
/// per-message buffers freed on other threads; mimalloc keeps per-thread
/// heaps. (The node keeps glibc's: under mimalloc an idle node with 250
/// partitions held 770 MB resident instead of 102 MB.) It is built without
/// transparent huge pages (the workspace's `no_thp` feature): with them, a
/// loadgen started after other work spent 2.1-2.3 s of system time per
/// million messages zeroing and compacting 2 MiB pages, against 0.8 s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    /// Raftstream over gRPC, with the Rust client's batching producer.
    Raftstream,
    /// Raftstream's HTTP gateway (batch publish of up to 100, consume).
    Http,
    /// NATS JetStream through async-nats.
    Nats,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "Publish/consume load against Raftstream (gRPC or HTTP) or NATS JetStream, with verification"
)]
struct Args {
    #[arg(long, value_enum, default_value = "raftstream")]
    system: System,
    /// Comma-separated seeds: gRPC host:port (raftstream), host:port of
    /// one HTTP gateway (http), or NATS URLs (nats).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Raftstream bearer token (admin or with publish, consume and admin scopes).
    #[arg(long, env = "RAFTSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Topic (stream) name; a fresh one per run by default. An existing
    /// Raftstream topic is reused (messages of earlier runs are skipped).
    #[arg(long)]
    topic: Option<String>,
    /// Topics to spread the load over (raftstream only): NAME-0, NAME-1, ...
    #[arg(long, default_value_t = 1)]
    topics: u32,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Replicas per partition (stream); the server's default when absent.
    #[arg(long)]
    replicas: Option<u32>,
    /// Bytes per message value (at least 24: the stamp every message carries).
    #[arg(long, default_value_t = 1024)]
    message_size: usize,
    /// Concurrent producers; each spreads its messages over every partition.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Batches in flight per partition and producer (raftstream: 1-5; nats:
    /// the ack window is in-flight × batch-size messages; http: concurrent requests).
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Records per batch (http: at most 100).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Each producer sends one message and waits for its acknowledgement
    /// before the next (latency mode): batch 1, in flight 1, no linger.
    #[arg(long)]
    one_at_a_time: bool,
    /// Messages in total over all producers.
    #[arg(long, conflicts_with = "duration_secs")]
    messages: Option<u64>,
    /// Publish for this long instead of a message count.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Consume live while publishing, for publish-to-consume latency.
    #[arg(long)]
    live: bool,
    /// Skip the catch-up consume and the verification.
    #[arg(long)]
    no_verify: bool,
    /// Only create the topics and wait for their leaders.
    #[arg(long)]
    setup_only: bool,
    /// With --setup-only (raftstream): then wait, at most this long, until
    /// every partition's leader reports the group quiesced (idle, timers
    /// stopped), so that idle CPU is measured once the cluster has settled.
    #[arg(long, requires = "setup_only")]
    await_quiesced_secs: Option<f64>,
    /// Failover (raftstream): this long after publishing starts, SIGKILL the
    /// node leading partition 0 of the first topic. Needs --node-pids.
    #[arg(long, requires = "node_pids")]
    kill_leader_after_secs: Option<f64>,
    /// Node id → process id of every node: 1=PID,2=PID,3=PID.
    #[arg(long)]
    node_pids: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// How a publish of one or more records ended.
enum PublishOutcome {
    /// The same for every record of the publish.
    Whole(Result<(), String>),
    /// One per record, in order.
    PerRecord(Vec<Result<(), String>>),
}

/// A publish of records `seq..seq + count` of one producer, all to one slot,
/// handed to the producer's collector while its outcome is pending.
struct Sent {
    producer: u32,
    /// Index into the run's partition list.
    slot: usize,
    seq: u64,
    count: u64,
    sent: Instant,
    outcome: BoxFuture<'static, PublishOutcome>,
    /// Set when the producer waited for the outcome itself (one at a time).
    finished: Option<Instant>,
}

impl Sent {
    /// One record's publish, sent at `sent`.
    fn one(
        producer: u32,
        slot: usize,
        seq: u64,
        sent: Instant,
        outcome: impl std::future::Future<Output = Result<(), String>> + Send + 'static,
    ) -> Sent {
        Sent {
            producer,
            slot,
            seq,
            count: 1,
            sent,
            outcome: Box::pin(async move { PublishOutcome::Whole(outcome.await) }),
            finished: None,
        }
    }

    /// `sent` as the producer hands it over. Publishing one at a time, the
    /// producer waits for the outcome itself. Otherwise it polls the outcome
    /// once: a future that starts its work when first polled (JetStream's
    /// ack starts its timeout then) must start now, not when the collector
    /// gets to it behind the publishes before it.
    async fn started(mut self, wait: bool) -> Sent {
        let outcome = if wait {
            self.outcome.as_mut().await
        } else {
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            match self.outcome.as_mut().poll(&mut cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => return self,
            }
        };
        self.outcome = Box::pin(std::future::ready(outcome));
        self.finished = Some(Instant::now());
        self
    }
}

/// A producer's side of its collector: the window of records it may have
/// pending, and the channel its publishes go to.
struct ToCollector {
    tx: mpsc::Sender<Sent>,
    window: Arc<Semaphore>,
}

impl ToCollector {
    /// Starts a collector for publishes to `slots` slots, with a window of
    /// `records` pending records.
    fn start(
        slots: usize,
        records: usize,
    ) -> (
        ToCollector,
        tokio::task::JoinHandle<anyhow::Result<Collected>>,
    ) {
        let (tx, rx) = mpsc::channel(1024);
        let window = Arc::new(Semaphore::new(records.max(1)));
        let collector = tokio::spawn(collect(rx, slots, window.clone()));
        (ToCollector { tx, window }, collector)
    }

    /// Waits for room for `records` more pending records in the window.
    async fn reserve(&self, records: u32) -> anyhow::Result<()> {
        self.window.acquire_many(records).await?.forget();
        Ok(())
    }

    /// Hands `sent` to the collector, started (see [`Sent::started`]).
    async fn hand_over(&self, sent: Sent, one_at_a_time: bool) -> anyhow::Result<()> {
        self.tx
            .send(sent.started(one_at_a_time).await)
            .await
            .map_err(|_| anyhow::anyhow!("the collector stopped"))
    }
}

/// What the collector of one producer found.
struct Collected {
    ledger: Ledger,
    latency: Histogram<u64>,
    acked_per_slot: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    last_finished: Option<Instant>,
    first_ack_after_kill: Option<Instant>,
    /// When each acknowledgement after the kill arrived.
    acks_after_kill: Vec<Instant>,
}

#[derive(Debug, Serialize)]
struct Report {
    system: System,
    topic: String,
    topics: u32,
    partitions: u32,
    replicas: Option<u32>,
    message_size: usize,
    producers: u32,
    in_flight: usize,
    batch_size: usize,
    linger_ms: u64,
    one_at_a_time: bool,
    publish_secs: f64,
    acked: u64,
    errored: u64,
    first_error: Option<String>,
    publish_msgs_per_sec: f64,
    publish_mb_per_sec: f64,
    publish_to_ack: LatencySummary,
    publish_to_consume: Option<LatencySummary>,
    catchup_msgs_per_sec: Option<f64>,
    catchup_mb_per_sec: Option<f64>,
    catchup_read: Option<u64>,
    verification: Option<Verification>,
    failover: Option<Failover>,
}

#[derive(Debug, Serialize, Clone)]
struct Failover {
    killed_node: u64,
    killed_pid: u32,
    /// From the kill to the first acknowledgement after the outage: the
    /// first ack that follows a gap of more than 200 ms without any (acks
    /// of requests the old leader answered just before dying arrive within
    /// milliseconds of the kill, so they come before that gap).
    first_ack_after_outage_ms: Option<f64>,
    /// From the kill to the first acknowledgement of a message published
    /// after it: includes the wait behind the batches that were in flight
    /// (the producer keeps each partition's batches in order).
    first_ack_of_message_sent_after_kill_ms: Option<f64>,
    errored_publishes: u64,
}

/// One partition of the run: which topic and which partition in it.
#[derive(Debug, Clone)]
struct Slot {
    topic: usize,
    partition: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.message_size < raftstream_benches::HEADER_BYTES {
        bail!(
            "--message-size must be at least {} (the stamp every message carries)",
            raftstream_benches::HEADER_BYTES
        );
    }
    if args.one_at_a_time {
        args.batch_size = 1;
        args.in_flight = 1;
        args.linger_ms = 0;
    }
    if args.system == System::Http {
        args.batch_size = args.batch_size.clamp(1, 100);
    }
    if args.topics > 1 && args.system != System::Raftstream {
        bail!("--topics above 1 is supported for --system raftstream only");
    }
    if args.kill_leader_after_secs.is_some() && args.system != System::Raftstream {
        bail!("--kill-leader-after-secs is supported for --system raftstream only");
    }
    if args.messages.is_none() && args.duration_secs.is_none() && !args.setup_only {
        args.messages = Some(100_000);
    }
    let run: u32 = rand_u32();
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("loadgen{run:08x}"));
    let report = match args.system {
        System::Raftstream => raftstream::run(&args, run, &topic).await?,
        System::Http => http::run(&args, run, &topic).await?,
        System::Nats => nats::run(&args, run, &topic).await?,
    };
    let Some(report) = report else {
        return Ok(());
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    if let Some(v) = &report.verification
        && !v.ok()
    {
        bail!("verification failed: consumers did not read exactly what was acknowledged: {v:?}");
    }
    if report.acked == 0 && report.errored > 0 {
        bail!(
            "no publish was acknowledged; first error: {}",
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

fn rand_u32() -> u32 {
    // Nanoseconds are random enough to tell runs on one topic apart.
    (now_ns() ^ (u64::from(std::process::id()) << 32)) as u32
}

fn print_report(r: &Report) {
    println!(
        "{:?}: {} topic(s) × {} partition(s), replicas {}, {} B messages, {} producer(s), {}",
        r.system,
        r.topics,
        r.partitions,
        r.replicas.map_or("default".to_string(), |n| n.to_string()),
        r.message_size,
        r.producers,
        if r.one_at_a_time {
            "one at a time".to_string()
        } else {
            format!(
                "batch {} × in flight {}, linger {} ms",
                r.batch_size, r.in_flight, r.linger_ms
            )
        }
    );
    println!(
        "publish:  {} acknowledged, {} errored in {:.2} s = {:.0} msgs/s, {:.1} MB/s",
        r.acked, r.errored, r.publish_secs, r.publish_msgs_per_sec, r.publish_mb_per_sec
    );
    if let Some(e) = &r.first_error {
        println!("          first error: {e}");
    }
    let l = &r.publish_to_ack;
    println!(
        "publish→ack:     p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    if let Some(l) = &r.publish_to_consume {
        println!(
            "publish→consume: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} messages)",
            l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.count
        );
    }
    if let (Some(rate), Some(mb), Some(read)) =
        (r.catchup_msgs_per_sec, r.catchup_mb_per_sec, r.catchup_read)
    {
        println!("catch-up: {read} messages read at {rate:.0} msgs/s, {mb:.1} MB/s");
    }
    if let Some(v) = &r.verification {
        println!(
            "verify:   {} ({} acked, {} errored of which {} stored, {} missing, {} duplicated, {} unexpected)",
            if v.ok() { "OK" } else { "FAILED" },
            v.acked,
            v.errored,
            v.errored_but_stored,
            v.missing,
            v.duplicated,
            v.unexpected
        );
    }
    if let Some(f) = &r.failover {
        println!(
            "failover: killed node {} (pid {}); first ack after the outage {} ms after the kill \
             (of a message sent after the kill: {} ms); {} publishes errored",
            f.killed_node,
            f.killed_pid,
            f.first_ack_after_outage_ms
                .map_or("(none)".to_string(), |ms| format!("{ms:.0}")),
            f.first_ack_of_message_sent_after_kill_ms
                .map_or("(none)".to_string(), |ms| format!("{ms:.0}")),
            f.errored_publishes
        );
    }
}

/// The first acknowledgement after the outage a leader kill caused: the
/// first that follows a gap of more than 200 ms (or the kill itself).
fn first_ack_after_outage(killed_at: Instant, mut acks: Vec<Instant>) -> Option<Instant> {
    acks.sort_unstable();
    let gap = Duration::from_millis(200);
    let mut previous = killed_at;
    for t in &acks {
        if t.duration_since(previous) > gap {
            return Some(*t);
        }
        previous = *t;
    }
    // No gap at all: the outage, if any, was shorter than 200 ms.
    acks.first().copied()
}

/// How many messages producer `index` sends, or `None` to send until the deadline.
fn quota(args: &Args, index: u32) -> Option<u64> {
    args.messages.map(|total| {
        let n = u64::from(args.producers);
        total / n + u64::from(u64::from(index) < total % n)
    })
}

fn deadline(args: &Args, started: Instant) -> Option<Instant> {
    args.duration_secs
        .map(|s| started + Duration::from_secs_f64(s))
}

/// How many unacknowledged messages one producer may have outstanding:
/// every partition's batches in flight, but at most 32 MiB of messages
/// (like Kafka's `buffer.memory`). Both systems get the same window, so a
/// duration-bound run measures throughput rather than how fast an
/// unbounded client-side queue fills.
fn window(args: &Args, partitions: usize) -> usize {
    let batches = args.in_flight.max(1) * args.batch_size.max(1) * partitions.max(1);
    batches.min((32 << 20) / args.message_size.max(1)).max(1)
}

/// The kill instant of a failover run, set once.
static KILLED_AT: OnceLock<Instant> = OnceLock::new();

/// Resolves the publishes of one producer as they finish, and gives their
/// records' places in `window` back.
///
/// A slot's publishes finish in the order they were sent (the producer and
/// the partition keep them in order), so only the oldest pending publish of
/// each slot is awaited; once it resolves, those behind it are checked
/// without waiting. The records of one batch then cost a poll each rather
/// than a task each. Every system goes through this same code.
async fn collect(
    mut rx: mpsc::Receiver<Sent>,
    slots: usize,
    window: Arc<Semaphore>,
) -> anyhow::Result<Collected> {
    let mut c = Collected {
        ledger: Ledger::default(),
        latency: latency_histogram()?,
        acked_per_slot: vec![0; slots],
        errors: 0,
        first_error: None,
        last_finished: None,
        first_ack_after_kill: None,
        acks_after_kill: Vec::new(),
    };
    // Per slot: whether its oldest pending publish is being awaited, and
    // the publishes behind that one.
    let mut awaited = vec![false; slots];
    let mut behind: Vec<VecDeque<Sent>> = (0..slots).map(|_| VecDeque::new()).collect();
    let mut heads = FuturesUnordered::new();
    let await_head = |mut sent: Sent| async move {
        let outcome = sent.outcome.as_mut().await;
        (sent, outcome)
    };
    let mut open = true;
    loop {
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some(sent) => match awaited.get_mut(sent.slot) {
                    Some(true) => behind[sent.slot].push_back(sent),
                    Some(awaited) => {
                        *awaited = true;
                        heads.push(await_head(sent));
                    }
                    None => bail!("a publish to slot {} of {slots}", sent.slot),
                },
                None => open = false,
            },
            Some((sent, outcome)) = heads.next(), if !heads.is_empty() => {
                let slot = sent.slot;
                c.record(&sent, &outcome);
                window.add_permits(sent.count as usize);
                loop {
                    let Some(mut next) = behind[slot].pop_front() else {
                        awaited[slot] = false;
                        break;
                    };
                    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
                    match next.outcome.as_mut().poll(&mut cx) {
                        Poll::Ready(outcome) => {
                            c.record(&next, &outcome);
                            window.add_permits(next.count as usize);
                        }
                        Poll::Pending => {
                            heads.push(await_head(next));
                            break;
                        }
                    }
                }
            }
            else => break,
        }
    }
    Ok(c)
}

impl Collected {
    /// Records the outcome of each record of `sent`.
    fn record(&mut self, sent: &Sent, outcome: &PublishOutcome) {
        let finished = sent.finished.unwrap_or_else(Instant::now);
        for i in 0..sent.count {
            let error = match outcome {
                PublishOutcome::Whole(result) => result.as_ref().err().map(String::as_str),
                PublishOutcome::PerRecord(each) => match each.get(i as usize) {
                    Some(result) => result.as_ref().err().map(String::as_str),
                    None => Some("the publish answered for fewer records than it carried"),
                },
            };
            let seq = sent.seq + i;
            let Some(error) = error else {
                self.ledger.record(sent.producer, seq, Outcome::Acked);
                if let Some(n) = self.acked_per_slot.get_mut(sent.slot) {
                    *n += 1;
                }
                let us = finished.saturating_duration_since(sent.sent).as_micros() as u64;
                self.latency.saturating_record(us.max(1));
                if let Some(killed) = KILLED_AT.get() {
                    if finished > *killed {
                        self.acks_after_kill.push(finished);
                    }
                    if sent.sent > *killed && self.first_ack_after_kill.is_none_or(|t| finished < t)
                    {
                        self.first_ack_after_kill = Some(finished);
                    }
                }
                continue;
            };
            self.ledger.record(sent.producer, seq, Outcome::Errored);
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(error.to_string());
            }
        }
        self.last_finished = Some(self.last_finished.map_or(finished, |t| t.max(finished)));
    }
}

/// Merges the collectors into the publish half of a report.
struct PublishResult {
    ledger: Ledger,
    latency: Histogram<u64>,
    acked_per_slot: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    first_ack_after_kill: Option<Instant>,
    acks_after_kill: Vec<Instant>,
}

async fn gather(
    started: Instant,
    collectors: Vec<tokio::task::JoinHandle<anyhow::Result<Collected>>>,
    producers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    slots: usize,
) -> anyhow::Result<PublishResult> {
    for p in producers {
        p.await.context("a producer task panicked")??;
    }
    let mut out = PublishResult {
        ledger: Ledger::default(),
        latency: latency_histogram()?,
        acked_per_slot: vec![0; slots],
        errors: 0,
        first_error: None,
        secs: 0.0,
        first_ack_after_kill: None,
        acks_after_kill: Vec::new(),
    };
    let mut last = started;
    for c in collectors {
        let c = c.await.context("a collector task panicked")??;
        out.ledger.merge(c.ledger);
        out.latency.add(&c.latency)?;
        for (a, b) in out.acked_per_slot.iter_mut().zip(c.acked_per_slot) {
            *a += b;
        }
        out.errors += c.errors;
        if out.first_error.is_none() {
            out.first_error = c.first_error;
        }
        if let Some(t) = c.last_finished {
            last = last.max(t);
        }
        out.acks_after_kill.extend(c.acks_after_kill);
        if let Some(t) = c.first_ack_after_kill {
            out.first_ack_after_kill =
                Some(out.first_ack_after_kill.map_or(t, |o: Instant| o.min(t)));
        }
    }
    out.secs = last.duration_since(started).as_secs_f64().max(1e-9);
    Ok(out)
}

/// Builds the report from the publish and consume halves.
#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    topic: &str,
    publish: &PublishResult,
    live: Option<&Histogram<u64>>,
    catchup: Option<(u64, f64)>,
    reads: Option<&Reads>,
    failover: Option<Failover>,
) -> Report {
    let acked = publish.ledger.count(Outcome::Acked);
    let mb = |msgs: f64| msgs * args.message_size as f64 / 1e6;
    let rate = acked as f64 / publish.secs;
    Report {
        system: args.system,
        topic: topic.to_string(),
        topics: args.topics,
        partitions: args.partitions,
        replicas: args.replicas,
        message_size: args.message_size,
        producers: args.producers,
        in_flight: args.in_flight,
        batch_size: args.batch_size,
        linger_ms: args.linger_ms,
        one_at_a_time: args.one_at_a_time,
        publish_secs: publish.secs,
        acked,
        errored: publish.errors,
        first_error: publish.first_error.clone(),
        publish_msgs_per_sec: rate,
        publish_mb_per_sec: mb(rate),
        publish_to_ack: LatencySummary::of(&publish.latency),
        publish_to_consume: live.map(LatencySummary::of),
        catchup_msgs_per_sec: catchup.map(|(n, secs)| n as f64 / secs.max(1e-9)),
        catchup_mb_per_sec: catchup.map(|(n, secs)| mb(n as f64 / secs.max(1e-9))),
        catchup_read: catchup.map(|(n, _)| n),
        verification: reads.map(|r| verify(&publish.ledger, r)),
        failover,
    }
}

/// Records publish-to-consume latency of messages read live.
fn record_e2e(h: &Mutex<Histogram<u64>>, stamp: &Stamp) {
    let us = now_ns().saturating_sub(stamp.sent_ns) / 1000;
    if let Ok(mut h) = h.lock() {
        h.saturating_record(us.max(1));
    }
}

/// How long a consumer waits without progress before it gives up on
/// messages it expected.
const STALL: Duration = Duration::from_secs(10);

mod raftstream {
    use super::*;

    pub async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
        let seeds: Vec<String> = args.addr.split(',').map(str::to_string).collect();
        let mut config = ClientConfig::new(seeds);
        if let Some(t) = &args.token {
            config = config.with_token(t.clone());
        }
        let client = Client::connect(config)
            .await
            .context("connecting to Raftstream")?;
        let names: Vec<String> = if args.topics == 1 {
            vec![topic.to_string()]
        } else {
            (0..args.topics).map(|i| format!("{topic}-{i}")).collect()
        };
        let mut topics = Vec::new();
        for name in &names {
            let request = pb::CreateTopicRequest {
                name: name.clone(),
                partitions: args.partitions,
                replication_factor: args.replicas.unwrap_or(0),
                ..Default::default()
            };
            // A busy cluster (thousands of groups starting) may leave a
            // create's outcome unknown: look the topic up, retry until it
            // exists, bounded.
            let until = Instant::now() + Duration::from_secs(120);
            let topic = loop {
                match client.create_topic(request.clone()).await {
                    Ok(t) => break t,
                    Err(raftstream_client::Error::AlreadyExists(_)) => {
                        break client.topic(name).await?;
                    }
                    Err(e)
                        if (e.is_retryable()
                            || matches!(e, raftstream_client::Error::OutcomeUnknown(_)))
                            && Instant::now() < until =>
                    {
                        eprintln!("loadgen: creating topic {name}: {e}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e).context(format!("creating topic {name}")),
                }
            };
            topics.push(topic);
        }
        wait_for_leaders(&client, &topics).await?;
        if !args.setup_only {
            // A new topic's first leaders are whoever won the election; the
            // cluster then hands each partition to its preferred replica,
            // seconds later. Measured from before that, a run's figures
            // depended on whether the hand-back fell inside it.
            wait_for_preferred_leaders(&client, &topics).await?;
        }
        if args.setup_only {
            if let Some(secs) = args.await_quiesced_secs {
                wait_for_quiesced(&client, &topics, Duration::from_secs_f64(secs)).await?;
            }
            eprintln!("{} topic(s) ready", topics.len());
            return Ok(None);
        }
        let slots: Vec<Slot> = topics
            .iter()
            .enumerate()
            .flat_map(|(t, topic)| {
                topic.partitions.iter().map(move |p| Slot {
                    topic: t,
                    partition: p.partition,
                })
            })
            .collect();
        let live = args.live.then(|| {
            let h = latency_histogram().map(Mutex::new);
            h.map(Arc::new)
        });
        let live = live.transpose()?;
        let acked_live = Arc::new(Mutex::new(None::<Vec<u64>>));
        let mut live_tasks = Vec::new();
        if let Some(h) = &live {
            for (i, slot) in slots.iter().enumerate() {
                let consumer = Consumer::new(
                    &client,
                    &names[slot.topic],
                    slot.partition,
                    Position::Latest,
                )
                .await?;
                let h = h.clone();
                let acked_live = acked_live.clone();
                live_tasks.push(tokio::spawn(live_consume(consumer, run, i, h, acked_live)));
            }
        }

        let started = Instant::now();
        let failover = args.kill_leader_after_secs.map(|after| {
            tokio::spawn(kill_leader(
                client.clone(),
                topics[0].partitions[0].group_id,
                args.node_pids.clone().unwrap_or_default(),
                started + Duration::from_secs_f64(after),
            ))
        });
        let mut producers = Vec::new();
        let mut collectors = Vec::new();
        for index in 0..args.producers {
            let config = ProducerConfig {
                batch_max_records: args.batch_size.max(1),
                batch_max_bytes: (args.batch_size.max(1) * args.message_size).max(1024 * 1024),
                linger: Duration::from_millis(args.linger_ms),
                max_in_flight: args.in_flight.clamp(1, 5),
                buffer_records: (args.batch_size * args.in_flight * 2).max(1000),
                ..Default::default()
            };
            let mut per_topic = Vec::new();
            for name in &names {
                per_topic.push(Producer::new(&client, name, config.clone()).await?);
            }
            let (to_collector, collector) =
                ToCollector::start(slots.len(), window(args, slots.len()));
            collectors.push(collector);
            producers.push(tokio::spawn(produce(
                args.clone(),
                run,
                index,
                per_topic,
                slots.clone(),
                started,
                to_collector,
            )));
        }
        let publish = gather(started, collectors, producers, slots.len()).await?;
        let failover = match failover {
            Some(task) => {
                let (node, pid, killed_at) = task.await.context("the failover task panicked")??;
                Some(Failover {
                    killed_node: node,
                    killed_pid: pid,
                    first_ack_after_outage_ms: first_ack_after_outage(
                        killed_at,
                        publish.acks_after_kill.clone(),
                    )
                    .map(|t| t.duration_since(killed_at).as_secs_f64() * 1000.0),
                    first_ack_of_message_sent_after_kill_ms: publish
                        .first_ack_after_kill
                        .map(|t| t.duration_since(killed_at).as_secs_f64() * 1000.0),
                    errored_publishes: publish.errors,
                })
            }
            None => None,
        };

        finish_live(&acked_live, &publish.acked_per_slot, live_tasks).await?;
        let live = live_snapshot(live)?;

        let (catchup, reads) = if args.no_verify {
            (None, None)
        } else {
            let (n, secs, reads) = catch_up(&client, &names, &slots, &publish, run).await?;
            (Some((n, secs)), Some(reads))
        };
        Ok(Some(report(
            args,
            topic,
            &publish,
            live.as_ref(),
            catchup,
            reads.as_ref(),
            failover,
        )))
    }

    /// Polls the cluster status until every partition of `topics` has a leader.
    async fn wait_for_leaders(client: &Client, topics: &[pb::Topic]) -> anyhow::Result<()> {
        wait_for_groups(
            client,
            topics,
            Duration::from_secs(120),
            "have a leader",
            |g, _| g.leader.is_some(),
        )
        .await
    }

    /// Polls the cluster status until every partition of `topics` is led by
    /// its preferred (first) replica.
    async fn wait_for_preferred_leaders(
        client: &Client,
        topics: &[pb::Topic],
    ) -> anyhow::Result<()> {
        wait_for_groups(
            client,
            topics,
            Duration::from_secs(60),
            "have their preferred leader",
            |g, preferred| g.leader.is_some() && g.leader == preferred,
        )
        .await
    }

    /// Settled: every partition is led by its preferred (first) replica, to
    /// which the cluster hands leadership back after elections, and its
    /// leader has quiesced the idle group.
    async fn wait_for_quiesced(
        client: &Client,
        topics: &[pb::Topic],
        limit: Duration,
    ) -> anyhow::Result<()> {
        wait_for_groups(
            client,
            topics,
            limit,
            "settle (quiesced under their preferred leader)",
            |g, preferred| g.quiesced && g.leader.is_some() && g.leader == preferred,
        )
        .await
    }

    /// Polls the cluster status until every partition of `topics` is `ready`
    /// (given its status and its preferred leader).
    async fn wait_for_groups(
        client: &Client,
        topics: &[pb::Topic],
        limit: Duration,
        what: &str,
        ready: impl Fn(&pb::GroupStatus, Option<u64>) -> bool,
    ) -> anyhow::Result<()> {
        let preferred: std::collections::HashMap<u64, Option<u64>> = topics
            .iter()
            .flat_map(|t| t.partitions.iter())
            .map(|p| (p.group_id, p.replicas.first().copied()))
            .collect();
        let until = Instant::now() + limit;
        loop {
            let status = client.cluster_status().await?;
            let done = status
                .groups
                .iter()
                .filter(|g| {
                    preferred
                        .get(&g.group_id)
                        .is_some_and(|preferred| ready(g, *preferred))
                })
                .count();
            let missing = preferred.len().saturating_sub(done);
            if missing == 0 {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "{missing} of {} partitions still do not {what} after {limit:?}",
                    preferred.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn produce(
        args: Args,
        run: u32,
        index: u32,
        producers: Vec<Producer>,
        slots: Vec<Slot>,
        started: Instant,
        to_collector: ToCollector,
    ) -> anyhow::Result<()> {
        let quota = quota(&args, index);
        let deadline = deadline(&args, started);
        let mut seq = 0u64;
        // Producers start on different partitions so they do not move in lockstep.
        let offset = index as usize;
        loop {
            if quota.is_some_and(|q| seq >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let slot_index = (seq as usize + offset) % slots.len();
            let slot = &slots[slot_index];
            let stamp = Stamp {
                run,
                producer: index,
                seq,
                sent_ns: now_ns(),
            };
            let record =
                Record::new(stamp.encode_binary(args.message_size)).with_partition(slot.partition);
            to_collector.reserve(1).await?;
            let sent = Instant::now();
            let delivery = producers[slot.topic].send(record).await;
            let outcome = async move {
                match delivery {
                    Ok(d) => match d.await {
                        Ok(Ok(_ack)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the producer dropped the delivery".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            };
            let sent = Sent::one(index, slot_index, seq, sent, outcome);
            to_collector.hand_over(sent, args.one_at_a_time).await?;
            seq += 1;
        }
    }

    async fn live_consume(
        mut consumer: Consumer,
        run: u32,
        slot: usize,
        h: Arc<Mutex<Histogram<u64>>>,
        acked: Arc<Mutex<Option<Vec<u64>>>>,
    ) -> anyhow::Result<()> {
        let mut read = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let target = acked
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .as_ref()
                .map(|a| a.get(slot).copied().unwrap_or(0));
            if let Some(target) = target
                && (read >= target || last_progress.elapsed() > STALL)
            {
                return Ok(());
            }
            let messages = consumer.poll(10_000, Duration::from_millis(200)).await?;
            if !messages.is_empty() {
                last_progress = Instant::now();
            }
            for m in messages {
                if let Some(stamp) = Stamp::decode_binary(&m.value)
                    && stamp.run == run
                {
                    record_e2e(&h, &stamp);
                    read += 1;
                }
            }
        }
    }

    /// Reads every partition from the start, all partitions at once, until
    /// each has given at least what was acknowledged there and then nothing more.
    async fn catch_up(
        client: &Client,
        names: &[String],
        slots: &[Slot],
        publish: &PublishResult,
        run: u32,
    ) -> anyhow::Result<(u64, f64, Reads)> {
        let started = Instant::now();
        let limit = Arc::new(Semaphore::new(64));
        let mut tasks = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let mut consumer = Consumer::new(
                client,
                &names[slot.topic],
                slot.partition,
                Position::Offset(0),
            )
            .await?;
            let expected = publish.acked_per_slot.get(i).copied().unwrap_or(0);
            let limit = limit.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire_owned().await?;
                let mut reads = Reads::default();
                let mut mine = 0u64;
                let mut total = 0u64;
                let mut last_progress = Instant::now();
                loop {
                    let messages = consumer.poll(10_000, Duration::ZERO).await?;
                    if messages.is_empty() {
                        if mine >= expected || last_progress.elapsed() > STALL {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    last_progress = Instant::now();
                    for m in messages {
                        total += 1;
                        let stamp = Stamp::decode_binary(&m.value);
                        if stamp.is_some_and(|s| s.run == run) {
                            mine += 1;
                        }
                        reads.record(run, stamp);
                    }
                }
                anyhow::Ok((total, reads))
            }));
        }
        let mut reads = Reads::default();
        let mut total = 0;
        for t in tasks {
            let (n, r) = t.await.context("a catch-up consumer panicked")??;
            total += n;
            reads.merge(r);
        }
        Ok((total, started.elapsed().as_secs_f64(), reads))
    }

    /// Waits until `at`, finds the leader of `group`, SIGKILLs its process.
    async fn kill_leader(
        client: Client,
        group: u64,
        pids: String,
        at: Instant,
    ) -> anyhow::Result<(u64, u32, Instant)> {
        let pids: BTreeMap<u64, u32> = pids
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (id, pid) = item
                    .split_once('=')
                    .context("--node-pids takes id=pid,...")?;
                Ok((id.trim().parse()?, pid.trim().parse()?))
            })
            .collect::<anyhow::Result<_>>()?;
        tokio::time::sleep_until(at.into()).await;
        let status = client.cluster_status().await?;
        let leader = status
            .groups
            .iter()
            .find(|g| g.group_id == group)
            .and_then(|g| g.leader)
            .context("the partition has no leader to kill")?;
        let pid = *pids
            .get(&leader)
            .with_context(|| format!("no pid given for node {leader}"))?;
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("running kill")?;
        let killed_at = Instant::now();
        if !status.success() {
            bail!("kill -KILL {pid} failed");
        }
        let _ = KILLED_AT.set(killed_at);
        Ok((leader, pid, killed_at))
    }
}

mod http {
    use super::*;

    pub async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
        let base = format!("http://{}", args.addr.split(',').next().unwrap_or_default());
        let token = args.token.clone().context("--token is required for http")?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()?;
        let mut body = serde_json::json!({"name": topic, "partitions": args.partitions});
        if let Some(r) = args.replicas {
            body["replication_factor"] = r.into();
        }
        let response = http
            .post(format!("{base}/api/event_streams/topics"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() && status != reqwest::StatusCode::CONFLICT {
            bail!(
                "creating topic {topic}: {status}: {}",
                response.text().await?
            );
        }
        if args.setup_only {
            return Ok(None);
        }
        let live = if args.live {
            Some(Arc::new(Mutex::new(latency_histogram()?)))
        } else {
            None
        };
        let acked_live = Arc::new(Mutex::new(None::<u64>));
        let live_task = live.as_ref().map(|h| {
            tokio::spawn(consume(
                http.clone(),
                base.clone(),
                token.clone(),
                topic.to_string(),
                run,
                Some((h.clone(), acked_live.clone())),
                0,
            ))
        });

        let started = Instant::now();
        let mut producers = Vec::new();
        let mut collectors = Vec::new();
        for index in 0..args.producers {
            // A window of `in_flight` batches, counted in records.
            let (to_collector, collector) =
                ToCollector::start(1, args.in_flight.max(1) * args.batch_size.max(1));
            collectors.push(collector);
            producers.push(tokio::spawn(produce(
                args.clone(),
                run,
                index,
                http.clone(),
                base.clone(),
                token.clone(),
                topic.to_string(),
                started,
                to_collector,
            )));
        }
        let publish = gather(started, collectors, producers, 1).await?;
        let acked = publish.ledger.count(Outcome::Acked);
        if let Ok(mut a) = acked_live.lock() {
            *a = Some(acked);
        }
        if let Some(t) = live_task {
            t.await.context("the live consumer panicked")??;
        }
        let live = live_snapshot(live)?;
        let (catchup, reads) = if args.no_verify {
            (None, None)
        } else {
            let started = Instant::now();
            let (n, reads) = consume(
                http.clone(),
                base.clone(),
                token.clone(),
                topic.to_string(),
                run,
                None,
                acked,
            )
            .await?;
            (Some((n, started.elapsed().as_secs_f64())), Some(reads))
        };
        Ok(Some(report(
            args,
            topic,
            &publish,
            live.as_ref(),
            catchup,
            reads.as_ref(),
            None,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn produce(
        args: Args,
        run: u32,
        index: u32,
        http: reqwest::Client,
        base: String,
        token: String,
        topic: String,
        started: Instant,
        to_collector: ToCollector,
    ) -> anyhow::Result<()> {
        let quota = quota(&args, index);
        let deadline = deadline(&args, started);
        let url = format!("{base}/api/v1/batch/topics/{topic}/publish");
        let mut seq = 0u64;
        loop {
            let remaining = quota.map_or(u64::MAX, |q| q.saturating_sub(seq));
            if remaining == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let count = (args.batch_size as u64).min(remaining);
            let first = seq;
            let payloads: Vec<serde_json::Value> = (first..first + count)
                .map(|s| {
                    Stamp {
                        run,
                        producer: index,
                        seq: s,
                        sent_ns: now_ns(),
                    }
                    .encode_json(args.message_size)
                })
                .collect();
            seq += count;
            to_collector.reserve(count as u32).await?;
            let sent = Instant::now();
            let request = http
                .post(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({ "payloads": payloads }));
            let outcome = async move {
                match publish_batch(request, count).await {
                    Ok(each) => PublishOutcome::PerRecord(each),
                    Err(e) => PublishOutcome::Whole(Err(e)),
                }
            };
            let sent = Sent {
                producer: index,
                slot: 0,
                seq: first,
                count,
                sent,
                outcome: Box::pin(outcome),
                finished: None,
            };
            to_collector.hand_over(sent, args.one_at_a_time).await?;
        }
    }

    /// The live consumer's histogram and the acknowledged count, known once
    /// publishing ends.
    type Live = (Arc<Mutex<Histogram<u64>>>, Arc<Mutex<Option<u64>>>);

    /// Per item, success or the reason it failed.
    async fn publish_batch(
        request: reqwest::RequestBuilder,
        count: u64,
    ) -> Result<Vec<Result<(), String>>, String> {
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        let ids = body
            .get("message_ids")
            .and_then(|m| m.as_object())
            .ok_or_else(|| format!("no message_ids in {body}"))?;
        Ok((0..count)
            .map(|i| match ids.get(&i.to_string()) {
                Some(item) if item.get("result").and_then(|r| r.as_str()) == Some("success") => {
                    Ok(())
                }
                Some(item) => Err(item.to_string()),
                None => Err(format!("no result for item {i}")),
            })
            .collect())
    }

    /// Reads the whole topic (merged partitions) from the start: live (with
    /// latency) until the producers' acknowledged count is reached, or
    /// catching up until `expected` of this run were read and nothing more comes.
    async fn consume(
        http: reqwest::Client,
        base: String,
        token: String,
        topic: String,
        run: u32,
        live: Option<Live>,
        expected: u64,
    ) -> anyhow::Result<(u64, Reads)> {
        let url = format!("{base}/api/v1/topics/{topic}/consume");
        let mut after: Option<String> = None;
        let mut reads = Reads::default();
        let mut mine = 0u64;
        let mut total = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let target = match &live {
                Some((_, acked)) => *acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
                None => Some(expected),
            };
            let mut body = serde_json::json!({
                "batch_size": 50,
                "timeout_secs": if live.is_some() { 1 } else { 0 },
            });
            if let Some(a) = &after {
                body["after_message_id"] = a.clone().into();
            }
            let response = http
                .post(&url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await?;
            if !status.is_success() {
                bail!("consume: {status}: {answer}");
            }
            let messages = answer
                .get("messages")
                .and_then(|m| m.as_array())
                .cloned()
                .unwrap_or_default();
            if messages.is_empty() {
                if let Some(target) = target
                    && (mine >= target || last_progress.elapsed() > STALL)
                {
                    return Ok((total, reads));
                }
                if live.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
            last_progress = Instant::now();
            for m in messages {
                total += 1;
                if let Some(id) = m.get("message_id").and_then(|i| i.as_str()) {
                    after = Some(id.to_string());
                }
                let stamp = m.get("payload").and_then(Stamp::decode_json);
                if let Some(s) = stamp
                    && s.run == run
                {
                    mine += 1;
                    if let Some((h, _)) = &live {
                        record_e2e(h, &s);
                    }
                }
                reads.record(run, stamp);
            }
        }
    }
}

mod nats {
    use async_nats::jetstream;
    use async_nats::jetstream::consumer::pull;

    use super::*;

    pub async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
        let servers = args
            .addr
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("--addr takes NATS URLs separated by commas")?;
        let client = async_nats::ConnectOptions::new()
            .connect(servers)
            .await
            .context("connecting to NATS")?;
        let window = window(args, args.partitions as usize);
        // Acks wait up to two minutes: with every write forced to disk a
        // full window of publishes takes JetStream far longer than the
        // client's default five seconds to acknowledge.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(120))
            .max_ack_inflight(window * args.producers.max(1) as usize + 16)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let config = jetstream::stream::Config {
            name: topic.to_string(),
            subjects: vec![format!("{topic}.>")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: args.replicas.unwrap_or(1) as usize,
            ..Default::default()
        };
        // A cluster that has just started may not have elected its JetStream
        // meta leader yet: retry for a bounded time.
        let until = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match js.create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < until => {
                    tracing_free_log(&format!("JetStream not ready ({e}); retrying"));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("creating the JetStream stream"),
            }
        };
        if args.setup_only {
            return Ok(None);
        }
        let subjects: Vec<String> = (0..args.partitions)
            .map(|p| format!("{topic}.{p}"))
            .collect();
        let live = if args.live {
            Some(Arc::new(Mutex::new(latency_histogram()?)))
        } else {
            None
        };
        let acked_live = Arc::new(Mutex::new(None::<Vec<u64>>));
        let mut live_tasks = Vec::new();
        if let Some(h) = &live {
            for (i, subject) in subjects.iter().enumerate() {
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: subject.clone(),
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        ..Default::default()
                    })
                    .await?;
                live_tasks.push(tokio::spawn(read_subject(
                    consumer,
                    run,
                    i,
                    Some(h.clone()),
                    acked_live.clone(),
                )));
            }
        }

        let started = Instant::now();
        let mut producers = Vec::new();
        let mut collectors = Vec::new();
        for index in 0..args.producers {
            let (to_collector, collector) = ToCollector::start(subjects.len(), window);
            collectors.push(collector);
            producers.push(tokio::spawn(produce(
                args.clone(),
                run,
                index,
                js.clone(),
                subjects.clone(),
                started,
                to_collector,
            )));
        }
        let publish = gather(started, collectors, producers, subjects.len()).await?;
        finish_live(&acked_live, &publish.acked_per_slot, live_tasks).await?;
        let live = live_snapshot(live)?;
        let (catchup, reads) = if args.no_verify {
            (None, None)
        } else {
            let expected = Arc::new(Mutex::new(Some(publish.acked_per_slot.clone())));
            let mut consumers = Vec::new();
            for subject in &subjects {
                consumers.push(
                    stream
                        .create_consumer(pull::OrderedConfig {
                            filter_subject: subject.clone(),
                            deliver_policy: jetstream::consumer::DeliverPolicy::All,
                            ..Default::default()
                        })
                        .await?,
                );
            }
            let started = Instant::now();
            let mut tasks = Vec::new();
            for (i, consumer) in consumers.into_iter().enumerate() {
                tasks.push(tokio::spawn(read_subject(
                    consumer,
                    run,
                    i,
                    None,
                    expected.clone(),
                )));
            }
            let mut reads = Reads::default();
            let mut total = 0;
            for t in tasks {
                let (n, r) = t.await.context("a catch-up consumer panicked")??;
                total += n;
                reads.merge(r);
            }
            (Some((total, started.elapsed().as_secs_f64())), Some(reads))
        };
        let _ = js.delete_stream(topic).await;
        Ok(Some(report(
            args,
            topic,
            &publish,
            live.as_ref(),
            catchup,
            reads.as_ref(),
            None,
        )))
    }

    #[allow(clippy::too_many_arguments)]
    async fn produce(
        args: Args,
        run: u32,
        index: u32,
        js: jetstream::Context,
        subjects: Vec<String>,
        started: Instant,
        to_collector: ToCollector,
    ) -> anyhow::Result<()> {
        let quota = quota(&args, index);
        let deadline = deadline(&args, started);
        let mut seq = 0u64;
        loop {
            if quota.is_some_and(|q| seq >= q) || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            let slot = (seq as usize + index as usize) % subjects.len();
            let payload = Stamp {
                run,
                producer: index,
                seq,
                sent_ns: now_ns(),
            }
            .encode_binary(args.message_size);
            to_collector.reserve(1).await?;
            let sent = Instant::now();
            let publish = js
                .publish(subjects[slot].clone(), bytes::Bytes::from(payload))
                .await;
            let outcome = async move {
                match publish {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            let sent = Sent::one(index, slot, seq, sent, outcome);
            to_collector.hand_over(sent, args.one_at_a_time).await?;
            seq += 1;
        }
    }

    fn tracing_free_log(message: &str) {
        eprintln!("loadgen: {message}");
    }

    /// Reads one subject through an ordered consumer until this run's
    /// acknowledged count for it (known once publishing ends) was read and
    /// the consumer has nothing pending.
    async fn read_subject(
        consumer: jetstream::consumer::Consumer<pull::OrderedConfig>,
        run: u32,
        slot: usize,
        live: Option<Arc<Mutex<Histogram<u64>>>>,
        acked: Arc<Mutex<Option<Vec<u64>>>>,
    ) -> anyhow::Result<(u64, Reads)> {
        let mut messages = consumer.messages().await?;
        let mut reads = Reads::default();
        let mut mine = 0u64;
        let mut total = 0u64;
        let mut last_progress = Instant::now();
        let mut pending_zero = false;
        loop {
            let target = acked
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .as_ref()
                .map(|a| a.get(slot).copied().unwrap_or(0));
            if let Some(target) = target
                && ((mine >= target && (pending_zero || live.is_some()))
                    || last_progress.elapsed() > STALL)
            {
                return Ok((total, reads));
            }
            let next = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await
            {
                Ok(Some(m)) => m?,
                Ok(None) => return Ok((total, reads)),
                Err(_) => {
                    pending_zero = true;
                    continue;
                }
            };
            last_progress = Instant::now();
            total += 1;
            pending_zero = next.info().map(|i| i.pending == 0).unwrap_or(false);
            let stamp = Stamp::decode_binary(&next.payload);
            if let Some(s) = stamp
                && s.run == run
            {
                mine += 1;
                if let Some(h) = &live {
                    record_e2e(h, &s);
                }
            }
            reads.record(run, stamp);
        }
    }
}

/// Tells the live consumers how much was acknowledged per slot, so they
/// know when they have read everything, and waits for them.
async fn finish_live<T>(
    acked_live: &Mutex<Option<Vec<u64>>>,
    acked_per_slot: &[u64],
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<T>>>,
) -> anyhow::Result<()> {
    if let Ok(mut acked) = acked_live.lock() {
        *acked = Some(acked_per_slot.to_vec());
    }
    for task in tasks {
        task.await.context("a live consumer panicked")??;
    }
    Ok(())
}

/// The live consumers' end-to-end latencies, once they are done.
fn live_snapshot(
    live: Option<Arc<Mutex<Histogram<u64>>>>,
) -> anyhow::Result<Option<Histogram<u64>>> {
    live.map(|h| {
        h.lock()
            .map(|h| h.clone())
            .map_err(|_| anyhow::anyhow!("live histogram poisoned"))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    fn sent(slot: usize, seq: u64, count: u64, outcome: oneshot::Receiver<PublishOutcome>) -> Sent {
        Sent {
            producer: 0,
            slot,
            seq,
            count,
            sent: Instant::now(),
            outcome: Box::pin(async move {
                outcome
                    .await
                    .unwrap_or(PublishOutcome::Whole(Err("dropped".to_string())))
            }),
            finished: None,
        }
    }

    /// Publishes that resolve out of order, across slots and within one,
    /// are each recorded once, and their places in the window come back.
    #[tokio::test]
    async fn the_collector_records_every_outcome_and_returns_the_window() -> anyhow::Result<()> {
        let (to_collector, collector) = ToCollector::start(2, 10);
        to_collector.reserve(10).await?;
        let mut outcomes = Vec::new();
        let shapes = [(0, 0, 1), (0, 1, 1), (1, 2, 4), (0, 6, 1), (1, 7, 3)];
        for (slot, seq, count) in shapes {
            let (resolve, outcome) = oneshot::channel();
            to_collector
                .hand_over(sent(slot, seq, count, outcome), false)
                .await?;
            outcomes.push(resolve);
        }
        // Resolve the last first, and the head of slot 0 after the one
        // behind it.
        let mut resolves = outcomes.into_iter().map(Some).collect::<Vec<_>>();
        let mut resolve = |i: usize, outcome: PublishOutcome| {
            if let Some(r) = resolves[i].take() {
                let _ = r.send(outcome);
            }
        };
        resolve(4, PublishOutcome::Whole(Ok(())));
        resolve(1, PublishOutcome::Whole(Err("refused".to_string())));
        resolve(0, PublishOutcome::Whole(Ok(())));
        resolve(3, PublishOutcome::Whole(Ok(())));
        // A per-record answer one short: the missing record counts as failed.
        resolve(
            2,
            PublishOutcome::PerRecord(vec![Ok(()), Err("too big".to_string()), Ok(())]),
        );
        let window = to_collector.window.clone();
        drop(to_collector);
        let c = tokio::time::timeout(Duration::from_secs(10), collector).await???;
        assert_eq!(c.ledger.count(Outcome::Acked), 1 + 2 + 1 + 3);
        assert_eq!(c.ledger.count(Outcome::Errored), 1 + 2);
        assert_eq!(c.errors, 3);
        assert_eq!(c.acked_per_slot, vec![2, 5]);
        assert_eq!(c.first_error.as_deref(), Some("refused"));
        assert_eq!(c.latency.len(), 7);
        assert_eq!(window.available_permits(), 10);
        Ok(())
    }

    /// A publish behind a slow one starts when it is handed over: its
    /// timeout runs while the one before it is still pending.
    #[tokio::test(start_paused = true)]
    async fn a_publish_behind_a_slow_one_times_out_on_its_own_clock() -> anyhow::Result<()> {
        let (to_collector, collector) = ToCollector::start(1, 2);
        to_collector.reserve(2).await?;
        let start = tokio::time::Instant::now();
        let (resolve, outcome) = oneshot::channel();
        to_collector
            .hand_over(sent(0, 0, 1, outcome), false)
            .await?;
        let behind = Sent::one(0, 0, 1, Instant::now(), async {
            tokio::time::timeout(Duration::from_secs(5), std::future::pending::<()>())
                .await
                .map_err(|_| "timed out".to_string())
        });
        to_collector.hand_over(behind, false).await?;
        drop(to_collector);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = resolve.send(PublishOutcome::Whole(Ok(())));
        let c = collector.await??;
        assert_eq!(c.errors, 1);
        // Timed out 5 s after it was handed over, so it was done as soon as
        // the head was; started by the collector, it would end at 15 s.
        assert!(
            start.elapsed() < Duration::from_secs(11),
            "{:?}",
            start.elapsed()
        );
        Ok(())
    }

    /// A publish the producer already waited for keeps the time it finished.
    #[tokio::test]
    async fn a_publish_resolved_by_the_producer_keeps_its_finish_time() -> anyhow::Result<()> {
        let (to_collector, collector) = ToCollector::start(1, 1);
        to_collector.reserve(1).await?;
        let (resolve, outcome) = oneshot::channel();
        let _ = resolve.send(PublishOutcome::Whole(Ok(())));
        let before = Instant::now();
        to_collector.hand_over(sent(0, 0, 1, outcome), true).await?;
        let after = Instant::now();
        let window = to_collector.window.clone();
        drop(to_collector);
        let c = tokio::time::timeout(Duration::from_secs(10), collector).await???;
        // Timed when the producer had it, not when the collector did.
        let finished = c.last_finished.context("no finish time")?;
        assert!(before <= finished && finished <= after);
        assert_eq!(c.ledger.count(Outcome::Acked), 1);
        assert_eq!(window.available_permits(), 1);
        Ok(())
    }
}
