//! Push subscriptions in the metadata: their checks and how their commands
//! apply. Delivery itself is `crate::push`; positions live in partitions.

use crate::raft::types::CommandResponse;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::raft::types::PayloadFilter;
use crate::raft::types::Subscription;
use crate::raft::types::SubscriptionSettings;
use crate::state_machine::fields::set_if_given;

pub const SUBSCRIPTION_NAME_MAX_CHARS: usize = 255;
pub const ENDPOINT_MAX_CHARS: usize = 2048;
pub const SECRET_MIN_CHARS: usize = 16;
pub const SECRET_MAX_CHARS: usize = 256;
pub const MAX_BATCH_SIZE: u32 = 100;
pub const MAX_ATTEMPTS: u32 = 100;
pub const MAX_BACKOFF_MS: u64 = 24 * 3_600_000;
pub const MAX_TIMEOUT_MS: u64 = 300_000;
pub const MAX_IN_FLIGHT: u32 = 1024;

fn invalid(message: impl Into<String>) -> MetaRejection {
    MetaRejection::Invalid(message.into())
}

pub fn validate_name(name: &str) -> Result<(), MetaRejection> {
    if name.trim().is_empty() || name.chars().count() > SUBSCRIPTION_NAME_MAX_CHARS {
        return Err(invalid(format!(
            "subscription name must have 1 to {SUBSCRIPTION_NAME_MAX_CHARS} characters"
        )));
    }
    Ok(())
}

/// An absolute http:// or https:// URL with a host.
pub fn validate_endpoint(endpoint: &str) -> Result<(), MetaRejection> {
    if endpoint.len() > ENDPOINT_MAX_CHARS {
        return Err(invalid(format!(
            "endpoint is longer than {ENDPOINT_MAX_CHARS} characters"
        )));
    }
    let url = url::Url::parse(endpoint)
        .map_err(|e| invalid(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "endpoint {endpoint:?} must be an http:// or https:// URL with a host"
        )));
    }
    Ok(())
}

pub fn validate_filter(filter: &PayloadFilter) -> Result<(), MetaRejection> {
    if !filter.pointer.is_empty() && !filter.pointer.starts_with('/') {
        return Err(invalid(format!(
            "filter pointer {:?} must be empty or start with '/' (RFC 6901)",
            filter.pointer
        )));
    }
    serde_json::from_str::<serde_json::Value>(&filter.equals_json)
        .map_err(|e| invalid(format!("filter value is not JSON: {e}")))?;
    Ok(())
}

pub fn validate_secret(secret: &str) -> Result<(), MetaRejection> {
    let chars = secret.chars().count();
    if !(SECRET_MIN_CHARS..=SECRET_MAX_CHARS).contains(&chars)
        || secret.chars().any(char::is_control)
    {
        return Err(invalid(format!(
            "secret must have {SECRET_MIN_CHARS} to {SECRET_MAX_CHARS} printable characters"
        )));
    }
    Ok(())
}

/// Stored settings: every field set and in range.
pub fn validate_settings(settings: &SubscriptionSettings) -> Result<(), MetaRejection> {
    let SubscriptionSettings {
        batch_size,
        max_attempts,
        initial_backoff_ms,
        max_backoff_ms,
        timeout_ms,
        max_in_flight,
    } = *settings;
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(invalid(format!("batch_size must be 1 to {MAX_BATCH_SIZE}")));
    }
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(invalid(format!("max_attempts must be 1 to {MAX_ATTEMPTS}")));
    }
    if !(1..=MAX_BACKOFF_MS).contains(&initial_backoff_ms)
        || !(initial_backoff_ms..=MAX_BACKOFF_MS).contains(&max_backoff_ms)
    {
        return Err(invalid(format!(
            "backoffs must satisfy 1 <= initial_backoff_ms <= max_backoff_ms <= {MAX_BACKOFF_MS}"
        )));
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid(format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}")));
    }
    if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
        return Err(invalid(format!(
            "max_in_flight must be 1 to {MAX_IN_FLIGHT}"
        )));
    }
    Ok(())
}

/// A subscription's own fields (its topics are checked when applied).
pub fn validate(subscription: &Subscription) -> Result<(), MetaRejection> {
    validate_name(&subscription.name)?;
    validate_endpoint(&subscription.endpoint)?;
    if let Some(filter) = &subscription.filter {
        validate_filter(filter)?;
    }
    validate_secret(&subscription.secret)?;
    validate_settings(&subscription.settings)
}

/// Applies a change to an existing subscription (`meta::apply` hands
/// over only those; it creates subscriptions itself, with their
/// dead-letter topics).
pub(super) fn apply(state: &mut MetaState, command: &MetaCommand) -> CommandResponse {
    let result = match command {
        MetaCommand::UpdateSubscription { id, update, now_ms } => {
            with_subscription(state, id, |subscription| {
                let mut updated = subscription.clone();
                set_if_given(&mut updated.name, &update.name);
                set_if_given(&mut updated.endpoint, &update.endpoint);
                set_if_given(&mut updated.filter, &update.filter);
                updated.settings = updated.settings.overridden_by(update.settings);
                updated.updated_at_ms = *now_ms;
                validate(&updated)?;
                *subscription = updated;
                Ok(())
            })
        }
        MetaCommand::DeleteSubscription { id } => state
            .subscriptions
            .remove(id)
            .ok_or_else(|| MetaRejection::SubscriptionNotFound { id: id.clone() }),
        MetaCommand::SetSubscriptionPaused { id, paused, now_ms } => {
            with_subscription(state, id, |subscription| {
                subscription.paused = *paused;
                subscription.updated_at_ms = *now_ms;
                Ok(())
            })
        }
        MetaCommand::ReplaySubscription { id, from, now_ms } => {
            with_subscription(state, id, |subscription| {
                subscription.generation += 1;
                subscription.start = *from;
                subscription.updated_at_ms = *now_ms;
                Ok(())
            })
        }
        other => Err(invalid(format!("{other:?} is not a subscription command"))),
    };
    match result {
        Ok(subscription) => CommandResponse::Subscription(subscription),
        Err(rejection) => CommandResponse::MetaRejected(rejection),
    }
}

fn with_subscription(
    state: &mut MetaState,
    id: &str,
    change: impl FnOnce(&mut Subscription) -> Result<(), MetaRejection>,
) -> Result<Subscription, MetaRejection> {
    let subscription = state
        .subscriptions
        .get_mut(id)
        .ok_or_else(|| MetaRejection::SubscriptionNotFound { id: id.to_string() })?;
    change(subscription)?;
    Ok(subscription.clone())
}

/// Checks a new subscription against the metadata, before anything of it
/// (its dead-letter topic) is stored.
pub(super) fn check_new(
    state: &MetaState,
    subscription: &Subscription,
) -> Result<(), MetaRejection> {
    validate(subscription)?;
    if state.subscriptions.contains_key(&subscription.id) {
        return Err(invalid(format!(
            "subscription id {:?} is taken",
            subscription.id
        )));
    }
    if !state.topics.contains_key(&subscription.topic_id) {
        return Err(MetaRejection::TopicNotFound {
            topic_id: subscription.topic_id,
        });
    }
    Ok(())
}

/// Stores a subscription [`check_new`] accepted, with the dead-letter
/// topic `meta` resolved for it.
pub(super) fn insert(
    state: &mut MetaState,
    subscription: &Subscription,
    dead_letter_topic_id: crate::model::TopicId,
) -> Result<Subscription, MetaRejection> {
    if dead_letter_topic_id == subscription.topic_id {
        return Err(invalid(
            "the dead-letter topic must not be the subscription's own topic",
        ));
    }
    let subscription = Subscription {
        dead_letter_topic_id,
        ..subscription.clone()
    };
    state
        .subscriptions
        .insert(subscription.id.clone(), subscription.clone());
    Ok(subscription)
}

/// Why a topic may not be deleted: it is a subscription's dead-letter
/// topic (its failed messages would have nowhere to go).
pub(super) fn blocks_topic_deletion(
    state: &MetaState,
    topic_id: crate::model::TopicId,
) -> Option<MetaRejection> {
    state
        .subscriptions
        .values()
        .find(|s| s.dead_letter_topic_id == topic_id && s.topic_id != topic_id)
        .map(|s| {
            MetaRejection::Conflict(format!(
                "topic {topic_id} is the dead-letter topic of subscription {:?}; delete that \
                 subscription first",
                s.id
            ))
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::NodeId;
    use crate::model::Offset;
    use crate::model::TopicId;
    use crate::raft::types::DeliveryStart;
    use crate::raft::types::SourceTopic;
    use crate::raft::types::SubscriptionUpdate;
    use crate::state_machine::meta::apply as apply_meta;
    use crate::state_machine::meta::spec;

    const NODES: &[NodeId] = &[NodeId(1), NodeId(2), NodeId(3)];

    fn subscription(id: &str, topic_id: TopicId) -> Subscription {
        Subscription {
            id: id.into(),
            name: "orders to billing".into(),
            topic_id,
            endpoint: "http://127.0.0.1:9/hook".into(),
            filter: None,
            settings: SubscriptionSettings::DEFAULT,
            dead_letter_topic_id: TopicId(0),
            secret: "0123456789abcdef".into(),
            secret_last_four: "cdef".into(),
            paused: false,
            generation: 0,
            start: DeliveryStart::Earliest,
            created_at_ms: 5,
            updated_at_ms: 5,
        }
    }

    fn with_topic() -> MetaState {
        let mut state = MetaState::default();
        let create = MetaCommand::CreateTopic {
            spec: spec("orders", 2, 3),
            now_ms: 1,
        };
        apply_meta(&mut state, &create, NODES);
        state
    }

    fn create(state: &mut MetaState, id: &str) -> CommandResponse {
        let command = MetaCommand::CreateSubscription {
            subscription: Box::new(subscription(id, TopicId(1))),
            dead_letter: SourceTopic::CreateIfMissing(spec("orders.dead-letter", 1, 3)),
        };
        apply_meta(state, &command, NODES)
    }

    fn stored(state: &MetaState, id: &str) -> Subscription {
        state.subscriptions[id].clone()
    }

    #[test]
    fn creating_makes_the_dead_letter_topic_once() {
        let mut state = with_topic();
        assert!(matches!(
            create(&mut state, "s1"),
            CommandResponse::Subscription(_)
        ));
        assert!(matches!(
            create(&mut state, "s2"),
            CommandResponse::Subscription(_)
        ));
        let dead_letter = state.topic_by_name("orders.dead-letter").unwrap().id;
        assert_eq!(stored(&state, "s1").dead_letter_topic_id, dead_letter);
        assert_eq!(stored(&state, "s2").dead_letter_topic_id, dead_letter);
        assert_eq!(state.topics.len(), 2);
        // The same id twice is refused and changes nothing.
        let before = state.clone();
        assert!(matches!(
            create(&mut state, "s1"),
            CommandResponse::MetaRejected(MetaRejection::Invalid(_))
        ));
        assert_eq!(state, before);
    }

    #[test]
    fn a_subscription_on_a_missing_topic_or_into_its_own_topic_is_refused() {
        let mut state = with_topic();
        let missing = MetaCommand::CreateSubscription {
            subscription: Box::new(subscription("s", TopicId(9))),
            dead_letter: SourceTopic::CreateIfMissing(spec("dl", 1, 3)),
        };
        assert!(matches!(
            apply_meta(&mut state, &missing, NODES),
            CommandResponse::MetaRejected(MetaRejection::TopicNotFound { .. })
        ));
        let into_itself = MetaCommand::CreateSubscription {
            subscription: Box::new(subscription("s", TopicId(1))),
            dead_letter: SourceTopic::Existing(TopicId(1)),
        };
        assert!(matches!(
            apply_meta(&mut state, &into_itself, NODES),
            CommandResponse::MetaRejected(MetaRejection::Invalid(_))
        ));
        assert!(state.subscriptions.is_empty());
        assert_eq!(state.topics.len(), 1);
    }

    #[test]
    fn update_pause_and_replay_change_only_what_they_name() {
        let mut state = with_topic();
        create(&mut state, "s");
        let update = MetaCommand::UpdateSubscription {
            id: "s".into(),
            update: SubscriptionUpdate {
                endpoint: Some("https://example.invalid/new".into()),
                settings: SubscriptionSettings {
                    batch_size: 10,
                    ..SubscriptionSettings::default()
                },
                ..SubscriptionUpdate::default()
            },
            now_ms: 9,
        };
        apply_meta(&mut state, &update, NODES);
        let s = stored(&state, "s");
        assert_eq!(s.endpoint, "https://example.invalid/new");
        assert_eq!(s.settings.batch_size, 10);
        assert_eq!(
            s.settings.max_attempts,
            SubscriptionSettings::DEFAULT.max_attempts
        );
        assert_eq!(s.name, "orders to billing");
        assert_eq!(s.updated_at_ms, 9);

        let bad = MetaCommand::UpdateSubscription {
            id: "s".into(),
            update: SubscriptionUpdate {
                endpoint: Some("ftp://x/".into()),
                ..SubscriptionUpdate::default()
            },
            now_ms: 10,
        };
        let before = state.clone();
        assert!(matches!(
            apply_meta(&mut state, &bad, NODES),
            CommandResponse::MetaRejected(MetaRejection::Invalid(_))
        ));
        assert_eq!(state, before);

        let pause = MetaCommand::SetSubscriptionPaused {
            id: "s".into(),
            paused: true,
            now_ms: 11,
        };
        apply_meta(&mut state, &pause, NODES);
        assert!(stored(&state, "s").paused);

        let group_before = stored(&state, "s").position_group();
        let replay = MetaCommand::ReplaySubscription {
            id: "s".into(),
            from: DeliveryStart::Offset(Offset(3)),
            now_ms: 12,
        };
        apply_meta(&mut state, &replay, NODES);
        let s = stored(&state, "s");
        assert_eq!(s.generation, 1);
        assert_eq!(s.start, DeliveryStart::Offset(Offset(3)));
        assert_ne!(s.position_group(), group_before);
        assert!(s.paused, "a replay leaves a paused subscription paused");

        let unknown = MetaCommand::DeleteSubscription { id: "x".into() };
        assert!(matches!(
            apply_meta(&mut state, &unknown, NODES),
            CommandResponse::MetaRejected(MetaRejection::SubscriptionNotFound { .. })
        ));
    }

    #[test]
    fn deleting_a_topic_drops_its_subscriptions_but_not_a_dead_letter_topic_in_use() {
        let mut state = with_topic();
        create(&mut state, "s");
        let dead_letter = stored(&state, "s").dead_letter_topic_id;
        let delete_dead_letter = MetaCommand::DeleteTopic {
            topic_id: dead_letter,
        };
        assert!(matches!(
            apply_meta(&mut state, &delete_dead_letter, NODES),
            CommandResponse::MetaRejected(MetaRejection::Conflict(_))
        ));
        assert!(state.topics.contains_key(&dead_letter));
        let delete_topic = MetaCommand::DeleteTopic {
            topic_id: TopicId(1),
        };
        assert!(matches!(
            apply_meta(&mut state, &delete_topic, NODES),
            CommandResponse::Topic(_)
        ));
        assert!(state.subscriptions.is_empty());
        assert!(matches!(
            apply_meta(&mut state, &delete_dead_letter, NODES),
            CommandResponse::Topic(_)
        ));
    }

    #[test]
    fn checks_refuse_bad_fields() {
        assert!(validate_endpoint("http://127.0.0.1:8080/x").is_ok());
        assert!(validate_endpoint("https://example.com").is_ok());
        for bad in [
            "",
            "127.0.0.1:80",
            "ftp://host/x",
            "http://",
            "file:///etc/passwd",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(validate_secret("short").is_err());
        assert!(validate_secret("0123456789abcdef").is_ok());
        let filter = |pointer: &str, equals: &str| PayloadFilter {
            pointer: pointer.into(),
            equals_json: equals.into(),
        };
        assert!(validate_filter(&filter("/type", "\"order\"")).is_ok());
        assert!(validate_filter(&filter("type", "\"order\"")).is_err());
        assert!(validate_filter(&filter("/type", "order")).is_err());
        let zero = SubscriptionSettings::default();
        assert!(validate_settings(&zero).is_err());
        assert!(validate_settings(&SubscriptionSettings::or_defaults(zero)).is_ok());
        let backwards = SubscriptionSettings {
            initial_backoff_ms: 10,
            max_backoff_ms: 5,
            ..SubscriptionSettings::DEFAULT
        };
        assert!(validate_settings(&backwards).is_err());
    }

    #[test]
    fn a_filter_matches_the_value_at_its_pointer() {
        let filter = PayloadFilter {
            pointer: "/order/status".into(),
            equals_json: "\"paid\"".into(),
        };
        assert!(filter.matches(br#"{"order": {"status": "paid", "id": 1}}"#));
        assert!(!filter.matches(br#"{"order": {"status": "open"}}"#));
        assert!(!filter.matches(br#"{"status": "paid"}"#));
        assert!(!filter.matches(b"not json"));
        let number = PayloadFilter {
            pointer: "/n".into(),
            equals_json: "1".into(),
        };
        assert!(number.matches(br#"{"n": 1}"#));
        assert!(!number.matches(br#"{"n": "1"}"#));
    }
}
