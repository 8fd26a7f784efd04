//! Webhook sources (admin scope) and deliveries (authenticated by the
//! source's own secret).
//!
//! A delivery is appended to one partition of the source's topic, chosen by
//! hashing the source id, as a `PartitionCommand::Ingest`: that one entry
//! appends the event, counts it for the source and records its idempotency
//! key, so a repeated delivery can never be stored twice. It is answered
//! only after the entry committed on a majority, like any publish.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftstream_proto::ErrorCode;

use super::Caller;
use super::Hops;
use super::LeaderOf;
use super::Route;
use super::SchemaCheck;
use super::Service;
use super::ServiceError;
use crate::group::Group;
use crate::group::write::WriteError;
use crate::ingest::DeliveryRefused;
use crate::ingest::envelope;
use crate::ingest::envelope::FlowRequest;
use crate::model::Offset;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::platform::Change;
use crate::platform::PlatformEvent;
use crate::raft::batch::RecordBatch;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::MetaCommand;
use crate::raft::types::PartitionCommand;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::SourceKind;
use crate::raft::types::SourceTopic;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::state_machine::GroupData;
use crate::state_machine::meta::validate_source;
use crate::state_machine::meta::validate_topic_name;
use crate::state_machine::partition::SourceStats;

/// How long a source read waits for its partition leader's counters
/// before showing them as unknown: a listing must not hang on one
/// unreachable partition.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// A source to create.
#[derive(Debug, Clone)]
pub struct NewSource {
    pub name: String,
    pub kind: SourceKind,
    /// An existing topic by id, or by name (created when missing).
    pub topic: TopicName,
    /// Blank for the default tenant.
    pub tenant_id: String,
    pub hmac_secret: Option<String>,
}

/// Whether a source has taken deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    AwaitingFirstEvent,
    Active,
    /// Its counters could not be read (the partition has no leader).
    Unknown,
}

impl SourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceStatus::AwaitingFirstEvent => "awaiting_first_event",
            SourceStatus::Active => "active",
            SourceStatus::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> SourceStatus {
        match text {
            "awaiting_first_event" => SourceStatus::AwaitingFirstEvent,
            "active" => SourceStatus::Active,
            _ => SourceStatus::Unknown,
        }
    }
}

/// A source as callers see it: never its secrets, with the delivery
/// counters of its partition's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    pub id: String,
    pub name: String,
    pub kind: SourceKind,
    pub topic_id: TopicId,
    /// Empty once the topic was deleted.
    pub topic_name: String,
    pub partition: u32,
    pub status: SourceStatus,
    pub created_at_ms: i64,
    pub last_event_ms: Option<i64>,
    pub event_count: u64,
    pub secret_last_four: String,
    pub hmac: bool,
    pub tenant_id: String,
}

/// A source with the secret it was just given, shown this once.
#[derive(Debug, Clone)]
pub struct SourceWithSecret {
    pub source: SourceView,
    pub secret: String,
}

/// One webhook delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source_id: String,
    pub secret: String,
    /// The signature header, with a separate timestamp folded in.
    pub signature: Option<String>,
    pub idempotency_key: Option<String>,
    pub body: Bytes,
    /// The request line and headers of a flow delivery.
    pub flow: Option<FlowRequest>,
}

/// Where a delivery's event was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub event_id: String,
    pub partition: u32,
    pub offset: Offset,
    /// A repeat of an idempotency key: nothing new was stored.
    pub duplicate: bool,
}

fn refused(why: DeliveryRefused) -> ServiceError {
    let code = match why {
        DeliveryRefused::BadSecret | DeliveryRefused::Signature(_) => ErrorCode::Unauthorized,
        DeliveryRefused::TooLarge
        | DeliveryRefused::InvalidBody(_)
        | DeliveryRefused::InvalidIdempotencyKey => ErrorCode::InvalidRequest,
    };
    ServiceError::new(code, why.to_string())
}

fn source_not_found(id: &str) -> ServiceError {
    ServiceError::new(ErrorCode::NotFound, format!("source {id:?} does not exist"))
}

fn local_stats(group: &Group, source_id: &str) -> SourceStats {
    group.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => p.source_stats.get(source_id).copied().unwrap_or_default(),
        GroupData::Meta(_) => SourceStats::default(),
    })
}

impl Service {
    async fn find_source(&self, id: &str) -> Result<IngestSource, ServiceError> {
        if self.node.meta_group().is_none() {
            return Err(ServiceError::shutting_down());
        }
        self.node
            .find_source(id)
            .await
            .ok_or_else(|| source_not_found(id))
    }

    /// The topic a source delivers to and the partition its deliveries
    /// take; `None` once the topic was deleted.
    fn source_partition(&self, source: &IngestSource) -> Option<(Topic, u32)> {
        let topic = self.node.find_topic(&TopicName::Id(source.topic_id))?;
        let partition = self
            .node
            .choose_partition(&topic, None, source.id.as_bytes())
            .ok()?;
        Some((topic, partition))
    }

    /// The source as the API shows it, with the delivery counters of its
    /// partition's leader. Counters that cannot be read show as status
    /// `unknown` rather than failing the call: a rotation has already
    /// happened and its new secret must reach the caller.
    async fn describe(&self, source: &IngestSource, hops: Hops) -> SourceView {
        let stats = match self.source_partition(source) {
            Some((topic, partition)) => {
                let stats = self.source_stats(source, &topic, partition, hops);
                tokio::time::timeout(STATS_TIMEOUT, stats)
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        self.source_view(source, stats)
    }

    fn source_view(&self, source: &IngestSource, stats: Option<SourceStats>) -> SourceView {
        let placement = self.source_partition(source);
        let (status, stats) = match stats {
            Some(stats) if stats.event_count > 0 => (SourceStatus::Active, stats),
            Some(stats) => (SourceStatus::AwaitingFirstEvent, stats),
            None => (SourceStatus::Unknown, SourceStats::default()),
        };
        SourceView {
            id: source.id.clone(),
            name: source.name.clone(),
            kind: source.kind,
            topic_id: source.topic_id,
            topic_name: placement
                .as_ref()
                .map(|(t, _)| t.name.clone())
                .unwrap_or_default(),
            partition: placement.map_or(0, |(_, p)| p),
            status,
            created_at_ms: source.created_at_ms,
            last_event_ms: (stats.event_count > 0).then_some(stats.last_event_ms),
            event_count: stats.event_count,
            secret_last_four: source.secret_last_four.clone(),
            hmac: source.hmac_secret.is_some(),
            tenant_id: source.tenant_id.clone(),
        }
    }

    /// Reads the counters where the partition's leader is, so a delivery
    /// acknowledged a moment ago is counted.
    async fn source_stats(
        &self,
        source: &IngestSource,
        topic: &Topic,
        partition: u32,
        hops: Hops,
    ) -> Option<SourceStats> {
        match self
            .route(LeaderOf::Partition(topic, partition), hops)
            .await
        {
            Ok(Route::Local(group)) => Some(local_stats(&group, &source.id)),
            Ok(Route::Forward(addr)) => {
                let remote = self
                    .peers
                    .get_source(&addr, &source.id, Hops::LOCAL_ONLY)
                    .await
                    .ok()?;
                (remote.status != SourceStatus::Unknown).then_some(SourceStats {
                    event_count: remote.event_count,
                    last_event_ms: remote.last_event_ms.unwrap_or(0),
                })
            }
            Err(_) => None,
        }
    }

    /// Writes the command that gives a source the fresh secret it is
    /// handed, and answers with the secret, shown this once. A new source
    /// has had no deliveries, so only a rotated one has counters to read.
    async fn write_with_new_secret(
        &self,
        command_for: impl FnOnce(&str) -> MetaCommand,
        hops: Hops,
    ) -> Result<SourceWithSecret, WriteError> {
        let secret = crate::ingest::new_source_secret();
        let command = command_for(&secret);
        let is_new = matches!(command, MetaCommand::CreateSource { .. });
        let source = self.node.write_source(command).await?;
        let source = if is_new {
            self.source_view(&source, Some(SourceStats::default()))
        } else {
            self.describe(&source, hops).await
        };
        Ok(SourceWithSecret { source, secret })
    }

    /// The source `new` asks for, stamped with this node's time.
    fn new_source(&self, new: &NewSource, id: String, secret: &str) -> IngestSource {
        IngestSource {
            id,
            name: new.name.clone(),
            kind: new.kind,
            topic_id: TopicId(0),
            tenant_id: match new.tenant_id.trim() {
                "" => "default".to_string(),
                tenant => tenant.to_string(),
            },
            secret_hash: crate::auth::hash_secret(secret),
            secret_last_four: crate::ingest::last_four(secret),
            hmac_secret: new.hmac_secret.clone(),
            created_at_ms: self.node.time.now_ms(),
        }
    }

    pub async fn create_source(
        &self,
        caller: &Caller,
        new: NewSource,
        hops: Hops,
    ) -> Result<SourceWithSecret, ServiceError> {
        caller.check_unrestricted()?;
        // A source publishes its deliveries: never into a system topic.
        let topic_name = match &new.topic {
            TopicName::Name(name) => Some(name.clone()),
            TopicName::Id(_) => self.node.find_topic(&new.topic).map(|t| t.name),
        };
        if let Some(name) = &topic_name {
            caller.check_topic_name_writable(name, hops)?;
        }
        let topic = match &new.topic {
            TopicName::Id(id) => SourceTopic::Existing(*id),
            TopicName::Name(name) => {
                validate_topic_name(name).map_err(|e| ServiceError::invalid(e.to_string()))?;
                SourceTopic::CreateIfMissing(TopicSpec {
                    description: format!("Events of webhook source {:?}", new.name),
                    name: name.clone(),
                    partitions: 1,
                    replication_factor: 0,
                    schema: None,
                    retention: RetentionPolicy {
                        retention_ms: None,
                        retention_bytes: None,
                    },
                })
            }
        };
        crate::ingest::validate_hmac_secret(new.hmac_secret.as_deref())
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        validate_source(&self.new_source(&new, String::new(), ""))
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        let (new, topic) = (&new, &topic);
        let local = |_: Arc<Group>| {
            let command = |secret: &str| MetaCommand::CreateSource {
                source: self.new_source(new, crate::ingest::new_source_id(), secret),
                topic: topic.clone(),
            };
            self.write_with_new_secret(command, hops)
        };
        let forward =
            |addr: String| async move { self.peers.create_source(&addr, new, hops).await };
        let created = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        Ok(self.announced(hops, Change::Created, created))
    }

    /// Sources as the metadata leader has them: it has applied every
    /// source change it answered.
    pub async fn list_sources(
        &self,
        caller: &Caller,
        hops: Hops,
    ) -> Result<Vec<SourceView>, ServiceError> {
        caller.check_unrestricted()?;
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.list_sources(&addr, hops).await;
        }
        let sources: Vec<IngestSource> = self
            .node
            .with_metadata(|m| m.sources.values().cloned().collect())
            .unwrap_or_default();
        let listed = sources.iter().map(|source| self.describe(source, hops));
        Ok(futures::future::join_all(listed).await)
    }

    pub async fn get_source(
        &self,
        caller: &Caller,
        id: &str,
        hops: Hops,
    ) -> Result<SourceView, ServiceError> {
        caller.check_unrestricted()?;
        if hops.local_only {
            // Asked for this replica's counters by the node answering.
            let source = self.find_source(id).await?;
            return Ok(self.describe(&source, hops).await);
        }
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.get_source(&addr, id, hops).await;
        }
        let source = self
            .node
            .with_metadata(|m| m.sources.get(id).cloned())
            .flatten()
            .ok_or_else(|| source_not_found(id))?;
        Ok(self.describe(&source, hops).await)
    }

    pub async fn delete_source(
        &self,
        caller: &Caller,
        id: &str,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        caller.check_unrestricted()?;
        let local = |_: Arc<Group>| async move {
            let id = id.to_string();
            self.node
                .write_source(MetaCommand::DeleteSource { id })
                .await
                .map(|_| ())
        };
        let forward = |addr: String| async move { self.peers.delete_source(&addr, id, hops).await };
        // Named in the event; the source is gone once deleted.
        let topic_name = self
            .node
            .with_metadata(|m| {
                let source = m.sources.get(id)?;
                m.topics.get(&source.topic_id).map(|t| t.name.clone())
            })
            .flatten()
            .unwrap_or_default();
        self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(
            hops,
            PlatformEvent::source(Change::Deleted, id, &topic_name),
        );
        Ok(())
    }

    pub async fn rotate_source_secret(
        &self,
        caller: &Caller,
        id: &str,
        hops: Hops,
    ) -> Result<SourceWithSecret, ServiceError> {
        caller.check_unrestricted()?;
        let local = |_: Arc<Group>| {
            let command = |secret: &str| MetaCommand::RotateSourceSecret {
                id: id.to_string(),
                hash: crate::auth::hash_secret(secret),
                last_four: crate::ingest::last_four(secret),
            };
            self.write_with_new_secret(command, hops)
        };
        let forward =
            |addr: String| async move { self.peers.rotate_source_secret(&addr, id, hops).await };
        let rotated = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        Ok(self.announced(hops, Change::SecretRotated, rotated))
    }

    /// Tells the platform channels about a source written with its secret,
    /// and hands it back.
    fn announced(&self, hops: Hops, change: Change, written: SourceWithSecret) -> SourceWithSecret {
        let source = &written.source;
        self.platform_event(
            hops,
            PlatformEvent::source(change, &source.id, &source.topic_name),
        );
        written
    }

    /// Stores one delivery as an event of the source's topic, after its
    /// secret, signature and idempotency key are checked.
    pub async fn deliver(
        &self,
        delivery: Delivery,
        schema_check: SchemaCheck,
        hops: Hops,
    ) -> Result<Delivered, ServiceError> {
        let delivery_source = delivery.source_id.clone();
        let outcome = self.deliver_once(delivery, schema_check, hops).await;
        // Counted where the delivery arrived from outside, once.
        if hops.count == 0 && !hops.local_only {
            self.node.metrics.delivery(match &outcome {
                Ok(delivered) if delivered.duplicate => "duplicate",
                Ok(_) => "stored",
                Err(e) => e.code.as_str(),
            });
            // A wrong secret or signature: someone is sending what the
            // source's owner did not sign (or a misconfigured sender).
            if let Err(e) = &outcome
                && e.code == ErrorCode::Unauthorized
            {
                self.platform_event(
                    hops,
                    PlatformEvent::webhook_rejected(&delivery_source, &e.message),
                );
            }
        }
        outcome
    }

    async fn deliver_once(
        &self,
        delivery: Delivery,
        schema_check: SchemaCheck,
        hops: Hops,
    ) -> Result<Delivered, ServiceError> {
        let mut source = self.find_source(&delivery.source_id).await?;
        if !crate::auth::secret_matches(&delivery.secret, &source.secret_hash) {
            // A secret rotated a moment ago through another node may not
            // have reached this node yet: wait for it briefly, as for tokens.
            let rotated = self
                .node
                .find_source_where(&delivery.source_id, |s| {
                    crate::auth::secret_matches(&delivery.secret, &s.secret_hash)
                })
                .await;
            source = rotated.ok_or_else(|| refused(DeliveryRefused::BadSecret))?;
        }
        let received_ms = self.node.time.now_ms();
        crate::ingest::check_delivery(
            &source,
            &delivery.secret,
            delivery.signature.as_deref(),
            &delivery.body,
            delivery.idempotency_key.as_deref(),
            received_ms.div_euclid(1000),
        )
        .map_err(refused)?;
        let event_id = crate::ingest::new_event_id(received_ms);
        let value = envelope::message_value(
            &source,
            &event_id,
            &delivery.body,
            delivery.flow.as_ref(),
            received_ms,
        )
        .map_err(|why| refused(DeliveryRefused::InvalidBody(why)))?;
        let (topic, partition) = self.source_partition(&source).ok_or_else(|| ServiceError {
            grpc_code: Some(tonic::Code::FailedPrecondition),
            ..ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "the topic of source {:?} was deleted; create the source again",
                    source.id
                ),
            )
        })?;
        // The message stored, not the body received, is what the topic's
        // schema promises its consumers.
        if schema_check == SchemaCheck::Here {
            let message = Bytes::copy_from_slice(&value);
            self.check_schema(&topic, [message]).await?;
        }
        let headers = [
            (crate::ingest::HEADER_EVENT_ID, event_id.as_str()),
            (crate::ingest::HEADER_SOURCE_ID, source.id.as_str()),
            (crate::ingest::HEADER_SOURCE_TYPE, source.kind.as_str()),
        ];
        let record = RecordBatch::single(source.id.as_bytes(), &value, headers)
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        let (delivery, record, event_id) = (&delivery, &record, &event_id);
        let local = |group: Arc<Group>| async move {
            let command = PartitionCommand::Ingest {
                timestamp_ms: self.node.time.now_ms(),
                source_id: delivery.source_id.clone(),
                event_id: event_id.clone(),
                idempotency_key: delivery.idempotency_key.clone(),
                record: record.clone(),
            };
            match self.node.write_partition(&group, command).await? {
                CommandResponse::Ingested {
                    event_id,
                    offset,
                    duplicate,
                } => Ok(Delivered {
                    event_id,
                    partition,
                    offset,
                    duplicate,
                }),
                other => Err(WriteError::Unavailable(format!(
                    "unexpected ingest response {other:?}"
                ))),
            }
        };
        let forward = |addr: String| async move { self.peers.deliver(&addr, delivery, hops).await };
        self.on_leader(LeaderOf::Partition(&topic, partition), hops, local, forward)
            .await
    }
}
