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

use crate::args::Args;
use crate::args::window;
use crate::collect::ProducerTask;
use crate::collect::ToCollector;
use crate::collect::gather;
use crate::collect::produce_each;
use crate::consume::LiveConsumers;
use crate::consume::STALL;
use crate::consume::acked_on;
use crate::consume::join_catch_up;
use crate::consume::record_e2e;
use crate::consume::timed_catch_up;
use crate::report::Report;
use crate::report::report_after_catch_up;

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
    let live = LiveConsumers::start(args, subjects.len(), async |slot, (h, acked)| {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects[slot].clone(),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        Ok(tokio::spawn(read_subject(
            consumer,
            run,
            slot,
            Some(h),
            acked,
        )))
    })
    .await?;

    let started = Instant::now();
    let mut producers = Vec::new();
    let mut collectors = Vec::new();
    for index in 0..args.producers {
        let (to_collector, collector) = ToCollector::start(subjects.len(), window);
        collectors.push(collector);
        let task = ProducerTask::new(args, run, index, started, to_collector);
        producers.push(tokio::spawn(produce(task, js.clone(), subjects.clone())));
    }
    let publish = gather(started, collectors, producers, subjects.len()).await?;
    let live = live.finish(&publish.acked_per_slot).await?;
    let catch_up = async {
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
        timed_catch_up(async {
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
            join_catch_up(tasks).await
        })
        .await
    };
    let report = report_after_catch_up(args, topic, &publish, live, None, catch_up).await?;
    let _ = js.delete_stream(topic).await;
    Ok(Some(report))
}

async fn produce(
    task: ProducerTask,
    js: jetstream::Context,
    subjects: Vec<String>,
) -> anyhow::Result<()> {
    // A future of a future on purpose: see `produce_each`.
    #[allow(clippy::async_yields_async)]
    let send = |slot: usize, payload: Vec<u8>| {
        let publish = js.publish(subjects[slot].clone(), bytes::Bytes::from(payload));
        async move {
            let publish = publish.await;
            async move {
                match publish {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    produce_each(task, subjects.len(), send).await
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
        let target = acked_on(&acked, slot)?;
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
