//! Publishes the node's platform events (`crate::platform`) to the system
//! topics through the ordinary publish path, and notices the leaderships
//! this node takes. The topics are created on first use by whichever node
//! publishes first; a node that loses that race finds the topic the other
//! created.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftstream_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio::sync::watch;

use super::Caller;
use super::Hops;
use super::Publish;
use super::Service;
use super::ServiceError;
use crate::model::GroupId;
use crate::model::TopicName;
use crate::platform::Channel;
use crate::platform::PlatformEvent;
use crate::platform::Queued;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;

/// The most events one publish carries.
const MAX_EVENTS_PER_PUBLISH: usize = 100;
/// How often the node looks for leaderships it took.
const LEADERSHIP_ROUND: Duration = Duration::from_millis(250);
/// How often a node that does not know its cluster's id yet looks again.
const CLUSTER_ID_POLL: Duration = Duration::from_millis(50);
/// How long the system topics keep their events: a week.
const RETENTION_MS: u64 = 7 * 24 * 60 * 60 * 1000;

impl Service {
    /// Publishes this node's platform events until it shuts down; returns
    /// at once when they are off (`platform_events = false`).
    pub async fn run_platform_events(self: Arc<Self>) {
        let Some(mut queue) = self.node.platform.take_receiver() else {
            return;
        };
        let mut shutdown = self.node.shutdown_signal();
        let mut topics: HashMap<Channel, Topic> = HashMap::new();
        let mut led: HashMap<GroupId, u64> = HashMap::new();
        let mut round = tokio::time::interval(LEADERSHIP_ROUND);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                first = queue.recv() => {
                    let Some(first) = first else { break };
                    // Events name the cluster they happened in: a node that
                    // has not applied its cluster's formation yet holds them
                    // until it knows the id.
                    let Some(cluster_id) = self.known_cluster_id(&mut shutdown).await else {
                        break;
                    };
                    let events = drain(first, &mut queue);
                    self.publish_platform_events(&mut topics, &cluster_id, events).await;
                }
                _ = round.tick() => self.note_leaderships(&mut led),
                _ = shutdown.changed() => break,
            }
        }
    }

    /// The cluster's id once this node knows it; `None` on shutdown.
    async fn known_cluster_id(&self, shutdown: &mut watch::Receiver<bool>) -> Option<String> {
        let mut poll = tokio::time::interval(CLUSTER_ID_POLL);
        loop {
            if let Some(id) = self.node.pool.cluster().get() {
                return Some(id.to_string());
            }
            tokio::select! {
                _ = poll.tick() => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// Emits `leader.changed` for each group this node has started leading
    /// since the last round (`led`: the term it was last seen leading in).
    /// Only the new leader reports, so a change is reported once. A round
    /// runs four times a second over every group, idle or not, so it reads
    /// each group's leader and term and nothing else; only a new leadership
    /// looks up its topic's name.
    fn note_leaderships(&self, led: &mut HashMap<GroupId, u64>) {
        let me = self.node.id();
        let leading: HashMap<GroupId, u64> = self
            .node
            .groups()
            .iter()
            .filter_map(|group| Some((group.id, group.leading_term(me)?)))
            .collect();
        led.retain(|group, _| leading.contains_key(group));
        for (group, term) in leading {
            if led.insert(group, term) == Some(term) {
                continue;
            }
            let topic = self
                .node
                .with_metadata(|m| m.topics.get(&group.topic()).map(|t| t.name.clone()))
                .flatten()
                .unwrap_or_default();
            self.node.platform.emit(PlatformEvent::leader_changed(
                group,
                &topic,
                group.partition_index(),
                me,
                term,
            ));
        }
    }

    /// Publishes `events`, one call per channel. Events that cannot be
    /// published are dropped (counted and logged): nothing waits on them.
    async fn publish_platform_events(
        &self,
        topics: &mut HashMap<Channel, Topic>,
        cluster_id: &str,
        events: Vec<Queued>,
    ) {
        let mut by_channel: HashMap<Channel, Vec<(String, Bytes)>> = HashMap::new();
        for queued in events {
            let kind = queued.event.kind.clone();
            let channel = queued.event.channel;
            let id = uuid::Uuid::now_v7().to_string();
            let stamped = queued
                .event
                .stamp(id, queued.time_ms, self.node.id(), cluster_id);
            match serde_json::to_vec(&stamped) {
                Ok(value) => by_channel
                    .entry(channel)
                    .or_default()
                    .push((kind, value.into())),
                Err(e) => self.node.platform.dropped(&kind, &e.to_string()),
            }
        }
        for (channel, events) in by_channel {
            if let Err(e) = self.publish_to_channel(topics, channel, &events).await {
                // The topic may have been recreated or moved: look it up
                // again next time.
                topics.remove(&channel);
                for (kind, _) in &events {
                    self.node.platform.dropped(kind, &e.message);
                }
            }
        }
    }

    async fn publish_to_channel(
        &self,
        topics: &mut HashMap<Channel, Topic>,
        channel: Channel,
        events: &[(String, Bytes)],
    ) -> Result<(), ServiceError> {
        let topic = match topics.get(&channel) {
            Some(topic) => topic.clone(),
            None => {
                let topic = self.platform_topic(channel).await?;
                topics.insert(channel, topic.clone());
                topic
            }
        };
        let call = Publish::checked_values(events.iter().map(|(_, value)| value.clone()));
        let outcomes = self
            .publish_to(&Caller::Platform, &topic, call, Hops::default())
            .await?;
        match outcomes.into_iter().find_map(Result::err) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The channel's topic, created when missing. Two nodes creating it at
    /// once is harmless: the one refused finds the other's.
    async fn platform_topic(&self, channel: Channel) -> Result<Topic, ServiceError> {
        let name = TopicName::Name(channel.topic().to_string());
        if let Some(topic) = self.node.find_topic(&name) {
            return Ok(topic);
        }
        let spec = TopicSpec {
            name: channel.topic().to_string(),
            description: format!("Platform events: {}", channel.topic()),
            partitions: 1,
            replication_factor: 0,
            schema: None,
            retention: RetentionPolicy {
                retention_ms: Some(RETENTION_MS),
                retention_bytes: None,
            },
        };
        match self
            .create_topic(&Caller::Platform, spec, Hops::default())
            .await
        {
            Ok(topic) => Ok(topic),
            Err(e) if e.code == ErrorCode::Conflict => {
                self.current_topic(&name, Hops::default()).await
            }
            Err(e) => Err(e),
        }
    }
}

/// `first` and whatever else is queued, up to one publish's worth.
fn drain(first: Queued, queue: &mut mpsc::Receiver<Queued>) -> Vec<Queued> {
    let mut events = vec![first];
    while events.len() < MAX_EVENTS_PER_PUBLISH {
        match queue.try_recv() {
            Ok(queued) => events.push(queued),
            Err(_) => break,
        }
    }
    events
}
