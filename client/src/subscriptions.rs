//! Push subscriptions: the cluster POSTs a topic's messages, signed with
//! HMAC-SHA256, to an HTTP endpoint, at least once and in order per
//! partition. Managing them needs an admin token.

use serde_json::Value;

use crate::client::Client;
use crate::client::Retry;
use crate::client::SubscriptionsGrpc;
use crate::client::Target;
use crate::client::topic_ref;
use crate::error::Error;
use crate::error::Result;
use crate::pb;

/// The metadata group: subscription changes are made by its leader.
const META: Target = Target::Group(0);

/// Where delivery starts (on creation) or starts again (replay), in every
/// partition of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStart {
    /// Every retained message.
    Earliest,
    /// Only messages published from now on.
    Latest,
    /// The same offset in every partition.
    Offset(u64),
    /// The first message at or after this time (Unix milliseconds).
    TimeMs(i64),
}

impl DeliveryStart {
    fn to_pb(self) -> pb::DeliveryStart {
        use pb::delivery_start::From;
        let from = match self {
            DeliveryStart::Earliest => From::Earliest(true),
            DeliveryStart::Latest => From::Latest(true),
            DeliveryStart::Offset(offset) => From::Offset(offset),
            DeliveryStart::TimeMs(ms) => From::TimeMs(ms),
        };
        pb::DeliveryStart { from: Some(from) }
    }
}

/// Only messages whose JSON payload holds `equals` at the JSON pointer
/// `pointer` (RFC 6901, such as `/type`) are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadFilter {
    pub pointer: String,
    pub equals: Value,
}

impl PayloadFilter {
    pub fn new(pointer: impl Into<String>, equals: Value) -> PayloadFilter {
        PayloadFilter {
            pointer: pointer.into(),
            equals,
        }
    }

    fn to_pb(&self) -> pb::PayloadFilter {
        pb::PayloadFilter {
            pointer: self.pointer.clone(),
            equals_json: self.equals.to_string(),
        }
    }
}

/// How a subscription delivers. `None` takes the default on creation and
/// keeps the current value on update; a value must be at least 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Messages per POST.
    pub batch_size: Option<u32>,
    /// POSTs of one batch before its messages go to the dead-letter topic.
    pub max_attempts: Option<u32>,
    /// The wait after the first failed POST, doubled after each further one.
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
    /// How long one POST may take.
    pub timeout_ms: Option<u64>,
    /// POSTs in flight at once for the subscription, per node.
    pub max_in_flight: Option<u32>,
}

impl DeliverySettings {
    /// The protobuf form, where zero means "not given": a zero asked for
    /// here would silently mean the default, so it is refused.
    fn to_pb(self) -> Result<pb::SubscriptionSettings> {
        fn given<T: Default + PartialEq>(field: &str, value: Option<T>) -> Result<T> {
            match value {
                Some(value) if value == T::default() => Err(Error::InvalidArgument(format!(
                    "{field} must be at least 1"
                ))),
                Some(value) => Ok(value),
                None => Ok(T::default()),
            }
        }
        Ok(pb::SubscriptionSettings {
            batch_size: given("batch_size", self.batch_size)?,
            max_attempts: given("max_attempts", self.max_attempts)?,
            initial_backoff_ms: given("initial_backoff_ms", self.initial_backoff_ms)?,
            max_backoff_ms: given("max_backoff_ms", self.max_backoff_ms)?,
            timeout_ms: given("timeout_ms", self.timeout_ms)?,
            max_in_flight: given("max_in_flight", self.max_in_flight)?,
        })
    }
}

/// A subscription to create: [`NewSubscription::new`], then the `with_`
/// methods for what differs from the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubscription {
    pub name: String,
    /// The topic's name or id.
    pub topic: String,
    /// An http:// or https:// URL.
    pub endpoint: String,
    pub filter: Option<PayloadFilter>,
    pub settings: DeliverySettings,
    /// `<topic>.dead-letter`, created when missing, if `None`.
    pub dead_letter_topic: Option<String>,
    /// The signing secret (at least 16 characters); generated if `None`.
    pub secret: Option<String>,
    /// Messages published from the creation on, if `None`.
    pub start: Option<DeliveryStart>,
}

impl NewSubscription {
    pub fn new(
        name: impl Into<String>,
        topic: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> NewSubscription {
        NewSubscription {
            name: name.into(),
            topic: topic.into(),
            endpoint: endpoint.into(),
            filter: None,
            settings: DeliverySettings::default(),
            dead_letter_topic: None,
            secret: None,
            start: None,
        }
    }

    pub fn with_filter(mut self, filter: PayloadFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    pub fn with_settings(mut self, settings: DeliverySettings) -> Self {
        self.settings = settings;
        self
    }

    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    pub fn starting_at(mut self, start: DeliveryStart) -> Self {
        self.start = Some(start);
        self
    }

    fn to_pb(&self) -> Result<pb::CreateSubscriptionRequest> {
        Ok(pb::CreateSubscriptionRequest {
            name: self.name.clone(),
            topic: Some(topic_ref(&self.topic)),
            endpoint: self.endpoint.clone(),
            filter: self.filter.as_ref().map(PayloadFilter::to_pb),
            settings: Some(self.settings.to_pb()?),
            dead_letter_topic: self.dead_letter_topic.clone().unwrap_or_default(),
            secret: self.secret.clone().unwrap_or_default(),
            start: self.start.map(DeliveryStart::to_pb),
        })
    }
}

/// What an update does to the filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FilterChange {
    #[default]
    Keep,
    Set(PayloadFilter),
    /// Deliver every message again.
    Remove,
}

/// Changes to a subscription: set fields change, the others stay.
/// Delivery carries on from where it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriptionUpdate {
    pub name: Option<String>,
    pub endpoint: Option<String>,
    pub filter: FilterChange,
    pub settings: DeliverySettings,
}

impl SubscriptionUpdate {
    fn to_pb(&self, id: &str) -> Result<pb::UpdateSubscriptionRequest> {
        let (filter, clear_filter) = match &self.filter {
            FilterChange::Keep => (None, false),
            FilterChange::Set(filter) => (Some(filter.to_pb()), false),
            FilterChange::Remove => (None, true),
        };
        Ok(pb::UpdateSubscriptionRequest {
            id: id.to_string(),
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            filter,
            clear_filter,
            settings: Some(self.settings.to_pb()?),
        })
    }
}

/// A new subscription and its signing secret, which no later call shows.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedSubscription {
    pub subscription: pb::Subscription,
    pub secret: String,
}

impl Client {
    /// Creates a push subscription; the answer carries its signing secret,
    /// shown this once.
    pub async fn create_subscription(
        &self,
        subscription: NewSubscription,
    ) -> Result<CreatedSubscription> {
        let request = subscription.to_pb()?;
        let created = self
            .call_with(Client::subscriptions_grpc, META, Retry::Once, |mut g, _| {
                let r = request.clone();
                async move { g.create_subscription(r).await }
            })
            .await?;
        Ok(CreatedSubscription {
            subscription: created.subscription.unwrap_or_default(),
            secret: created.secret,
        })
    }

    /// Every subscription, in id order, with where delivery stands in each
    /// partition.
    pub async fn list_subscriptions(&self) -> Result<Vec<pb::Subscription>> {
        let list = self
            .call_with(
                Client::subscriptions_grpc,
                META,
                Retry::Idempotent,
                |mut g, _| async move {
                    g.list_subscriptions(pb::ListSubscriptionsRequest {})
                        .await
                },
            )
            .await?;
        Ok(list.subscriptions)
    }

    pub async fn subscription(&self, id: &str) -> Result<pb::Subscription> {
        self.call_on_subscription(id, |mut g, r| async move { g.get_subscription(r).await })
            .await
    }

    pub async fn update_subscription(
        &self,
        id: &str,
        update: &SubscriptionUpdate,
    ) -> Result<pb::Subscription> {
        let request = update.to_pb(id)?;
        // Setting the same fields twice leaves them as once.
        self.call_with(
            Client::subscriptions_grpc,
            META,
            Retry::Idempotent,
            |mut g, _| {
                let r = request.clone();
                async move { g.update_subscription(r).await }
            },
        )
        .await
    }

    /// Deletes a subscription; delivery stops. Answers it as it was.
    pub async fn delete_subscription(&self, id: &str) -> Result<pb::Subscription> {
        self.call_with(Client::subscriptions_grpc, META, Retry::Once, |mut g, _| {
            let r = pb::DeleteSubscriptionRequest { id: id.to_string() };
            async move { g.delete_subscription(r).await }
        })
        .await
    }

    /// Stops delivery where it is; [`Client::resume_subscription`] carries
    /// on from there.
    pub async fn pause_subscription(&self, id: &str) -> Result<pb::Subscription> {
        self.set_paused(id, true).await
    }

    pub async fn resume_subscription(&self, id: &str) -> Result<pb::Subscription> {
        self.set_paused(id, false).await
    }

    /// Pausing (or resuming) twice leaves it as once: retried freely.
    async fn set_paused(&self, id: &str, paused: bool) -> Result<pb::Subscription> {
        self.call_on_subscription(id, |mut g, r| async move {
            if paused {
                g.pause_subscription(r).await
            } else {
                g.resume_subscription(r).await
            }
        })
        .await
    }

    /// A call that names the subscription `id` and changes nothing when
    /// made twice: retried freely.
    async fn call_on_subscription<F, Fut>(&self, id: &str, f: F) -> Result<pb::Subscription>
    where
        F: Fn(SubscriptionsGrpc, pb::GetSubscriptionRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::Subscription>, tonic::Status>>,
    {
        self.call_with(
            Client::subscriptions_grpc,
            META,
            Retry::Idempotent,
            |g, _| f(g, pb::GetSubscriptionRequest { id: id.to_string() }),
        )
        .await
    }

    /// Delivers again from `from` in every partition: a new generation,
    /// whose positions start over.
    pub async fn replay_subscription(
        &self,
        id: &str,
        from: DeliveryStart,
    ) -> Result<pb::Subscription> {
        // Each replay starts a generation: a repeat would start another.
        self.call_with(Client::subscriptions_grpc, META, Retry::Once, |mut g, _| {
            let r = pb::ReplaySubscriptionRequest {
                id: id.to_string(),
                from: Some(from.to_pb()),
            };
            async move { g.replay_subscription(r).await }
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_carry_what_was_asked_and_defaults_as_zero() {
        let new = NewSubscription::new("n", "7", "http://127.0.0.1:9/")
            .with_filter(PayloadFilter::new("/type", json!({"a": "b"})))
            .with_settings(DeliverySettings {
                batch_size: Some(10),
                ..DeliverySettings::default()
            })
            .starting_at(DeliveryStart::TimeMs(5));
        let request = new.to_pb().unwrap();
        assert_eq!(request.topic, Some(topic_ref("7")));
        assert_eq!(request.filter.unwrap().equals_json, r#"{"a":"b"}"#);
        let settings = request.settings.unwrap();
        assert_eq!((settings.batch_size, settings.max_attempts), (10, 0));
        assert_eq!(
            request.start,
            Some(pb::DeliveryStart {
                from: Some(pb::delivery_start::From::TimeMs(5))
            })
        );
        assert!(request.secret.is_empty() && request.dead_letter_topic.is_empty());
    }

    #[test]
    fn a_zero_setting_is_refused_rather_than_read_as_the_default() {
        let zero = DeliverySettings {
            timeout_ms: Some(0),
            ..DeliverySettings::default()
        };
        let new = NewSubscription::new("n", "t", "http://x/").with_settings(zero);
        assert!(matches!(new.to_pb(), Err(Error::InvalidArgument(m)) if m.contains("timeout_ms")));
    }

    #[test]
    fn updates_keep_set_or_remove_the_filter() {
        let keep = SubscriptionUpdate::default().to_pb("sub_1").unwrap();
        assert_eq!((keep.filter, keep.clear_filter), (None, false));
        let remove = SubscriptionUpdate {
            filter: FilterChange::Remove,
            ..SubscriptionUpdate::default()
        };
        let remove = remove.to_pb("sub_1").unwrap();
        assert_eq!((remove.filter, remove.clear_filter), (None, true));
        let set = SubscriptionUpdate {
            filter: FilterChange::Set(PayloadFilter::new("", json!(3))),
            endpoint: Some("https://e/".into()),
            ..SubscriptionUpdate::default()
        };
        let set = set.to_pb("sub_1").unwrap();
        assert_eq!(set.filter.unwrap().equals_json, "3");
        assert_eq!(set.endpoint.as_deref(), Some("https://e/"));
        assert_eq!(set.id, "sub_1");
    }
}
