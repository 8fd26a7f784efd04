//! The HTTP listener: health and readiness now; the Workato-compatible
//! gateway mounts its routes here.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(node)
}

/// The process is up and serving.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The node can take writes: its metadata group has a leader.
async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    let leader = node.meta_group().and_then(|g| g.leader()).map(|(id, _)| id);
    match leader {
        Some(leader) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "node_id": node.id(), "metadata_leader": leader})),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"message": "no metadata leader yet", "code": "not_ready"})),
        ),
    }
}
