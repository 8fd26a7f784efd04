//! The client API's core, free of any wire format: typed calls in, typed
//! outcomes and [`ServiceError`]s out. Routing to a group's leader, topic
//! lookup, authorization of a known caller, the publish and consume paths
//! live here once; the gRPC service (`grpc.rs`) and the HTTP gateway are
//! adapters over it that convert, authenticate callers, and carry calls to
//! other nodes ([`Peers`]).

mod admin;
mod cluster;
pub use cluster::ClusterStatus;
pub use cluster::MoveStatus;
pub use cluster::NodeStatus;
pub use cluster::Spread;
pub use cluster::moves_of;
pub use cluster::replica_spread;
mod ingest;
mod offsets;
mod platform;
mod subscriptions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use raftstream_proto::ErrorCode;

use crate::api::forwarded::note_forwarded;
use crate::api::read::ReadBatch;
use crate::api::read::ReadError;
use crate::api::read::StartAt;
use crate::api::read::read_or_wait;
use crate::api::schema::SchemaError;
use crate::api::schema::TopicSchema;
use crate::config::DEFAULT_MAX_MESSAGES;
use crate::config::MAX_MESSAGES;
use crate::config::MAX_WAIT_MS;
use crate::group::Group;
use crate::group::write::WriteError;
use crate::model::GroupId;
use crate::model::MessageId;
use crate::model::NodeId;
use crate::model::Offset;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::node::Node;
use crate::platform::PlatformEvent;
use crate::raft::batch::BatchError;
use crate::raft::batch::RecordBatch;
use crate::raft::quiesce::quorum_acked_since;
use crate::raft::types::CommandResponse;
use crate::raft::types::MetaRejection;
use crate::raft::types::PartitionCommand;
use crate::raft::types::Scope;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::raft::types::TopicUpdate;

pub use self::admin::CreatedToken;
pub use self::admin::NewToken;
pub use self::admin::TokenInfo;
pub use self::ingest::Delivered;
pub use self::ingest::Delivery;
pub use self::ingest::NewSource;
pub use self::ingest::SourceStatus;
pub use self::ingest::SourceView;
pub use self::ingest::SourceWithSecret;
pub use self::offsets::OffsetCommit;
pub use self::subscriptions::ChangedSubscription;
pub use self::subscriptions::NewSubscription;
pub use self::subscriptions::PartitionPosition;
pub use self::subscriptions::SubscriptionChange;
pub use self::subscriptions::SubscriptionView;
pub use crate::raft::types::DeliveryStart;
pub use crate::raft::types::PayloadFilter;
pub use crate::raft::types::SubscriptionSettings;
pub use crate::raft::types::SubscriptionUpdate;

/// A request is forwarded at most three times, so stale leader hints can
/// never make it loop: from a node without a replica to a replica, then to
/// the leader that replica knows, and once more when that leader has just
/// lost its leadership (right after a topic is created, its partitions'
/// first elections and the hand-back to each preferred leader move
/// leadership; with two hops, that answered "out of forwarding hops").
const MAX_HOPS: u32 = 3;

/// How long a call waits for a group that has no leader yet (an election
/// under way), or that the metadata places on this node but that has not
/// started yet: long enough for a new topic's first elections, short
/// enough that a group without a quorum answers `unavailable` promptly.
pub const NEW_GROUP_WAIT: Duration = Duration::from_secs(3);

/// Why a call failed: a stable code (one table maps it to gRPC and HTTP)
/// and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
    /// The gRPC code when it is not the table's: an answer another node
    /// sent passes through as it was, and a few refusals keep the gRPC code
    /// clients have always seen.
    pub grpc_code: Option<tonic::Code>,
    /// A call to another node that could not connect: nothing ran there.
    pub never_sent: bool,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ServiceError {
        ServiceError {
            code,
            message: message.into(),
            grpc_code: None,
            never_sent: false,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorCode::Unavailable, message)
    }

    pub fn no_such_topic(name: &TopicName) -> ServiceError {
        ServiceError::new(ErrorCode::NotFound, format!("topic {name} does not exist"))
    }

    /// How a whole call words an unknown outcome: the code alone reads
    /// like a plain timeout to a person.
    pub fn outcome_unknown(why: &str) -> ServiceError {
        ServiceError::new(
            ErrorCode::OutcomeUnknown,
            format!("{OUTCOME_UNKNOWN_PREFIX}{why}"),
        )
    }

    fn shutting_down() -> ServiceError {
        ServiceError::unavailable("this node is shutting down; retry another")
    }

    /// The error each record of a partition's failed publish gets. Only the
    /// outcomes a producer acts on keep their code; any other is `failed`.
    /// The code says the outcome, so the message drops the words that say
    /// it again.
    fn for_each_record(&self) -> ServiceError {
        let code = match self.code {
            code @ (ErrorCode::OutcomeUnknown
            | ErrorCode::Unavailable
            | ErrorCode::InsufficientStorage) => code,
            _ => ErrorCode::Failed,
        };
        let message = match code {
            ErrorCode::OutcomeUnknown => self
                .message
                .strip_prefix(OUTCOME_UNKNOWN_PREFIX)
                .unwrap_or(&self.message),
            _ => &self.message,
        };
        ServiceError::new(code, message)
    }

    /// The error of a single publish whose one record got `self`: the code
    /// of the call, with the record's own code leading the message.
    pub fn of_single_publish(&self) -> ServiceError {
        let code = match self.code {
            ErrorCode::MessageTooLarge | ErrorCode::UnknownPartition => ErrorCode::InvalidRequest,
            code @ (ErrorCode::OutcomeUnknown
            | ErrorCode::Unavailable
            | ErrorCode::InsufficientStorage) => code,
            _ => ErrorCode::Internal,
        };
        ServiceError::new(code, format!("{}: {}", self.code, self.message))
    }
}

const OUTCOME_UNKNOWN_PREFIX: &str = "outcome unknown: ";

impl From<WriteError> for ServiceError {
    fn from(e: WriteError) -> ServiceError {
        match e {
            WriteError::NotLeader { .. } => {
                ServiceError::unavailable("no leader reachable for this group; retry")
            }
            WriteError::Unknown(why) => ServiceError::outcome_unknown(&why),
            WriteError::Unavailable(why) => ServiceError::unavailable(why),
            WriteError::InsufficientStorage(why) => {
                ServiceError::new(ErrorCode::InsufficientStorage, why)
            }
            WriteError::Rejected(r) => {
                let code = match r {
                    MetaRejection::TopicExists { .. }
                    | MetaRejection::AlreadyBootstrapped
                    | MetaRejection::Conflict(_) => ErrorCode::Conflict,
                    MetaRejection::TopicNotFound { .. }
                    | MetaRejection::TopicNameNotFound { .. }
                    | MetaRejection::TokenNotFound { .. }
                    | MetaRejection::SourceNotFound { .. }
                    | MetaRejection::SubscriptionNotFound { .. } => ErrorCode::NotFound,
                    MetaRejection::Invalid(_) => ErrorCode::InvalidRequest,
                };
                ServiceError::new(code, r.to_string())
            }
        }
    }
}

impl From<ReadError> for ServiceError {
    fn from(e: ReadError) -> ServiceError {
        let code = match e {
            ReadError::NoSuchMessage { .. } => ErrorCode::InvalidRequest,
            ReadError::NotLocal { .. } => ErrorCode::Unavailable,
            ReadError::Storage(_) => ErrorCode::Internal,
        };
        ServiceError::new(code, e.to_string())
    }
}

/// A schema refusal. Its codes are those the HTTP gateway has always
/// answered a delivery's schema refusal with (`invalid_request`,
/// `conflict`), not the gateway's own `schema_mismatch` and
/// `invalid_topic_schema`, so HTTP answers stay as they were.
impl From<SchemaError> for ServiceError {
    fn from(e: SchemaError) -> ServiceError {
        match e {
            SchemaError::NotJson { .. } | SchemaError::Mismatch { .. } => {
                ServiceError::invalid(e.to_string())
            }
            // FAILED_PRECONDITION, as before, for clients that read the
            // gRPC code.
            SchemaError::StoredSchema { .. } => ServiceError {
                grpc_code: Some(tonic::Code::FailedPrecondition),
                ..ServiceError::new(ErrorCode::Conflict, e.to_string())
            },
            SchemaError::Interrupted(_) => ServiceError::new(ErrorCode::Internal, e.to_string()),
        }
    }
}

fn denied(why: crate::auth::Denied) -> ServiceError {
    let message = match why {
        crate::auth::Denied::Scope(scope) => {
            format!("this token lacks the {} scope", scope.as_str())
        }
        crate::auth::Denied::Topic => "this token may not use this topic".to_string(),
    };
    ServiceError::new(ErrorCode::Forbidden, message)
}

pub(crate) fn denied_scope(scope: Scope) -> ServiceError {
    denied(crate::auth::Denied::Scope(scope))
}

fn access_lost_error(why: crate::auth::AccessLost) -> ServiceError {
    match why {
        crate::auth::AccessLost::Revoked => {
            ServiceError::new(ErrorCode::Unauthorized, why.to_string())
        }
        crate::auth::AccessLost::Denied(denied_why) => denied(denied_why),
        crate::auth::AccessLost::NodeStopping => ServiceError::unavailable(why.to_string()),
    }
}

/// Who is calling, once an adapter has authenticated them.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Another node forwarding work it authorized, or the gateway, which
    /// authorized its own caller.
    Node,
    Token(TokenRecord),
    /// This node's platform event emitter (`crate::platform`): the one
    /// caller that creates and publishes to the system topics.
    Platform,
}

impl Caller {
    pub fn check_topic(&self, scope: Scope, topic: &Topic) -> Result<(), ServiceError> {
        match self {
            Caller::Node | Caller::Platform => Ok(()),
            Caller::Token(token) => token.allows(scope, Some(topic)).map_err(denied),
        }
    }

    /// Cluster-wide operations need a token not limited to some topics.
    pub fn check_unrestricted(&self) -> Result<(), ServiceError> {
        match self {
            Caller::Token(token) if !token.topics.is_empty() => Err(ServiceError::new(
                ErrorCode::Forbidden,
                "this token is limited to some topics",
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a user's create, delete or publish of a topic named `name`
    /// in the system topics' namespace (`platform.`). Only this node's
    /// emitter may, and nodes carrying its calls on: a call forwarded by
    /// another node (`hops.count > 0`) was checked where it was taken. A
    /// token's call is refused whatever hops it claims.
    pub fn check_topic_name_writable(&self, name: &str, hops: Hops) -> Result<(), ServiceError> {
        let trusted = match self {
            Caller::Platform => true,
            Caller::Node => hops.count > 0,
            Caller::Token(_) => false,
        };
        if trusted || !crate::platform::is_reserved(name) {
            return Ok(());
        }
        Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!(
                "topics named {}* are the cluster's platform event channels: they may be \
                 consumed, but not created, deleted or published to",
                crate::platform::RESERVED_PREFIX
            ),
        ))
    }

    /// The caller as this node's metadata has it now, if it may still use
    /// `scope` on `topic_id`: reads that stay open call this before every
    /// batch, so a revoked token ends them even while messages flow.
    pub fn refreshed(
        &self,
        node: &Node,
        scope: Scope,
        topic_id: Option<TopicId>,
    ) -> Result<Caller, ServiceError> {
        match self {
            Caller::Node => Ok(Caller::Node),
            Caller::Platform => Ok(Caller::Platform),
            Caller::Token(token) => node
                .with_metadata(|m| {
                    crate::auth::still_allowed(m, token.id, scope, topic_id)
                        .map(|token| Caller::Token(token.clone()))
                        .map_err(access_lost_error)
                })
                .unwrap_or_else(|| Err(access_lost_error(crate::auth::AccessLost::NodeStopping))),
        }
    }

    /// Resolves with the error to end a read with once the caller may no
    /// longer use `scope` on `topic_id`; never for a node.
    pub async fn access_lost(
        &self,
        node: &Node,
        scope: Scope,
        topic_id: Option<TopicId>,
    ) -> ServiceError {
        match self {
            Caller::Node | Caller::Platform => std::future::pending().await,
            Caller::Token(token) => access_lost_error(
                crate::auth::access_lost(node.hosted_groups(), token.id, scope, topic_id).await,
            ),
        }
    }
}

/// What a call knows about forwarding: how often it was forwarded, and
/// whether it asks to be answered from this node's own replicas (cluster
/// status fan-out, reads another replica could not serve).
#[derive(Debug, Clone, Copy, Default)]
pub struct Hops {
    pub count: u32,
    pub local_only: bool,
}

impl Hops {
    /// A call asking another node to answer from its own replicas.
    pub const LOCAL_ONLY: Hops = Hops {
        count: 0,
        local_only: true,
    };

    fn can_forward(&self) -> bool {
        !self.local_only && self.count < MAX_HOPS
    }
}

/// Whether a call's values still need their schema check on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaCheck {
    Here,
    /// Checked by the node or the gateway that took the call.
    Done,
}

/// One record to publish. Keys and values are `Bytes`: handing a record
/// on shares them.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Where it goes; by key hash, else round-robin, when `None`.
    pub partition: Option<u32>,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, String)>,
}

impl Record {
    fn size(&self) -> usize {
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        raftstream_proto::record_size(&self.key, &self.value, headers)
    }
}

/// An idempotent producer's batch: the partition appends it once, in
/// sequence.
#[derive(Debug, Clone, Copy)]
pub struct ProducerBatch {
    pub producer_id: u64,
    pub base_sequence: u64,
}

/// Where a published record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: u32,
    pub offset: Offset,
    pub timestamp_ms: i64,
}

impl Stored {
    pub fn message_id(&self) -> String {
        MessageId::new(self.partition, self.offset).to_string()
    }
}

pub type RecordOutcome = Result<Stored, ServiceError>;

/// A publish: records for one topic, with their outcomes in order.
#[derive(Debug)]
pub struct Publish {
    pub records: Vec<Record>,
    pub producer: Option<ProducerBatch>,
    pub schema_check: SchemaCheck,
}

impl Publish {
    /// Bare values (no key, no headers, no producer) that the caller has
    /// already checked against the topic's schema.
    pub fn checked_values(values: impl IntoIterator<Item = Bytes>) -> Publish {
        let records = values
            .into_iter()
            .map(|value| Record {
                value,
                ..Record::default()
            })
            .collect();
        Publish {
            records,
            producer: None,
            schema_check: SchemaCheck::Done,
        }
    }
}

/// A committed read of one partition.
#[derive(Debug, Clone)]
pub struct Consume {
    pub partition: u32,
    pub start: StartAt,
    /// 0 for the default.
    pub max_messages: u32,
    /// How long to wait for a first message (a long poll); 0 answers now.
    pub wait_ms: u32,
    /// 0 for the node's read budget; never more than it.
    pub max_bytes: u32,
}

/// Messages read from one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub partition: u32,
    pub batch: ReadBatch,
}

/// A read another node serves: the topic by id, the rest resolved.
#[derive(Debug, Clone)]
pub struct PeerRead {
    pub topic_id: TopicId,
    pub partition: u32,
    pub start: StartAt,
    pub max_messages: u32,
    pub wait_ms: u32,
    pub max_bytes: u32,
}

/// The group whose leader [`Service::on_leader`] looks for, and the nodes
/// that hold it.
#[derive(Debug, Clone, Copy)]
pub enum LeaderOf<'a> {
    /// The metadata group, held by the cluster's voters.
    Meta,
    /// A partition's group, held by the partition's replicas.
    Partition(&'a Topic, u32),
}

impl LeaderOf<'_> {
    fn group_id(self) -> GroupId {
        match self {
            LeaderOf::Meta => GroupId::META,
            LeaderOf::Partition(topic, partition) => topic.group_id(partition),
        }
    }

    fn group_and_replicas(self, node: &Node) -> Result<(GroupId, Vec<NodeId>), ServiceError> {
        match self {
            LeaderOf::Meta => Ok((self.group_id(), node.voters())),
            LeaderOf::Partition(topic, partition) => {
                Ok((self.group_id(), replicas_of(topic, partition)?))
            }
        }
    }
}

/// A call to another node, answered with a `T`.
pub type PeerCall<'a, T> = BoxFuture<'a, Result<T, ServiceError>>;

/// Calls to other nodes, which the gRPC adapter carries. Errors of a call
/// that may have run there (cut off mid-way) are `outcome_unknown`; a call
/// that never reached the node is `unavailable`; errors the other node
/// answered pass through.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Publishes `records` (each naming `partition`) to the node at `addr`.
    fn publish<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        records: &'a [Record],
        producer: Option<ProducerBatch>,
        hops: Hops,
    ) -> PeerCall<'a, Vec<RecordOutcome>>;

    /// Reads from the node at `addr`; with `hops.local_only`, from its own
    /// replica only.
    fn consume<'a>(&'a self, addr: &'a str, read: PeerRead, hops: Hops) -> PeerCall<'a, Page>;

    fn create_topic<'a>(
        &'a self,
        addr: &'a str,
        spec: &'a TopicSpec,
        hops: Hops,
    ) -> PeerCall<'a, Topic>;

    fn list_topics<'a>(
        &'a self,
        addr: &'a str,
        name: Option<String>,
        hops: Hops,
    ) -> PeerCall<'a, Vec<Topic>>;

    fn get_topic<'a>(
        &'a self,
        addr: &'a str,
        name: &'a TopicName,
        hops: Hops,
    ) -> PeerCall<'a, Topic>;

    fn update_topic<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        update: &'a TopicUpdate,
        hops: Hops,
    ) -> PeerCall<'a, Topic>;

    fn purge_partition<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, ()>;

    fn delete_topic<'a>(&'a self, addr: &'a str, topic_id: TopicId, hops: Hops)
    -> PeerCall<'a, ()>;

    fn create_token<'a>(
        &'a self,
        addr: &'a str,
        new: &'a NewToken,
        hops: Hops,
    ) -> PeerCall<'a, CreatedToken>;

    fn list_tokens<'a>(&'a self, addr: &'a str, hops: Hops) -> PeerCall<'a, Vec<TokenInfo>>;

    fn delete_token<'a>(&'a self, addr: &'a str, id: u64, hops: Hops) -> PeerCall<'a, ()>;

    fn add_node<'a>(
        &'a self,
        addr: &'a str,
        node: NodeId,
        peer_addr: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, ()>;

    fn remove_node<'a>(&'a self, addr: &'a str, node: NodeId, hops: Hops) -> PeerCall<'a, ()>;

    fn move_partition<'a>(
        &'a self,
        addr: &'a str,
        group: GroupId,
        replicas: &'a [NodeId],
        hops: Hops,
    ) -> PeerCall<'a, ()>;

    fn complete_partition_move<'a>(
        &'a self,
        addr: &'a str,
        group: GroupId,
        replicas: &'a [NodeId],
        hops: Hops,
    ) -> PeerCall<'a, ()>;

    /// The other node's own status ([`Service::local_status`]), within
    /// `timeout`.
    fn local_status<'a>(&'a self, addr: &'a str, timeout: Duration) -> PeerCall<'a, ClusterStatus>;

    fn create_source<'a>(
        &'a self,
        addr: &'a str,
        new: &'a NewSource,
        hops: Hops,
    ) -> PeerCall<'a, SourceWithSecret>;

    fn list_sources<'a>(&'a self, addr: &'a str, hops: Hops) -> PeerCall<'a, Vec<SourceView>>;

    /// With `hops.local_only`, the counters of the other node's replica.
    fn get_source<'a>(&'a self, addr: &'a str, id: &'a str, hops: Hops)
    -> PeerCall<'a, SourceView>;

    fn delete_source<'a>(&'a self, addr: &'a str, id: &'a str, hops: Hops) -> PeerCall<'a, ()>;

    fn rotate_source_secret<'a>(
        &'a self,
        addr: &'a str,
        id: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, SourceWithSecret>;

    fn list_subscriptions<'a>(
        &'a self,
        addr: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, Vec<SubscriptionView>>;

    fn get_subscription<'a>(
        &'a self,
        addr: &'a str,
        id: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, SubscriptionView>;

    /// Makes `change` on the node at `addr` (the metadata leader).
    fn change_subscription<'a>(
        &'a self,
        addr: &'a str,
        change: &'a SubscriptionChange,
        hops: Hops,
    ) -> PeerCall<'a, ChangedSubscription>;

    fn commit_offset<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        commit: &'a OffsetCommit,
        hops: Hops,
    ) -> PeerCall<'a, ()>;

    /// `group`'s committed offset in one partition, if it has one.
    fn committed_offsets<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        group: &'a str,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, Vec<(u32, Offset)>>;

    fn consumer_groups<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, Vec<String>>;

    /// Hands a delivery, as received, to the partition's leader, which
    /// checks it again.
    fn deliver<'a>(
        &'a self,
        addr: &'a str,
        delivery: &'a Delivery,
        hops: Hops,
    ) -> PeerCall<'a, Delivered>;
}

/// The error of a call forwarded to another node, which can tell whether
/// the call never reached it.
pub trait ForwardError: From<ServiceError> {
    fn never_sent(&self) -> bool;
}

impl ForwardError for ServiceError {
    fn never_sent(&self) -> bool {
        self.never_sent
    }
}

/// Where a request for a group should go.
pub enum Route {
    Local(Arc<Group>),
    Forward(String),
}

/// The client API on one node.
#[derive(Debug, Clone)]
pub struct Service {
    pub node: Arc<Node>,
    peers: Arc<dyn Peers>,
}

impl Service {
    pub fn new(node: Arc<Node>, peers: Arc<dyn Peers>) -> Service {
        Service { node, peers }
    }

    /// Hands `event` to this node's emitter when this node took the call
    /// from its client (a forwarded call is reported where it was taken,
    /// once). Never waits and never fails the call.
    pub fn platform_event(&self, hops: Hops, event: PlatformEvent) {
        if hops.count == 0 {
            self.node.platform.emit(event);
        }
    }

    pub fn forward_timeout(&self) -> Duration {
        self.node.config.limits.forward_timeout()
    }

    /// Decides where work for a group is done. A node leading the group
    /// does it; otherwise the request goes to the leader this node knows
    /// of, or to a replica that will know, and the caller is told so (see
    /// `forwarded`).
    pub async fn route(&self, leader_of: LeaderOf<'_>, hops: Hops) -> Result<Route, ServiceError> {
        let (group_id, replicas) = leader_of.group_and_replicas(&self.node)?;
        let route = self.choose_route(group_id, &replicas, hops).await;
        if let Ok(Route::Forward(_)) = &route {
            note_forwarded();
        }
        route
    }

    async fn choose_route(
        &self,
        group_id: GroupId,
        replicas: &[NodeId],
        hops: Hops,
    ) -> Result<Route, ServiceError> {
        let local = match self.node.group(group_id) {
            Some(group) => Some(group),
            // The metadata places the group here, but it has not started
            // yet (its topic was created a moment ago): wait for it rather
            // than send the call on to a replica that may be just as new.
            None if replicas.contains(&self.node.id()) => {
                self.node
                    .hosted_groups()
                    .wait_for(group_id, NEW_GROUP_WAIT)
                    .await
            }
            None => None,
        };
        if let Some(group) = &local {
            match group.leader() {
                Some((leader, _)) if leader == self.node.id() => {
                    return Ok(Route::Local(group.clone()));
                }
                Some((_, addr)) if hops.can_forward() => return Ok(Route::Forward(addr)),
                Some(_) => {
                    return Err(ServiceError::unavailable(
                        "not the leader and out of forwarding hops; retry",
                    ));
                }
                None => {}
            }
            // No leader known: an election is under way. Wait briefly for
            // one rather than fail at once.
            return match group.await_leader(NEW_GROUP_WAIT).await {
                Some((leader, _)) if leader == self.node.id() => Ok(Route::Local(group.clone())),
                Some((_, addr)) if hops.can_forward() => Ok(Route::Forward(addr)),
                _ => Err(ServiceError::unavailable(format!(
                    "group {group_id} has no leader (no quorum?); retry"
                ))),
            };
        }
        if !hops.can_forward() {
            return Err(ServiceError::unavailable(format!(
                "group {group_id} is not hosted on this node"
            )));
        }
        // Another replica: this node does not host the group, so sending
        // the call to itself would only spend a hop.
        let me = self.node.id();
        let addrs = self.node.cluster_nodes();
        let replica = replicas
            .iter()
            .filter(|id| **id != me)
            .find_map(|id| addrs.get(id).cloned())
            .ok_or_else(|| {
                ServiceError::unavailable(format!("group {group_id} has no reachable replica"))
            })?;
        Ok(Route::Forward(replica))
    }

    /// Finds a topic in this node's metadata; a topic created a moment ago
    /// through another node may not have reached it yet, so it then asks
    /// the metadata leader for a linearizable read.
    pub async fn topic(&self, name: &TopicName) -> Result<Topic, ServiceError> {
        if let Some(topic) = self.node.find_topic(name) {
            return Ok(topic);
        }
        let Some(meta) = self.node.meta_group() else {
            return Err(ServiceError::shutting_down());
        };
        // Returns once this node has applied up to the leader's commit.
        let linear = meta
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
        let _ = tokio::time::timeout(Duration::from_secs(2), linear).await;
        self.node
            .find_topic(name)
            .ok_or_else(|| ServiceError::no_such_topic(name))
    }

    /// Does `local` on this node when it leads the group, else `forward`s
    /// towards the leader. A local proposal refused because leadership just
    /// moved was never appended, so it is routed again (at most three
    /// times). `E` is the error the forward answers with (the gRPC adapter
    /// passes other nodes' statuses through as they are).
    pub async fn on_leader<T, E: ForwardError, Local, Forward>(
        &self,
        leader_of: LeaderOf<'_>,
        hops: Hops,
        local: impl Fn(Arc<Group>) -> Local,
        forward: impl Fn(String) -> Forward,
    ) -> Result<T, E>
    where
        Local: Future<Output = Result<T, WriteError>>,
        Forward: Future<Output = Result<T, E>>,
    {
        let group_id = leader_of.group_id();
        let mut waited_out_dead_leader = false;
        for _ in 0..3 {
            let group = match self.route(leader_of, hops).await? {
                Route::Local(group) => group,
                Route::Forward(addr) => {
                    let answer = forward(addr).await;
                    match (&answer, self.node.group(group_id)) {
                        (Err(e), Some(group)) if e.never_sent() && !waited_out_dead_leader => {
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
                other => return other.map_err(|e| ServiceError::from(e).into()),
            }
        }
        Err(ServiceError::unavailable("leadership kept moving; retry").into())
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

    /// Refuses values that the topic's JSON Schema does not accept: each
    /// must be JSON satisfying it. Topics without a schema take any bytes.
    pub async fn check_schema(
        &self,
        topic: &Topic,
        values: impl IntoIterator<Item = Bytes>,
    ) -> Result<(), ServiceError> {
        let Some(schema) = TopicSchema::of(topic) else {
            return Ok(());
        };
        let values: Vec<Bytes> = values.into_iter().collect();
        let refused = values.len();
        let checked = self.node.schemas.check_all(schema, values).await;
        // One refused value refuses the call's every value.
        if let Err(e @ (SchemaError::NotJson { .. } | SchemaError::Mismatch { .. })) = &checked {
            self.node.platform.emit(PlatformEvent::schema_rejected(
                &topic.name,
                refused,
                &e.to_string(),
            ));
        }
        Ok(checked?)
    }

    /// Publishes records to a topic: each record's outcome, in order. The
    /// call fails as a whole only when nothing was attempted.
    pub async fn publish(
        &self,
        caller: &Caller,
        topic: &TopicName,
        call: Publish,
        hops: Hops,
    ) -> Result<Vec<RecordOutcome>, ServiceError> {
        let topic = self.topic(topic).await?;
        self.publish_to(caller, &topic, call, hops).await
    }

    /// [`Service::publish`] to a topic the caller has looked up.
    pub async fn publish_to(
        &self,
        caller: &Caller,
        topic: &Topic,
        call: Publish,
        hops: Hops,
    ) -> Result<Vec<RecordOutcome>, ServiceError> {
        let Publish {
            records,
            producer,
            schema_check,
        } = call;
        caller.check_topic(Scope::Publish, topic)?;
        caller.check_topic_name_writable(&topic.name, hops)?;
        if records.is_empty() {
            return Err(ServiceError::invalid("records must not be empty"));
        }
        if schema_check == SchemaCheck::Here {
            // Before anything is appended: one refused record refuses the
            // whole call, so a client never has to find out which of its
            // records were stored.
            self.check_schema(topic, records.iter().map(|r| r.value.clone()))
                .await?;
        }
        if producer.is_some() {
            let first = records.first().and_then(|r| r.partition);
            if first.is_none() || records.iter().any(|r| r.partition != first) {
                return Err(ServiceError::invalid(
                    "an idempotent batch must name one partition on every record",
                ));
            }
        }
        let limits = &self.node.config.limits;
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; records.len()];
        // Records grouped by partition, remembering their request positions.
        let mut by_partition: BTreeMap<u32, Vec<(usize, Record)>> = BTreeMap::new();
        let mut total_bytes = 0usize;
        for (i, record) in records.into_iter().enumerate() {
            let size = record.size();
            if size > limits.max_message_bytes {
                outcomes[i] = Some(Err(ServiceError::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "message is {size} bytes; the limit is {}",
                        limits.max_message_bytes
                    ),
                )));
                continue;
            }
            match self
                .node
                .choose_partition(topic, record.partition, &record.key)
            {
                Ok(p) => {
                    total_bytes += size;
                    by_partition.entry(p).or_default().push((i, record));
                }
                Err(message) => {
                    outcomes[i] = Some(Err(ServiceError::new(ErrorCode::UnknownPartition, message)))
                }
            }
        }
        // An idempotent batch is appended whole or not at all, or its
        // sequence numbers would no longer match the records stored.
        if producer.is_some() && outcomes.iter().any(Option::is_some) {
            let refusal = ServiceError::new(
                ErrorCode::BatchRefused,
                "another record of this idempotent batch was refused",
            );
            return Ok(outcomes
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(refusal.clone())))
                .collect());
        }
        if total_bytes > limits.max_batch_bytes {
            return Err(ServiceError::invalid(format!(
                "batch is {total_bytes} bytes; the limit is {}",
                limits.max_batch_bytes
            )));
        }
        let publishes = by_partition
            .into_iter()
            .map(|(partition, items)| async move {
                let (positions, records): (Vec<usize>, Vec<Record>) = items.into_iter().unzip();
                let outcome = self
                    .publish_to_partition(topic, partition, records, producer, hops)
                    .await;
                (positions, outcome)
            });
        for (positions, outcome) in futures::future::join_all(publishes).await {
            match outcome {
                Ok(partition_outcomes) => {
                    for (position, outcome) in positions.into_iter().zip(partition_outcomes) {
                        outcomes[position] = Some(outcome);
                    }
                }
                Err(e) => {
                    let error = e.for_each_record();
                    for position in positions {
                        outcomes[position] = Some(Err(error.clone()));
                    }
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServiceError::new(ErrorCode::Failed, "no result"))))
            .collect())
    }

    async fn publish_to_partition(
        &self,
        topic: &Topic,
        partition: u32,
        mut records: Vec<Record>,
        producer: Option<ProducerBatch>,
        hops: Hops,
    ) -> Result<Vec<RecordOutcome>, ServiceError> {
        let count = records.len() as u64;
        let bytes = records.iter().map(Record::size).sum::<usize>() as u64;
        // A forwarded publish names its partition on every record, so the
        // next node does not choose again.
        for record in &mut records {
            record.partition = Some(partition);
        }
        let records = &records;
        // Built on the leader only: a forwarded publish travels as records.
        let batch = std::sync::OnceLock::new();
        let batch = &batch;
        let local = |group: Arc<Group>| async move {
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
                } => {
                    self.node.metrics.published(&topic.name, count, bytes);
                    Ok((0..count)
                        .map(|i| {
                            Ok(Stored {
                                partition,
                                offset: base_offset.plus(i),
                                timestamp_ms,
                            })
                        })
                        .collect())
                }
                CommandResponse::OutOfSequence { expected } => {
                    let base = producer.map_or(0, |p| p.base_sequence);
                    // Below the expected sequence: an old retry the
                    // partition already appended (beyond the window of
                    // batches it can answer with offsets).
                    let error = if base < expected {
                        ServiceError::new(
                            ErrorCode::DuplicateSequence,
                            format!("sequence {base} was already appended; the next is {expected}"),
                        )
                    } else {
                        ServiceError::new(
                            ErrorCode::OutOfSequence,
                            format!("sequence {base} skips ahead; the next must be {expected}"),
                        )
                    };
                    Ok((0..count).map(|_| Err(error.clone())).collect())
                }
                other => Err(WriteError::Unavailable(format!(
                    "unexpected append response {other:?}"
                ))),
            }
        };
        let forward = |addr: String| async move {
            self.peers
                .publish(&addr, topic.id, records, producer, hops)
                .await
        };
        self.on_leader(LeaderOf::Partition(topic, partition), hops, local, forward)
            .await
    }

    /// Reads committed messages of one partition, waiting up to
    /// `wait_ms` for a first one. Served by the partition's leader, or by
    /// a local replica when the leader cannot be reached (it holds every
    /// message committed up to its applied index).
    pub async fn consume(
        &self,
        caller: &Caller,
        topic: &TopicName,
        call: Consume,
        hops: Hops,
    ) -> Result<Page, ServiceError> {
        let topic = self.topic(topic).await?;
        self.consume_from(caller, &topic, call, hops).await
    }

    /// [`Service::consume`] from a topic the caller has looked up.
    pub async fn consume_from(
        &self,
        caller: &Caller,
        topic: &Topic,
        call: Consume,
        hops: Hops,
    ) -> Result<Page, ServiceError> {
        caller.check_topic(Scope::Consume, topic)?;
        let partition = call.partition;
        let replicas = replicas_of(topic, partition)?;
        let max = match call.max_messages {
            0 => DEFAULT_MAX_MESSAGES,
            n => n.min(MAX_MESSAGES),
        };
        if call.wait_ms > MAX_WAIT_MS {
            return Err(ServiceError::invalid(format!(
                "wait_ms is at most {MAX_WAIT_MS}"
            )));
        }
        let read_limit = self.node.config.limits.max_read_bytes;
        let max_bytes = match call.max_bytes {
            0 => read_limit,
            n => (n as usize).min(read_limit),
        };
        let read = PeerRead {
            topic_id: topic.id,
            partition,
            start: call.start,
            max_messages: max,
            wait_ms: call.wait_ms,
            max_bytes: u32::try_from(max_bytes).unwrap_or(u32::MAX),
        };
        let group_id = topic.group_id(partition);
        // Whether this node leads the group: a replica reading because the
        // leader could not be reached may not have caught up yet.
        let (group, leading) = match self
            .route(LeaderOf::Partition(topic, partition), hops)
            .await
        {
            Ok(Route::Local(group)) => (group, true),
            Ok(Route::Forward(addr)) => match self.peers.consume(&addr, read.clone(), hops).await {
                Ok(page) => return Ok(page),
                // The leader is unreachable: a local replica still holds
                // every message committed up to its applied index.
                Err(e) => match self.node.group(group_id) {
                    Some(group) if e.code == ErrorCode::Unavailable => (group, false),
                    _ => return Err(e),
                },
            },
            Err(e) => match self.node.group(group_id) {
                Some(group) => (group, false),
                None => return Err(e),
            },
        };
        let stop = self.node.shutdown_signal();
        let wait = Duration::from_millis(u64::from(call.wait_ms));
        let mut result =
            read_or_wait(&group, &read.start, max as usize, max_bytes, wait, stop).await;
        if leading && matches!(result, Err(ReadError::NoSuchMessage { .. })) {
            // A leader elected a moment ago may not yet have applied what
            // its predecessor committed, and only the leader may say a
            // message does not exist: it first catches up to the commit
            // index, then reads again.
            result = match self.caught_up_leader(&group).await {
                Ok(()) => {
                    read_or_wait(
                        &group,
                        &read.start,
                        max as usize,
                        max_bytes,
                        Duration::ZERO,
                        self.node.shutdown_signal(),
                    )
                    .await
                }
                Err(e) => return Err(e),
            };
        }
        match result {
            Ok(batch) => {
                let bytes = batch
                    .messages
                    .iter()
                    .map(crate::api::read::ReadMessage::size)
                    .sum::<usize>();
                let count = batch.messages.len() as u64;
                self.node.metrics.consumed(&topic.name, count, bytes as u64);
                Ok(Page { partition, batch })
            }
            Err(ReadError::NotLocal { .. }) if !hops.local_only => {
                self.consume_from_other_replica(&replicas, read).await
            }
            // Only the leader knows a message does not exist; this replica
            // may just not have applied it yet.
            Err(e @ ReadError::NoSuchMessage { .. }) if !leading => {
                Err(ServiceError::unavailable(format!(
                    "{e} on this replica, which may not have caught up, and the leader \
                     could not be reached; retry"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Returns once this node, as `group`'s leader, has applied everything
    /// committed before the call (a read index confirmed by a quorum).
    async fn caught_up_leader(&self, group: &Group) -> Result<(), ServiceError> {
        let caught_up = group
            .raft
            .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
        match tokio::time::timeout(Duration::from_secs(2), caught_up).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ServiceError::unavailable(
                "the partition's leader has not caught up with what is committed yet; retry",
            )),
        }
    }

    /// Serves a read this replica cannot (it caught up from a snapshot past
    /// the messages) from another replica's log.
    async fn consume_from_other_replica(
        &self,
        replicas: &[NodeId],
        read: PeerRead,
    ) -> Result<Page, ServiceError> {
        let mut last = ServiceError::unavailable("no replica holds these messages");
        let addrs = self.node.cluster_nodes();
        for replica in replicas.iter().filter(|id| **id != self.node.id()) {
            let Some(addr) = addrs.get(replica) else {
                continue;
            };
            let read = PeerRead {
                wait_ms: 0,
                ..read.clone()
            };
            match self.peers.consume(addr, read, Hops::LOCAL_ONLY).await {
                Ok(page) => return Ok(page),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The partitions a request names: one, or all when it names none.
pub fn selected_partitions(
    topic: &Topic,
    partition: Option<u32>,
) -> Result<Vec<u32>, ServiceError> {
    match partition {
        Some(p) => replicas_of(topic, p).map(|_| vec![p]),
        None => Ok((0..topic.partitions.len() as u32).collect()),
    }
}

pub fn replicas_of(topic: &Topic, partition: u32) -> Result<Vec<NodeId>, ServiceError> {
    topic
        .partitions
        .get(partition as usize)
        .cloned()
        .ok_or_else(|| {
            ServiceError::invalid(format!("topic {} has no partition {partition}", topic.name))
        })
}

/// The records of one publish, in one buffer. Headers are stored sorted,
/// so every replica and every read sees the same bytes whatever order the
/// request had them in.
fn records_to_batch(records: &[Record]) -> Result<RecordBatch, BatchError> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_failed_gives_its_records_the_codes_producers_act_on() {
        let unknown = ServiceError::from(WriteError::Unknown("not committed in time".into()));
        assert_eq!(unknown.message, "outcome unknown: not committed in time");
        let per_record = unknown.for_each_record();
        assert_eq!(per_record.code, ErrorCode::OutcomeUnknown);
        assert_eq!(per_record.message, "not committed in time");
        for (code, expected) in [
            (ErrorCode::Unavailable, ErrorCode::Unavailable),
            (
                ErrorCode::InsufficientStorage,
                ErrorCode::InsufficientStorage,
            ),
            (ErrorCode::NotFound, ErrorCode::Failed),
            (ErrorCode::Internal, ErrorCode::Failed),
        ] {
            assert_eq!(
                ServiceError::new(code, "why").for_each_record().code,
                expected
            );
        }
    }

    #[test]
    fn a_single_publish_answers_with_the_code_of_the_call() {
        for (record, call) in [
            (ErrorCode::MessageTooLarge, ErrorCode::InvalidRequest),
            (ErrorCode::UnknownPartition, ErrorCode::InvalidRequest),
            (ErrorCode::OutcomeUnknown, ErrorCode::OutcomeUnknown),
            (ErrorCode::Unavailable, ErrorCode::Unavailable),
            (
                ErrorCode::InsufficientStorage,
                ErrorCode::InsufficientStorage,
            ),
            (ErrorCode::Failed, ErrorCode::Internal),
        ] {
            let error = ServiceError::new(record, "why").of_single_publish();
            assert_eq!(error.code, call);
            assert_eq!(error.message, format!("{record}: why"));
        }
    }
}
