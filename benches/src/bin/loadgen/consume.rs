//! What the back ends' consumers share: live publish-to-consume latency
//! and when to stop waiting for messages.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use raftstream_benches::Reads;
use raftstream_benches::Stamp;
use raftstream_benches::latency_histogram;
use raftstream_benches::now_ns;

use crate::args::Args;

/// The histogram the live consumers record into, when `--live` asks for them.
pub(crate) fn live_histogram(args: &Args) -> anyhow::Result<Option<Arc<Mutex<Histogram<u64>>>>> {
    let histogram = args.live.then(latency_histogram).transpose()?;
    Ok(histogram.map(|h| Arc::new(Mutex::new(h))))
}

/// Records publish-to-consume latency of messages read live.
pub(crate) fn record_e2e(h: &Mutex<Histogram<u64>>, stamp: &Stamp) {
    let us = now_ns().saturating_sub(stamp.sent_ns) / 1000;
    if let Ok(mut h) = h.lock() {
        h.saturating_record(us.max(1));
    }
}

/// How long a consumer waits without progress before it gives up on
/// messages it expected.
pub(crate) const STALL: Duration = Duration::from_secs(10);

/// What a live consumer is handed: the histogram it records into and,
/// once publishing has ended, how much was acknowledged per slot.
pub(crate) type LiveShare = (Arc<Mutex<Histogram<u64>>>, Arc<Mutex<Option<Vec<u64>>>>);

/// A spawned live consumer.
pub(crate) type LiveTask<T> = tokio::task::JoinHandle<anyhow::Result<T>>;

/// The live consumers of a run: with `--live`, one task a slot reading
/// from where publishing begins, recording publish-to-consume latency.
pub(crate) struct LiveConsumers<T> {
    histogram: Option<Arc<Mutex<Histogram<u64>>>>,
    acked: Arc<Mutex<Option<Vec<u64>>>>,
    tasks: Vec<LiveTask<T>>,
}

impl<T> LiveConsumers<T> {
    /// With `--live`, starts a consumer for each of `slots` slots:
    /// `start(slot, share)` sets one up and spawns it.
    pub(crate) async fn start(
        args: &Args,
        slots: usize,
        mut start: impl AsyncFnMut(usize, LiveShare) -> anyhow::Result<LiveTask<T>>,
    ) -> anyhow::Result<Self> {
        let histogram = live_histogram(args)?;
        let acked = Arc::new(Mutex::new(None));
        let mut tasks = Vec::new();
        if let Some(h) = &histogram {
            for slot in 0..slots {
                tasks.push(start(slot, (h.clone(), acked.clone())).await?);
            }
        }
        Ok(Self {
            histogram,
            acked,
            tasks,
        })
    }

    /// Tells the consumers how much was acknowledged per slot, so they
    /// know when they have read everything, and waits for them; answers
    /// the histogram they recorded into.
    pub(crate) async fn finish(
        self,
        acked_per_slot: &[u64],
    ) -> anyhow::Result<Option<Arc<Mutex<Histogram<u64>>>>> {
        if let Ok(mut acked) = self.acked.lock() {
            *acked = Some(acked_per_slot.to_vec());
        }
        for task in self.tasks {
            task.await.context("a live consumer panicked")??;
        }
        Ok(self.histogram)
    }
}

/// How many messages were acknowledged on `slot`, once publishing has
/// ended and [`LiveConsumers::finish`] has said so; `None` before.
pub(crate) fn acked_on(
    acked_live: &Mutex<Option<Vec<u64>>>,
    slot: usize,
) -> anyhow::Result<Option<u64>> {
    let acked = acked_live.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(acked.as_ref().map(|a| a.get(slot).copied().unwrap_or(0)))
}

/// Waits for the catch-up consumers and adds up how many messages they
/// read and what they read.
pub(crate) async fn join_catch_up(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<(u64, Reads)>>>,
) -> anyhow::Result<(u64, Reads)> {
    let mut reads = Reads::default();
    let mut total = 0;
    for task in tasks {
        let (n, r) = task.await.context("a catch-up consumer panicked")??;
        total += n;
        reads.merge(r);
    }
    Ok((total, reads))
}

/// Runs a catch-up read and times it: how many messages it read, the
/// seconds that took, and what it read.
pub(crate) async fn timed_catch_up(
    read: impl Future<Output = anyhow::Result<(u64, Reads)>>,
) -> anyhow::Result<(u64, f64, Reads)> {
    let started = Instant::now();
    let (n, reads) = read.await?;
    Ok((n, started.elapsed().as_secs_f64(), reads))
}

/// The live consumers' end-to-end latencies, once they are done.
pub(crate) fn live_snapshot(
    live: Option<Arc<Mutex<Histogram<u64>>>>,
) -> anyhow::Result<Option<Histogram<u64>>> {
    live.map(|h| {
        h.lock()
            .map(|h| h.clone())
            .map_err(|_| anyhow::anyhow!("live histogram poisoned"))
    })
    .transpose()
}
