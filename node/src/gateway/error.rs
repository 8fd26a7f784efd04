//! Every gateway error is `{"message", "code"}` with the right HTTP status.

use axum::Json;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;

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
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::NotFound => Self::not_found(message),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => Self::bad_request(message),
            tonic::Code::AlreadyExists => Self::new(StatusCode::CONFLICT, "conflict", message),
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
            tonic::Code::ResourceExhausted => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"message": self.message, "code": self.code})),
        )
            .into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
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
