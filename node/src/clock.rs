//! Whether this node's wall clock can be trusted to expire messages.
//!
//! Retention by age compares the leader's wall clock with the batch times
//! it stamped. A clock that jumped ahead (a bad NTP step, a VM restored
//! from a snapshot) would make unexpired messages look old, and purging
//! them cannot be undone. So a leader expires by age only while its clock
//! agrees, within `Limits::max_clock_offset_ms`, with the clocks of a
//! majority of the partition's replicas (itself included), measured on the
//! node heartbeats every node sends every peer. A group with no other
//! replica compares the wall clock with the monotonic clock since the node
//! started instead. Retention by size needs no clock and always runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

use crate::model::NodeId;
use crate::time::Clock;

/// A peer's clock measured on a heartbeat's round trip.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The peer's wall clock minus ours, at the middle of the round trip.
    offset_ms: i64,
    /// The round trip: the measurement is uncertain by half of it.
    rtt_ms: i64,
    at: Instant,
}

#[derive(Debug)]
pub struct ClockCheck {
    max_offset_ms: i64,
    /// How old a peer's sample may be and still count.
    fresh_for: Duration,
    /// The node's clock: its monotonic side dates samples and measures
    /// the time since the start.
    time: Arc<dyn Clock>,
    /// The wall clock and the monotonic clock when the node started.
    anchor: (i64, Instant),
    samples: Mutex<HashMap<NodeId, Sample>>,
    /// Whether the last check distrusted the clock, to log only changes.
    distrusted: Mutex<bool>,
}

impl ClockCheck {
    pub fn new(max_offset_ms: u64, fresh_for: Duration, time: Arc<dyn Clock>) -> ClockCheck {
        ClockCheck {
            max_offset_ms: i64::try_from(max_offset_ms).unwrap_or(i64::MAX),
            fresh_for,
            anchor: (time.now_ms(), time.now()),
            time,
            samples: Mutex::new(HashMap::new()),
            distrusted: Mutex::new(false),
        }
    }

    /// Records a heartbeat to `peer` sent at `sent_ms` and answered at
    /// `answered_ms` (our wall clock) with the peer's wall clock `peer_ms`.
    pub fn record(&self, peer: NodeId, sent_ms: i64, peer_ms: i64, answered_ms: i64) {
        let rtt_ms = answered_ms.saturating_sub(sent_ms).max(0);
        let midpoint = sent_ms.saturating_add(rtt_ms / 2);
        let sample = Sample {
            offset_ms: peer_ms.saturating_sub(midpoint),
            rtt_ms,
            at: self.time.now(),
        };
        self.samples.lock().insert(peer, sample);
    }

    /// `Ok` when `now_ms`, this node's wall clock, may expire messages of a
    /// group with these `replicas`; otherwise why not.
    pub fn check(&self, me: NodeId, replicas: &[NodeId], now_ms: i64) -> Result<(), String> {
        let verdict = self.verdict(me, replicas, now_ms);
        let mut distrusted = self.distrusted.lock();
        match (&verdict, *distrusted) {
            (Err(why), false) => {
                tracing::warn!("retention by age paused: {why}");
                *distrusted = true;
            }
            (Ok(()), true) => {
                tracing::info!("retention by age resumed: the wall clock agrees again");
                *distrusted = false;
            }
            _ => {}
        }
        verdict
    }

    fn verdict(&self, me: NodeId, replicas: &[NodeId], now_ms: i64) -> Result<(), String> {
        let now = self.time.now();
        let others: Vec<NodeId> = replicas.iter().copied().filter(|r| *r != me).collect();
        if others.is_empty() {
            let (wall, instant) = self.anchor;
            let elapsed = i64::try_from(now.saturating_duration_since(instant).as_millis())
                .unwrap_or(i64::MAX);
            let drift = now_ms.saturating_sub(wall.saturating_add(elapsed));
            return if drift.abs() <= self.max_offset_ms {
                Ok(())
            } else {
                Err(format!(
                    "the wall clock moved {drift} ms against the monotonic clock since the \
                     node started (more than {} ms)",
                    self.max_offset_ms
                ))
            };
        }
        let samples = self.samples.lock();
        let agreeing = others
            .iter()
            .filter(|peer| {
                samples.get(peer).is_some_and(|s| {
                    now.saturating_duration_since(s.at) <= self.fresh_for
                        && s.offset_ms.abs() <= self.max_offset_ms.saturating_add(s.rtt_ms / 2)
                })
            })
            .count();
        // This node agrees with itself.
        let majority = replicas.len() / 2 + 1;
        if agreeing + 1 >= majority {
            return Ok(());
        }
        let offsets: Vec<String> = others
            .iter()
            .map(|peer| match samples.get(peer) {
                Some(s) => format!("node {peer}: {} ms", s.offset_ms),
                None => format!("node {peer}: unknown"),
            })
            .collect();
        Err(format!(
            "this node's wall clock agrees within {} ms with {} of the other replicas, a \
             majority needs {}; their clocks against ours: {}",
            self.max_offset_ms,
            agreeing,
            majority - 1,
            offsets.join(", ")
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    const HOUR_MS: i64 = 3_600_000;

    /// A check on a clock that moves only when the test moves it.
    fn check() -> (ClockCheck, Arc<ManualClock>) {
        let time = Arc::new(ManualClock::new(1_000_000));
        let clocks = ClockCheck::new(5_000, Duration::from_secs(10), time.clone());
        (clocks, time)
    }

    #[test]
    fn a_leader_whose_clock_agrees_with_a_majority_expires_by_age() {
        let (clocks, _) = check();
        // Node 2 is 2 ms ahead, node 3 is an hour ahead.
        clocks.record(NodeId(2), 1_000, 1_007, 1_010);
        clocks.record(NodeId(3), 1_000, 1_005 + HOUR_MS, 1_010);
        assert_eq!(
            clocks.verdict(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], 1_010),
            Ok(())
        );
        // Five replicas: agreeing with one other is not a majority.
        let refused = clocks
            .verdict(
                NodeId(1),
                &[NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)],
                1_010,
            )
            .unwrap_err();
        assert!(refused.contains("node 4: unknown"), "{refused}");
    }

    #[test]
    fn a_leader_whose_clock_jumped_ahead_does_not() {
        // Node 1's clock is an hour ahead of both others: they see it so,
        // and it sees them an hour behind.
        let (clocks, _) = check();
        let ahead = 1_000 + HOUR_MS;
        clocks.record(NodeId(2), ahead, 1_005, ahead + 10);
        clocks.record(NodeId(3), ahead, 1_004, ahead + 10);
        let refused = clocks
            .verdict(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], ahead + 10)
            .unwrap_err();
        assert!(
            refused.contains("with 0 of the other replicas"),
            "{refused}"
        );
    }

    #[test]
    fn stale_or_missing_samples_do_not_count() {
        let (clocks, time) = check();
        clocks.record(NodeId(2), 1_000, 1_005, 1_010);
        assert_eq!(
            clocks.verdict(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], 1_010),
            Ok(())
        );
        // The heartbeats stop: once the sample is older than `fresh_for`,
        // node 3's missing one leaves no majority.
        time.advance(Duration::from_secs(10));
        assert_eq!(
            clocks.verdict(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], 1_010),
            Ok(())
        );
        time.advance(Duration::from_millis(1));
        assert!(
            clocks
                .check(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], 1_010)
                .is_err()
        );
        // A new heartbeat makes it count again.
        clocks.record(NodeId(2), 1_000, 1_005, 1_010);
        assert_eq!(
            clocks.check(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3)], 1_010),
            Ok(())
        );
    }

    #[test]
    fn a_single_replica_compares_the_wall_clock_with_the_monotonic_clock() {
        let (clocks, time) = check();
        time.advance(Duration::from_secs(60));
        assert_eq!(clocks.check(NodeId(1), &[NodeId(1)], time.now_ms()), Ok(()));
        // The wall clock steps an hour ahead; the monotonic clock does not.
        time.set_wall_ms(time.now_ms() + HOUR_MS);
        let refused = clocks
            .check(NodeId(1), &[NodeId(1)], time.now_ms())
            .unwrap_err();
        assert!(refused.contains("monotonic"), "{refused}");
    }
}
