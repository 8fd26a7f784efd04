//! Topic and token management: metadata commands proposed on the metadata
//! group's leader (or carried there through [`Peers`]), and partition
//! purges on each partition's leader.

use std::sync::Arc;

use super::Caller;
use super::Hops;
use super::LeaderOf;
use super::Route;
use super::Service;
use super::ServiceError;
use super::selected_partitions;
use crate::group::Group;
use crate::group::write::WriteError;
use crate::model::TopicName;
use crate::platform::Change;
use crate::platform::PlatformEvent;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaState;
use crate::raft::types::PartitionCommand;
use crate::raft::types::Scope;
use crate::raft::types::TokenRecord;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::raft::types::TopicUpdate;
use crate::state_machine::meta::validate_spec;
use crate::state_machine::meta::validate_token;

/// A token to create: its topics by name (or id), resolved on the
/// metadata leader.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub topics: Vec<String>,
}

/// A token as callers see it: never its secret's hash, and its topics by
/// their current names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: u64,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub topics: Vec<String>,
    pub created_at_ms: i64,
}

impl TokenInfo {
    pub fn of(token: &TokenRecord, meta: &MetaState) -> TokenInfo {
        TokenInfo {
            id: token.id,
            name: token.name.clone(),
            scopes: token.scopes.clone(),
            topics: token.topic_names(meta),
            created_at_ms: token.created_at_ms,
        }
    }
}

/// A token just created, with the secret shown this once.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub token: TokenInfo,
    pub secret: String,
}

/// The longest a topic's creation waits for its partitions' first leaders
/// (see [`Service::await_partition_leaders`]).
const NEW_TOPIC_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Service {
    /// Refuses a schema offered for a topic that is too large or does not
    /// compile, before it is stored: publishes to the topic would fail.
    /// Checked here, not when the command is applied, so that entries an
    /// older version committed are never judged by newer limits.
    async fn check_schema_document(&self, schema: &str) -> Result<(), ServiceError> {
        self.node
            .schemas
            .check_document(schema)
            .await
            .map_err(|e| ServiceError::invalid(e.to_string()))
    }

    /// `topic` once this node has applied its version: a read here right
    /// after a change it made (on whichever node led) sees the change.
    async fn applied_here(&self, topic: Topic) -> Topic {
        self.node
            .await_topic_applied(topic.id, Some(topic.version))
            .await;
        topic
    }

    pub async fn create_topic(
        &self,
        caller: &Caller,
        spec: TopicSpec,
        hops: Hops,
    ) -> Result<Topic, ServiceError> {
        caller.check_unrestricted()?;
        caller.check_topic_name_writable(&spec.name, hops)?;
        validate_spec(&spec, self.node.placeable_nodes().len())
            .map_err(|e| ServiceError::invalid(e.to_string()))?;
        if let Some(schema) = &spec.schema {
            self.check_schema_document(schema).await?;
        }
        let spec = &spec;
        let local = |_: Arc<Group>| async move {
            let command = MetaCommand::CreateTopic {
                spec: spec.clone(),
                now_ms: self.node.time.now_ms(),
            };
            self.node.write_meta(command).await
        };
        let forward =
            |addr: String| async move { self.peers.create_topic(&addr, spec, hops).await };
        let topic = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        let topic = self.applied_here(topic).await;
        self.platform_event(
            hops,
            PlatformEvent::topic(Change::Created, topic.id.0, &topic.name),
        );
        // Only the node the client called waits: the metadata leader a
        // create was forwarded to answers at once.
        if hops.count == 0 {
            self.await_partition_leaders(&topic).await;
        }
        Ok(topic)
    }

    /// Waits, up to [`NEW_TOPIC_LEADER_WAIT`] in all, until every partition
    /// of a topic just created that this node hosts has started here and
    /// has a leader this node knows, so that a publish sent right after
    /// the create answered is not refused while the partitions' first
    /// elections run. A topic whose leaders take longer is still created;
    /// publishes then wait for them on their own (see `Service::route`).
    async fn await_partition_leaders(&self, topic: &Topic) {
        let me = self.node.id();
        let deadline = tokio::time::Instant::now() + NEW_TOPIC_LEADER_WAIT;
        let hosted = topic
            .partitions
            .iter()
            .enumerate()
            .filter(|(_, replicas)| replicas.contains(&me))
            .map(|(partition, _)| async move {
                let group_id = topic.group_id(partition as u32);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let group = self.node.hosted_groups().wait_for(group_id, left).await?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                group.await_leader(left).await
            });
        let leaders = futures::future::join_all(hosted).await;
        let without_leader = leaders.iter().filter(|l| l.is_none()).count();
        if without_leader > 0 {
            tracing::warn!(
                topic = %topic.name,
                without_leader,
                "created a topic whose partitions have not all elected a leader yet"
            );
        }
    }

    /// Topics as the metadata leader has them, which has applied every
    /// topic change it acknowledged: a listing sees every acknowledged
    /// create, update and delete. `name` keeps only the topic of that name.
    pub async fn list_topics(
        &self,
        name: Option<String>,
        hops: Hops,
    ) -> Result<Vec<Topic>, ServiceError> {
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.list_topics(&addr, name, hops).await;
        }
        Ok(self
            .node
            .metadata()
            .topics
            .values()
            .filter(|t| name.as_ref().is_none_or(|n| &t.name == n))
            .cloned()
            .collect())
    }

    /// A topic as the metadata leader has it (see [`Service::list_topics`]),
    /// so a topic deleted or changed through another node is never seen as
    /// it was.
    pub async fn current_topic(&self, name: &TopicName, hops: Hops) -> Result<Topic, ServiceError> {
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.get_topic(&addr, name, hops).await;
        }
        self.node
            .find_topic(name)
            .ok_or_else(|| ServiceError::no_such_topic(name))
    }

    pub async fn update_topic(
        &self,
        caller: &Caller,
        name: &TopicName,
        update: TopicUpdate,
        hops: Hops,
    ) -> Result<Topic, ServiceError> {
        let topic = self.topic(name).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        caller.check_topic_name_writable(&topic.name, hops)?;
        if let Some(new_name) = &update.name {
            caller.check_topic_name_writable(new_name, hops)?;
        }
        if let Some(Some(schema)) = &update.schema {
            self.check_schema_document(schema).await?;
        }
        let (update, topic_id) = (&update, topic.id);
        let local = |_: Arc<Group>| async move {
            let command = MetaCommand::UpdateTopic {
                topic_id,
                update: update.clone(),
                now_ms: self.node.time.now_ms(),
            };
            self.node.write_meta(command).await
        };
        let forward = |addr: String| async move {
            self.peers.update_topic(&addr, topic_id, update, hops).await
        };
        let topic = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(
            hops,
            PlatformEvent::topic(Change::Updated, topic.id.0, &topic.name),
        );
        Ok(self.applied_here(topic).await)
    }

    /// Deletes every retained message of one partition, or of all.
    pub async fn purge_topic(
        &self,
        caller: &Caller,
        name: &TopicName,
        partition: Option<u32>,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        let topic = self.topic(name).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        let partitions = selected_partitions(&topic, partition)?;
        let topic = &topic;
        // Partitions are independent groups: purge them all at once.
        let purges = partitions.into_iter().map(|partition| async move {
            let local = |group: Arc<Group>| async move {
                self.node
                    .write_partition(&group, PartitionCommand::PurgeAll)
                    .await
                    .map(|_| ())
            };
            let forward = |addr: String| async move {
                self.peers
                    .purge_partition(&addr, topic.id, partition, hops)
                    .await
            };
            self.on_leader(LeaderOf::Partition(topic, partition), hops, local, forward)
                .await
        });
        for outcome in futures::future::join_all(purges).await {
            outcome?;
        }
        Ok(())
    }

    pub async fn delete_topic(
        &self,
        caller: &Caller,
        name: &TopicName,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        let topic = self.topic(name).await?;
        caller.check_topic(Scope::Admin, &topic)?;
        caller.check_topic_name_writable(&topic.name, hops)?;
        let topic_id = topic.id;
        let local = |_: Arc<Group>| async move {
            self.node
                .write_meta(MetaCommand::DeleteTopic { topic_id })
                .await
                .map(|_| ())
        };
        let forward =
            |addr: String| async move { self.peers.delete_topic(&addr, topic_id, hops).await };
        self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.node.await_topic_applied(topic_id, None).await;
        self.platform_event(
            hops,
            PlatformEvent::topic(Change::Deleted, topic_id.0, &topic.name),
        );
        Ok(())
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        new: NewToken,
        hops: Hops,
    ) -> Result<CreatedToken, ServiceError> {
        caller.check_unrestricted()?;
        validate_token(&new.name, &new.scopes).map_err(|e| ServiceError::invalid(e.to_string()))?;
        let new = &new;
        let local = |_: Arc<Group>| async move {
            // Resolved here, on the metadata leader, which has applied
            // every topic change it acknowledged; apply checks the ids
            // again in case a topic is deleted meanwhile.
            let topic_ids = self
                .node
                .with_metadata(|m| crate::auth::resolve_token_topics(m, &new.topics))
                .ok_or_else(|| {
                    WriteError::Unavailable("this node is shutting down; retry another".into())
                })?
                .map_err(WriteError::Rejected)?;
            let secret = crate::auth::generate_secret();
            let command = MetaCommand::CreateTokenWithTopicIds {
                name: new.name.clone(),
                scopes: new.scopes.clone(),
                topic_ids,
                hash: crate::auth::hash_secret(&secret),
                now_ms: self.node.time.now_ms(),
            };
            let token = self.node.write_token(command).await?;
            let token = self
                .node
                .with_metadata(|m| TokenInfo::of(&token, m))
                .unwrap_or_else(|| TokenInfo::of(&token, &MetaState::default()));
            Ok(CreatedToken { token, secret })
        };
        let forward = |addr: String| async move { self.peers.create_token(&addr, new, hops).await };
        let created = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(
            hops,
            PlatformEvent::token(Change::Created, created.token.id, &created.token.name),
        );
        Ok(created)
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        hops: Hops,
    ) -> Result<Vec<TokenInfo>, ServiceError> {
        caller.check_unrestricted()?;
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.list_tokens(&addr, hops).await;
        }
        Ok(self
            .node
            .with_metadata(|m| m.tokens.values().map(|t| TokenInfo::of(t, m)).collect())
            .unwrap_or_default())
    }

    pub async fn delete_token(
        &self,
        caller: &Caller,
        id: u64,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        caller.check_unrestricted()?;
        // Named in the event; the token is gone once deleted.
        let name = self
            .node
            .with_metadata(|m| m.tokens.get(&id).map(|t| t.name.clone()))
            .flatten()
            .unwrap_or_default();
        let local = |_: Arc<Group>| async move {
            self.node
                .write_token(MetaCommand::DeleteToken { id })
                .await
                .map(|_| ())
        };
        let forward = |addr: String| async move { self.peers.delete_token(&addr, id, hops).await };
        self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(hops, PlatformEvent::token(Change::Deleted, id, &name));
        Ok(())
    }
}
