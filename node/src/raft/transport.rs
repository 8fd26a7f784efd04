//! The server side of the Raft transport: decode, route by group id, hand
//! the message to that group's openraft instance. Requests for different
//! groups (and for one group) are served concurrently by tonic, and so are
//! the messages of one `AppendEntriesBatch`, which is answered once all are.

use std::future::Future;
use std::sync::Arc;

use futures::future::join_all;
use openraft::alias::SnapshotOf;
use openraft::raft::AppendEntriesRequest;
use openraft::vote::RaftLeaderId as _;
use raftstream_proto::v1::LogRangeReply;
use raftstream_proto::v1::LogRangeRequest;
use raftstream_proto::v1::NodeHeartbeatReply;
use raftstream_proto::v1::NodeHeartbeatRequest;
use raftstream_proto::v1::RaftBatch;
use raftstream_proto::v1::RaftBatchReply;
use raftstream_proto::v1::RaftBatchResult;
use raftstream_proto::v1::RaftMessage;
use raftstream_proto::v1::raft_batch_result;
use raftstream_proto::v1::raft_transport_server::RaftTransport;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::group::Group;
use crate::group::HostedGroups;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::raft::quiesce::Quiescer;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;
use crate::rejoin::Rejoin;

/// What the transport server needs of the node that hosts it: its groups,
/// and the node-wide state that peers' messages consult or update. The
/// node implements it; the transport sees nothing else of the node.
pub trait TransportHost: std::fmt::Debug + Send + Sync + 'static {
    fn hosted_groups(&self) -> &HostedGroups;

    /// Caution after an empty start: which groups may not vote or take
    /// appends yet.
    fn rejoin(&self) -> &Rejoin;

    /// `None` when quiescence is off.
    fn quiescer(&self) -> Option<&Arc<Quiescer>>;

    /// The node's wall clock, which a peer measures its own against.
    fn now_ms(&self) -> i64;

    /// Notes the incarnation a peer's node heartbeat shows, before the
    /// heartbeat is answered.
    fn note_peer_incarnation(
        &self,
        peer: NodeId,
        incarnation: u64,
    ) -> impl Future<Output = ()> + Send;
}

#[derive(Debug)]
pub struct TransportService<H> {
    host: Arc<H>,
}

impl<H> Clone for TransportService<H> {
    fn clone(&self) -> Self {
        Self {
            host: self.host.clone(),
        }
    }
}

impl<H: TransportHost> TransportService<H> {
    pub fn new(host: Arc<H>) -> Self {
        Self { host }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        message: &RaftMessage,
    ) -> Result<(Arc<Group>, T), Status> {
        let group = self
            .host
            .hosted_groups()
            .get(GroupId(message.group_id))
            .ok_or_else(|| {
                Status::not_found(format!(
                    "group {} is not hosted here (yet)",
                    message.group_id
                ))
            })?;
        let request = bincode::deserialize(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
        Ok((group, request))
    }

    async fn append_one(&self, message: RaftMessage) -> Result<RaftMessage, Status> {
        let (group, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.decode(&message)?;
        let term = rpc.vote.leader_id().term();
        self.host
            .rejoin()
            .may_append(GroupId(message.group_id), term)
            .map_err(|refused| {
                Status::unavailable(format!("group {}: {refused}", message.group_id))
            })?;
        self.host.rejoin().on_append(
            GroupId(message.group_id),
            rpc.leader_commit.as_ref().map(|c| c.index),
        );
        reply(message.group_id, group.raft.append_entries(rpc).await).map(Response::into_inner)
    }

    /// [`Self::decode`]s a vote or leadership message. A replica that lost
    /// its data votes, and takes leadership, only once it has caught up
    /// (`rejoin.rs`): until then it refuses them.
    fn decode_unless_cautious<T: DeserializeOwned>(
        &self,
        message: &RaftMessage,
    ) -> Result<(Arc<Group>, T), Status> {
        let group_id = GroupId(message.group_id);
        if self.host.rejoin().is_cautious(group_id) {
            return Err(Status::unavailable(format!(
                "group {group_id}: this replica started with an empty data directory and is \
                 catching up; it votes once it has"
            )));
        }
        self.decode(message)
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(
    group_id: u64,
    result: Result<T, E>,
) -> Result<Response<RaftMessage>, Status> {
    let value = result.map_err(|e| Status::unavailable(format!("group {group_id}: {e}")))?;
    let payload = bincode::serialize(&value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        group_id,
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl<H: TransportHost> RaftTransport for TransportService<H> {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.append_one(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn append_entries_batch(
        &self,
        request: Request<RaftBatch>,
    ) -> Result<Response<RaftBatchReply>, Status> {
        let messages = request.into_inner().messages;
        let answers = join_all(messages.into_iter().map(|message| async move {
            let group_id = message.group_id;
            let result = match self.append_one(message).await {
                Ok(reply) => raft_batch_result::Result::Payload(reply.payload),
                Err(status) if status.code() == tonic::Code::NotFound => {
                    raft_batch_result::Result::NotHosted(status.message().to_string())
                }
                Err(status) => raft_batch_result::Result::Error(status.message().to_string()),
            };
            RaftBatchResult {
                group_id,
                result: Some(result),
            }
        }))
        .await;
        Ok(Response::new(RaftBatchReply { results: answers }))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let (group, rpc) = self.decode_unless_cautious(&message)?;
        reply(message.group_id, group.raft.vote(rpc).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let (group, rpc) = self.decode_unless_cautious(&message)?;
        reply(message.group_id, group.raft.pre_vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let (group, (vote, meta, data)): (_, (Vote, SnapshotMeta, Vec<u8>)) =
            self.decode(&message)?;
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        };
        reply(
            message.group_id,
            group.raft.install_full_snapshot(vote, snapshot).await,
        )
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let message = request.into_inner();
        let (group, rpc) = self.decode_unless_cautious(&message)?;
        reply(
            message.group_id,
            group.raft.handle_transfer_leader(rpc).await,
        )
    }

    /// Committed entries of a partition's log for another replica's
    /// backfill (`backfill.rs`). Like every call here it reaches only the
    /// peer listener: mutual TLS and the cluster id admit the caller.
    async fn read_log_range(
        &self,
        request: Request<LogRangeRequest>,
    ) -> Result<Response<LogRangeReply>, Status> {
        let request = request.into_inner();
        let query = crate::raft::log_range::query_of(&request);
        let answer = crate::raft::log_range::serve_log_range(self.host.hosted_groups(), &query)
            .await
            .map_err(|e| crate::raft::log_range::status_of(&e))?;
        Ok(Response::new(crate::raft::log_range::reply_of(
            query.group_id,
            answer,
        )))
    }

    async fn node_heartbeat(
        &self,
        request: Request<NodeHeartbeatRequest>,
    ) -> Result<Response<NodeHeartbeatReply>, Status> {
        if let Some(quiescer) = self.host.quiescer() {
            quiescer.on_heartbeat(request.get_ref());
        }
        let beat = request.get_ref();
        self.host
            .note_peer_incarnation(NodeId(beat.from), beat.incarnation)
            .await;
        // A node that is stopping, or whose storage failed, has no metadata
        // to tell from: it must not pass for a node of a new cluster.
        let cluster_formed = self
            .host
            .hosted_groups()
            .with_metadata(|m| m.cluster_secret.is_some())
            .ok_or_else(|| Status::unavailable("this node is stopping"))?;
        let group_terms = beat
            .terms_wanted
            .iter()
            .filter(|group| !self.host.rejoin().is_cautious(GroupId(**group)))
            .map(|group| {
                let term = self
                    .host
                    .hosted_groups()
                    .get(GroupId(*group))
                    .map_or(0, |g| g.with_metrics(|m| m.current_term));
                (*group, term)
            })
            .collect();
        Ok(Response::new(NodeHeartbeatReply {
            now_ms: self.host.now_ms(),
            cluster_formed,
            group_terms,
        }))
    }
}
