//! Extractors that read requests into the typed bodies the API documents
//! describe, and turn every rejection into our `{"message", "code"}` shape.
//!
//! Bodies are read as bytes, then parsed as JSON. Publish bodies must be
//! declared JSON (or declare no type); other bodies are read as JSON
//! whatever their Content-Type. Range checks the types cannot express stay
//! in the handlers.

use axum::body::Bytes;
use axum::extract::FromRequest;
use axum::extract::FromRequestParts;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use raftstream_proto::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::ApiError;
use super::MAX_BODY_BYTES;

/// The body limit of the routes under a layer that sets one: the 413 names
/// it. Routes without one have the gateway's default, `MAX_BODY_BYTES`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// The body limit a request was read under.
fn body_limit(request: &Request) -> usize {
    request
        .extensions()
        .get::<BodyLimit>()
        .map_or(MAX_BODY_BYTES, |limit| limit.0)
}

/// Reads the body under `limit`, turning axum's rejections (413 over the
/// limit) into our error shape.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds the limit of {limit} bytes"),
        ),
        _ => ApiError::bad_request(rejection.body_text()),
    })
}

/// Reads a request's body under the limit its route set.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = body_limit(&request);
    body_bytes(Bytes::from_request(request, state).await, limit)
}

/// Parses a JSON body: malformed JSON and JSON of the wrong shape are both
/// 400 `invalid_request`, with serde's message. Every request body is a
/// JSON object (serde would also read a struct from an array). The bytes
/// are parsed once, straight into `T`, so a `RawValue` in `T` holds exactly
/// the bytes sent.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let starts_an_object = bytes.trim_ascii_start().first() == Some(&b'{');
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        Category::Data if starts_an_object => {
            ApiError::bad_request(format!("invalid request body: {e}"))
        }
        Category::Data => ApiError::bad_request("the body must be a JSON object"),
        _ => ApiError::bad_request(format!("the body is not valid JSON: {e}")),
    })
}

/// Whether a Content-Type names JSON: `application/json` or any
/// `application/*+json`, with or without parameters such as `charset`.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

/// Publish bodies must be declared JSON; a request without a Content-Type
/// is read as JSON (clients that send none mean nothing else), but any
/// other declared type (curl's `-d` sends form encoding) is a 415.
pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    match value.to_str() {
        Ok(content_type) if is_json_media_type(content_type) => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "the Content-Type is {:?}; publish takes application/json",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )),
    }
}

/// A required JSON body, whatever its Content-Type.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The bytes of a body declared JSON (or declared nothing); see
/// `require_json_content_type`. Parsing is the handler's, which keeps the
/// bytes it stores exactly as sent.
#[derive(Debug)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        require_json_content_type(request.headers())?;
        read_body(request, state).await.map(JsonBytes)
    }
}

/// A JSON body that may be left out: an empty body and `null` read as
/// `T::default()`.
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(request, state).await?;
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() || trimmed == b"null" {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// The credentials of `Authorization: Bearer <credentials>`. The scheme is
/// matched without regard to case, as RFC 9110 says auth schemes are.
pub fn bearer_credentials(authorization: &str) -> Option<&str> {
    let (scheme, credentials) = authorization.trim_start().split_once(' ')?;
    let credentials = credentials.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty()).then_some(credentials)
}

/// The `{topic_id}` path parameter: what routes read and what the API
/// document says of it, in one place.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TopicPath {
    /// The topic's integer id, or its name.
    pub topic_id: String,
}

/// The `{source_id}` path parameter of a webhook source's routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SourcePath {
    /// The source's id.
    pub source_id: String,
}

/// Path parameters; a path that does not decode (say, invalid UTF-8) is a
/// 400 in our error shape.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) if rejection.status().is_client_error() => {
                Err(ApiError::bad_request(rejection.body_text()))
            }
            // A route whose path lacks a parameter its handler reads: a bug.
            Err(rejection) => Err(ApiError {
                status: rejection.status(),
                ..ApiError::new(ErrorCode::Internal, rejection.body_text())
            }),
        }
    }
}

/// The query string, parsed into `T`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}
