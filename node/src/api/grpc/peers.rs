//! Calls to other nodes' peer listeners: the service's [`Peers`], carried
//! over gRPC with the node credential and the hop headers.

use raftstream_proto::v1::ingest_client::IngestClient;
use raftstream_proto::v1::subscriptions_client::SubscriptionsClient;

use super::ingest::source_from_pb;
use super::ingest::with_secret_from_pb;
use super::subscriptions::change_to_pb;
use super::subscriptions::changed_from_pb;
use super::subscriptions::view_from_pb;
use super::*;
use crate::api::service::ChangedSubscription;
use crate::api::service::Delivered;
use crate::api::service::Delivery;
use crate::api::service::NewSource;
use crate::api::service::OffsetCommit;
use crate::api::service::PeerCall;
use crate::api::service::SourceView;
use crate::api::service::SourceWithSecret;
use crate::api::service::SubscriptionChange;
use crate::api::service::SubscriptionView;
use crate::model::GroupId;
use crate::model::Offset;
use crate::model::TopicId;

/// Calls to other nodes' peer listeners, signed with the node credential.
#[derive(Debug)]
pub(crate) struct GrpcPeers {
    pub(super) node: Arc<Node>,
}

impl GrpcPeers {
    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.node
            .pool
            .channel(addr)
            .map_err(|e| ErrorCode::Internal.status(e.to_string()))
    }

    pub(super) fn client(&self, addr: &str) -> Result<RaftstreamClient<Channel>, Status> {
        Ok(RaftstreamClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES))
    }

    pub(super) fn ingest_client(&self, addr: &str) -> Result<IngestClient<Channel>, Status> {
        Ok(IngestClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES))
    }

    pub(super) fn subscriptions_client(
        &self,
        addr: &str,
    ) -> Result<SubscriptionsClient<Channel>, Status> {
        Ok(SubscriptionsClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES))
    }

    /// `message` as a request from this node one hop further on, or, with
    /// `hops.local_only`, asking the other node to answer from its own
    /// replicas.
    ///
    /// A node that has not yet applied its cluster's formation does not
    /// know the secret the node credential comes from: sent without it,
    /// the call would be refused as a client's on the peer listener (a
    /// failure the caller must not retry), so it is unavailability here.
    pub(super) fn forwarded<T>(
        &self,
        message: T,
        hops: Hops,
        timeout: Duration,
    ) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        let credential = self
            .node
            .with_metadata(|m| m.cluster_secret)
            .flatten()
            .and_then(|secret| node_credential(&secret).parse().ok());
        let Some(credential) = credential else {
            return Err(ErrorCode::Unavailable.status(
                "this node has not yet applied the cluster's formation and cannot forward; retry",
            ));
        };
        request.metadata_mut().insert(NODE_AUTH_HEADER, credential);
        request.set_timeout(timeout);
        // The request's id goes with it, so its logs on the next node share it.
        if let Some(id) = crate::api::request_id::current()
            .and_then(|id| id.to_str().ok().and_then(|id| id.parse().ok()))
        {
            request
                .metadata_mut()
                .insert(crate::api::request_id::REQUEST_ID_HEADER, id);
        }
        request.metadata_mut().insert(
            crate::link_faults::FROM_NODE_HEADER,
            tonic::metadata::MetadataValue::from(self.node.id().0),
        );
        if hops.local_only {
            request.metadata_mut().insert(
                LOCAL_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        } else if let Ok(value) = (hops.count + 1).to_string().parse() {
            request.metadata_mut().insert(HOPS_HEADER, value);
        }
        Ok(request)
    }

    fn forward_timeout(&self) -> Duration {
        self.node.config.limits.forward_timeout()
    }

    /// Sends `message` through `client` with `send` and returns the other
    /// node's answer, with a call cut off mid-way as an unknown outcome.
    async fn call<C, Req, Resp, Sent>(
        &self,
        client: Result<C, Status>,
        hops: Hops,
        message: Req,
        send: impl FnOnce(C, Request<Req>) -> Sent,
    ) -> Result<Resp, ServiceError>
    where
        Sent: Future<Output = Result<Response<Resp>, Status>>,
    {
        let timeout = self.forward_timeout();
        self.call_within(client, hops, timeout, forward_failure, message, send)
            .await
    }

    /// [`Self::call`] with its own timeout, and `failure` to say what a
    /// failed call means to the caller.
    async fn call_within<C, Req, Resp, Sent>(
        &self,
        client: Result<C, Status>,
        hops: Hops,
        timeout: Duration,
        failure: fn(Status) -> Status,
        message: Req,
        send: impl FnOnce(C, Request<Req>) -> Sent,
    ) -> Result<Resp, ServiceError>
    where
        Sent: Future<Output = Result<Response<Resp>, Status>>,
    {
        let request = self.forwarded(message, hops, timeout)?;
        let response = send(client?, request).await.map_err(failure)?;
        Ok(response.into_inner())
    }
}

/// Calls `method` on the node at `addr` through [`GrpcPeers::call`];
/// `via` names the client (`client`, the `Raftstream` service, by default).
macro_rules! peer_call {
    ($peers:ident, $addr:ident, $hops:ident, $method:ident, $message:expr) => {
        peer_call!(via client, $peers, $addr, $hops, $method, $message)
    };
    (via $client:ident, $peers:ident, $addr:ident, $hops:ident, $method:ident, $message:expr) => {
        $peers.call(
            $peers.$client($addr),
            $hops,
            $message,
            |mut client, request| async move { client.$method(request).await },
        )
    };
}

impl Peers for GrpcPeers {
    fn publish<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        records: &'a [Record],
        producer: Option<ProducerBatch>,
        hops: Hops,
    ) -> PeerCall<'a, Vec<RecordOutcome>> {
        Box::pin(async move {
            let request = pb::PublishBatchRequest {
                topic: Some(pb::TopicRef {
                    topic: Some(pb::topic_ref::Topic::Id(topic_id.0)),
                }),
                records: records.iter().map(record_to_pb).collect(),
                producer: producer.map(|p| pb::ProducerBatch {
                    producer_id: p.producer_id,
                    base_sequence: p.base_sequence,
                }),
            };
            let answer = peer_call!(self, addr, hops, publish_batch, request).await?;
            Ok(answer.results.into_iter().map(outcome_from_pb).collect())
        })
    }

    fn consume<'a>(&'a self, addr: &'a str, read: PeerRead, hops: Hops) -> PeerCall<'a, Page> {
        Box::pin(async move {
            let request = pb::ConsumeRequest {
                topic: Some(pb::TopicRef {
                    topic: Some(pb::topic_ref::Topic::Id(read.topic_id.0)),
                }),
                partition: read.partition,
                position: Some(pb::Position {
                    position: Some(start_to_pb(&read.start, read.partition)),
                }),
                max_messages: read.max_messages,
                wait_ms: read.wait_ms,
                max_bytes: read.max_bytes,
            };
            let timeout = Duration::from_millis(u64::from(read.wait_ms)) + self.forward_timeout();
            let answer = self
                .call_within(
                    self.client(addr),
                    hops,
                    timeout,
                    unanswered_read,
                    request,
                    |mut client, request| async move { client.consume(request).await },
                )
                .await?;
            Ok(page_from_pb(read.partition, answer))
        })
    }

    fn create_topic<'a>(
        &'a self,
        addr: &'a str,
        spec: &'a TopicSpec,
        hops: Hops,
    ) -> PeerCall<'a, Topic> {
        Box::pin(async move {
            let message = spec_to_pb(spec);
            peer_call!(self, addr, hops, create_topic, message)
                .await
                .map(topic_from_pb)
        })
    }

    fn list_topics<'a>(
        &'a self,
        addr: &'a str,
        name: Option<String>,
        hops: Hops,
    ) -> PeerCall<'a, Vec<Topic>> {
        Box::pin(async move {
            let message = pb::ListTopicsRequest { name };
            let answer = peer_call!(self, addr, hops, list_topics, message).await?;
            Ok(answer.topics.into_iter().map(topic_from_pb).collect())
        })
    }

    fn get_topic<'a>(
        &'a self,
        addr: &'a str,
        name: &'a TopicName,
        hops: Hops,
    ) -> PeerCall<'a, Topic> {
        Box::pin(async move {
            let message = topic_ref_to_pb(name);
            peer_call!(self, addr, hops, get_topic, message)
                .await
                .map(topic_from_pb)
        })
    }

    fn update_topic<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        update: &'a TopicUpdate,
        hops: Hops,
    ) -> PeerCall<'a, Topic> {
        Box::pin(async move {
            let message = pb::UpdateTopicRequest {
                topic: topic_by_id(topic_id),
                name: update.name.clone(),
                description: update.description.clone(),
                // The gRPC API removes the schema when given an empty one.
                schema: update
                    .schema
                    .as_ref()
                    .map(|schema| schema.clone().unwrap_or_default()),
                retention: update.retention.as_ref().map(retention_to_pb),
            };
            peer_call!(self, addr, hops, update_topic, message)
                .await
                .map(topic_from_pb)
        })
    }

    fn purge_partition<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::PurgeTopicRequest {
                topic: topic_by_id(topic_id),
                partition: Some(partition),
            };
            peer_call!(self, addr, hops, purge_topic, message)
                .await
                .map(|_| ())
        })
    }

    fn delete_topic<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = topic_ref_to_pb(&TopicName::Id(topic_id));
            peer_call!(self, addr, hops, delete_topic, message)
                .await
                .map(|_| ())
        })
    }

    fn create_token<'a>(
        &'a self,
        addr: &'a str,
        new: &'a NewToken,
        hops: Hops,
    ) -> PeerCall<'a, CreatedToken> {
        Box::pin(async move {
            let message = pb::CreateTokenRequest {
                name: new.name.clone(),
                scopes: new.scopes.iter().map(|s| s.as_str().to_string()).collect(),
                topics: new.topics.clone(),
            };
            let created = peer_call!(self, addr, hops, create_token, message).await?;
            Ok(CreatedToken {
                token: token_from_pb(created.token.unwrap_or_default()),
                secret: created.secret,
            })
        })
    }

    fn list_tokens<'a>(&'a self, addr: &'a str, hops: Hops) -> PeerCall<'a, Vec<TokenInfo>> {
        Box::pin(async move {
            let message = pb::ListTokensRequest {};
            let answer = peer_call!(self, addr, hops, list_tokens, message).await?;
            Ok(answer.tokens.into_iter().map(token_from_pb).collect())
        })
    }

    fn delete_token<'a>(&'a self, addr: &'a str, id: u64, hops: Hops) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::DeleteTokenRequest { id };
            peer_call!(self, addr, hops, delete_token, message)
                .await
                .map(|_| ())
        })
    }

    fn add_node<'a>(
        &'a self,
        addr: &'a str,
        node: NodeId,
        peer_addr: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::AddNodeRequest {
                node_id: node.0,
                peer_addr: peer_addr.to_string(),
            };
            peer_call!(self, addr, hops, add_node, message)
                .await
                .map(|_| ())
        })
    }

    fn remove_node<'a>(&'a self, addr: &'a str, node: NodeId, hops: Hops) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::RemoveNodeRequest { node_id: node.0 };
            peer_call!(self, addr, hops, remove_node, message)
                .await
                .map(|_| ())
        })
    }

    fn move_partition<'a>(
        &'a self,
        addr: &'a str,
        group: GroupId,
        replicas: &'a [NodeId],
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::MovePartitionRequest {
                topic: topic_by_id(group.topic()),
                partition: group.partition_index(),
                replicas: replicas.iter().map(|node| node.0).collect(),
            };
            peer_call!(self, addr, hops, move_partition, message)
                .await
                .map(|_| ())
        })
    }

    fn complete_partition_move<'a>(
        &'a self,
        addr: &'a str,
        group: GroupId,
        replicas: &'a [NodeId],
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::CompletePartitionMoveRequest {
                group_id: group.0,
                replicas: replicas.iter().map(|node| node.0).collect(),
            };
            peer_call!(self, addr, hops, complete_partition_move, message)
                .await
                .map(|_| ())
        })
    }

    fn local_status<'a>(&'a self, addr: &'a str, timeout: Duration) -> PeerCall<'a, ClusterStatus> {
        Box::pin(async move {
            let message = pb::ClusterStatusRequest {};
            let answer = self
                .call_within(
                    self.client(addr),
                    Hops::LOCAL_ONLY,
                    timeout,
                    forward_failure,
                    message,
                    |mut client, request| async move { client.cluster_status(request).await },
                )
                .await?;
            Ok(super::cluster_status_from_pb(answer))
        })
    }

    fn create_source<'a>(
        &'a self,
        addr: &'a str,
        new: &'a NewSource,
        hops: Hops,
    ) -> PeerCall<'a, SourceWithSecret> {
        Box::pin(async move {
            let message = pb::CreateSourceRequest {
                name: new.name.clone(),
                source_type: new.kind.as_str().to_string(),
                topic: Some(topic_ref_to_pb(&new.topic)),
                hmac_secret: new.hmac_secret.clone(),
                tenant_id: new.tenant_id.clone(),
            };
            peer_call!(via ingest_client, self, addr, hops, create_source, message)
                .await
                .map(with_secret_from_pb)
        })
    }

    fn list_sources<'a>(&'a self, addr: &'a str, hops: Hops) -> PeerCall<'a, Vec<SourceView>> {
        Box::pin(async move {
            let message = pb::ListSourcesRequest {};
            let answer =
                peer_call!(via ingest_client, self, addr, hops, list_sources, message).await?;
            Ok(answer.sources.into_iter().map(source_from_pb).collect())
        })
    }

    fn get_source<'a>(
        &'a self,
        addr: &'a str,
        id: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, SourceView> {
        Box::pin(async move {
            let message = pb::GetSourceRequest { id: id.to_string() };
            peer_call!(via ingest_client, self, addr, hops, get_source, message)
                .await
                .map(source_from_pb)
        })
    }

    fn delete_source<'a>(&'a self, addr: &'a str, id: &'a str, hops: Hops) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let message = pb::DeleteSourceRequest { id: id.to_string() };
            peer_call!(via ingest_client, self, addr, hops, delete_source, message)
                .await
                .map(|_| ())
        })
    }

    fn list_subscriptions<'a>(
        &'a self,
        addr: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, Vec<SubscriptionView>> {
        Box::pin(async move {
            let message = pb::ListSubscriptionsRequest {};
            let answer =
                peer_call!(via subscriptions_client, self, addr, hops, list_subscriptions, message)
                    .await?;
            Ok(answer.subscriptions.into_iter().map(view_from_pb).collect())
        })
    }

    fn get_subscription<'a>(
        &'a self,
        addr: &'a str,
        id: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, SubscriptionView> {
        Box::pin(async move {
            let message = pb::GetSubscriptionRequest { id: id.to_string() };
            peer_call!(via subscriptions_client, self, addr, hops, get_subscription, message)
                .await
                .map(view_from_pb)
        })
    }

    fn change_subscription<'a>(
        &'a self,
        addr: &'a str,
        change: &'a SubscriptionChange,
        hops: Hops,
    ) -> PeerCall<'a, ChangedSubscription> {
        Box::pin(async move {
            let message = change_to_pb(change);
            peer_call!(via subscriptions_client, self, addr, hops, change_subscription, message)
                .await
                .map(changed_from_pb)
        })
    }

    fn rotate_source_secret<'a>(
        &'a self,
        addr: &'a str,
        id: &'a str,
        hops: Hops,
    ) -> PeerCall<'a, SourceWithSecret> {
        Box::pin(async move {
            let message = pb::RotateSourceSecretRequest { id: id.to_string() };
            peer_call!(via ingest_client, self, addr, hops, rotate_source_secret, message)
                .await
                .map(with_secret_from_pb)
        })
    }

    fn deliver<'a>(
        &'a self,
        addr: &'a str,
        delivery: &'a Delivery,
        hops: Hops,
    ) -> PeerCall<'a, Delivered> {
        Box::pin(async move {
            let message = pb::DeliverRequest {
                source_id: delivery.source_id.clone(),
                secret: delivery.secret.clone(),
                signature: delivery.signature.clone(),
                idempotency_key: delivery.idempotency_key.clone(),
                body: delivery.body.clone(),
                flow: delivery.flow.as_ref().map(|f| pb::FlowRequest {
                    method: f.method.clone(),
                    headers: f.headers.clone().into_iter().collect(),
                    query: f.query.clone().into_iter().collect(),
                }),
            };
            let answer = peer_call!(via ingest_client, self, addr, hops, deliver, message).await?;
            Ok(Delivered {
                event_id: answer.event_id,
                partition: answer.partition,
                offset: Offset(answer.offset),
                duplicate: answer.duplicate,
            })
        })
    }

    fn commit_offset<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        commit: &'a OffsetCommit,
        hops: Hops,
    ) -> PeerCall<'a, ()> {
        Box::pin(async move {
            let writer = commit.writer.unwrap_or(CommitWriter { id: 0, seq: 0 });
            let message = pb::CommitOffsetRequest {
                topic: topic_by_id(topic_id),
                group: commit.group.clone(),
                partition: commit.partition,
                offset: commit.offset.0,
                writer_id: writer.id,
                writer_seq: writer.seq,
            };
            peer_call!(self, addr, hops, commit_offset, message)
                .await
                .map(|_| ())
        })
    }

    fn committed_offsets<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        group: &'a str,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, Vec<(u32, Offset)>> {
        Box::pin(async move {
            let message = pb::GetCommittedOffsetsRequest {
                topic: topic_by_id(topic_id),
                group: group.to_string(),
                partition: Some(partition),
            };
            let answer = peer_call!(self, addr, hops, get_committed_offsets, message).await?;
            Ok(answer
                .offsets
                .into_iter()
                .map(|o| (o.partition, Offset(o.offset)))
                .collect())
        })
    }

    fn consumer_groups<'a>(
        &'a self,
        addr: &'a str,
        topic_id: TopicId,
        partition: u32,
        hops: Hops,
    ) -> PeerCall<'a, Vec<String>> {
        Box::pin(async move {
            let message = pb::ListGroupsRequest {
                topic: topic_by_id(topic_id),
                partition: Some(partition),
            };
            let answer = peer_call!(self, addr, hops, list_groups, message).await?;
            Ok(answer.groups)
        })
    }
}
