//! Push delivery: every node delivers the subscriptions of the partitions
//! it leads, one task per (subscription, partition), so a slow or dead
//! endpoint holds up only its own partitions' deliveries.
//!
//! A task reads committed messages from the subscription's position (a
//! consumer-group offset in the partition, `Subscription::position_group`),
//! POSTs them in order (`delivery.rs`), and moves the position on through
//! the partition's own log only after the endpoint answered 2xx or the
//! messages went to the dead-letter topic. A new leader starts from the
//! last position its log holds, so nothing is skipped; what the old leader
//! delivered after its last position is delivered again (at least once).

mod delivery;

/// The headers of every delivery, which the API documents describe.
pub use delivery::ATTEMPT_HEADER;
pub use delivery::SIGNATURE_HEADER;
pub use delivery::SUBSCRIPTION_HEADER;
pub use delivery::TIMESTAMP_HEADER;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::api::service::Service;
use crate::model::GroupId;
use crate::raft::types::Subscription;

/// How often the supervisor looks for partitions it gained or lost the
/// leadership of (metadata changes wake it at once).
const SUPERVISOR_ROUND: Duration = Duration::from_millis(250);

/// One delivery task: the definition it was started with (a changed
/// definition restarts it) and its handle.
struct Running {
    subscription: Subscription,
    task: tokio::task::JoinHandle<()>,
}

/// Runs the deliveries this node owes until it shuts down.
pub async fn run(service: Arc<Service>) {
    let http = match delivery::http_client() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "push delivery cannot start: no HTTP client");
            return;
        }
    };
    let node = service.node.clone();
    let Some(meta) = node.meta_group() else {
        return;
    };
    let mut changes = meta.state.subscribe();
    let mut shutdown = node.shutdown_signal();
    let mut running: HashMap<(String, u32), Running> = HashMap::new();
    let mut in_flight: HashMap<String, (u32, Arc<Semaphore>)> = HashMap::new();
    loop {
        let wanted = owed_deliveries(&service);
        running.retain(|key, run| {
            let keep =
                !run.task.is_finished() && wanted.get(key).is_some_and(|s| *s == run.subscription);
            if !keep {
                run.task.abort();
            }
            keep
        });
        in_flight.retain(|id, _| wanted.keys().any(|(wanted_id, _)| wanted_id == id));
        for ((id, partition), subscription) in wanted {
            if running.contains_key(&(id.clone(), partition)) {
                continue;
            }
            let limit = subscription.settings.max_in_flight;
            let permits = in_flight
                .entry(id.clone())
                .and_modify(|(size, permits)| {
                    if *size != limit {
                        *size = limit;
                        *permits = Arc::new(Semaphore::new(limit as usize));
                    }
                })
                .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit as usize))))
                .1
                .clone();
            let task = delivery::PartitionDelivery {
                service: service.clone(),
                http: http.clone(),
                subscription: subscription.clone(),
                partition,
                permits,
            };
            running.insert(
                (id, partition),
                Running {
                    subscription,
                    task: tokio::spawn(task.run()),
                },
            );
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(SUPERVISOR_ROUND) => {}
            _ = shutdown.changed() => break,
        }
    }
    for run in running.into_values() {
        run.task.abort();
    }
}

/// The (subscription, partition) pairs this node delivers now: those of
/// active subscriptions whose partition it leads.
fn owed_deliveries(service: &Service) -> HashMap<(String, u32), Subscription> {
    let node = &service.node;
    let me = node.id();
    let owed = node.with_metadata(|meta| {
        let mut owed = HashMap::new();
        for subscription in meta.subscriptions.values().filter(|s| !s.paused) {
            let Some(topic) = meta.topics.get(&subscription.topic_id) else {
                continue;
            };
            for partition in 0..topic.partitions.len() as u32 {
                let group_id = GroupId::partition(topic.id, partition);
                if node.group(group_id).is_some_and(|g| g.is_leader(me)) {
                    owed.insert((subscription.id.clone(), partition), subscription.clone());
                }
            }
        }
        owed
    });
    owed.unwrap_or_default()
}
