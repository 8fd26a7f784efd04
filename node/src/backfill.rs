//! Backfill: a replica that installed a snapshot fetches the retained
//! messages the snapshot spans, so that it holds them itself again.
//!
//! Message bytes live only in the Raft log and a snapshot carries none
//! (ARCHITECTURE.md, "Snapshots, purge and retention"). A replica that
//! installs one (its disk was replaced, and the leader's log no longer goes
//! back far enough to replay) has no bytes for the live messages below the
//! snapshot's last entry: `local_first_log_index` says where its own log
//! starts, and reads below it are served by another replica. Until those
//! messages are fetched, the replica adds no redundancy for them.
//!
//! Every partition replica runs one [`Backfills::start`] task, which sleeps
//! until `local_first_log_index` changes. Whenever it lies above the first
//! entry the partition's batch index still names, the task fetches the
//! entries in between with `ReadLogRange`, from the group's leader or
//! another replica, newest chunk first; checks them against what this
//! replica knows (indices, log ids, the batch index); writes them into its
//! own log below openraft's last purged log id, where openraft never looks
//! ([`LogStore::write_below_purged`]); waits for an fsync; and only then
//! lowers `local_first_log_index` to the chunk's first index. So every entry
//! at or above `local_first_log_index` is local (unless retention forgot
//! it), at every moment and after a crash. Entries retention forgets
//! meanwhile are not fetched, or deleted again by [`drop_forgotten`].

use std::sync::Arc;
use std::time::Duration;

use openraft::EntryPayload;
use openraft::async_runtime::WatchReceiver;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio::sync::watch;

use crate::group::Group;
use crate::group::Raft;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::raft::log_range::CHUNK_BYTES;
use crate::raft::log_range::LogRangeAnswer;
use crate::raft::log_range::LogRangeQuery;
use crate::raft::network::PeerPool;
use crate::raft::types::Command;
use crate::raft::types::Entry;
use crate::raft::types::LogId;
use crate::raft::types::PartitionCommand;
use crate::raft::types::TypeConfig;
use crate::state_machine::GroupData;
use crate::state_machine::GroupShared;
use crate::state_machine::partition::BatchIndex;
use crate::storage::LogStore;
use crate::storage::StorageError;

/// How long a peer gets to answer one `ReadLogRange` call.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks fetched and written at once on one node, whatever the number of
/// groups backfilling: after a disk replacement every partition of the node
/// backfills, and each chunk is held in memory until it is written.
const FETCHES_IN_FLIGHT: usize = 2;

/// Waits between attempts while no replica can send a chunk (leader
/// changes, peers down, this replica's snapshot not purged yet).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Plans made again at once, without waiting, after the state changed
/// under a chunk's write.
const REPLANS_AT_ONCE: u32 = 3;

/// The backfill tasks of one node, and what they share.
#[derive(Debug, Clone)]
pub struct Backfills {
    node_id: NodeId,
    pool: PeerPool,
    fetches: Arc<Semaphore>,
}

impl Backfills {
    pub fn new(node_id: NodeId, pool: PeerPool) -> Backfills {
        Backfills {
            node_id,
            pool,
            fetches: Arc::new(Semaphore::new(FETCHES_IN_FLIGHT)),
        }
    }

    /// Starts the backfill task of a partition group; it ends when
    /// [`crate::group::BackfillStop::stop`] is called or the group is dropped.
    pub fn start(&self, group: &Group) {
        if group.id == GroupId::META {
            return;
        }
        let target = Target {
            id: group.id,
            raft: group.raft.clone(),
            log_store: group.state.storage().log_store(group.id),
            state: group.state.clone(),
        };
        group
            .backfill
            .start(|stop| tokio::spawn(self.clone().run(target, stop)));
    }

    async fn run(self, target: Target, mut stop: watch::Receiver<bool>) {
        let mut local_first = target.state.subscribe_local_first();
        let mut retry = Retry::default();
        let mut fetched_any = false;
        let mut replans = 0;
        loop {
            if *stop.borrow_and_update() {
                return;
            }
            local_first.borrow_and_update();
            // Stopping drops the step wherever it waits (a fetch, an fsync):
            // the entries a dropped step wrote lie below
            // `local_first_log_index`, unused, and are deleted later.
            let step = tokio::select! {
                step = self.step(&target) => step,
                _ = stop.changed() => return,
            };
            let wait = match step {
                Step::Progress => {
                    fetched_any = true;
                    replans = 0;
                    retry.reset();
                    continue;
                }
                // The state moved between planning and writing; a plan
                // that keeps failing so waits like any other failure.
                Step::Replan if replans < REPLANS_AT_ONCE => {
                    replans += 1;
                    continue;
                }
                Step::Replan => {
                    replans = 0;
                    Some(retry.next_wait())
                }
                Step::Done => {
                    replans = 0;
                    if std::mem::take(&mut fetched_any) {
                        tracing::info!(
                            group = target.id.0,
                            "backfill done: this replica holds every retained message again"
                        );
                    }
                    retry.reset();
                    None
                }
                Step::Retry(reason) => {
                    let wait = retry.next_wait();
                    tracing::debug!(group = target.id.0, %reason, ?wait, "backfill waits");
                    Some(wait)
                }
            };
            let pause = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = pause => {}
                changed = local_first.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// Plans from the current state and fetches at most one chunk.
    async fn step(&self, target: &Target) -> Step {
        let plan = match plan(target) {
            Ok(plan) => plan,
            Err(e) => return Step::Retry(format!("reading the log: {e}")),
        };
        match plan {
            Plan::Nothing { local_first } => {
                // Entries below `local_first_log_index` are no longer
                // needed: left by a step that stopped half way, or fetched
                // just before retention forgot them.
                if let Some(below) = local_first.checked_sub(1)
                    && let Err(e) = target.log_store.delete_below_purged(below)
                {
                    return Step::Retry(format!("deleting unneeded entries: {e}"));
                }
                Step::Done
            }
            Plan::AwaitSnapshotPurge { last } => Step::Retry(format!(
                "openraft has not purged its log up to the snapshot's entry {last} yet"
            )),
            Plan::Fetch(chunk) => self.fetch(target, chunk).await,
        }
    }

    /// Fetches the newest chunk of `wanted` from the first replica that has
    /// it, the leader first, and stores it.
    async fn fetch(&self, target: &Target, wanted: Wanted) -> Step {
        let Ok(_permit) = self.fetches.acquire().await else {
            return Step::Retry("the fetch slots are closed".into());
        };
        let query = LogRangeQuery {
            group_id: target.id,
            first_index: wanted.first,
            last_index: wanted.last,
            max_bytes: CHUNK_BYTES,
        };
        let mut failures = Vec::new();
        for (peer, addr) in sources(&target.raft, self.node_id) {
            let answer = match crate::raft::log_range::read_log_range(
                &self.pool,
                &addr,
                &query,
                FETCH_TIMEOUT,
            )
            .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    failures.push(format!("node {peer}: {e}"));
                    continue;
                }
            };
            if answer.entries.is_empty() {
                failures.push(format!("node {peer} does not hold entry {}", wanted.last));
                continue;
            }
            let entries = match check_answer(target, &wanted, &answer) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(group = target.id.0, peer = peer.0, error = %e, "backfill: refused a chunk");
                    failures.push(format!("node {peer} sent an invalid chunk: {e}"));
                    continue;
                }
            };
            return store(target, &wanted, entries).await;
        }
        if failures.is_empty() {
            failures.push("no other replica is known".into());
        }
        Step::Retry(format!(
            "no replica sent entries {}..={}: {}",
            wanted.first,
            wanted.last,
            failures.join("; ")
        ))
    }
}

/// Deletes the entries of a backfill that retention has forgotten since.
/// openraft purges only past its last purged log id, and backfilled entries
/// lie below it, so retention's replicated purge (`AllowLogPurge`) reaches
/// them only through this. Raises `local_first_log_index` past them, so the
/// next call finds nothing to do until retention forgets more.
pub fn drop_forgotten(group: &Group) {
    let view = group.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => Some((inner.local_first_log_index, p.purgeable_log_index)),
        GroupData::Meta(_) => None,
    });
    let Some((local_first, purgeable)) = view else {
        return;
    };
    if local_first == 0 || purgeable < local_first {
        return;
    }
    let log_store: LogStore<TypeConfig> = group.state.storage().log_store(group.id);
    if let Err(e) = log_store.delete_below_purged(purgeable) {
        tracing::warn!(group = group.id.0, error = %e, "deleting forgotten backfilled entries failed");
        return;
    }
    let raised = purgeable.saturating_add(1);
    if let Err(e) = group
        .state
        .replace_local_first_log_index(local_first, raised)
    {
        tracing::warn!(group = group.id.0, error = %e, "raising the local first log index failed");
    }
}

/// One group, as its backfill task sees it.
struct Target {
    id: GroupId,
    raft: Raft,
    log_store: LogStore<TypeConfig>,
    state: Arc<GroupShared>,
}

enum Step {
    /// A chunk was stored: go on at once.
    Progress,
    /// The state changed under the step: plan again at once.
    Replan,
    /// Nothing is missing: wait for the next snapshot.
    Done,
    /// Try again after a while.
    Retry(String),
}

enum Plan {
    Nothing {
        local_first: u64,
    },
    /// The snapshot was installed, but openraft's purge of the log it spans
    /// has not run yet: entries written now would be deleted by it.
    AwaitSnapshotPurge {
        last: u64,
    },
    Fetch(Wanted),
}

/// The entries a step fetches, and what it checks them against.
#[derive(Debug, Clone)]
struct Wanted {
    /// `first ..= last`: from the first entry the batch index names up to
    /// just below `local_first_log_index`.
    first: u64,
    last: u64,
    /// openraft's last purged log id when planned. The write is refused if
    /// it changed meanwhile: a newer snapshot was installed.
    covered: LogId,
}

fn plan(target: &Target) -> Result<Plan, StorageError> {
    let view = target.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => Some((
            inner.local_first_log_index,
            p.batches.front().map(|batch| batch.log_index),
        )),
        GroupData::Meta(_) => None,
    });
    let Some((local_first, first_named)) = view else {
        return Ok(Plan::Nothing { local_first: 0 });
    };
    let (Some(first), Some(last)) = (
        first_named.filter(|first| *first < local_first),
        local_first.checked_sub(1),
    ) else {
        return Ok(Plan::Nothing { local_first });
    };
    match target.log_store.last_purged()? {
        Some(covered) if covered.index >= last => Ok(Plan::Fetch(Wanted {
            first,
            last,
            covered,
        })),
        _ => Ok(Plan::AwaitSnapshotPurge { last }),
    }
}

/// The replicas to fetch from, in order: the leader, then the other voters.
fn sources(raft: &Raft, own_id: NodeId) -> Vec<(NodeId, String)> {
    let watch = raft.metrics();
    let metrics = watch.borrow_watched();
    let membership = metrics.membership_config.membership();
    let leader = metrics.current_leader.filter(|leader| *leader != own_id);
    let others = membership
        .voter_ids()
        .filter(|id| *id != own_id && Some(*id) != leader);
    leader
        .into_iter()
        .chain(others)
        .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
        .collect()
}

/// Why a chunk a peer sent is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidChunk {
    #[error("no entries")]
    Empty,
    #[error("{sent} entries sent for the {asked} asked")]
    TooMany { sent: usize, asked: u64 },
    #[error("entry {index}: {reason}")]
    Undecodable { index: u64, reason: String },
    #[error("entry {index} has log id {found}, not {expected}")]
    WrongLogId {
        index: u64,
        found: String,
        expected: String,
    },
    #[error("entry {index} has a later leader than the entry after it")]
    LeaderGoesBack { index: u64 },
    #[error("entry {index} is not a partition's entry")]
    NotAPartitionEntry { index: u64 },
    #[error("entry {index} is not the publish batch the partition index names: {reason}")]
    NotTheIndexedBatch { index: u64, reason: String },
    #[error("the local entry {index} the chunk leads up to is gone")]
    SuccessorGone { index: u64 },
}

/// Decodes and checks what a peer sent, which is trusted less than this
/// replica's own disk.
fn check_answer(
    target: &Target,
    wanted: &Wanted,
    answer: &LogRangeAnswer,
) -> Result<Vec<Entry>, InvalidChunk> {
    let asked = wanted.last - wanted.first + 1;
    let sent = answer.entries.len();
    if sent == 0 {
        return Err(InvalidChunk::Empty);
    }
    if u64::try_from(sent).is_ok_and(|sent| sent > asked) {
        return Err(InvalidChunk::TooMany { sent, asked });
    }
    // At most `asked` entries, so no underflow.
    let chunk_first = wanted.last + 1 - sent as u64;
    let mut entries = Vec::with_capacity(sent);
    for (index, bytes) in (chunk_first..).zip(&answer.entries) {
        let entry =
            target
                .log_store
                .decode_entry(index, bytes)
                .map_err(|e| InvalidChunk::Undecodable {
                    index,
                    reason: e.to_string(),
                })?;
        entries.push(entry);
    }
    // The entry the chunk leads up to: at the snapshot's last entry, the
    // last purged log id itself; below it, the local entry backfilled by the
    // chunk before this one.
    let successor = if wanted.last == wanted.covered.index {
        Successor::Exactly(wanted.covered)
    } else {
        let index = wanted.last + 1;
        match target
            .state
            .storage()
            .read_entry::<TypeConfig>(target.id, index)
        {
            Ok(Some(entry)) => Successor::After(entry.log_id),
            Ok(None) | Err(_) => return Err(InvalidChunk::SuccessorGone { index }),
        }
    };
    let batches: Vec<BatchIndex> = target.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => {
            let start = p.batches.partition_point(|b| b.log_index < chunk_first);
            p.batches
                .iter()
                .skip(start)
                .take_while(|b| b.log_index <= wanted.last)
                .copied()
                .collect()
        }
        GroupData::Meta(_) => Vec::new(),
    });
    check_chunk(&entries, successor, &batches)?;
    Ok(entries)
}

/// What the last entry of a chunk must be consistent with.
#[derive(Debug, Clone, Copy)]
enum Successor {
    /// The chunk ends at the snapshot's last entry: it must have this id.
    Exactly(LogId),
    /// The chunk ends just below this local entry: its leader cannot be
    /// later than that entry's.
    After(LogId),
}

/// Checks a decoded chunk (its entries' indices were checked by decoding):
/// leaders never go back along the log and the chunk fits the entry it
/// leads up to; it holds only a partition's entries; and every publish
/// batch the partition index names in its range is that batch, records
/// intact.
fn check_chunk(
    entries: &[Entry],
    successor: Successor,
    batches: &[BatchIndex],
) -> Result<(), InvalidChunk> {
    let Some(last) = entries.last() else {
        return Ok(());
    };
    for pair in entries.windows(2) {
        if pair[0].log_id.leader_id > pair[1].log_id.leader_id {
            return Err(InvalidChunk::LeaderGoesBack {
                index: pair[0].log_id.index,
            });
        }
    }
    match successor {
        Successor::Exactly(expected) if last.log_id != expected => {
            return Err(InvalidChunk::WrongLogId {
                index: last.log_id.index,
                found: last.log_id.to_string(),
                expected: expected.to_string(),
            });
        }
        Successor::After(next) if last.log_id.leader_id > next.leader_id => {
            return Err(InvalidChunk::LeaderGoesBack {
                index: last.log_id.index,
            });
        }
        _ => {}
    }
    for entry in entries {
        match &entry.payload {
            EntryPayload::Blank
            | EntryPayload::Membership(_)
            | EntryPayload::Normal(Command::Partition(_)) => {}
            EntryPayload::Normal(Command::Meta(_)) => {
                return Err(InvalidChunk::NotAPartitionEntry {
                    index: entry.log_id.index,
                });
            }
        }
    }
    let first_index = entries.first().map_or(0, |entry| entry.log_id.index);
    for batch in batches {
        let position = batch
            .log_index
            .checked_sub(first_index)
            .and_then(|offset| usize::try_from(offset).ok());
        let Some(entry) = position.and_then(|position| entries.get(position)) else {
            continue;
        };
        check_batch(entry, batch).map_err(|reason| InvalidChunk::NotTheIndexedBatch {
            index: batch.log_index,
            reason,
        })?;
    }
    Ok(())
}

/// Whether `entry` is the publish batch `batch` describes, with records a
/// read can decode.
fn check_batch(entry: &Entry, batch: &BatchIndex) -> Result<(), String> {
    let (timestamp_ms, records) = match &entry.payload {
        EntryPayload::Normal(Command::Partition(
            PartitionCommand::Append {
                timestamp_ms,
                records,
                ..
            }
            | PartitionCommand::Ingest {
                timestamp_ms,
                record: records,
                ..
            },
        )) => (*timestamp_ms, records),
        _ => return Err("not a publish batch".into()),
    };
    // Apply only ever raises the leader's stamp.
    if timestamp_ms > batch.timestamp_ms {
        return Err(format!(
            "stamped {timestamp_ms}, indexed at {}",
            batch.timestamp_ms
        ));
    }
    let mut count: u64 = 0;
    let mut bytes: u64 = 0;
    for record in records.iter() {
        let record = record.map_err(|e| e.to_string())?;
        let headers = record.headers().map_err(|e| e.to_string())?;
        let header_bytes: usize = headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        count += 1;
        bytes += (record.key.len() + record.value.len() + header_bytes) as u64;
    }
    if count != u64::from(batch.count) || bytes != batch.bytes {
        return Err(format!(
            "{count} records of {bytes} bytes, indexed as {} of {}",
            batch.count, batch.bytes
        ));
    }
    Ok(())
}

/// Writes a checked chunk below openraft's log, fsyncs it, and only then
/// lowers `local_first_log_index` to its first entry.
async fn store(target: &Target, wanted: &Wanted, entries: Vec<Entry>) -> Step {
    let expected_local_first = wanted.last + 1;
    // Decided under the purge lock: nothing checked here can be purged
    // before the write lands.
    let admit = |last_purged: Option<&LogId>| {
        // A newer snapshot was installed meanwhile: its purge covers these
        // entries, or is about to.
        if last_purged != Some(&wanted.covered) {
            return None;
        }
        target.state.read(|inner| {
            if inner.local_first_log_index != expected_local_first {
                return None;
            }
            let GroupData::Partition(p) = &inner.data else {
                return None;
            };
            // Entries below the first batch retention kept are forgotten
            // (and every purge so far stayed at or below
            // `purgeable_log_index`, which is lower still).
            let first_named = p.batches.front()?.log_index;
            let floor = first_named.max(p.purgeable_log_index.saturating_add(1));
            (floor <= wanted.last).then_some(floor)
        })
    };
    let written = match target.log_store.write_below_purged(entries, admit) {
        Ok(Some(first)) => first,
        Ok(None) => return Step::Replan,
        Err(e) => return Step::Retry(format!("writing the chunk: {e}")),
    };
    if let Err(e) = target.log_store.sync().await {
        return Step::Retry(format!("syncing the chunk: {e}"));
    }
    match target
        .state
        .replace_local_first_log_index(expected_local_first, written)
    {
        Ok(true) => {
            tracing::debug!(
                group = target.id.0,
                first = written,
                last = wanted.last,
                "backfilled a chunk"
            );
            Step::Progress
        }
        Ok(false) => Step::Replan,
        Err(e) => Step::Retry(format!("recording the chunk: {e}")),
    }
}

/// Exponential waits with jitter, from `RETRY_MIN` to `RETRY_MAX`.
#[derive(Debug)]
struct Retry {
    next: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { next: RETRY_MIN }
    }
}

impl Retry {
    fn reset(&mut self) {
        self.next = RETRY_MIN;
    }

    fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        // Up to a half more, so that the groups of a node do not retry in step.
        let jitter = rand::rng().random_range(0.0..0.5);
        wait.mul_f64(1.0 + jitter)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::model::Offset;
    use crate::raft::batch::RecordBatch;
    use crate::raft::types::MetaCommand;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(
            openraft::alias::LeaderIdOf::<TypeConfig>::new_committed(term, NodeId(1)),
            index,
        )
    }

    fn publish(term: u64, index: u64, values: &[&str], timestamp_ms: i64) -> Entry {
        let mut builder = RecordBatch::builder();
        for value in values {
            builder.push(b"", value.as_bytes(), []).unwrap();
        }
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::Partition(PartitionCommand::Append {
                timestamp_ms,
                records: builder.finish(),
                producer: None,
            })),
        }
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexed(entry: &Entry, base_offset: u64, timestamp_ms: i64) -> BatchIndex {
        let EntryPayload::Normal(Command::Partition(PartitionCommand::Append { records, .. })) =
            &entry.payload
        else {
            panic!("not a publish batch");
        };
        BatchIndex {
            base_offset: Offset(base_offset),
            count: records.len() as u32,
            log_index: entry.log_id.index,
            timestamp_ms,
            bytes: records.payload_bytes(),
        }
    }

    #[test]
    fn a_chunk_that_matches_the_index_and_its_successor_is_accepted() {
        let entries = vec![
            publish(1, 5, &["a", "bb"], 10),
            blank(2, 6),
            publish(2, 7, &["ccc"], 20),
        ];
        let batches = [indexed(&entries[0], 0, 10), indexed(&entries[2], 2, 25)];
        assert_eq!(
            check_chunk(&entries, Successor::Exactly(log_id(2, 7)), &batches),
            Ok(())
        );
        assert_eq!(
            check_chunk(&entries, Successor::After(log_id(3, 8)), &batches),
            Ok(())
        );
    }

    #[test]
    fn a_chunk_that_does_not_lead_up_to_the_local_log_is_refused() {
        let entries = vec![publish(1, 5, &["a"], 10), publish(2, 6, &["b"], 10)];
        // Not the snapshot's last entry (another leader's entry 6).
        assert!(matches!(
            check_chunk(&entries, Successor::Exactly(log_id(3, 6)), &[]),
            Err(InvalidChunk::WrongLogId { index: 6, .. })
        ));
        // A later leader than the local entry after it.
        assert_eq!(
            check_chunk(&entries, Successor::After(log_id(1, 7)), &[]),
            Err(InvalidChunk::LeaderGoesBack { index: 6 })
        );
        // Leaders going back within the chunk.
        let entries = vec![publish(2, 5, &["a"], 10), publish(1, 6, &["b"], 10)];
        assert_eq!(
            check_chunk(&entries, Successor::After(log_id(2, 7)), &[]),
            Err(InvalidChunk::LeaderGoesBack { index: 5 })
        );
    }

    #[test]
    fn a_chunk_whose_batches_differ_from_the_index_is_refused() {
        let entries = vec![publish(1, 5, &["a", "bb"], 10)];
        let good = indexed(&entries[0], 0, 10);
        let check =
            |batch: BatchIndex| check_chunk(&entries, Successor::Exactly(log_id(1, 5)), &[batch]);
        assert_eq!(check(good), Ok(()));
        for wrong in [
            BatchIndex { count: 3, ..good },
            BatchIndex {
                bytes: good.bytes + 1,
                ..good
            },
            // Stamped later than the index says apply saw.
            BatchIndex {
                timestamp_ms: 9,
                ..good
            },
        ] {
            assert!(
                matches!(
                    check(wrong),
                    Err(InvalidChunk::NotTheIndexedBatch { index: 5, .. })
                ),
                "{wrong:?}"
            );
        }
        // The index names a publish batch where the chunk has a blank entry.
        let entries = vec![blank(1, 5)];
        assert!(matches!(
            check_chunk(&entries, Successor::Exactly(log_id(1, 5)), &[good]),
            Err(InvalidChunk::NotTheIndexedBatch { index: 5, .. })
        ));
        // A metadata command has no place in a partition's log.
        let entries = vec![Entry {
            log_id: log_id(1, 5),
            payload: EntryPayload::Normal(Command::Meta(MetaCommand::ResolveTokenTopicNames)),
        }];
        assert_eq!(
            check_chunk(&entries, Successor::Exactly(log_id(1, 5)), &[]),
            Err(InvalidChunk::NotAPartitionEntry { index: 5 })
        );
    }

    #[test]
    fn retries_back_off_up_to_the_maximum_and_reset() {
        let mut retry = Retry::default();
        let first = retry.next_wait();
        assert!(first >= RETRY_MIN && first <= RETRY_MIN.mul_f64(1.5));
        let mut last = first;
        for _ in 0..20 {
            last = retry.next_wait();
        }
        assert!(last >= RETRY_MAX && last <= RETRY_MAX.mul_f64(1.5));
        retry.reset();
        assert!(retry.next_wait() <= RETRY_MIN.mul_f64(1.5));
    }
}
