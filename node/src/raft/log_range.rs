//! `ReadLogRange`: the call a replica's backfill makes to a peer
//! (`backfill.rs`), how the peer answers it from its own log, and the
//! conversions both sides share. The peer listener serves it like every
//! Raft transport call: mutual TLS, and the cluster id checked by its
//! interceptor.

use std::time::Duration;

use bytes::Bytes;
use raftstream_proto::v1::LogRangeReply;
use raftstream_proto::v1::LogRangeRequest;

use crate::group::HostedGroups;
use crate::model::GroupId;
use crate::raft::network::PeerError;
use crate::raft::network::PeerPool;
use crate::raft::types::TypeConfig;
use crate::storage::StorageError;
use crate::storage::TailEnd;

/// Bytes of entries one `ReadLogRange` answer carries at most, beyond a
/// single entry larger than that (which is still sent, so a chunk always
/// progresses). One entry is at most a publish batch and its framing, which
/// fits the peer message limit like an AppendEntries call of one entry; with
/// the default limits an answer stays under 12 MiB of the 256 MiB allowed.
pub const CHUNK_BYTES: u64 = 8 << 20;

/// The local timer fires this long after the deadline the call carries, so
/// that the peer answers DEADLINE_EXCEEDED itself (see `network.rs`).
const LOCAL_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// What a `ReadLogRange` call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRangeQuery {
    pub group_id: GroupId,
    /// The entries `first_index ..= last_index`.
    pub first_index: u64,
    pub last_index: u64,
    pub max_bytes: u64,
}

/// What a `ReadLogRange` call answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRangeAnswer {
    /// The newest entries of the range the node holds, oldest first, in the
    /// log's stored format: consecutive and ending at the range's last index;
    /// empty when the node does not hold that one.
    pub entries: Vec<Bytes>,
    /// Non-zero: the node does not hold the entries of the range below this
    /// index (purged by retention, or spanned by a snapshot it installed).
    pub missing_below: u64,
}

/// Why a node does not answer a `ReadLogRange` call.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("group {0} is not hosted here")]
    NotHosted(GroupId),
    #[error("group {0} is not a partition: only partition logs are served")]
    NotAPartition(GroupId),
    #[error("entries {first}..={last} are not a range")]
    EmptyRange { first: u64, last: u64 },
    #[error("group {group}: entry {last} is not applied here yet (applied up to {applied:?})")]
    NotApplied {
        group: GroupId,
        last: u64,
        applied: Option<u64>,
    },
    #[error("reading the log: {0}")]
    Storage(#[from] StorageError),
    #[error("the log read was cancelled: {0}")]
    Cancelled(String),
}

/// Answers a `ReadLogRange` call from this node's own log: committed
/// entries only (applied here), and only those this replica holds itself
/// (at or above its `local_first_log_index`).
pub async fn serve_log_range(
    groups: &HostedGroups,
    query: &LogRangeQuery,
) -> Result<LogRangeAnswer, ServeError> {
    let group_id = query.group_id;
    if group_id == GroupId::META {
        return Err(ServeError::NotAPartition(group_id));
    }
    let (first, last) = (query.first_index, query.last_index);
    if first > last {
        return Err(ServeError::EmptyRange { first, last });
    }
    let group = groups
        .get(group_id)
        .ok_or(ServeError::NotHosted(group_id))?;
    let (local_first, applied) = group.state.read(|inner| {
        (
            inner.local_first_log_index,
            inner.last_applied.as_ref().map(|id| id.index),
        )
    });
    if applied.is_none_or(|applied| applied < last) {
        return Err(ServeError::NotApplied {
            group: group_id,
            last,
            applied,
        });
    }
    if last < local_first {
        return Ok(LogRangeAnswer {
            entries: Vec::new(),
            missing_below: last.saturating_add(1),
        });
    }
    let floor = first.max(local_first);
    let max_bytes = usize::try_from(query.max_bytes.clamp(1, CHUNK_BYTES)).unwrap_or(usize::MAX);
    let log_store = group.state.storage().log_store::<TypeConfig>(group_id);
    // Up to a chunk of entries, possibly from blob files on disk: off the
    // async workers.
    let tail = tokio::task::spawn_blocking(move || log_store.read_tail(floor, last, max_bytes))
        .await
        .map_err(|e| ServeError::Cancelled(e.to_string()))??;
    let missing_below = match tail.end {
        TailEnd::ReachedFirst if floor > first => floor,
        TailEnd::ReachedFirst | TailEnd::Budget => 0,
        TailEnd::Missing(index) => index.saturating_add(1),
    };
    Ok(LogRangeAnswer {
        entries: tail.entries.into_iter().map(Bytes::from).collect(),
        missing_below,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LogRangeError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("{code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("answered for group {answered}, asked for group {asked}")]
    WrongGroup { asked: GroupId, answered: GroupId },
}

/// Asks the peer at `addr` (its peer listener) for entries of a group's log.
pub async fn read_log_range(
    pool: &PeerPool,
    addr: &str,
    query: &LogRangeQuery,
    timeout: Duration,
) -> Result<LogRangeAnswer, LogRangeError> {
    let mut client = pool.transport(addr)?;
    let mut request = tonic::Request::new(LogRangeRequest {
        group_id: query.group_id.0,
        first_index: query.first_index,
        last_index: query.last_index,
        max_bytes: query.max_bytes,
    });
    request.set_timeout(timeout);
    let reply = match tokio::time::timeout(
        timeout + LOCAL_TIMEOUT_MARGIN,
        client.read_log_range(request),
    )
    .await
    {
        Err(_) => return Err(LogRangeError::TimedOut(timeout)),
        Ok(Err(status)) => {
            return Err(LogRangeError::Refused {
                code: status.code(),
                message: status.message().to_string(),
            });
        }
        Ok(Ok(reply)) => reply.into_inner(),
    };
    if reply.group_id != query.group_id.0 {
        return Err(LogRangeError::WrongGroup {
            asked: query.group_id,
            answered: GroupId(reply.group_id),
        });
    }
    Ok(LogRangeAnswer {
        entries: reply.entries,
        missing_below: reply.missing_below,
    })
}

/// The query a `ReadLogRange` request asks.
pub fn query_of(request: &LogRangeRequest) -> LogRangeQuery {
    LogRangeQuery {
        group_id: GroupId(request.group_id),
        first_index: request.first_index,
        last_index: request.last_index,
        max_bytes: request.max_bytes,
    }
}

/// The reply that carries `answer`.
pub fn reply_of(group_id: GroupId, answer: LogRangeAnswer) -> LogRangeReply {
    LogRangeReply {
        group_id: group_id.0,
        entries: answer.entries,
        missing_below: answer.missing_below,
    }
}

/// The status a refused `ReadLogRange` call answers.
pub fn status_of(error: &ServeError) -> tonic::Status {
    let message = error.to_string();
    match error {
        ServeError::NotHosted(_) => tonic::Status::not_found(message),
        ServeError::NotAPartition(_) | ServeError::EmptyRange { .. } => {
            tonic::Status::invalid_argument(message)
        }
        ServeError::NotApplied { .. } | ServeError::Cancelled(_) => {
            tonic::Status::unavailable(message)
        }
        ServeError::Storage(_) => tonic::Status::internal(message),
    }
}
