//! The `raftstream.v1.Ingest` service over the client API's core: webhook
//! sources (admin scope) and deliveries (authenticated by the source's own
//! secret), and the calls that carry them to other nodes.

use raftstream_proto::v1::ingest_server::Ingest;
use raftstream_proto::v1::ingest_server::IngestServer;

use super::*;
use crate::api::service::Delivery;
use crate::api::service::NewSource;
use crate::api::service::SourceStatus;
use crate::api::service::SourceView;
use crate::api::service::SourceWithSecret;
use crate::ingest::envelope::FlowRequest;
use crate::model::TopicId;
use crate::raft::types::SourceKind;

impl ClientService {
    pub fn into_ingest_server(self) -> IngestServer<Self> {
        let max_request_bytes = self.max_request_bytes();
        IngestServer::new(self)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }
}

fn source_to_pb(source: SourceView) -> pb::Source {
    pb::Source {
        id: source.id,
        name: source.name,
        source_type: source.kind.as_str().to_string(),
        topic_id: source.topic_id.0,
        topic_name: source.topic_name,
        partition: source.partition,
        status: source.status.as_str().to_string(),
        created_at_ms: source.created_at_ms,
        last_event_ms: source.last_event_ms,
        event_count: source.event_count,
        secret_last_four: source.secret_last_four,
        hmac: source.hmac,
        tenant_id: source.tenant_id,
    }
}

/// A source from another node; it stores only types it parsed.
pub(super) fn source_from_pb(source: pb::Source) -> SourceView {
    SourceView {
        kind: SourceKind::parse(&source.source_type).unwrap_or(SourceKind::Generic),
        status: SourceStatus::parse(&source.status),
        id: source.id,
        name: source.name,
        topic_id: TopicId(source.topic_id),
        topic_name: source.topic_name,
        partition: source.partition,
        created_at_ms: source.created_at_ms,
        last_event_ms: source.last_event_ms,
        event_count: source.event_count,
        secret_last_four: source.secret_last_four,
        hmac: source.hmac,
        tenant_id: source.tenant_id,
    }
}

fn with_secret_to_pb(created: SourceWithSecret) -> pb::SourceWithSecret {
    pb::SourceWithSecret {
        source: Some(source_to_pb(created.source)),
        secret: created.secret,
    }
}

pub(super) fn with_secret_from_pb(created: pb::SourceWithSecret) -> SourceWithSecret {
    SourceWithSecret {
        source: source_from_pb(created.source.unwrap_or_default()),
        secret: created.secret,
    }
}

#[tonic::async_trait]
impl Ingest for ClientService {
    async fn create_source(
        &self,
        request: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::SourceWithSecret>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let kind = SourceKind::parse(&request.source_type).ok_or_else(|| {
            ErrorCode::InvalidRequest.status("source_type must be workato, generic or flow")
        })?;
        let new = NewSource {
            topic: topic_name(request.topic.as_ref())?,
            name: request.name,
            kind,
            tenant_id: request.tenant_id,
            hmac_secret: request.hmac_secret,
        };
        let created = self.core.create_source(&caller, new, hops).await?;
        Ok(Response::new(with_secret_to_pb(created)))
    }

    async fn list_sources(
        &self,
        request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let (caller, hops, _) = self.admit(request, Some(Scope::Admin)).await?;
        let sources = self.core.list_sources(&caller, hops).await?;
        Ok(Response::new(pb::ListSourcesResponse {
            sources: sources.into_iter().map(source_to_pb).collect(),
        }))
    }

    async fn get_source(
        &self,
        request: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let source = self.core.get_source(&caller, &request.id, hops).await?;
        Ok(Response::new(source_to_pb(source)))
    }

    async fn delete_source(
        &self,
        request: Request<pb::DeleteSourceRequest>,
    ) -> Result<Response<pb::DeleteSourceResponse>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        self.core.delete_source(&caller, &request.id, hops).await?;
        Ok(Response::new(pb::DeleteSourceResponse {}))
    }

    async fn rotate_source_secret(
        &self,
        request: Request<pb::RotateSourceSecretRequest>,
    ) -> Result<Response<pb::SourceWithSecret>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let rotated = self
            .core
            .rotate_source_secret(&caller, &request.id, hops)
            .await?;
        Ok(Response::new(with_secret_to_pb(rotated)))
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let hops = hops_of(&request);
        let schema_check = self.schema_check();
        let request = request.into_inner();
        let delivery = Delivery {
            source_id: request.source_id,
            secret: request.secret,
            signature: request.signature,
            idempotency_key: request.idempotency_key,
            body: request.body,
            flow: request.flow.map(|f| FlowRequest {
                method: f.method,
                headers: f.headers.into_iter().collect(),
                query: f.query.into_iter().collect(),
            }),
        };
        let delivered = self.core.deliver(delivery, schema_check, hops).await?;
        Ok(Response::new(pb::DeliverResponse {
            event_id: delivered.event_id,
            partition: delivered.partition,
            offset: delivered.offset.0,
            duplicate: delivered.duplicate,
        }))
    }
}
