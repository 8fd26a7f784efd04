//! The collectors: they resolve each producer's publishes as they finish,
//! record every record's outcome and latency, and merge into the publish
//! half of a report. Every back end goes through this same code.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use raftstream_benches::Ledger;
use raftstream_benches::Outcome;
use raftstream_benches::Stamp;
use raftstream_benches::latency_histogram;
use raftstream_benches::now_ns;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;

use crate::args::Args;
use crate::args::deadline;
use crate::args::quota;

/// How a publish of one or more records ended.
pub(crate) enum PublishOutcome {
    /// The same for every record of the publish.
    Whole(Result<(), String>),
    /// One per record, in order.
    PerRecord(Vec<Result<(), String>>),
}

/// A publish of records `seq..seq + count` of one producer, all to one slot,
/// handed to the producer's collector while its outcome is pending.
pub(crate) struct Sent {
    pub(crate) producer: u32,
    /// Index into the run's partition list.
    pub(crate) slot: usize,
    pub(crate) seq: u64,
    pub(crate) count: u64,
    pub(crate) sent: Instant,
    pub(crate) outcome: BoxFuture<'static, PublishOutcome>,
    /// Set when the producer waited for the outcome itself (one at a time).
    pub(crate) finished: Option<Instant>,
}

impl Sent {
    /// One record's publish, sent at `sent`.
    pub(crate) fn one(
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
pub(crate) struct ToCollector {
    tx: mpsc::Sender<Sent>,
    window: Arc<Semaphore>,
}

impl ToCollector {
    /// Starts a collector for publishes to `slots` slots, with a window of
    /// `records` pending records.
    pub(crate) fn start(
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
    pub(crate) async fn reserve(&self, records: u32) -> anyhow::Result<()> {
        self.window.acquire_many(records).await?.forget();
        Ok(())
    }

    /// Hands `sent` to the collector, started (see [`Sent::started`]).
    pub(crate) async fn hand_over(&self, sent: Sent, one_at_a_time: bool) -> anyhow::Result<()> {
        self.tx
            .send(sent.started(one_at_a_time).await)
            .await
            .map_err(|_| anyhow::anyhow!("the collector stopped"))
    }
}

/// What the collector of one producer found.
pub(crate) struct Collected {
    ledger: Ledger,
    latency: Histogram<u64>,
    acked_per_slot: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    last_finished: Option<Instant>,
    first_ack_after_kill: Option<Instant>,
    /// When each acknowledgement after the kill arrived.
    acks_after_kill: Vec<Instant>,
    /// Per slot: its last acknowledgement so far and the longest gap
    /// between two of its acknowledgements (the partition's unavailability
    /// in a failover or rolling-restart run, as this producer saw it).
    ack_gaps: Vec<(Option<Instant>, Duration)>,
}

/// The kill instant of a failover run, set once.
pub(crate) static KILLED_AT: OnceLock<Instant> = OnceLock::new();

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
        ack_gaps: vec![(None, Duration::ZERO); slots],
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
                if let Some((last, longest)) = self.ack_gaps.get_mut(sent.slot) {
                    if let Some(last) = last {
                        *longest = (*longest).max(finished.saturating_duration_since(*last));
                    }
                    *last = Some(last.map_or(finished, |t| t.max(finished)));
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
pub(crate) struct PublishResult {
    pub(crate) ledger: Ledger,
    pub(crate) latency: Histogram<u64>,
    pub(crate) acked_per_slot: Vec<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) secs: f64,
    pub(crate) first_ack_after_kill: Option<Instant>,
    pub(crate) acks_after_kill: Vec<Instant>,
    /// The longest gap between two acknowledgements of one partition seen
    /// by one producer (with one producer: the longest a partition took no
    /// publish).
    pub(crate) max_partition_gap: Duration,
}

pub(crate) async fn gather(
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
        max_partition_gap: Duration::ZERO,
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
        for (_, gap) in c.ack_gaps {
            out.max_partition_gap = out.max_partition_gap.max(gap);
        }
        if let Some(t) = c.first_ack_after_kill {
            out.first_ack_after_kill =
                Some(out.first_ack_after_kill.map_or(t, |o: Instant| o.min(t)));
        }
    }
    out.secs = last.duration_since(started).as_secs_f64().max(1e-9);
    Ok(out)
}

/// What every producer task starts with, whatever the back end.
pub(crate) struct ProducerTask {
    pub(crate) args: Args,
    /// The run's id, stamped into every message.
    pub(crate) run: u32,
    /// Which producer this is.
    pub(crate) index: u32,
    /// When publishing started, from which `--duration-secs` counts.
    pub(crate) started: Instant,
    pub(crate) to_collector: ToCollector,
}

impl ProducerTask {
    pub(crate) fn new(
        args: &Args,
        run: u32,
        index: u32,
        started: Instant,
        to_collector: ToCollector,
    ) -> ProducerTask {
        ProducerTask {
            args: args.clone(),
            run,
            index,
            started,
            to_collector,
        }
    }

    /// How many more messages this producer may send, `sent` messages in:
    /// none once its share of `--messages` is sent or `--duration-secs` is
    /// up, and no limit when neither bounds the run.
    pub(crate) fn may_send(&self, sent: u64) -> u64 {
        if deadline(&self.args, self.started).is_some_and(|d| Instant::now() >= d) {
            return 0;
        }
        quota(&self.args, self.index).map_or(u64::MAX, |q| q.saturating_sub(sent))
    }

    /// The stamp of this producer's message `seq`, sent now.
    pub(crate) fn stamp(&self, seq: u64) -> Stamp {
        Stamp {
            run: self.run,
            producer: self.index,
            seq,
            sent_ns: now_ns(),
        }
    }
}

/// One producer of a back end that publishes a message at a time: until its
/// share of `--messages` is sent or `--duration-secs` is up, it stamps the
/// next message, `send`s it to its slot and hands the outcome `send`
/// resolves to over to the collector. Producers start on different slots so
/// they do not move in lockstep.
///
/// `send` resolves once the message is sent, to a future of its
/// acknowledgement, which the collector awaits.
pub(crate) async fn produce_each<Publishing, Acked>(
    task: ProducerTask,
    slots: usize,
    mut send: impl FnMut(usize, Vec<u8>) -> Publishing,
) -> anyhow::Result<()>
where
    Publishing: Future<Output = Acked>,
    Acked: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut seq = 0u64;
    while task.may_send(seq) > 0 {
        let slot = (seq as usize + task.index as usize) % slots;
        let payload = task.stamp(seq).encode_binary(task.args.message_size);
        task.to_collector.reserve(1).await?;
        let sent = Instant::now();
        let outcome = send(slot, payload).await;
        let sent = Sent::one(task.index, slot, seq, sent, outcome);
        task.to_collector
            .hand_over(sent, task.args.one_at_a_time)
            .await?;
        seq += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
