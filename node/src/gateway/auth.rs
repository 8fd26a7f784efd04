//! Bearer-token authentication, scopes and per-token rate limits for the
//! API routes. /healthz, /readyz and the API documents stay public.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::Path;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use governor::DefaultKeyedRateLimiter;
use governor::Quota;
use raftstream_proto::ErrorCode;

use super::ApiError;
use super::Gateway;
use crate::auth::AccessLost;
use crate::auth::Denied;
use crate::auth::bearer_credentials;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::raft::types::Scope;

pub type RateLimiter = DefaultKeyedRateLimiter<u64>;

pub fn rate_limiter(per_second: Option<u32>) -> Option<RateLimiter> {
    let per_second = NonZeroU32::new(per_second?)?;
    Some(RateLimiter::keyed(Quota::per_second(per_second)))
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

/// Admits a request whose bearer token has `scope` (and, for topic routes,
/// may use that topic).
pub async fn require(
    State((gateway, scope)): State<(Arc<Gateway>, Scope)>,
    request: Request,
    next: Next,
) -> Response {
    match check(&gateway, scope, request).await {
        Ok(request) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn check(gateway: &Gateway, scope: Scope, request: Request) -> Result<Request, ApiError> {
    let (mut parts, body) = request.into_parts();
    let secret = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .ok()
        .and_then(bearer_credentials)
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?
        .to_string();
    // A token created a moment ago through another node is waited for
    // briefly, as its metadata arrives.
    let token = gateway
        .node
        .authenticate(&secret)
        .await
        .ok_or_else(|| unauthorized("unknown or revoked token"))?;
    let params = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
        .await
        .ok();
    let topic = params
        .as_ref()
        .and_then(|p| p.get("topic_id"))
        .and_then(|t| gateway.node.find_topic(&TopicName::parse(t)));
    // A token limited to some topics may act only on routes naming one of
    // them; routes naming no topic need an unrestricted token.
    token.allows(scope, topic.as_ref()).map_err(denied_error)?;
    if let Some(limiter) = &gateway.rate_limiter
        && limiter.check_key(&token.id).is_err()
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many requests for this token",
        ));
    }
    parts.extensions.insert(AdmittedToken(token.id));
    Ok(Request::from_parts(parts, body))
}

/// The token this middleware admitted a request with, for handlers whose
/// work outlives the check (a long poll checks it again as it waits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmittedToken(pub u64);

impl AdmittedToken {
    /// Whether the token may still use `scope` on topic `topic_id`.
    pub fn still_allowed(
        self,
        gateway: &Gateway,
        scope: Scope,
        topic_id: TopicId,
    ) -> Result<(), ApiError> {
        gateway
            .node
            .with_metadata(|m| {
                crate::auth::still_allowed(m, self.0, scope, Some(topic_id))
                    .map(|_| ())
                    .map_err(access_lost_error)
            })
            .unwrap_or_else(|| Err(access_lost_error(AccessLost::NodeStopping)))
    }

    /// Resolves with the error to answer with once the token may no longer
    /// use `scope` on topic `topic_id`.
    pub async fn access_lost(self, gateway: &Gateway, scope: Scope, topic_id: TopicId) -> ApiError {
        access_lost_error(
            crate::auth::access_lost(gateway.node.hosted_groups(), self.0, scope, Some(topic_id))
                .await,
        )
    }
}

fn denied_error(why: Denied) -> ApiError {
    match why {
        Denied::Scope(s) => ApiError::new(
            ErrorCode::Forbidden,
            format!("this token lacks the {} scope", s.as_str()),
        ),
        Denied::Topic => ApiError::new(ErrorCode::Forbidden, "this token may not use this topic"),
    }
}

fn access_lost_error(why: AccessLost) -> ApiError {
    match why {
        AccessLost::Revoked => unauthorized("token revoked"),
        AccessLost::Denied(denied) => denied_error(denied),
        AccessLost::NodeStopping => ApiError::new(ErrorCode::Unavailable, why.to_string()),
    }
}
