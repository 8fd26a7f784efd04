//! `loadgen`: drives Raftstream (gRPC through the client library, or the HTTP
//! gateway) or NATS JetStream with one workload, reports throughput and
//! latency, and verifies that consumers read exactly what was acknowledged.
//!
//! A run: create a fresh topic (stream), publish from `--producers`
//! producers (pipelined, or one message at a time), optionally consume live
//! for publish-to-consume latency, then consume everything from the start
//! (the catch-up figure) and check it against the acknowledgements.
//! `--json` prints the figures as one JSON object for scripts.

mod args;
mod collect;
mod consume;
mod http;
mod nats;
mod raftstream;
mod report;

use anyhow::bail;
use clap::Parser;
use raftstream_benches::now_ns;

use crate::args::Args;
use crate::args::System;
use crate::report::print_report;

/// glibc's allocator spent 40% of loadgen's CPU in malloc and free of
/// per-message buffers freed on other threads; mimalloc keeps per-thread
/// heaps. (The node keeps glibc's: under mimalloc an idle node with 250
/// partitions held 770 MB resident instead of 102 MB.) It is built without
/// transparent huge pages (the workspace's `no_thp` feature): with them, a
/// loadgen started after other work spent 2.1-2.3 s of system time per
/// million messages zeroing and compacting 2 MiB pages, against 0.8 s.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
