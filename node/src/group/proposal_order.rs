//! Proposing each idempotent producer's batches in sequence order.
//!
//! A producer keeps several batches of a partition in flight, and the
//! server handles the requests concurrently, so a batch can reach the
//! leader's Raft log ahead of the one before it. The state machine then
//! refuses it as out of sequence and the client resends it, but only after
//! the refused batch was replicated and fsynced on every replica for
//! nothing: under `benches/compare.sh`'s pipelined workload (4 producers,
//! 4 partitions, 5 batches in flight) 291 of 670 entries were such refusals,
//! nearly half of all bytes written. So the leader holds a batch, briefly,
//! until the batches before it have been proposed. Nothing here decides an
//! outcome: a batch that waited in vain is proposed anyway and the state
//! machine judges it as before.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Producers remembered; past this the map starts over, and a forgotten
/// producer's order comes from the state machine again.
const PRODUCERS_MAX: usize = 10_000;

/// One partition leader's record of the sequence up to which each producer's
/// batches have been proposed.
#[derive(Debug, Default)]
pub struct ProposalOrder {
    proposed_up_to: Mutex<HashMap<u64, u64>>,
    proposed: Notify,
}

impl ProposalOrder {
    /// Waits, at most `limit`, until every batch of `producer` before
    /// `base_sequence` has been proposed here or applied (`applied_next` is
    /// the state machine's next expected sequence for the producer).
    pub async fn wait_turn(
        &self,
        producer: u64,
        base_sequence: u64,
        applied_next: u64,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a proposal between the check
            // and the wait is not missed.
            let proposed = self.proposed.notified();
            let next = self
                .proposed_up_to
                .lock()
                .get(&producer)
                .copied()
                .unwrap_or(0)
                .max(applied_next);
            if base_sequence <= next {
                return;
            }
            if tokio::time::timeout_at(deadline, proposed).await.is_err() {
                return;
            }
        }
    }

    /// Records that the batch `base_sequence .. base_sequence + count` of
    /// `producer` has been handed to Raft, and wakes the batches waiting
    /// for it.
    pub fn proposed(&self, producer: u64, base_sequence: u64, count: u64) {
        {
            let mut proposed_up_to = self.proposed_up_to.lock();
            if proposed_up_to.len() >= PRODUCERS_MAX && !proposed_up_to.contains_key(&producer) {
                proposed_up_to.clear();
            }
            let next = proposed_up_to.entry(producer).or_insert(0);
            *next = (*next).max(base_sequence.saturating_add(count));
            debug_assert!(
                proposed_up_to.len() <= PRODUCERS_MAX,
                "{} producers remembered, more than {PRODUCERS_MAX}",
                proposed_up_to.len()
            );
        }
        self.proposed.notify_waiters();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_batch_waits_for_the_batches_before_it() {
        let order = Arc::new(ProposalOrder::default());
        // Batch 2 (sequences 20..30) arrives first; it waits.
        let second = tokio::spawn({
            let order = order.clone();
            async move { order.wait_turn(7, 20, 0, LONG).await }
        });
        // The first batch (0..20) needs no wait.
        tokio::time::timeout(Duration::from_secs(5), order.wait_turn(7, 0, 0, LONG))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "batch 2 went ahead of batch 1");
        order.proposed(7, 0, 20);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn retries_other_producers_and_applied_batches_do_not_wait() {
        let order = ProposalOrder::default();
        order.proposed(7, 0, 20);
        let quick = Duration::from_secs(5);
        // A retry of a batch already proposed.
        tokio::time::timeout(quick, order.wait_turn(7, 0, 0, LONG))
            .await
            .unwrap();
        // The next batch in sequence.
        tokio::time::timeout(quick, order.wait_turn(7, 20, 0, LONG))
            .await
            .unwrap();
        // A producer whose earlier batches the state machine has applied
        // (this leader never proposed them: it was elected since).
        tokio::time::timeout(quick, order.wait_turn(8, 50, 50, LONG))
            .await
            .unwrap();
    }

    #[test]
    fn the_producer_map_starts_over_when_full() {
        let order = ProposalOrder::default();
        for producer in 0..PRODUCERS_MAX as u64 {
            order.proposed(producer, 0, 1);
        }
        order.proposed(0, 1, 1);
        assert_eq!(order.proposed_up_to.lock().len(), PRODUCERS_MAX);
        order.proposed(u64::MAX, 0, 1);
        assert_eq!(*order.proposed_up_to.lock(), HashMap::from([(u64::MAX, 1)]));
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "10001 producers remembered, more than 10000")]
    fn a_producer_map_past_its_bound_stops_a_debug_build() {
        let order = ProposalOrder::default();
        order
            .proposed_up_to
            .lock()
            .extend((0..=PRODUCERS_MAX as u64).map(|producer| (producer, 1)));
        order.proposed(0, 1, 1);
    }

    #[tokio::test]
    async fn a_batch_whose_predecessor_never_comes_goes_after_the_limit() {
        let order = ProposalOrder::default();
        let limit = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), order.wait_turn(7, 40, 0, limit))
            .await
            .unwrap();
        assert!(started.elapsed() >= limit, "it did not wait for batch 1");
    }
}
