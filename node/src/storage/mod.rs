//! Durable storage of a node: Raft logs, Raft metadata and state-machine data of every group,
//! in one RocksDB.
//!
//! This is the only module that uses RocksDB. Everything else sees [`Storage`], [`LogStore`],
//! [`StateBatch`] and [`StorageError`].
//!
//! # Layout
//!
//! One RocksDB per node with three column families: `logs` (Raft entries), `raft_meta` (vote,
//! committed log id and last purged log id per group) and `state` (state-machine data). Every
//! key starts with the big-endian group id; `keys.rs` documents the exact layout. Groups do not get
//! column families of their own, so opening stays cheap with thousands of groups.
//!
//! # Durability contract
//!
//! All Raft data goes through RocksDB's single write-ahead log, which is never disabled. The
//! WAL records writes in the order they were made and recovery restores a prefix of it
//! (point-in-time recovery), so writes are never reordered, across groups and across column
//! families: if a write survives a crash, every write made before it survives too.
//!
//! - `save_vote` returns only after the WAL holding the vote has been fsynced.
//! - `append` writes its entries as one unsynced batch, so they are readable when it returns.
//!   With [`SyncMode::Always`] the IOFlushed callback fires only after an fsync of the WAL that
//!   started after the write. One syncer thread per [`Storage`] does that fsync for every group
//!   at once (group commit) and fires the callbacks in the order they were queued. With
//!   [`SyncMode::Never`] the callback fires right after the write; see there.
//! - `truncate_after`, `purge` and `save_committed` are not synced. Each is one atomic batch,
//!   so none can leave a hole, and the WAL order makes any later fsync (the next append or vote
//!   of any group) cover them. Why losing them in a crash is safe is explained at each method.
//! - State-machine writes ([`Storage::state_write`]) are not synced: the state machine is
//!   rebuilt by re-applying committed entries after a restart.
//! - [`Storage::delete_group`] is synced before it returns.
//! - [`LogStore::write_below_purged`] (a replica's backfill, `backfill.rs`) writes entries
//!   below a group's last purged log id, unsynced; the caller waits for [`LogStore::sync`]
//!   before it counts on them. openraft never sees such entries: its reads, its log state
//!   and truncation start after the last purged id, and every purge, which deletes from index
//!   0, takes them along.
//! - A failed fsync fails every waiting and every later append and vote with
//!   [`StorageError::SyncFailed`]: after a failed fsync the disk is no longer trusted, and
//!   openraft stops the group on such an error.
//! - Every value of `logs` and `raft_meta` carries a checksum (`codec.rs`), checked on every
//!   read. A value read from this disk that fails it fails the read with
//!   [`StorageError::Checksum`] and marks the storage failed like a failed write: the disk
//!   returned other bytes than were written, so it is no longer trusted either.
//!
//! # Threads
//!
//! Every [`Storage`] clone and every [`LogStore`] shares one syncer thread. It stops when the
//! last of them is dropped; that drop waits for the fsync in progress, if any.

mod codec;
mod error;
mod keys;
mod log_store;
mod syncer;

#[cfg(test)]
mod tests;

use crate::model::GroupId;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use rocksdb::ColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::DB;
use rocksdb::DBCompressionType;
use rocksdb::DBRecoveryMode;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::error::EngineError;
pub use self::error::StorageError;
pub use self::keys::GROUP_ID_MAX;
use self::keys::MetaTag;
pub use self::log_store::LogStore;
pub use self::log_store::RawTail;
pub use self::log_store::TailEnd;
pub use self::syncer::SyncMetrics;
use self::syncer::Syncer;
use crate::failpoints::Failpoints;

/// A state-machine key (without the group prefix) and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

const CF_LOGS: &str = "logs";
const CF_META: &str = "raft_meta";
const CF_STATE: &str = "state";
const COLUMN_FAMILIES: [&str; 3] = [CF_LOGS, CF_META, CF_STATE];
/// The logs column family's memtable size (RocksDB's default is 64 MiB).
const LOGS_WRITE_BUFFER_BYTES: usize = 128 << 20;
/// Log entries at least this large (publish batches) go to blob files; small ones (votes'
/// blank entries, membership, offset commits) stay in the SSTs.
const LOGS_MIN_BLOB_BYTES: u64 = 4 << 10;
const LOGS_BLOB_FILE_BYTES: u64 = 256 << 20;
/// Bounds the WAL kept for column families with little traffic: past it, RocksDB flushes them
/// so that old WAL files can go.
const MAX_TOTAL_WAL_BYTES: u64 = 512 << 20;

/// Upper bound of the info log files RocksDB keeps next to the data.
const INFO_LOG_FILES_MAX: usize = 10;

/// When an append counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// An append is acknowledged (its IOFlushed callback fires) only after the WAL holding it
    /// has been fsynced.
    #[default]
    Always,
    /// A documented relaxation: an append is acknowledged as soon as its write reached the
    /// operating system, and the fsync is left to RocksDB and the kernel. Entries survive a
    /// process crash but may be lost on power failure or kernel crash, and a node that loses
    /// acknowledged entries can break Raft's guarantees. Votes are still fsynced: they are
    /// rare, and a forgotten vote lets a node vote twice in one term.
    Never,
}

#[derive(Clone, Debug, Default)]
pub struct StorageConfig {
    pub sync_mode: SyncMode,
    /// The node's failpoints, for clusters tests run in one process (`failpoints.rs`); `None`
    /// in production. The state machines and the write path reach them through
    /// [`Storage::failpoints`].
    pub failpoints: Option<Arc<Failpoints>>,
}

/// A handle to the node's storage. Cheap to clone; all clones share one database and one
/// syncer thread.
#[derive(Clone)]
pub struct Storage {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: StorageConfig,
    db: Arc<DB>,
    syncer: Syncer,
    /// Set, once, when a write or an fsync failed or a read failed its checksum: see
    /// [`Storage::failure`].
    failure: Arc<StorageFailure>,
    /// Held by every write to the log below a group's last purged log id, and by every
    /// purge: what such a write checks (the last purged id, what the group still needs) then
    /// cannot change before it lands. See [`LogStore::write_below_purged`].
    log_purge: parking_lot::Mutex<()>,
}

/// The first write, fsync or checksum failure of a storage. Once set, the disk is no longer
/// trusted.
#[derive(Debug)]
pub(crate) struct StorageFailure {
    reason: tokio::sync::watch::Sender<Option<String>>,
}

impl StorageFailure {
    fn new() -> StorageFailure {
        StorageFailure {
            reason: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Records `reason` unless a failure was recorded before (the first one is the cause).
    pub(crate) fn record(&self, reason: impl FnOnce() -> String) {
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason());
            true
        });
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.inner.path)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the storage in `dir`, creating the directory and the database if needed.
    pub fn open(dir: &Path, config: StorageConfig) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // The durability contract relies on recovery restoring a prefix of the WAL. This is
        // RocksDB's default; it is set here so that nobody changes it by accident.
        options.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
        // Every write reaches the operating system before it returns, which SyncMode::Never
        // relies on, and flush_wal(true) then only has to fsync.
        options.set_manual_wal_flush(false);
        options.set_keep_log_file_num(INFO_LOG_FILES_MAX);
        options.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);

        let descriptors = COLUMN_FAMILIES.map(|name| {
            let mut cf_options = Options::default();
            if name == CF_LOGS {
                // Message payloads are mostly compressed or random already, and LZ4 on them
                // showed up in profiles for both replication and catch-up reads (benches/
                // analysis.md). A bigger memtable keeps recent entries, the ones followers and
                // tailing consumers read back, out of SST blocks.
                cf_options.set_compression_type(DBCompressionType::None);
                cf_options.set_write_buffer_size(LOGS_WRITE_BUFFER_BYTES);
                // Key-value separation (integrated BlobDB): an entry's bytes are written to a
                // blob file once, at flush, and compactions move only the small keys. Stored
                // inline, every level rewrote the message data: 400 MB of 1 KiB messages made
                // the node write 2.8 GB. Entries are purged oldest first, so whole blob files
                // fall out of use and are deleted; garbage collection relocates the few live
                // blobs left in old files.
                cf_options.set_enable_blob_files(true);
                cf_options.set_min_blob_size(LOGS_MIN_BLOB_BYTES);
                cf_options.set_blob_file_size(LOGS_BLOB_FILE_BYTES);
                cf_options.set_enable_blob_gc(true);
            } else {
                cf_options.set_compression_type(DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(name, cf_options)
        });
        // Opening fails if the database has column families we do not know, which is what we
        // want for a data directory written by something else.
        let db = DB::open_cf_descriptors(&options, dir, descriptors).map_err(|e| {
            StorageError::Open {
                path: dir.to_path_buf(),
                source: e.into(),
            }
        })?;
        let db = Arc::new(db);
        let failure = Arc::new(StorageFailure::new());
        let syncer = Syncer::spawn(
            Arc::clone(&db),
            Arc::clone(&failure),
            config.failpoints.clone(),
        )?;
        let inner = Inner {
            path: dir.to_path_buf(),
            config,
            db,
            syncer,
            failure,
            log_purge: parking_lot::Mutex::new(()),
        };
        for name in COLUMN_FAMILIES {
            inner.cf(name)?;
        }
        Ok(Storage {
            inner: Arc::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Why this storage is no longer trusted: the first write or fsync that failed (a full
    /// disk, an I/O error), or the first value read that failed its checksum. `None` until
    /// then. The receiver changes once.
    pub fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.failure.reason.subscribe()
    }

    /// Declares the storage failed, as a failed write does: for failures found outside this
    /// module (a disk check) and for fault injection in tests.
    pub fn mark_failed(&self, reason: &str) {
        self.inner.failure.record(|| reason.to_string());
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    /// The node's failpoints, if it has any (only nodes tests start do).
    pub fn failpoints(&self) -> Option<&Arc<Failpoints>> {
        self.inner.config.failpoints.as_ref()
    }

    /// The Raft log store of `group`.
    ///
    /// # Panics
    ///
    /// If `group` is the reserved id `u64::MAX`: group ids are assigned by our own metadata,
    /// so that is a bug.
    pub fn log_store<C: RaftTypeConfig>(&self, group: GroupId) -> LogStore<C> {
        assert!(group <= GROUP_ID_MAX, "group id {group} is reserved");
        LogStore::new(self.clone(), group)
    }

    /// Reads one log entry of `group` with a single point lookup; `None` if it is not in the
    /// log (not yet appended, truncated or purged).
    pub fn read_entry<C: RaftTypeConfig>(
        &self,
        group: GroupId,
        index: u64,
    ) -> Result<Option<C::Entry>, StorageError> {
        check_group(group)?;
        let inner = &*self.inner;
        let key = keys::log_key(group, index);
        let Some(bytes) = inner
            .db
            .get_pinned_cf(inner.cf(CF_LOGS)?, key)
            .map_err(|e| StorageError::Read {
                group,
                what: "log entry",
                source: e.into(),
            })?
        else {
            return Ok(None);
        };
        let entry: C::Entry = inner.decode_stored(group, "log entry", &key, &bytes)?;
        check_entry_index(group, index, entry.index())?;
        Ok(Some(entry))
    }

    /// Reads a state-machine value of `group`.
    pub fn state_get(&self, group: GroupId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_group(group)?;
        let inner = &*self.inner;
        inner
            .db
            .get_cf(inner.cf(CF_STATE)?, keys::state_key(group, key))
            .map_err(|e| StorageError::Read {
                group,
                what: "state",
                source: e.into(),
            })
    }

    /// All state-machine entries of `group` whose key starts with `prefix`, ordered by key.
    /// The keys are returned without the group prefix.
    pub fn state_scan(&self, group: GroupId, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        check_group(group)?;
        let inner = &*self.inner;
        let read_error = |e: rocksdb::Error| StorageError::Read {
            group,
            what: "state",
            source: e.into(),
        };
        let (start, end) = keys::state_prefix_range(group, prefix);
        let mut read_options = ReadOptions::default();
        read_options.set_iterate_lower_bound(start.clone());
        read_options.set_iterate_upper_bound(end);
        let iter = inner.db.iterator_cf_opt(
            inner.cf(CF_STATE)?,
            read_options,
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(read_error)?;
            let Some(user_key) = key.get(keys::GROUP_PREFIX_LEN..) else {
                return Err(StorageError::Corrupt {
                    group,
                    what: "state",
                    detail: format!("key {key:02x?} is shorter than a group prefix"),
                });
            };
            out.push((user_key.to_vec(), value.into_vec()));
        }
        Ok(out)
    }

    /// Applies `batch` to the state of `group` atomically, without fsync: the state machine is
    /// rebuilt by re-applying committed entries after a crash.
    pub fn state_write(&self, group: GroupId, batch: StateBatch) -> Result<(), StorageError> {
        check_group(group)?;
        let inner = &*self.inner;
        let cf = inner.cf(CF_STATE)?;
        let mut write = WriteBatch::default();
        for op in batch.ops {
            match op {
                StateOp::Put(key, value) => write.put_cf(cf, keys::state_key(group, &key), value),
                StateOp::Delete(key) => write.delete_cf(cf, keys::state_key(group, &key)),
                StateOp::DeletePrefix(prefix) => {
                    let (start, end) = keys::state_prefix_range(group, &prefix);
                    write.delete_range_cf(cf, start, end);
                }
            }
        }
        inner
            .db
            .write(write)
            .map_err(|e| inner.write_failed(group, "state", e))
    }

    /// Removes every log entry, the Raft metadata and the state of `group` in one atomic,
    /// fsynced write. The group's Raft instance must have been shut down first.
    ///
    /// This blocks for an fsync: call it from a blocking context (`spawn_blocking`), not from a
    /// tokio worker.
    pub fn delete_group(&self, group: GroupId) -> Result<(), StorageError> {
        check_group(group)?;
        let inner = &*self.inner;
        let start = keys::group_prefix(group);
        let end = keys::group_end(group);
        let mut write = WriteBatch::default();
        for name in COLUMN_FAMILIES {
            write.delete_range_cf(inner.cf(name)?, start, end);
        }
        let mut write_options = WriteOptions::default();
        write_options.set_sync(true);
        inner
            .db
            .write_opt(write, &write_options)
            .map_err(|e| inner.write_failed(group, "group", e))
    }

    /// The groups that have any Raft metadata (a vote, a committed or a last purged log id) or
    /// any log entry, in ascending order.
    pub fn groups_on_disk(&self) -> Result<Vec<GroupId>, StorageError> {
        let inner = &*self.inner;
        let mut groups = inner.distinct_groups(CF_META)?;
        groups.extend(inner.distinct_groups(CF_LOGS)?);
        groups.sort_unstable();
        groups.dedup();
        Ok(groups)
    }

    /// Group commit's fsync latency and batch size histograms.
    pub fn sync_metrics(&self) -> &SyncMetrics {
        self.inner.syncer.metrics()
    }

    #[cfg(test)]
    fn syncer(&self) -> &Syncer {
        &self.inner.syncer
    }
}

impl Inner {
    /// The error of a failed write, which also marks the storage failed: RocksDB fails writes
    /// for a full disk or an I/O error, and then stops taking writes until reopened.
    fn write_failed(&self, group: GroupId, what: &'static str, e: rocksdb::Error) -> StorageError {
        let error = StorageError::Write {
            group,
            what,
            source: e.into(),
        };
        self.failure.record(|| error.to_string());
        error
    }

    fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or(StorageError::MissingColumnFamily { name })
    }

    fn get_meta<T: DeserializeOwned>(
        &self,
        group: GroupId,
        tag: MetaTag,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let key = keys::meta_key(group, tag);
        let Some(bytes) =
            self.db
                .get_pinned_cf(self.cf(CF_META)?, key)
                .map_err(|e| StorageError::Read {
                    group,
                    what,
                    source: e.into(),
                })?
        else {
            return Ok(None);
        };
        self.decode_stored(group, what, &key, &bytes).map(Some)
    }

    /// Decodes a value read from this storage's disk. A value that fails its checksum marks
    /// the storage failed, as a failed write does: the disk returned other bytes than were
    /// written, so nothing it holds is trusted, and the node stops rather than serve or
    /// replicate them. Other decode errors only fail the read, as before checksums.
    fn decode_stored<T: DeserializeOwned>(
        &self,
        group: GroupId,
        what: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StorageError> {
        decode_value(group, what, key, bytes).inspect_err(|e| self.note_corruption(e))
    }

    /// Checks a value read from this storage's disk as [`Inner::decode_stored`] does, for
    /// values passed on undecoded.
    fn verify_stored(
        &self,
        group: GroupId,
        what: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        codec::verify(bytes)
            .map_err(|e| decode_error(group, what, key, e))
            .inspect_err(|e| self.note_corruption(e))
    }

    fn note_corruption(&self, error: &StorageError) {
        if matches!(error, StorageError::Checksum { .. }) {
            self.failure.record(|| error.to_string());
        }
    }

    /// The distinct group ids in column family `name`, found by seeking from one group's first
    /// key straight to the next group, so the cost is one seek per group.
    fn distinct_groups(&self, name: &'static str) -> Result<Vec<GroupId>, StorageError> {
        let mut iter = self.db.raw_iterator_cf(self.cf(name)?);
        let mut groups = Vec::new();
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            let Some(group) = keys::decode_group(key) else {
                return Err(StorageError::Corrupt {
                    group: GroupId(0),
                    what: name,
                    detail: format!("key {key:02x?} is shorter than a group prefix"),
                });
            };
            groups.push(group);
            if group > GROUP_ID_MAX {
                break;
            }
            iter.seek(keys::group_end(group));
        }
        iter.status()
            .map_err(|e| StorageError::ListGroups { source: e.into() })?;
        Ok(groups)
    }
}

fn check_group(group: GroupId) -> Result<(), StorageError> {
    if group > GROUP_ID_MAX {
        return Err(StorageError::ReservedGroup { group });
    }
    Ok(())
}

fn encode_value<T: Serialize>(
    group: GroupId,
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StorageError> {
    codec::encode(value).map_err(|source| StorageError::Encode {
        group,
        what,
        source,
    })
}

fn decode_value<T: DeserializeOwned>(
    group: GroupId,
    what: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StorageError> {
    codec::decode(bytes).map_err(|e| decode_error(group, what, key, e))
}

fn decode_error(
    group: GroupId,
    what: &'static str,
    key: &[u8],
    error: codec::DecodeError,
) -> StorageError {
    match error {
        codec::DecodeError::Checksum { stored, computed } => StorageError::Checksum {
            group,
            what,
            key: match keys::decode_log_key(key) {
                Some((_, index)) => format!("index {index}"),
                None => format!("key {key:02x?}"),
            },
            stored,
            computed,
        },
        codec::DecodeError::Malformed(source) => StorageError::Decode {
            group,
            what,
            key: format!("{key:02x?}"),
            source,
        },
    }
}

/// Checks after a read that the entry stored under `key_index` claims that index.
fn check_entry_index(group: GroupId, key_index: u64, entry_index: u64) -> Result<(), StorageError> {
    if key_index != entry_index {
        return Err(StorageError::Corrupt {
            group,
            what: "log entry",
            detail: format!("entry stored under index {key_index} has index {entry_index}"),
        });
    }
    Ok(())
}

/// State-machine writes for one group, applied atomically and in order by
/// [`Storage::state_write`]. Keys are given without the group prefix.
#[derive(Clone, Debug, Default)]
pub struct StateBatch {
    ops: Vec<StateOp>,
}

#[derive(Clone, Debug)]
enum StateOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeletePrefix(Vec<u8>),
}

impl StateBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push(StateOp::Put(key.as_ref().to_vec(), value.as_ref().to_vec()));
    }

    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push(StateOp::Delete(key.as_ref().to_vec()));
    }

    /// Deletes every key of the group that starts with `prefix` (a range delete). Writes
    /// queued after this in the same batch are kept.
    pub fn delete_prefix(&mut self, prefix: impl AsRef<[u8]>) {
        self.ops
            .push(StateOp::DeletePrefix(prefix.as_ref().to_vec()));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
