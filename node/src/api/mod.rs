//! The client API, independent of the wire: topic resolution, partition
//! choice, writes with their three outcomes, committed reads and long polls.
//! The gRPC service (`grpc.rs`) maps it to protobuf and forwards to leaders.

pub mod grpc;
pub mod read;

use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;

use crate::node::Group;
use crate::node::Node;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::PartitionCommand;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;

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
}

/// A topic named by id or by name, as every API accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicName {
    Id(u64),
    Name(String),
}

impl TopicName {
    /// Digits name a topic by id (names may not be numbers).
    pub fn parse(text: &str) -> TopicName {
        match text.parse::<u64>() {
            Ok(id) => TopicName::Id(id),
            Err(_) => TopicName::Name(text.to_string()),
        }
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicName::Id(id) => write!(f, "{id}"),
            TopicName::Name(name) => write!(f, "{name:?}"),
        }
    }
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
        if let Some(quiescer) = self.quiescer() {
            quiescer.wake_for_write(group).await;
        }
        let write = group.raft.client_write(command);
        match tokio::time::timeout(self.write_timeout(), write).await {
            Err(_) => Err(WriteError::Unknown(format!(
                "not committed within {} ms; it may still commit",
                self.config.limits.write_timeout_ms
            ))),
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                let leader_addr = f.leader_node.map(|n| n.addr);
                Err(WriteError::NotLeader { leader_addr })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => {
                Err(WriteError::Unknown(
                    "the leader changed before the entry was known to commit".into(),
                ))
            }
            Ok(Err(RaftError::APIError(e))) => Err(WriteError::Unavailable(e.to_string())),
            // The group stopped (shutdown or a disk it no longer trusts)
            // after the entry may have reached the followers.
            Ok(Err(RaftError::Fatal(e))) => {
                Err(WriteError::Unknown(format!("the group stopped: {e}")))
            }
        }
    }

    pub async fn write_partition(
        &self,
        group: &Group,
        command: PartitionCommand,
    ) -> Result<CommandResponse, WriteError> {
        self.write(group, Command::Partition(command)).await
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
