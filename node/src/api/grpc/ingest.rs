//! The `raftstream.v1.Ingest` service: webhook sources (admin scope) and
//! deliveries (authenticated by the source's own secret).
//!
//! A delivery is appended to one partition of the source's topic, chosen by
//! hashing the source id, as a `PartitionCommand::Ingest`: that one entry
//! appends the event, counts it for the source and records its idempotency
//! key, so a repeated delivery can never be stored twice. It is answered
//! only after the entry committed on a majority, like any publish.

use raftstream_proto::v1::ingest_client::IngestClient;
use raftstream_proto::v1::ingest_server::Ingest;
use raftstream_proto::v1::ingest_server::IngestServer;

use super::*;
use crate::api::WriteError;
use crate::ingest::DeliveryRefused;
use crate::ingest::envelope;
use crate::ingest::envelope::FlowRequest;
use crate::raft::batch::RecordBatch;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::SourceKind;
use crate::raft::types::SourceTopic;
use crate::state_machine::meta::validate_source;
use crate::state_machine::meta::validate_topic_name;
use crate::state_machine::partition::SourceStats;

const STATUS_AWAITING_FIRST_EVENT: &str = "awaiting_first_event";
const STATUS_ACTIVE: &str = "active";
/// The counters could not be read (the partition has no leader).
const STATUS_UNKNOWN: &str = "unknown";
/// How long a source read waits for its partition leader's counters
/// before showing them as unknown: a listing must not hang on one
/// unreachable partition.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

impl ClientService {
    pub fn into_ingest_server(self) -> IngestServer<Self> {
        let max_request_bytes = self.max_request_bytes();
        IngestServer::new(self)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }

    fn ingest_client(&self, addr: &str) -> Result<IngestClient<Channel>, Status> {
        let channel = self
            .node
            .pool
            .channel(addr)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(IngestClient::new(channel)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES))
    }

    async fn find_source(&self, id: &str) -> Result<IngestSource, Status> {
        if self.node.meta_group().is_none() {
            return Err(Status::unavailable(
                "this node is shutting down; retry another",
            ));
        }
        self.node
            .find_source(id)
            .await
            .ok_or_else(|| Status::not_found(format!("source {id:?} does not exist")))
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
    async fn describe(&self, source: &IngestSource, hops: Hops) -> pb::Source {
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
        self.source_pb(source, stats)
    }

    fn source_pb(&self, source: &IngestSource, stats: Option<SourceStats>) -> pb::Source {
        let placement = self.source_partition(source);
        let (status, stats) = match stats {
            Some(stats) if stats.event_count > 0 => (STATUS_ACTIVE, stats),
            Some(stats) => (STATUS_AWAITING_FIRST_EVENT, stats),
            None => (STATUS_UNKNOWN, SourceStats::default()),
        };
        pb::Source {
            id: source.id.clone(),
            name: source.name.clone(),
            source_type: source.kind.as_str().to_string(),
            topic_id: source.topic_id,
            topic_name: placement
                .as_ref()
                .map(|(t, _)| t.name.clone())
                .unwrap_or_default(),
            partition: placement.map_or(0, |(_, p)| p),
            status: status.to_string(),
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
        let replicas = replicas_of(topic, partition).ok()?;
        match self
            .core
            .route(topic.group_id(partition), &replicas, hops)
            .await
        {
            Ok(Route::Local(group)) => Some(local_stats(&group, &source.id)),
            Ok(Route::Forward(addr)) => {
                let message = pb::GetSourceRequest {
                    id: source.id.clone(),
                };
                let request = self.peers.forwarded(message, LOCAL_ONLY, STATS_TIMEOUT);
                let answer = self.ingest_client(&addr).ok()?.get_source(request).await;
                let remote = answer.ok()?.into_inner();
                (remote.status != STATUS_UNKNOWN).then_some(SourceStats {
                    event_count: remote.event_count,
                    last_event_ms: remote.last_event_ms.unwrap_or(0),
                })
            }
            Err(_) => None,
        }
    }

    /// Writes a command that gives a source a new secret and answers with
    /// the secret, shown this once. A new source has had no deliveries, so
    /// only a rotated one has counters to read.
    async fn write_with_secret(
        &self,
        command: MetaCommand,
        secret: String,
        hops: Hops,
    ) -> Result<pb::SourceWithSecret, WriteError> {
        let is_new = matches!(command, MetaCommand::CreateSource { .. });
        let source = self.node.write_source(command).await?;
        let source = if is_new {
            self.source_pb(&source, Some(SourceStats::default()))
        } else {
            self.describe(&source, hops).await
        };
        Ok(pb::SourceWithSecret {
            source: Some(source),
            secret,
        })
    }

    /// The source a create request asks for, stamped with this node's
    /// time.
    fn new_source(
        &self,
        request: &pb::CreateSourceRequest,
        id: String,
        secret: &str,
    ) -> IngestSource {
        IngestSource {
            id,
            name: request.name.clone(),
            kind: SourceKind::parse(&request.source_type).unwrap_or(SourceKind::Generic),
            topic_id: 0,
            tenant_id: match request.tenant_id.trim() {
                "" => "default".to_string(),
                tenant => tenant.to_string(),
            },
            secret_hash: crate::auth::hash_secret(secret),
            secret_last_four: crate::ingest::last_four(secret),
            hmac_secret: request.hmac_secret.clone(),
            created_at_ms: self.node.time.now_ms(),
        }
    }
}

fn local_stats(group: &Group, source_id: &str) -> SourceStats {
    group.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => p.source_stats.get(source_id).copied().unwrap_or_default(),
        GroupData::Meta(_) => SourceStats::default(),
    })
}

fn refused(why: DeliveryRefused) -> Status {
    match why {
        DeliveryRefused::BadSecret | DeliveryRefused::Signature(_) => {
            Status::unauthenticated(why.to_string())
        }
        DeliveryRefused::TooLarge
        | DeliveryRefused::InvalidBody(_)
        | DeliveryRefused::InvalidIdempotencyKey => Status::invalid_argument(why.to_string()),
    }
}

#[tonic::async_trait]
impl Ingest for ClientService {
    async fn create_source(
        &self,
        request: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::SourceWithSecret>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = hops_of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        if SourceKind::parse(&request.source_type).is_none() {
            return Err(Status::invalid_argument(
                "source_type must be workato, generic or flow",
            ));
        }
        let topic = match topic_name(request.topic.as_ref())? {
            TopicName::Id(id) => SourceTopic::Existing(id),
            TopicName::Name(name) => {
                validate_topic_name(&name).map_err(|e| Status::invalid_argument(e.to_string()))?;
                SourceTopic::CreateIfMissing(TopicSpec {
                    description: format!("Events of webhook source {:?}", request.name),
                    name,
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
        crate::ingest::validate_hmac_secret(request.hmac_secret.as_deref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        validate_source(&self.new_source(&request, String::new(), ""))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (request, topic) = (&request, &topic);
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let secret = crate::ingest::new_source_secret();
                let command = MetaCommand::CreateSource {
                    source: self.new_source(request, crate::ingest::new_source_id(), &secret),
                    topic: topic.clone(),
                };
                self.write_with_secret(command, secret, hops).await
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let request = request.clone();
                forward!(via ingest_client, self, addr, create_source, request, hops)
                    .map(Response::into_inner)
            })
        };
        Ok(Response::new(
            self.core.on_meta_leader(hops, local, forward).await?,
        ))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = hops_of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        // The metadata leader has applied every source change it answered.
        if let Route::Forward(addr) = self.core.meta_route(hops).await? {
            return forward!(via ingest_client, self, addr, list_sources, request, hops);
        }
        let sources: Vec<IngestSource> = self
            .node
            .with_metadata(|m| m.sources.values().cloned().collect())
            .unwrap_or_default();
        let listed = sources.iter().map(|source| self.describe(source, hops));
        let sources = futures::future::join_all(listed).await;
        Ok(Response::new(pb::ListSourcesResponse { sources }))
    }

    async fn get_source(
        &self,
        request: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = hops_of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        if hops.local_only {
            // Asked for this replica's counters by the node answering.
            let source = self.find_source(&request.id).await?;
            return Ok(Response::new(self.describe(&source, hops).await));
        }
        if let Route::Forward(addr) = self.core.meta_route(hops).await? {
            return forward!(via ingest_client, self, addr, get_source, request, hops);
        }
        let source = self
            .node
            .with_metadata(|m| m.sources.get(&request.id).cloned())
            .flatten()
            .ok_or_else(|| Status::not_found(format!("source {:?} does not exist", request.id)))?;
        Ok(Response::new(self.describe(&source, hops).await))
    }

    async fn delete_source(
        &self,
        request: Request<pb::DeleteSourceRequest>,
    ) -> Result<Response<pb::DeleteSourceResponse>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = hops_of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        let request = &request;
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let id = request.id.clone();
                self.node
                    .write_source(MetaCommand::DeleteSource { id })
                    .await
                    .map(|_| pb::DeleteSourceResponse {})
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let request = request.clone();
                forward!(via ingest_client, self, addr, delete_source, request, hops)
                    .map(Response::into_inner)
            })
        };
        Ok(Response::new(
            self.core.on_meta_leader(hops, local, forward).await?,
        ))
    }

    async fn rotate_source_secret(
        &self,
        request: Request<pb::RotateSourceSecretRequest>,
    ) -> Result<Response<pb::SourceWithSecret>, Status> {
        let caller = self.authorize(&request, Some(Scope::Admin)).await?;
        let hops = hops_of(&request);
        let request = request.into_inner();
        caller.check_unrestricted()?;
        let request = &request;
        let local = |_: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let secret = crate::ingest::new_source_secret();
                let command = MetaCommand::RotateSourceSecret {
                    id: request.id.clone(),
                    hash: crate::auth::hash_secret(&secret),
                    last_four: crate::ingest::last_four(&secret),
                };
                self.write_with_secret(command, secret, hops).await
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let request = request.clone();
                forward!(via ingest_client, self, addr, rotate_source_secret, request, hops)
                    .map(Response::into_inner)
            })
        };
        Ok(Response::new(
            self.core.on_meta_leader(hops, local, forward).await?,
        ))
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let hops = hops_of(&request);
        let schema_check = self.schema_check();
        let request = request.into_inner();
        let mut source = self.find_source(&request.source_id).await?;
        if !crate::auth::secret_matches(&request.secret, &source.secret_hash) {
            // A secret rotated a moment ago through another node may not
            // have reached this node yet: wait for it briefly, as for tokens.
            let rotated = self
                .node
                .find_source_where(&request.source_id, |s| {
                    crate::auth::secret_matches(&request.secret, &s.secret_hash)
                })
                .await;
            source = rotated.ok_or_else(|| refused(DeliveryRefused::BadSecret))?;
        }
        let received_ms = self.node.time.now_ms();
        crate::ingest::check_delivery(
            &source,
            &request.secret,
            request.signature.as_deref(),
            &request.body,
            request.idempotency_key.as_deref(),
            received_ms.div_euclid(1000),
        )
        .map_err(refused)?;
        let flow = request.flow.as_ref().map(|f| FlowRequest {
            method: f.method.clone(),
            headers: f.headers.clone().into_iter().collect(),
            query: f.query.clone().into_iter().collect(),
        });
        let event_id = crate::ingest::new_event_id();
        let value = envelope::message_value(
            &source,
            &event_id,
            &request.body,
            flow.as_ref(),
            received_ms,
        )
        .map_err(|why| refused(DeliveryRefused::InvalidBody(why)))?;
        let (topic, partition) = self.source_partition(&source).ok_or_else(|| {
            Status::failed_precondition(format!(
                "the topic of source {:?} was deleted; create the source again",
                source.id
            ))
        })?;
        // The message stored, not the body received, is what the topic's
        // schema promises its consumers.
        if schema_check == SchemaCheck::Here {
            let message = bytes::Bytes::copy_from_slice(&value);
            self.core.check_schema(&topic, [message]).await?;
        }
        let replicas = replicas_of(&topic, partition)?;
        let headers = [
            (crate::ingest::HEADER_EVENT_ID, event_id.as_str()),
            (crate::ingest::HEADER_SOURCE_ID, source.id.as_str()),
            (crate::ingest::HEADER_SOURCE_TYPE, source.kind.as_str()),
        ];
        let record = RecordBatch::single(source.id.as_bytes(), &value, headers)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (request, record, event_id) = (&request, &record, &event_id);
        let local = |group: Arc<Group>| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let command = PartitionCommand::Ingest {
                    timestamp_ms: self.node.time.now_ms(),
                    source_id: request.source_id.clone(),
                    event_id: event_id.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    record: record.clone(),
                };
                match self.node.write_partition(&group, command).await? {
                    CommandResponse::Ingested {
                        event_id,
                        offset,
                        duplicate,
                    } => Ok(pb::DeliverResponse {
                        event_id,
                        partition,
                        offset,
                        duplicate,
                    }),
                    other => Err(WriteError::Unavailable(format!(
                        "unexpected ingest response {other:?}"
                    ))),
                }
            })
        };
        let forward = |addr: String| -> BoxFuture<'_, _> {
            Box::pin(async move {
                let request = request.clone();
                forward!(via ingest_client, self, addr, deliver, request, hops)
                    .map(Response::into_inner)
            })
        };
        let delivered = self
            .core
            .on_leader(topic.group_id(partition), &replicas, hops, local, forward)
            .await?;
        Ok(Response::new(delivered))
    }
}
