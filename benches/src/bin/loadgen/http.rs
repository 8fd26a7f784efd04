//! Raftstream's HTTP gateway: batch publishes of up to 100 JSON records and
//! consumes, over reqwest.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use hdrhistogram::Histogram;
use raftstream_benches::Outcome;
use raftstream_benches::Reads;
use raftstream_benches::Stamp;

use crate::args::Args;
use crate::collect::ProducerTask;
use crate::collect::PublishOutcome;
use crate::collect::Sent;
use crate::collect::ToCollector;
use crate::collect::gather;
use crate::consume::STALL;
use crate::consume::live_histogram;
use crate::consume::record_e2e;
use crate::consume::timed_catch_up;
use crate::report::Report;
use crate::report::report_after_catch_up;

pub(crate) async fn run(args: &Args, run: u32, topic: &str) -> anyhow::Result<Option<Report>> {
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
    let live = live_histogram(args)?;
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
        let task = ProducerTask::new(args, run, index, started, to_collector);
        producers.push(tokio::spawn(produce(
            task,
            http.clone(),
            base.clone(),
            token.clone(),
            topic.to_string(),
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
    let catch_up = timed_catch_up(consume(
        http.clone(),
        base.clone(),
        token.clone(),
        topic.to_string(),
        run,
        None,
        acked,
    ));
    let report = report_after_catch_up(args, topic, &publish, live, None, catch_up).await?;
    Ok(Some(report))
}

async fn produce(
    task: ProducerTask,
    http: reqwest::Client,
    base: String,
    token: String,
    topic: String,
) -> anyhow::Result<()> {
    let (args, to_collector) = (&task.args, &task.to_collector);
    let url = format!("{base}/api/v1/batch/topics/{topic}/publish");
    let mut seq = 0u64;
    loop {
        let remaining = task.may_send(seq);
        if remaining == 0 {
            return Ok(());
        }
        let count = (args.batch_size as u64).min(remaining);
        let first = seq;
        let payloads: Vec<serde_json::Value> = (first..first + count)
            .map(|s| task.stamp(s).encode_json(args.message_size))
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
            producer: task.index,
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
            Some(item) if item.get("result").and_then(|r| r.as_str()) == Some("success") => Ok(()),
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
