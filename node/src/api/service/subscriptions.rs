//! Push subscriptions (admin scope): their definitions, written on the
//! metadata leader, and their delivery positions, read from each
//! partition's leader. Delivery is `crate::push`.

use std::sync::Arc;
use std::time::Duration;

use super::Caller;
use super::Consume;
use super::Hops;
use super::LeaderOf;
use super::Route;
use super::Service;
use super::ServiceError;
use crate::api::read::StartAt;
use crate::group::Group;
use crate::group::write::WriteError;
use crate::model::Offset;
use crate::model::TopicId;
use crate::model::TopicName;
use crate::platform::Change;
use crate::platform::PlatformEvent;
use crate::raft::types::DeliveryStart;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::PayloadFilter;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::SourceTopic;
use crate::raft::types::Subscription;
use crate::raft::types::SubscriptionSettings;
use crate::raft::types::SubscriptionUpdate;
use crate::raft::types::TopicSpec;
use crate::state_machine::meta::validate_topic_name;
use crate::state_machine::subscriptions as checks;
use raftstream_proto::ErrorCode;

/// How long a subscription read waits for its partitions' positions
/// before showing them as unknown: a listing must not hang on one
/// unreachable partition.
const POSITIONS_TIMEOUT: Duration = Duration::from_secs(2);

const SUBSCRIPTION_ID_PREFIX: &str = "sub_";
const SECRET_PREFIX: &str = "whsec_";
/// The dead-letter topic a subscription gets when it names none.
const DEAD_LETTER_SUFFIX: &str = ".dead-letter";

/// A subscription to create.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub name: String,
    pub topic: TopicName,
    pub endpoint: String,
    pub filter: Option<PayloadFilter>,
    /// Zero fields take the defaults.
    pub settings: SubscriptionSettings,
    /// `<topic name>.dead-letter`, created when missing, if `None`.
    pub dead_letter_topic: Option<String>,
    /// Generated if `None`.
    pub secret: Option<String>,
    /// Messages published from the creation on, if `None`.
    pub start: Option<DeliveryStart>,
}

/// One call that changes a subscription.
#[derive(Debug, Clone)]
pub enum SubscriptionChange {
    Create(NewSubscription),
    Update {
        id: String,
        update: SubscriptionUpdate,
    },
    Delete {
        id: String,
    },
    SetPaused {
        id: String,
        paused: bool,
    },
    Replay {
        id: String,
        from: DeliveryStart,
    },
}

/// Where delivery stands in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPosition {
    pub partition: u32,
    /// The next offset to deliver; `None` before the first delivery of this
    /// generation, or when the partition's leader could not be asked.
    pub next_offset: Option<Offset>,
    pub high_watermark: Option<Offset>,
}

/// A subscription as callers see it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    pub id: String,
    pub name: String,
    pub topic_id: TopicId,
    /// Empty once the topic is gone.
    pub topic_name: String,
    pub endpoint: String,
    pub filter: Option<PayloadFilter>,
    pub settings: SubscriptionSettings,
    pub dead_letter_topic_id: TopicId,
    pub dead_letter_topic_name: String,
    pub paused: bool,
    pub generation: u64,
    pub secret_last_four: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub positions: Vec<PartitionPosition>,
}

/// A subscription after a change; `secret` only on creation, shown once.
#[derive(Debug, Clone)]
pub struct ChangedSubscription {
    pub subscription: SubscriptionView,
    pub secret: Option<String>,
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::NotFound,
        format!("subscription {id:?} does not exist"),
    )
}

fn invalid(rejection: crate::raft::types::MetaRejection) -> ServiceError {
    ServiceError::invalid(rejection.to_string())
}

impl Service {
    /// Creates, changes or deletes a subscription on the metadata leader.
    pub async fn change_subscription(
        &self,
        caller: &Caller,
        change: SubscriptionChange,
        hops: Hops,
    ) -> Result<ChangedSubscription, ServiceError> {
        caller.check_unrestricted()?;
        self.check_change(&change)?;
        if let Some(name) = self.dead_letter_name(&change) {
            caller.check_topic_name_writable(&name, hops)?;
        }
        let change = &change;
        let local = |_: Arc<Group>| async move {
            let (command, secret) = self.command_for(change)?;
            let subscription = self.node.write_subscription(command).await?;
            Ok(Changed::Here(subscription, secret))
        };
        let forward = |addr: String| async move {
            self.peers
                .change_subscription(&addr, change, hops)
                .await
                .map(Changed::There)
        };
        let answer = self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        let changed = match answer {
            Changed::There(changed) => changed,
            Changed::Here(subscription, secret) => ChangedSubscription {
                subscription: self.subscription_view(&subscription, hops).await,
                secret,
            },
        };
        let kind = match change {
            SubscriptionChange::Create(_) => Change::Created,
            SubscriptionChange::Update { .. } => Change::Updated,
            SubscriptionChange::Delete { .. } => Change::Deleted,
            SubscriptionChange::SetPaused { paused: true, .. } => Change::Paused,
            SubscriptionChange::SetPaused { paused: false, .. } => Change::Resumed,
            SubscriptionChange::Replay { .. } => Change::Replayed,
        };
        let view = &changed.subscription;
        self.platform_event(
            hops,
            PlatformEvent::subscription(kind, &view.id, &view.topic_name),
        );
        Ok(changed)
    }

    /// The dead-letter topic a creation names, or the default one it
    /// would get (`<topic>.dead-letter`), to refuse a name in the system
    /// topics' namespace before anything is proposed.
    fn dead_letter_name(&self, change: &SubscriptionChange) -> Option<String> {
        let SubscriptionChange::Create(new) = change else {
            return None;
        };
        new.dead_letter_topic.clone().or_else(|| {
            self.node
                .find_topic(&new.topic)
                .map(|topic| format!("{}{DEAD_LETTER_SUFFIX}", topic.name))
        })
    }

    /// Every subscription, in id order, with its positions, as the
    /// metadata leader has them: it has applied every change it answered,
    /// where a follower may not have yet.
    pub async fn subscriptions(
        &self,
        caller: &Caller,
        hops: Hops,
    ) -> Result<Vec<SubscriptionView>, ServiceError> {
        caller.check_unrestricted()?;
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.list_subscriptions(&addr, hops).await;
        }
        let stored = self
            .node
            .with_metadata(|m| m.subscriptions.values().cloned().collect::<Vec<_>>())
            .ok_or_else(ServiceError::shutting_down)?;
        let views = stored.iter().map(|s| self.subscription_view(s, hops));
        Ok(futures::future::join_all(views).await)
    }

    pub async fn subscription(
        &self,
        caller: &Caller,
        id: &str,
        hops: Hops,
    ) -> Result<SubscriptionView, ServiceError> {
        caller.check_unrestricted()?;
        if let Route::Forward(addr) = self.route(LeaderOf::Meta, hops).await? {
            return self.peers.get_subscription(&addr, id, hops).await;
        }
        let stored = self
            .node
            .with_metadata(|m| m.subscriptions.get(id).cloned())
            .ok_or_else(ServiceError::shutting_down)?
            .ok_or_else(|| not_found(id))?;
        Ok(self.subscription_view(&stored, hops).await)
    }

    /// Refuses a change that cannot apply before it is proposed, so the
    /// caller learns which field is wrong; apply checks again.
    fn check_change(&self, change: &SubscriptionChange) -> Result<(), ServiceError> {
        match change {
            SubscriptionChange::Create(new) => {
                checks::validate_name(&new.name).map_err(invalid)?;
                checks::validate_endpoint(&new.endpoint).map_err(invalid)?;
                if let Some(filter) = &new.filter {
                    checks::validate_filter(filter).map_err(invalid)?;
                }
                if let Some(secret) = &new.secret {
                    checks::validate_secret(secret).map_err(invalid)?;
                }
                checks::validate_settings(&SubscriptionSettings::or_defaults(new.settings))
                    .map_err(invalid)?;
                if let Some(name) = &new.dead_letter_topic {
                    validate_topic_name(name).map_err(invalid)?;
                }
            }
            SubscriptionChange::Update { update, .. } => {
                if let Some(name) = &update.name {
                    checks::validate_name(name).map_err(invalid)?;
                }
                if let Some(endpoint) = &update.endpoint {
                    checks::validate_endpoint(endpoint).map_err(invalid)?;
                }
                if let Some(Some(filter)) = &update.filter {
                    checks::validate_filter(filter).map_err(invalid)?;
                }
            }
            SubscriptionChange::Delete { .. }
            | SubscriptionChange::SetPaused { .. }
            | SubscriptionChange::Replay { .. } => {}
        }
        Ok(())
    }

    /// The metadata command for `change`, stamped with this node's time,
    /// and the secret a creation reveals.
    fn command_for(
        &self,
        change: &SubscriptionChange,
    ) -> Result<(MetaCommand, Option<String>), WriteError> {
        let now_ms = self.node.time.now_ms();
        Ok(match change {
            SubscriptionChange::Create(new) => {
                let topic = self.node.find_topic(&new.topic).ok_or_else(|| {
                    WriteError::Rejected(match &new.topic {
                        TopicName::Id(topic_id) => MetaRejection::TopicNotFound {
                            topic_id: *topic_id,
                        },
                        TopicName::Name(name) => {
                            MetaRejection::TopicNameNotFound { name: name.clone() }
                        }
                    })
                })?;
                let secret = match &new.secret {
                    Some(secret) => secret.clone(),
                    None => crate::auth::generate_prefixed_secret(SECRET_PREFIX),
                };
                let dead_letter_name = new
                    .dead_letter_topic
                    .clone()
                    .unwrap_or_else(|| format!("{}{DEAD_LETTER_SUFFIX}", topic.name));
                let dead_letter = SourceTopic::CreateIfMissing(TopicSpec {
                    description: format!("Messages subscription {:?} could not deliver", new.name),
                    name: dead_letter_name,
                    partitions: 1,
                    replication_factor: 0,
                    schema: None,
                    retention: RetentionPolicy {
                        retention_ms: None,
                        retention_bytes: None,
                    },
                });
                let subscription = Subscription {
                    id: crate::ingest::random_id(SUBSCRIPTION_ID_PREFIX),
                    name: new.name.clone(),
                    topic_id: topic.id,
                    endpoint: new.endpoint.clone(),
                    filter: new.filter.clone(),
                    settings: SubscriptionSettings::or_defaults(new.settings),
                    dead_letter_topic_id: TopicId(0),
                    secret_last_four: crate::ingest::last_four(&secret),
                    secret: secret.clone(),
                    paused: false,
                    generation: 0,
                    start: new.start.unwrap_or(DeliveryStart::TimeMs(now_ms)),
                    created_at_ms: now_ms,
                    updated_at_ms: now_ms,
                };
                let command = MetaCommand::CreateSubscription {
                    subscription: Box::new(subscription),
                    dead_letter,
                };
                (command, Some(secret))
            }
            SubscriptionChange::Update { id, update } => (
                MetaCommand::UpdateSubscription {
                    id: id.clone(),
                    update: update.clone(),
                    now_ms,
                },
                None,
            ),
            SubscriptionChange::Delete { id } => {
                (MetaCommand::DeleteSubscription { id: id.clone() }, None)
            }
            SubscriptionChange::SetPaused { id, paused } => (
                MetaCommand::SetSubscriptionPaused {
                    id: id.clone(),
                    paused: *paused,
                    now_ms,
                },
                None,
            ),
            SubscriptionChange::Replay { id, from } => (
                MetaCommand::ReplaySubscription {
                    id: id.clone(),
                    from: *from,
                    now_ms,
                },
                None,
            ),
        })
    }

    /// The subscription as the API shows it, with the positions its
    /// partitions' leaders hold (unknown where they cannot be read in time).
    async fn subscription_view(&self, stored: &Subscription, hops: Hops) -> SubscriptionView {
        let topic = self.node.find_topic(&TopicName::Id(stored.topic_id));
        let dead_letter = self
            .node
            .find_topic(&TopicName::Id(stored.dead_letter_topic_id));
        let positions = match &topic {
            Some(topic) => {
                let reads = (0..topic.partitions.len() as u32)
                    .map(|partition| self.position(stored, topic, partition, hops));
                futures::future::join_all(reads).await
            }
            None => Vec::new(),
        };
        SubscriptionView {
            id: stored.id.clone(),
            name: stored.name.clone(),
            topic_id: stored.topic_id,
            topic_name: topic.map(|t| t.name).unwrap_or_default(),
            endpoint: stored.endpoint.clone(),
            filter: stored.filter.clone(),
            settings: stored.settings,
            dead_letter_topic_id: stored.dead_letter_topic_id,
            dead_letter_topic_name: dead_letter.map(|t| t.name).unwrap_or_default(),
            paused: stored.paused,
            generation: stored.generation,
            secret_last_four: stored.secret_last_four.clone(),
            created_at_ms: stored.created_at_ms,
            updated_at_ms: stored.updated_at_ms,
            positions,
        }
    }

    async fn position(
        &self,
        stored: &Subscription,
        topic: &crate::raft::types::Topic,
        partition: u32,
        hops: Hops,
    ) -> PartitionPosition {
        let topic_name = TopicName::Id(topic.id);
        let group = stored.position_group();
        let committed =
            self.committed_offsets(&Caller::Node, &topic_name, &group, Some(partition), hops);
        let latest = Consume {
            partition,
            start: StartAt::Latest,
            max_messages: 1,
            wait_ms: 0,
            max_bytes: 1,
        };
        let end = self.consume_from(&Caller::Node, topic, latest, hops);
        let (committed, end) = futures::join!(
            tokio::time::timeout(POSITIONS_TIMEOUT, committed),
            tokio::time::timeout(POSITIONS_TIMEOUT, end)
        );
        PartitionPosition {
            partition,
            next_offset: committed
                .ok()
                .and_then(Result::ok)
                .and_then(|offsets| offsets.first().map(|(_, offset)| *offset)),
            high_watermark: end
                .ok()
                .and_then(Result::ok)
                .map(|page| page.batch.high_watermark),
        }
    }
}

/// Where a change was made: here (the stored subscription and the secret
/// to reveal) or on the leader it was forwarded to.
enum Changed {
    Here(Subscription, Option<String>),
    There(ChangedSubscription),
}
