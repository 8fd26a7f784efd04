//! Consumer groups' committed offsets, kept by each partition's group and
//! read and written on its leader.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Caller;
use super::Hops;
use super::LeaderOf;
use super::Route;
use super::Service;
use super::ServiceError;
use super::selected_partitions;
use crate::group::Group;
use crate::model::Offset;
use crate::model::TopicName;
use crate::raft::types::CommitWriter;
use crate::raft::types::PartitionCommand;
use crate::raft::types::Scope;
use crate::raft::types::Topic;
use crate::state_machine::GroupData;
use crate::state_machine::partition::PartitionState;

/// A consumer group's position in one partition: the next offset it reads.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    pub group: String,
    pub partition: u32,
    pub offset: Offset,
    /// Orders one client's retried commits (see [`CommitWriter`]).
    pub writer: Option<CommitWriter>,
}

impl Service {
    pub async fn commit_offset(
        &self,
        caller: &Caller,
        topic: &TopicName,
        commit: OffsetCommit,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        if commit.group.is_empty() {
            return Err(ServiceError::invalid("group must not be empty"));
        }
        let topic = self.readable_topic(caller, topic).await?;
        let (commit, topic_id) = (&commit, topic.id);
        let local = |group: Arc<Group>| async move {
            let command = PartitionCommand::CommitOffset {
                group: commit.group.clone(),
                offset: commit.offset,
                writer: commit.writer,
            };
            self.node.write_partition(&group, command).await.map(|_| ())
        };
        let forward = |addr: String| async move {
            self.peers
                .commit_offset(&addr, topic_id, commit, hops)
                .await
        };
        self.on_leader(
            LeaderOf::Partition(&topic, commit.partition),
            hops,
            local,
            forward,
        )
        .await
    }

    /// The offsets `group` committed, by partition, read on each
    /// partition's leader; partitions it never committed are absent.
    pub async fn committed_offsets(
        &self,
        caller: &Caller,
        topic: &TopicName,
        group: &str,
        partition: Option<u32>,
        hops: Hops,
    ) -> Result<Vec<(u32, Offset)>, ServiceError> {
        let topic = self.readable_topic(caller, topic).await?;
        let here = |partition, state: &PartitionState| {
            let committed = state.consumer_offsets.get(group);
            committed
                .map(|c| (partition, c.offset))
                .into_iter()
                .collect()
        };
        let there = |addr: String, partition| async move {
            self.peers
                .committed_offsets(&addr, topic.id, group, partition, hops)
                .await
        };
        self.read_on_partition_leaders(&topic, partition, hops, here, there)
            .await
    }

    /// The consumer groups that committed an offset in the topic (or one
    /// partition of it), in name order.
    pub async fn consumer_groups(
        &self,
        caller: &Caller,
        topic: &TopicName,
        partition: Option<u32>,
        hops: Hops,
    ) -> Result<Vec<String>, ServiceError> {
        let topic = self.readable_topic(caller, topic).await?;
        let here = |_, state: &PartitionState| state.consumer_offsets.keys().cloned().collect();
        let there = |addr: String, partition| async move {
            self.peers
                .consumer_groups(&addr, topic.id, partition, hops)
                .await
        };
        let groups = self
            .read_on_partition_leaders(&topic, partition, hops, here, there)
            .await?;
        let groups: BTreeSet<String> = groups.into_iter().collect();
        Ok(groups.into_iter().collect())
    }

    /// Reads each selected partition of `topic` on its leader: `here` from
    /// this node's state when it leads the partition, else `there` from the
    /// leader. Just after an election or a restart a leader's applied state
    /// can lag what is committed, so this node first catches up: a read
    /// never misses a commit already acknowledged.
    async fn read_on_partition_leaders<T, There>(
        &self,
        topic: &Topic,
        partition: Option<u32>,
        hops: Hops,
        here: impl Fn(u32, &PartitionState) -> Vec<T>,
        there: impl Fn(String, u32) -> There,
    ) -> Result<Vec<T>, ServiceError>
    where
        There: Future<Output = Result<Vec<T>, ServiceError>>,
    {
        let mut read = Vec::new();
        for partition in selected_partitions(topic, partition)? {
            match self
                .route(LeaderOf::Partition(topic, partition), hops)
                .await?
            {
                Route::Forward(addr) => read.extend(there(addr, partition).await?),
                Route::Local(local) => {
                    self.caught_up_leader(&local).await?;
                    read.extend(local.state.read(|inner| match &inner.data {
                        GroupData::Partition(state) => here(partition, state),
                        GroupData::Meta(_) => Vec::new(),
                    }));
                }
            }
        }
        Ok(read)
    }

    /// The topic, if the caller may consume it.
    async fn readable_topic(
        &self,
        caller: &Caller,
        topic: &TopicName,
    ) -> Result<Topic, ServiceError> {
        let topic = self.topic(topic).await?;
        caller.check_topic(Scope::Consume, &topic)?;
        Ok(topic)
    }
}
