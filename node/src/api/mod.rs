//! The client API, independent of the wire: topic resolution, partition
//! choice, JSON Schema checks of published values (`schema.rs`), metadata
//! writes, committed reads and long polls.
//! The gRPC service (`grpc.rs`) maps it to protobuf and forwards to leaders.

pub mod authenticate_first;
pub mod forwarded;
pub mod grpc;
pub mod read;
pub mod request_id;
pub mod schema;
pub mod service;

use crate::group::write::WriteError;
use crate::model::TopicName;
use crate::node::Node;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::MetaCommand;
use crate::raft::types::Subscription;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;

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

    /// Like [`Node::write_meta`], for push subscription commands.
    pub async fn write_subscription(
        &self,
        command: MetaCommand,
    ) -> Result<Subscription, WriteError> {
        self.write_meta_for(command, |r| match r {
            CommandResponse::Subscription(subscription) => Some(subscription),
            _ => None,
        })
        .await
    }

    /// Like [`Node::write_meta`], for commands answered with nothing but
    /// whether they were applied.
    pub async fn write_meta_ack(&self, command: MetaCommand) -> Result<(), WriteError> {
        self.write_meta_command(command).await.map(|_| ())
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
