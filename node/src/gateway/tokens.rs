//! Token management: POST/GET /api/tokens, DELETE /api/tokens/{id}.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::PathErrors;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::JsonBody;
use super::topics::Done;
use crate::api::service::Caller;
use crate::api::service::Hops;
use crate::api::service::NewToken;
use crate::api::service::TokenInfo;
use crate::model::rfc3339;
use crate::raft::types::Scope;

/// What a token may do; `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    Publish,
    Consume,
    Admin,
}

impl From<TokenScope> for Scope {
    fn from(scope: TokenScope) -> Scope {
        match scope {
            TokenScope::Publish => Scope::Publish,
            TokenScope::Consume => Scope::Consume,
            TokenScope::Admin => Scope::Admin,
        }
    }
}

impl From<Scope> for TokenScope {
    fn from(scope: Scope) -> TokenScope {
        match scope {
            Scope::Publish => TokenScope::Publish,
            Scope::Consume => TokenScope::Consume,
            Scope::Admin => TokenScope::Admin,
        }
    }
}

/// A new token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateToken {
    /// Not blank, at most 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: String,
    #[schema(min_items = 1)]
    pub scopes: Vec<TokenScope>,
    /// Names or ids of the existing topics the token is limited to; none
    /// or empty means every topic. The token keeps their ids: a renamed
    /// topic stays allowed, and a new topic taking an old name does not.
    pub topics: Option<Vec<String>>,
}

/// A token, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: u64,
    pub name: String,
    pub scopes: Vec<TokenScope>,
    /// The current names of the topics the token is limited to (the id of
    /// one since deleted); empty means every topic.
    pub topics: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl Token {
    fn of(token: TokenInfo) -> Token {
        Token {
            id: token.id,
            name: token.name,
            scopes: token.scopes.into_iter().map(TokenScope::from).collect(),
            topics: token.topics,
            created_at: rfc3339(token.created_at_ms),
        }
    }
}

/// A new token with its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: Token,
    /// The bearer secret (`rst_…`). Only its hash is stored.
    pub token: String,
}

/// A list of tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub data: Vec<Token>,
}

/// Creates a token.
#[utoipa::path(
    post,
    path = "/api/tokens",
    tag = "tokens",
    operation_id = "create_token",
    request_body(content = CreateToken, content_type = "application/json"),
    responses(
        (status = 201, description = "The token and its secret, shown this once.",
            body = CreatedToken),
        (status = 400, description = "`invalid_request`: malformed JSON or an invalid field.",
            body = ErrorBody),
        (status = 404, description = "`not_found`: one of `topics` names no topic; no token \
            is created.", body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(gateway): Shared,
    JsonBody(body): JsonBody<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let new = NewToken {
        name: body.name,
        scopes: body.scopes.into_iter().map(Scope::from).collect(),
        topics: body.topics.unwrap_or_default(),
    };
    let created = gateway
        .core
        .create_token(&Caller::Node, new, Hops::default())
        .await?;
    let created = CreatedToken {
        info: Token::of(created.token),
        token: created.secret,
    };
    Ok((StatusCode::CREATED, Json(created)))
}

/// Lists tokens, without their secrets.
#[utoipa::path(
    get,
    path = "/api/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    responses(
        (status = 200, description = "The tokens.", body = TokenList),
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list(State(gateway): Shared) -> Result<Json<TokenList>, ApiError> {
    let tokens = gateway
        .core
        .list_tokens(&Caller::Node, Hops::default())
        .await?;
    Ok(Json(TokenList {
        data: tokens.into_iter().map(Token::of).collect(),
    }))
}

/// Revokes a token.
#[utoipa::path(
    delete,
    path = "/api/tokens/{token_id}",
    tag = "tokens",
    operation_id = "delete_token",
    params(("token_id" = u64, Path, description = "The token's id.")),
    responses(
        (status = 200, description = "Revoked.", body = Done),
        PathErrors,
        (status = 404, description = "`not_found`: no such token.", body = ErrorBody),
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(gateway): Shared,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Done>, ApiError> {
    // Any other text names no token: 404, like an id that does not exist.
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("token {id:?} does not exist")))?;
    gateway
        .core
        .delete_token(&Caller::Node, id, Hops::default())
        .await?;
    Ok(Done::success())
}
