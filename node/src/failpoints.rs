//! Failpoints of one node, for clusters that tests run in one process: a
//! test makes a named point of the node's code fail, wait, or stop until
//! the test releases it, every time or only the next few times.
//!
//! They belong to one node, not to the process: a cluster's nodes, and the
//! clusters of tests running at once in one test binary, each have their
//! own. The handle travels with the node's [`crate::storage::Storage`]
//! (`StorageConfig::failpoints`), the one handle every layer below the node
//! already holds. A node started without failpoints (every production node)
//! pays an `Option` check at each point.
//!
//! An injected failure takes the path the real failure there would take:
//! a failed fsync marks the storage failed and stops the node, a failed
//! apply or snapshot is an I/O error openraft stops the group on, a lost
//! reply is an unknown outcome. Which hits a probabilistic rule fires on
//! comes from a seed (`RAFTSTREAM_TEST_SEED` in the test cluster), so a
//! failing run can be replayed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

/// A place in the node's code a test can make misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failpoint {
    /// The group-commit fsync of the WAL (`storage/syncer.rs`), which every
    /// append and vote of every group on the node waits for. Runs on the
    /// syncer thread, so a delay or pause holds every group's appends.
    WalFsync,
    /// The start of a state machine's apply of a run of committed entries,
    /// in every group of the node.
    Apply,
    /// Building a snapshot (the retention task asks for one before a purge).
    SnapshotBuild,
    /// Installing a snapshot a leader sent.
    SnapshotInstall,
    /// A write that committed and applied, just before its outcome goes
    /// back to the caller (`group/write.rs`).
    WriteReply,
    /// Starting a partition group the metadata has just placed on the node
    /// (`Node::reconcile`), as a slow disk opening its log would delay it.
    /// A delay or pause holds the start of every group that reconciliation
    /// starts after it; a failure skips the start until the metadata next
    /// changes.
    GroupStart,
}

impl Failpoint {
    pub const ALL: [Failpoint; 6] = [
        Failpoint::WalFsync,
        Failpoint::Apply,
        Failpoint::SnapshotBuild,
        Failpoint::SnapshotInstall,
        Failpoint::WriteReply,
        Failpoint::GroupStart,
    ];
}

/// What a point does when a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The point fails as its real failure would.
    Fail,
    /// The point goes on after this long.
    Delay(Duration),
    /// The point waits until the test calls [`Failpoints::release`].
    Pause,
}

/// When and how often a point fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    action: Action,
    /// How many more hits fire; `None` for every hit.
    times: Option<u64>,
    /// The chance that a hit fires, drawn from the seeded generator.
    probability: f64,
}

impl Rule {
    /// Fires `action` on every hit.
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            times: None,
            probability: 1.0,
        }
    }

    /// Fires on the next `times` hits that draw a firing, then never again.
    pub fn times(self, times: u64) -> Rule {
        Rule {
            times: Some(times),
            ..self
        }
    }

    /// Fires on a hit with chance `probability` (0 to 1), drawn from the
    /// failpoints' seeded generator.
    pub fn with_probability(self, probability: f64) -> Rule {
        Rule {
            probability: probability.clamp(0.0, 1.0),
            ..self
        }
    }
}

/// The failure a point injects; each point turns it into its own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("failure injected at failpoint {point:?}")]
pub struct Injected {
    pub point: Failpoint,
}

/// The failpoints of one node.
#[derive(Debug)]
pub struct Failpoints {
    state: Mutex<State>,
    /// Counts releases: a paused hit waits for the count of its point to
    /// move past the one it saw when it paused.
    releases: watch::Sender<BTreeMap<Failpoint, u64>>,
}

#[derive(Debug)]
struct State {
    rules: BTreeMap<Failpoint, Rule>,
    fired: BTreeMap<Failpoint, u64>,
    waiting: BTreeMap<Failpoint, usize>,
    rng: StdRng,
}

/// What one hit of a point does.
enum Step {
    Pass,
    Fail,
    Delay(Duration),
    Pause(PausedHit),
}

/// A hit waiting at a paused point; counted in `waiting` until dropped,
/// also when the waiting future is dropped before its release.
struct PausedHit {
    failpoints: Arc<Failpoints>,
    point: Failpoint,
    released: watch::Receiver<BTreeMap<Failpoint, u64>>,
    paused_at: u64,
}

impl PausedHit {
    async fn wait(mut self) {
        let (point, paused_at) = (self.point, self.paused_at);
        // An error means the failpoints are gone, and with them any release.
        let _ = self
            .released
            .wait_for(|releases| releases.get(&point).copied().unwrap_or(0) != paused_at)
            .await;
    }
}

impl Drop for PausedHit {
    fn drop(&mut self) {
        let mut state = self.failpoints.state.lock();
        if let Some(waiting) = state.waiting.get_mut(&self.point) {
            *waiting = waiting.saturating_sub(1);
        }
    }
}

impl Failpoints {
    /// Failpoints with nothing armed; probabilistic rules draw from `seed`.
    pub fn new(seed: u64) -> Arc<Failpoints> {
        Arc::new(Failpoints {
            state: Mutex::new(State {
                rules: BTreeMap::new(),
                fired: BTreeMap::new(),
                waiting: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
            releases: watch::Sender::new(BTreeMap::new()),
        })
    }

    /// Arms `point` with `rule`, replacing its rule if it had one.
    pub fn arm(&self, point: Failpoint, rule: Rule) {
        self.state.lock().rules.insert(point, rule);
    }

    /// Disarms `point` and lets every hit paused there go on.
    pub fn release(&self, point: Failpoint) {
        self.state.lock().rules.remove(&point);
        self.releases.send_modify(|releases| {
            *releases.entry(point).or_default() += 1;
        });
    }

    /// Disarms every point and lets every paused hit go on: a node whose
    /// syncer thread is paused could not stop.
    pub fn release_all(&self) {
        for point in Failpoint::ALL {
            self.release(point);
        }
    }

    /// How many hits of `point` fired (failed, waited or paused).
    pub fn fired(&self, point: Failpoint) -> u64 {
        self.state.lock().fired.get(&point).copied().unwrap_or(0)
    }

    /// How many hits wait at `point` now, paused.
    pub fn waiting(&self, point: Failpoint) -> usize {
        self.state.lock().waiting.get(&point).copied().unwrap_or(0)
    }

    /// Whether a hit of `point` fires now, and how.
    fn step(self: &Arc<Self>, point: Failpoint) -> Step {
        let mut state = self.state.lock();
        let State {
            rules, fired, rng, ..
        } = &mut *state;
        let Some(rule) = rules.get_mut(&point) else {
            return Step::Pass;
        };
        // A certain rule draws nothing, so arming one does not change which
        // hits a probabilistic rule of another point fires on.
        if rule.times == Some(0) || (rule.probability < 1.0 && !rng.random_bool(rule.probability)) {
            return Step::Pass;
        }
        if let Some(times) = &mut rule.times {
            *times -= 1;
        }
        *fired.entry(point).or_default() += 1;
        match rule.action {
            Action::Fail => Step::Fail,
            Action::Delay(by) => Step::Delay(by),
            Action::Pause => {
                *state.waiting.entry(point).or_default() += 1;
                let released = self.releases.subscribe();
                let paused_at = released.borrow().get(&point).copied().unwrap_or(0);
                Step::Pause(PausedHit {
                    failpoints: Arc::clone(self),
                    point,
                    released,
                    paused_at,
                })
            }
        }
    }

    /// Passes `point` in async code: fails, sleeps or waits as its rule
    /// says.
    pub async fn hit(self: &Arc<Self>, point: Failpoint) -> Result<(), Injected> {
        match self.step(point) {
            Step::Pass => Ok(()),
            Step::Fail => Err(Injected { point }),
            Step::Delay(by) => {
                tokio::time::sleep(by).await;
                Ok(())
            }
            Step::Pause(paused) => {
                paused.wait().await;
                Ok(())
            }
        }
    }

    /// Passes `point` on a thread of its own (the syncer's): blocks it for a
    /// delay or a pause.
    pub fn hit_blocking(self: &Arc<Self>, point: Failpoint) -> Result<(), Injected> {
        match self.step(point) {
            Step::Pass => Ok(()),
            Step::Fail => Err(Injected { point }),
            Step::Delay(by) => {
                std::thread::sleep(by);
                Ok(())
            }
            Step::Pause(paused) => {
                futures::executor::block_on(paused.wait());
                Ok(())
            }
        }
    }
}

/// Passes `point` of a node that may have failpoints, in async code.
pub async fn hit(failpoints: Option<&Arc<Failpoints>>, point: Failpoint) -> Result<(), Injected> {
    match failpoints {
        Some(failpoints) => failpoints.hit(point).await,
        None => Ok(()),
    }
}

/// Passes `point` of a node that may have failpoints, on a thread of its
/// own.
pub fn hit_blocking(
    failpoints: Option<&Arc<Failpoints>>,
    point: Failpoint,
) -> Result<(), Injected> {
    match failpoints {
        Some(failpoints) => failpoints.hit_blocking(point),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(failpoints: &Arc<Failpoints>, point: Failpoint, hits: usize) -> Vec<bool> {
        (0..hits)
            .map(|_| failpoints.hit_blocking(point).is_err())
            .collect()
    }

    #[test]
    fn an_unarmed_point_passes_and_a_node_without_failpoints_too() {
        let failpoints = Failpoints::new(0);
        assert_eq!(outcomes(&failpoints, Failpoint::Apply, 3), [false; 3]);
        assert_eq!(failpoints.fired(Failpoint::Apply), 0);
        assert_eq!(hit_blocking(None, Failpoint::WalFsync), Ok(()));
    }

    #[test]
    fn a_rule_with_times_fires_that_often_then_never() {
        let failpoints = Failpoints::new(0);
        failpoints.arm(Failpoint::WalFsync, Rule::new(Action::Fail).times(2));
        assert_eq!(
            outcomes(&failpoints, Failpoint::WalFsync, 4),
            [true, true, false, false]
        );
        assert_eq!(failpoints.fired(Failpoint::WalFsync), 2);
        assert_eq!(
            failpoints.hit_blocking(Failpoint::Apply),
            Ok(()),
            "other points are not armed"
        );
    }

    #[test]
    fn failpoints_of_two_nodes_are_independent() {
        let one = Failpoints::new(0);
        let other = Failpoints::new(0);
        one.arm(Failpoint::Apply, Rule::new(Action::Fail));
        assert!(one.hit_blocking(Failpoint::Apply).is_err());
        assert!(other.hit_blocking(Failpoint::Apply).is_ok());
    }

    #[test]
    fn the_same_seed_fires_on_the_same_hits() {
        let run = |seed| {
            let failpoints = Failpoints::new(seed);
            failpoints.arm(
                Failpoint::WriteReply,
                Rule::new(Action::Fail).with_probability(0.5),
            );
            outcomes(&failpoints, Failpoint::WriteReply, 64)
        };
        let first = run(7);
        assert_eq!(first, run(7));
        assert_ne!(first, run(8), "another seed draws otherwise");
        let fired = first.iter().filter(|f| **f).count();
        assert!((16..=48).contains(&fired), "{fired} of 64 at one half");

        let never = Failpoints::new(7);
        never.arm(
            Failpoint::WriteReply,
            Rule::new(Action::Fail).with_probability(0.0),
        );
        assert_eq!(outcomes(&never, Failpoint::WriteReply, 16), [false; 16]);
    }

    #[test]
    fn a_delay_passes_after_its_time() {
        let failpoints = Failpoints::new(0);
        let delay = Duration::from_millis(30);
        failpoints.arm(Failpoint::SnapshotBuild, Rule::new(Action::Delay(delay)));
        let started = std::time::Instant::now();
        assert_eq!(failpoints.hit_blocking(Failpoint::SnapshotBuild), Ok(()));
        assert!(started.elapsed() >= delay);
        assert_eq!(failpoints.fired(Failpoint::SnapshotBuild), 1);
    }

    #[test]
    fn a_paused_thread_goes_on_only_once_released() {
        let failpoints = Failpoints::new(0);
        failpoints.arm(Failpoint::WalFsync, Rule::new(Action::Pause));
        let (passed_tx, passed) = std::sync::mpsc::channel();
        let paused = std::thread::spawn({
            let failpoints = Arc::clone(&failpoints);
            move || {
                let outcome = failpoints.hit_blocking(Failpoint::WalFsync);
                let _ = passed_tx.send(outcome);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while failpoints.waiting(Failpoint::WalFsync) == 0 {
            assert!(std::time::Instant::now() < deadline, "the hit never paused");
            std::thread::yield_now();
        }
        assert!(
            passed.recv_timeout(Duration::from_millis(50)).is_err(),
            "a paused hit went on before its release"
        );
        failpoints.release(Failpoint::WalFsync);
        assert_eq!(passed.recv_timeout(Duration::from_secs(10)), Ok(Ok(())));
        let _ = paused.join();
        assert_eq!(failpoints.waiting(Failpoint::WalFsync), 0);
        assert_eq!(
            failpoints.hit_blocking(Failpoint::WalFsync),
            Ok(()),
            "a release disarms"
        );
    }

    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn paused_tasks_go_on_at_release_all_and_a_dropped_one_stops_waiting() {
        let failpoints = Failpoints::new(0);
        failpoints.arm(Failpoint::Apply, Rule::new(Action::Pause));
        failpoints.arm(Failpoint::WriteReply, Rule::new(Action::Pause));
        let apply = tokio::spawn({
            let failpoints = Arc::clone(&failpoints);
            async move { failpoints.hit(Failpoint::Apply).await }
        });
        let abandoned = tokio::spawn({
            let failpoints = Arc::clone(&failpoints);
            async move { failpoints.hit(Failpoint::WriteReply).await }
        });
        while failpoints.waiting(Failpoint::Apply) + failpoints.waiting(Failpoint::WriteReply) < 2 {
            tokio::task::yield_now().await;
        }
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(failpoints.waiting(Failpoint::WriteReply), 0);
        assert!(!apply.is_finished());
        failpoints.release_all();
        assert_eq!(apply.await.ok(), Some(Ok(())));
        assert_eq!(failpoints.waiting(Failpoint::Apply), 0);
    }
}
