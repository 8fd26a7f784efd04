use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::model::GroupId;

/// An error of the storage engine. The engine's own error type stays private to this module so
/// that nothing outside `storage` depends on RocksDB.
pub struct EngineError(rocksdb::Error);

impl EngineError {
    pub fn message(&self) -> &str {
        self.0.as_ref()
    }
}

impl From<rocksdb::Error> for EngineError {
    fn from(e: rocksdb::Error) -> Self {
        EngineError(e)
    }
}

impl fmt::Debug for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for EngineError {}

/// Errors of the storage module. `what` names the record involved ("log entry", "vote",
/// "committed", "last purged", "state") so that a message says what was being done to what.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create storage directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },

    #[error("cannot open storage at {}: {source}", path.display())]
    Open { path: PathBuf, source: EngineError },

    #[error("cannot start the WAL syncer thread: {source}")]
    SpawnSyncer { source: io::Error },

    #[error("cannot create the WAL syncer's metrics: {message}")]
    Metrics { message: String },

    #[error("column family {name:?} is missing")]
    MissingColumnFamily { name: &'static str },

    #[error("group {group}: cannot read {what}: {source}")]
    Read {
        group: GroupId,
        what: &'static str,
        source: EngineError,
    },

    #[error("group {group}: cannot write {what}: {source}")]
    Write {
        group: GroupId,
        what: &'static str,
        source: EngineError,
    },

    #[error("cannot list the groups on disk: {source}")]
    ListGroups { source: EngineError },

    #[error("group {group}: cannot encode {what}: {source}")]
    Encode {
        group: GroupId,
        what: &'static str,
        source: bincode::Error,
    },

    #[error("group {group}: cannot decode {what} at {key}: {source}")]
    Decode {
        group: GroupId,
        what: &'static str,
        key: String,
        source: bincode::Error,
    },

    /// A stored value's bytes differ from what was written: the disk (or memory) corrupted
    /// them. Reading one from the local disk also marks the storage failed (see
    /// [`super::Storage::failure`]), so the node stops rather than serve or replicate it.
    #[error(
        "group {group}: {what} at {key} fails its checksum (stored {stored:016x}, computed \
         {computed:016x}): the disk returned other bytes than were written"
    )]
    Checksum {
        group: GroupId,
        what: &'static str,
        key: String,
        stored: u64,
        computed: u64,
    },

    #[error("group {group}: corrupt {what}: {detail}")]
    Corrupt {
        group: GroupId,
        what: &'static str,
        detail: String,
    },

    #[error("group {group}: hole in the log: expected index {expected}, found {found}")]
    LogHole {
        group: GroupId,
        expected: u64,
        found: u64,
    },

    /// An fsync of the WAL failed. After a failed fsync the kernel may have dropped the dirty
    /// pages, so a later successful fsync would prove nothing: every later sync fails with this
    /// error too.
    #[error("WAL fsync failed, storage no longer trusted: {message}")]
    SyncFailed { message: String },

    #[error("the WAL syncer thread has stopped")]
    SyncerStopped,

    #[error("group id {group} is reserved")]
    ReservedGroup { group: GroupId },

    /// A write below the last purged log id (a backfill) of entries that are not
    /// consecutive, or that reach into openraft's log above it.
    #[error("group {group}: not a run of entries below the last purged log id: {detail}")]
    NotBelowPurged { group: GroupId, detail: String },
}

impl StorageError {
    /// A stable identifier of the error kind, for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::CreateDir { .. } => "storage.create_dir",
            StorageError::Open { .. } => "storage.open",
            StorageError::SpawnSyncer { .. } => "storage.spawn_syncer",
            StorageError::Metrics { .. } => "storage.metrics",
            StorageError::MissingColumnFamily { .. } => "storage.missing_column_family",
            StorageError::Read { .. } => "storage.read",
            StorageError::Write { .. } => "storage.write",
            StorageError::ListGroups { .. } => "storage.list_groups",
            StorageError::Encode { .. } => "storage.encode",
            StorageError::Decode { .. } => "storage.decode",
            StorageError::Checksum { .. } => "storage.checksum",
            StorageError::Corrupt { .. } => "storage.corrupt",
            StorageError::LogHole { .. } => "storage.log_hole",
            StorageError::SyncFailed { .. } => "storage.sync_failed",
            StorageError::SyncerStopped => "storage.syncer_stopped",
            StorageError::ReservedGroup { .. } => "storage.reserved_group",
            StorageError::NotBelowPurged { .. } => "storage.not_below_purged",
        }
    }

    /// Whether the data on disk is unreadable or inconsistent, as opposed to an operation
    /// that failed.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StorageError::Decode { .. }
                | StorageError::Checksum { .. }
                | StorageError::Corrupt { .. }
                | StorageError::LogHole { .. }
        )
    }
}

impl From<StorageError> for io::Error {
    fn from(e: StorageError) -> io::Error {
        let kind = match &e {
            StorageError::CreateDir { source, .. } | StorageError::SpawnSyncer { source } => {
                source.kind()
            }
            StorageError::ReservedGroup { .. }
            | StorageError::Encode { .. }
            | StorageError::NotBelowPurged { .. } => io::ErrorKind::InvalidInput,
            e if e.is_corruption() => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}
