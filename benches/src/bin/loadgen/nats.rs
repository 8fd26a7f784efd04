//! NATS JetStream through async-nats: one stream with a subject per
//! partition, publishes with an ack window, ordered pull consumers.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use hdrhistogram::Histogram;
use raftstream_benches::Reads;
use raftstream_benches::Stamp;
use raftstream_benches::latency_histogram;
use raftstream_benches::now_ns;

use crate::args::Args;
use crate::args::deadline;
use crate::args::quota;
use crate::args::window;
use crate::collect::Sent;
use crate::collect::ToCollector;
use crate::collect::gather;
use crate::consume::STALL;
use crate::consume::finish_live;
use crate::consume::live_snapshot;
use crate::consume::record_e2e;
use crate::report::Report;
use crate::report::report;

pub(crate) async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
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
        let next = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
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
