//! The `raftstream.v1.Raftstream` gRPC service. Every node serves it: work
//! for a group this node leads is done here; anything else is forwarded one
//! hop (at most two) to the node that leads the group.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use raftstream_proto::ErrorCode;
use raftstream_proto::call_outcome;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use raftstream_proto::v1::raftstream_server::Raftstream;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::transport::Channel;

use crate::api::authenticate_first::AuthenticatedToken;
use crate::api::authenticate_first::NODE_AUTH_HEADER;
use crate::api::read::ReadBatch;
use crate::api::read::ReadMessage;
use crate::api::read::StartAt;
use crate::api::service::Caller;
use crate::api::service::ClusterStatus;
use crate::api::service::Consume;
use crate::api::service::CreatedToken;
use crate::api::service::ForwardError;
use crate::api::service::Hops;
use crate::api::service::NewToken;
use crate::api::service::NodeStatus;
use crate::api::service::OffsetCommit;
use crate::api::service::Page;
use crate::api::service::PeerRead;
use crate::api::service::Peers;
use crate::api::service::ProducerBatch;
use crate::api::service::Publish;
use crate::api::service::Record;
use crate::api::service::RecordOutcome;
use crate::api::service::SchemaCheck;
use crate::api::service::Service;
use crate::api::service::ServiceError;
use crate::api::service::Stored;
use crate::api::service::TokenInfo;
use crate::api::service::denied_scope;
use crate::config::DEFAULT_MAX_MESSAGES;
use crate::config::MAX_RPC_BYTES;
use crate::group::GroupStatus;
use crate::model::GroupId;
use crate::model::MessageId;
use crate::model::NodeId;
use crate::model::Offset;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::node::Node;
use crate::raft::types::CommitWriter;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::Scope;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::raft::types::TopicUpdate;

/// How many times a request has been forwarded (see `Hops`).
const HOPS_HEADER: &str = "x-raftstream-hops";
/// Asks a node to answer from its own replicas only (cluster status fan-out
/// and reads that a lagging replica could not serve).
const LOCAL_HEADER: &str = "x-raftstream-local";

fn node_credential(secret: &[u8; 32]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

/// The gRPC adapter over [`Service`]: it authenticates callers, converts
/// protobuf to the service's types and back, and forwards the calls the
/// service does not take yet.
#[derive(Debug, Clone)]
pub struct ClientService {
    node: Arc<Node>,
    core: Service,
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
}

/// The client API service of `node`, carrying calls to other nodes over
/// gRPC on the peer listeners.
pub fn service(node: Arc<Node>) -> Service {
    Service::new(node.clone(), Arc::new(GrpcPeers { node }))
}

impl ClientService {
    fn with_trust(node: Arc<Node>, trust: Trust) -> Self {
        let peers = Arc::new(GrpcPeers { node: node.clone() });
        Self {
            core: Service::new(node.clone(), peers),
            node,
            trust,
        }
    }

    /// The public listener's service: every call needs a bearer token.
    pub fn public(node: Arc<Node>) -> Self {
        Self::with_trust(node, Trust::Public)
    }

    /// The peer listener's service: every call needs the node credential.
    pub fn peer(node: Arc<Node>) -> Self {
        Self::with_trust(node, Trust::Peer)
    }

    /// Authenticates the caller and, when `scope` is given, checks it.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        scope: Option<Scope>,
    ) -> Result<Caller, Status> {
        // Without its metadata group (the node is stopping) nothing can be
        // checked: that is unavailability, not a bad token.
        if self.node.meta_group().is_none() {
            return Err(ErrorCode::Unavailable.status("this node is shutting down; retry another"));
        }
        let node_credential_shown = request.metadata().get(NODE_AUTH_HEADER);
        match (self.trust, node_credential_shown) {
            (Trust::Public, Some(_)) => {
                return Err(ErrorCode::Unauthorized
                    .status("node credentials are accepted only on the peer listener"));
            }
            (Trust::Peer, None) => {
                return Err(ErrorCode::Unauthorized.status(
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
                Err(ErrorCode::Unauthorized.status("invalid node credential"))
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
                    .and_then(crate::auth::bearer_credentials)
                    .ok_or_else(|| {
                        ErrorCode::Unauthorized.status("missing authorization: Bearer <token>")
                    })?;
                self.node
                    .authenticate(secret)
                    .await
                    .ok_or_else(|| ErrorCode::Unauthorized.status("unknown or revoked token"))?
            }
        };
        if let Some(scope) = scope
            && !token.has_scope(scope)
        {
            return Err(denied_scope(scope).into());
        }
        Ok(Caller::Token(token))
    }

    /// [`Self::authorize`]s `request`, then takes it apart into the caller,
    /// the hops it has come and its message: the start of every call that
    /// may be forwarded.
    async fn admit<T>(
        &self,
        request: Request<T>,
        scope: Option<Scope>,
    ) -> Result<(Caller, Hops, T), Status> {
        let caller = self.authorize(&request, scope).await?;
        let hops = hops_of(&request);
        Ok((caller, hops, request.into_inner()))
    }

    /// Whether this node checks a call's values against the topic's
    /// schema. The node a client called checks them, once: a forwarded call
    /// (peer listener) was checked there.
    fn schema_check(&self) -> SchemaCheck {
        match self.trust {
            Trust::Public => SchemaCheck::Here,
            Trust::Peer => SchemaCheck::Done,
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
            Trust::Peer => MAX_RPC_BYTES,
        }
    }
}

/// What a request says about forwarding.
fn hops_of<T>(request: &Request<T>) -> Hops {
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

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e.grpc_code {
            Some(code) => e.code.tag(Status::new(code, e.message)),
            None => e.code.status(e.message),
        }
    }
}

/// An answer from another node, or a call to it that failed, as the
/// service's error: the code it carries, and its gRPC code kept so that it
/// passes through to this node's caller unchanged.
impl From<Status> for ServiceError {
    fn from(status: Status) -> ServiceError {
        ServiceError {
            code: ErrorCode::of_status(&status),
            message: status.message().to_string(),
            grpc_code: Some(status.code()),
            never_sent: call_outcome::never_sent(&status),
        }
    }
}

impl ForwardError for Status {
    fn never_sent(&self) -> bool {
        call_outcome::never_sent(self)
    }
}

fn topic_name(topic: Option<&pb::TopicRef>) -> Result<TopicName, Status> {
    match topic.and_then(|t| t.topic.as_ref()) {
        Some(pb::topic_ref::Topic::Id(id)) => Ok(TopicName::Id(TopicId(*id))),
        Some(pb::topic_ref::Topic::Name(name)) => Ok(TopicName::parse(name)),
        None => Err(ErrorCode::InvalidRequest.status("topic is required")),
    }
}

/// `name` on the wire; the inverse of `topic_name`.
fn topic_ref_to_pb(name: &TopicName) -> pb::TopicRef {
    let topic = match name {
        TopicName::Id(id) => pb::topic_ref::Topic::Id(id.0),
        TopicName::Name(name) => pb::topic_ref::Topic::Name(name.clone()),
    };
    pb::TopicRef { topic: Some(topic) }
}

fn topic_by_id(topic_id: TopicId) -> Option<pb::TopicRef> {
    Some(topic_ref_to_pb(&TopicName::Id(topic_id)))
}

fn retention_from_pb(r: Option<&pb::RetentionPolicy>) -> RetentionPolicy {
    let nonzero = |v: u64| (v > 0).then_some(v);
    RetentionPolicy {
        retention_ms: r.and_then(|r| nonzero(r.retention_ms)),
        retention_bytes: r.and_then(|r| nonzero(r.retention_bytes)),
    }
}

fn retention_to_pb(retention: &RetentionPolicy) -> pb::RetentionPolicy {
    pb::RetentionPolicy {
        retention_ms: retention.retention_ms.unwrap_or(0),
        retention_bytes: retention.retention_bytes.unwrap_or(0),
    }
}

fn spec_to_pb(spec: &TopicSpec) -> pb::CreateTopicRequest {
    pb::CreateTopicRequest {
        name: spec.name.clone(),
        description: spec.description.clone(),
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        schema: spec.schema.clone(),
        retention: Some(retention_to_pb(&spec.retention)),
    }
}

fn spec_from_pb(request: pb::CreateTopicRequest) -> TopicSpec {
    TopicSpec {
        retention: retention_from_pb(request.retention.as_ref()),
        name: request.name,
        description: request.description,
        partitions: request.partitions.max(1),
        replication_factor: request.replication_factor,
        schema: request.schema,
    }
}

pub fn topic_to_pb(topic: &Topic) -> pb::Topic {
    pb::Topic {
        id: topic.id.0,
        name: topic.name.clone(),
        description: topic.description.clone(),
        schema: topic.schema.clone(),
        replication_factor: topic.replication_factor,
        retention: Some(retention_to_pb(&topic.retention)),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(p, replicas)| pb::PartitionInfo {
                partition: p as u32,
                group_id: topic.group_id(p as u32).0,
                replicas: replicas.iter().map(|id| id.0).collect(),
            })
            .collect(),
        created_at_ms: topic.created_at_ms,
        updated_at_ms: topic.updated_at_ms,
        version: topic.version,
    }
}

fn topic_from_pb(topic: pb::Topic) -> Topic {
    Topic {
        retention: retention_from_pb(topic.retention.as_ref()),
        id: TopicId(topic.id),
        name: topic.name,
        description: topic.description,
        schema: topic.schema,
        replication_factor: topic.replication_factor,
        partitions: topic
            .partitions
            .into_iter()
            .map(|p| p.replicas.into_iter().map(NodeId).collect())
            .collect(),
        created_at_ms: topic.created_at_ms,
        updated_at_ms: topic.updated_at_ms,
        version: topic.version,
    }
}

pub fn token_to_pb(token: &TokenInfo) -> pb::TokenInfo {
    pb::TokenInfo {
        id: token.id,
        name: token.name.clone(),
        scopes: token
            .scopes
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        topics: token.topics.clone(),
        created_at_ms: token.created_at_ms,
    }
}

/// A token from another node; it stores only scopes it parsed.
fn token_from_pb(token: pb::TokenInfo) -> TokenInfo {
    TokenInfo {
        id: token.id,
        name: token.name,
        scopes: token
            .scopes
            .iter()
            .filter_map(|s| Scope::parse(s))
            .collect(),
        topics: token.topics,
        created_at_ms: token.created_at_ms,
    }
}
fn page_to_pb(Page { partition, batch }: Page) -> pb::ConsumeResponse {
    pb::ConsumeResponse {
        messages: batch
            .messages
            .into_iter()
            .map(|m| pb::Message {
                partition,
                offset: m.offset.0,
                timestamp_ms: m.timestamp_ms,
                key: m.key,
                value: m.value,
                headers: m.headers.into_iter().collect(),
                message_id: MessageId::new(partition, m.offset).to_string(),
            })
            .collect(),
        next_offset: batch.next_offset.0,
        high_watermark: batch.high_watermark.0,
        log_start_offset: batch.log_start_offset.0,
    }
}

/// Whether a forwarded call's deadline passed before the other node
/// answered it: its server then ends the call with CANCELLED ("Timeout
/// expired") whatever the handler was doing, so the call is as unanswered
/// as one cut off.
fn deadline_passed(status: &Status) -> bool {
    status.code() == tonic::Code::Cancelled
}

/// A read sent to another node that got no answer is unavailable: the
/// client may send it again. Answers the other node sent pass through.
fn unanswered_read(status: Status) -> Status {
    if call_outcome::unanswered(&status) || deadline_passed(&status) {
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
    if call_outcome::cut_off(&status) || deadline_passed(&status) {
        ServiceError::outcome_unknown(&format!(
            "the node it was forwarded to went away: {}",
            status.message()
        ))
        .into()
    } else {
        status
    }
}

fn record_to_pb(record: &Record) -> pb::Record {
    pb::Record {
        partition: record.partition,
        key: record.key.clone(),
        value: record.value.clone(),
        headers: record.headers.iter().cloned().collect(),
    }
}

fn record_from_pb(record: pb::Record) -> Record {
    Record {
        partition: record.partition,
        key: record.key,
        value: record.value,
        headers: record.headers.into_iter().collect(),
    }
}

fn outcome_to_pb(outcome: RecordOutcome) -> pb::PublishResult {
    let result = match outcome {
        Ok(stored) => pb::publish_result::Result::Ok(stored_to_pb(stored)),
        Err(e) => pb::publish_result::Result::Error(pb::Error {
            code: e.code.as_str().into(),
            message: e.message,
        }),
    };
    pb::PublishResult {
        result: Some(result),
    }
}

fn stored_to_pb(stored: Stored) -> pb::PublishResponse {
    pb::PublishResponse {
        partition: stored.partition,
        offset: stored.offset.0,
        timestamp_ms: stored.timestamp_ms,
        message_id: stored.message_id(),
    }
}

fn outcome_from_pb(result: pb::PublishResult) -> RecordOutcome {
    match result.result {
        Some(pb::publish_result::Result::Ok(ok)) => Ok(Stored {
            partition: ok.partition,
            offset: Offset(ok.offset),
            timestamp_ms: ok.timestamp_ms,
        }),
        Some(pb::publish_result::Result::Error(e)) => Err(ServiceError::new(
            ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Failed),
            e.message,
        )),
        None => Err(ServiceError::new(ErrorCode::Failed, "no result")),
    }
}

fn page_from_pb(partition: u32, response: pb::ConsumeResponse) -> Page {
    let messages = response
        .messages
        .into_iter()
        .map(|m| {
            let mut headers: Vec<(String, String)> = m.headers.into_iter().collect();
            headers.sort_unstable();
            ReadMessage {
                offset: Offset(m.offset),
                timestamp_ms: m.timestamp_ms,
                key: m.key,
                value: m.value,
                headers,
            }
        })
        .collect();
    Page {
        partition,
        batch: ReadBatch {
            messages,
            next_offset: Offset(response.next_offset),
            high_watermark: Offset(response.high_watermark),
            log_start_offset: Offset(response.log_start_offset),
        },
    }
}

/// A consume request as the service's call; a position after a message id
/// names the partition too.
fn consume_call(request: pb::ConsumeRequest) -> Result<Consume, Status> {
    let mut partition = request.partition;
    let start = match request.position.and_then(|p| p.position) {
        None => StartAt::Earliest,
        Some(pb::position::Position::Offset(o)) => StartAt::Offset(Offset(o)),
        Some(pb::position::Position::SinceTimestampMs(ts)) => StartAt::Timestamp(ts),
        Some(pb::position::Position::Earliest(_)) => StartAt::Earliest,
        Some(pb::position::Position::Latest(_)) => StartAt::Latest,
        Some(pb::position::Position::AfterMessageId(id)) => {
            // A consume's positioned id names its message as well: the
            // position in other partitions means nothing to a read of one.
            let id = MessageId::parse(&id).ok_or_else(|| {
                ErrorCode::InvalidRequest.status(format!("{id:?} is not a message id"))
            })?;
            partition = id.partition;
            StartAt::After(id.offset)
        }
    };
    Ok(Consume {
        partition,
        start,
        max_messages: request.max_messages,
        wait_ms: request.wait_ms,
        max_bytes: request.max_bytes,
    })
}

fn start_to_pb(start: &StartAt, partition: u32) -> pb::position::Position {
    match start {
        StartAt::Offset(o) => pb::position::Position::Offset(o.0),
        StartAt::After(o) => {
            pb::position::Position::AfterMessageId(MessageId::new(partition, *o).to_string())
        }
        StartAt::Timestamp(ts) => pb::position::Position::SinceTimestampMs(*ts),
        StartAt::Earliest => pb::position::Position::Earliest(true),
        StartAt::Latest => pb::position::Position::Latest(true),
    }
}
type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl Raftstream for ClientService {
    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Publish)).await?;
        let schema_check = self.schema_check();
        let topic = topic_name(request.topic.as_ref())?;
        let record = request
            .record
            .ok_or_else(|| ErrorCode::InvalidRequest.status("record is required"))?;
        let call = Publish {
            records: vec![record_from_pb(record)],
            producer: None,
            schema_check,
        };
        let outcome = self.core.publish(&caller, &topic, call, hops).await?.pop();
        match outcome {
            Some(Ok(stored)) => Ok(Response::new(stored_to_pb(stored))),
            Some(Err(e)) => Err(e.of_single_publish().into()),
            None => Err(ErrorCode::Internal.status("publish produced no result")),
        }
    }

    async fn publish_batch(
        &self,
        request: Request<pb::PublishBatchRequest>,
    ) -> Result<Response<pb::PublishBatchResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Publish)).await?;
        let schema_check = self.schema_check();
        let topic = topic_name(request.topic.as_ref())?;
        let call = Publish {
            records: request.records.into_iter().map(record_from_pb).collect(),
            producer: request.producer.map(|p| ProducerBatch {
                producer_id: p.producer_id,
                base_sequence: p.base_sequence,
            }),
            schema_check,
        };
        let outcomes = self.core.publish(&caller, &topic, call, hops).await?;
        Ok(Response::new(pb::PublishBatchResponse {
            results: outcomes.into_iter().map(outcome_to_pb).collect(),
        }))
    }

    async fn consume(
        &self,
        request: Request<pb::ConsumeRequest>,
    ) -> Result<Response<pb::ConsumeResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Consume)).await?;
        let _slot = (request.wait_ms > 0)
            .then(|| self.node.read_slots.long_poll())
            .transpose()
            .map_err(|full| ErrorCode::TooManyLongPolls.status(full.to_string()))?;
        let topic = topic_name(request.topic.as_ref())?;
        let call = consume_call(request)?;
        if call.wait_ms == 0 {
            let page = self.core.consume(&caller, &topic, call, hops).await?;
            return Ok(Response::new(page_to_pb(page)));
        }
        // A parked long poll ends as soon as its token is revoked, and what
        // it woke with is handed over only if the token still allows it.
        let topic_id = self.node.find_topic(&topic).map(|topic| topic.id);
        let page = tokio::select! {
            page = self.core.consume(&caller, &topic, call, hops) => page?,
            e = caller.access_lost(&self.node, Scope::Consume, topic_id) => return Err(e.into()),
        };
        caller.refreshed(&self.node, Scope::Consume, topic_id)?;
        Ok(Response::new(page_to_pb(page)))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Consume)).await?;
        let slot = self
            .node
            .read_slots
            .subscription()
            .map_err(|full| ErrorCode::TooManyLongPolls.status(full.to_string()))?;
        // The stream reads its topic by id: renamed, it is still the topic
        // the stream was opened on, and a new topic taking the old name is
        // not. The caller's token is checked against this id while it runs.
        let topic = self
            .core
            .topic(&topic_name(request.topic.as_ref())?)
            .await?;
        let topic_id = topic.id;
        let first_call = consume_call(pb::ConsumeRequest {
            topic: None,
            partition: request.partition,
            position: request.position,
            max_messages: DEFAULT_MAX_MESSAGES,
            wait_ms: 0,
            max_bytes: 0,
        })?;
        // Validate the topic and position now, so a bad request fails the
        // call itself rather than the first stream item.
        let first = self
            .core
            .consume_from(&caller, &topic, first_call, hops)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::Message, Status>>(
            DEFAULT_MAX_MESSAGES as usize,
        );
        let service = self.core.clone();
        let by_id = TopicName::Id(topic_id);
        let mut shutdown = self.node.shutdown_signal();
        tokio::spawn(async move {
            // Held for as long as the stream is open.
            let _slot = slot;
            let mut page = first;
            let mut caller = caller;
            loop {
                let partition = page.partition;
                let next_offset = page.batch.next_offset;
                for message in page_to_pb(page).messages {
                    if tx.send(Ok(message)).await.is_err() {
                        return; // The subscriber went away.
                    }
                }
                // Checked before every read, as well as while one waits
                // (below), so a busy stream ends on revocation too.
                caller = match caller.refreshed(&service.node, Scope::Consume, Some(topic_id)) {
                    Ok(caller) => caller,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let next = Consume {
                    partition,
                    start: StartAt::Offset(next_offset),
                    max_messages: DEFAULT_MAX_MESSAGES,
                    wait_ms: 30_000,
                    max_bytes: 0,
                };
                page = tokio::select! {
                    result = service.consume(&caller, &by_id, next, hops) => match result {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    },
                    e = caller.access_lost(&service.node, Scope::Consume, Some(topic_id)) => {
                        let _ = tx.send(Err(e.into())).await;
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
        let (caller, hops, request) = self.admit(request, Some(Scope::Consume)).await?;
        let topic = topic_name(request.topic.as_ref())?;
        let commit = OffsetCommit {
            group: request.group,
            partition: request.partition,
            offset: Offset(request.offset),
            writer: (request.writer_id != 0).then_some(CommitWriter {
                id: request.writer_id,
                seq: request.writer_seq,
            }),
        };
        self.core
            .commit_offset(&caller, &topic, commit, hops)
            .await?;
        Ok(Response::new(pb::CommitOffsetResponse {}))
    }

    async fn get_committed_offsets(
        &self,
        request: Request<pb::GetCommittedOffsetsRequest>,
    ) -> Result<Response<pb::GetCommittedOffsetsResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Consume)).await?;
        let topic = topic_name(request.topic.as_ref())?;
        let offsets = self
            .core
            .committed_offsets(&caller, &topic, &request.group, request.partition, hops)
            .await?;
        Ok(Response::new(pb::GetCommittedOffsetsResponse {
            offsets: offsets
                .into_iter()
                .map(|(partition, offset)| pb::PartitionOffset {
                    partition,
                    offset: offset.0,
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Consume)).await?;
        let topic = topic_name(request.topic.as_ref())?;
        let groups = self
            .core
            .consumer_groups(&caller, &topic, request.partition, hops)
            .await?;
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let spec = spec_from_pb(request);
        let topic = self.core.create_topic(&caller, spec, hops).await?;
        Ok(Response::new(topic_to_pb(&topic)))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let (_caller, hops, request) = self.admit(request, None).await?;
        let name = request.name;
        let topics = self.core.list_topics(name, hops).await?;
        Ok(Response::new(pb::ListTopicsResponse {
            topics: topics.iter().map(topic_to_pb).collect(),
        }))
    }

    async fn get_topic(
        &self,
        request: Request<pb::TopicRef>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (_caller, hops, request) = self.admit(request, None).await?;
        let name = topic_name(Some(&request))?;
        let topic = self.core.current_topic(&name, hops).await?;
        Ok(Response::new(topic_to_pb(&topic)))
    }

    async fn update_topic(
        &self,
        request: Request<pb::UpdateTopicRequest>,
    ) -> Result<Response<pb::Topic>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let name = topic_name(request.topic.as_ref())?;
        let update = TopicUpdate {
            name: request.name,
            description: request.description,
            // An empty schema removes the topic's schema.
            schema: request.schema.map(|s| (!s.is_empty()).then_some(s)),
            retention: request
                .retention
                .as_ref()
                .map(|r| retention_from_pb(Some(r))),
        };
        let topic = self.core.update_topic(&caller, &name, update, hops).await?;
        Ok(Response::new(topic_to_pb(&topic)))
    }

    async fn purge_topic(
        &self,
        request: Request<pb::PurgeTopicRequest>,
    ) -> Result<Response<pb::PurgeTopicResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let name = topic_name(request.topic.as_ref())?;
        self.core
            .purge_topic(&caller, &name, request.partition, hops)
            .await?;
        Ok(Response::new(pb::PurgeTopicResponse {}))
    }

    async fn delete_topic(
        &self,
        request: Request<pb::TopicRef>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let name = topic_name(Some(&request))?;
        self.core.delete_topic(&caller, &name, hops).await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let scopes = request
            .scopes
            .iter()
            .map(|s| {
                Scope::parse(s).ok_or_else(|| {
                    ErrorCode::InvalidRequest.status(format!(
                        "unknown scope {s:?}: use publish, consume or admin"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let new = NewToken {
            name: request.name,
            scopes,
            topics: request.topics,
        };
        let created = self.core.create_token(&caller, new, hops).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_to_pb(&created.token)),
            secret: created.secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let (caller, hops, _) = self.admit(request, Some(Scope::Admin)).await?;
        let tokens = self.core.list_tokens(&caller, hops).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.iter().map(token_to_pb).collect(),
        }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let id = request.id;
        self.core.delete_token(&caller, id, hops).await?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        self.core
            .add_node(&caller, NodeId(request.node_id), &request.peer_addr, hops)
            .await?;
        Ok(Response::new(pb::AddNodeResponse {}))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let node = NodeId(request.node_id);
        self.core.remove_node(&caller, node, hops).await?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn move_partition(
        &self,
        request: Request<pb::MovePartitionRequest>,
    ) -> Result<Response<pb::MovePartitionResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let name = topic_name(request.topic.as_ref())?;
        let replicas = request.replicas.into_iter().map(NodeId).collect();
        self.core
            .move_partition(&caller, &name, request.partition, replicas, hops)
            .await?;
        Ok(Response::new(pb::MovePartitionResponse {}))
    }

    async fn complete_partition_move(
        &self,
        request: Request<pb::CompletePartitionMoveRequest>,
    ) -> Result<Response<pb::CompletePartitionMoveResponse>, Status> {
        let (caller, hops, request) = self.admit(request, None).await?;
        let replicas = request.replicas.into_iter().map(NodeId).collect();
        self.core
            .complete_partition_move(&caller, GroupId(request.group_id), replicas, hops)
            .await?;
        Ok(Response::new(pb::CompletePartitionMoveResponse {}))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let (_caller, hops, _) = self.admit(request, None).await?;
        let status = self.core.cluster_status(hops).await;
        Ok(Response::new(cluster_status_to_pb(status)))
    }
}

/// Cluster status on the wire.
fn cluster_status_to_pb(status: ClusterStatus) -> pb::ClusterStatusResponse {
    let spread = status.spread();
    pb::ClusterStatusResponse {
        node_id: status.node_id.0,
        nodes: status
            .nodes
            .into_iter()
            .map(|n| pb::NodeStatus {
                id: n.id.0,
                grpc_addr: n.client_addr,
                reachable: n.reachable,
                replicas: n.replicas,
                preferred_leaders: n.preferred_leaders,
                leaders: n.leaders,
                voter: n.voter,
                draining: n.draining,
            })
            .collect(),
        groups: status
            .groups
            .into_iter()
            .map(|g| pb::GroupStatus {
                group_id: g.group_id.0,
                topic: g.topic,
                partition: g.partition,
                leader: g.leader.map(|id| id.0),
                term: g.term,
                commit_index: g.commit_index,
                applied_index: g.applied_index,
                last_log_index: g.last_log_index,
                replicas: g.replicas.into_iter().map(|id| id.0).collect(),
                replica_lag: g
                    .replica_lag
                    .into_iter()
                    .map(|(id, lag)| (id.0, lag))
                    .collect(),
                high_watermark: g.high_watermark.0,
                log_start_offset: g.log_start_offset.0,
                quiesced: g.quiesced,
            })
            .collect(),
        moves: status
            .moves
            .into_iter()
            .map(|m| pb::PartitionMove {
                topic: m.topic,
                partition: m.partition,
                from: m.from.into_iter().map(|n| n.0).collect(),
                to: m.to.into_iter().map(|n| n.0).collect(),
            })
            .collect(),
        spread: Some(pb::Spread {
            replicas: spread.replicas,
            leaders: spread.leaders,
        }),
    }
}

/// Another node's cluster status, from the wire.
fn cluster_status_from_pb(status: pb::ClusterStatusResponse) -> ClusterStatus {
    ClusterStatus {
        node_id: NodeId(status.node_id),
        nodes: status
            .nodes
            .into_iter()
            .map(|n| NodeStatus {
                id: NodeId(n.id),
                client_addr: n.grpc_addr,
                reachable: n.reachable,
                replicas: n.replicas,
                preferred_leaders: n.preferred_leaders,
                leaders: n.leaders,
                voter: n.voter,
                draining: n.draining,
            })
            .collect(),
        groups: status
            .groups
            .into_iter()
            .map(|g| GroupStatus {
                group_id: GroupId(g.group_id),
                topic: g.topic,
                partition: g.partition,
                leader: g.leader.map(NodeId),
                term: g.term,
                commit_index: g.commit_index,
                applied_index: g.applied_index,
                last_log_index: g.last_log_index,
                replicas: g.replicas.into_iter().map(NodeId).collect(),
                replica_lag: g
                    .replica_lag
                    .into_iter()
                    .map(|(id, lag)| (NodeId(id), lag))
                    .collect(),
                high_watermark: Offset(g.high_watermark),
                log_start_offset: Offset(g.log_start_offset),
                quiesced: g.quiesced,
            })
            .collect(),
        // Only a node's own status is asked for, and it carries no moves:
        // the metadata has them, and this node reports its own copy.
        moves: Vec::new(),
    }
}

mod ingest;
mod peers;
mod subscriptions;

use self::peers::GrpcPeers;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
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
        let cut_off = ServiceError::from(forward_failure(connection_closed_mid_call()));
        assert_eq!(cut_off.code, ErrorCode::OutcomeUnknown);
        let record = outcome_to_pb(Err(ServiceError::new(
            ErrorCode::OutcomeUnknown,
            "the leader changed",
        )));
        let Some(pb::publish_result::Result::Error(error)) = record.result else {
            panic!("an error was expected: {record:?}");
        };
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("outcome_unknown", "the leader changed")
        );
        let single = Status::from(
            outcome_from_pb(pb::PublishResult {
                result: Some(pb::publish_result::Result::Error(error)),
            })
            .unwrap_err()
            .of_single_publish(),
        );
        assert_eq!(single.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(single.message(), "outcome_unknown: the leader changed");
        assert_eq!(ErrorCode::of_status(&single), ErrorCode::OutcomeUnknown);
    }

    /// Statuses of older nodes carry no code but their gRPC code; a
    /// forwarded partition's failure gives its records the code producers
    /// act on.
    #[test]
    fn a_status_from_another_node_keeps_its_meaning() {
        for (status, code) in [
            (Status::deadline_exceeded("late"), ErrorCode::OutcomeUnknown),
            (Status::unavailable("no leader"), ErrorCode::Unavailable),
            (
                ErrorCode::InsufficientStorage.status("disk full"),
                ErrorCode::InsufficientStorage,
            ),
            (Status::not_found("no such topic"), ErrorCode::NotFound),
            (ErrorCode::Forbidden.status("no"), ErrorCode::Forbidden),
        ] {
            let grpc = status.code();
            let error = ServiceError::from(status);
            assert_eq!(error.code, code);
            // And passes through to this node's caller unchanged.
            let passed_on = Status::from(error);
            assert_eq!(passed_on.code(), grpc);
            assert_eq!(ErrorCode::of_status(&passed_on), code);
        }
    }

    #[test]
    fn a_refused_connection_is_known_never_to_have_reached_the_node() {
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert!(ServiceError::from(forward_failure(refused)).never_sent);
        assert!(!ServiceError::from(forward_failure(connection_closed_mid_call())).never_sent);
        assert!(!ServiceError::from(Status::unavailable("no leader yet")).never_sent);
    }

    /// The other node's server ends a call whose deadline passed with
    /// CANCELLED, and the handler may have written by then.
    #[test]
    fn a_forward_whose_deadline_passed_there_has_an_unknown_outcome() {
        let expired = Status::cancelled("Timeout expired");
        let write = ServiceError::from(forward_failure(expired.clone()));
        assert_eq!(write.code, ErrorCode::OutcomeUnknown);
        let read = ServiceError::from(unanswered_read(expired));
        assert_eq!(read.code, ErrorCode::Unavailable);
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
