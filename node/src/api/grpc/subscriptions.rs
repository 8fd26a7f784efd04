//! The `raftstream.v1.Subscriptions` service over the client API's core:
//! push subscriptions (admin scope), and the call that carries a change to
//! the metadata leader.

use raftstream_proto::v1::subscriptions_server::Subscriptions;
use raftstream_proto::v1::subscriptions_server::SubscriptionsServer;

use super::*;
use crate::api::service::ChangedSubscription;
use crate::api::service::DeliveryStart;
use crate::api::service::NewSubscription;
use crate::api::service::PartitionPosition;
use crate::api::service::PayloadFilter;
use crate::api::service::SubscriptionChange;
use crate::api::service::SubscriptionSettings;
use crate::api::service::SubscriptionUpdate;
use crate::api::service::SubscriptionView;

impl ClientService {
    pub fn into_subscriptions_server(self) -> SubscriptionsServer<Self> {
        let max_request_bytes = self.max_request_bytes();
        SubscriptionsServer::new(self)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }

    async fn change(
        &self,
        caller: &Caller,
        change: SubscriptionChange,
        hops: Hops,
    ) -> Result<ChangedSubscription, Status> {
        Ok(self.core.change_subscription(caller, change, hops).await?)
    }

    async fn set_paused(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
        paused: bool,
    ) -> Result<Response<pb::Subscription>, Status> {
        let set =
            |r: pb::GetSubscriptionRequest| Ok(SubscriptionChange::SetPaused { id: r.id, paused });
        self.change_and_show(request, set).await
    }

    /// Admits an admin call, makes the change its request asks for and
    /// answers with the subscription after it.
    async fn change_and_show<T: Send + 'static>(
        &self,
        request: Request<T>,
        change_of: impl FnOnce(T) -> Result<SubscriptionChange, Status>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let changed = self.change(&caller, change_of(request)?, hops).await?;
        Ok(Response::new(view_to_pb(changed.subscription)))
    }
}

fn filter_to_pb(filter: &PayloadFilter) -> pb::PayloadFilter {
    pb::PayloadFilter {
        pointer: filter.pointer.clone(),
        equals_json: filter.equals_json.clone(),
    }
}

fn filter_from_pb(filter: pb::PayloadFilter) -> PayloadFilter {
    PayloadFilter {
        pointer: filter.pointer,
        equals_json: filter.equals_json,
    }
}

fn settings_to_pb(s: &SubscriptionSettings) -> pb::SubscriptionSettings {
    pb::SubscriptionSettings {
        batch_size: s.batch_size,
        max_attempts: s.max_attempts,
        initial_backoff_ms: s.initial_backoff_ms,
        max_backoff_ms: s.max_backoff_ms,
        timeout_ms: s.timeout_ms,
        max_in_flight: s.max_in_flight,
    }
}

fn settings_from_pb(s: Option<pb::SubscriptionSettings>) -> SubscriptionSettings {
    let s = s.unwrap_or_default();
    SubscriptionSettings {
        batch_size: s.batch_size,
        max_attempts: s.max_attempts,
        initial_backoff_ms: s.initial_backoff_ms,
        max_backoff_ms: s.max_backoff_ms,
        timeout_ms: s.timeout_ms,
        max_in_flight: s.max_in_flight,
    }
}

fn start_to_pb(start: &DeliveryStart) -> pb::DeliveryStart {
    use pb::delivery_start::From as Pb;
    let from = match start {
        DeliveryStart::Earliest => Pb::Earliest(true),
        DeliveryStart::Latest => Pb::Latest(true),
        DeliveryStart::Offset(offset) => Pb::Offset(offset.0),
        DeliveryStart::TimeMs(ms) => Pb::TimeMs(*ms),
    };
    pb::DeliveryStart { from: Some(from) }
}

fn start_from_pb(start: Option<pb::DeliveryStart>) -> Result<DeliveryStart, Status> {
    use pb::delivery_start::From as Pb;
    match start.and_then(|s| s.from) {
        Some(Pb::Earliest(true)) => Ok(DeliveryStart::Earliest),
        Some(Pb::Latest(true)) => Ok(DeliveryStart::Latest),
        Some(Pb::Offset(offset)) => Ok(DeliveryStart::Offset(Offset(offset))),
        Some(Pb::TimeMs(ms)) => Ok(DeliveryStart::TimeMs(ms)),
        Some(Pb::Earliest(false) | Pb::Latest(false)) | None => Err(ErrorCode::InvalidRequest
            .status("a start is required: earliest, latest, an offset or a time")),
    }
}

fn view_to_pb(view: SubscriptionView) -> pb::Subscription {
    pb::Subscription {
        filter: view.filter.as_ref().map(filter_to_pb),
        settings: Some(settings_to_pb(&view.settings)),
        id: view.id,
        name: view.name,
        topic_id: view.topic_id.0,
        topic_name: view.topic_name,
        endpoint: view.endpoint,
        dead_letter_topic_id: view.dead_letter_topic_id.0,
        dead_letter_topic_name: view.dead_letter_topic_name,
        paused: view.paused,
        generation: view.generation,
        secret_last_four: view.secret_last_four,
        created_at_ms: view.created_at_ms,
        updated_at_ms: view.updated_at_ms,
        positions: view
            .positions
            .iter()
            .map(|p| pb::PartitionPosition {
                partition: p.partition,
                next_offset: p.next_offset.map(|o| o.0),
                high_watermark: p.high_watermark.map(|o| o.0),
            })
            .collect(),
    }
}

/// A subscription from another node.
pub(super) fn view_from_pb(view: pb::Subscription) -> SubscriptionView {
    SubscriptionView {
        filter: view.filter.map(filter_from_pb),
        settings: settings_from_pb(view.settings),
        id: view.id,
        name: view.name,
        topic_id: TopicId(view.topic_id),
        topic_name: view.topic_name,
        endpoint: view.endpoint,
        dead_letter_topic_id: TopicId(view.dead_letter_topic_id),
        dead_letter_topic_name: view.dead_letter_topic_name,
        paused: view.paused,
        generation: view.generation,
        secret_last_four: view.secret_last_four,
        created_at_ms: view.created_at_ms,
        updated_at_ms: view.updated_at_ms,
        positions: view
            .positions
            .into_iter()
            .map(|p| PartitionPosition {
                partition: p.partition,
                next_offset: p.next_offset.map(Offset),
                high_watermark: p.high_watermark.map(Offset),
            })
            .collect(),
    }
}

fn changed_to_pb(changed: ChangedSubscription) -> pb::SubscriptionWithSecret {
    pb::SubscriptionWithSecret {
        subscription: Some(view_to_pb(changed.subscription)),
        secret: changed.secret.unwrap_or_default(),
    }
}

pub(super) fn changed_from_pb(changed: pb::SubscriptionWithSecret) -> ChangedSubscription {
    ChangedSubscription {
        subscription: view_from_pb(changed.subscription.unwrap_or_default()),
        secret: Some(changed.secret).filter(|s| !s.is_empty()),
    }
}

/// The request that makes `change` on another node. Every change travels
/// as a create or an update request, answered with the subscription and
/// a secret (empty unless created), so one peer call carries them all.
pub(super) fn change_to_pb(change: &SubscriptionChange) -> pb::SubscriptionChange {
    use pb::subscription_change::Change;
    let change = match change {
        SubscriptionChange::Create(new) => Change::Create(pb::CreateSubscriptionRequest {
            name: new.name.clone(),
            topic: Some(topic_ref_to_pb(&new.topic)),
            endpoint: new.endpoint.clone(),
            filter: new.filter.as_ref().map(filter_to_pb),
            settings: Some(settings_to_pb(&new.settings)),
            dead_letter_topic: new.dead_letter_topic.clone().unwrap_or_default(),
            secret: new.secret.clone().unwrap_or_default(),
            start: new.start.as_ref().map(start_to_pb),
        }),
        SubscriptionChange::Update { id, update } => Change::Update(update_to_pb(id, update)),
        SubscriptionChange::Delete { id } => {
            Change::Delete(pb::DeleteSubscriptionRequest { id: id.clone() })
        }
        SubscriptionChange::SetPaused { id, paused: true } => {
            Change::Pause(pb::GetSubscriptionRequest { id: id.clone() })
        }
        SubscriptionChange::SetPaused { id, paused: false } => {
            Change::Resume(pb::GetSubscriptionRequest { id: id.clone() })
        }
        SubscriptionChange::Replay { id, from } => Change::Replay(pb::ReplaySubscriptionRequest {
            id: id.clone(),
            from: Some(start_to_pb(from)),
        }),
    };
    pb::SubscriptionChange {
        change: Some(change),
    }
}

fn update_to_pb(id: &str, update: &SubscriptionUpdate) -> pb::UpdateSubscriptionRequest {
    pb::UpdateSubscriptionRequest {
        id: id.to_string(),
        name: update.name.clone(),
        endpoint: update.endpoint.clone(),
        filter: update
            .filter
            .as_ref()
            .and_then(|f| f.as_ref().map(filter_to_pb)),
        clear_filter: matches!(update.filter, Some(None)),
        settings: Some(settings_to_pb(&update.settings)),
    }
}

fn new_from_pb(request: pb::CreateSubscriptionRequest) -> Result<NewSubscription, Status> {
    Ok(NewSubscription {
        topic: topic_name(request.topic.as_ref())?,
        start: request.start.map(|s| start_from_pb(Some(s))).transpose()?,
        name: request.name,
        endpoint: request.endpoint,
        filter: request.filter.map(filter_from_pb),
        settings: settings_from_pb(request.settings),
        dead_letter_topic: Some(request.dead_letter_topic).filter(|t| !t.is_empty()),
        secret: Some(request.secret).filter(|s| !s.is_empty()),
    })
}

fn update_from_pb(request: pb::UpdateSubscriptionRequest) -> Result<SubscriptionChange, Status> {
    let filter = match (request.filter, request.clear_filter) {
        (Some(_), true) => {
            return Err(ErrorCode::InvalidRequest.status("set filter or clear_filter, not both"));
        }
        (Some(filter), false) => Some(Some(filter_from_pb(filter))),
        (None, true) => Some(None),
        (None, false) => None,
    };
    Ok(SubscriptionChange::Update {
        id: request.id,
        update: SubscriptionUpdate {
            name: request.name,
            endpoint: request.endpoint,
            filter,
            settings: settings_from_pb(request.settings),
        },
    })
}

/// The change a peer's request carries.
pub(super) fn change_from_pb(change: pb::SubscriptionChange) -> Result<SubscriptionChange, Status> {
    use pb::subscription_change::Change;
    match change.change {
        Some(Change::Create(request)) => new_from_pb(request).map(SubscriptionChange::Create),
        Some(Change::Update(request)) => update_from_pb(request),
        Some(Change::Delete(request)) => Ok(SubscriptionChange::Delete { id: request.id }),
        Some(Change::Pause(request)) => Ok(SubscriptionChange::SetPaused {
            id: request.id,
            paused: true,
        }),
        Some(Change::Resume(request)) => Ok(SubscriptionChange::SetPaused {
            id: request.id,
            paused: false,
        }),
        Some(Change::Replay(request)) => Ok(SubscriptionChange::Replay {
            id: request.id,
            from: start_from_pb(request.from)?,
        }),
        None => Err(ErrorCode::InvalidRequest.status("a change is required")),
    }
}

#[tonic::async_trait]
impl Subscriptions for ClientService {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::SubscriptionWithSecret>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let change = SubscriptionChange::Create(new_from_pb(request)?);
        Ok(Response::new(changed_to_pb(
            self.change(&caller, change, hops).await?,
        )))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let (caller, hops, _) = self.admit(request, Some(Scope::Admin)).await?;
        let subscriptions = self.core.subscriptions(&caller, hops).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subscriptions.into_iter().map(view_to_pb).collect(),
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let subscription = self.core.subscription(&caller, &request.id, hops).await?;
        Ok(Response::new(view_to_pb(subscription)))
    }

    async fn update_subscription(
        &self,
        request: Request<pb::UpdateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.change_and_show(request, update_from_pb).await
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.change_and_show(request, |r| Ok(SubscriptionChange::Delete { id: r.id }))
            .await
    }

    async fn pause_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.set_paused(request, true).await
    }

    async fn resume_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        self.set_paused(request, false).await
    }

    async fn replay_subscription(
        &self,
        request: Request<pb::ReplaySubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let replay = |r: pb::ReplaySubscriptionRequest| {
            Ok(SubscriptionChange::Replay {
                id: r.id,
                from: start_from_pb(r.from)?,
            })
        };
        self.change_and_show(request, replay).await
    }

    async fn change_subscription(
        &self,
        request: Request<pb::SubscriptionChange>,
    ) -> Result<Response<pb::SubscriptionWithSecret>, Status> {
        let (caller, hops, request) = self.admit(request, Some(Scope::Admin)).await?;
        let changed = self.change(&caller, change_from_pb(request)?, hops).await?;
        Ok(Response::new(changed_to_pb(changed)))
    }
}
