//! Push subscriptions over HTTP (admin scope): `/api/subscriptions` and
//! `/api/subscriptions/{subscription_id}` with `pause`, `resume` and
//! `replay`. Every handler calls the wire-free service
//! (`api/service/subscriptions.rs`), as the `Subscriptions` gRPC service
//! does. Also the AsyncAPI description of the delivery itself: the signed
//! POST the cluster sends to a subscription's endpoint (`crate::push`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::json;
use utoipa::IntoParams;
use utoipa::PartialSchema;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::NoSuchSubscription;
use super::error::PathErrors;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::JsonBody;
use super::topics::Done;
use super::topics::present;
use crate::api::service::Caller;
use crate::api::service::ChangedSubscription;
use crate::api::service::DeliveryStart;
use crate::api::service::Hops;
use crate::api::service::NewSubscription;
use crate::api::service::PayloadFilter;
use crate::api::service::SubscriptionChange;
use crate::api::service::SubscriptionSettings;
use crate::api::service::SubscriptionUpdate;
use crate::api::service::SubscriptionView;
use crate::model::Offset;
use crate::model::TopicName;
use crate::model::rfc3339;
use crate::push::ATTEMPT_HEADER;
use crate::push::SIGNATURE_HEADER;
use crate::push::SUBSCRIPTION_HEADER;
use crate::push::TIMESTAMP_HEADER;

/// The `{subscription_id}` path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    /// The subscription's id (`sub_…`).
    pub subscription_id: String,
}

/// Only messages whose payload holds `equals` at the JSON pointer
/// `pointer` are delivered; the others are skipped.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFilter {
    /// An RFC 6901 JSON pointer such as `/type`; empty for the whole
    /// payload.
    pub pointer: String,
    /// The JSON value the payload must hold there.
    pub equals: Value,
}

impl SubscriptionFilter {
    fn into_filter(self) -> PayloadFilter {
        PayloadFilter {
            pointer: self.pointer,
            equals_json: self.equals.to_string(),
        }
    }

    fn of(filter: &PayloadFilter) -> SubscriptionFilter {
        SubscriptionFilter {
            pointer: filter.pointer.clone(),
            // Stored only after it parsed (`validate_filter`).
            equals: serde_json::from_str(&filter.equals_json).unwrap_or(Value::Null),
        }
    }
}

/// How a subscription delivers; absent fields take the defaults on
/// creation and stay as they are on update.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettingsChange {
    /// Messages per POST, 1 to 100 (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub batch_size: Option<u32>,
    /// POSTs of one batch before its messages go to the dead-letter topic,
    /// 1 to 100 (default 5).
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// The wait after the first failed POST, doubled after each further
    /// one (with jitter) up to `max_backoff_ms` (default 500).
    #[schema(minimum = 1, maximum = 86400000)]
    pub initial_backoff_ms: Option<u64>,
    /// The longest wait between two POSTs of a batch (default 60000).
    #[schema(minimum = 1, maximum = 86400000)]
    pub max_backoff_ms: Option<u64>,
    /// How long one POST may take before it counts as failed, 1 to 300000
    /// (default 10000).
    #[schema(minimum = 1, maximum = 300000)]
    pub timeout_ms: Option<u64>,
    /// POSTs in flight at once for the subscription on one node, 1 to 1024
    /// (default 4).
    #[schema(minimum = 1, maximum = 1024)]
    pub max_in_flight: Option<u32>,
}

impl DeliverySettingsChange {
    /// The service's form, where zero means "not given". A zero sent here
    /// would silently mean the default: it is refused instead.
    fn into_settings(self) -> Result<SubscriptionSettings, ApiError> {
        fn given<T: Default + PartialEq>(field: &str, value: Option<T>) -> Result<T, ApiError> {
            match value {
                Some(value) if value == T::default() => Err(ApiError::bad_request(format!(
                    "settings.{field} must be at least 1"
                ))),
                Some(value) => Ok(value),
                None => Ok(T::default()),
            }
        }
        Ok(SubscriptionSettings {
            batch_size: given("batch_size", self.batch_size)?,
            max_attempts: given("max_attempts", self.max_attempts)?,
            initial_backoff_ms: given("initial_backoff_ms", self.initial_backoff_ms)?,
            max_backoff_ms: given("max_backoff_ms", self.max_backoff_ms)?,
            timeout_ms: given("timeout_ms", self.timeout_ms)?,
            max_in_flight: given("max_in_flight", self.max_in_flight)?,
        })
    }
}

/// How a subscription delivers (see `DeliverySettingsChange` for each
/// field).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct DeliverySettings {
    pub batch_size: u32,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
}

impl From<SubscriptionSettings> for DeliverySettings {
    fn from(s: SubscriptionSettings) -> DeliverySettings {
        DeliverySettings {
            batch_size: s.batch_size,
            max_attempts: s.max_attempts,
            initial_backoff_ms: s.initial_backoff_ms,
            max_backoff_ms: s.max_backoff_ms,
            timeout_ms: s.timeout_ms,
            max_in_flight: s.max_in_flight,
        }
    }
}

/// A time: RFC 3339 text, or milliseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StartTime {
    Millis(i64),
    Text(String),
}

/// Where delivery starts in every partition: `"earliest"` (every retained
/// message), `"latest"` (messages published from now on), `{"offset": n}`
/// (the same offset in every partition) or `{"time": t}` (the first
/// message at or after `t`, RFC 3339 or Unix milliseconds).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
    Time(StartTime),
}

impl StartFrom {
    fn into_start(self) -> Result<DeliveryStart, ApiError> {
        Ok(match self {
            StartFrom::Earliest => DeliveryStart::Earliest,
            StartFrom::Latest => DeliveryStart::Latest,
            StartFrom::Offset(offset) => DeliveryStart::Offset(Offset(offset)),
            StartFrom::Time(StartTime::Millis(ms)) => DeliveryStart::TimeMs(ms),
            StartFrom::Time(StartTime::Text(text)) => {
                let time = time::OffsetDateTime::parse(
                    &text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| {
                    ApiError::bad_request(format!("time {text:?} is not an RFC 3339 time: {e}"))
                })?;
                DeliveryStart::TimeMs(
                    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
                )
            }
        })
    }
}

/// A new push subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubscription {
    /// Not blank, at most 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: String,
    /// The topic to deliver: its integer id or its name.
    #[schema(min_length = 1)]
    pub topic: String,
    /// Where messages are POSTed: an http:// or https:// URL with a host.
    #[schema(max_length = 2048, pattern = "^[hH][tT][tT][pP][sS]?://[^/?#]")]
    pub endpoint: String,
    pub filter: Option<SubscriptionFilter>,
    pub settings: Option<DeliverySettingsChange>,
    /// The topic messages go to once every attempt failed;
    /// `<topic>.dead-letter` (created when missing) by default.
    pub dead_letter_topic: Option<String>,
    /// The HMAC-SHA256 key deliveries are signed with, 16 to 256 printable
    /// characters; generated (`whsec_…`) when absent.
    #[schema(min_length = 16, max_length = 256)]
    pub secret: Option<String>,
    /// Messages published from the creation on, by default.
    pub start: Option<StartFrom>,
}

/// Changes to a subscription; absent fields stay as they are.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSubscription {
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: Option<String>,
    #[schema(max_length = 2048, pattern = "^[hH][tT][tT][pP][sS]?://[^/?#]")]
    pub endpoint: Option<String>,
    /// A new filter; null removes the filter.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SubscriptionFilter>)]
    pub filter: Option<Option<SubscriptionFilter>>,
    /// The settings given change; the others stay.
    pub settings: Option<DeliverySettingsChange>,
}

/// Where delivery starts again.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaySubscription {
    pub from: StartFrom,
}

/// Where delivery stands in one partition of the topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPosition {
    pub partition: u32,
    /// The next offset to deliver; null before the first delivery since
    /// the creation or the last replay, or when the partition's leader
    /// could not be asked.
    pub next_offset: Option<u64>,
    /// The offset the next message published to the partition gets; null
    /// when the partition's leader could not be asked.
    pub high_watermark: Option<u64>,
}

/// A push subscription, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    pub id: String,
    pub name: String,
    /// The topic's name; empty once the topic is gone.
    pub topic: String,
    pub topic_id: u64,
    pub endpoint: String,
    pub filter: Option<SubscriptionFilter>,
    pub settings: DeliverySettings,
    pub dead_letter_topic: String,
    pub dead_letter_topic_id: u64,
    /// A paused subscription delivers nothing until resumed.
    pub paused: bool,
    /// Raised by every replay.
    pub generation: u64,
    /// The last four characters of the signing secret.
    pub secret_last_four: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub positions: Vec<DeliveryPosition>,
}

impl Subscription {
    fn of(view: SubscriptionView) -> Subscription {
        Subscription {
            filter: view.filter.as_ref().map(SubscriptionFilter::of),
            settings: view.settings.into(),
            id: view.id,
            name: view.name,
            topic: view.topic_name,
            topic_id: view.topic_id.0,
            endpoint: view.endpoint,
            dead_letter_topic: view.dead_letter_topic_name,
            dead_letter_topic_id: view.dead_letter_topic_id.0,
            paused: view.paused,
            generation: view.generation,
            secret_last_four: view.secret_last_four,
            created_at: rfc3339(view.created_at_ms),
            updated_at: rfc3339(view.updated_at_ms),
            positions: view
                .positions
                .iter()
                .map(|p| DeliveryPosition {
                    partition: p.partition,
                    next_offset: p.next_offset.map(|o| o.0),
                    high_watermark: p.high_watermark.map(|o| o.0),
                })
                .collect(),
        }
    }
}

/// A new subscription with its signing secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionWithSecret {
    #[serde(flatten)]
    pub subscription: Subscription,
    /// The HMAC-SHA256 key every delivery is signed with. No later answer
    /// shows it.
    pub secret: String,
}

/// A list of subscriptions, in id order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionList {
    pub data: Vec<Subscription>,
}

impl super::Gateway {
    async fn change_subscription(
        &self,
        change: SubscriptionChange,
    ) -> Result<ChangedSubscription, ApiError> {
        Ok(self
            .core
            .change_subscription(&Caller::Node, change, Hops::default())
            .await?)
    }

    /// Makes `change` and answers the subscription after it.
    async fn changed_subscription(
        &self,
        change: SubscriptionChange,
    ) -> Result<Json<Subscription>, ApiError> {
        let changed = self.change_subscription(change).await?;
        Ok(Json(Subscription::of(changed.subscription)))
    }
}

/// Creates a push subscription: the cluster POSTs the topic's messages to
/// the endpoint, signed with the secret this answer shows once.
#[utoipa::path(
    post,
    path = "/api/subscriptions",
    tag = "subscriptions",
    operation_id = "create_subscription",
    request_body(content = CreateSubscription, content_type = "application/json"),
    responses(
        (status = 201, description = "The subscription and its signing secret, shown this \
            once.", body = SubscriptionWithSecret),
        (status = 400, description = "`invalid_request`: malformed JSON, an unknown, missing \
            or invalid field (an endpoint that is not an http(s) URL, a short secret, a \
            setting out of range).", body = ErrorBody),
        (status = 404, description = "`not_found`: no such topic.", body = ErrorBody),
        (status = 409, description = "`conflict`: the dead-letter topic cannot be used.",
            body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(gateway): Shared,
    JsonBody(body): JsonBody<CreateSubscription>,
) -> Result<(StatusCode, Json<SubscriptionWithSecret>), ApiError> {
    let new = NewSubscription {
        name: body.name,
        topic: TopicName::parse(&body.topic),
        endpoint: body.endpoint,
        filter: body.filter.map(SubscriptionFilter::into_filter),
        settings: body.settings.unwrap_or_default().into_settings()?,
        dead_letter_topic: body.dead_letter_topic,
        secret: body.secret,
        start: body.start.map(StartFrom::into_start).transpose()?,
    };
    let created = gateway
        .change_subscription(SubscriptionChange::Create(new))
        .await?;
    let answer = SubscriptionWithSecret {
        subscription: Subscription::of(created.subscription),
        secret: created.secret.unwrap_or_default(),
    };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Lists push subscriptions, without their secrets.
#[utoipa::path(
    get,
    path = "/api/subscriptions",
    tag = "subscriptions",
    operation_id = "list_subscriptions",
    responses(
        (status = 200, description = "The subscriptions.", body = SubscriptionList),
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list(State(gateway): Shared) -> Result<Json<SubscriptionList>, ApiError> {
    let views = gateway
        .core
        .subscriptions(&Caller::Node, Hops::default())
        .await?;
    Ok(Json(SubscriptionList {
        data: views.into_iter().map(Subscription::of).collect(),
    }))
}

/// One push subscription, with where delivery stands in each partition.
#[utoipa::path(
    get,
    path = "/api/subscriptions/{subscription_id}",
    tag = "subscriptions",
    operation_id = "get_subscription",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The subscription.", body = Subscription),
        PathErrors,
        NoSuchSubscription,
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
) -> Result<Json<Subscription>, ApiError> {
    let view = gateway
        .core
        .subscription(&Caller::Node, &subscription_id, Hops::default())
        .await?;
    Ok(Json(Subscription::of(view)))
}

/// Updates a subscription: name, endpoint, filter, settings. Delivery
/// carries on from where it is.
#[utoipa::path(
    put,
    path = "/api/subscriptions/{subscription_id}",
    tag = "subscriptions",
    operation_id = "update_subscription",
    params(SubscriptionPath),
    request_body(content = UpdateSubscription, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated subscription.", body = Subscription),
        (status = 400, description = "`invalid_request`: malformed JSON, an unknown or \
            invalid field.", body = ErrorBody),
        NoSuchSubscription,
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
    JsonBody(body): JsonBody<UpdateSubscription>,
) -> Result<Json<Subscription>, ApiError> {
    let update = SubscriptionUpdate {
        name: body.name,
        endpoint: body.endpoint,
        filter: body
            .filter
            .map(|filter| filter.map(SubscriptionFilter::into_filter)),
        settings: body.settings.unwrap_or_default().into_settings()?,
    };
    gateway
        .changed_subscription(SubscriptionChange::Update {
            id: subscription_id,
            update,
        })
        .await
}

/// Deletes a subscription; delivery stops. Its dead-letter topic stays.
#[utoipa::path(
    delete,
    path = "/api/subscriptions/{subscription_id}",
    tag = "subscriptions",
    operation_id = "delete_subscription",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "Deleted.", body = Done),
        PathErrors,
        NoSuchSubscription,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
) -> Result<Json<Done>, ApiError> {
    gateway
        .change_subscription(SubscriptionChange::Delete {
            id: subscription_id,
        })
        .await?;
    Ok(Done::success())
}

/// Stops delivery where it is; resume carries on from there.
#[utoipa::path(
    post,
    path = "/api/subscriptions/{subscription_id}/pause",
    tag = "subscriptions",
    operation_id = "pause_subscription",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The paused subscription.", body = Subscription),
        PathErrors,
        NoSuchSubscription,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn pause(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
) -> Result<Json<Subscription>, ApiError> {
    gateway
        .changed_subscription(SubscriptionChange::SetPaused {
            id: subscription_id,
            paused: true,
        })
        .await
}

/// Resumes a paused subscription from where it stopped.
#[utoipa::path(
    post,
    path = "/api/subscriptions/{subscription_id}/resume",
    tag = "subscriptions",
    operation_id = "resume_subscription",
    params(SubscriptionPath),
    responses(
        (status = 200, description = "The subscription, delivering again.",
            body = Subscription),
        PathErrors,
        NoSuchSubscription,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn resume(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
) -> Result<Json<Subscription>, ApiError> {
    gateway
        .changed_subscription(SubscriptionChange::SetPaused {
            id: subscription_id,
            paused: false,
        })
        .await
}

/// Delivers again from an offset, a time, the oldest retained message or
/// the end, in every partition (a new generation: older positions are
/// dropped).
#[utoipa::path(
    post,
    path = "/api/subscriptions/{subscription_id}/replay",
    tag = "subscriptions",
    operation_id = "replay_subscription",
    params(SubscriptionPath),
    request_body(content = ReplaySubscription, content_type = "application/json"),
    responses(
        (status = 200, description = "The subscription, its generation raised.",
            body = Subscription),
        (status = 400, description = "`invalid_request`: malformed JSON, an unknown field, \
            or `from` missing or not one of the documented forms.", body = ErrorBody),
        NoSuchSubscription,
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(gateway): Shared,
    ApiPath(SubscriptionPath { subscription_id }): ApiPath<SubscriptionPath>,
    JsonBody(body): JsonBody<ReplaySubscription>,
) -> Result<Json<Subscription>, ApiError> {
    let from = body.from.into_start()?;
    gateway
        .changed_subscription(SubscriptionChange::Replay {
            id: subscription_id,
            from,
        })
        .await
}

/// One message of a push delivery.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushedMessage {
    /// The message's id, as the consume API gives it.
    pub message_id: String,
    pub offset: u64,
    /// When it was published.
    #[schema(format = DateTime)]
    pub time: String,
    /// The payload as published when it is JSON; any other payload as a
    /// string.
    pub payload: Value,
}

/// The body of a push delivery: messages of one partition, in offset
/// order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushDelivery {
    pub subscription_id: String,
    pub topic: String,
    pub topic_id: u64,
    pub partition: u32,
    /// Up to the subscription's `batch_size` messages.
    pub messages: Vec<PushedMessage>,
}

/// The AsyncAPI channel address of a subscription's endpoint.
pub const PUSH_ADDRESS: &str = "{endpoint}";

/// Adds the push delivery's body schemas to the OpenAPI components (no
/// route serves them; the AsyncAPI document, which copies the components,
/// names them).
pub fn add_push_schemas(openapi: &mut utoipa::openapi::OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(PushDelivery::name().into_owned(), PushDelivery::schema());
    components
        .schemas
        .insert(PushedMessage::name().into_owned(), PushedMessage::schema());
}

/// Adds the push delivery to the AsyncAPI document: a channel at the
/// subscription's endpoint, the operation a receiver takes it with, and its
/// message (headers, and the body schema `add_push_schemas` registered).
pub fn describe_push_delivery(asyncapi: &mut Value) {
    let text = |description: &str| json!({ "type": "string", "description": description });
    let headers = json!({
        "type": "object",
        "required": [SIGNATURE_HEADER, TIMESTAMP_HEADER, SUBSCRIPTION_HEADER, ATTEMPT_HEADER],
        "properties": {
            SIGNATURE_HEADER: text("`v1=` and the hex HMAC-SHA256, under the subscription's \
                secret, of `<timestamp>.<body>`: the X-Raftstream-Timestamp value, a dot, and \
                the raw body bytes. Recompute it and compare in constant time."),
            TIMESTAMP_HEADER: text("The Unix time in seconds the delivery was signed at. \
                Refuse deliveries far from your clock (say, 5 minutes) so a captured one \
                cannot be replayed later."),
            SUBSCRIPTION_HEADER: text("The subscription's id."),
            ATTEMPT_HEADER: text("1 for the first POST of a batch, then 2, 3, … up to \
                max_attempts; a repeat carries the same messages."),
        },
    });
    let additions = [
        (
            "/channels/pushDelivery",
            json!({
                "address": PUSH_ADDRESS,
                "title": "A push subscription's endpoint",
                "description": "The cluster POSTs a subscription's messages here (POST \
                    /api/subscriptions creates one): at least once, in offset order per \
                    partition, one batch of a partition at a time. Any 2xx answer \
                    acknowledges the batch; anything else, or no answer within timeout_ms, \
                    is retried with exponential backoff and jitter, and after max_attempts \
                    the batch goes to the dead-letter topic and delivery moves on.",
                "parameters": {
                    "endpoint": { "description": "The subscription's endpoint URL." },
                },
                "messages": {
                    "pushDelivery": { "$ref": "#/components/messages/pushDelivery" },
                },
            }),
        ),
        (
            "/operations/receivePushDelivery",
            json!({
                "action": "receive",
                "channel": { "$ref": "#/channels/pushDelivery" },
                "summary": "Receive a topic's messages at your endpoint, signed.",
                "messages": [{ "$ref": "#/channels/pushDelivery/messages/pushDelivery" }],
                "bindings": { "http": { "method": "POST", "bindingVersion": "0.3.0" } },
            }),
        ),
        (
            "/components/messages/pushDelivery",
            json!({
                "name": "pushDelivery",
                "title": "A push delivery",
                "summary": "Messages of one partition, in offset order, signed with the \
                    subscription's secret.",
                "contentType": "application/json",
                "headers": headers,
                "payload": { "$ref": format!("#/components/schemas/{}", PushDelivery::name()) },
            }),
        ),
    ];
    for (pointer, value) in additions {
        let Some((parent, key)) = pointer.rsplit_once('/') else {
            continue;
        };
        if let Some(Value::Object(parent)) = asyncapi.pointer_mut(parent) {
            parent.insert(key.to_string(), value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn start(json: &str) -> Result<DeliveryStart, String> {
        let from: StartFrom = serde_json::from_str(json).map_err(|e| e.to_string())?;
        from.into_start().map_err(|e| e.message)
    }

    #[test]
    fn start_positions_read_as_documented() {
        assert_eq!(start(r#""earliest""#), Ok(DeliveryStart::Earliest));
        assert_eq!(start(r#""latest""#), Ok(DeliveryStart::Latest));
        assert_eq!(
            start(r#"{"offset": 7}"#),
            Ok(DeliveryStart::Offset(Offset(7)))
        );
        assert_eq!(start(r#"{"time": 1500}"#), Ok(DeliveryStart::TimeMs(1500)));
        assert_eq!(
            start(r#"{"time": "1970-01-01T00:00:02.5Z"}"#),
            Ok(DeliveryStart::TimeMs(2500))
        );
        for bad in [
            r#""oldest""#,
            r#"{"offset": -1}"#,
            r#"{"time": "yesterday"}"#,
            r#"{"offset": 1, "time": 2}"#,
            "3",
        ] {
            assert!(start(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_settings_are_refused_rather_than_read_as_defaults() {
        let change: DeliverySettingsChange = serde_json::from_str(r#"{"batch_size": 10}"#).unwrap();
        let settings = change.into_settings().unwrap();
        assert_eq!(SubscriptionSettings::or_defaults(settings).batch_size, 10);
        assert_eq!(
            SubscriptionSettings::or_defaults(settings).max_attempts,
            SubscriptionSettings::DEFAULT.max_attempts
        );
        let zero: DeliverySettingsChange = serde_json::from_str(r#"{"timeout_ms": 0}"#).unwrap();
        let refused = zero.into_settings().unwrap_err();
        assert!(refused.message.contains("timeout_ms"), "{refused:?}");
    }

    #[test]
    fn filters_keep_their_value_as_json() {
        let filter: SubscriptionFilter =
            serde_json::from_str(r#"{"pointer": "/type", "equals": {"a": [1, "x"]}}"#).unwrap();
        let stored = filter.into_filter();
        assert!(stored.matches(br#"{"type": {"a": [1, "x"]}}"#));
        let shown = SubscriptionFilter::of(&stored);
        assert_eq!(shown.equals, json!({"a": [1, "x"]}));
    }
}
