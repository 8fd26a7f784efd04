//! The openraft log store of one group.

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use serde::Serialize;

use super::CF_LOGS;
use super::CF_META;
use super::Storage;
use super::StorageError;
use super::SyncMode;
use super::check_entry_index;
use super::decode_value;
use super::encode_value;
use super::keys;
use super::keys::MetaTag;
use crate::model::GroupId;

/// RocksDB's write-batch layout: a header (sequence number and count), then per record a
/// tag, the column family id and two lengths as varints of at most five bytes each.
const WRITE_BATCH_HEADER: usize = 12;
const WRITE_BATCH_RECORD_OVERHEAD: usize = 16;

/// Bytes of entry values after which `limited_get_log_entries` stops, so that one replication
/// read of a far-behind follower does not load the whole log. At least one entry is returned.
const LIMITED_READ_BYTES_MAX: usize = 4 << 20;

/// The Raft log and Raft metadata of one group, stored in the node's [`Storage`].
///
/// Cloning is cheap; a clone is also the log reader.
pub struct LogStore<C> {
    storage: Storage,
    group: GroupId,
    // fn() -> C: the store holds no C, so it is Send and Sync whatever C is.
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            storage: self.storage.clone(),
            group: self.group,
            _config: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    pub(super) fn new(storage: Storage, group: GroupId) -> Self {
        LogStore {
            storage,
            group,
            _config: PhantomData,
        }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The last purged log id: openraft's log starts after it.
    pub fn last_purged(&self) -> Result<Option<LogIdOf<C>>, StorageError> {
        self.storage
            .inner
            .get_meta(self.group, MetaTag::LastPurged, "last purged")
    }

    /// The first index of openraft's log: entries at or below the last purged log id are not
    /// part of it, even where a replica holds some (`write_below_purged`).
    fn first_visible_index(&self) -> Result<Option<u64>, StorageError> {
        Ok(match self.last_purged()? {
            Some(purged) => purged.index.checked_add(1),
            None => Some(0),
        })
    }

    /// Reads the entries in `range` of openraft's log (nothing at or below the last purged log
    /// id) from one consistent view of the database (an iterator reads from an implicit
    /// snapshot). Stops after `bytes_max` bytes of values, if given, but always returns the
    /// first entry found.
    fn read_range(
        &self,
        range: &impl RangeBounds<u64>,
        bytes_max: Option<usize>,
    ) -> Result<Vec<C::Entry>, StorageError> {
        let Some((start, end)) = index_range(range) else {
            return Ok(Vec::new());
        };
        let Some(first_visible) = self.first_visible_index()? else {
            return Ok(Vec::new());
        };
        let start = start.max(first_visible);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let group = self.group;
        let inner = &*self.storage.inner;
        let start_key = keys::log_key(group, start);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start_key.to_vec());
        read_options.set_iterate_upper_bound(keys::log_range_end(group, end));
        // The raw iterator lends each value: the entry is decoded straight from RocksDB's
        // buffer. The owning iterator copied every value (a whole publish batch) first, and
        // this read runs for every entry applied and every entry sent to a follower.
        let read_error = |e: rocksdb::Error| StorageError::Read {
            group,
            what: "log entry",
            source: e.into(),
        };
        let mut iter = inner
            .db
            .raw_iterator_cf_opt(inner.cf(CF_LOGS)?, read_options);
        iter.seek(start_key);

        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut previous: Option<u64> = None;
        while let Some((key, value)) = iter.item() {
            let index = log_index_of(group, key)?;
            // Entries may be missing before the first one (purged) and after the last one (not
            // yet appended), never in between.
            if let Some(previous) = previous {
                let expected = previous.saturating_add(1);
                if index != expected {
                    return Err(StorageError::LogHole {
                        group,
                        expected,
                        found: index,
                    });
                }
            }
            previous = Some(index);
            let entry: C::Entry = inner.decode_stored(group, "log entry", key, value)?;
            check_entry_index(group, index, entry.index())?;
            entries.push(entry);
            bytes = bytes.saturating_add(value.len());
            if bytes_max.is_some_and(|max| bytes >= max) {
                return Ok(entries);
            }
            iter.next();
        }
        // The iterator stops at the end of the range or on an error; only the status tells.
        iter.status().map_err(read_error)?;
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<C>, StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let last_purged = self.last_purged()?;
        // Entries at or below the last purged id (a replica's backfill, see
        // `write_below_purged`) are not openraft's: the last entry is looked for above it.
        let first_visible = match &last_purged {
            Some(purged) => purged.index.saturating_add(1),
            None => 0,
        };

        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(keys::log_key(group, first_visible).to_vec());
        read_options.set_iterate_upper_bound(keys::log_range_end(group, None));
        let mut iter = inner
            .db
            .raw_iterator_cf_opt(inner.cf(CF_LOGS)?, read_options);
        iter.seek_to_last();
        let last_entry = match (iter.key(), iter.value()) {
            (Some(key), Some(value)) => {
                let index = log_index_of(group, key)?;
                let entry: C::Entry = inner.decode_stored(group, "log entry", key, value)?;
                check_entry_index(group, index, entry.index())?;
                Some(entry.log_id())
            }
            _ => {
                iter.status().map_err(|e| StorageError::Read {
                    group,
                    what: "log entry",
                    source: e.into(),
                })?;
                None
            }
        };

        // The iterator starts after last_purged; an entry at or below it would be a bug here.
        if let (Some(last), Some(purged)) = (&last_entry, &last_purged)
            && last.index <= purged.index
        {
            return Err(StorageError::Corrupt {
                group,
                what: "log entry",
                detail: format!("last entry {last} is not after the last purged {purged}"),
            });
        }
        let last_log_id = last_entry.or_else(|| last_purged.clone());
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    fn put_meta<T: Serialize>(
        &self,
        tag: MetaTag,
        what: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let bytes = encode_value(group, what, value)?;
        inner
            .db
            .put_cf(inner.cf(CF_META)?, keys::meta_key(group, tag), bytes)
            .map_err(|e| inner.write_failed(group, what, e))
    }

    fn delete_meta(&self, tag: MetaTag, what: &'static str) -> Result<(), StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        inner
            .db
            .delete_cf(inner.cf(CF_META)?, keys::meta_key(group, tag))
            .map_err(|e| inner.write_failed(group, what, e))
    }

    /// Waits, without blocking the calling thread, for an fsync of everything written so far.
    async fn wait_for_sync(&self) -> Result<(), StorageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.storage.inner.syncer.enqueue(Box::new(move |result| {
            // The receiver is gone only if the caller stopped waiting; nobody is left to tell.
            let _ = tx.send(result);
        }));
        rx.await.map_err(|_| StorageError::SyncerStopped)?
    }

    /// Writes `entries` as one unsynced batch; they are readable when this returns.
    ///
    /// The entries must be consecutive: openraft appends a run of its log, and
    /// `write_below_purged` checks its run first. Anything else is a bug that would
    /// leave a hole in the log (or reorder it), so debug builds stop on it; release
    /// builds refuse the write, which stops the group rather than the whole node.
    fn write_entries(
        &self,
        entries: impl IntoIterator<Item = C::Entry>,
    ) -> Result<(), StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let cf = inner.cf(CF_LOGS)?;
        let mut previous: Option<u64> = None;
        let mut encoded = Vec::new();
        for entry in entries {
            let index = entry.index();
            if let Some(previous) = previous {
                let consecutive = previous.checked_add(1) == Some(index);
                debug_assert!(
                    consecutive,
                    "group {group}: log entries are appended consecutively, but entry {index} \
                     follows entry {previous}"
                );
                if !consecutive {
                    return Err(StorageError::LogHole {
                        group,
                        expected: previous.saturating_add(1),
                        found: index,
                    });
                }
            }
            previous = Some(index);
            encoded.push((
                keys::log_key(group, index),
                encode_value(group, "log entry", &entry)?,
            ));
        }
        // Sized up front: growing RocksDB's batch buffer entry by entry copied it again.
        let bytes = encoded
            .iter()
            .map(|(key, value)| key.len() + value.len() + WRITE_BATCH_RECORD_OVERHEAD)
            .sum::<usize>();
        let mut batch = WriteBatch::with_capacity_bytes(WRITE_BATCH_HEADER + bytes);
        for (key, value) in &encoded {
            batch.put_cf(cf, key, value);
        }
        if batch.is_empty() {
            return Ok(());
        }
        #[cfg(not(feature = "planted-bug-unlogged-appends"))]
        let options = rocksdb::WriteOptions::default();
        // A bug planted on purpose, for jepsen-lite to find (never in a normal build): log
        // entries bypass the WAL, so they are acknowledged while only in the memtable, and a
        // crash of a majority loses committed messages.
        #[cfg(feature = "planted-bug-unlogged-appends")]
        let options = {
            let mut options = rocksdb::WriteOptions::default();
            options.disable_wal(true);
            options
        };
        inner
            .db
            .write_opt(batch, &options)
            .map_err(|e| inner.write_failed(group, "log entry", e))
    }

    /// Deletes the entries with index >= `from` in one range delete.
    fn delete_from(&self, from: u64) -> Result<(), StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            inner.cf(CF_LOGS)?,
            keys::log_key(group, from).to_vec(),
            keys::log_range_end(group, None),
        );
        inner
            .db
            .write(batch)
            .map_err(|e| inner.write_failed(group, "log entry", e))
    }

    /// Records `log_id` as the last purged log id and deletes the entries up to it, in one
    /// batch.
    fn purge_upto(&self, log_id: &LogIdOf<C>) -> Result<(), StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let _purging = inner.log_purge.lock();
        let mut batch = WriteBatch::default();
        // The last purged id goes first: even read as two steps, the log never has a hole
        // after last_purged. In one batch both take effect together anyway.
        batch.put_cf(
            inner.cf(CF_META)?,
            keys::meta_key(group, MetaTag::LastPurged),
            encode_value(group, "last purged", log_id)?,
        );
        batch.delete_range_cf(
            inner.cf(CF_LOGS)?,
            keys::log_key(group, 0).to_vec(),
            keys::log_range_end(group, log_id.index.checked_add(1)),
        );
        inner
            .db
            .write(batch)
            .map_err(|e| inner.write_failed(group, "last purged", e))
    }

    /// Waits, without blocking the calling thread, for an fsync of everything written so far,
    /// in every [`SyncMode`]: a backfill lowers `local_first_log_index` only after its entries
    /// are on disk.
    pub async fn sync(&self) -> Result<(), StorageError> {
        self.wait_for_sync().await
    }

    /// Decodes an entry in the stored format (as [`LogStore::read_tail`] returns it, here or
    /// on a peer) and checks that it is the entry at `index`. A checksum mismatch is an error
    /// but does not mark this storage failed: the bytes did not come from this disk.
    pub fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<C::Entry, StorageError> {
        let key = keys::log_key(self.group, index);
        let entry: C::Entry = decode_value(self.group, "log entry", &key, bytes)?;
        check_entry_index(self.group, index, entry.index())?;
        Ok(entry)
    }

    /// The stored bytes of the newest entries of `first..=last`, oldest first, from one
    /// consistent view of the database: a run ending at `last`, read down from it until
    /// `first`, a missing entry, or the entry that would take the run past `max_bytes` (never
    /// the first one read, so an entry larger than the budget is still returned). Entries at
    /// or below the last purged id are read too: this serves another replica's backfill.
    /// Every entry returned passed its checksum; one that fails it fails the read (and marks
    /// the storage failed).
    pub fn read_tail(
        &self,
        first: u64,
        last: u64,
        max_bytes: usize,
    ) -> Result<RawTail, StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        if last < first {
            return Ok(RawTail {
                entries: Vec::new(),
                end: TailEnd::ReachedFirst,
            });
        }
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(keys::log_key(group, first).to_vec());
        read_options.set_iterate_upper_bound(keys::log_range_end(group, last.checked_add(1)));
        let mut iter = inner
            .db
            .raw_iterator_cf_opt(inner.cf(CF_LOGS)?, read_options);
        iter.seek_for_prev(keys::log_key(group, last));
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut expected = last;
        let end = loop {
            let Some((key, value)) = iter.item() else {
                iter.status().map_err(|e| StorageError::Read {
                    group,
                    what: "log entry",
                    source: e.into(),
                })?;
                break TailEnd::Missing(expected);
            };
            if log_index_of(group, key)? != expected {
                break TailEnd::Missing(expected);
            }
            if !entries.is_empty() && bytes.saturating_add(value.len()) > max_bytes {
                break TailEnd::Budget;
            }
            // Checked here as well as by the replica that decodes it: a corrupt entry is
            // never passed on, and it is this disk that is no longer trusted.
            inner.verify_stored(group, "log entry", key, value)?;
            bytes = bytes.saturating_add(value.len());
            entries.push(value.to_vec());
            if expected == first {
                break TailEnd::ReachedFirst;
            }
            expected -= 1;
            iter.prev();
        };
        entries.reverse();
        Ok(RawTail { entries, end })
    }

    /// Writes `entries` (consecutive) below the last purged log id, where openraft neither
    /// reads, truncates nor counts them: a replica that installed a snapshot fetches the
    /// retained messages the snapshot spans this way (`backfill.rs`). The write is not synced:
    /// call [`LogStore::sync`] before relying on it.
    ///
    /// `admit` runs under the lock every purge takes, with the last purged log id, so that
    /// nothing it checks is purged before the write lands (an entry written after the purge
    /// that should have dropped it would stay until a later purge). It answers the lowest
    /// index still worth writing (entries below it are left out), or `None` to write nothing.
    /// Returns the first index written.
    pub fn write_below_purged(
        &self,
        entries: Vec<C::Entry>,
        admit: impl FnOnce(Option<&LogIdOf<C>>) -> Option<u64>,
    ) -> Result<Option<u64>, StorageError> {
        let group = self.group;
        let refused = |detail: String| StorageError::NotBelowPurged { group, detail };
        for pair in entries.windows(2) {
            if pair[0].index().checked_add(1) != Some(pair[1].index()) {
                return Err(refused(format!(
                    "entry {} follows entry {}",
                    pair[1].index(),
                    pair[0].index()
                )));
            }
        }
        let _purging = self.storage.inner.log_purge.lock();
        let last_purged = self.last_purged()?;
        let Some(from) = admit(last_purged.as_ref()) else {
            return Ok(None);
        };
        let Some(last) = entries.last().map(|entry| entry.index()) else {
            return Ok(None);
        };
        if last_purged
            .as_ref()
            .is_none_or(|purged| last > purged.index)
        {
            return Err(refused(format!(
                "entry {last} is not below the last purged log id {}",
                last_purged.map_or("(none)".to_string(), |purged| purged.to_string())
            )));
        }
        let kept: Vec<C::Entry> = entries
            .into_iter()
            .filter(|entry| entry.index() >= from)
            .collect();
        let Some(first) = kept.first().map(|entry| entry.index()) else {
            return Ok(None);
        };
        self.write_entries(kept)?;
        Ok(Some(first))
    }

    /// Deletes the entries at or below `upto` that lie below the last purged log id (a
    /// backfill's that retention has since forgotten, or left behind by one that stopped half
    /// way), unsynced like a purge: should a crash undo it, they are deleted again. Writes
    /// nothing when there is nothing to delete, so calling it often leaves no range
    /// tombstones behind. Returns the index it deleted up to.
    pub fn delete_below_purged(&self, upto: u64) -> Result<Option<u64>, StorageError> {
        let group = self.group;
        let inner = &*self.storage.inner;
        let _purging = inner.log_purge.lock();
        let Some(purged) = self.last_purged()? else {
            return Ok(None);
        };
        let limit = upto.min(purged.index);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(keys::log_key(group, 0).to_vec());
        read_options.set_iterate_upper_bound(keys::log_range_end(group, limit.checked_add(1)));
        let mut iter = inner
            .db
            .raw_iterator_cf_opt(inner.cf(CF_LOGS)?, read_options);
        iter.seek_to_first();
        if iter.key().is_none() {
            iter.status().map_err(|e| StorageError::Read {
                group,
                what: "log entry",
                source: e.into(),
            })?;
            return Ok(None);
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            inner.cf(CF_LOGS)?,
            keys::log_key(group, 0).to_vec(),
            keys::log_range_end(group, limit.checked_add(1)),
        );
        inner
            .db
            .write(batch)
            .map_err(|e| inner.write_failed(group, "log entry", e))?;
        Ok(Some(limit))
    }
}

/// The stored bytes of a run of entries, as [`LogStore::read_tail`] read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTail {
    /// Oldest first; the last is the entry asked for last.
    pub entries: Vec<Vec<u8>>,
    /// Why the run starts where it does.
    pub end: TailEnd,
}

/// What [`LogStore::read_tail`] found below the run it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailEnd {
    /// The run goes down to the first index asked for.
    ReachedFirst,
    /// The byte budget ended it; older entries may be there.
    Budget,
    /// The entry at this index is not in the log (purged, or never held): the run cannot go
    /// further down.
    Missing(u64),
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        Ok(self.read_range(&range, None)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self
            .storage
            .inner
            .get_meta(self.group, MetaTag::Vote, "vote")?)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, io::Error> {
        Ok(self.read_range(&(start..end), Some(LIMITED_READ_BYTES_MAX))?)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        Ok(self.log_state()?)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.put_meta(MetaTag::Vote, "vote", vote)?;
        // Synced in every SyncMode: see SyncMode::Never.
        self.wait_for_sync().await?;
        Ok(())
    }

    /// Persists `committed` without fsync. That is safe because:
    /// - the WAL is recovered as a prefix, and the entries up to `committed` were written
    ///   before it, so a committed id that survives a crash never points past the surviving
    ///   log;
    /// - if it is lost, the node restarts with an older committed id, which openraft handles
    ///   (persisting it is optional) by re-applying less and catching up from the leader;
    /// - the next fsync of any group (append or vote) makes it durable, so only the last
    ///   sync interval can be lost.
    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        match committed {
            Some(committed) => self.put_meta(MetaTag::Committed, "committed", &committed)?,
            None => self.delete_meta(MetaTag::Committed, "committed")?,
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self
            .storage
            .inner
            .get_meta(self.group, MetaTag::Committed, "committed")?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries)?;
        match self.storage.inner.config.sync_mode {
            // Even an empty append waits for the syncer: callbacks must complete in order,
            // and an IOFlushed reports a watermark that covers every earlier append.
            SyncMode::Always => self.storage.inner.syncer.enqueue(Box::new(move |result| {
                callback.io_completed(result.map_err(io::Error::from));
            })),
            SyncMode::Never => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    /// Deletes the entries after `last_log_id` in one atomic range delete, so there is never a
    /// hole, and without fsync. If a crash loses the deletion, the node comes back with the
    /// longer log it had before, which is a state it was already in; openraft acknowledges
    /// nothing based on the truncation until a later append has been fsynced, and that fsync
    /// covers the truncation too.
    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            None => 0,
            Some(log_id) => match log_id.index.checked_add(1) {
                Some(from) => from,
                None => return Ok(()),
            },
        };
        // openraft truncates only after its last purged id; entries at or below it are
        // committed, and a replica's backfilled ones (`write_below_purged`) must stay.
        let Some(first_visible) = self.first_visible_index()? else {
            return Ok(());
        };
        self.delete_from(from.max(first_visible))?;
        Ok(())
    }

    /// Purges the entries up to `log_id` without fsync. If a crash loses the purge, the
    /// entries and the previous last purged id come back together (one batch); they are
    /// committed entries that will be purged again.
    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        self.purge_upto(&log_id)?;
        Ok(())
    }
}

/// Converts `range` to a start index and an exclusive end index (`None`: to the end of the
/// log). `None` if the range is empty.
fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.checked_add(1),
        Bound::Excluded(&end) => Some(end),
        Bound::Unbounded => None,
    };
    match end {
        Some(end) if end <= start => None,
        _ => Some((start, end)),
    }
}

fn log_index_of(group: GroupId, key: &[u8]) -> Result<u64, StorageError> {
    match keys::decode_log_key(key) {
        Some((key_group, index)) if key_group == group => Ok(index),
        _ => Err(StorageError::Corrupt {
            group,
            what: "log entry",
            detail: format!("unexpected key {key:02x?} in the group's key range"),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::ops::Bound;

    use openraft::type_config::alias::EntryOf;
    use openraft::type_config::alias::LeaderIdOf;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::storage::StorageConfig;
    use crate::storage::tests::TestConfig;

    /// Entries of term 1 at `indexes`, in that order.
    fn entries_at(indexes: &[u64]) -> Vec<EntryOf<TestConfig>> {
        let leader = LeaderIdOf::<TestConfig>::new_committed(1, 1);
        indexes
            .iter()
            .map(|&index| {
                let log_id = LogIdOf::<TestConfig>::new(leader, index);
                EntryOf::<TestConfig>::new_normal(log_id, format!("payload {index}"))
            })
            .collect()
    }

    fn store(dir: &tempfile::TempDir) -> LogStore<TestConfig> {
        Storage::open(dir.path(), StorageConfig::default())
            .unwrap()
            .log_store(GroupId(5))
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "group 5: log entries are appended consecutively, but entry 4")]
    fn an_append_that_would_leave_a_hole_stops_a_debug_build() {
        let dir = tempfile::tempdir().unwrap();
        let _ = store(&dir).write_entries(entries_at(&[1, 2, 4]));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn an_append_that_would_leave_a_hole_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let refused = store.write_entries(entries_at(&[1, 2, 4])).unwrap_err();
        assert!(matches!(
            refused,
            StorageError::LogHole {
                group: 5,
                expected: 3,
                found: 4
            }
        ));
        assert_eq!(store.read_range(&(0..), None).unwrap().len(), 0);
    }

    #[test]
    fn consecutive_entries_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.write_entries(entries_at(&[1, 2, 3])).unwrap();
        let indexes: Vec<u64> = store
            .read_range(&(0..), None)
            .unwrap()
            .iter()
            .map(|entry| entry.index())
            .collect();
        assert_eq!(indexes, vec![1, 2, 3]);
    }

    #[test]
    fn index_range_handles_every_bound() {
        assert_eq!(index_range(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_range(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_range(&(3..)), Some((3, None)));
        assert_eq!(index_range(&(..7)), Some((0, Some(7))));
        assert_eq!(index_range(&(..)), Some((0, None)));
        assert_eq!(index_range(&(3..3)), None);
        assert_eq!(index_range(&(Bound::Included(7), Bound::Excluded(3))), None);
        assert_eq!(index_range(&(0..=u64::MAX)), Some((0, None)));
        assert_eq!(
            index_range(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
        assert_eq!(
            index_range(&(Bound::Excluded(2), Bound::Included(3))),
            Some((3, Some(4)))
        );
    }
}
