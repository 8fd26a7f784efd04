//! Every gateway error is `{"message", "code"}` with the right HTTP status.
//!
//! `ErrorBody` is both what `ApiError` serializes and the schema the API
//! documents name for every error response, so the two cannot drift.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::IntoResponse;
use axum::response::Response;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoResponses;
use utoipa::ToSchema;
use utoipa::openapi;
use utoipa::openapi::RefOr;

use crate::api::service::ServiceError;

// The codes listed are `raftstream_proto::ErrorCode`'s, less those only a
// record of a batch publish gets.
/// An error: a human-readable `message` and a stable machine-readable
/// `code` (`invalid_request`, `schema_mismatch`, `invalid_schema`,
/// `invalid_topic_schema`, `unauthorized`, `forbidden`, `not_found`,
/// `method_not_allowed`, `conflict`, `payload_too_large`,
/// `unsupported_media_type`, `rate_limited`,
/// `too_many_long_polls`, `internal`, `unavailable`, `not_ready`,
/// `storage_failed`, `insufficient_storage`, `outcome_unknown`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The code's HTTP status (`ErrorCode::http_status`), unless a
    /// rejection of axum's chose another.
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// An error with `code`, answered with the code's HTTP status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            code: self.code.as_str().to_string(),
        }
    }
}

/// The HTTP status of `code`. Every status in the code table is valid (a
/// test here checks), so the fallback never answers.
fn http_status(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A service error, answered with its code's HTTP status (an unknown
/// outcome is 504: the write may still commit).
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self::new(e.code, e.message)
    }
}

/// The statuses whose answers carry `Retry-After`.
fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if retryable(self.status) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// One documented error response: the `ErrorBody` schema, and
/// `Retry-After` where `ApiError` sends it.
fn error_response(status: StatusCode, description: &str) -> (String, RefOr<openapi::Response>) {
    let content = openapi::ContentBuilder::new()
        .schema(Some(openapi::Ref::from_schema_name(ErrorBody::name())))
        .build();
    let mut response = openapi::ResponseBuilder::new()
        .description(description)
        .content("application/json", content);
    if retryable(status) {
        let header = openapi::HeaderBuilder::new()
            .schema(Some(
                openapi::ObjectBuilder::new()
                    .schema_type(openapi::Type::Integer)
                    .minimum(Some(0)),
            ))
            .description(Some("Seconds to wait before retrying."))
            .build();
        response = response.header("Retry-After", header);
    }
    (status.as_u16().to_string(), response.build().into())
}

/// Declares a documented set of error responses: a unit struct whose
/// `IntoResponses` lists `(status, description)` pairs, each with the
/// `ErrorBody` schema. Routes name the set instead of repeating its lines.
macro_rules! error_responses {
    ($($(#[$doc:meta])* $name:ident { $(($status:ident, $text:expr)),+ $(,)? })+) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
                [$(error_response(StatusCode::$status, $text)),+].into()
            }
        }
    )+};
}

error_responses! {
    /// The errors of every route that needs a bearer token.
    AuthErrors {
        (UNAUTHORIZED, "`unauthorized`: the bearer token is missing, malformed, unknown or revoked."),
        (FORBIDDEN, "`forbidden`: the token lacks this route's scope, or may not use this topic."),
        (TOO_MANY_REQUESTS, "`rate_limited`: the token's request rate limit is spent."),
    }
    /// The errors of every route that calls the cluster.
    ClusterErrors {
        (INTERNAL_SERVER_ERROR, "`internal`: an unexpected error inside the node."),
        (SERVICE_UNAVAILABLE, "`unavailable`: no leader or no quorum could be reached; retry."),
    }
    /// The error of every route with a path parameter that is not a valid
    /// UTF-8 string.
    PathErrors {
        (BAD_REQUEST, "`invalid_request`: the path does not decode as UTF-8."),
    }
    /// The error of every write: its outcome is unknown.
    WriteErrors {
        (GATEWAY_TIMEOUT, "`outcome_unknown`: the write timed out or met a leader change; it may \
            still commit, so a retry can duplicate it."),
    }
    /// The error of every route whose body must be declared JSON (it reads
    /// [`super::extract::JsonBytes`]).
    MediaTypeErrors {
        (UNSUPPORTED_MEDIA_TYPE, "`unsupported_media_type`: a Content-Type other than \
            `application/json` or `application/*+json` (none at all is read as JSON)."),
    }
    /// The error of every route that takes a body: the gateway's body limit.
    BodyErrors {
        (PAYLOAD_TOO_LARGE, "`payload_too_large`: the body exceeds 1 MiB."),
    }
    /// The error of every route that names a topic.
    NoSuchTopic {
        (NOT_FOUND, "`not_found`: no such topic."),
    }
    /// The error of every route that names a webhook source.
    NoSuchSource {
        (NOT_FOUND, "`not_found`: no such source."),
    }
    /// The error of every route that names a push subscription.
    NoSuchSubscription {
        (NOT_FOUND, "`not_found`: no such subscription."),
    }
    /// The errors of both integration-flow webhook routes, besides the 400
    /// each describes for itself.
    FlowErrors {
        (UNAUTHORIZED, "`unauthorized`: a missing or wrong secret."),
        (NOT_FOUND, "`not_found`: no such flow."),
        (CONFLICT, "`conflict`: the flow's topic was deleted."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What another node answered a forwarded call with reaches an HTTP
    /// caller with the HTTP status of its code.
    #[test]
    fn grpc_statuses_map_to_http_statuses() {
        for (code, status, error_code) in [
            (tonic::Code::NotFound, 404, "not_found"),
            (tonic::Code::InvalidArgument, 400, "invalid_request"),
            (tonic::Code::OutOfRange, 400, "invalid_request"),
            (tonic::Code::AlreadyExists, 409, "conflict"),
            (tonic::Code::FailedPrecondition, 409, "conflict"),
            (tonic::Code::Unauthenticated, 401, "unauthorized"),
            (tonic::Code::PermissionDenied, 403, "forbidden"),
            (tonic::Code::ResourceExhausted, 429, "rate_limited"),
            (tonic::Code::Unavailable, 503, "unavailable"),
            (tonic::Code::DeadlineExceeded, 504, "outcome_unknown"),
            (tonic::Code::Internal, 500, "internal"),
            (tonic::Code::Unknown, 500, "internal"),
        ] {
            let error = ApiError::from(ServiceError::from(tonic::Status::new(code, "x")));
            assert_eq!(
                (error.status.as_u16(), error.body().code.as_str()),
                (status, error_code),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_status_that_names_its_code_keeps_it() {
        for code in [
            ErrorCode::InsufficientStorage,
            ErrorCode::TooManyLongPolls,
            ErrorCode::Conflict,
        ] {
            let error = ApiError::from(ServiceError::from(code.status("x")));
            assert_eq!(
                (error.code, error.status.as_u16()),
                (code, code.http_status())
            );
        }
        let stored_schema = ErrorCode::Conflict.tag(tonic::Status::failed_precondition("x"));
        let error = ApiError::from(ServiceError::from(stored_schema));
        assert_eq!(error.status, StatusCode::CONFLICT);
    }

    #[test]
    fn every_code_has_a_valid_http_status() {
        for &code in ErrorCode::ALL {
            assert_eq!(http_status(code).as_u16(), code.http_status(), "{code}");
        }
    }
}
