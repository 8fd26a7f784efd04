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
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use bytes::BytesMut;
use futures::StreamExt;
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

/// How far past its limit a body is still read (and discarded) before the
/// 413 is answered. A client sends its whole body before it reads an
/// answer: answering while it still sends closes the connection under it,
/// and it sees a reset instead of the 413 and its message. A body declared
/// (Content-Length) more than this past the limit is refused at once.
pub const READ_PAST_LIMIT_BYTES: usize = MAX_BODY_BYTES;

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the request body exceeds the limit of {limit} bytes"),
    )
}

/// Reads a request's body under the limit its route set (`BodyLimit`, else
/// `MAX_BODY_BYTES`); over it, a 413 that names the limit.
pub async fn read_body<S: Send + Sync>(request: Request, _state: &S) -> Result<Bytes, ApiError> {
    let limit = body_limit(&request);
    let drain_to = limit.saturating_add(READ_PAST_LIMIT_BYTES);
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > drain_to as u64) {
        return Err(too_large(limit));
    }
    let mut stream = request.into_body().into_data_stream();
    let mut body = BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            body.extend_from_slice(&chunk);
        } else if seen > drain_to {
            break;
        }
    }
    if seen > limit {
        return Err(too_large(limit));
    }
    Ok(body.freeze())
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    #[test]
    fn json_media_types_are_json_with_any_parameters() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/vnd.workato+json",
            "application/merge-patch+json ; q=1",
        ] {
            assert!(is_json_media_type(json), "{json}");
        }
        for other in [
            "",
            "json",
            "text/plain",
            "text/json",
            "application/x-www-form-urlencoded",
            "application/jsonp",
            "multipart/form-data",
        ] {
            assert!(!is_json_media_type(other), "{other}");
        }
        let mut headers = HeaderMap::new();
        assert!(require_json_content_type(&headers).is_ok(), "no type");
        headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        let refused = require_json_content_type(&headers).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.code),
            (415, ErrorCode::UnsupportedMediaType)
        );
    }

    fn request_of(len: usize, limit: Option<usize>) -> Request {
        let mut request = Request::new(axum::body::Body::from(vec![b' '; len]));
        if let Some(limit) = limit {
            request.extensions_mut().insert(BodyLimit(limit));
        }
        request
    }

    #[tokio::test]
    async fn bodies_over_their_routes_limit_are_a_413_naming_it() {
        let read = read_body(request_of(MAX_BODY_BYTES, None), &()).await;
        assert_eq!(read.unwrap().len(), MAX_BODY_BYTES);
        let refused = read_body(request_of(MAX_BODY_BYTES + 1, None), &())
            .await
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::PayloadTooLarge);
        assert!(refused.message.contains("1048576"), "{refused:?}");

        let limit = 3 * MAX_BODY_BYTES;
        let read = read_body(request_of(limit, Some(limit)), &()).await;
        assert_eq!(read.unwrap().len(), limit);
        // Far past the limit: read no further than the drain allows.
        let refused = read_body(
            request_of(limit + 2 * READ_PAST_LIMIT_BYTES, Some(limit)),
            &(),
        )
        .await
        .unwrap_err();
        assert!(refused.message.contains(&limit.to_string()), "{refused:?}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Raw {
        items: Vec<Box<RawValue>>,
    }

    #[test]
    fn parsed_bodies_keep_raw_values_as_sent() {
        let body = br#" {"items": [ {"z":1,"a":[1.50,12345678901234567890123]} , 2.0 ]}"#;
        let raw: Raw = parse_json(body).unwrap();
        let items: Vec<&str> = raw.items.iter().map(|item| item.get()).collect();
        assert_eq!(
            items,
            vec![r#"{"z":1,"a":[1.50,12345678901234567890123]}"#, "2.0"]
        );
        for (bad, says) in [
            (&b"[1]"[..], "must be a JSON object"),
            (b"{", "not valid JSON"),
            (br#"{"items": 3}"#, "invalid request body"),
        ] {
            let error = parse_json::<Raw>(bad).unwrap_err();
            assert!(error.message.contains(says), "{error:?}");
        }
    }
}
