//! What the back ends' consumers share: live publish-to-consume latency
//! and when to stop waiting for messages.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use raftstream_benches::Stamp;
use raftstream_benches::now_ns;

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

/// Tells the live consumers how much was acknowledged per slot, so they
/// know when they have read everything, and waits for them.
pub(crate) async fn finish_live<T>(
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
