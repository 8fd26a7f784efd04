//! The result of a run: built from the publish and consume halves, printed
//! as text or serialized as one JSON object.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use raftstream_benches::LatencySummary;
use raftstream_benches::Outcome;
use raftstream_benches::Reads;
use raftstream_benches::Verification;
use raftstream_benches::verify;
use serde::Serialize;

use crate::args::Args;
use crate::args::System;
use crate::collect::PublishResult;
use crate::consume::live_snapshot;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) system: System,
    pub(crate) topic: String,
    pub(crate) topics: u32,
    pub(crate) partitions: u32,
    pub(crate) replicas: Option<u32>,
    pub(crate) message_size: usize,
    pub(crate) producers: u32,
    pub(crate) in_flight: usize,
    pub(crate) batch_size: usize,
    pub(crate) linger_ms: u64,
    pub(crate) one_at_a_time: bool,
    pub(crate) publish_secs: f64,
    pub(crate) acked: u64,
    pub(crate) errored: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) publish_msgs_per_sec: f64,
    pub(crate) publish_mb_per_sec: f64,
    pub(crate) publish_to_ack: LatencySummary,
    pub(crate) publish_to_consume: Option<LatencySummary>,
    pub(crate) catchup_msgs_per_sec: Option<f64>,
    pub(crate) catchup_mb_per_sec: Option<f64>,
    pub(crate) catchup_read: Option<u64>,
    pub(crate) verification: Option<Verification>,
    pub(crate) failover: Option<Failover>,
    /// The longest gap between two acknowledgements of one partition (by
    /// one producer): with one producer, the longest any partition took no
    /// publish, its unavailability in a failover or rolling restart.
    pub(crate) max_partition_gap_ms: f64,
}

#[derive(Debug, Serialize, Clone)]
pub(crate) struct Failover {
    pub(crate) killed_node: u64,
    pub(crate) killed_pid: u32,
    /// From the kill to the first acknowledgement after the outage: the
    /// first ack that follows a gap of more than 200 ms without any (acks
    /// of requests the old leader answered just before dying arrive within
    /// milliseconds of the kill, so they come before that gap).
    pub(crate) first_ack_after_outage_ms: Option<f64>,
    /// From the kill to the first acknowledgement of a message published
    /// after it: includes the wait behind the batches that were in flight
    /// (the producer keeps each partition's batches in order).
    pub(crate) first_ack_of_message_sent_after_kill_ms: Option<f64>,
    pub(crate) errored_publishes: u64,
}

pub(crate) fn print_report(r: &Report) {
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
    println!(
        "longest gap between acknowledgements of one partition: {:.0} ms",
        r.max_partition_gap_ms
    );
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
pub(crate) fn first_ack_after_outage(
    killed_at: Instant,
    mut acks: Vec<Instant>,
) -> Option<Instant> {
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
/// Ends a run once publishing and the live consumers are done: unless
/// `--no-verify`, reads everything back with `catch_up` (which returns the
/// messages it read, the seconds that took and what it read), then builds
/// the report.
pub(crate) async fn report_after_catch_up(
    args: &Args,
    topic: &str,
    publish: &PublishResult,
    live: Option<Arc<Mutex<Histogram<u64>>>>,
    failover: Option<Failover>,
    catch_up: impl Future<Output = anyhow::Result<(u64, f64, Reads)>>,
) -> anyhow::Result<Report> {
    let live = live_snapshot(live)?;
    let (catchup, reads) = if args.no_verify {
        (None, None)
    } else {
        let (n, secs, reads) = catch_up.await?;
        (Some((n, secs)), Some(reads))
    };
    Ok(report(
        args,
        topic,
        publish,
        live.as_ref(),
        catchup,
        reads.as_ref(),
        failover,
    ))
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
        max_partition_gap_ms: publish.max_partition_gap.as_secs_f64() * 1000.0,
    }
}
