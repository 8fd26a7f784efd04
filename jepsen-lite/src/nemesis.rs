//! Faults on a seeded schedule: a quiet period, one fault for a while, its
//! heal, and again until the time limit. The schedule (which fault, how
//! long) follows from the seed alone; the victims of a leader fault depend
//! on where the leaders are at that moment.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use raftstream_client::pb;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cluster::Cluster;
use crate::cluster::grpc_addr;
use crate::history::Kind;
use crate::history::Outcome;
use crate::net::Net;
use crate::proxy::LinkDelay;
use crate::proxy::PeerProxies;
use crate::workload::Recorder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillOne,
    KillMinority,
    KillLeaders,
    KillAll,
    PauseOne,
    PauseLeaders,
    PartitionOne,
    PartitionHalves,
    PartitionRing,
    PartitionLeaders,
    PartitionOneWay,
    Loss,
    Clock,
    PowerLoss,
    Latency,
    WipeOne,
}

impl Fault {
    pub const ALL: [Fault; 16] = [
        Fault::KillOne,
        Fault::KillMinority,
        Fault::KillLeaders,
        Fault::KillAll,
        Fault::PauseOne,
        Fault::PauseLeaders,
        Fault::PartitionOne,
        Fault::PartitionHalves,
        Fault::PartitionRing,
        Fault::PartitionLeaders,
        Fault::PartitionOneWay,
        Fault::Loss,
        Fault::Clock,
        Fault::PowerLoss,
        Fault::Latency,
        Fault::WipeOne,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::KillOne => "kill-one",
            Fault::KillMinority => "kill-minority",
            Fault::KillLeaders => "kill-leaders",
            Fault::KillAll => "kill-all",
            Fault::PauseOne => "pause-one",
            Fault::PauseLeaders => "pause-leaders",
            Fault::PartitionOne => "partition-one",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionLeaders => "partition-leaders",
            Fault::PartitionOneWay => "partition-one-way",
            Fault::Loss => "loss",
            Fault::Clock => "clock",
            Fault::PowerLoss => "power-loss",
            Fault::Latency => "latency",
            Fault::WipeOne => "wipe-one",
        }
    }

    /// The group a fault belongs to on the command line.
    fn group(self) -> &'static str {
        match self {
            Fault::KillOne | Fault::KillMinority | Fault::KillLeaders | Fault::KillAll => "kill",
            Fault::PauseOne | Fault::PauseLeaders => "pause",
            Fault::PartitionOne
            | Fault::PartitionHalves
            | Fault::PartitionRing
            | Fault::PartitionLeaders
            | Fault::PartitionOneWay => "partition",
            Fault::Loss => "loss",
            Fault::Clock => "clock",
            Fault::PowerLoss => "power",
            Fault::Latency => "latency",
            Fault::WipeOne => "wipe",
        }
    }
}

/// Parses `kill,partition-ring,all,none`: fault names, groups (`kill`,
/// `pause`, `partition`, `loss`, `clock`, `power`, `latency`, `wipe`),
/// `all`, or `none`.
pub fn parse(list: &str) -> Result<Vec<Fault>, String> {
    let mut out = BTreeSet::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let matched: Vec<Fault> = Fault::ALL
            .iter()
            .copied()
            .filter(|f| word == "all" || f.name() == word || f.group() == word)
            .collect();
        if matched.is_empty() && word != "none" {
            let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
            return Err(format!(
                "unknown nemesis {word:?}; use all, none, kill, pause, partition, loss, clock, power, latency, wipe or one of {}",
                names.join(", ")
            ));
        }
        out.extend(matched);
    }
    Ok(out.into_iter().collect())
}

pub fn names(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    faults
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// What a fault did, so that its heal can undo exactly that.
enum Undo {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Network,
    Clocks(Vec<u64>),
    Latency,
}

pub struct Nemesis {
    pub net: Arc<Net>,
    pub cluster: Arc<Mutex<Cluster>>,
    /// Present in runs whose faults include `latency`.
    pub proxies: Option<Arc<PeerProxies>>,
    pub recorder: Arc<Recorder>,
    pub faults: Vec<Fault>,
    pub seed: u64,
    pub token: String,
}

/// Symmetric cuts → per node, the nodes it drops.
fn blocked_by_cuts(size: u64, cuts: &[(u64, u64)]) -> Vec<Vec<u64>> {
    let mut blocked = vec![Vec::new(); size as usize];
    for (a, b) in cuts {
        blocked[(*a - 1) as usize].push(*b);
        blocked[(*b - 1) as usize].push(*a);
    }
    blocked
}

/// Cuts between every node of `side` and every node outside it.
fn cuts_around(size: u64, side: &[u64]) -> Vec<(u64, u64)> {
    let mut cuts = Vec::new();
    for a in side {
        for b in 1..=size {
            if !side.contains(&b) {
                cuts.push((*a, b));
            }
        }
    }
    cuts
}

/// Every pair of nodes once.
fn all_pairs(size: u64) -> Vec<(u64, u64)> {
    let mut pairs = Vec::new();
    for a in 1..=size {
        for b in (a + 1)..=size {
            pairs.push((a, b));
        }
    }
    pairs
}

/// Overlapping majorities: each node keeps its two ring neighbours (5
/// nodes) or, with 3 nodes, one node bridges two that cannot see each
/// other; every node still sees a majority, but no two see the same one.
fn ring_cuts(order: &[u64]) -> Vec<(u64, u64)> {
    let n = order.len();
    if n < 4 {
        return match order {
            [a, _, c] => vec![(*a, *c)],
            _ => Vec::new(),
        };
    }
    let mut cuts = Vec::new();
    for i in 0..n {
        for j in (i + 1)..n {
            let distance = (j - i).min(n - (j - i));
            if distance > 1 {
                cuts.push((order[i], order[j]));
            }
        }
    }
    cuts
}

impl Nemesis {
    async fn leaders(&self) -> Vec<u64> {
        let running: Vec<u64> = {
            let mut cluster = self.cluster.lock();
            cluster.nodes().filter(|n| cluster.is_running(*n)).collect()
        };
        for node in running {
            let addr = grpc_addr(node);
            let status = async {
                let mut grpc = raftstream_client::connect(&addr, Some(&self.token))
                    .await
                    .ok()?;
                grpc.cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            if let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                let leaders: BTreeSet<u64> = status
                    .groups
                    .iter()
                    .filter(|g| g.topic == crate::workload::TOPIC)
                    .filter_map(|g| g.leader)
                    .collect();
                if !leaders.is_empty() {
                    return leaders.into_iter().collect();
                }
            }
        }
        Vec::new()
    }

    /// Starts `fault`; returns how to undo it and a description.
    async fn apply(&self, fault: Fault, rng: &mut StdRng) -> anyhow::Result<(Undo, String)> {
        let size = self.cluster.lock().size;
        let mut nodes: Vec<u64> = (1..=size).collect();
        nodes.shuffle(rng);
        let minority = ((size - 1) / 2) as usize;
        let mut leaders = match fault {
            Fault::KillLeaders | Fault::PauseLeaders | Fault::PartitionLeaders => {
                self.leaders().await
            }
            _ => Vec::new(),
        };
        if leaders.is_empty() {
            leaders = vec![nodes[0]];
        }
        let describe = |v: &[u64]| format!("nodes {v:?}");
        Ok(match fault {
            Fault::KillOne | Fault::KillMinority | Fault::KillLeaders | Fault::KillAll => {
                let victims: Vec<u64> = match fault {
                    Fault::KillOne => nodes[..1].to_vec(),
                    Fault::KillMinority => nodes[..minority.max(1)].to_vec(),
                    Fault::KillLeaders => leaders,
                    _ => nodes.clone(),
                };
                let mut cluster = self.cluster.lock();
                for v in &victims {
                    cluster.kill(*v)?;
                }
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::PauseOne | Fault::PauseLeaders => {
                let victims = if fault == Fault::PauseOne {
                    nodes[..1].to_vec()
                } else {
                    leaders
                };
                let mut cluster = self.cluster.lock();
                for v in &victims {
                    cluster.pause(*v)?;
                }
                let d = describe(&victims);
                (Undo::Resume(victims), d)
            }
            Fault::PartitionOne
            | Fault::PartitionHalves
            | Fault::PartitionRing
            | Fault::PartitionLeaders => {
                let (cuts, d) = match fault {
                    Fault::PartitionOne => (
                        cuts_around(size, &nodes[..1]),
                        format!("{} alone", nodes[0]),
                    ),
                    Fault::PartitionHalves => {
                        let side = &nodes[..minority.max(1)];
                        (cuts_around(size, side), format!("{side:?} | rest"))
                    }
                    Fault::PartitionRing => (ring_cuts(&nodes), format!("ring {nodes:?}")),
                    _ => {
                        let mut cuts = Vec::new();
                        for l in &leaders {
                            cuts.extend(cuts_around(size, &[*l]));
                        }
                        (cuts, format!("leaders {leaders:?} each alone"))
                    }
                };
                let blocked = blocked_by_cuts(size, &cuts);
                for (i, b) in blocked.iter().enumerate() {
                    self.net.set_rules(i as u64 + 1, b, &[], 0)?;
                }
                (Undo::Network, d)
            }
            Fault::PartitionOneWay => {
                // The victim hears nobody; everybody still hears it.
                let victim = nodes[0];
                let others: Vec<u64> = (1..=size).filter(|n| *n != victim).collect();
                self.net.set_rules(victim, &others, &[], 0)?;
                (Undo::Network, format!("{victim} hears nobody"))
            }
            Fault::Loss => {
                let percent = rng.random_range(10..=40);
                for node in 1..=size {
                    let others: Vec<u64> = (1..=size).filter(|n| *n != node).collect();
                    self.net.set_rules(node, &[], &others, percent)?;
                }
                (Undo::Network, format!("{percent}% of peer packets dropped"))
            }
            Fault::PowerLoss => {
                // One node, or every node at once (a data-centre outage).
                let victims = if rng.random_bool(0.5) {
                    nodes[..1].to_vec()
                } else {
                    nodes.clone()
                };
                let mut cluster = self.cluster.lock();
                for v in &victims {
                    cluster.power_loss(*v)?;
                }
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::WipeOne => {
                // A replaced disk: the node comes back empty and must catch
                // up before it votes.
                let victims = nodes[..1].to_vec();
                let mut cluster = self.cluster.lock();
                for v in &victims {
                    cluster.wipe(*v)?;
                }
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::Clock => {
                let victims = nodes[..minority.max(1)].to_vec();
                let mut d = Vec::new();
                let cluster = self.cluster.lock();
                for v in &victims {
                    let magnitude = rng.random_range(2..=120);
                    let offset = if rng.random_bool(0.5) {
                        magnitude
                    } else {
                        -magnitude
                    };
                    cluster.set_clock_offset(*v, offset)?;
                    d.push(format!("{v}: {offset:+}s"));
                }
                (Undo::Clocks(victims), d.join(", "))
            }
            Fault::Latency => {
                let Some(proxies) = &self.proxies else {
                    anyhow::bail!("the latency nemesis needs the peer proxies");
                };
                let base_ms = rng.random_range(50..=200);
                let delay = LinkDelay {
                    base_ms,
                    jitter_ms: rng.random_range(0..=base_ms / 2),
                };
                // Every link, or one slow node's links to all the others.
                let (pairs, links) = if rng.random_bool(0.5) {
                    (all_pairs(size), "every link".to_string())
                } else {
                    (
                        cuts_around(size, &nodes[..1]),
                        format!("node {}'s links", nodes[0]),
                    )
                };
                proxies.delay(&pairs, delay);
                (
                    Undo::Latency,
                    format!(
                        "{links} delayed {}±{} ms each way",
                        delay.base_ms, delay.jitter_ms
                    ),
                )
            }
        })
    }

    fn heal(&self, undo: &Undo) -> anyhow::Result<()> {
        match undo {
            Undo::Restart(nodes) => {
                let mut cluster = self.cluster.lock();
                for n in nodes {
                    cluster.start(*n)?;
                }
            }
            Undo::Resume(nodes) => {
                let mut cluster = self.cluster.lock();
                for n in nodes {
                    cluster.resume(*n)?;
                }
            }
            Undo::Network => self.net.heal()?,
            Undo::Clocks(nodes) => {
                let cluster = self.cluster.lock();
                for n in nodes {
                    cluster.set_clock_offset(*n, 0)?;
                }
            }
            Undo::Latency => {
                if let Some(proxies) = &self.proxies {
                    proxies.heal();
                }
            }
        }
        Ok(())
    }

    /// Notes nodes that exited without being killed: a crash is a finding.
    fn note_crashes(&self) {
        for (node, status) in self.cluster.lock().exited() {
            let now = self.recorder.now_us();
            self.recorder.record(
                "nemesis",
                now,
                now,
                Outcome::Fail,
                Some(format!("node {node} exited on its own: {status}")),
                Kind::Crash { node },
            );
        }
    }

    /// Runs faults until `until` (µs since start), then heals.
    pub async fn run(self, until_us: u64) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        if self.faults.is_empty() {
            while self.recorder.now_us() < until_us {
                self.note_crashes();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return Ok(());
        }
        loop {
            let quiet = Duration::from_millis(rng.random_range(2_000..5_000));
            let hold = Duration::from_millis(rng.random_range(3_000..8_000));
            let fault = self.faults[rng.random_range(0..self.faults.len())];
            self.sleep_checking(quiet, until_us).await;
            if self.recorder.now_us() + (hold.as_micros() as u64) / 2 > until_us {
                return Ok(());
            }
            let start = self.recorder.now_us();
            let (undo, detail) = self.apply(fault, &mut rng).await?;
            eprintln!(
                "[{:>6.1}s] nemesis: {} {detail}",
                start as f64 / 1e6,
                fault.name()
            );
            self.sleep_checking(hold, until_us).await;
            self.heal(&undo)?;
            let end = self.recorder.now_us();
            eprintln!(
                "[{:>6.1}s] nemesis: healed {}",
                end as f64 / 1e6,
                fault.name()
            );
            self.recorder.record(
                "nemesis",
                start,
                end,
                Outcome::Ok,
                None,
                Kind::Fault {
                    name: fault.name().to_string(),
                    detail,
                },
            );
        }
    }

    async fn sleep_checking(&self, wait: Duration, until_us: u64) {
        let end = self.recorder.now_us() + wait.as_micros() as u64;
        let end = end.min(until_us);
        while self.recorder.now_us() < end {
            self.note_crashes();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_names_parse_and_unknown_words_are_refused() {
        assert_eq!(parse("all").unwrap().len(), Fault::ALL.len());
        assert_eq!(
            parse("kill").unwrap(),
            vec![
                Fault::KillOne,
                Fault::KillMinority,
                Fault::KillLeaders,
                Fault::KillAll
            ]
        );
        assert_eq!(
            parse("loss,pause-one").unwrap(),
            vec![Fault::PauseOne, Fault::Loss]
        );
        assert!(parse("none").unwrap().is_empty());
        assert!(parse("meteor").is_err());
    }

    #[test]
    fn in_a_five_node_ring_every_node_keeps_exactly_two_neighbours() {
        let order = [3, 1, 4, 5, 2];
        let blocked = blocked_by_cuts(5, &ring_cuts(&order));
        for b in &blocked {
            assert_eq!(b.len(), 2, "{blocked:?}");
        }
        // 3's neighbours in the ring are 1 and 2; it cannot hear 4 and 5.
        let mut of3 = blocked[2].clone();
        of3.sort();
        assert_eq!(of3, vec![4, 5]);
    }

    #[test]
    fn latency_is_its_own_group_and_part_of_all() {
        assert_eq!(parse("latency").unwrap(), vec![Fault::Latency]);
        assert!(parse("all").unwrap().contains(&Fault::Latency));
    }

    #[test]
    fn all_pairs_names_each_pair_of_five_nodes_once() {
        let pairs = all_pairs(5);
        assert_eq!(pairs.len(), 10);
        let unique: BTreeSet<(u64, u64)> =
            pairs.iter().map(|(a, b)| (*a.min(b), *a.max(b))).collect();
        assert_eq!(unique.len(), 10);
        assert!(pairs.iter().all(|(a, b)| a != b));
    }

    #[test]
    fn a_three_node_ring_is_a_bridge() {
        assert_eq!(ring_cuts(&[2, 3, 1]), vec![(2, 1)]);
    }
}
