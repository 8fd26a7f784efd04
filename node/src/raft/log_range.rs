//! `ReadLogRange` on the wire: the call a replica's backfill makes to a peer
//! (`backfill.rs`), and the conversions both sides share. The peer listener
//! serves it like every Raft transport call: mutual TLS, and the cluster id
//! checked by its interceptor.

use std::time::Duration;

use raftstream_proto::v1::LogRangeReply;
use raftstream_proto::v1::LogRangeRequest;

use crate::backfill::LogRangeAnswer;
use crate::backfill::LogRangeQuery;
use crate::backfill::ServeError;
use crate::raft::network::PeerError;
use crate::raft::network::PeerPool;
use crate::raft::types::GroupId;

/// The local timer fires this long after the deadline the call carries, so
/// that the peer answers DEADLINE_EXCEEDED itself (see `network.rs`).
const LOCAL_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

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
        group_id: query.group_id,
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
    if reply.group_id != query.group_id {
        return Err(LogRangeError::WrongGroup {
            asked: query.group_id,
            answered: reply.group_id,
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
        group_id: request.group_id,
        first_index: request.first_index,
        last_index: request.last_index,
        max_bytes: request.max_bytes,
    }
}

/// The reply that carries `answer`.
pub fn reply_of(group_id: GroupId, answer: LogRangeAnswer) -> LogRangeReply {
    LogRangeReply {
        group_id,
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
