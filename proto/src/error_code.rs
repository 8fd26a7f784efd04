//! The stable, machine-readable codes of Raftstream's errors, and how each
//! one travels over gRPC and HTTP.
//!
//! One vocabulary serves every edge: the HTTP gateway's error bodies
//! (`{"message", "code"}`), the per-record errors of a batch publish
//! (`pb::Error.code`), and gRPC statuses, which carry the code in the
//! [`ERROR_KIND_HEADER`] metadata. A gRPC code alone is lossy (many codes
//! share RESOURCE_EXHAUSTED or UNAVAILABLE), so a reader prefers the header
//! and falls back to the gRPC code only for statuses that lack it: those of
//! older nodes, of tonic itself (a failed connection) and of sites that do
//! not name a code yet.
//!
//! The strings are a public contract: clients and scripts match on them.
//! Never change one; add a code instead.

use std::fmt;
use std::str::FromStr;

use tonic::Code;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::ERROR_KIND_HEADER;

/// Declares `ErrorCode` with its strings, and `ErrorCode::ALL`, from one
/// list, so a variant cannot lack a string or be left out of `ALL`.
macro_rules! error_codes {
    (
        $(#[$enum_meta:meta])*
        pub enum ErrorCode {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$enum_meta])*
        pub enum ErrorCode {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code's stable string, as it appears on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $text, )+
                }
            }
        }
    };
}

error_codes! {
    /// What went wrong, as a caller can act on it. The first group ends a
    /// whole call (an HTTP request or a gRPC status); the second is given
    /// to one record of a batch publish.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum ErrorCode {
        /// The request is malformed or asks for something impossible.
        InvalidRequest = "invalid_request",
        /// A payload fails its topic's JSON Schema.
        SchemaMismatch = "schema_mismatch",
        /// A schema offered for a topic does not compile or is too large.
        InvalidSchema = "invalid_schema",
        /// The schema stored with a topic cannot be used: the node cannot
        /// check payloads against it.
        InvalidTopicSchema = "invalid_topic_schema",
        /// The credential is missing, malformed, unknown or revoked.
        Unauthorized = "unauthorized",
        /// The credential lacks the scope, or may not use the topic.
        Forbidden = "forbidden",
        /// The topic, token, source or route does not exist.
        NotFound = "not_found",
        /// The route does not take this HTTP method.
        MethodNotAllowed = "method_not_allowed",
        /// The thing to create exists already, or the state it depends on
        /// does not allow the change.
        Conflict = "conflict",
        /// The request body is over the node's limit.
        PayloadTooLarge = "payload_too_large",
        /// The request body's Content-Type is not one the route reads.
        UnsupportedMediaType = "unsupported_media_type",
        /// The credential's request rate is spent.
        RateLimited = "rate_limited",
        /// Every long-poll slot of the node is taken.
        TooManyLongPolls = "too_many_long_polls",
        /// An unexpected error inside the node.
        Internal = "internal",
        /// No leader or no quorum could be reached, or the node is stopping.
        Unavailable = "unavailable",
        /// The node has no metadata leader yet.
        NotReady = "not_ready",
        /// A write or fsync of the node failed and it stopped serving.
        StorageFailed = "storage_failed",
        /// The leader's disk is nearly full: it takes no more writes.
        InsufficientStorage = "insufficient_storage",
        /// A write timed out or met a leader change: it may still commit.
        OutcomeUnknown = "outcome_unknown",

        /// The record is over the node's message size limit.
        MessageTooLarge = "message_too_large",
        /// The record names a partition the topic does not have.
        UnknownPartition = "unknown_partition",
        /// Another record of the same idempotent batch was refused, and an
        /// idempotent batch is appended whole or not at all.
        BatchRefused = "batch_refused",
        /// The producer's batch was appended before (an old retry beyond
        /// the window the partition answers with offsets).
        DuplicateSequence = "duplicate_sequence",
        /// The producer's batch skips ahead of the sequence the partition
        /// expects: an earlier batch is missing.
        OutOfSequence = "out_of_sequence",
        /// The record's partition refused the publish for another reason.
        Failed = "failed",
    }
}

/// How one code travels: the row of [`ErrorCode::row`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    grpc: Code,
    http_status: u16,
    retryable: bool,
}

const fn row(grpc: Code, http_status: u16, retryable: bool) -> Row {
    Row {
        grpc,
        http_status,
        retryable,
    }
}

impl ErrorCode {
    /// THE table: each code's gRPC code, HTTP status, and whether a retry
    /// is meaningful. An exhaustive match, so a new code does not compile
    /// without its row.
    ///
    /// `retryable` means the request was not at fault: the same request,
    /// sent again after a pause (to this node or another), can succeed
    /// without the caller or an operator changing anything. A retry after
    /// `outcome_unknown` can store a write twice unless the write is
    /// idempotent (a producer's sequenced batch, a create that reports
    /// `conflict` the second time); `insufficient_storage` waits for disk
    /// space, which takes retention or an operator, so it is not retryable.
    ///
    /// Several codes share a gRPC code; the one [`ErrorCode::of_grpc_code`]
    /// returns for it is what a status without the header reads as.
    const fn row(self) -> Row {
        match self {
            ErrorCode::InvalidRequest => row(Code::InvalidArgument, 400, false),
            ErrorCode::SchemaMismatch => row(Code::InvalidArgument, 400, false),
            ErrorCode::InvalidSchema => row(Code::InvalidArgument, 400, false),
            // The topic's state, not the request, is at fault; HTTP calls
            // it the node's own error.
            ErrorCode::InvalidTopicSchema => row(Code::FailedPrecondition, 500, false),
            ErrorCode::Unauthorized => row(Code::Unauthenticated, 401, false),
            ErrorCode::Forbidden => row(Code::PermissionDenied, 403, false),
            ErrorCode::NotFound => row(Code::NotFound, 404, false),
            ErrorCode::MethodNotAllowed => row(Code::Unimplemented, 405, false),
            ErrorCode::Conflict => row(Code::AlreadyExists, 409, false),
            // Not RESOURCE_EXHAUSTED: without the header that reads as a
            // rate limit, which a retry would wait out in vain.
            ErrorCode::PayloadTooLarge => row(Code::InvalidArgument, 413, false),
            ErrorCode::UnsupportedMediaType => row(Code::InvalidArgument, 415, false),
            ErrorCode::RateLimited => row(Code::ResourceExhausted, 429, true),
            ErrorCode::TooManyLongPolls => row(Code::ResourceExhausted, 429, true),
            ErrorCode::Internal => row(Code::Internal, 500, false),
            ErrorCode::Unavailable => row(Code::Unavailable, 503, true),
            ErrorCode::NotReady => row(Code::Unavailable, 503, true),
            // This node stopped serving; another one can take the retry.
            ErrorCode::StorageFailed => row(Code::Unavailable, 503, true),
            ErrorCode::InsufficientStorage => row(Code::ResourceExhausted, 507, false),
            ErrorCode::OutcomeUnknown => row(Code::DeadlineExceeded, 504, true),
            ErrorCode::MessageTooLarge => row(Code::InvalidArgument, 413, false),
            ErrorCode::UnknownPartition => row(Code::InvalidArgument, 400, false),
            ErrorCode::BatchRefused => row(Code::InvalidArgument, 400, false),
            ErrorCode::DuplicateSequence => row(Code::AlreadyExists, 409, false),
            ErrorCode::OutOfSequence => row(Code::FailedPrecondition, 409, false),
            ErrorCode::Failed => row(Code::Internal, 500, false),
        }
    }

    /// The gRPC code a status with this code takes (see [`ErrorCode::status`]).
    pub const fn grpc_code(self) -> Code {
        self.row().grpc
    }

    /// The HTTP status of an answer with this code.
    pub const fn http_status(self) -> u16 {
        self.row().http_status
    }

    /// Whether sending the same request again can succeed; see
    /// [`ErrorCode::row`] for what that promises and what it does not.
    pub const fn retryable(self) -> bool {
        self.row().retryable
    }

    /// The code a string names, if it names one.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_str() == text)
    }

    /// A status with this code's gRPC code, carrying the code itself in
    /// [`ERROR_KIND_HEADER`].
    pub fn status(self, message: impl Into<String>) -> Status {
        self.tag(Status::new(self.grpc_code(), message))
    }

    /// `status` with this code in [`ERROR_KIND_HEADER`], keeping its gRPC
    /// code: for a site whose gRPC code differs from the table's and must
    /// stay as it is for older clients.
    pub fn tag(self, mut status: Status) -> Status {
        status
            .metadata_mut()
            .insert(ERROR_KIND_HEADER, MetadataValue::from_static(self.as_str()));
        status
    }

    /// The code of a status: its [`ERROR_KIND_HEADER`] when that names a
    /// code, else what its gRPC code means (see [`ErrorCode::of_grpc_code`]).
    pub fn of_status(status: &Status) -> ErrorCode {
        status
            .metadata()
            .get(ERROR_KIND_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(ErrorCode::parse)
            .unwrap_or_else(|| ErrorCode::of_grpc_code(status.code()))
    }

    /// What a gRPC code means on its own, for a status without the header.
    /// DEADLINE_EXCEEDED is an unknown outcome, not a failure: the write it
    /// ended may still commit.
    pub fn of_grpc_code(code: Code) -> ErrorCode {
        match code {
            Code::NotFound => ErrorCode::NotFound,
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidRequest,
            Code::AlreadyExists | Code::FailedPrecondition => ErrorCode::Conflict,
            Code::Unavailable => ErrorCode::Unavailable,
            Code::DeadlineExceeded => ErrorCode::OutcomeUnknown,
            Code::PermissionDenied => ErrorCode::Forbidden,
            Code::Unauthenticated => ErrorCode::Unauthorized,
            Code::ResourceExhausted => ErrorCode::RateLimited,
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ErrorCode::parse(text).ok_or_else(|| UnknownErrorCode(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_code_has_its_own_string() {
        let strings: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(strings.len(), ErrorCode::ALL.len());
        for text in strings {
            assert!(
                !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{text:?} is not snake_case"
            );
        }
    }

    #[test]
    fn every_string_parses_back_to_its_code() {
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn an_unknown_string_is_no_code() {
        for text in ["", "Unavailable", "unavailable ", "sequence_broken"] {
            assert_eq!(ErrorCode::parse(text), None);
            assert_eq!(
                text.parse::<ErrorCode>(),
                Err(UnknownErrorCode(text.to_string()))
            );
        }
    }

    /// The strings clients and tests match on today; renaming one breaks
    /// them.
    #[test]
    fn the_strings_are_the_published_ones() {
        let check = |code: ErrorCode, text: &str| assert_eq!(code.as_str(), text);
        check(ErrorCode::InvalidRequest, "invalid_request");
        check(ErrorCode::InsufficientStorage, "insufficient_storage");
        check(ErrorCode::OutcomeUnknown, "outcome_unknown");
        check(ErrorCode::TooManyLongPolls, "too_many_long_polls");
        check(ErrorCode::MessageTooLarge, "message_too_large");
        check(ErrorCode::Failed, "failed");
    }

    #[test]
    fn the_table_holds_the_http_statuses_the_gateway_answers_with() {
        let check = |code: ErrorCode, grpc: Code, http_status: u16, retryable: bool| {
            assert_eq!(
                (code.grpc_code(), code.http_status(), code.retryable()),
                (grpc, http_status, retryable),
                "{code}"
            );
        };
        check(ErrorCode::InvalidRequest, Code::InvalidArgument, 400, false);
        check(ErrorCode::Conflict, Code::AlreadyExists, 409, false);
        check(ErrorCode::RateLimited, Code::ResourceExhausted, 429, true);
        check(
            ErrorCode::UnsupportedMediaType,
            Code::InvalidArgument,
            415,
            false,
        );
        check(
            ErrorCode::InsufficientStorage,
            Code::ResourceExhausted,
            507,
            false,
        );
        check(ErrorCode::OutcomeUnknown, Code::DeadlineExceeded, 504, true);
        check(ErrorCode::Unavailable, Code::Unavailable, 503, true);
        check(
            ErrorCode::InvalidTopicSchema,
            Code::FailedPrecondition,
            500,
            false,
        );
        for &code in ErrorCode::ALL {
            assert!(
                (400..600).contains(&code.http_status()),
                "{code} answers {}",
                code.http_status()
            );
            assert_ne!(code.grpc_code(), Code::Ok, "{code}");
        }
    }

    #[test]
    fn only_passing_conditions_are_retryable() {
        let retryable: Vec<ErrorCode> = ErrorCode::ALL
            .iter()
            .copied()
            .filter(|c| c.retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::RateLimited,
                ErrorCode::TooManyLongPolls,
                ErrorCode::Unavailable,
                ErrorCode::NotReady,
                ErrorCode::StorageFailed,
                ErrorCode::OutcomeUnknown,
            ]
        );
    }

    #[test]
    fn a_status_carries_its_code_whatever_its_grpc_code() {
        for &code in ErrorCode::ALL {
            let status = code.status("m");
            assert_eq!(status.code(), code.grpc_code(), "{code}");
            assert_eq!(status.message(), "m");
            assert_eq!(ErrorCode::of_status(&status), code);
            let tagged = code.tag(Status::failed_precondition("m"));
            assert_eq!(tagged.code(), Code::FailedPrecondition);
            assert_eq!(ErrorCode::of_status(&tagged), code);
        }
    }

    #[test]
    fn a_status_without_the_header_reads_as_its_grpc_code() {
        for (grpc, code) in [
            (Code::NotFound, ErrorCode::NotFound),
            (Code::InvalidArgument, ErrorCode::InvalidRequest),
            (Code::OutOfRange, ErrorCode::InvalidRequest),
            (Code::AlreadyExists, ErrorCode::Conflict),
            (Code::FailedPrecondition, ErrorCode::Conflict),
            (Code::Unavailable, ErrorCode::Unavailable),
            (Code::DeadlineExceeded, ErrorCode::OutcomeUnknown),
            (Code::PermissionDenied, ErrorCode::Forbidden),
            (Code::Unauthenticated, ErrorCode::Unauthorized),
            (Code::ResourceExhausted, ErrorCode::RateLimited),
            (Code::Internal, ErrorCode::Internal),
            (Code::Unknown, ErrorCode::Internal),
            (Code::Cancelled, ErrorCode::Internal),
        ] {
            assert_eq!(
                ErrorCode::of_status(&Status::new(grpc, "m")),
                code,
                "{grpc:?}"
            );
        }
    }

    #[test]
    fn a_header_naming_no_code_falls_back_to_the_grpc_code() {
        let mut status = Status::unavailable("m");
        status.metadata_mut().insert(
            ERROR_KIND_HEADER,
            MetadataValue::from_static("from_the_future"),
        );
        assert_eq!(ErrorCode::of_status(&status), ErrorCode::Unavailable);
    }

    /// Nodes older than this vocabulary set the header only on a nearly
    /// full disk, with the same name and value: such a status still reads
    /// as `insufficient_storage`.
    #[test]
    fn the_older_insufficient_storage_mark_still_reads() {
        let mut status = Status::resource_exhausted("disk nearly full");
        status.metadata_mut().insert(
            "x-raftstream-error",
            MetadataValue::from_static("insufficient_storage"),
        );
        assert_eq!(
            ErrorCode::of_status(&status),
            ErrorCode::InsufficientStorage
        );
    }

    /// The code survives the trip through HTTP/2 trailers that a status
    /// takes from a node to its caller.
    #[test]
    fn the_code_survives_the_trailers() {
        let sent = ErrorCode::TooManyLongPolls.status("all slots taken");
        let mut trailers = tonic::codegen::http::HeaderMap::new();
        assert!(sent.add_header(&mut trailers).is_ok());
        let received = Status::from_header_map(&trailers);
        assert_eq!(
            received.as_ref().map(ErrorCode::of_status),
            Some(ErrorCode::TooManyLongPolls)
        );
    }
}
