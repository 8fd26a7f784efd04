//! What can go wrong, and what to do about it.

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
    #[error("unauthenticated: {0}; pass a valid token (--token or RAFTSTREAM_TOKEN)")]
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
    /// Maps a final (not retried) gRPC status.
    pub fn from_status(status: tonic::Status) -> Error {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::InvalidArgument
            | tonic::Code::OutOfRange
            | tonic::Code::FailedPrecondition => Error::InvalidArgument(message),
            tonic::Code::AlreadyExists => Error::AlreadyExists(message),
            tonic::Code::Unauthenticated => Error::Unauthenticated(message),
            tonic::Code::PermissionDenied => Error::PermissionDenied(message),
            tonic::Code::Unavailable => Error::Unavailable {
                message,
                elapsed_ms: 0,
            },
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Error::OutcomeUnknown(message)
            }
            code => Error::Server {
                code: format!("{code:?}"),
                message,
            },
        }
    }

    /// Whether retrying the same request can help.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::NoNodeReachable { .. }
        )
    }
}
