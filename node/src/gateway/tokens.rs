//! Token management: POST/GET /api/tokens, DELETE /api/tokens/{id}.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_server::Raftstream;
use serde_json::Value;
use serde_json::json;
use tonic::Request;

use super::ApiError;
use super::Shared;
use super::body_bytes;
use super::parse_json;
use super::topics::rfc3339;

fn token_json(token: &pb::TokenInfo) -> Value {
    json!({
        "id": token.id,
        "name": token.name,
        "scopes": token.scopes,
        "topics": token.topics,
        "created_at": rfc3339(token.created_at_ms),
    })
}

fn strings(body: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(String::from).ok_or_else(|| {
                    ApiError::bad_request(format!("{field} must be a list of strings"))
                })
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(format!(
            "{field} must be a list of strings"
        ))),
    }
}

pub async fn create(
    State(gateway): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = parse_json(&body_bytes(body)?)?;
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let request = pb::CreateTokenRequest {
        name: name.to_string(),
        scopes: strings(&body, "scopes")?,
        topics: strings(&body, "topics")?,
    };
    let created = gateway
        .service
        .create_token(Request::new(request))
        .await?
        .into_inner();
    let mut answer = created
        .token
        .as_ref()
        .map(token_json)
        .unwrap_or_else(|| json!({}));
    answer["token"] = json!(created.secret);
    Ok((StatusCode::CREATED, Json(answer)))
}

pub async fn list(State(gateway): Shared) -> Result<Json<Value>, ApiError> {
    let tokens = gateway
        .service
        .list_tokens(Request::new(pb::ListTokensRequest {}))
        .await?
        .into_inner()
        .tokens;
    Ok(Json(
        json!({"data": tokens.iter().map(token_json).collect::<Vec<_>>()}),
    ))
}

pub async fn delete(
    State(gateway): Shared,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("token {id:?} does not exist")))?;
    gateway
        .service
        .delete_token(Request::new(pb::DeleteTokenRequest { id }))
        .await?;
    Ok(Json(json!({"result": "success"})))
}
