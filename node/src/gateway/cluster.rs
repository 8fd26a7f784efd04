//! Cluster membership and placement: GET /api/cluster, POST
//! /api/cluster/nodes, DELETE /api/cluster/nodes/{node_id} and POST
//! /api/topics/{topic_id}/partitions/{partition}/move.
//!
//! These are cluster-wide changes: like the gRPC calls, they need an admin
//! token that is not limited to some topics (the service checks the caller).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Gateway;
use super::Shared;
use super::auth::AdmittedToken;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::NoSuchTopic;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::JsonBody;
use crate::api::service;
use crate::api::service::Caller;
use crate::api::service::Hops;
use crate::api::service::moves_of;
use crate::api::service::replica_spread;
use crate::model::NodeId;
use crate::model::TopicName;

/// A node of the cluster.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    pub id: u64,
    /// Where clients reach the node's gRPC API.
    pub address: String,
    /// The node answered this status request.
    pub reachable: bool,
    /// Partition replicas placed on the node.
    pub replicas: u32,
    /// Of those, the partitions it is the preferred leader of.
    pub preferred_leaders: u32,
    /// Partitions it leads now.
    pub leaders: u32,
    /// A voter of the metadata group; false while a joining node catches up.
    pub voter: bool,
    /// Being removed: its replicas are moving away.
    pub draining: bool,
}

/// One Raft group as its leader (or, without one, a replica) reports it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterGroup {
    pub group_id: u64,
    /// The partition's topic; null for the metadata group.
    pub topic: Option<String>,
    /// Null for the metadata group.
    pub partition: Option<u32>,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub replicas: Vec<u64>,
    /// The offset the next message gets.
    pub high_watermark: u64,
}

/// A partition move under way.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PartitionMove {
    pub topic: String,
    pub partition: u32,
    /// The replicas it had when the move started.
    pub from: Vec<u64>,
    /// The replicas it moves to, the preferred leader first.
    pub to: Vec<u64>,
}

impl PartitionMove {
    fn of(status: service::MoveStatus) -> PartitionMove {
        PartitionMove {
            topic: status.topic,
            partition: status.partition,
            from: status.from.into_iter().map(|n| n.0).collect(),
            to: status.to.into_iter().map(|n| n.0).collect(),
        }
    }
}

/// How evenly the cluster is spread: the most minus the fewest per node,
/// over the voters that are not draining (the nodes the balancer fills).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Spread {
    pub replicas: u32,
    pub leaders: u32,
}

/// The cluster: its nodes, its groups and the partition moves under way.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// The node that answered.
    pub node_id: u64,
    pub nodes: Vec<ClusterNode>,
    pub groups: Vec<ClusterGroup>,
    pub moves: Vec<PartitionMove>,
    pub spread: Spread,
}

impl Cluster {
    fn of(status: service::ClusterStatus) -> Cluster {
        let spread = status.spread();
        let spread = Spread {
            replicas: spread.replicas,
            leaders: spread.leaders,
        };
        let nodes = status
            .nodes
            .into_iter()
            .map(|n| ClusterNode {
                id: n.id.0,
                address: n.client_addr,
                reachable: n.reachable,
                replicas: n.replicas,
                preferred_leaders: n.preferred_leaders,
                leaders: n.leaders,
                voter: n.voter,
                draining: n.draining,
            })
            .collect();
        let groups = status
            .groups
            .into_iter()
            .map(|g| {
                let is_partition = !g.topic.is_empty();
                ClusterGroup {
                    group_id: g.group_id.0,
                    partition: is_partition.then_some(g.partition),
                    topic: is_partition.then_some(g.topic),
                    leader: g.leader.map(|n| n.0),
                    term: g.term,
                    commit_index: g.commit_index,
                    replicas: g.replicas.into_iter().map(|n| n.0).collect(),
                    high_watermark: g.high_watermark.0,
                }
            })
            .collect();
        Cluster {
            node_id: status.node_id.0,
            nodes,
            groups,
            moves: status.moves.into_iter().map(PartitionMove::of).collect(),
            spread,
        }
    }
}

/// A node to add: started empty with `--join`, it catches up on the
/// metadata and then becomes a voter.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AddNode {
    /// The new node's id (not 0).
    #[schema(minimum = 1)]
    pub id: u64,
    /// Where the other nodes reach the new node's peer listener (host:port).
    pub address: String,
}

/// What a membership change came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeChangeResult {
    /// The node is a voter.
    Added,
    /// The node is out of the cluster.
    Removed,
    /// The node's replicas are still moving away; ask again to carry on.
    Draining,
}

/// The outcome of adding or removing a node.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeChange {
    pub node_id: u64,
    pub result: NodeChangeResult,
    /// Partition replicas still on the node (0 unless draining).
    pub replicas_left: u32,
    /// The moves of replicas off the node still under way.
    pub moves: Vec<PartitionMove>,
}

/// The `{node_id}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct NodePath {
    /// The node's id.
    pub node_id: u64,
}

/// The path parameters of a partition move.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PartitionPath {
    /// The topic's integer id, or its name.
    pub topic_id: String,
    /// The partition's index, from 0.
    pub partition: u32,
}

/// Where a partition moves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovePartition {
    /// As many distinct nodes of the cluster as the topic's replication
    /// factor; the first becomes the partition's preferred leader.
    #[schema(min_items = 1)]
    pub to: Vec<u64>,
}

impl Gateway {
    /// The admitted token as the service's caller, so that the service
    /// refuses cluster-wide changes to tokens limited to some topics.
    fn caller(&self, admitted: AdmittedToken) -> Result<Caller, ApiError> {
        self.node
            .with_metadata(|m| m.tokens.get(&admitted.0).cloned())
            .flatten()
            .map(Caller::Token)
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown or revoked token"))
    }
}

/// The cluster's nodes (with their replicas, leaders and preferred
/// leaders), its groups, the partition moves under way, and the spread.
#[utoipa::path(
    get,
    path = "/api/cluster",
    tag = "cluster",
    operation_id = "cluster_status",
    responses(
        (status = 200, description = "The cluster.", body = Cluster),
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn status(State(gateway): Shared) -> Json<Cluster> {
    Json(Cluster::of(
        gateway.core.cluster_status(Hops::default()).await,
    ))
}

/// Adds a node started with `--join`: it catches up on the metadata, then
/// becomes a voter, and the balancer moves replicas onto it. Answers once
/// it is a voter; adding a voter again only asks the balancer again.
#[utoipa::path(
    post,
    path = "/api/cluster/nodes",
    tag = "cluster",
    operation_id = "add_node",
    request_body(content = AddNode, content_type = "application/json"),
    responses(
        (status = 200, description = "The node is a voter (`result` is `added`).",
            body = NodeChange),
        (status = 400, description = "`invalid_request`: malformed JSON, id 0, or an address \
            that is not host:port.", body = ErrorBody),
        (status = 409, description = "`conflict`: the node is in the cluster at another \
            address.", body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn add_node(
    State(gateway): Shared,
    Extension(admitted): Extension<AdmittedToken>,
    JsonBody(body): JsonBody<AddNode>,
) -> Result<Json<NodeChange>, ApiError> {
    if body.id == 0 {
        return Err(ApiError::bad_request("node ids start at 1"));
    }
    let caller = gateway.caller(admitted)?;
    gateway
        .core
        .add_node(&caller, NodeId(body.id), &body.address, Hops::default())
        .await?;
    Ok(Json(NodeChange {
        node_id: body.id,
        result: NodeChangeResult::Added,
        replicas_left: 0,
        moves: Vec::new(),
    }))
}

/// Removes a node: marks it draining, waits a while for the balancer to
/// move its replicas away, then takes it out of the cluster. While
/// replicas are still moving it answers 202 with what is left; DELETE
/// again (as often as needed) to carry on, until 200.
#[utoipa::path(
    delete,
    path = "/api/cluster/nodes/{node_id}",
    tag = "cluster",
    operation_id = "remove_node",
    params(NodePath),
    responses(
        (status = 200, description = "The node is out of the cluster (`result` is `removed`).",
            body = NodeChange),
        (status = 202, description = "The node is draining (`result` is `draining`): its \
            replicas are still moving away. DELETE again to carry on.", body = NodeChange),
        (status = 400, description = "`invalid_request`: the id is not a number, or without \
            the node the cluster has fewer nodes than a topic's replication factor.",
            body = ErrorBody),
        (status = 404, description = "`not_found`: no such node in the cluster.",
            body = ErrorBody),
        (status = 409, description = "`conflict`: the node is still joining; add it first.",
            body = ErrorBody),
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn remove_node(
    State(gateway): Shared,
    Extension(admitted): Extension<AdmittedToken>,
    ApiPath(NodePath { node_id }): ApiPath<NodePath>,
) -> Result<(StatusCode, Json<NodeChange>), ApiError> {
    let node = NodeId(node_id);
    if !gateway.node.cluster_nodes().contains_key(&node) {
        return Err(ApiError::not_found(format!(
            "node {node_id} is not in the cluster"
        )));
    }
    let caller = gateway.caller(admitted)?;
    match gateway
        .core
        .remove_node(&caller, node, Hops::default())
        .await
    {
        Ok(()) => Ok((
            StatusCode::OK,
            Json(NodeChange {
                node_id,
                result: NodeChangeResult::Removed,
                replicas_left: 0,
                moves: Vec::new(),
            }),
        )),
        Err(e) if e.code == ErrorCode::Unavailable => {
            // Still draining (the metadata says so): progress, not an
            // error. Anything else unavailable stays a 503 to retry.
            let meta = gateway.node.metadata();
            if !meta.draining.contains(&node) {
                return Err(e.into());
            }
            let replicas_left = replica_spread(&meta)
                .get(&node)
                .map_or(0, |(replicas, _)| *replicas);
            let moves = moves_of(&meta)
                .into_iter()
                .filter(|m| m.from.contains(&node) && !m.to.contains(&node))
                .map(PartitionMove::of)
                .collect();
            Ok((
                StatusCode::ACCEPTED,
                Json(NodeChange {
                    node_id,
                    result: NodeChangeResult::Draining,
                    replicas_left,
                    moves,
                }),
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts moving a partition to other replicas, the first its preferred
/// leader. Answers once the move is recorded; GET /api/cluster shows it
/// under way until the replicas caught up.
#[utoipa::path(
    post,
    path = "/api/topics/{topic_id}/partitions/{partition}/move",
    tag = "cluster",
    operation_id = "move_partition",
    params(PartitionPath),
    request_body(content = MovePartition, content_type = "application/json"),
    responses(
        (status = 202, description = "The move is recorded and under way.",
            body = PartitionMove),
        (status = 400, description = "`invalid_request`: the path does not decode as UTF-8, \
            malformed JSON, or `to` does not name as many distinct nodes of the cluster as the \
            replication factor; `unknown_partition`: the topic has no such partition. Nothing \
            changes.",
            body = ErrorBody),
        NoSuchTopic,
        (status = 409, description = "`conflict`: the partition is already moving elsewhere.",
            body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn move_partition(
    State(gateway): Shared,
    Extension(admitted): Extension<AdmittedToken>,
    ApiPath(PartitionPath {
        topic_id,
        partition,
    }): ApiPath<PartitionPath>,
    JsonBody(body): JsonBody<MovePartition>,
) -> Result<(StatusCode, Json<PartitionMove>), ApiError> {
    let topic = gateway.current_topic(&topic_id).await?;
    let caller = gateway.caller(admitted)?;
    let to: Vec<NodeId> = body.to.iter().copied().map(NodeId).collect();
    gateway
        .core
        .move_partition(
            &caller,
            &TopicName::Id(topic.id),
            partition,
            to,
            Hops::default(),
        )
        .await?;
    let from = topic
        .partitions
        .get(partition as usize)
        .map(|replicas| replicas.iter().map(|n| n.0).collect())
        .unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        Json(PartitionMove {
            topic: topic.name,
            partition,
            from,
            to: body.to,
        }),
    ))
}
