//! The platform event channels in elastic.io's per-flow shape: a flow's
//! executions and errors, a workspace's activity. Each view consumes one
//! system topic (`crate::platform`) like the ordinary consume route, and
//! keeps only the events of the flow or workspace named in the path.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiError;
use super::ErrorBody;
use super::Shared;
use super::auth::AdmittedToken;
use super::consume::ConsumeRequest;
use super::consume::ConsumeResponse;
use super::consume::consume_topic;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::extract::ApiPath;
use super::extract::ApiQuery;
use super::extract::OptionalJsonBody;
use crate::api::read::ReadMessage;
use crate::platform::Channel;
use crate::platform::StampedEvent;
use raftstream_proto::ErrorCode;

/// The `{flow_id}` path parameter: a push subscription's or a webhook
/// source's id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FlowPath {
    pub flow_id: String,
}

/// The `{workspace_id}` path parameter: the cluster id.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkspacePath {
    pub workspace_id: String,
}

/// Which events of a channel a view returns.
enum Owner {
    Flow(String),
    Workspace(String),
}

impl Owner {
    fn owns(&self, message: &ReadMessage) -> bool {
        let Ok(event) = serde_json::from_slice::<StampedEvent>(&message.value) else {
            return false;
        };
        match self {
            Owner::Flow(id) => event.flow_id.as_deref() == Some(id.as_str()),
            Owner::Workspace(id) => event.workspace_id.as_deref() == Some(id.as_str()),
        }
    }
}

/// Consumes `channel`, keeping `owner`'s events. A channel whose topic
/// does not exist yet has had no event: an empty page, as a consume of a
/// topic with no message after its timeout.
async fn view(
    gateway: &super::Gateway,
    admitted: &AdmittedToken,
    channel: Channel,
    owner: Owner,
    query: &[(String, String)],
    body: ConsumeRequest,
) -> Result<Json<ConsumeResponse>, ApiError> {
    let body = body.checked(query)?;
    let topic = match gateway.topic(channel.topic()).await {
        Ok(topic) => topic,
        Err(e) if e.code == ErrorCode::NotFound => {
            return Ok(Json(ConsumeResponse {
                messages: Vec::new(),
            }));
        }
        Err(e) => return Err(e),
    };
    let keep = move |message: &ReadMessage| owner.owns(message);
    consume_topic(gateway, admitted, &topic, body, Some(&keep))
        .await
        .map(Json)
}

/// Declares the view routes. Each is a POST that consumes one channel
/// through [`view`] and keeps the events of the flow or workspace its path
/// names; they differ only in the names given here.
macro_rules! views {
    ($(
        $(#[$doc:meta])*
        $name:ident: $route:tt as $operation:tt, answering $events:tt,
        keeps Owner::$owner:ident($params:ident { $id:ident }) of Channel::$channel:ident;
    )+) => {$(
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = $route,
            tag = "platform",
            operation_id = $operation,
            params($params),
            request_body(content = Option<ConsumeRequest>, content_type = "application/json"),
            responses(
                (status = 200, description = $events, body = ConsumeResponse),
                (status = 400, description = "`invalid_request`: as for consume.", body = ErrorBody),
                BodyErrors,
                AuthErrors,
                ClusterErrors,
            ),
            security(("bearer" = []))
        )]
        pub async fn $name(
            State(gateway): Shared,
            ApiPath($params { $id }): ApiPath<$params>,
            Extension(admitted): Extension<AdmittedToken>,
            ApiQuery(query): ApiQuery<Vec<(String, String)>>,
            OptionalJsonBody(body): OptionalJsonBody<ConsumeRequest>,
        ) -> Result<Json<ConsumeResponse>, ApiError> {
            let owner = Owner::$owner($id);
            view(&gateway, &admitted, Channel::$channel, owner, &query, body).await
        }
    )+};
}

views! {
    /// A flow's delivery lifecycle: each attempt started, succeeded or failed,
    /// with its latency and attempt number.
    flow_executions: "/api/v1/flow/{flow_id}/execution/consume" as "consume_flow_executions",
        answering "The flow's execution events in order.",
        keeps Owner::Flow(FlowPath { flow_id }) of Channel::Executions;

    /// A flow's errors: delivery failures and dead letters, webhook
    /// signature or secret refusals, each with its reason.
    flow_errors: "/api/v1/flow/{flow_id}/error/consume" as "consume_flow_errors",
        answering "The flow's error events in order.",
        keeps Owner::Flow(FlowPath { flow_id }) of Channel::Errors;

    /// A workspace's (the cluster's) activity: topics, tokens, sources and
    /// subscriptions created, updated and deleted; nodes joined and left;
    /// leader changes.
    workspace_activity: "/api/v1/workspace/{workspace_id}/activity/consume"
        as "consume_workspace_activity",
        answering "The workspace's activity events in order.",
        keeps Owner::Workspace(WorkspacePath { workspace_id }) of Channel::Activity;
}
