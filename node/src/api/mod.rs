//! The client API, independent of the wire: topic resolution, partition
//! choice, JSON Schema checks of published values (`schema.rs`), writes with
//! their three outcomes, committed reads and long polls.
//! The gRPC service (`grpc.rs`) maps it to protobuf and forwards to leaders.

pub mod authenticate_first;
pub mod forwarded;
pub mod grpc;
pub mod read;
pub mod schema;
pub mod service;

use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::responder::ProgressResponder;

use crate::group::Group;
use crate::model::TopicName;
use crate::node::Node;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::PartitionCommand;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;
use crate::state_machine::GroupData;

/// How long a producer's batch waits on the leader for the producer's
/// earlier batches to be proposed before it is proposed anyway. The batch
/// ahead is normally a request already on its way; if it never comes, the
/// state machine refuses this one as out of sequence, as it would have.
const PROPOSAL_ORDER_WAIT: Duration = Duration::from_millis(250);

/// Why a write did not succeed. `Unknown` is not a failure: the entry may
/// or may not commit, and a client that retries must be ready for either.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this node does not lead the group")]
    NotLeader { leader_addr: Option<String> },
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Rejected(MetaRejection),
    /// The node's disk is nearly full: nothing was written.
    #[error("{0}")]
    InsufficientStorage(String),
}

impl Node {
    pub fn find_topic(&self, name: &TopicName) -> Option<Topic> {
        self.with_metadata(|meta| match name {
            TopicName::Id(id) => meta.topics.get(id).cloned(),
            TopicName::Name(n) => meta.topic_by_name(n).cloned(),
        })
        .flatten()
    }

    /// Chooses a partition: explicit, else by key hash, else round-robin.
    pub fn choose_partition(
        &self,
        topic: &Topic,
        explicit: Option<u32>,
        key: &[u8],
    ) -> Result<u32, String> {
        let count = topic.partitions.len() as u32;
        match explicit {
            Some(p) if p < count => Ok(p),
            Some(p) => Err(format!(
                "topic {} has {count} partitions; partition {p} does not exist",
                topic.name
            )),
            None if !key.is_empty() => {
                Ok((xxhash_rust::xxh3::xxh3_64(key) % u64::from(count)) as u32)
            }
            None => Ok((self.next_round_robin() % u64::from(count)) as u32),
        }
    }

    fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.config.limits.write_timeout_ms)
    }

    /// Proposes a command on a local group and waits for it to be applied,
    /// which happens only after a majority fsynced it.
    pub async fn write(
        &self,
        group: &Group,
        command: Command,
    ) -> Result<CommandResponse, WriteError> {
        self.write_then(group, command, || {}).await
    }

    /// Like [`Node::write`]; `queued` runs as soon as the command is in the
    /// group's Raft queue, ahead of every command proposed after that.
    async fn write_then(
        &self,
        group: &Group,
        command: Command,
        queued: impl FnOnce(),
    ) -> Result<CommandResponse, WriteError> {
        if let Command::Partition(PartitionCommand::Append { .. } | PartitionCommand::Ingest { .. }) =
            &command
            && let Some(low) = self.disk.low_on_space()
        {
            return Err(WriteError::InsufficientStorage(low));
        }
        if let Some(quiescer) = self.quiescer() {
            quiescer.wake_for_write(group).await;
        }
        let (responder, applied) = ProgressResponder::complete_only();
        let proposed = group.raft.client_write_ff(command, Some(responder)).await;
        queued();
        if let Err(e) = proposed {
            // The group had stopped: the command never reached it.
            return Err(WriteError::Unavailable(format!("the group stopped: {e}")));
        }
        match tokio::time::timeout(self.write_timeout(), applied).await {
            Err(_) => Err(WriteError::Unknown(format!(
                "not committed within {} ms; it may still commit",
                self.config.limits.write_timeout_ms
            ))),
            // The group stopped (shutdown or a disk it no longer trusts)
            // after the entry may have reached the followers.
            Ok(Err(_)) => Err(WriteError::Unknown(
                "the group stopped before the entry was known to commit".into(),
            )),
            Ok(Ok(Ok(response))) => Ok(response.data),
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                let leader_addr = f.leader_node.map(|n| n.addr);
                Err(WriteError::NotLeader { leader_addr })
            }
            Ok(Ok(Err(ClientWriteError::LogEntryDiscarded(_)))) => Err(WriteError::Unknown(
                "the leader changed before the entry was known to commit".into(),
            )),
            Ok(Ok(Err(e))) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Proposes a partition command. An idempotent producer's batch is
    /// proposed only after the producer's earlier batches (see
    /// [`crate::group::ProposalOrder`]), waiting at most `PROPOSAL_ORDER_WAIT`.
    pub async fn write_partition(
        &self,
        group: &Group,
        command: PartitionCommand,
    ) -> Result<CommandResponse, WriteError> {
        let PartitionCommand::Append {
            producer: Some((producer, base_sequence)),
            records,
            ..
        } = &command
        else {
            return self.write(group, Command::Partition(command)).await;
        };
        let (producer, base_sequence, count) = (*producer, *base_sequence, records.len() as u64);
        let applied_next = group.state.read(|inner| match &inner.data {
            GroupData::Partition(p) => p.producers.get(&producer).map_or(0, |s| s.next_sequence),
            GroupData::Meta(_) => 0,
        });
        group
            .proposal_order
            .wait_turn(producer, base_sequence, applied_next, PROPOSAL_ORDER_WAIT)
            .await;
        self.write_then(group, Command::Partition(command), || {
            group
                .proposal_order
                .proposed(producer, base_sequence, count)
        })
        .await
    }

    /// Proposes a metadata command on the local metadata group (which must
    /// lead) and returns the resulting topic.
    pub async fn write_meta(&self, command: MetaCommand) -> Result<Topic, WriteError> {
        self.write_meta_for(command, |r| match r {
            CommandResponse::Topic(topic) => Some(topic),
            _ => None,
        })
        .await
    }

    /// Like [`Node::write_meta`], for token commands.
    pub async fn write_token(&self, command: MetaCommand) -> Result<TokenRecord, WriteError> {
        self.write_meta_for(command, |r| match r {
            CommandResponse::Token(token) => Some(token),
            _ => None,
        })
        .await
    }

    /// Like [`Node::write_meta`], for webhook source commands.
    pub async fn write_source(&self, command: MetaCommand) -> Result<IngestSource, WriteError> {
        self.write_meta_for(command, |r| match r {
            CommandResponse::Source(source) => Some(source),
            _ => None,
        })
        .await
    }

    /// Proposes `command` and picks the response of the kind it expects.
    async fn write_meta_for<T>(
        &self,
        command: MetaCommand,
        pick: impl FnOnce(CommandResponse) -> Option<T>,
    ) -> Result<T, WriteError> {
        pick(self.write_meta_command(command).await?).ok_or_else(|| {
            WriteError::Unavailable("unexpected response to a metadata command".into())
        })
    }

    async fn write_meta_command(
        &self,
        command: MetaCommand,
    ) -> Result<CommandResponse, WriteError> {
        let group = self
            .meta_group()
            .ok_or_else(|| WriteError::Unavailable("metadata group is not running".into()))?;
        match self.write(&group, Command::Meta(command)).await? {
            CommandResponse::MetaRejected(rejection) => Err(WriteError::Rejected(rejection)),
            response => Ok(response),
        }
    }
}
