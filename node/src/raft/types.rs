//! The Raft type configuration and the commands every group replicates.
//!
//! One type configuration serves the metadata group and every partition
//! group, so one transport and one storage implementation carry them all.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::Offset;
use crate::model::TopicId;
use crate::raft::batch::RecordBatch;
use serde::Deserialize;
use serde::Serialize;

/// The most partitions one topic may have. Group ids leave room for
/// `model::MAX_PARTITIONS` (2^20), but every partition is a Raft group on
/// each of its replicas: one request for a topic of 2^20 partitions made a
/// node start groups for hours and grow until it ran out of memory, and a
/// consume over HTTP fans out one read per partition.
pub const MAX_TOPIC_PARTITIONS: u32 = 256;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;

/// What one Raft entry asks a state machine to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Meta(MetaCommand),
    Partition(PartitionCommand),
}

/// Who committed a consumer group's offset, and the commit's place among
/// that writer's commits. A client may retry a commit whose outcome it does
/// not know, and the first attempt can still arrive later (held up in a
/// forwarding node's connection during a partition): without an order it
/// would move the group back to an older offset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitWriter {
    pub id: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// One publish batch: one entry however many records it carries.
    /// `timestamp_ms` is stamped by the leader; the state machine never reads
    /// a clock and only raises it to keep time monotonic per partition.
    Append {
        timestamp_ms: i64,
        records: RecordBatch,
        /// Idempotent producers: (producer id, sequence of the first record).
        producer: Option<(u64, u64)>,
    },
    /// A consumer group's next offset to read.
    CommitOffset {
        group: String,
        offset: Offset,
        writer: Option<CommitWriter>,
    },
    /// Retention: forget every message below `offset`.
    AdvanceLogStart { offset: Offset },
    /// Forget every message committed so far (topic purge).
    PurgeAll,
    /// Replicas may drop their Raft log up to this index: the leader saw
    /// every replica holding it, and it holds only forgotten messages.
    AllowLogPurge { upto: u64 },
    /// One webhook delivery: appends `record` (a batch of exactly one
    /// record) and counts it for the source,
    /// unless the source already stored a delivery with the same
    /// idempotency key. Deciding both in one entry keeps them atomic.
    Ingest {
        timestamp_ms: i64,
        source_id: String,
        event_id: String,
        idempotency_key: Option<String>,
        record: RecordBatch,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A token as versions before topic ids wrote it: `topics` may hold
    /// names, kept as [`TokenTopic::LegacyName`] so that older log entries
    /// apply as they did. The API creates tokens with
    /// `CreateTokenWithTopicIds`; this one still creates the bootstrap admin
    /// token, which is limited to no topic.
    CreateToken {
        name: String,
        scopes: Vec<Scope>,
        topics: Vec<String>,
        /// SHA-256 of the secret; the secret itself is never replicated.
        hash: [u8; 32],
        now_ms: i64,
        /// The cluster's first admin token: refused once any token exists.
        bootstrap: bool,
    },
    DeleteToken {
        id: u64,
    },
    /// The secret nodes prove themselves with when forwarding; set once.
    SetClusterSecret {
        secret: [u8; 32],
    },
    CreateTopic {
        spec: TopicSpec,
        now_ms: i64,
    },
    UpdateTopic {
        topic_id: TopicId,
        update: TopicUpdate,
        now_ms: i64,
    },
    DeleteTopic {
        topic_id: TopicId,
    },
    /// A webhook source; `topic` creates its topic in the same entry when
    /// the source names one that does not exist yet.
    CreateSource {
        source: IngestSource,
        topic: SourceTopic,
    },
    RotateSourceSecret {
        id: String,
        hash: [u8; 32],
        last_four: String,
    },
    DeleteSource {
        id: String,
    },
    /// A token limited to topics the proposing leader resolved to ids.
    /// Apply refuses it, storing nothing, if one of them no longer exists.
    /// (New variants go last: bincode stores the variant's index.)
    CreateTokenWithTopicIds {
        name: String,
        scopes: Vec<Scope>,
        topic_ids: Vec<TopicId>,
        /// SHA-256 of the secret; the secret itself is never replicated.
        hash: [u8; 32],
        now_ms: i64,
    },
    /// Turns every token topic still stored by name into the id of the
    /// topic bearing that name now ([`MetaState::has_token_topic_names`]).
    /// The metadata leader proposes it after an upgrade, so every replica
    /// converts at the same log index, as of the same topics.
    ResolveTokenTopicNames,
    /// Starts moving a partition to `replicas` (preferred leader first, as
    /// many as the topic's replication factor). The partition's leader
    /// carries it out on its group and then proposes `CompletePartitionMove`.
    MovePartition {
        group: GroupId,
        replicas: Vec<NodeId>,
    },
    /// The partition group's voters are `replicas` now: the move is done.
    /// Refused unless that very move is pending.
    CompletePartitionMove {
        group: GroupId,
        replicas: Vec<NodeId>,
    },
    /// A node being removed: no new replica lands on it, and the balancer
    /// moves its replicas away.
    SetNodeDraining {
        node: NodeId,
        draining: bool,
    },
    /// Asks the balancer to spread replicas and preferred leaders evenly
    /// (after a node joined or left); it turns itself off when even.
    SetBalancing {
        on: bool,
    },
    /// A push subscription; `dead_letter` creates its dead-letter topic in
    /// the same entry when it names one that does not exist yet.
    CreateSubscription {
        subscription: Box<Subscription>,
        dead_letter: SourceTopic,
    },
    UpdateSubscription {
        id: String,
        update: SubscriptionUpdate,
        now_ms: i64,
    },
    DeleteSubscription {
        id: String,
    },
    SetSubscriptionPaused {
        id: String,
        paused: bool,
        now_ms: i64,
    },
    /// Delivers again from `from`: a new generation, whose positions start
    /// empty, so a delivery of the old generation can no longer move them.
    ReplaySubscription {
        id: String,
        from: DeliveryStart,
        now_ms: i64,
    },
}

/// The topic a new source delivers to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SourceTopic {
    Existing(TopicId),
    /// Used when no topic has the spec's name yet, else that topic is.
    CreateIfMissing(TopicSpec),
}

/// What kind of system delivers to a source, which decides how its
/// deliveries are turned into events.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SourceKind {
    Workato,
    Generic,
    Flow,
}

impl SourceKind {
    pub fn parse(text: &str) -> Option<SourceKind> {
        match text {
            "workato" => Some(SourceKind::Workato),
            "generic" => Some(SourceKind::Generic),
            "flow" => Some(SourceKind::Flow),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SourceKind::Workato => "workato",
            SourceKind::Generic => "generic",
            SourceKind::Flow => "flow",
        }
    }
}

/// A webhook ingestion source. Like tokens, its bearer secret is kept only
/// as a SHA-256 hash, plus the last four characters so an admin can tell
/// which secret is configured upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IngestSource {
    pub id: String,
    pub name: String,
    pub kind: SourceKind,
    pub topic_id: TopicId,
    pub tenant_id: String,
    pub secret_hash: [u8; 32],
    pub secret_last_four: String,
    /// The shared secret deliveries are signed with. It must be kept in
    /// the clear to verify signatures; no API returns it.
    pub hmac_secret: Option<String>,
    pub created_at_ms: i64,
}

/// Only payloads holding `equals_json` (a JSON value, as JSON text) at the
/// JSON pointer `pointer` pass. Kept as text: the replicated form must
/// encode with bincode, which cannot decode a `serde_json::Value`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PayloadFilter {
    pub pointer: String,
    pub equals_json: String,
}

impl PayloadFilter {
    /// Whether `payload` passes. A payload that is not JSON, or lacks the
    /// pointer, does not.
    pub fn matches(&self, payload: &[u8]) -> bool {
        let Ok(expected) = serde_json::from_str::<serde_json::Value>(&self.equals_json) else {
            return false;
        };
        serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|payload| payload.pointer(&self.pointer).cloned())
            .is_some_and(|found| found == expected)
    }
}

/// Where a subscription's delivery starts in a partition it has no
/// position in yet.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum DeliveryStart {
    Earliest,
    Latest,
    /// The same offset in every partition.
    Offset(Offset),
    /// The first message stamped at or after this time (Unix ms).
    TimeMs(i64),
}

/// How a subscription delivers. In requests a zero field means the
/// default ([`SubscriptionSettings::or_defaults`]); stored settings are
/// never zero.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SubscriptionSettings {
    /// Messages per POST.
    pub batch_size: u32,
    /// POSTs of one batch before its messages are dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// How long one POST may take.
    pub timeout_ms: u64,
    /// POSTs in flight at once for the subscription, per node.
    pub max_in_flight: u32,
}

impl SubscriptionSettings {
    pub const DEFAULT: SubscriptionSettings = SubscriptionSettings {
        batch_size: 1,
        max_attempts: 5,
        initial_backoff_ms: 500,
        max_backoff_ms: 60_000,
        timeout_ms: 10_000,
        max_in_flight: 4,
    };

    /// These settings with every non-zero field of `changes` taken over.
    pub fn overridden_by(self, changes: SubscriptionSettings) -> SubscriptionSettings {
        fn pick<T: Default + PartialEq>(old: T, new: T) -> T {
            if new == T::default() { old } else { new }
        }
        SubscriptionSettings {
            batch_size: pick(self.batch_size, changes.batch_size),
            max_attempts: pick(self.max_attempts, changes.max_attempts),
            initial_backoff_ms: pick(self.initial_backoff_ms, changes.initial_backoff_ms),
            max_backoff_ms: pick(self.max_backoff_ms, changes.max_backoff_ms),
            timeout_ms: pick(self.timeout_ms, changes.timeout_ms),
            max_in_flight: pick(self.max_in_flight, changes.max_in_flight),
        }
    }

    /// The defaults, with every non-zero field of `requested` taken over.
    pub fn or_defaults(requested: SubscriptionSettings) -> SubscriptionSettings {
        SubscriptionSettings::DEFAULT.overridden_by(requested)
    }
}

/// A push subscription: the partition leaders of `topic_id` deliver its
/// messages to `endpoint` (`crate::push`). Its delivery positions are not
/// here but in each partition, as consumer-group offsets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub name: String,
    pub topic_id: TopicId,
    pub endpoint: String,
    pub filter: Option<PayloadFilter>,
    pub settings: SubscriptionSettings,
    pub dead_letter_topic_id: TopicId,
    /// The HMAC key deliveries are signed with: it must be kept in the
    /// clear to sign. No API returns it after the creation.
    pub secret: String,
    pub secret_last_four: String,
    pub paused: bool,
    /// Raised by every replay.
    pub generation: u64,
    /// Where this generation's delivery starts.
    pub start: DeliveryStart,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Subscription {
    /// The consumer group that holds this subscription's delivery position
    /// in each partition of its topic, for the current generation.
    pub fn position_group(&self) -> String {
        format!("$subscription/{}/{}", self.id, self.generation)
    }
}

/// A change to a subscription: set fields change, non-zero settings
/// change, and `filter: Some(None)` removes the filter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SubscriptionUpdate {
    pub name: Option<String>,
    pub endpoint: Option<String>,
    pub filter: Option<Option<PayloadFilter>>,
    pub settings: SubscriptionSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicSpec {
    pub name: String,
    pub description: String,
    pub partitions: u32,
    /// Zero means min(3, cluster size).
    pub replication_factor: u32,
    pub schema: Option<String>,
    pub retention: RetentionPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TopicUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` removes the schema.
    pub schema: Option<Option<String>>,
    pub retention: Option<RetentionPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Topic {
    pub id: TopicId,
    pub name: String,
    pub description: String,
    pub schema: Option<String>,
    pub replication_factor: u32,
    pub retention: RetentionPolicy,
    /// Index = partition number; each holds the replica node ids, preferred
    /// leader first.
    pub partitions: Vec<Vec<NodeId>>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub version: u64,
}

impl Topic {
    pub fn group_id(&self, partition: u32) -> GroupId {
        GroupId::partition(self.id, partition)
    }
}

/// What a token may do. `Admin` may do everything.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Publish,
    Consume,
    Admin,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "publish" => Some(Scope::Publish),
            "consume" => Some(Scope::Consume),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Consume => "consume",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: u64,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// The topics this token may use; empty means every topic.
    #[serde(with = "token_topics_as_text")]
    pub topics: Vec<TokenTopic>,
    pub hash: [u8; 32],
    pub created_at_ms: i64,
}

/// A topic a token is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenTopic {
    /// The topic with this id, whatever it is named now. Topic ids are
    /// never reused, so a renamed topic stays this topic and a new topic
    /// taking an old name never becomes it.
    Id(TopicId),
    /// A name stored before tokens kept topic ids. It stands for the topic
    /// bearing that name now, as it always did, until
    /// `MetaCommand::ResolveTokenTopicNames` turns it into an id.
    LegacyName(String),
}

impl TokenTopic {
    /// What a name that names no topic resolves to: topic ids start at 1,
    /// so this one never names a topic.
    pub const NO_TOPIC: TokenTopic = TokenTopic::Id(TopicId(0));

    /// As stored: an id as its digits, a legacy name as itself. Topic
    /// names may not be numbers, so the two never mix up.
    fn to_stored_text(&self) -> String {
        match self {
            TokenTopic::Id(id) => id.to_string(),
            TokenTopic::LegacyName(name) => name.clone(),
        }
    }

    pub fn from_stored_text(text: String) -> TokenTopic {
        match text.parse() {
            Ok(id) => TokenTopic::Id(TopicId(id)),
            Err(_) => TokenTopic::LegacyName(text),
        }
    }
}

/// Token topics are stored as the list of strings they always were.
/// Bincode keeps no field names and has no defaults, so a new field or
/// type would make metadata, snapshots and log entries written before
/// topic ids unreadable; this way they load unchanged, ids (which tokens
/// could always be given) as ids and names as legacy names.
mod token_topics_as_text {
    use serde::Deserialize;
    use serde::Deserializer;
    use serde::Serializer;

    use super::TokenTopic;

    pub fn serialize<S: Serializer>(
        topics: &[TokenTopic],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(topics.iter().map(TokenTopic::to_stored_text))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<TokenTopic>, D::Error> {
        Ok(Vec::<String>::deserialize(deserializer)?
            .into_iter()
            .map(TokenTopic::from_stored_text)
            .collect())
    }
}

/// The replicated metadata. Ordered maps keep apply deterministic.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct MetaState {
    pub topics: BTreeMap<TopicId, Topic>,
    pub next_topic_id: TopicId,
    pub tokens: BTreeMap<u64, TokenRecord>,
    /// Zero until the first token is created.
    pub next_token_id: u64,
    pub cluster_secret: Option<[u8; 32]>,
    /// Webhook sources by id.
    pub sources: BTreeMap<String, IngestSource>,
    /// Partition moves under way: the replicas each group is moving to.
    pub moves: BTreeMap<GroupId, Vec<NodeId>>,
    /// Partition groups whose voters changed since the topic was created.
    /// A replica of one never writes the group's first membership itself
    /// (the creation's replicas did, long ago): it joins from the leader's
    /// log, or two different first entries would share log id 0.
    pub moved: BTreeSet<GroupId>,
    /// Nodes being removed (`SetNodeDraining`), until they leave the
    /// metadata group's voters.
    pub draining: BTreeSet<NodeId>,
    /// The balancer spreads replicas (see `SetBalancing`).
    pub balancing: bool,
    /// Push subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
}

/// [`MetaState`] as versions before push subscriptions stored it (bincode
/// writes fields one after the other; the new field starts empty).
#[derive(Debug, Clone, Deserialize)]
pub struct MetaStateBeforeSubscriptions {
    pub topics: BTreeMap<TopicId, Topic>,
    pub next_topic_id: TopicId,
    pub tokens: BTreeMap<u64, TokenRecord>,
    pub next_token_id: u64,
    pub cluster_secret: Option<[u8; 32]>,
    pub sources: BTreeMap<String, IngestSource>,
    pub moves: BTreeMap<GroupId, Vec<NodeId>>,
    pub moved: BTreeSet<GroupId>,
    pub draining: BTreeSet<NodeId>,
    pub balancing: bool,
}

impl From<MetaStateBeforeSubscriptions> for MetaState {
    fn from(old: MetaStateBeforeSubscriptions) -> MetaState {
        MetaState {
            topics: old.topics,
            next_topic_id: old.next_topic_id,
            tokens: old.tokens,
            next_token_id: old.next_token_id,
            cluster_secret: old.cluster_secret,
            sources: old.sources,
            moves: old.moves,
            moved: old.moved,
            draining: old.draining,
            balancing: old.balancing,
            subscriptions: BTreeMap::new(),
        }
    }
}

/// [`MetaState`] as versions before partition moves stored it. bincode
/// writes fields one after the other, so the old form is read as it was
/// and the new fields start empty.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaStateBeforeMoves {
    pub topics: BTreeMap<TopicId, Topic>,
    pub next_topic_id: TopicId,
    pub tokens: BTreeMap<u64, TokenRecord>,
    pub next_token_id: u64,
    pub cluster_secret: Option<[u8; 32]>,
    pub sources: BTreeMap<String, IngestSource>,
}

impl From<MetaStateBeforeMoves> for MetaState {
    fn from(old: MetaStateBeforeMoves) -> MetaState {
        MetaState {
            topics: old.topics,
            next_topic_id: old.next_topic_id,
            tokens: old.tokens,
            next_token_id: old.next_token_id,
            cluster_secret: old.cluster_secret,
            sources: old.sources,
            ..MetaState::default()
        }
    }
}

impl MetaState {
    pub fn topic_by_name(&self, name: &str) -> Option<&Topic> {
        self.topics.values().find(|t| t.name == name)
    }

    /// Whether some token still holds a topic by name (stored before
    /// tokens kept topic ids; see `MetaCommand::ResolveTokenTopicNames`).
    pub fn has_token_topic_names(&self) -> bool {
        self.tokens.values().any(|token| {
            token
                .topics
                .iter()
                .any(|t| matches!(t, TokenTopic::LegacyName(_)))
        })
    }

    /// Whether this metadata shows the group's topic as created and then
    /// deleted. Topic ids are never reused and the metadata is a committed
    /// prefix, so a "yes" is final even if this copy lags the leader; a
    /// topic this copy has not seen created yet is never called deleted.
    pub fn group_topic_deleted(&self, group: GroupId) -> bool {
        let topic_id = group.topic();
        group != GroupId::META
            && topic_id < self.next_topic_id
            && !self.topics.contains_key(&topic_id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CommandResponse {
    None,
    /// An idempotent batch out of sequence: nothing was appended.
    OutOfSequence {
        expected: u64,
    },
    Appended {
        base_offset: Offset,
        timestamp_ms: i64,
    },
    Topic(Topic),
    Token(TokenRecord),
    Source(IngestSource),
    /// A delivery's event: stored now, or stored before under the same
    /// idempotency key (`duplicate`), in which case nothing was appended.
    Ingested {
        event_id: String,
        offset: Offset,
        duplicate: bool,
    },
    MetaRejected(MetaRejection),
    Subscription(Subscription),
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error, PartialEq, Eq)]
pub enum MetaRejection {
    #[error("topic {name:?} already exists")]
    TopicExists { name: String },
    #[error("topic {topic_id} does not exist")]
    TopicNotFound { topic_id: TopicId },
    #[error("topic {name:?} does not exist")]
    TopicNameNotFound { name: String },
    #[error("token {token_id} does not exist")]
    TokenNotFound { token_id: u64 },
    #[error("source {id:?} does not exist")]
    SourceNotFound { id: String },
    #[error("the cluster already has tokens")]
    AlreadyBootstrapped,
    #[error("{0}")]
    Invalid(String),
    /// Refused because of something under way (a partition move).
    #[error("{0}")]
    Conflict(String),
    #[error("subscription {id:?} does not exist")]
    SubscriptionNotFound { id: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Meta(MetaCommand::CreateToken { name, .. }) => {
                write!(f, "create token {name:?}")
            }
            Command::Meta(MetaCommand::DeleteToken { id }) => write!(f, "delete token {id}"),
            Command::Meta(MetaCommand::SetClusterSecret { .. }) => {
                write!(f, "set the cluster secret")
            }
            Command::Meta(MetaCommand::CreateTopic { spec, .. }) => {
                write!(f, "create topic {:?}", spec.name)
            }
            Command::Meta(MetaCommand::UpdateTopic { topic_id, .. }) => {
                write!(f, "update topic {topic_id}")
            }
            Command::Meta(MetaCommand::DeleteTopic { topic_id }) => {
                write!(f, "delete topic {topic_id}")
            }
            Command::Meta(MetaCommand::CreateSource { source, .. }) => {
                write!(f, "create source {:?}", source.id)
            }
            Command::Meta(MetaCommand::RotateSourceSecret { id, .. }) => {
                write!(f, "rotate the secret of source {id:?}")
            }
            Command::Meta(MetaCommand::DeleteSource { id }) => write!(f, "delete source {id:?}"),
            Command::Meta(MetaCommand::CreateTokenWithTopicIds { name, .. }) => {
                write!(f, "create token {name:?}")
            }
            Command::Meta(MetaCommand::ResolveTokenTopicNames) => {
                write!(f, "resolve token topics stored by name")
            }
            Command::Meta(MetaCommand::MovePartition { group, replicas }) => {
                write!(f, "move group {group} to {replicas:?}")
            }
            Command::Meta(MetaCommand::CompletePartitionMove { group, replicas }) => {
                write!(f, "complete the move of group {group} to {replicas:?}")
            }
            Command::Meta(MetaCommand::SetNodeDraining { node, draining }) => {
                write!(f, "set node {node} draining: {draining}")
            }
            Command::Meta(MetaCommand::SetBalancing { on }) => {
                write!(f, "set balancing: {on}")
            }
            Command::Meta(MetaCommand::CreateSubscription { subscription, .. }) => {
                write!(f, "create subscription {:?}", subscription.id)
            }
            Command::Meta(MetaCommand::UpdateSubscription { id, .. }) => {
                write!(f, "update subscription {id:?}")
            }
            Command::Meta(MetaCommand::DeleteSubscription { id }) => {
                write!(f, "delete subscription {id:?}")
            }
            Command::Meta(MetaCommand::SetSubscriptionPaused { id, paused, .. }) => {
                write!(f, "set subscription {id:?} paused: {paused}")
            }
            Command::Meta(MetaCommand::ReplaySubscription { id, from, .. }) => {
                write!(f, "replay subscription {id:?} from {from:?}")
            }
            Command::Partition(PartitionCommand::Ingest { source_id, .. }) => {
                write!(f, "ingest a delivery of source {source_id:?}")
            }
            Command::Partition(PartitionCommand::Append { records, .. }) => {
                write!(f, "append {} records", records.len())
            }
            Command::Partition(PartitionCommand::CommitOffset { group, offset, .. }) => {
                write!(f, "commit offset {offset} for group {group:?}")
            }
            Command::Partition(PartitionCommand::AdvanceLogStart { offset }) => {
                write!(f, "advance log start to {offset}")
            }
            Command::Partition(PartitionCommand::PurgeAll) => write!(f, "purge"),
            Command::Partition(PartitionCommand::AllowLogPurge { upto }) => {
                write!(f, "allow log purge up to {upto}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_groups_of_topics_seen_created_then_deleted_count_as_deleted() {
        let meta = MetaState {
            next_topic_id: TopicId(3),
            ..Default::default()
        };
        assert!(meta.group_topic_deleted(GroupId::partition(TopicId(1), 0)));
        assert!(meta.group_topic_deleted(GroupId::partition(TopicId(2), 7)));
        // Not created yet as far as this copy knows.
        assert!(!meta.group_topic_deleted(GroupId::partition(TopicId(3), 0)));
        assert!(!meta.group_topic_deleted(GroupId::META));
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn token_records_stored_with_topic_names_still_load() {
        // The shape versions before topic ids stored (bincode keeps no
        // field names, so only the order and types matter).
        #[derive(Serialize)]
        struct StoredBeforeTopicIds {
            id: u64,
            name: String,
            scopes: Vec<Scope>,
            topics: Vec<String>,
            hash: [u8; 32],
            created_at_ms: i64,
        }
        let old = StoredBeforeTopicIds {
            id: 2,
            name: "reader".into(),
            scopes: vec![Scope::Consume],
            topics: vec!["orders".into(), "4".into()],
            hash: [9; 32],
            created_at_ms: 11,
        };
        let loaded: TokenRecord = bincode::deserialize(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!(
            loaded.topics,
            vec![
                TokenTopic::LegacyName("orders".into()),
                TokenTopic::Id(TopicId(4))
            ]
        );
        assert_eq!((loaded.id, loaded.created_at_ms), (2, 11));

        let current = TokenRecord {
            topics: vec![TokenTopic::Id(TopicId(7)), TokenTopic::NO_TOPIC],
            ..loaded
        };
        let bytes = bincode::serialize(&current).unwrap();
        assert_eq!(
            bincode::deserialize::<TokenRecord>(&bytes).unwrap(),
            current
        );
    }
}
