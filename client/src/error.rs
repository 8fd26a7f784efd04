//! What can go wrong, and what to do about it.

use raftstream_proto::ErrorCode;

/// Every error says what happened and what to do. `OutcomeUnknown` is not a
/// failure: the write may or may not have been stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address {addr:?}: {reason}; use host:port")]
    InvalidAddress { addr: String, reason: String },
    #[error("no node reachable at {seeds:?}: check the addresses and that the cluster runs")]
    NoNodeReachable { seeds: Vec<String> },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("authentication failed: {0}; set RAFTSTREAM_TOKEN (or --token) to a valid token")]
    Unauthenticated(String),
    #[error("permission denied: {0}; the token lacks the scope or topic")]
    PermissionDenied(String),
    #[error(
        "unavailable after retrying for {elapsed_ms} ms: {message}; the cluster may have lost quorum"
    )]
    Unavailable { message: String, elapsed_ms: u64 },
    #[error("outcome unknown: {0}; the write may or may not have been stored")]
    OutcomeUnknown(String),
    #[error("server error ({code}): {message}")]
    Server { code: String, message: String },
    #[error("the producer is closed")]
    ProducerClosed,
    #[error("TLS file {path}: {reason}")]
    TlsFile { path: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Maps a final (not retried) gRPC status, by the code the node named
    /// (`x-raftstream-error`) or, from older nodes and tonic itself, by its
    /// gRPC code. `Server` carries the stable code string.
    pub fn from_status(status: tonic::Status) -> Error {
        let message = status.message().to_string();
        match (ErrorCode::of_status(&status), status.code()) {
            (_, tonic::Code::Cancelled) => Error::OutcomeUnknown(message),
            (ErrorCode::NotFound, _) => Error::NotFound(message),
            (ErrorCode::Unauthorized, _) => Error::Unauthenticated(message),
            (ErrorCode::Forbidden, _) => Error::PermissionDenied(message),
            (ErrorCode::Unavailable | ErrorCode::NotReady | ErrorCode::StorageFailed, _) => {
                Error::Unavailable {
                    message,
                    elapsed_ms: 0,
                }
            }
            (ErrorCode::OutcomeUnknown, _) => Error::OutcomeUnknown(message),
            (_, tonic::Code::AlreadyExists) => Error::AlreadyExists(message),
            (
                _,
                tonic::Code::InvalidArgument
                | tonic::Code::OutOfRange
                | tonic::Code::FailedPrecondition,
            ) => Error::InvalidArgument(message),
            (code, _) => Error::Server {
                code: code.as_str().to_string(),
                message,
            },
        }
    }

    /// Whether the cluster refused the caller's token: missing, unknown or
    /// revoked (`Unauthenticated`), or without the scope or topic
    /// (`PermissionDenied`).
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, Error::Unauthenticated(_) | Error::PermissionDenied(_))
    }

    /// Whether retrying the same request can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::NoNodeReachable { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_maps_by_the_code_the_node_named() {
        let full = ErrorCode::InsufficientStorage.status("disk full");
        assert!(matches!(
            Error::from_status(full),
            Error::Server { code, .. } if code == "insufficient_storage"
        ));
        let not_ready = ErrorCode::NotReady.status("no leader yet");
        assert!(matches!(
            Error::from_status(not_ready),
            Error::Unavailable { .. }
        ));
        // Without the header, as tonic's own statuses come.
        assert!(matches!(
            Error::from_status(tonic::Status::deadline_exceeded("late")),
            Error::OutcomeUnknown(_)
        ));
        assert!(matches!(
            Error::from_status(tonic::Status::cancelled("dropped")),
            Error::OutcomeUnknown(_)
        ));
        assert!(matches!(
            Error::from_status(tonic::Status::failed_precondition("stored schema")),
            Error::InvalidArgument(_)
        ));
        assert!(matches!(
            Error::from_status(tonic::Status::internal("boom")),
            Error::Server { code, .. } if code == "internal"
        ));
    }
}
