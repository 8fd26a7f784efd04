//! The metadata group's state machine: topics and their placement.

use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::TopicId;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::IngestSource;
use crate::raft::types::MAX_TOPIC_PARTITIONS;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::raft::types::Scope;
use crate::raft::types::SourceTopic;
use crate::raft::types::Subscription;
use crate::raft::types::TokenRecord;
use crate::raft::types::TokenTopic;
use crate::raft::types::Topic;
use crate::raft::types::TopicSpec;
use crate::state_machine::fields::check_none_moved_back;
use crate::state_machine::fields::set_if_given;

pub const TOPIC_NAME_MAX_CHARS: usize = 255;
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;

/// Checks a topic name. Shared by the API layer (for an early, clear error)
/// and by apply (so a forwarded or replayed command is judged the same way).
pub fn validate_topic_name(name: &str) -> Result<(), MetaRejection> {
    if name.trim().is_empty() {
        return Err(MetaRejection::Invalid(
            "topic name must not be empty".into(),
        ));
    }
    if name.chars().count() > TOPIC_NAME_MAX_CHARS {
        return Err(MetaRejection::Invalid(format!(
            "topic name is longer than {TOPIC_NAME_MAX_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(MetaRejection::Invalid(
            "topic name must not contain control characters".into(),
        ));
    }
    if name.parse::<u64>().is_ok() {
        return Err(MetaRejection::Invalid(
            "topic name must not be a number: numbers name topics by id".into(),
        ));
    }
    Ok(())
}

/// A schema must at least be a JSON document a JSON Schema can be (an
/// object or a boolean). The API layer also bounds its size and compiles it
/// (`api::schema`), before the command is proposed: apply does not, so that
/// entries committed under older limits are judged the same on replay.
pub fn validate_schema_document(schema: &str) -> Result<(), MetaRejection> {
    match serde_json::from_str::<serde_json::Value>(schema) {
        Ok(serde_json::Value::Object(_) | serde_json::Value::Bool(_)) => Ok(()),
        Ok(_) => Err(MetaRejection::Invalid(
            "schema must be a JSON object or boolean".into(),
        )),
        Err(e) => Err(MetaRejection::Invalid(format!(
            "schema is not valid JSON: {e}"
        ))),
    }
}

pub fn validate_spec(spec: &TopicSpec, cluster_size: usize) -> Result<(), MetaRejection> {
    validate_topic_name(&spec.name)?;
    if spec.partitions == 0 || spec.partitions > MAX_TOPIC_PARTITIONS {
        return Err(MetaRejection::Invalid(format!(
            "partitions must be between 1 and {MAX_TOPIC_PARTITIONS}"
        )));
    }
    if let Some(schema) = &spec.schema {
        validate_schema_document(schema)?;
    }
    if spec.replication_factor as usize > cluster_size {
        return Err(MetaRejection::Invalid(format!(
            "replication factor {} exceeds the cluster size {cluster_size}",
            spec.replication_factor
        )));
    }
    Ok(())
}

/// Applies one metadata command. `nodes` are the metadata group's voters,
/// sorted, which is the set partitions are placed on. Debug builds check the
/// metadata's invariants after it: metadata commands are rare, so the whole
/// state is checked every time.
pub fn apply(state: &mut MetaState, command: &MetaCommand, nodes: &[NodeId]) -> CommandResponse {
    let before = Counters::of(state);
    let response = apply_command(state, command, nodes);
    // A draining node that has left the voters is gone; nothing to drain.
    if !nodes.is_empty() {
        state.draining.retain(|node| nodes.contains(node));
    }
    // Named by `Command`'s Display, which leaves out secrets and hashes.
    debug_assert_ok!(
        before.check_progress(&Counters::of(state)),
        "metadata invariant broken by {}",
        Command::Meta(command.clone())
    );
    debug_assert_ok!(
        check_invariants(state),
        "metadata invariant broken by {}",
        Command::Meta(command.clone())
    );
    response
}

/// What no metadata command may undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    next_topic_id: TopicId,
    next_token_id: u64,
    cluster_secret: Option<[u8; 32]>,
}

impl Counters {
    fn of(state: &MetaState) -> Self {
        Counters {
            next_topic_id: state.next_topic_id,
            next_token_id: state.next_token_id,
            cluster_secret: state.cluster_secret,
        }
    }

    /// Ids are never handed out twice (a partition group id of a deleted
    /// topic must not name a new one), and the cluster secret, once set,
    /// stays: nodes may already be using it.
    fn check_progress(&self, after: &Counters) -> Result<(), String> {
        check_none_moved_back([
            ("next topic id", self.next_topic_id.0, after.next_topic_id.0),
            ("next token id", self.next_token_id, after.next_token_id),
        ])?;
        if self.cluster_secret.is_some() && after.cluster_secret != self.cluster_secret {
            return Err("the cluster secret changed once set".into());
        }
        Ok(())
    }
}

/// Checks the invariants every metadata command keeps: each topic, token
/// and source is stored under its own id, topic and token ids are below the
/// next id to hand out, topic names are unique, and every partition has as
/// many distinct replicas as its topic's replication factor.
pub(super) fn check_invariants(state: &MetaState) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (id, topic) in &state.topics {
        if topic.id != *id || topic.id < TopicId::FIRST || topic.id >= state.next_topic_id {
            return Err(format!(
                "topic {:?} with id {} is stored under id {id}, next topic id {}",
                topic.name, topic.id, state.next_topic_id
            ));
        }
        if !names.insert(topic.name.as_str()) {
            return Err(format!("two topics are named {:?}", topic.name));
        }
        for (partition, replicas) in topic.partitions.iter().enumerate() {
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            if replicas.len() != topic.replication_factor as usize
                || distinct.len() != replicas.len()
            {
                return Err(format!(
                    "partition {partition} of topic {id} has replicas {replicas:?}, replication \
                     factor {}",
                    topic.replication_factor
                ));
            }
        }
    }
    for (group, replicas) in &state.moves {
        let topic = state
            .topics
            .get(&group.topic())
            .ok_or_else(|| format!("group {group} moves, but its topic does not exist"))?;
        let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
        if group.partition_index() as usize >= topic.partitions.len()
            || replicas.len() != topic.replication_factor as usize
            || distinct.len() != replicas.len()
        {
            return Err(format!(
                "group {group} moves to {replicas:?}, replication factor {}",
                topic.replication_factor
            ));
        }
    }
    if let Some(group) = state
        .moved
        .iter()
        .find(|group| !state.topics.contains_key(&group.topic()))
    {
        return Err(format!(
            "group {group} is marked moved, but its topic does not exist"
        ));
    }
    for (id, token) in &state.tokens {
        if token.id != *id || token.id == 0 || token.id >= state.next_token_id {
            return Err(format!(
                "token {:?} with id {} is stored under id {id}, next token id {}",
                token.name, token.id, state.next_token_id
            ));
        }
    }
    if let Some((id, source)) = state.sources.iter().find(|(id, source)| source.id != **id) {
        return Err(format!(
            "source with id {:?} is stored under id {id:?}",
            source.id
        ));
    }
    Ok(())
}

fn apply_command(
    state: &mut MetaState,
    command: &MetaCommand,
    nodes: &[NodeId],
) -> CommandResponse {
    let result = match command {
        MetaCommand::CreateToken {
            name,
            scopes,
            topics,
            hash,
            now_ms,
            bootstrap,
        } => {
            // Exactly as versions before topic ids applied it: names stay
            // names, so replaying an old entry builds the same state.
            let topics = topics
                .iter()
                .map(|t| TokenTopic::from_stored_text(t.clone()))
                .collect();
            let token = NewToken {
                name,
                scopes,
                topics,
                hash: *hash,
                now_ms: *now_ms,
            };
            return match create_token(state, token, *bootstrap) {
                Ok(token) => CommandResponse::Token(token),
                Err(rejection) => CommandResponse::MetaRejected(rejection),
            };
        }
        MetaCommand::CreateTokenWithTopicIds {
            name,
            scopes,
            topic_ids,
            hash,
            now_ms,
        } => {
            // The leader resolved these from its metadata, but a topic may
            // have been deleted since: judged again here, at this index.
            if let Some(missing) = topic_ids.iter().find(|id| !state.topics.contains_key(id)) {
                return CommandResponse::MetaRejected(MetaRejection::TopicNotFound {
                    topic_id: *missing,
                });
            }
            let token = NewToken {
                name,
                scopes,
                topics: topic_ids.iter().map(|id| TokenTopic::Id(*id)).collect(),
                hash: *hash,
                now_ms: *now_ms,
            };
            return match create_token(state, token, false) {
                Ok(token) => CommandResponse::Token(token),
                Err(rejection) => CommandResponse::MetaRejected(rejection),
            };
        }
        MetaCommand::ResolveTokenTopicNames => {
            resolve_token_topic_names(state);
            return CommandResponse::None;
        }
        MetaCommand::SetClusterSecret { secret } => {
            // The first secret stays: nodes may already be using it.
            state.cluster_secret.get_or_insert(*secret);
            return CommandResponse::None;
        }
        MetaCommand::DeleteToken { id } => {
            return match state.tokens.remove(id) {
                Some(token) => CommandResponse::Token(token),
                None => {
                    CommandResponse::MetaRejected(MetaRejection::TokenNotFound { token_id: *id })
                }
            };
        }
        MetaCommand::CreateSubscription {
            subscription,
            dead_letter,
        } => {
            return match create_subscription(state, subscription, dead_letter, nodes) {
                Ok(subscription) => CommandResponse::Subscription(subscription),
                Err(rejection) => CommandResponse::MetaRejected(rejection),
            };
        }
        MetaCommand::UpdateSubscription { .. }
        | MetaCommand::DeleteSubscription { .. }
        | MetaCommand::SetSubscriptionPaused { .. }
        | MetaCommand::ReplaySubscription { .. } => {
            return super::subscriptions::apply(state, command);
        }
        MetaCommand::CreateSource { source, topic } => {
            return match create_source(state, source, topic, nodes) {
                Ok(source) => CommandResponse::Source(source),
                Err(rejection) => CommandResponse::MetaRejected(rejection),
            };
        }
        MetaCommand::RotateSourceSecret {
            id,
            hash,
            last_four,
        } => {
            return match state.sources.get_mut(id) {
                Some(source) => {
                    source.secret_hash = *hash;
                    source.secret_last_four = last_four.clone();
                    CommandResponse::Source(source.clone())
                }
                None => {
                    CommandResponse::MetaRejected(MetaRejection::SourceNotFound { id: id.clone() })
                }
            };
        }
        MetaCommand::DeleteSource { id } => {
            return match state.sources.remove(id) {
                Some(source) => CommandResponse::Source(source),
                None => {
                    CommandResponse::MetaRejected(MetaRejection::SourceNotFound { id: id.clone() })
                }
            };
        }
        MetaCommand::CreateTopic { spec, now_ms } => create_topic(state, spec, nodes, *now_ms),
        MetaCommand::UpdateTopic {
            topic_id,
            update,
            now_ms,
        } => {
            let renamed_to_taken = update.name.as_ref().is_some_and(|name| {
                state
                    .topics
                    .values()
                    .any(|t| &t.name == name && t.id != *topic_id)
            });
            if let Some(name) = &update.name
                && let Err(e) = validate_topic_name(name)
            {
                return CommandResponse::MetaRejected(e);
            }
            if let Some(Some(schema)) = &update.schema
                && let Err(e) = validate_schema_document(schema)
            {
                return CommandResponse::MetaRejected(e);
            }
            match state.topics.get_mut(topic_id) {
                None => Err(MetaRejection::TopicNotFound {
                    topic_id: *topic_id,
                }),
                Some(_) if renamed_to_taken => Err(MetaRejection::TopicExists {
                    name: update.name.clone().unwrap_or_default(),
                }),
                Some(topic) => {
                    set_if_given(&mut topic.name, &update.name);
                    set_if_given(&mut topic.description, &update.description);
                    set_if_given(&mut topic.schema, &update.schema);
                    set_if_given(&mut topic.retention, &update.retention);
                    topic.updated_at_ms = *now_ms;
                    topic.version += 1;
                    Ok(topic.clone())
                }
            }
        }
        MetaCommand::MovePartition { group, replicas } => {
            move_partition(state, *group, replicas, nodes)
        }
        MetaCommand::CompletePartitionMove { group, replicas } => {
            complete_partition_move(state, *group, replicas)
        }
        MetaCommand::SetNodeDraining { node, draining } => {
            if *draining && !nodes.contains(node) {
                return CommandResponse::MetaRejected(MetaRejection::Invalid(format!(
                    "node {node} is not a voter of the cluster"
                )));
            }
            if *draining {
                state.draining.insert(*node);
            } else {
                state.draining.remove(node);
            }
            return CommandResponse::None;
        }
        MetaCommand::SetBalancing { on } => {
            state.balancing = *on;
            return CommandResponse::None;
        }
        MetaCommand::DeleteTopic { topic_id } => {
            if let Some(rejection) = super::subscriptions::blocks_topic_deletion(state, *topic_id) {
                return CommandResponse::MetaRejected(rejection);
            }
            delete_topic(state, *topic_id)
        }
    };
    match result {
        Ok(topic) => CommandResponse::Topic(topic),
        Err(rejection) => CommandResponse::MetaRejected(rejection),
    }
}

/// Deletes a topic with what hangs off it: moves of its partitions and its
/// push subscriptions.
fn delete_topic(state: &mut MetaState, topic_id: TopicId) -> Result<Topic, MetaRejection> {
    match state.topics.remove(&topic_id) {
        Some(topic) => {
            state.moves.retain(|group, _| group.topic() != topic_id);
            state.moved.retain(|group| group.topic() != topic_id);
            state.subscriptions.retain(|_, s| s.topic_id != topic_id);
            Ok(topic)
        }
        None => Err(MetaRejection::TopicNotFound { topic_id }),
    }
}

/// Checks replicas a partition is to move to: as many as the topic's
/// replication factor, distinct, each a voter of the cluster and not being
/// removed.
pub fn validate_move(
    state: &MetaState,
    group: GroupId,
    replicas: &[NodeId],
    nodes: &[NodeId],
) -> Result<(), MetaRejection> {
    let topic_id = group.topic();
    let topic = state
        .topics
        .get(&topic_id)
        .ok_or(MetaRejection::TopicNotFound { topic_id })?;
    let partition = group.partition_index();
    if partition as usize >= topic.partitions.len() {
        return Err(MetaRejection::Invalid(format!(
            "topic {:?} has no partition {partition}",
            topic.name
        )));
    }
    let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
    if replicas.len() != topic.replication_factor as usize || distinct.len() != replicas.len() {
        return Err(MetaRejection::Invalid(format!(
            "a partition of topic {:?} needs {} distinct replicas, not {replicas:?}",
            topic.name, topic.replication_factor
        )));
    }
    if let Some(node) = replicas.iter().find(|n| !nodes.contains(n)) {
        return Err(MetaRejection::Invalid(format!(
            "node {node} is not a voter of the cluster"
        )));
    }
    if let Some(node) = replicas.iter().find(|n| state.draining.contains(n)) {
        return Err(MetaRejection::Invalid(format!(
            "node {node} is being removed"
        )));
    }
    Ok(())
}

fn move_partition(
    state: &mut MetaState,
    group: GroupId,
    replicas: &[NodeId],
    nodes: &[NodeId],
) -> Result<Topic, MetaRejection> {
    validate_move(state, group, replicas, nodes)?;
    if let Some(pending) = state.moves.get(&group) {
        if pending.as_slice() == replicas {
            // The same move again (a retried call): already under way.
            return topic_of(state, group);
        }
        return Err(MetaRejection::Conflict(format!(
            "partition {} is already moving to {pending:?}",
            group.partition_index()
        )));
    }
    let topic = topic_of(state, group)?;
    if topic.partitions[group.partition_index() as usize].as_slice() != replicas {
        state.moves.insert(group, replicas.to_vec());
    }
    Ok(topic)
}

fn complete_partition_move(
    state: &mut MetaState,
    group: GroupId,
    replicas: &[NodeId],
) -> Result<Topic, MetaRejection> {
    if state.moves.get(&group).map(Vec::as_slice) != Some(replicas) {
        return Err(MetaRejection::Invalid(format!(
            "group {group} is not moving to {replicas:?}"
        )));
    }
    state.moves.remove(&group);
    let topic_id = group.topic();
    let topic = state
        .topics
        .get_mut(&topic_id)
        .ok_or(MetaRejection::TopicNotFound { topic_id })?;
    let current = &mut topic.partitions[group.partition_index() as usize];
    let voters_changed = {
        let before: std::collections::BTreeSet<_> = current.iter().collect();
        let after: std::collections::BTreeSet<_> = replicas.iter().collect();
        before != after
    };
    *current = replicas.to_vec();
    if voters_changed {
        state.moved.insert(group);
    }
    Ok(topic.clone())
}

fn topic_of(state: &MetaState, group: GroupId) -> Result<Topic, MetaRejection> {
    let topic_id = group.topic();
    state
        .topics
        .get(&topic_id)
        .cloned()
        .ok_or(MetaRejection::TopicNotFound { topic_id })
}

/// A token's fields as a create command carries them.
struct NewToken<'c> {
    name: &'c str,
    scopes: &'c [Scope],
    topics: Vec<TokenTopic>,
    hash: [u8; 32],
    now_ms: i64,
}

fn create_token(
    state: &mut MetaState,
    new: NewToken<'_>,
    bootstrap: bool,
) -> Result<TokenRecord, MetaRejection> {
    if bootstrap && state.next_token_id > 0 {
        return Err(MetaRejection::AlreadyBootstrapped);
    }
    validate_token(new.name, new.scopes)?;
    let id = state.next_token_id.max(1);
    debug_assert!(
        !state.tokens.contains_key(&id),
        "token ids are never reused, but id {id} (the next token id) is taken"
    );
    state.next_token_id = id + 1;
    let mut scopes = new.scopes.to_vec();
    scopes.sort_unstable();
    scopes.dedup();
    let token = TokenRecord {
        id,
        name: new.name.to_string(),
        scopes,
        topics: new.topics,
        hash: new.hash,
        created_at_ms: new.now_ms,
    };
    state.tokens.insert(id, token.clone());
    Ok(token)
}

/// Every token topic stored by name becomes the id of the topic bearing
/// that name now; a name no topic bears becomes [`TokenTopic::NO_TOPIC`]
/// (a topic created later with that name is a different topic). Never an
/// empty list: that would widen the token to every topic.
fn resolve_token_topic_names(state: &mut MetaState) {
    let topics = &state.topics;
    for token in state.tokens.values_mut() {
        for topic in &mut token.topics {
            if let TokenTopic::LegacyName(name) = topic {
                *topic = topics
                    .values()
                    .find(|t| t.name == *name)
                    .map_or(TokenTopic::NO_TOPIC, |t| TokenTopic::Id(t.id));
            }
        }
    }
}

pub fn validate_token(name: &str, scopes: &[Scope]) -> Result<(), MetaRejection> {
    if name.trim().is_empty() || name.chars().count() > TOPIC_NAME_MAX_CHARS {
        return Err(MetaRejection::Invalid(format!(
            "token name must have 1 to {TOPIC_NAME_MAX_CHARS} characters"
        )));
    }
    if scopes.is_empty() {
        return Err(MetaRejection::Invalid(
            "a token needs at least one scope".into(),
        ));
    }
    Ok(())
}

pub const SOURCE_NAME_MAX_CHARS: usize = 255;

/// Checks a new source's own fields (its topic is checked when applied).
pub fn validate_source(source: &IngestSource) -> Result<(), MetaRejection> {
    if source.name.trim().is_empty() || source.name.chars().count() > SOURCE_NAME_MAX_CHARS {
        return Err(MetaRejection::Invalid(format!(
            "source name must have 1 to {SOURCE_NAME_MAX_CHARS} characters"
        )));
    }
    if source.tenant_id.chars().count() > SOURCE_NAME_MAX_CHARS
        || source.tenant_id.chars().any(char::is_control)
    {
        return Err(MetaRejection::Invalid(format!(
            "tenant id must have at most {SOURCE_NAME_MAX_CHARS} printable characters"
        )));
    }
    if source.hmac_secret.as_ref().is_some_and(|s| s.is_empty()) {
        return Err(MetaRejection::Invalid(
            "hmac_secret must not be empty; leave it out for unsigned deliveries".into(),
        ));
    }
    Ok(())
}

fn create_source(
    state: &mut MetaState,
    source: &IngestSource,
    topic: &SourceTopic,
    nodes: &[NodeId],
) -> Result<IngestSource, MetaRejection> {
    validate_source(source)?;
    if state.sources.contains_key(&source.id) {
        return Err(MetaRejection::Invalid(format!(
            "source id {:?} is taken",
            source.id
        )));
    }
    let topic_id = topic_or_new(state, topic, nodes, source.created_at_ms)?;
    let source = IngestSource {
        topic_id,
        ..source.clone()
    };
    state.sources.insert(source.id.clone(), source.clone());
    Ok(source)
}

/// The topic `topic` names, created now when it asks for a missing one.
fn topic_or_new(
    state: &mut MetaState,
    topic: &SourceTopic,
    nodes: &[NodeId],
    now_ms: i64,
) -> Result<TopicId, MetaRejection> {
    match topic {
        SourceTopic::Existing(id) if state.topics.contains_key(id) => Ok(*id),
        SourceTopic::Existing(id) => Err(MetaRejection::TopicNotFound { topic_id: *id }),
        SourceTopic::CreateIfMissing(spec) => match state.topic_by_name(&spec.name) {
            Some(existing) => Ok(existing.id),
            None => Ok(create_topic(state, spec, nodes, now_ms)?.id),
        },
    }
}

/// A push subscription, with its dead-letter topic when that is new; a
/// refused subscription stores nothing.
fn create_subscription(
    state: &mut MetaState,
    subscription: &Subscription,
    dead_letter: &SourceTopic,
    nodes: &[NodeId],
) -> Result<Subscription, MetaRejection> {
    super::subscriptions::check_new(state, subscription)?;
    // A new topic's name differs from the subscription's topic, so the
    // insert below cannot refuse once this created a topic.
    let dead_letter_topic_id = topic_or_new(state, dead_letter, nodes, subscription.created_at_ms)?;
    super::subscriptions::insert(state, subscription, dead_letter_topic_id)
}

fn create_topic(
    state: &mut MetaState,
    spec: &TopicSpec,
    nodes: &[NodeId],
    now_ms: i64,
) -> Result<Topic, MetaRejection> {
    // New replicas never land on a node being removed.
    let eligible: Vec<NodeId> = nodes
        .iter()
        .filter(|node| !state.draining.contains(node))
        .copied()
        .collect();
    let nodes = eligible.as_slice();
    validate_spec(spec, nodes.len())?;
    if state.topic_by_name(&spec.name).is_some() {
        return Err(MetaRejection::TopicExists {
            name: spec.name.clone(),
        });
    }
    if nodes.is_empty() {
        return Err(MetaRejection::Invalid("the cluster has no nodes".into()));
    }
    let replication_factor = match spec.replication_factor {
        0 => DEFAULT_REPLICATION_FACTOR.min(nodes.len() as u32),
        rf => rf,
    };
    // Topic ids start at 1 and never repeat, so partition group ids of a
    // deleted topic are never reused by a new one.
    let id = state.next_topic_id.max(TopicId::FIRST);
    debug_assert!(
        !state.topics.contains_key(&id),
        "topic ids are never reused, but id {id} (the next topic id) is taken"
    );
    state.next_topic_id = id.next();
    let topic = Topic {
        id,
        name: spec.name.clone(),
        description: spec.description.clone(),
        schema: spec.schema.clone(),
        replication_factor,
        retention: spec.retention.clone(),
        partitions: place_replicas(id, spec.partitions, replication_factor, nodes),
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        version: 1,
    };
    state.topics.insert(id, topic.clone());
    Ok(topic)
}

/// Spreads replicas and preferred leaders round-robin, starting at a node
/// chosen by the topic id so that single-partition topics do not all land
/// their leaders on the first node.
pub fn place_replicas(
    topic_id: TopicId,
    partitions: u32,
    replication_factor: u32,
    nodes: &[NodeId],
) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    let start = (topic_id.0 as usize) % n.max(1);
    (0..partitions as usize)
        .map(|p| {
            (0..replication_factor as usize)
                .map(|r| nodes[(start + p + r) % n])
                .collect()
        })
        .collect()
}

/// A topic spec with no schema and no retention, for tests here and in
/// `balance.rs`.
#[cfg(test)]
pub(super) fn spec(name: &str, partitions: u32, rf: u32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        description: String::new(),
        partitions,
        replication_factor: rf,
        schema: None,
        retention: crate::raft::types::RetentionPolicy {
            retention_ms: None,
            retention_bytes: None,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn create(state: &mut MetaState, s: TopicSpec) -> CommandResponse {
        apply(
            state,
            &MetaCommand::CreateTopic { spec: s, now_ms: 7 },
            &[NodeId(1), NodeId(2), NodeId(3)],
        )
    }

    #[test]
    fn placement_spreads_leaders_and_keeps_replicas_distinct() {
        let placement = place_replicas(TopicId(1), 6, 3, &[NodeId(1), NodeId(2), NodeId(3)]);
        let leaders: Vec<u64> = placement.iter().map(|r| r[0].0).collect();
        assert_eq!(leaders, vec![2, 3, 1, 2, 3, 1]);
        for replicas in placement {
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3);
        }
    }

    #[test]
    fn default_replication_factor_is_capped_by_cluster_size() {
        let mut state = MetaState::default();
        let r = apply(
            &mut state,
            &MetaCommand::CreateTopic {
                spec: spec("a", 1, 0),
                now_ms: 0,
            },
            &[NodeId(1)],
        );
        let CommandResponse::Topic(topic) = r else {
            panic!("{r:?}")
        };
        assert_eq!(topic.replication_factor, 1);
        assert_eq!(topic.partitions, vec![vec![NodeId(1)]]);
    }

    #[test]
    fn duplicate_and_invalid_topics_are_rejected_without_change() {
        let mut state = MetaState::default();
        assert!(matches!(
            create(&mut state, spec("orders", 2, 3)),
            CommandResponse::Topic(_)
        ));
        let before = state.clone();
        for (bad, expected) in [
            (spec("orders", 1, 1), "already exists"),
            (spec("", 1, 1), "empty"),
            (spec("x", 0, 1), "partitions"),
            (spec("x", 257, 1), "partitions"),
            (spec("x", 1, 4), "exceeds"),
            (spec("42", 1, 1), "number"),
            (
                TopicSpec {
                    schema: Some("{not json".into()),
                    ..spec("y", 1, 1)
                },
                "not valid JSON",
            ),
            (
                TopicSpec {
                    schema: Some("[1]".into()),
                    ..spec("y", 1, 1)
                },
                "object or boolean",
            ),
        ] {
            let CommandResponse::MetaRejected(why) = create(&mut state, bad) else {
                panic!()
            };
            assert!(why.to_string().contains(expected), "{why}");
        }
        assert_eq!(state, before);
    }

    #[test]
    fn topic_ids_are_never_reused() {
        let mut state = MetaState::default();
        create(&mut state, spec("a", 1, 1));
        apply(
            &mut state,
            &MetaCommand::DeleteTopic {
                topic_id: TopicId(1),
            },
            &[NodeId(1), NodeId(2), NodeId(3)],
        );
        let CommandResponse::Topic(t) = create(&mut state, spec("a", 1, 1)) else {
            panic!()
        };
        assert_eq!(t.id, TopicId(2));
    }

    /// A way to break a state, and what the check that catches it says.
    type Corruption = (fn(&mut MetaState), &'static str);

    /// Two topics on nodes 1..=3 and a token.
    fn populated() -> MetaState {
        let mut state = MetaState::default();
        create(&mut state, spec("a", 2, 3));
        create(&mut state, spec("b", 1, 2));
        apply(&mut state, &token_on(vec![1]), &[NodeId(1)]);
        state
    }

    #[test]
    fn the_invariant_check_catches_ids_names_and_placements_out_of_step() {
        let cases: [Corruption; 6] = [
            (
                |s| s.next_topic_id = TopicId(2),
                "with id 2 is stored under id 2, next topic id 2",
            ),
            (
                |s| s.topics.get_mut(&TopicId(2)).unwrap().id = TopicId(7),
                "with id 7 is stored under id 2",
            ),
            (
                |s| s.topics.get_mut(&TopicId(2)).unwrap().name = "a".into(),
                "two topics are named",
            ),
            (
                |s| {
                    s.topics.get_mut(&TopicId(1)).unwrap().partitions[1] =
                        vec![NodeId(1), NodeId(1), NodeId(2)]
                },
                "replicas [1, 1, 2]",
            ),
            (
                |s| s.topics.get_mut(&TopicId(2)).unwrap().replication_factor = 3,
                "replication factor 3",
            ),
            (|s| s.next_token_id = 1, "next token id 1"),
        ];
        assert_eq!(check_invariants(&populated()), Ok(()));
        for (corrupt, expected) in cases {
            let mut state = populated();
            corrupt(&mut state);
            let broken = check_invariants(&state).unwrap_err();
            assert!(broken.contains(expected), "{broken:?} for {expected:?}");
        }
    }

    #[test]
    fn ids_moving_back_and_a_replaced_cluster_secret_are_caught() {
        let before = Counters::of(&populated());
        let unset = Counters {
            cluster_secret: None,
            ..before
        };
        let set = Counters {
            cluster_secret: Some([1; 32]),
            ..before
        };
        assert_eq!(
            unset.check_progress(&set),
            Ok(()),
            "the first secret may be set"
        );
        let cases = [
            (
                Counters {
                    next_topic_id: TopicId(1),
                    ..set
                },
                "next topic id moved back from 3 to 1",
            ),
            (
                Counters {
                    next_token_id: 1,
                    ..set
                },
                "next token id moved back from 2 to 1",
            ),
            (
                Counters {
                    cluster_secret: Some([2; 32]),
                    ..set
                },
                "cluster secret changed",
            ),
        ];
        for (after, expected) in cases {
            let broken = set.check_progress(&after).unwrap_err();
            assert!(broken.contains(expected), "{broken:?} for {expected:?}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "topic ids are never reused, but id 2 (the next topic id) is taken")]
    fn handing_out_a_taken_topic_id_stops_a_debug_build() {
        let mut state = populated();
        state.next_topic_id = TopicId(2);
        create(&mut state, spec("c", 1, 1));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "metadata invariant broken by delete token 9: two topics")]
    fn a_broken_invariant_stops_a_debug_build_at_the_next_apply() {
        let mut state = populated();
        state.topics.get_mut(&TopicId(2)).unwrap().name = "a".into();
        apply(
            &mut state,
            &MetaCommand::DeleteToken { id: 9 },
            &[NodeId(1)],
        );
    }

    #[test]
    fn only_the_first_token_can_be_a_bootstrap_token() {
        let mut state = MetaState::default();
        let token = |bootstrap| MetaCommand::CreateToken {
            name: "admin".into(),
            scopes: vec![Scope::Admin],
            topics: vec![],
            hash: [7; 32],
            now_ms: 1,
            bootstrap,
        };
        let CommandResponse::Token(first) = apply(&mut state, &token(true), &[NodeId(1)]) else {
            panic!()
        };
        assert_eq!(first.id, 1);
        assert!(matches!(
            apply(&mut state, &token(true), &[NodeId(1)]),
            CommandResponse::MetaRejected(MetaRejection::AlreadyBootstrapped)
        ));
        let CommandResponse::Token(second) = apply(&mut state, &token(false), &[NodeId(1)]) else {
            panic!()
        };
        assert_eq!(second.id, 2);
        apply(
            &mut state,
            &MetaCommand::DeleteToken { id: 1 },
            &[NodeId(1)],
        );
        assert!(
            matches!(
                apply(&mut state, &token(true), &[NodeId(1)]),
                CommandResponse::MetaRejected(MetaRejection::AlreadyBootstrapped)
            ),
            "deleting every token does not reopen the bootstrap"
        );
    }

    #[test]
    fn rename_onto_existing_name_is_rejected() {
        let mut state = MetaState::default();
        create(&mut state, spec("a", 1, 1));
        create(&mut state, spec("b", 1, 1));
        let update = crate::raft::types::TopicUpdate {
            name: Some("a".into()),
            ..Default::default()
        };
        let r = apply(
            &mut state,
            &MetaCommand::UpdateTopic {
                topic_id: TopicId(2),
                update,
                now_ms: 9,
            },
            &[NodeId(1)],
        );
        assert!(matches!(
            r,
            CommandResponse::MetaRejected(MetaRejection::TopicExists { .. })
        ));
    }

    fn rename(state: &mut MetaState, topic_id: TopicId, name: &str) {
        let update = crate::raft::types::TopicUpdate {
            name: Some(name.into()),
            ..Default::default()
        };
        let command = MetaCommand::UpdateTopic {
            topic_id,
            update,
            now_ms: 8,
        };
        assert!(matches!(
            apply(state, &command, &[NodeId(1)]),
            CommandResponse::Topic(_)
        ));
    }

    fn token_on(topic_ids: Vec<u64>) -> MetaCommand {
        MetaCommand::CreateTokenWithTopicIds {
            name: "reader".into(),
            scopes: vec![Scope::Consume],
            topic_ids: topic_ids.into_iter().map(TopicId).collect(),
            hash: [3; 32],
            now_ms: 1,
        }
    }

    #[test]
    fn tokens_keep_topic_ids_across_renames_and_refuse_missing_topics_whole() {
        let mut state = MetaState::default();
        create(&mut state, spec("a", 1, 1));
        let CommandResponse::Token(token) = apply(&mut state, &token_on(vec![1]), &[NodeId(1)])
        else {
            panic!()
        };
        assert_eq!(token.topics, vec![TokenTopic::Id(TopicId(1))]);
        rename(&mut state, TopicId(1), "b");
        create(&mut state, spec("a", 1, 1));
        assert_eq!(
            state.tokens[&token.id].topics,
            vec![TokenTopic::Id(TopicId(1))]
        );

        // A topic deleted after the leader resolved it: nothing is stored,
        // and no token id is used up.
        let before = state.clone();
        assert!(matches!(
            apply(&mut state, &token_on(vec![2, 7]), &[NodeId(1)]),
            CommandResponse::MetaRejected(MetaRejection::TopicNotFound {
                topic_id: TopicId(7)
            })
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn token_topics_stored_by_name_resolve_to_ids_at_one_log_index() {
        let mut state = MetaState::default();
        create(&mut state, spec("orders", 1, 1));
        create(&mut state, spec("payments", 1, 1));
        // As versions before topic ids wrote it, and as they applied it.
        let legacy = MetaCommand::CreateToken {
            name: "old".into(),
            scopes: vec![Scope::Consume],
            topics: vec!["orders".into(), "2".into(), "gone".into()],
            hash: [5; 32],
            now_ms: 1,
            bootstrap: false,
        };
        let CommandResponse::Token(token) = apply(&mut state, &legacy, &[NodeId(1)]) else {
            panic!()
        };
        assert_eq!(
            token.topics,
            vec![
                TokenTopic::LegacyName("orders".into()),
                TokenTopic::Id(TopicId(2)),
                TokenTopic::LegacyName("gone".into()),
            ]
        );
        assert!(state.has_token_topic_names());

        let mut replica = state.clone();
        apply(
            &mut state,
            &MetaCommand::ResolveTokenTopicNames,
            &[NodeId(1)],
        );
        apply(
            &mut replica,
            &MetaCommand::ResolveTokenTopicNames,
            &[NodeId(1)],
        );
        assert_eq!(state, replica, "every replica resolves alike");
        assert!(!state.has_token_topic_names());
        // A name no topic bears matches no topic, rather than none of them
        // (an empty list would allow every topic).
        assert_eq!(
            state.tokens[&token.id].topics,
            vec![
                TokenTopic::Id(TopicId(1)),
                TokenTopic::Id(TopicId(2)),
                TokenTopic::NO_TOPIC
            ]
        );
        create(&mut state, spec("gone", 1, 1));
        let gone = state.topic_by_name("gone").unwrap();
        assert_eq!(
            state.tokens[&token.id].allows(Scope::Consume, Some(gone)),
            Err(crate::auth::Denied::Topic)
        );
    }

    fn rejected(response: &CommandResponse) -> bool {
        matches!(response, CommandResponse::MetaRejected(_))
    }

    #[test]
    fn a_move_needs_distinct_voters_that_stay_and_one_move_at_a_time() {
        let four = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
        let mut state = MetaState::default();
        apply(
            &mut state,
            &MetaCommand::CreateTopic {
                spec: spec("t", 2, 3),
                now_ms: 7,
            },
            &four,
        );
        let group = GroupId::partition(TopicId(1), 0);
        let before = state.clone();
        let refused = [
            vec![NodeId(1), NodeId(2)],
            vec![NodeId(1), NodeId(1), NodeId(2)],
            vec![NodeId(1), NodeId(2), NodeId(9)],
        ];
        for replicas in refused {
            let command = MetaCommand::MovePartition { group, replicas };
            assert!(rejected(&apply(&mut state, &command, &four)), "{command:?}");
        }
        let missing = MetaCommand::MovePartition {
            group: GroupId::partition(TopicId(1), 5),
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
        };
        assert!(rejected(&apply(&mut state, &missing, &four)));
        assert_eq!(state, before, "refused moves change nothing");

        // Placed on 2, 3, 4 (topic 1 starts at the second node).
        assert_eq!(
            state.topics[&TopicId(1)].partitions[0],
            vec![NodeId(2), NodeId(3), NodeId(4)]
        );
        let target = vec![NodeId(1), NodeId(2), NodeId(3)];
        let command = MetaCommand::MovePartition {
            group,
            replicas: target.clone(),
        };
        assert!(!rejected(&apply(&mut state, &command, &four)));
        // The same move again is accepted (a retry); another one is not.
        assert!(!rejected(&apply(&mut state, &command, &four)));
        let other = MetaCommand::MovePartition {
            group,
            replicas: vec![NodeId(1), NodeId(4), NodeId(3)],
        };
        assert!(rejected(&apply(&mut state, &other, &four)));
        // Only the pending move completes.
        let stale = MetaCommand::CompletePartitionMove {
            group,
            replicas: vec![NodeId(1), NodeId(4), NodeId(3)],
        };
        assert!(rejected(&apply(&mut state, &stale, &four)));
        let done = MetaCommand::CompletePartitionMove {
            group,
            replicas: target.clone(),
        };
        assert!(!rejected(&apply(&mut state, &done, &four)));
        assert_eq!(state.topics[&TopicId(1)].partitions[0], target);
        assert!(state.moves.is_empty());
        assert!(state.moved.contains(&group));
        // A new order of the same replicas is a move too, but the group's
        // voters stay: it is not marked moved.
        let other_group = GroupId::partition(TopicId(1), 1);
        let mut reordered = state.topics[&TopicId(1)].partitions[1].clone();
        reordered.rotate_left(1);
        for command in [
            MetaCommand::MovePartition {
                group: other_group,
                replicas: reordered.clone(),
            },
            MetaCommand::CompletePartitionMove {
                group: other_group,
                replicas: reordered,
            },
        ] {
            assert!(!rejected(&apply(&mut state, &command, &four)));
        }
        assert!(!state.moved.contains(&other_group));
        // Deleting the topic forgets its moves.
        apply(
            &mut state,
            &MetaCommand::DeleteTopic {
                topic_id: TopicId(1),
            },
            &four,
        );
        assert!(state.moved.is_empty() && state.moves.is_empty());
    }

    #[test]
    fn draining_nodes_get_no_new_replicas_and_are_forgotten_once_removed() {
        let four = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
        let mut state = MetaState::default();
        let not_voter = MetaCommand::SetNodeDraining {
            node: NodeId(7),
            draining: true,
        };
        assert!(rejected(&apply(&mut state, &not_voter, &four)));
        apply(
            &mut state,
            &MetaCommand::SetNodeDraining {
                node: NodeId(4),
                draining: true,
            },
            &four,
        );
        apply(
            &mut state,
            &MetaCommand::CreateTopic {
                spec: spec("t", 8, 3),
                now_ms: 7,
            },
            &four,
        );
        let topic = &state.topics[&TopicId(1)];
        assert!(topic.partitions.iter().all(|r| !r.contains(&NodeId(4))));
        let onto_draining = MetaCommand::MovePartition {
            group: GroupId::partition(TopicId(1), 0),
            replicas: vec![NodeId(4), NodeId(2), NodeId(3)],
        };
        assert!(rejected(&apply(&mut state, &onto_draining, &four)));
        // Node 4 left the voters: the next command forgets it.
        let three = [NodeId(1), NodeId(2), NodeId(3)];
        apply(&mut state, &MetaCommand::DeleteToken { id: 99 }, &three);
        assert!(state.draining.is_empty());
    }

    #[test]
    fn metadata_stored_before_partition_moves_still_reads() {
        #[derive(serde::Serialize)]
        struct Old<'a> {
            topics: &'a std::collections::BTreeMap<TopicId, Topic>,
            next_topic_id: TopicId,
            tokens: &'a std::collections::BTreeMap<u64, TokenRecord>,
            next_token_id: u64,
            cluster_secret: Option<[u8; 32]>,
            sources: &'a std::collections::BTreeMap<String, IngestSource>,
        }
        let state = populated();
        let old = bincode::serialize(&Old {
            topics: &state.topics,
            next_topic_id: state.next_topic_id,
            tokens: &state.tokens,
            next_token_id: state.next_token_id,
            cluster_secret: state.cluster_secret,
            sources: &state.sources,
        })
        .unwrap();
        assert!(bincode::deserialize::<MetaState>(&old).is_err());
        let read: MetaState =
            bincode::deserialize::<crate::raft::types::MetaStateBeforeMoves>(&old)
                .unwrap()
                .into();
        assert_eq!(read, state);
    }
}
