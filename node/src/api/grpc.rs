//! The `raftstream.v1.Raftstream` gRPC service. Every node serves it: work
//! for a group this node leads is done here; anything else is forwarded one
//! hop (at most two) to the node that leads the group.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use openraft::async_runtime::WatchReceiver;
use raftstream_proto::ErrorCode;
use raftstream_proto::call_outcome;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use raftstream_proto::v1::raftstream_server::Raftstream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use crate::api::WriteError;
use crate::api::authenticate_first::AuthenticatedToken;
use crate::api::authenticate_first::NODE_AUTH_HEADER;
use crate::api::forwarded::note_forwarded;
use crate::api::read::ReadBatch;
use crate::api::read::ReadError;
use crate::api::read::StartAt;
use crate::api::read::read_or_wait;
use crate::api::schema::SchemaError;
use crate::api::schema::TopicSchema;
use crate::api::schema::ValuesChecked;
use crate::config::DEFAULT_MAX_MESSAGES;
use crate::config::MAX_MESSAGES;
use crate::config::MAX_RPC_BYTES;
use crate::config::MAX_WAIT_MS;
use crate::model::TopicName;
use crate::node::Group;
use crate::node::Node;
use crate::raft::batch::BatchError;
use crate::raft::batch::RecordBatch;
use crate::raft::quiesce::quorum_acked_since;
use crate::raft::types::CommandResponse;
use crate::raft::types::CommitWriter;
use crate::raft::types::META_GROUP;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::raft::types::PartitionCommand;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::Scope;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::raft::types::TopicUpdate;
use crate::state_machine::GroupData;
use crate::state_machine::meta::validate_spec;

/// How many times a request has been forwarded. A request is forwarded at
/// most twice (to a replica, then to its leader) so stale leader hints can
/// never make it loop.
const HOPS_HEADER: &str = "x-raftstream-hops";
const MAX_HOPS: u32 = 2;
/// Asks a node to answer from its own replicas only (cluster status fan-out
/// and reads that a lagging replica could not serve).
const LOCAL_HEADER: &str = "x-raftstream-local";

fn node_credential(secret: &[u8; 32]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone)]
pub struct ClientService {
    node: Arc<Node>,
    trust: Trust,
}

/// Whom the service believes without a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// The public listener's service: every caller shows a bearer token.
    /// The node credential is refused here, so that knowing it (or a bug
    /// that leaks it) never lets a client pose as a node.
    Public,
    /// The peer listener's service: only other nodes forwarding work they
    /// authorized, showing the node credential (behind mutual TLS when
    /// `peer_tls` is set).
    Peer,
    /// The in-process service behind the HTTP gateway, which has already
    /// authenticated and authorized its caller.
    InProcess,
}

/// Who is calling.
#[derive(Debug, Clone)]
enum Caller {
    /// Another node forwarding work it authorized, or the gateway.
    Node,
    Token(TokenRecord),
}

impl Caller {
    fn check_topic(&self, scope: Scope, topic: &Topic) -> Result<(), Status> {
        match self {
            Caller::Node => Ok(()),
            Caller::Token(token) => token.allows(scope, Some(topic)).map_err(denied),
        }
    }

    /// Cluster-wide operations need a token not limited to some topics.
    fn check_unrestricted(&self) -> Result<(), Status> {
        match self {
            Caller::Token(token) if !token.topics.is_empty() => Err(Status::permission_denied(
                "this token is limited to some topics",
            )),
            _ => Ok(()),
        }
    }

    /// The caller as this node's metadata has it now, if it may still use
    /// `scope` on `topic_id`: reads that stay open call this before every
    /// batch, so a revoked token ends them even while messages flow.
    fn refreshed(
        &self,
        node: &Node,
        scope: Scope,
        topic_id: Option<u64>,
    ) -> Result<Caller, Status> {
        match self {
            Caller::Node => Ok(Caller::Node),
            Caller::Token(token) => node
                .with_metadata(|m| {
                    crate::auth::still_allowed(m, token.id, scope, topic_id)
                        .map(|token| Caller::Token(token.clone()))
                        .map_err(access_lost_status)
                })
                .unwrap_or_else(|| Err(access_lost_status(crate::auth::AccessLost::NodeStopping))),
        }
    }

    /// Resolves with the status to end a read with once the caller may no
    /// longer use `scope` on `topic_id`; never for a node.
    async fn access_lost(&self, node: &Node, scope: Scope, topic_id: Option<u64>) -> Status {
        match self {
            Caller::Node => std::future::pending().await,
            Caller::Token(token) => {
                access_lost_status(crate::auth::access_lost(node, token.id, scope, topic_id).await)
            }
        }
    }
}

fn access_lost_status(why: crate::auth::AccessLost) -> Status {
    match why {
        crate::auth::AccessLost::Revoked => ErrorCode::Unauthorized.status(why.to_string()),
        crate::auth::AccessLost::Denied(denied_why) => denied(denied_why),
        crate::auth::AccessLost::NodeStopping => ErrorCode::Unavailable.status(why.to_string()),
    }
}

fn denied(why: crate::auth::Denied) -> Status {
    match why {
        crate::auth::Denied::Scope(scope) => {
            ErrorCode::Forbidden.status(format!("this token lacks the {} scope", scope.as_str()))
        }
        crate::auth::Denied::Topic => {
            ErrorCode::Forbidden.status("this token may not use this topic")
        }
    }
}

impl ClientService {
    /// The in-process service for the HTTP gateway (it authenticates).
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            trust: Trust::InProcess,
        }
    }

    /// The public listener's service: every call needs a bearer token.
    pub fn public(node: Arc<Node>) -> Self {
        Self {
            node,
            trust: Trust::Public,
        }
    }

    /// The peer listener's service: every call needs the node credential.
    pub fn peer(node: Arc<Node>) -> Self {
        Self {
            node,
            trust: Trust::Peer,
        }
    }

    /// Authenticates the caller and, when `scope` is given, checks it.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: Option<Scope>,
    ) -> Result<Caller, Status> {
        if self.trust == Trust::InProcess {
            return Ok(Caller::Node);
        }
        // Without its metadata group (the node is stopping) nothing can be
        // checked: that is unavailability, not a bad token.
        if self.node.meta_group().is_none() {
            return Err(Status::unavailable(
                "this node is shutting down; retry another",
            ));
        }
        let node_credential_shown = request.metadata().get(NODE_AUTH_HEADER);
        match (self.trust, node_credential_shown) {
            (Trust::Public, Some(_)) => {
                return Err(Status::unauthenticated(
                    "node credentials are accepted only on the peer listener",
                ));
            }
            (Trust::Peer, None) => {
                return Err(Status::unauthenticated(
                    "the peer listener serves only nodes of this cluster, which show the \
                     node credential; clients call the public gRPC address",
                ));
            }
            _ => {}
        }
        if let Some(credential) = node_credential_shown {
            let cluster_secret = self.node.with_metadata(|m| m.cluster_secret).flatten();
            let valid = cluster_secret.as_ref().is_some_and(|secret| {
                let presented = credential.as_bytes();
                let expected = node_credential(secret);
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    presented,
                    expected.as_bytes(),
                ))
            });
            return if valid {
                Ok(Caller::Node)
            } else {
                Err(Status::unauthenticated("invalid node credential"))
            };
        }
        let token = match request.extensions().get::<AuthenticatedToken>() {
            // The public service's layer authenticated it from the headers.
            Some(AuthenticatedToken(token)) => token.clone(),
            None => {
                let secret = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .ok_or_else(|| {
                        Status::unauthenticated("missing authorization: Bearer <token>")
                    })?;
                self.node
                    .authenticate(secret)
                    .await
                    .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))?
            }
        };
        if let Some(scope) = scope
            && !token.has_scope(scope)
        {
            return Err(denied(crate::auth::Denied::Scope(scope)));
        }
        Ok(Caller::Token(token))
    }

    /// Whether this node checks a call's values against the topic's
    /// schema. The node a client called checks them, once: a forwarded call
    /// (peer listener) was checked there, and the gateway checks its
    /// payloads itself, item by item, and says so.
    fn schema_check<T>(&self, request: &Request<T>) -> SchemaCheck {
        match self.trust {
            Trust::Public => SchemaCheck::Here,
            Trust::Peer => SchemaCheck::Done,
            Trust::InProcess if request.extensions().get::<ValuesChecked>().is_some() => {
                SchemaCheck::Done
            }
            Trust::InProcess => SchemaCheck::Here,
        }
    }

    /// Refuses values that the topic's JSON Schema does not accept: each
    /// must be JSON satisfying it. Topics without a schema take any bytes.
    async fn check_schema(
        &self,
        topic: &Topic,
        values: impl IntoIterator<Item = bytes::Bytes>,
    ) -> Result<(), Status> {
        let Some(schema) = TopicSchema::of(topic) else {
            return Ok(());
        };
        let values = values.into_iter().collect();
        self.node
            .schemas
            .check_all(schema, values)
            .await
            .map_err(schema_status)
    }

    /// Refuses a schema offered for a topic that is too large or does not
    /// compile, before it is stored: publishes to the topic would fail.
    /// Checked here, not when the command is applied, so that entries an
    /// older version committed are never judged by newer limits.
    async fn check_schema_document(&self, schema: &str) -> Result<(), Status> {
        self.node
            .schemas
            .check_document(schema)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Marks a request this node sends to another as coming from a node.
    fn sign<T>(&self, request: &mut Request<T>) {
        if let Some(secret) = self.node.with_metadata(|m| m.cluster_secret).flatten()
            && let Ok(value) = node_credential(&secret).parse()
        {
            request.metadata_mut().insert(NODE_AUTH_HEADER, value);
        }
    }

    pub fn into_server(self) -> pb::raftstream_server::RaftstreamServer<Self> {
        let max_request_bytes = self.max_request_bytes();
        pb::raftstream_server::RaftstreamServer::new(self)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }

    /// The largest request this service decodes: clients are held to
    /// `max_request_bytes`; peers forward what a client sent, or a whole
    /// publish batch, and are trusted (mutual TLS) to the Raft limit.
    pub(crate) fn max_request_bytes(&self) -> usize {
        match self.trust {
            Trust::Public => self.node.config.limits.max_request_bytes,
            Trust::Peer | Trust::InProcess => MAX_RPC_BYTES,
        }
    }
}

/// Whether a call's values still need their schema check on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaCheck {
    Here,
    /// Checked by the node or the gateway that took the call.
    Done,
}

/// What the caller knows about forwarding.
#[derive(Debug, Clone, Copy)]
struct Hops {
    count: u32,
    local_only: bool,
}

impl Hops {
    fn of<T>(request: &Request<T>) -> Hops {
        let count = request
            .metadata()
            .get(HOPS_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Hops {
            count,
            local_only: request.metadata().contains_key(LOCAL_HEADER),
        }
    }

    fn can_forward(&self) -> bool {
        !self.local_only && self.count < MAX_HOPS
    }
}

fn topic_name(topic: Option<&pb::TopicRef>) -> Result<TopicName, Status> {
    match topic.and_then(|t| t.topic.as_ref()) {
        Some(pb::topic_ref::Topic::Id(id)) => Ok(TopicName::Id(*id)),
        Some(pb::topic_ref::Topic::Name(name)) => Ok(TopicName::parse(name)),
        None => Err(Status::invalid_argument("topic is required")),
    }
}

fn topic_ref(topic: &Topic) -> Option<pb::TopicRef> {
    Some(pb::TopicRef {
        topic: Some(pb::topic_ref::Topic::Id(topic.id)),
    })
}

pub fn message_id(partition: u32, offset: u64) -> String {
    format!("{partition}-{offset}")
}

/// Parses "<partition>-<offset>".
pub fn parse_message_id(id: &str) -> Option<(u32, u64)> {
    let (partition, offset) = id.split_once('-')?;
    Some((partition.parse().ok()?, offset.parse().ok()?))
}

fn retention_from_pb(r: Option<&pb::RetentionPolicy>) -> RetentionPolicy {
    let nonzero = |v: u64| (v > 0).then_some(v);
    RetentionPolicy {
        retention_ms: r.and_then(|r| nonzero(r.retention_ms)),
        retention_bytes: r.and_then(|r| nonzero(r.retention_bytes)),
    }
}

pub fn topic_to_pb(topic: &Topic) -> pb::Topic {
    pb::Topic {
        id: topic.id,
        name: topic.name.clone(),
        description: topic.description.clone(),
        schema: topic.schema.clone(),
        replication_factor: topic.replication_factor,
        retention: Some(pb::RetentionPolicy {
            retention_ms: topic.retention.retention_ms.unwrap_or(0),
            retention_bytes: topic.retention.retention_bytes.unwrap_or(0),
        }),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(p, replicas)| pb::PartitionInfo {
                partition: p as u32,
                group_id: topic.group_id(p as u32),
                replicas: replicas.clone(),
            })
            .collect(),
        created_at_ms: topic.created_at_ms,
        updated_at_ms: topic.updated_at_ms,
        version: topic.version,
    }
}

/// A token for the API: its topics by their current names (`meta`).
pub fn token_to_pb(token: &TokenRecord, meta: &MetaState) -> pb::TokenInfo {
    pb::TokenInfo {
        id: token.id,
        name: token.name.clone(),
        scopes: token
            .scopes
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        topics: token.topic_names(meta),
        created_at_ms: token.created_at_ms,
    }
}

fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::NotLeader { .. } => {
            ErrorCode::Unavailable.status("no leader reachable for this group; retry")
        }
        WriteError::Unknown(why) => outcome_unknown(&why),
        WriteError::Unavailable(why) => ErrorCode::Unavailable.status(why),
        WriteError::InsufficientStorage(why) => ErrorCode::InsufficientStorage.status(why),
        WriteError::Rejected(r) => match r {
            MetaRejection::TopicExists { .. } | MetaRejection::AlreadyBootstrapped => {
                ErrorCode::Conflict.status(r.to_string())
            }
            MetaRejection::TopicNotFound { .. }
            | MetaRejection::TopicNameNotFound { .. }
            | MetaRejection::TokenNotFound { .. }
            | MetaRejection::SourceNotFound { .. } => ErrorCode::NotFound.status(r.to_string()),
            MetaRejection::Invalid(_) => ErrorCode::InvalidRequest.status(r.to_string()),
        },
    }
}

/// How a whole-call status words an unknown outcome: DEADLINE_EXCEEDED
/// alone reads like a plain timeout to a person.
const OUTCOME_UNKNOWN_PREFIX: &str = "outcome unknown: ";

fn outcome_unknown(why: &str) -> Status {
    ErrorCode::OutcomeUnknown.status(format!("{OUTCOME_UNKNOWN_PREFIX}{why}"))
}

fn read_status(e: ReadError) -> Status {
    match e {
        ReadError::NoSuchMessage { .. } => ErrorCode::InvalidRequest.status(e.to_string()),
        ReadError::NotLocal { .. } => ErrorCode::Unavailable.status(e.to_string()),
        ReadError::Storage(_) => ErrorCode::Internal.status(e.to_string()),
    }
}

/// The partitions a request names: one, or all when it names none.
fn selected_partitions(topic: &Topic, partition: Option<u32>) -> Result<Vec<u32>, Status> {
    match partition {
        Some(p) => replicas_of(topic, p).map(|_| vec![p]),
        None => Ok((0..topic.partitions.len() as u32).collect()),
    }
}

fn replicas_of(topic: &Topic, partition: u32) -> Result<Vec<u64>, Status> {
    topic
        .partitions
        .get(partition as usize)
        .cloned()
        .ok_or_else(|| {
            Status::invalid_argument(format!("topic {} has no partition {partition}", topic.name))
        })
}

fn topic_not_found(name: &TopicName) -> Status {
    Status::not_found(format!("topic {name} does not exist"))
}

/// The records of one publish, in one buffer. Headers are stored sorted,
/// so every replica and every read sees the same bytes whatever order the
/// request's map had.
fn records_to_batch(records: &[pb::Record]) -> Result<RecordBatch, BatchError> {
    let bytes = records
        .iter()
        .map(|r| {
            let headers = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            RecordBatch::encoded_len(&r.key, &r.value, headers)
        })
        .sum();
    let mut builder = RecordBatch::builder_with_capacity(bytes);
    for record in records {
        let mut headers: Vec<(&str, &str)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.sort_unstable();
        builder.push(&record.key, &record.value, headers)?;
    }
    Ok(builder.finish())
}

fn batch_to_pb(partition: u32, batch: ReadBatch) -> pb::ConsumeResponse {
    pb::ConsumeResponse {
        messages: batch
            .messages
            .into_iter()
            .map(|m| pb::Message {
                partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                key: m.key,
                value: m.value,
                headers: m.headers.into_iter().collect(),
                message_id: message_id(partition, m.offset),
            })
            .collect(),
        next_offset: batch.next_offset,
        high_watermark: batch.high_watermark,
        log_start_offset: batch.log_start_offset,
    }
}

/// A read sent to another node that got no answer is unavailable: the
/// client may send it again. Answers the other node sent pass through.
fn unanswered_read(status: Status) -> Status {
    if call_outcome::unanswered(&status) {
        ErrorCode::Unavailable.status(format!(
            "the node holding these messages did not answer: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// A forwarded call cut off mid-way (the node went away, or stopped
/// answering until the keep-alive gave up) may have run there: its outcome
/// is unknown. A refused connection stays UNAVAILABLE; statuses the other
/// node sent pass through unchanged.
fn forward_failure(status: Status) -> Status {
    if call_outcome::cut_off(&status) {
        outcome_unknown(&format!(
            "the node it was forwarded to went away: {}",
            status.message()
        ))
    } else {
        status
    }
}

/// Sends the same request one hop further and returns its answer as ours.
/// `via` names the method that makes the client (`client` by default).
macro_rules! forward {
    ($service:ident, $addr:expr, $method:ident, $message:expr, $hops:expr) => {
        forward!(via client, $service, $addr, $method, $message, $hops)
    };
    (via $client:ident, $service:ident, $addr:expr, $method:ident, $message:expr, $hops:expr) => {
        $service
            .$client(&$addr)?
            .$method($service.forwarded($message, $hops, $service.forward_timeout()))
            .await
            .map_err(forward_failure)
    };
}

/// A read that another replica serves for this one.
struct ReplicaRead<'a> {
    start: &'a StartAt,
    max: usize,
    max_bytes: usize,
}

/// Where a request for a group should go.
enum Route {
    Local(Arc<Group>),
    Forward(String),
}

impl ClientService {
    fn client(&self, addr: &str) -> Result<RaftstreamClient<Channel>, Status> {
        let channel = self
            .node
            .pool
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(RaftstreamClient::new(channel)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES))
    }

    fn forwarded<T>(&self, message: T, hops: Hops, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        self.sign(&mut request);
        request.set_timeout(timeout);
        if let Ok(value) = (hops.count + 1).to_string().parse() {
            request.metadata_mut().insert(HOPS_HEADER, value);
        }
        request
    }

    /// A request asking another node to answer from its own replicas.
    fn local_request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            LOCAL_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        self.sign(&mut request);
        request.set_timeout(timeout);
        request
    }

    fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.node.config.limits.write_timeout_ms + 2_000)
    }

    /// Decides where work for `group_id` (with these replicas) is done. A
    /// node leading the group does it; otherwise the request goes to the
    /// leader this node knows of, or to a replica that will know, and the
    /// caller is told so (see `forwarded`).
    async fn route(&self, group_id: u64, replicas: &[u64], hops: Hops) -> Result<Route, Status> {
        let route = self.choose_route(group_id, replicas, hops).await;
        if let Ok(Route::Forward(_)) = &route {
            note_forwarded();
        }
        route
    }

    async fn choose_route(
        &self,
        group_id: u64,
        replicas: &[u64],
        hops: Hops,
    ) -> Result<Route, Status> {
        let local = self.node.group(group_id);
        if let Some(group) = &local {
            match group.leader() {
                Some((leader, _)) if leader == self.node.id() => {
                    return Ok(Route::Local(group.clone()));
                }
                Some((_, addr)) if hops.can_forward() => return Ok(Route::Forward(addr)),
                Some(_) => {
                    return Err(Status::unavailable(
                        "not the leader and out of forwarding hops; retry",
                    ));
                }
                None => {}
            }
            // No leader known: an election is under way. Wait briefly for
            // one rather than fail at once.
            let wait = group
                .raft
                .wait(Some(Duration::from_secs(3)))
                .metrics(|m| m.current_leader.is_some(), "leader elected")
                .await;
            return match (wait, group.leader()) {
                (Ok(_), Some((leader, _))) if leader == self.node.id() => {
                    Ok(Route::Local(group.clone()))
                }
                (Ok(_), Some((_, addr))) if hops.can_forward() => Ok(Route::Forward(addr)),
                _ => Err(Status::unavailable(format!(
                    "group {group_id} has no leader (no quorum?); retry"
                ))),
            };
        }
        if !hops.can_forward() {
            return Err(Status::unavailable(format!(
                "group {group_id} is not hosted on this node"
            )));
        }
        let replica = replicas
            .iter()
            .find_map(|id| self.node.config.peers.get(id).cloned())
            .ok_or_else(|| {
                Status::unavailable(format!("group {group_id} has no reachable replica"))
            })?;
        Ok(Route::Forward(replica))
    }

    async fn meta_route(&self, hops: Hops) -> Result<Route, Status> {
        let replicas: Vec<u64> = self.node.config.peers.keys().copied().collect();
        self.route(META_GROUP, &replicas, hops).await
    }

    /// Finds a topic in this node's metadata; a topic created a moment ago
    /// through another node may not have reached it yet, so it then asks
    /// the metadata leader for a linearizable read.
    async fn topic(&self, name: &TopicName) -> Result<Topic, Status> {
        if let Some(topic) = self.node.find_topic(name) {
            return Ok(topic);
        }
        if self.node.meta_group().is_none() {
            return Err(Status::unavailable(
                "this node is shutting down; retry another",
            ));
        }
        if let Some(meta) = self.node.meta_group() {
            // Returns once this node has applied up to the leader's commit.
            let linear = meta
                .raft
                .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
            let _ = tokio::time::timeout(Duration::from_secs(2), linear).await;
        }
        self.node
            .find_topic(name)
            .ok_or_else(|| topic_not_found(name))
    }

    /// Does `local` on this node when it leads `group_id`, else `forward`s
    /// towards the leader. A local proposal refused because leadership just
    /// moved was never appended, so it is routed again (at most three times).
    async fn on_leader<'a, T>(
        &'a self,
        group_id: u64,
        replicas: &[u64],
        hops: Hops,
        local: impl Fn(Arc<Group>) -> BoxFuture<'a, Result<T, WriteError>>,
        forward: impl Fn(String) -> BoxFuture<'a, Result<T, Status>>,
    ) -> Result<T, Status> {
        let mut waited_out_dead_leader = false;
        for _ in 0..3 {
            let group = match self.route(group_id, replicas, hops).await? {
                Route::Local(group) => group,
                Route::Forward(addr) => {
                    let answer = forward(addr).await;
                    match (&answer, self.node.group(group_id)) {
                        (Err(status), Some(group))
                            if call_outcome::never_sent(status) && !waited_out_dead_leader =>
                        {
                            // The leader this replica follows is gone (it
                            // crashed or is cut off). Hold the request for
                            // the election that replaces it rather than send
                            // the client away to poll: failover then costs
                            // the client one election, not its backoff too.
                            waited_out_dead_leader = true;
                            self.await_new_leader(&group).await;
                            continue;
                        }
                        _ => return answer,
                    }
                }
            };
            match local(group.clone()).await {
                Err(WriteError::NotLeader { .. }) => {
                    // Either leadership moved, or this node leads but has no
                    // lease yet (just elected): wait for whichever it is.
                    let me = self.node.id();
                    let refused_at = std::time::Instant::now();
                    let _ = group
                        .raft
                        .wait(Some(Duration::from_secs(2)))
                        .metrics(
                            |m| match m.current_leader {
                                Some(leader) if leader != me => true,
                                Some(_) => {
                                    m.state == openraft::ServerState::Leader
                                        && quorum_acked_since(m, refused_at)
                                }
                                None => false,
                            },
                            "a leader that accepts writes",
                        )
                        .await;
                }
                other => return other.map_err(write_status),
            }
        }
        Err(Status::unavailable("leadership kept moving; retry"))
    }

    /// Waits, up to two maximal election timeouts, until `group` follows
    /// a leader other than the one it follows now.
    async fn await_new_leader(&self, group: &Group) {
        let gone = group.leader().map(|(id, _)| id);
        let bound = Duration::from_millis(2 * self.node.config.raft.election_timeout_max_ms);
        let _ = group
            .raft
            .wait(Some(bound))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != gone,
                "a new leader",
            )
            .await;
    }

    async fn on_meta_leader<'a, T>(
        &'a self,
        hops: Hops,
        local: impl Fn(Arc<Group>) -> BoxFuture<'a, Result<T, WriteError>>,
        forward: impl Fn(String) -> BoxFuture<'a, Result<T, Status>>,
    ) -> Result<T, Status> {
        let replicas: Vec<u64> = self.node.config.peers.keys().copied().collect();
        self.on_leader(META_GROUP, &replicas, hops, local, forward)
            .await
    }

    async fn publish_to_partition(
        &self,
        topic: &Topic,
        partition: u32,
        records: Vec<pb::Record>,
        producer: Option<pb::ProducerBatch>,
        hops: Hops,
    ) -> Result<Vec<pb::PublishResult>, Status> {
        let replicas = replicas_of(topic, partition)?;
        let count = records.len() as u64;
        let records = &records;
        // Built on the leader only: a forwarded publish travels as the
        // request's records.
        let batch = std::sync::OnceLock::new();
        let batch = &batch;
        let local = |group: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let records = batch
                    .get_or_init(|| records_to_batch(records))
                    .clone()
                    .map_err(|e| WriteError::Rejected(MetaRejection::Invalid(e.to_string())))?;
                let command = PartitionCommand::Append {
                    timestamp_ms: self.node.time.now_ms(),
                    records,
                    producer: producer.map(|p| (p.producer_id, p.base_sequence)),
                };
                match self.node.write_partition(&group, command).await? {
                    CommandResponse::Appended {
                        base_offset,
                        timestamp_ms,
                    } => Ok((0..count)
                        .map(|i| pb::PublishResult {
                            result: Some(pb::publish_result::Result::Ok(pb::PublishResponse {
                                partition,
                                offset: base_offset + i,
                                timestamp_ms,
                                message_id: message_id(partition, base_offset + i),
                            })),
                        })
                        .collect()),
                    CommandResponse::OutOfSequence { expected } => {
                        let base = producer.map_or(0, |p| p.base_sequence);
                        // Below the expected sequence: an old retry the
                        // partition already appended (beyond the window of
                        // batches it can answer with offsets).
                        let (code, message) = if base < expected {
                            (
                                ErrorCode::DuplicateSequence,
                                format!(
                                    "sequence {base} was already appended; the next is {expected}"
                                ),
                            )
                        } else {
                            (
                                ErrorCode::OutOfSequence,
                                format!("sequence {base} skips ahead; the next must be {expected}"),
                            )
                        };
                        let error = pb::Error {
                            code: code.as_str().into(),
                            message,
                        };
                        Ok((0..count)
                            .map(|_| pb::PublishResult {
                                result: Some(pb::publish_result::Result::Error(error.clone())),
                            })
                            .collect())
                    }
                    other => Err(WriteError::Unavailable(format!(
                        "unexpected append response {other:?}"
                    ))),
                }
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                self.forward_publish(&addr, topic, partition, records, producer, hops)
                    .await
            })
        };
        self.on_leader(topic.group_id(partition), &replicas, hops, local, forward)
            .await
    }

    async fn forward_publish(
        &self,
        addr: &str,
        topic: &Topic,
        partition: u32,
        records: &[pb::Record],
        producer: Option<pb::ProducerBatch>,
        hops: Hops,
    ) -> Result<Vec<pb::PublishResult>, Status> {
        // Keys and values are `Bytes`: cloning a record shares them.
        let records = records
            .iter()
            .map(|r| pb::Record {
                partition: Some(partition),
                ..r.clone()
            })
            .collect();
        let request = pb::PublishBatchRequest {
            topic: topic_ref(topic),
            records,
            producer,
        };
        let response = forward!(self, addr, publish_batch, request, hops)?;
        Ok(response.into_inner().results)
    }

    async fn publish_records(
        &self,
        caller: &Caller,
        name: &TopicName,
        records: Vec<pb::Record>,
        producer: Option<pb::ProducerBatch>,
        hops: Hops,
        schema_check: SchemaCheck,
    ) -> Result<Vec<pb::PublishResult>, Status> {
        let topic = self.topic(name).await?;
        caller.check_topic(Scope::Publish, &topic)?;
        if schema_check == SchemaCheck::Here {
            // Before anything is appended: one refused record refuses the
            // whole call, so a client never has to find out which of its
            // records were stored.
            self.check_schema(&topic, records.iter().map(|r| r.value.clone()))
                .await?;
        }
        if producer.is_some() {
            let first = records.first().and_then(|r| r.partition);
            if first.is_none() || records.iter().any(|r| r.partition != first) {
                return Err(Status::invalid_argument(
                    "an idempotent batch must name one partition on every record",
                ));
            }
        }
        let limits = &self.node.config.limits;
        let mut results: Vec<Option<pb::PublishResult>> = vec![None; records.len()];
        // Records grouped by partition, remembering their request positions.
        let mut by_partition: BTreeMap<u32, Vec<(usize, pb::Record)>> = BTreeMap::new();
        let mut total_bytes = 0usize;
        for (i, record) in records.into_iter().enumerate() {
            let size = record.key.len()
                + record.value.len()
                + record
                    .headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            let refused = |code: ErrorCode, message: String| {
                Some(pb::PublishResult {
                    result: Some(pb::publish_result::Result::Error(pb::Error {
                        code: code.as_str().into(),
                        message,
                    })),
                })
            };
            if size > limits.max_message_bytes {
                results[i] = refused(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "message is {size} bytes; the limit is {}",
                        limits.max_message_bytes
                    ),
                );
                continue;
            }
            match self
                .node
                .choose_partition(&topic, record.partition, &record.key)
            {
                Ok(p) => {
                    total_bytes += size;
                    by_partition.entry(p).or_default().push((i, record));
                }
                Err(message) => results[i] = refused(ErrorCode::UnknownPartition, message),
            }
        }
        // An idempotent batch is appended whole or not at all, or its
        // sequence numbers would no longer match the records stored.
        if producer.is_some() && results.iter().any(Option::is_some) {
            let refusal = pb::Error {
                code: ErrorCode::BatchRefused.as_str().into(),
                message: "another record of this idempotent batch was refused".into(),
            };
            return Ok(results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| pb::PublishResult {
                        result: Some(pb::publish_result::Result::Error(refusal.clone())),
                    })
                })
                .collect());
        }
        if total_bytes > limits.max_batch_bytes {
            return Err(Status::invalid_argument(format!(
                "batch is {total_bytes} bytes; the limit is {}",
                limits.max_batch_bytes
            )));
        }
        let publishes = by_partition.into_iter().map(|(partition, items)| {
            let topic = &topic;
            async move {
                let (positions, records): (Vec<usize>, Vec<pb::Record>) = items.into_iter().unzip();
                let outcome = self
                    .publish_to_partition(topic, partition, records, producer, hops)
                    .await;
                (positions, outcome)
            }
        });
        for (positions, outcome) in futures::future::join_all(publishes).await {
            match outcome {
                Ok(partition_results) => {
                    for (position, result) in positions.into_iter().zip(partition_results) {
                        results[position] = Some(result);
                    }
                }
                Err(status) => {
                    let error = record_error(&status);
                    for position in positions {
                        results[position] = Some(pb::PublishResult {
                            result: Some(pb::publish_result::Result::Error(error.clone())),
                        });
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| pb::PublishResult {
                    result: Some(pb::publish_result::Result::Error(pb::Error {
                        code: ErrorCode::Failed.as_str().into(),
                        message: "no result".into(),
                    })),
                })
            })
            .collect())
    }

    async fn consume_inner(
        &self,
        caller: &Caller,
        request: pb::ConsumeRequest,
        hops: Hops,
    ) -> Result<pb::ConsumeResponse, Status> {
        let name = topic_name(request.topic.as_ref())?;
        let topic = self.topic(&name).await?;
        caller.check_topic(Scope::Consume, &topic)?;
        let mut partition = request.partition;
        let start = match request.position.and_then(|p| p.position) {
            None => StartAt::Earliest,
            Some(pb::position::Position::Offset(o)) => StartAt::Offset(o),
            Some(pb::position::Position::SinceTimestampMs(ts)) => StartAt::Timestamp(ts),
            Some(pb::position::Position::Earliest(_)) => StartAt::Earliest,
            Some(pb::position::Position::Latest(_)) => StartAt::Latest,
            Some(pb::position::Position::AfterMessageId(id)) => {
                let (p, offset) = parse_message_id(&id).ok_or_else(|| {
                    Status::invalid_argument(format!("{id:?} is not a message id"))
                })?;
                partition = p;
                StartAt::After(offset)
            }
        };
        let replicas = replicas_of(&topic, partition)?;
        let max = match request.max_messages {
            0 => DEFAULT_MAX_MESSAGES,
            n => n.min(MAX_MESSAGES),
        } as usize;
        if request.wait_ms > MAX_WAIT_MS {
            return Err(Status::invalid_argument(format!(
                "wait_ms is at most {MAX_WAIT_MS}"
            )));
        }
        let read_limit = self.node.config.limits.max_read_bytes;
        let max_bytes = match request.max_bytes {
            0 => read_limit,
            n => (n as usize).min(read_limit),
        };
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let group_id = topic.group_id(partition);
        let group = match self.route(group_id, &replicas, hops).await {
            Ok(Route::Local(group)) => group,
            Ok(Route::Forward(addr)) => {
                let forwarded = pb::ConsumeRequest {
                    topic: topic_ref(&topic),
                    partition,
                    position: Some(pb::Position {
                        position: Some(start_to_pb(&start, partition)),
                    }),
                    max_messages: max as u32,
                    wait_ms: request.wait_ms,
                    max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
                };
                let timeout = wait + self.forward_timeout();
                match self
                    .client(&addr)?
                    .consume(self.forwarded(forwarded, hops, timeout))
                    .await
                {
                    Ok(response) => return Ok(response.into_inner()),
                    // The leader is unreachable: a local replica still holds
                    // every message committed up to its applied index.
                    Err(status) => {
                        let status = unanswered_read(status);
                        match self.node.group(group_id) {
                            Some(group) if status.code() == tonic::Code::Unavailable => group,
                            _ => return Err(status),
                        }
                    }
                }
            }
            Err(status) => match self.node.group(group_id) {
                Some(group) => group,
                None => return Err(status),
            },
        };
        let stop = self.node.shutdown_signal();
        match read_or_wait(&group, &start, max, max_bytes, wait, stop).await {
            Ok(batch) => Ok(batch_to_pb(partition, batch)),
            Err(ReadError::NotLocal { .. }) if !hops.local_only => {
                let read = ReplicaRead {
                    start: &start,
                    max,
                    max_bytes,
                };
                self.consume_from_other_replica(&topic, partition, &replicas, read)
                    .await
            }
            Err(e) => Err(read_status(e)),
        }
    }

    /// Serves a read this replica cannot (it caught up from a snapshot past
    /// the messages) from another replica's log.
    async fn consume_from_other_replica(
        &self,
        topic: &Topic,
        partition: u32,
        replicas: &[u64],
        read: ReplicaRead<'_>,
    ) -> Result<pb::ConsumeResponse, Status> {
        let ReplicaRead {
            start,
            max,
            max_bytes,
        } = read;
        let mut last = Status::unavailable("no replica holds these messages");
        for replica in replicas.iter().filter(|id| **id != self.node.id()) {
            let Some(addr) = self.node.config.peers.get(replica) else {
                continue;
            };
            let message = pb::ConsumeRequest {
                topic: topic_ref(topic),
                partition,
                position: Some(pb::Position {
                    position: Some(start_to_pb(start, partition)),
                }),
                max_messages: max as u32,
                wait_ms: 0,
                max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
            };
            let request = self.local_request(message, self.forward_timeout());
            match self.client(addr)?.consume(request).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => last = unanswered_read(status),
            }
        }
        Err(last)
    }
}

fn start_to_pb(start: &StartAt, partition: u32) -> pb::position::Position {
    match start {
        StartAt::Offset(o) => pb::position::Position::Offset(*o),
        StartAt::After(o) => pb::position::Position::AfterMessageId(message_id(partition, *o)),
        StartAt::Timestamp(ts) => pb::position::Position::SinceTimestampMs(*ts),
        StartAt::Earliest => pb::position::Position::Earliest(true),
        StartAt::Latest => pb::position::Position::Latest(true),
    }
}

fn first_error(results: &[pb::PublishResult]) -> Option<&pb::Error> {
    results.iter().find_map(|r| match &r.result {
        Some(pb::publish_result::Result::Error(e)) => Some(e),
        _ => None,
    })
}

/// A schema refusal as a status. Its codes are those the HTTP gateway has
/// always answered a delivery's schema refusal with (`invalid_request`,
/// `conflict`), not the gateway's own `schema_mismatch` and
/// `invalid_topic_schema`, so HTTP answers stay as they were.
fn schema_status(e: SchemaError) -> Status {
    match e {
        SchemaError::NotJson { .. } | SchemaError::Mismatch { .. } => {
            ErrorCode::InvalidRequest.status(e.to_string())
        }
        // FAILED_PRECONDITION, as before, for clients that read the gRPC
        // code.
        SchemaError::StoredSchema { .. } => {
            ErrorCode::Conflict.tag(Status::failed_precondition(e.to_string()))
        }
        SchemaError::Interrupted(_) => ErrorCode::Internal.status(e.to_string()),
    }
}

/// The error each record of a partition's failed publish gets. Only the
/// outcomes a producer acts on keep their code; any other is `failed`.
/// The code says the outcome, so the message drops the words that say it
/// again.
fn record_error(status: &Status) -> pb::Error {
    let code = match ErrorCode::of_status(status) {
        code @ (ErrorCode::OutcomeUnknown
        | ErrorCode::Unavailable
        | ErrorCode::InsufficientStorage) => code,
        _ => ErrorCode::Failed,
    };
    let message = status.message();
    let message = match code {
        ErrorCode::OutcomeUnknown => message
            .strip_prefix(OUTCOME_UNKNOWN_PREFIX)
            .unwrap_or(message),
        _ => message,
    };
    pb::Error {
        code: code.as_str().into(),
        message: message.to_string(),
    }
}

/// The status of a single publish whose record got `e`: the code of the
/// call, with the record's own code leading the message.
fn error_status(e: &pb::Error) -> Status {
    let message = format!("{}: {}", e.code, e.message);
    let code = match ErrorCode::parse(&e.code) {
        Some(ErrorCode::MessageTooLarge | ErrorCode::UnknownPartition) => ErrorCode::InvalidRequest,
        Some(
            code @ (ErrorCode::OutcomeUnknown
            | ErrorCode::Unavailable
            | ErrorCode::InsufficientStorage),
        ) => code,
        _ => ErrorCode::Internal,
    };
    code.status(message)
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl Raftstream for ClientService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Publish)).await?;
        let hops = Hops::of(&request);
        let schema_check = self.schema_check(&request);
        let request = request.into_inner();
        let name = topic_name(request.topic.as_ref())?;
        let record = request
            .record
            .ok_or_else(|| Status::invalid_argument("record is required"))?;
        let results = self
            .publish_records(&caller, &name, vec![record], None, hops, schema_check)
            .await?;
        if let Some(e) = first_error(&results) {
            return Err(error_status(e));
        }
        match results.into_iter().next().and_then(|r| r.result) {
            Some(pb::publish_result::Result::Ok(ok)) => Ok(Response::new(ok)),
            _ => Err(Status::internal("publish produced no result")),
        }
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Publish)).await?;
        let hops = Hops::of(&request);
        let schema_check = self.schema_check(&request);
        let request = request.into_inner();
        let name = topic_name(request.topic.as_ref())?;
        if request.records.is_empty() {
            return Err(Status::invalid_argument("records must not be empty"));
        }
        let (records, producer) = (request.records, request.producer);
        let results = self
            .publish_records(&caller, &name, records, producer, hops, schema_check)
            .await?;
        Ok(Response::new(pb::PublishBatchResponse { results }))
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Consume)).await?;
        let hops = Hops::of(&request);
        // The gateway takes one slot for a whole HTTP long poll, which waits
        // on every partition at once.
        let _slot = (request.get_ref().wait_ms > 0 && self.trust != Trust::InProcess)
            .then(|| self.node.read_slots.long_poll())
            .transpose()
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        let request = request.into_inner();
        if request.wait_ms == 0 {
            return Ok(Response::new(
                self.consume_inner(&caller, request, hops).await?,
            ));
        }
        // A parked long poll ends as soon as its token is revoked, and what
        // it woke with is handed over only if the token still allows it.
        let topic_id = topic_name(request.topic.as_ref())
            .ok()
            .and_then(|name| self.node.find_topic(&name))
            .map(|topic| topic.id);
        let response = tokio::select! {
            response = self.consume_inner(&caller, request, hops) => response?,
            status = caller.access_lost(&self.node, Scope::Consume, topic_id) => return Err(status),
        };
        caller.refreshed(&self.node, Scope::Consume, topic_id)?;
        Ok(Response::new(response))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        let caller = self.authorize(&request, Some(Scope::Consume)).await?;
        let slot = self
            .node
            .read_slots
            .subscription()
            .map_err(|full| Status::resource_exhausted(full.to_string()))?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        // The stream reads its topic by id: renamed, it is still the topic
        // the stream was opened on, and a new topic taking the old name is
        // not. The caller's token is checked against this id while it runs.
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        let (topic_id, topic_by_id) = (topic.id, topic_ref(&topic));
        // Validate the topic and position now, so a bad request fails the
        // call itself rather than the first stream item.
        let first = self
            .consume_inner(
                &caller,
                pb::ConsumeRequest {
                    topic: topic_by_id.clone(),
                    partition: request.partition,
                    position: request.position.clone(),
                    max_messages: DEFAULT_MAX_MESSAGES,
                    wait_ms: 0,
                    max_bytes: 0,
                },
                hops,
            )
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Message, Status>>(
            DEFAULT_MAX_MESSAGES as usize,
        );
        let service = self.clone();
        let mut shutdown = self.node.shutdown_signal();
        tokio::spawn(async move {
            // Held for as long as the stream is open.
            let _slot = slot;
            let mut batch = first;
            let mut caller = caller;
            loop {
                let partition = batch
                    .messages
                    .first()
                    .map_or(request.partition, |m| m.partition);
                for message in batch.messages {
                    if tx.send(Ok(message)).await.is_err() {
                        return; // The subscriber went away.
                    }
                }
                // Checked before every read, as well as while one waits
                // (below), so a busy stream ends on revocation too.
                caller = match caller.refreshed(&service.node, Scope::Consume, Some(topic_id)) {
                    Ok(caller) => caller,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let next = pb::ConsumeRequest {
                    topic: topic_by_id.clone(),
                    partition,
                    position: Some(pb::Position {
                        position: Some(pb::position::Position::Offset(batch.next_offset)),
                    }),
                    max_messages: DEFAULT_MAX_MESSAGES,
                    wait_ms: 30_000,
                    max_bytes: 0,
                };
                batch = tokio::select! {
                    result = service.consume_inner(&caller, next, hops) => match result {
                        Ok(batch) => batch,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    status = caller.access_lost(&service.node, Scope::Consume, Some(topic_id)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    // A node shutting down ends its streams rather than
                    // holding the server open until a long poll expires.
                    _ = shutdown.changed() => return,
                };
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn commit_offset(
        &self,
        request: Request<pb::CommitOffsetRequest>,
    ) -> Result<Response<pb::CommitOffsetResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Consume)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        if request.group.is_empty() {
            return Err(Status::invalid_argument("group must not be empty"));
        }
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        caller.check_topic(Scope::Consume, &topic)?;
        let replicas = replicas_of(&topic, request.partition)?;
        let request = &request;
        let local = |group: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let command = PartitionCommand::CommitOffset {
                    group: request.group.clone(),
                    offset: request.offset,
                    writer: (request.writer_id != 0).then_some(CommitWriter {
                        id: request.writer_id,
                        seq: request.writer_seq,
                    }),
                };
                self.node
                    .write_partition(&group, command)
                    .await
                    .map(|_| pb::CommitOffsetResponse {})
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                Ok(forward!(self, addr, commit_offset, request.clone(), hops)?.into_inner())
            })
        };
        let response = self
            .on_leader(
                topic.group_id(request.partition),
                &replicas,
                hops,
                local,
                forward,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn get_committed_offsets(
        &self,
        request: Request<pb::GetCommittedOffsetsRequest>,
    ) -> Result<Response<pb::GetCommittedOffsetsResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Consume)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        caller.check_topic(Scope::Consume, &topic)?;
        let partitions = selected_partitions(&topic, request.partition)?;
        let mut offsets = Vec::new();
        for partition in partitions {
            let replicas = &topic.partitions[partition as usize];
            match self
                .route(topic.group_id(partition), replicas, hops)
                .await?
            {
                Route::Forward(addr) => {
                    let one = pb::GetCommittedOffsetsRequest {
                        topic: topic_ref(&topic),
                        group: request.group.clone(),
                        partition: Some(partition),
                    };
                    offsets.extend(
                        forward!(self, addr, get_committed_offsets, one, hops)?
                            .into_inner()
                            .offsets,
                    );
                }
                Route::Local(group) => {
                    // Just after an election or a restart a leader's applied state can lag
                    // what is committed: confirm leadership and catch up first, or a read
                    // could return an offset older than one already committed.
                    let linear = group
                        .raft
                        .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
                    match tokio::time::timeout(self.forward_timeout(), linear).await {
                        Ok(Ok(_)) => {}
                        _ => return Err(Status::unavailable("leadership unconfirmed; retry")),
                    }
                    let offset = group.state.read(|inner| match &inner.data {
                        GroupData::Partition(p) => {
                            p.consumer_offsets.get(&request.group).map(|o| o.offset)
                        }
                        GroupData::Meta(_) => None,
                    });
                    if let Some(offset) = offset {
                        offsets.push(pb::PartitionOffset { partition, offset });
                    }
                }
            }
        }
        Ok(Response::new(pb::GetCommittedOffsetsResponse { offsets }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Consume)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        caller.check_topic(Scope::Consume, &topic)?;
        let partitions = selected_partitions(&topic, request.partition)?;
        let mut groups = std::collections::BTreeSet::new();
        for partition in partitions {
            let replicas = replicas_of(&topic, partition)?;
            match self
                .route(topic.group_id(partition), &replicas, hops)
                .await?
            {
                Route::Forward(addr) => {
                    let one = pb::ListGroupsRequest {
                        topic: topic_ref(&topic),
                        partition: Some(partition),
                    };
                    groups.extend(
                        forward!(self, addr, list_groups, one, hops)?
                            .into_inner()
                            .groups,
                    );
                }
                Route::Local(group) => group.state.read(|inner| {
                    if let GroupData::Partition(p) = &inner.data {
                        groups.extend(p.consumer_offsets.keys().cloned());
                    }
                }),
            }
        }
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.into_iter().collect(),
        }))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        let spec = TopicSpec {
            name: request.name.clone(),
            description: request.description.clone(),
            partitions: request.partitions.max(1),
            replication_factor: request.replication_factor,
            schema: request.schema.clone(),
            retention: retention_from_pb(request.retention.as_ref()),
        };
        validate_spec(&spec, self.node.config.peers.len())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(schema) = &spec.schema {
            self.check_schema_document(schema).await?;
        }
        let (spec, request) = (&spec, &request);
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let command = MetaCommand::CreateTopic {
                    spec: spec.clone(),
                    now_ms: self.node.time.now_ms(),
                };
                self.node
                    .write_meta(command)
                    .await
                    .map(|topic| topic_to_pb(&topic))
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                Ok(forward!(self, addr, create_topic, request.clone(), hops)?.into_inner())
            })
        };
        let topic = self.on_meta_leader(hops, local, forward).await?;
        self.node
            .await_topic_applied(topic.id, Some(topic.version))
            .await;
        Ok(Response::new(topic))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        // The metadata leader has applied every topic change it answered,
        // so reading there sees every acknowledged create, update and delete.
        let _caller = self.authorize(&request, None).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        if let Route::Forward(addr) = self.meta_route(hops).await? {
            return forward!(self, addr, list_topics, request, hops);
        }
        let topics = self
            .node
            .metadata()
            .topics
            .values()
            .filter(|t| request.name.as_ref().is_none_or(|n| &t.name == n))
            .map(topic_to_pb)
            .collect();
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn get_topic(
        &self,
        request: Request<pb::TopicRef>,
    ) -> Result<Response<pb::Topic>, Status> {
        let _caller = self.authorize(&request, None).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        if let Route::Forward(addr) = self.meta_route(hops).await? {
            return forward!(self, addr, get_topic, request, hops);
        }
        let name = topic_name(Some(&request))?;
        let topic = self
            .node
            .find_topic(&name)
            .ok_or_else(|| topic_not_found(&name))?;
        Ok(Response::new(topic_to_pb(&topic)))
    }

    async fn update_topic(
        &self,
        request: Request<pb::UpdateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        let update = TopicUpdate {
            name: request.name.clone(),
            description: request.description.clone(),
            schema: request.schema.clone().map(|s| (!s.is_empty()).then_some(s)),
            retention: request
                .retention
                .as_ref()
                .map(|r| retention_from_pb(Some(r))),
        };
        if let Some(Some(schema)) = &update.schema {
            self.check_schema_document(schema).await?;
        }
        let (update, request, topic_id) = (&update, &request, topic.id);
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let command = MetaCommand::UpdateTopic {
                    topic_id,
                    update: update.clone(),
                    now_ms: self.node.time.now_ms(),
                };
                self.node
                    .write_meta(command)
                    .await
                    .map(|topic| topic_to_pb(&topic))
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                Ok(forward!(self, addr, update_topic, request.clone(), hops)?.into_inner())
            })
        };
        let topic = self.on_meta_leader(hops, local, forward).await?;
        self.node
            .await_topic_applied(topic.id, Some(topic.version))
            .await;
        Ok(Response::new(topic))
    }

    async fn purge_topic(
        &self,
        request: Request<pb::PurgeTopicRequest>,
    ) -> Result<Response<pb::PurgeTopicResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        let topic = self.topic(&topic_name(request.topic.as_ref())?).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        let partitions = selected_partitions(&topic, request.partition)?;
        let topic = &topic;
        // Partitions are independent groups: purge them all at once.
        let purges = partitions.into_iter().map(|partition| async move {
            let replicas = replicas_of(topic, partition)?;
            let local = |group: Arc<Group>| -> BoxFuture<'_, _> {
                Box::pin(async move {
                    self.node
                        .write_partition(&group, PartitionCommand::PurgeAll)
                        .await
                        .map(|_| ())
                })
            };
            let forward = |addr: String| -> BoxFuture<'_, _> {
                Box::pin(async move {
                    let one = pb::PurgeTopicRequest {
                        topic: topic_ref(topic),
                        partition: Some(partition),
                    };
                    forward!(self, addr, purge_topic, one, hops).map(|_| ())
                })
            };
            self.on_leader(topic.group_id(partition), &replicas, hops, local, forward)
                .await
        });
        for outcome in futures::future::join_all(purges).await {
            outcome?;
        }
        Ok(Response::new(pb::PurgeTopicResponse {}))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::TopicRef>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        let topic = self.topic(&topic_name(Some(&request))?).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        let (request, topic_id) = (&request, topic.id);
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                self.node
                    .write_meta(MetaCommand::DeleteTopic { topic_id })
                    .await
                    .map(|_| pb::DeleteTopicResponse {})
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                Ok(forward!(self, addr, delete_topic, request.clone(), hops)?.into_inner())
            })
        };
        let deleted = self.on_meta_leader(hops, local, forward).await?;
        self.node.await_topic_applied(topic_id, None).await;
        Ok(Response::new(deleted))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        let scopes = request
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown scope {s:?}: use publish, consume or admin"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        crate::state_machine::meta::validate_token(&request.name, &scopes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (scopes, request_ref) = (&scopes, &request);
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                // Resolved here, on the metadata leader, which has applied
                // every topic change it acknowledged; apply checks the ids
                // again in case a topic is deleted meanwhile.
                let topic_ids = self
                    .node
                    .with_metadata(|m| crate::auth::resolve_token_topics(m, &request_ref.topics))
                    .ok_or_else(|| {
                        WriteError::Unavailable("this node is shutting down; retry another".into())
                    })?
                    .map_err(WriteError::Rejected)?;
                let secret = crate::auth::generate_secret();
                let command = MetaCommand::CreateTokenWithTopicIds {
                    name: request_ref.name.clone(),
                    scopes: scopes.clone(),
                    topic_ids,
                    hash: crate::auth::hash_secret(&secret),
                    now_ms: self.node.time.now_ms(),
                };
                let token = self.node.write_token(command).await?;
                let info = self
                    .node
                    .with_metadata(|m| token_to_pb(&token, m))
                    .unwrap_or_else(|| token_to_pb(&token, &MetaState::default()));
                Ok(pb::CreateTokenResponse {
                    token: Some(info),
                    secret,
                })
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                Ok(forward!(self, addr, create_token, request_ref.clone(), hops)?.into_inner())
            })
        };
        Ok(Response::new(
            self.on_meta_leader(hops, local, forward).await?,
        ))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        if let Route::Forward(addr) = self.meta_route(hops).await? {
            return forward!(self, addr, list_tokens, request, hops);
        }
        let tokens = self
            .node
            .with_metadata(|m| m.tokens.values().map(|t| token_to_pb(t, m)).collect())
            .unwrap_or_default();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = Hops::of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        let id = request.id;
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                self.node
                    .write_token(MetaCommand::DeleteToken { id })
                    .await
                    .map(|_| pb::DeleteTokenResponse {})
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(
                async move { Ok(forward!(self, addr, delete_token, request, hops)?.into_inner()) },
            )
        };
        Ok(Response::new(
            self.on_meta_leader(hops, local, forward).await?,
        ))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        self.authorize(&request, None).await?;
        let local = self.local_status();
        if Hops::of(&request).local_only {
            return Ok(Response::new(local));
        }
        // Ask every other node for its own groups and keep, for each group,
        // the view of its leader (or of any replica while it has none).
        let peers: Vec<(u64, String)> = self
            .node
            .config
            .peers
            .iter()
            .filter(|(id, _)| **id != self.node.id())
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        let asks = peers.iter().map(|(id, addr)| async move {
            let request = self.local_request(pb::ClusterStatusRequest {}, Duration::from_secs(2));
            let answer = match self.client(addr) {
                Ok(mut client) => client
                    .cluster_status(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner()),
                Err(_) => None,
            };
            (*id, answer)
        });
        let answers = futures::future::join_all(asks).await;
        let mut groups: BTreeMap<u64, (bool, pb::GroupStatus)> = BTreeMap::new();
        let mut reachable: HashMap<u64, bool> = HashMap::new();
        reachable.insert(self.node.id(), true);
        let mut merge = |node_id: u64, status: pb::ClusterStatusResponse| {
            for group in status.groups {
                let from_leader = group.leader == Some(node_id);
                let keep = match groups.get(&group.group_id) {
                    None => true,
                    Some((had_leader, _)) => from_leader && !had_leader,
                };
                if keep {
                    groups.insert(group.group_id, (from_leader, group));
                }
            }
        };
        merge(self.node.id(), local.clone());
        for (id, answer) in answers {
            reachable.insert(id, answer.is_some());
            if let Some(mut status) = answer {
                if let Some(own) = status.nodes.iter().find(|n| n.id == id) {
                    self.node
                        .client_addrs
                        .write()
                        .insert(id, own.grpc_addr.clone());
                }
                status.nodes.clear();
                merge(id, status);
            }
        }
        // A node never reached since this one started has no known public
        // address; clients cannot use it until it answers.
        let client_addrs = self.node.client_addrs.read().clone();
        let nodes = self
            .node
            .config
            .peers
            .keys()
            .filter_map(|id| {
                Some(pb::NodeStatus {
                    id: *id,
                    grpc_addr: client_addrs.get(id)?.clone(),
                    reachable: reachable.get(id).copied().unwrap_or(false),
                })
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusResponse {
            node_id: self.node.id(),
            nodes,
            groups: groups.into_values().map(|(_, g)| g).collect(),
        }))
    }
}

impl ClientService {
    /// The status of the groups hosted on this node, from their metrics.
    fn local_status(&self) -> pb::ClusterStatusResponse {
        let meta = self.node.metadata();
        let names: HashMap<u64, (String, u32)> = meta
            .topics
            .values()
            .flat_map(|t| {
                (0..t.partitions.len() as u32).map(move |p| (t.group_id(p), (t.name.clone(), p)))
            })
            .collect();
        let quiescer = self.node.quiescer();
        let groups = self
            .node
            .groups()
            .into_iter()
            .map(|group| {
                let m = group.raft.metrics().borrow_watched().clone();
                let (topic, partition) = names.get(&group.id).cloned().unwrap_or_default();
                let last_log_index = m.last_log_index.unwrap_or(0);
                let replica_lag = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, matched)| {
                                (
                                    *id,
                                    last_log_index
                                        .saturating_sub(matched.as_ref().map_or(0, |l| l.index)),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let (high_watermark, log_start_offset) =
                    group.state.read(|inner| match &inner.data {
                        GroupData::Partition(p) => (p.next_offset, p.log_start_offset),
                        GroupData::Meta(_) => (0, 0),
                    });
                pb::GroupStatus {
                    group_id: group.id,
                    topic,
                    partition,
                    leader: m.current_leader,
                    term: m.current_term,
                    commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
                    applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
                    last_log_index,
                    replicas: m.membership_config.membership().voter_ids().collect(),
                    replica_lag,
                    high_watermark,
                    log_start_offset,
                    quiesced: quiescer.is_some_and(|q| q.is_quiet(group.id)),
                }
            })
            .collect();
        pb::ClusterStatusResponse {
            node_id: self.node.id(),
            nodes: vec![pb::NodeStatus {
                id: self.node.id(),
                grpc_addr: self.node.config.grpc_addr.to_string(),
                reachable: true,
            }],
            groups,
        }
    }
}

mod ingest;

#[cfg(test)]
mod tests {
    use super::*;

    /// What tonic makes of a connection the other node's h2 closed with
    /// GOAWAY(ENHANCE_YOUR_CALM): RESOURCE_EXHAUSTED, carrying the transport
    /// error as its source.
    fn connection_closed_mid_call() -> Status {
        let mut status = Status::resource_exhausted("h2 protocol error: http2 error");
        status.set_source(std::sync::Arc::new(std::io::Error::other("GOAWAY")));
        status
    }

    #[test]
    fn a_read_without_an_answer_is_unavailable() {
        let status = unanswered_read(connection_closed_mid_call());
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("http2 error"), "{status:?}");
    }

    #[test]
    fn an_answer_to_a_read_passes_through() {
        for sent in [
            Status::resource_exhausted("the node is out of memory"),
            Status::not_found("no such topic"),
        ] {
            let code = sent.code();
            assert_eq!(unanswered_read(sent).code(), code);
        }
    }

    #[test]
    fn a_forward_cut_off_mid_call_has_an_unknown_outcome() {
        let status = forward_failure(connection_closed_mid_call());
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(
            status.message().starts_with("outcome unknown"),
            "{status:?}"
        );
    }

    #[test]
    fn a_forward_that_never_connected_stays_unavailable() {
        // What tonic builds when it cannot connect: UNAVAILABLE, with a
        // ConnectError in the source chain.
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(forward_failure(refused).code(), tonic::Code::Unavailable);
        let answered = Status::unavailable("no leader yet");
        assert_eq!(forward_failure(answered).code(), tonic::Code::Unavailable);
    }

    /// A write whose outcome is unknown, told to the publisher: the code
    /// says it, and no message says it again (it once read
    /// "outcome_unknown: outcome unknown: ...").
    #[test]
    fn an_unknown_outcome_is_named_once() {
        let unknown = write_status(WriteError::Unknown("the leader changed".into()));
        assert_eq!(unknown.message(), "outcome unknown: the leader changed");
        let record = record_error(&unknown);
        assert_eq!(
            (record.code.as_str(), record.message.as_str()),
            ("outcome_unknown", "the leader changed")
        );
        let single = error_status(&record);
        assert_eq!(single.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(single.message(), "outcome_unknown: the leader changed");
        assert_eq!(ErrorCode::of_status(&single), ErrorCode::OutcomeUnknown);

        let cut_off = record_error(&forward_failure(connection_closed_mid_call()));
        assert_eq!(cut_off.code, "outcome_unknown");
        assert!(
            cut_off
                .message
                .starts_with("the node it was forwarded to went away"),
            "{cut_off:?}"
        );
    }

    #[test]
    fn a_partition_that_failed_gives_its_records_the_codes_producers_act_on() {
        // Statuses of older nodes carry no code but their gRPC code.
        for (status, code) in [
            (Status::deadline_exceeded("late"), "outcome_unknown"),
            (Status::unavailable("no leader"), "unavailable"),
            (
                write_status(WriteError::InsufficientStorage("disk full".into())),
                "insufficient_storage",
            ),
            (Status::resource_exhausted("busy"), "failed"),
            (Status::not_found("no such topic"), "failed"),
            (ErrorCode::Forbidden.status("no"), "failed"),
        ] {
            assert_eq!(record_error(&status).code, code, "{status:?}");
        }
    }

    /// A single publish answers as it always has, over gRPC and so over
    /// HTTP: the record's code leads the message, and the status's code is
    /// the call's.
    #[test]
    fn a_single_publish_answers_with_the_code_of_the_call() {
        for (record_code, grpc, call_code) in [
            (
                "message_too_large",
                tonic::Code::InvalidArgument,
                "invalid_request",
            ),
            (
                "unknown_partition",
                tonic::Code::InvalidArgument,
                "invalid_request",
            ),
            ("unavailable", tonic::Code::Unavailable, "unavailable"),
            (
                "insufficient_storage",
                tonic::Code::ResourceExhausted,
                "insufficient_storage",
            ),
            ("failed", tonic::Code::Internal, "internal"),
            ("something_new", tonic::Code::Internal, "internal"),
        ] {
            let status = error_status(&pb::Error {
                code: record_code.into(),
                message: "why".into(),
            });
            assert_eq!(status.code(), grpc, "{record_code}");
            assert_eq!(ErrorCode::of_status(&status).as_str(), call_code);
            assert_eq!(status.message(), format!("{record_code}: why"));
        }
    }

    #[test]
    fn a_forward_the_keep_alive_gave_up_on_has_an_unknown_outcome() {
        // hyper's keep-alive timeout also comes out as UNAVAILABLE with a
        // transport source, but the request had left: it may have run.
        let mut timed_out = Status::unavailable("http2 error");
        timed_out.set_source(std::sync::Arc::new(std::io::Error::other(
            "keep-alive timed out",
        )));
        assert_eq!(
            forward_failure(timed_out).code(),
            tonic::Code::DeadlineExceeded
        );
    }
}
