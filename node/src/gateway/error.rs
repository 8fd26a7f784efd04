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
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoResponses;
use utoipa::ToSchema;
use utoipa::openapi;
use utoipa::openapi::RefOr;

/// An error: a human-readable `message` and a stable machine-readable
/// `code` (`invalid_request`, `schema_mismatch`, `invalid_schema`,
/// `unauthorized`, `forbidden`, `not_found`, `conflict`,
/// `payload_too_large`, `rate_limited`, `unavailable`, `not_ready`,
/// `outcome_unknown`, `method_not_allowed`, `internal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    pub code: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            message: self.message.clone(),
            code: self.code.to_string(),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::NotFound => Self::not_found(message),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Self::bad_request(message),
            tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            tonic::Code::Unavailable => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            // The write may still commit: an unknown outcome, not a failure.
            tonic::Code::DeadlineExceeded => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", message)
            }
            tonic::Code::PermissionDenied => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            tonic::Code::Unauthenticated => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            }
            tonic::Code::ResourceExhausted
                if crate::api::grpc::is_insufficient_storage(&status) =>
            {
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    raftstream_proto::INSUFFICIENT_STORAGE,
                    message,
                )
            }
            tonic::Code::ResourceExhausted => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
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

/// The errors of every route that needs a bearer token.
#[derive(Debug)]
pub struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        [
            error_response(
                StatusCode::UNAUTHORIZED,
                "`unauthorized`: the bearer token is missing, malformed, unknown or revoked.",
            ),
            error_response(
                StatusCode::FORBIDDEN,
                "`forbidden`: the token lacks this route's scope, or may not use this topic.",
            ),
            error_response(
                StatusCode::TOO_MANY_REQUESTS,
                "`rate_limited`: the token's request rate limit is spent.",
            ),
        ]
        .into()
    }
}

/// The errors of every route that calls the cluster.
#[derive(Debug)]
pub struct ClusterErrors;

impl IntoResponses for ClusterErrors {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        [
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "`internal`: an unexpected error inside the node.",
            ),
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "`unavailable`: no leader or no quorum could be reached; retry.",
            ),
        ]
        .into()
    }
}

/// The error of every write: its outcome is unknown.
#[derive(Debug)]
pub struct WriteErrors;

impl IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
        [error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "`outcome_unknown`: the write timed out or met a leader change; it may still \
             commit, so a retry can duplicate it.",
        )]
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_statuses_map_to_http_statuses() {
        for (code, status) in [
            (tonic::Code::NotFound, 404),
            (tonic::Code::InvalidArgument, 400),
            (tonic::Code::AlreadyExists, 409),
            (tonic::Code::FailedPrecondition, 409),
            (tonic::Code::Unauthenticated, 401),
            (tonic::Code::Unavailable, 503),
            (tonic::Code::DeadlineExceeded, 504),
            (tonic::Code::Internal, 500),
        ] {
            assert_eq!(
                ApiError::from(tonic::Status::new(code, "x"))
                    .status
                    .as_u16(),
                status
            );
        }
    }
}
