//! Raftstream over gRPC, through the Rust client's batching producer and
//! its consumers; also the failover run (the leader of a partition
//! SIGKILLed mid-run).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use hdrhistogram::Histogram;
use raftstream_benches::Reads;
use raftstream_benches::Stamp;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Consumer;
use raftstream_client::Position;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_client::pb;
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::args::window;
use crate::collect::KILLED_AT;
use crate::collect::ProducerTask;
use crate::collect::PublishResult;
use crate::collect::ToCollector;
use crate::collect::gather;
use crate::collect::produce_each;
use crate::consume::LiveConsumers;
use crate::consume::STALL;
use crate::consume::acked_on;
use crate::consume::join_catch_up;
use crate::consume::record_e2e;
use crate::consume::timed_catch_up;
use crate::report::Failover;
use crate::report::Report;
use crate::report::first_ack_after_outage;
use crate::report::report_after_catch_up;

/// One partition of the run: which topic and which partition in it.
#[derive(Debug, Clone)]
struct Slot {
    topic: usize,
    partition: u32,
}

pub(crate) async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
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
    let live = LiveConsumers::start(args, slots.len(), async |i, (h, acked)| {
        let slot = &slots[i];
        let consumer = Consumer::new(
            &client,
            &names[slot.topic],
            slot.partition,
            Position::Latest,
        )
        .await?;
        Ok(tokio::spawn(live_consume(consumer, run, i, h, acked)))
    })
    .await?;

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
        let (to_collector, collector) = ToCollector::start(slots.len(), window(args, slots.len()));
        collectors.push(collector);
        let task = ProducerTask::new(args, run, index, started, to_collector);
        producers.push(tokio::spawn(produce(task, per_topic, slots.clone())));
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

    let live = live.finish(&publish.acked_per_slot).await?;
    let catch_up = timed_catch_up(catch_up(&client, &names, &slots, &publish, run));
    let report = report_after_catch_up(args, topic, &publish, live, failover, catch_up).await?;
    Ok(Some(report))
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
async fn wait_for_preferred_leaders(client: &Client, topics: &[pb::Topic]) -> anyhow::Result<()> {
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
    task: ProducerTask,
    producers: Vec<Producer>,
    slots: Vec<Slot>,
) -> anyhow::Result<()> {
    // A future of a future on purpose: see `produce_each`.
    #[allow(clippy::async_yields_async)]
    let send = |slot: usize, payload: Vec<u8>| {
        let slot = &slots[slot];
        let record = Record::new(payload).with_partition(slot.partition);
        let delivery = producers[slot.topic].send(record);
        async move {
            let delivery = delivery.await;
            async move {
                match delivery {
                    Ok(d) => match d.await {
                        Ok(Ok(_ack)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("the producer dropped the delivery".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    };
    produce_each(task, slots.len(), send).await
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
        let target = acked_on(&acked, slot)?;
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
) -> anyhow::Result<(u64, Reads)> {
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
    join_catch_up(tasks).await
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
