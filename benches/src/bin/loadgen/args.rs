//! The command line, and what it decides for every back end: how many
//! messages each producer sends, until when, and how many may be pending.

use std::time::Duration;
use std::time::Instant;

use clap::Parser;
use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum System {
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
pub(crate) struct Args {
    #[arg(long, value_enum, default_value = "raftstream")]
    pub(crate) system: System,
    /// Comma-separated seeds: gRPC host:port (raftstream), host:port of
    /// one HTTP gateway (http), or NATS URLs (nats).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub(crate) addr: String,
    /// Raftstream bearer token (admin or with publish, consume and admin scopes).
    #[arg(long, env = "RAFTSTREAM_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Topic (stream) name; a fresh one per run by default. An existing
    /// Raftstream topic is reused (messages of earlier runs are skipped).
    #[arg(long)]
    pub(crate) topic: Option<String>,
    /// Topics to spread the load over (raftstream only): NAME-0, NAME-1, ...
    #[arg(long, default_value_t = 1)]
    pub(crate) topics: u32,
    #[arg(long, default_value_t = 1)]
    pub(crate) partitions: u32,
    /// Replicas per partition (stream); the server's default when absent.
    #[arg(long)]
    pub(crate) replicas: Option<u32>,
    /// Bytes per message value (at least 24: the stamp every message carries).
    #[arg(long, default_value_t = 1024)]
    pub(crate) message_size: usize,
    /// Concurrent producers; each spreads its messages over every partition.
    #[arg(long, default_value_t = 1)]
    pub(crate) producers: u32,
    /// Batches in flight per partition and producer (raftstream: 1-5; nats:
    /// the ack window is in-flight × batch-size messages; http: concurrent requests).
    #[arg(long, default_value_t = 5)]
    pub(crate) in_flight: usize,
    /// Records per batch (http: at most 100).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 5)]
    pub(crate) linger_ms: u64,
    /// Each producer sends one message and waits for its acknowledgement
    /// before the next (latency mode): batch 1, in flight 1, no linger.
    #[arg(long)]
    pub(crate) one_at_a_time: bool,
    /// Messages in total over all producers.
    #[arg(long, conflicts_with = "duration_secs")]
    pub(crate) messages: Option<u64>,
    /// Publish for this long instead of a message count.
    #[arg(long)]
    pub(crate) duration_secs: Option<f64>,
    /// Consume live while publishing, for publish-to-consume latency.
    #[arg(long)]
    pub(crate) live: bool,
    /// Skip the catch-up consume and the verification.
    #[arg(long)]
    pub(crate) no_verify: bool,
    /// Only create the topics and wait for their leaders.
    #[arg(long)]
    pub(crate) setup_only: bool,
    /// With --setup-only (raftstream): then wait, at most this long, until
    /// every partition's leader reports the group quiesced (idle, timers
    /// stopped), so that idle CPU is measured once the cluster has settled.
    #[arg(long, requires = "setup_only")]
    pub(crate) await_quiesced_secs: Option<f64>,
    /// Failover (raftstream): this long after publishing starts, SIGKILL the
    /// node leading partition 0 of the first topic. Needs --node-pids.
    #[arg(long, requires = "node_pids")]
    pub(crate) kill_leader_after_secs: Option<f64>,
    /// Node id → process id of every node: 1=PID,2=PID,3=PID.
    #[arg(long)]
    pub(crate) node_pids: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// How many messages producer `index` sends, or `None` to send until the deadline.
pub(crate) fn quota(args: &Args, index: u32) -> Option<u64> {
    args.messages.map(|total| {
        let n = u64::from(args.producers);
        total / n + u64::from(u64::from(index) < total % n)
    })
}

pub(crate) fn deadline(args: &Args, started: Instant) -> Option<Instant> {
    args.duration_secs
        .map(|s| started + Duration::from_secs_f64(s))
}

/// How many unacknowledged messages one producer may have outstanding:
/// every partition's batches in flight, but at most 32 MiB of messages
/// (like Kafka's `buffer.memory`). Both systems get the same window, so a
/// duration-bound run measures throughput rather than how fast an
/// unbounded client-side queue fills.
pub(crate) fn window(args: &Args, partitions: usize) -> usize {
    let batches = args.in_flight.max(1) * args.batch_size.max(1) * partitions.max(1);
    batches.min((32 << 20) / args.message_size.max(1)).max(1)
}
