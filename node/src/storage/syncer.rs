//! Group commit: one thread fsyncs the WAL on behalf of every group.
//!
//! Writers put their data into RocksDB without sync and then enqueue a waiter. The syncer thread
//! takes everything pending, calls `flush_wal(true)` once and then completes the waiters in the
//! order they were enqueued. Every write that happened before its waiter was enqueued is in the
//! WAL before the fsync starts, so one fsync covers every group and client in the batch.
//!
//! The queue needs no explicit bound: it only grows while one fsync is running, and each
//! openraft group limits its own in-flight appends.

use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use rocksdb::DB;

use super::StorageError;
use super::StorageFailure;
use crate::failpoints::Failpoint;
use crate::failpoints::Failpoints;

/// Completion of a sync: runs on the syncer thread, so it must be quick and must not block.
pub(super) type Waiter = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Number of fsyncs attempted.
    syncs: AtomicU64,
    failpoints: Option<Arc<Failpoints>>,
    metrics: SyncMetrics,
}

/// How group commit performs: each fsync's duration and how many waiters
/// (appends and votes of any group) it covered. The node registers these
/// with its metrics.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    pub fsync_seconds: prometheus::Histogram,
    pub batch_entries: prometheus::Histogram,
}

impl SyncMetrics {
    /// Histograms not tied to a syncer, for tests of what reports them.
    #[cfg(test)]
    pub fn new_for_test() -> SyncMetrics {
        // The options are constants that `new` is tested to accept.
        #[allow(clippy::unwrap_used)]
        SyncMetrics::new().unwrap()
    }

    fn new() -> Result<SyncMetrics, prometheus::Error> {
        let histogram = |name: &str, help: &str, buckets| {
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(name, help).buckets(buckets),
            )
        };
        let fsync_seconds = histogram(
            "raftstream_fsync_duration_seconds",
            "How long each group-commit fsync of the WAL took.",
            prometheus::exponential_buckets(0.000_05, 2.0, 16)?,
        )?;
        let batch_entries = histogram(
            "raftstream_group_commit_batch_entries",
            "How many appends and votes one group-commit fsync covered.",
            prometheus::exponential_buckets(1.0, 2.0, 14)?,
        )?;
        Ok(SyncMetrics {
            fsync_seconds,
            batch_entries,
        })
    }
}

#[derive(Default)]
struct State {
    pending: Vec<Waiter>,
    /// Set by `Syncer::drop`: sync what is pending, then exit.
    stopping: bool,
    /// Set when the thread has exited (normally or by panic). Later waiters fail at once
    /// instead of waiting for a sync that will never come.
    stopped: bool,
    /// Test hook: while set, the thread leaves the pending waiters alone.
    #[cfg(test)]
    held: bool,
    /// Test hook: the next fsync fails without touching the disk.
    #[cfg(test)]
    fail_next: bool,
}

impl State {
    fn may_take(&self) -> bool {
        #[cfg(test)]
        if self.held && !self.stopping {
            return false;
        }
        !self.pending.is_empty()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // No code that can panic runs under this lock, so a poisoned lock still holds a consistent
    // state.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Syncer {
    pub(super) fn spawn(
        db: Arc<DB>,
        failure: Arc<StorageFailure>,
        failpoints: Option<Arc<Failpoints>>,
    ) -> Result<Syncer, StorageError> {
        let metrics = SyncMetrics::new().map_err(|e| StorageError::Metrics {
            message: e.to_string(),
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            syncs: AtomicU64::new(0),
            failpoints,
            metrics,
        });
        let thread = std::thread::Builder::new()
            .name("raftstream-wal-sync".to_string())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(&db, &shared, &failure)
            })
            .map_err(|source| StorageError::SpawnSyncer { source })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    pub(super) fn metrics(&self) -> &SyncMetrics {
        &self.shared.metrics
    }

    /// Queues `waiter` to be completed by the next fsync that starts after this call.
    pub(super) fn enqueue(&self, waiter: Waiter) {
        let mut state = lock(&self.shared.state);
        if state.stopped {
            drop(state);
            waiter(Err(StorageError::SyncerStopped));
            return;
        }
        state.pending.push(waiter);
        drop(state);
        self.shared.wake.notify_one();
    }

    #[cfg(test)]
    pub(super) fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::SeqCst)
    }

    /// Keeps the thread from taking pending waiters until the returned guard is dropped, so a
    /// test can enqueue several waiters and know that they will share one fsync.
    #[cfg(test)]
    pub(super) fn hold(&self) -> HoldGuard {
        lock(&self.shared.state).held = true;
        HoldGuard {
            shared: Arc::clone(&self.shared),
        }
    }

    #[cfg(test)]
    pub(super) fn fail_next_sync(&self) {
        lock(&self.shared.state).fail_next = true;
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_all();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A waiter that owned the last `Storage` handle would drop it on the syncer thread
        // itself; joining there would deadlock, and the thread exits on its own anyway.
        if thread.thread().id() == std::thread::current().id() {
            return;
        }
        if thread.join().is_err() {
            tracing::error!("the WAL syncer thread panicked");
        }
    }
}

#[cfg(test)]
pub(super) struct HoldGuard {
    shared: Arc<Shared>,
}

#[cfg(test)]
impl Drop for HoldGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).held = false;
        self.shared.wake.notify_all();
    }
}

fn run(db: &DB, shared: &Shared, storage_failure: &StorageFailure) {
    let _exit = ExitGuard(shared);
    // Once an fsync has failed, the kernel may already have dropped the dirty pages it could
    // not write, so a later fsync that succeeds proves nothing about earlier writes. Every
    // later waiter therefore gets the first failure.
    let mut failure: Option<String> = None;
    while let Some(batch) = shared.next_batch() {
        let result = match &failure {
            Some(message) => Err(message.clone()),
            None => {
                let started = std::time::Instant::now();
                let result = shared.fsync(db);
                shared.syncs.fetch_add(1, Ordering::SeqCst);
                let metrics = &shared.metrics;
                metrics
                    .fsync_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.batch_entries.observe(batch.len() as f64);
                if let Err(message) = &result {
                    tracing::error!(
                        error = %message,
                        waiters = batch.len(),
                        "WAL fsync failed; failing every pending and future append and vote"
                    );
                    storage_failure.record(|| format!("WAL fsync failed: {message}"));
                    failure = Some(message.clone());
                }
                result
            }
        };
        for waiter in batch {
            waiter(
                result
                    .clone()
                    .map_err(|message| StorageError::SyncFailed { message }),
            );
        }
    }
}

impl Shared {
    /// Waits for pending waiters and takes all of them; `None` once stopping with nothing
    /// left to sync.
    fn next_batch(&self) -> Option<Vec<Waiter>> {
        let mut state = lock(&self.state);
        loop {
            if state.may_take() {
                return Some(std::mem::take(&mut state.pending));
            }
            if state.stopping {
                return None;
            }
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn fsync(&self, db: &DB) -> Result<(), String> {
        #[cfg(test)]
        if std::mem::take(&mut lock(&self.state).fail_next) {
            return Err("injected fsync failure".to_string());
        }
        crate::failpoints::hit_blocking(self.failpoints.as_ref(), Failpoint::WalFsync)
            .map_err(|injected| injected.to_string())?;
        db.flush_wal(true).map_err(rocksdb::Error::into_string)
    }
}

/// Marks the syncer stopped when its thread exits, however it exits, and fails whatever is
/// still pending so that no caller waits forever.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let pending = {
            let mut state = lock(&self.0.state);
            state.stopped = true;
            std::mem::take(&mut state.pending)
        };
        for waiter in pending {
            waiter(Err(StorageError::SyncerStopped));
        }
    }
}
