//! The state machine of every Raft group, metadata or partition.
//!
//! `GroupStateMachine` is what openraft drives; `GroupShared` is the same
//! state as the rest of the node sees it (reads, long polls, metadata).
//! Apply updates the in-memory state, persists the change without an fsync
//! (the Raft log is the durable record; a crash re-applies committed entries
//! from the last persisted `last_applied`), then answers the waiting client.

/// Panics, in debug builds only, if `$check` (a `Result<(), String>`) names a
/// broken invariant; the rest of the message says where it was checked.
/// Release builds compile the check but never run it: a broken invariant is
/// a bug, and debug nodes (tests, jepsen-lite, loadgen) should stop at the
/// entry that caused it rather than at a later read.
macro_rules! debug_assert_ok {
    ($check:expr, $($context:tt)+) => {
        if cfg!(debug_assertions)
            && let Err(broken) = $check
        {
            panic!("{}: {broken}", format_args!($($context)+));
        }
    };
}

pub mod balance;
pub mod fields;
pub mod meta;
pub mod partition;
pub mod subscriptions;

use std::io;
use std::sync::Arc;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::alias::SnapshotOf;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use parking_lot::RwLock;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;

use crate::failpoints::Failpoint;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::Offset;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::LogId;
use crate::raft::types::MetaState;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;
use crate::state_machine::partition::PartitionChange;
use crate::state_machine::partition::PartitionState;
use crate::storage::StateBatch;
use crate::storage::Storage;

const KEY_HEADER: &[u8] = b"h";
const KEY_META_STATE: &[u8] = b"m";
const KEY_SNAPSHOT: &[u8] = b"s";
const PREFIX_BATCH: &[u8] = b"b";
const PREFIX_GROUP_OFFSET: &[u8] = b"g";
const PREFIX_PRODUCER: &[u8] = b"p";
const PREFIX_SOURCE_STATS: &[u8] = b"i";
const PREFIX_IDEMPOTENCY_KEY: &[u8] = b"k";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum GroupData {
    Meta(MetaState),
    Partition(PartitionState),
}

impl GroupData {
    fn empty_for(group: GroupId) -> Self {
        if group == GroupId::META {
            GroupData::Meta(MetaState::default())
        } else {
            GroupData::Partition(PartitionState::default())
        }
    }
}

/// Persisted next to the data: where apply got to and the partition
/// counters (the batch index and group offsets have their own keys).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Header {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Entries below this index were covered by an installed snapshot and
    /// are not in this replica's log: their messages are read elsewhere,
    /// until a backfill (`backfill.rs`) lowers it.
    local_first_log_index: u64,
    next_offset: Offset,
    log_start_offset: Offset,
    last_timestamp_ms: i64,
    retained_bytes: u64,
    forgotten_log_index: u64,
    purgeable_log_index: u64,
}

#[derive(Debug)]
pub struct SmInner {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub local_first_log_index: u64,
    pub data: GroupData,
}

/// One group's state, shared between openraft's apply task and readers.
#[derive(Debug)]
pub struct GroupShared {
    pub group: GroupId,
    storage: Storage,
    inner: RwLock<SmInner>,
    /// The last applied log index: long polls and watchers wait on it.
    applied_tx: watch::Sender<u64>,
    /// `local_first_log_index`: the backfill task waits on it.
    local_first_tx: watch::Sender<u64>,
    /// Held from a change of the state in memory until its write to storage
    /// has been made, by apply, a snapshot install and a backfill: their
    /// writes then reach storage in the order of their changes, so a header
    /// never lands after a newer one, nor before the apply batch whose
    /// `last_applied` it records.
    header_writes: parking_lot::Mutex<()>,
}

impl GroupShared {
    pub fn read<T>(&self, f: impl FnOnce(&SmInner) -> T) -> T {
        f(&self.inner.read())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// How many readers wait on this group's progress (parked long polls).
    pub fn waiters(&self) -> usize {
        self.applied_tx.receiver_count()
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Wakes on every change of `local_first_log_index`.
    pub fn subscribe_local_first(&self) -> watch::Receiver<u64> {
        self.local_first_tx.subscribe()
    }

    /// Moves `local_first_log_index` from `expected` to `new` and persists
    /// it (unsynced, like apply: after a crash it may come back higher,
    /// which only claims fewer local entries). A backfill lowers it once its
    /// entries are on disk, retention raises it past entries it forgot.
    /// Returns false, changing nothing, if it is no longer `expected` (a
    /// snapshot was installed meanwhile, say).
    pub fn replace_local_first_log_index(&self, expected: u64, new: u64) -> io::Result<bool> {
        let _header_write = self.header_writes.lock();
        let header = {
            let mut inner = self.inner.write();
            if inner.local_first_log_index != expected {
                return Ok(false);
            }
            inner.local_first_log_index = new;
            GroupStateMachine::header_of(&inner)
        };
        let mut batch = StateBatch::new();
        batch.put(KEY_HEADER, encode(&header)?);
        self.storage.state_write(self.group, batch)?;
        self.local_first_tx.send_replace(new);
        Ok(true)
    }
}

#[derive(Debug, Clone)]
pub struct GroupStateMachine {
    shared: Arc<GroupShared>,
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serialize(value).map_err(invalid_data)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> io::Result<T> {
    bincode::deserialize(bytes).map_err(invalid_data)
}

/// The stored metadata, also as versions before push subscriptions or
/// partition moves wrote it. Newest first: bincode reads an older form's
/// fields as a prefix, so an older form would also read a newer one.
fn decode_meta_state(bytes: &[u8]) -> io::Result<MetaState> {
    decode::<MetaState>(bytes).or_else(|current| {
        decode::<crate::raft::types::MetaStateBeforeSubscriptions>(bytes)
            .map(MetaState::from)
            .or_else(|_| {
                decode::<crate::raft::types::MetaStateBeforeMoves>(bytes).map(MetaState::from)
            })
            .map_err(|_| current)
    })
}

fn batch_key(base_offset: Offset) -> Vec<u8> {
    [PREFIX_BATCH, &base_offset.0.to_be_bytes()].concat()
}

fn producer_key(producer_id: u64) -> Vec<u8> {
    [PREFIX_PRODUCER, &producer_id.to_be_bytes()].concat()
}

fn group_offset_key(group: &str) -> Vec<u8> {
    [PREFIX_GROUP_OFFSET, group.as_bytes()].concat()
}

fn source_stats_key(source_id: &str) -> Vec<u8> {
    [PREFIX_SOURCE_STATS, source_id.as_bytes()].concat()
}

/// The source id is length-prefixed so that no key can be read back as a
/// different (source, key) pair.
fn idempotency_key(source_id: &str, key: &str) -> Vec<u8> {
    let len = u16::try_from(source_id.len()).unwrap_or(u16::MAX);
    [
        PREFIX_IDEMPOTENCY_KEY,
        &len.to_be_bytes(),
        source_id.as_bytes(),
        key.as_bytes(),
    ]
    .concat()
}

fn parse_idempotency_key(stored: &[u8]) -> io::Result<(String, String)> {
    let rest = &stored[PREFIX_IDEMPOTENCY_KEY.len()..];
    let malformed = || invalid_data("malformed idempotency key");
    let (len, rest) = rest.split_first_chunk::<2>().ok_or_else(malformed)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(malformed());
    }
    let (source_id, key) = rest.split_at(len);
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| malformed());
    Ok((text(source_id)?, text(key)?))
}

/// Passes a failpoint of the node's (`failpoints.rs`). An injected failure
/// stands for the state write there failing, so it marks the storage failed
/// as that would, and the node stops.
async fn pass(storage: &Storage, point: Failpoint) -> io::Result<()> {
    crate::failpoints::hit(storage.failpoints(), point)
        .await
        .map_err(|injected| {
            storage.mark_failed(&injected.to_string());
            io::Error::other(injected)
        })
}

impl GroupStateMachine {
    /// Loads the group's state from storage (empty for a new group).
    pub fn open(storage: Storage, group: GroupId) -> io::Result<Self> {
        let header: Header = match storage.state_get(group, KEY_HEADER)? {
            Some(bytes) => decode(&bytes)?,
            None => Header::default(),
        };
        let data = if group == GroupId::META {
            match storage.state_get(group, KEY_META_STATE)? {
                Some(bytes) => {
                    let state = decode_meta_state(&bytes)?;
                    debug_assert_ok!(
                        meta::check_invariants(&state),
                        "metadata invariant broken in the stored state"
                    );
                    GroupData::Meta(state)
                }
                None => GroupData::Meta(MetaState::default()),
            }
        } else {
            let mut state = PartitionState {
                next_offset: header.next_offset,
                log_start_offset: header.log_start_offset,
                last_timestamp_ms: header.last_timestamp_ms,
                retained_bytes: header.retained_bytes,
                forgotten_log_index: header.forgotten_log_index,
                purgeable_log_index: header.purgeable_log_index,
                ..Default::default()
            };
            for (_, value) in storage.state_scan(group, PREFIX_BATCH)? {
                state.batches.push_back(decode(&value)?);
            }
            for (key, value) in storage.state_scan(group, PREFIX_GROUP_OFFSET)? {
                let name = String::from_utf8_lossy(&key[PREFIX_GROUP_OFFSET.len()..]).into_owned();
                state.consumer_offsets.insert(name, decode(&value)?);
            }
            for (key, value) in storage.state_scan(group, PREFIX_PRODUCER)? {
                let id_bytes: [u8; 8] = key[PREFIX_PRODUCER.len()..]
                    .try_into()
                    .map_err(|_| invalid_data("malformed producer key"))?;
                state
                    .producers
                    .insert(u64::from_be_bytes(id_bytes), decode(&value)?);
            }
            for (key, value) in storage.state_scan(group, PREFIX_SOURCE_STATS)? {
                let source_id =
                    String::from_utf8_lossy(&key[PREFIX_SOURCE_STATS.len()..]).into_owned();
                state.source_stats.insert(source_id, decode(&value)?);
            }
            for (key, value) in storage.state_scan(group, PREFIX_IDEMPOTENCY_KEY)? {
                let (source_id, key) = parse_idempotency_key(&key)?;
                state
                    .idempotency_keys
                    .restore(source_id, key, decode(&value)?);
            }
            state.check_invariants().map_err(invalid_data)?;
            debug_assert_ok!(
                state.check_all_invariants(),
                "group {group}: partition invariant broken in the stored state"
            );
            GroupData::Partition(state)
        };
        let applied_index = header.last_applied.as_ref().map_or(0, |id| id.index);
        let (applied_tx, _) = watch::channel(applied_index);
        let (local_first_tx, _) = watch::channel(header.local_first_log_index);
        let inner = SmInner {
            last_applied: header.last_applied,
            membership: header.membership,
            local_first_log_index: header.local_first_log_index,
            data,
        };
        Ok(Self {
            shared: Arc::new(GroupShared {
                group,
                storage,
                inner: RwLock::new(inner),
                applied_tx,
                local_first_tx,
                header_writes: parking_lot::Mutex::new(()),
            }),
        })
    }

    pub fn shared(&self) -> Arc<GroupShared> {
        self.shared.clone()
    }

    fn header_of(inner: &SmInner) -> Header {
        let mut header = Header {
            last_applied: inner.last_applied,
            membership: inner.membership.clone(),
            local_first_log_index: inner.local_first_log_index,
            ..Default::default()
        };
        if let GroupData::Partition(p) = &inner.data {
            header.next_offset = p.next_offset;
            header.log_start_offset = p.log_start_offset;
            header.last_timestamp_ms = p.last_timestamp_ms;
            header.retained_bytes = p.retained_bytes;
            header.forgotten_log_index = p.forgotten_log_index;
            header.purgeable_log_index = p.purgeable_log_index;
        }
        header
    }

    /// Writes the whole state, replacing what was stored (snapshot install).
    fn persist_all(&self, inner: &SmInner) -> io::Result<()> {
        let mut batch = StateBatch::new();
        batch.put(KEY_HEADER, encode(&Self::header_of(inner))?);
        match &inner.data {
            GroupData::Meta(m) => batch.put(KEY_META_STATE, encode(m)?),
            GroupData::Partition(p) => {
                batch.delete_prefix(PREFIX_BATCH);
                batch.delete_prefix(PREFIX_GROUP_OFFSET);
                batch.delete_prefix(PREFIX_PRODUCER);
                batch.delete_prefix(PREFIX_SOURCE_STATS);
                batch.delete_prefix(PREFIX_IDEMPOTENCY_KEY);
                for (source_id, stats) in &p.source_stats {
                    batch.put(source_stats_key(source_id), encode(stats)?);
                }
                for ((source_id, key), delivered) in p.idempotency_keys.iter() {
                    batch.put(idempotency_key(source_id, key), encode(delivered)?);
                }
                for (producer_id, producer) in &p.producers {
                    batch.put(producer_key(*producer_id), encode(producer)?);
                }
                for b in &p.batches {
                    batch.put(batch_key(b.base_offset), encode(b)?);
                }
                for (group, offset) in &p.consumer_offsets {
                    batch.put(group_offset_key(group), encode(offset)?);
                }
            }
        }
        self.shared.storage.state_write(self.shared.group, batch)?;
        Ok(())
    }

    fn snapshot_bytes(inner: &SmInner) -> io::Result<(SnapshotMeta, Vec<u8>)> {
        let meta = SnapshotMeta {
            last_log_id: inner.last_applied,
            last_membership: inner.membership.clone(),
        };
        Ok((meta, encode(&inner.data)?))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for GroupStateMachine {
    type SnapshotData = Vec<u8>;

    /// A snapshot holds the index and counters, never message bytes: the
    /// messages stay in the Raft log, see ARCHITECTURE.md.
    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, Vec<u8>>> {
        pass(&self.shared.storage, Failpoint::SnapshotBuild).await?;
        let (meta, data) = Self::snapshot_bytes(&self.shared.inner.read())?;
        let mut batch = StateBatch::new();
        batch.put(KEY_SNAPSHOT, encode(&(meta.clone(), data.clone()))?);
        self.shared.storage.state_write(self.shared.group, batch)?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let inner = self.shared.inner.read();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        // Collect first: the state lock must not be held across an await.
        let mut pending = Vec::new();
        while let Some(item) = entries.try_next().await? {
            pending.push(item);
        }
        if pending.is_empty() {
            return Ok(());
        }
        pass(&self.shared.storage, Failpoint::Apply).await?;
        let mut responses = Vec::with_capacity(pending.len());
        let mut batch = StateBatch::new();
        let applied_index;
        let header_write = self.shared.header_writes.lock();
        {
            let mut inner = self.shared.inner.write();
            let mut changes = Vec::new();
            let mut meta_changed = false;
            for (entry, responder) in pending {
                let log_index = entry.log_id.index;
                // An entry applied twice would append its records twice.
                // openraft also never skips one (it applies from the entry
                // after the last applied one, or a snapshot's last), but its
                // storage conformance suite applies index 5 after 3, so only
                // the order is asserted.
                debug_assert!(
                    inner
                        .last_applied
                        .as_ref()
                        .is_none_or(|applied| applied.index < log_index),
                    "group {}: entries apply once each and in log order, but entry {log_index} \
                     follows the last applied {:?}",
                    self.shared.group,
                    inner.last_applied,
                );
                let response = match &entry.payload {
                    EntryPayload::Blank => CommandResponse::None,
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        CommandResponse::None
                    }
                    EntryPayload::Normal(command) => {
                        let voters: Vec<NodeId> = {
                            let mut v: Vec<NodeId> = inner.membership.voter_ids().collect();
                            v.sort_unstable();
                            v
                        };
                        match (&mut inner.data, command) {
                            (GroupData::Partition(p), Command::Partition(cmd)) => {
                                p.apply(cmd, log_index, &mut changes)
                            }
                            (GroupData::Meta(m), Command::Meta(cmd)) => {
                                meta_changed = true;
                                meta::apply(m, cmd, &voters)
                            }
                            // A command routed to the wrong kind of group is a
                            // bug upstream; it changes nothing here.
                            _ => {
                                tracing::error!(
                                    group = self.shared.group.0,
                                    "command for the wrong kind of group"
                                );
                                CommandResponse::None
                            }
                        }
                    }
                };
                inner.last_applied = Some(entry.log_id);
                responses.push((responder, response));
            }
            for change in changes {
                match change {
                    PartitionChange::PutBatch(b) => {
                        batch.put(batch_key(b.base_offset), encode(&b)?)
                    }
                    PartitionChange::DeleteBatch { base_offset } => {
                        batch.delete(batch_key(base_offset))
                    }
                    PartitionChange::PutGroupOffset { group, offset } => {
                        batch.put(group_offset_key(&group), encode(&offset)?)
                    }
                    PartitionChange::PutProducer { producer_id, state } => {
                        batch.put(producer_key(producer_id), encode(&state)?)
                    }
                    PartitionChange::DeleteProducer { producer_id } => {
                        batch.delete(producer_key(producer_id))
                    }
                    PartitionChange::PutSourceStats { source_id, stats } => {
                        batch.put(source_stats_key(&source_id), encode(&stats)?)
                    }
                    PartitionChange::PutIdempotencyKey {
                        source_id,
                        key,
                        delivered,
                    } => batch.put(idempotency_key(&source_id, &key), encode(&delivered)?),
                    PartitionChange::DeleteIdempotencyKey { source_id, key } => {
                        batch.delete(idempotency_key(&source_id, &key))
                    }
                }
            }
            if meta_changed && let GroupData::Meta(m) = &inner.data {
                batch.put(KEY_META_STATE, encode(m)?);
            }
            batch.put(KEY_HEADER, encode(&Self::header_of(&inner))?);
            applied_index = inner.last_applied.as_ref().map_or(0, |id| id.index);
        }
        self.shared.storage.state_write(self.shared.group, batch)?;
        drop(header_write);
        self.shared.applied_tx.send_replace(applied_index);
        for (responder, response) in responses {
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        pass(&self.shared.storage, Failpoint::SnapshotInstall).await?;
        let data: GroupData = decode(&snapshot)?;
        let kind_matches = matches!(
            (&data, GroupData::empty_for(self.shared.group)),
            (GroupData::Meta(_), GroupData::Meta(_))
                | (GroupData::Partition(_), GroupData::Partition(_))
        );
        if !kind_matches {
            return Err(invalid_data(format!(
                "snapshot of the wrong kind for group {}",
                self.shared.group
            )));
        }
        match &data {
            GroupData::Partition(p) => {
                p.check_invariants().map_err(invalid_data)?;
                // The leader built the snapshot from a state that kept them.
                debug_assert_ok!(
                    p.check_all_invariants(),
                    "group {}: partition invariant broken in a snapshot",
                    self.shared.group
                );
            }
            GroupData::Meta(m) => debug_assert_ok!(
                meta::check_invariants(m),
                "metadata invariant broken in a snapshot"
            ),
        }
        let header_write = self.shared.header_writes.lock();
        let (applied_index, local_first) = {
            let mut inner = self.shared.inner.write();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            // The snapshot replaces the log up to its last entry, so this
            // replica holds message bytes only for later entries, until the
            // backfill task fetches the retained ones below (`backfill.rs`).
            inner.local_first_log_index = meta.last_log_id.as_ref().map_or(0, |id| id.index + 1);
            inner.data = data;
            self.persist_all(&inner)?;
            (
                inner.last_applied.as_ref().map_or(0, |id| id.index),
                inner.local_first_log_index,
            )
        };
        let mut batch = StateBatch::new();
        batch.put(KEY_SNAPSHOT, encode(&(meta.clone(), snapshot))?);
        self.shared.storage.state_write(self.shared.group, batch)?;
        drop(header_write);
        self.shared.applied_tx.send_replace(applied_index);
        self.shared.local_first_tx.send_replace(local_first);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>> {
        let Some(bytes) = self
            .shared
            .storage
            .state_get(self.shared.group, KEY_SNAPSHOT)?
        else {
            return Ok(None);
        };
        let (meta, snapshot): (SnapshotMeta, Vec<u8>) = decode(&bytes)?;
        Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::type_config::alias::EntryOf;
    use openraft::type_config::alias::LeaderIdOf;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::storage::StorageConfig;

    /// A snapshot written before push subscriptions (and one written before
    /// partition moves) still reads, with no subscriptions.
    #[test]
    fn metadata_stored_by_older_versions_still_reads() {
        let mut state = MetaState::default();
        let create = crate::raft::types::MetaCommand::CreateTopic {
            spec: crate::state_machine::meta::spec("a", 2, 1),
            now_ms: 1,
        };
        meta::apply(&mut state, &create, &[NodeId(1)]);
        state.draining.insert(NodeId(1));
        let before_subscriptions = bincode::serialize(&(
            &state.topics,
            state.next_topic_id,
            &state.tokens,
            state.next_token_id,
            state.cluster_secret,
            &state.sources,
            &state.moves,
            &state.moved,
            &state.draining,
            state.balancing,
        ))
        .unwrap();
        assert_eq!(decode_meta_state(&before_subscriptions).unwrap(), state);
        let before_moves = bincode::serialize(&(
            &state.topics,
            state.next_topic_id,
            &state.tokens,
            state.next_token_id,
            state.cluster_secret,
            &state.sources,
        ))
        .unwrap();
        let read = decode_meta_state(&before_moves).unwrap();
        assert_eq!(read.topics, state.topics);
        assert!(read.draining.is_empty() && read.subscriptions.is_empty());
        assert_eq!(decode_meta_state(&encode(&state).unwrap()).unwrap(), state);
    }

    /// Applies blank entries of term 1 at `indexes`, in one call.
    async fn apply_blanks(sm: &mut GroupStateMachine, indexes: &[u64]) -> io::Result<()> {
        let leader = LeaderIdOf::<TypeConfig>::new_committed(1, NodeId(1));
        let items: Vec<io::Result<EntryResponder<TypeConfig>>> = indexes
            .iter()
            .map(|&index| {
                let entry = EntryOf::<TypeConfig>::new_blank(LogId::new(leader, index));
                Ok((entry, None))
            })
            .collect();
        sm.apply(futures::stream::iter(items)).await
    }

    fn open_partition(dir: &tempfile::TempDir) -> GroupStateMachine {
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        GroupStateMachine::open(storage, GroupId(7)).unwrap()
    }

    #[tokio::test]
    async fn apply_resumes_after_the_last_applied_entry_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_partition(&dir);
        apply_blanks(&mut sm, &[1, 2]).await.unwrap();
        apply_blanks(&mut sm, &[3]).await.unwrap();
        drop(sm);
        let mut sm = open_partition(&dir);
        apply_blanks(&mut sm, &[4, 5]).await.unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|id| id.index), Some(5));
    }

    #[tokio::test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "group 7: entries apply once each and in log order, but entry 1")]
    async fn an_entry_applied_again_after_a_reopen_stops_a_debug_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_partition(&dir);
        apply_blanks(&mut sm, &[1, 2]).await.unwrap();
        drop(sm);
        let mut sm = open_partition(&dir);
        let _ = apply_blanks(&mut sm, &[1]).await;
    }

    #[tokio::test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "but entry 2 follows the last applied")]
    async fn an_entry_applied_twice_stops_a_debug_build() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_partition(&dir);
        let _ = apply_blanks(&mut sm, &[1, 2, 2]).await;
    }

    #[test]
    fn idempotency_keys_read_back_as_the_pair_they_were_written_from() {
        for (source, key) in [("src_1", "k"), ("src_1k", ""), ("", "src_1k"), ("s", "ü ")] {
            let stored = idempotency_key(source, key);
            assert_eq!(
                parse_idempotency_key(&stored).unwrap(),
                (source.to_string(), key.to_string())
            );
        }
        assert_ne!(idempotency_key("src_1", "k"), idempotency_key("src_1k", ""));
        assert!(parse_idempotency_key(b"k\x00\x09ab").is_err());
    }
}
