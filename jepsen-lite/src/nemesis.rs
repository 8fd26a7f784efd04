//! Faults on a seeded schedule: a quiet period, one fault for a while, its
//! heal, and again until the time limit. The schedule (which fault, how
//! long) follows from the seed alone; the victims of a leader fault depend
//! on where the leaders are at that moment.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use raftstream_client::pb;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cluster::Cluster;
use crate::cluster::DiskFault;
use crate::cluster::EXIT_STORAGE_FAILED;
use crate::cluster::grpc_addr;
use crate::cluster::http_addr;
use crate::history::Kind;
use crate::history::Outcome;
use crate::membership::Admin;
use crate::membership::REMOVAL_GRACE;
use crate::membership::Removal;
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
    TornWrite,
    FsyncEio,
    DiskFull,
    MovePartition,
    RemoveNode,
}

impl Fault {
    pub const ALL: [Fault; 21] = [
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
        Fault::TornWrite,
        Fault::FsyncEio,
        Fault::DiskFull,
        Fault::MovePartition,
        Fault::RemoveNode,
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
            Fault::TornWrite => "torn-write",
            Fault::FsyncEio => "fsync-eio",
            Fault::DiskFull => "disk-full",
            Fault::MovePartition => "move-partition",
            Fault::RemoveNode => "remove-node",
        }
    }

    /// Whether nodes must run on lazyfs for this fault.
    pub fn needs_lazyfs(self) -> bool {
        matches!(
            self,
            Fault::PowerLoss | Fault::TornWrite | Fault::FsyncEio | Fault::DiskFull
        )
    }

    /// The lazyfs fault behind a disk fault.
    fn disk_fault(self) -> Option<DiskFault> {
        match self {
            Fault::FsyncEio => Some(DiskFault::FsyncEio),
            Fault::DiskFull => Some(DiskFault::DiskFull),
            _ => None,
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
            Fault::PowerLoss | Fault::TornWrite => "power",
            Fault::Latency => "latency",
            Fault::WipeOne => "wipe",
            Fault::FsyncEio | Fault::DiskFull => "disk",
            Fault::MovePartition | Fault::RemoveNode => "membership",
        }
    }
}

/// The words a nemesis list may use besides fault names.
const GROUPS: &str = "kill, pause, partition, loss, clock, power, latency, wipe, disk, membership";

fn unknown(word: &str) -> String {
    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
    format!(
        "unknown nemesis {word:?}; use all, none, {GROUPS}, one of {}, or two of these joined by + (partition+kill)",
        names.join(", ")
    )
}

/// The faults one word names: a fault, a group, or `all`.
fn expand(word: &str) -> Result<Vec<Fault>, String> {
    let matched: Vec<Fault> = Fault::ALL
        .iter()
        .copied()
        .filter(|f| word == "all" || f.name() == word || f.group() == word)
        .collect();
    if matched.is_empty() {
        return Err(unknown(word));
    }
    Ok(matched)
}

/// Groups whose faults stop nodes and restart them at their heal.
fn restarts(group: &str) -> bool {
    matches!(group, "kill" | "power" | "wipe")
}

/// Why faults `a` and `b` cannot be in effect at the same time, if they
/// cannot: they would act on the same thing, or one's heal would undo or
/// wait on the other.
fn conflict(a: Fault, b: Fault) -> Option<String> {
    let (ga, gb) = (a.group(), b.group());
    let either = |x: &str, y: &str| (ga == x && gb == y) || (ga == y && gb == x);
    if ga == gb {
        return Some(format!("both are {ga} faults"));
    }
    if either("partition", "loss") {
        return Some(
            "partition and loss faults are both rules in each node's one nftables chain: \
             the second would replace the first's rules"
                .into(),
        );
    }
    if restarts(ga) && restarts(gb) {
        return Some(format!(
            "{ga} and {gb} faults both stop nodes and restart them at their heal: the first \
             heal would restart nodes the other fault still holds down"
        ));
    }
    let other = if ga == "disk" {
        gb
    } else if gb == "disk" {
        ga
    } else {
        return None;
    };
    if restarts(other) {
        return Some(format!(
            "a disk fault's heal restarts every victim that is down, which would end the \
             {other} fault early (and lazyfs's disk fault would outlive the node it was on)"
        ));
    }
    if other == "pause" {
        return Some(
            "a disk fault's heal waits until its victims serve again, which a paused node \
             cannot do"
                .into(),
        );
    }
    None
}

/// One side of a composed word: the word as written and its faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    word: String,
    faults: Vec<Fault>,
}

/// What one step of the schedule draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// One fault.
    One(Fault),
    /// Two faults in effect at the same time (`A+B`): one of the first
    /// side's, then one of the second's, healed in the reverse order.
    Composed(Side, Side),
}

impl Entry {
    fn name(&self) -> String {
        match self {
            Entry::One(f) => f.name().to_string(),
            Entry::Composed(a, b) => format!("{}+{}", a.word, b.word),
        }
    }
}

/// A parsed nemesis list: the entries each step picks uniformly among.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    entries: Vec<Entry>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every fault some step may apply, plain or in a composition, in
    /// [`Fault::ALL`] order: what the run must prepare for (lazyfs, the
    /// latency proxies, libfaketime).
    pub fn faults(&self) -> Vec<Fault> {
        let mut all = BTreeSet::new();
        for entry in &self.entries {
            match entry {
                Entry::One(f) => {
                    all.insert(*f);
                }
                Entry::Composed(a, b) => all.extend(a.faults.iter().chain(&b.faults)),
            }
        }
        all.into_iter().collect()
    }

    /// Whether some step may apply `fault`.
    pub fn contains(&self, fault: Fault) -> bool {
        self.faults().contains(&fault)
    }

    /// The entries, comma-separated: `kill-one,partition+kill`, or `none`.
    pub fn names(&self) -> String {
        if self.entries.is_empty() {
            return "none".into();
        }
        self.entries
            .iter()
            .map(Entry::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Draws the faults of one step: one, or two to be in effect at once
    /// (applied in this order, healed in the reverse). Empty without
    /// entries.
    fn pick(&self, rng: &mut StdRng) -> Vec<Fault> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        match &self.entries[rng.random_range(0..self.entries.len())] {
            Entry::One(f) => vec![*f],
            Entry::Composed(a, b) => {
                let first = a.faults[rng.random_range(0..a.faults.len())];
                let second = b.faults[rng.random_range(0..b.faults.len())];
                vec![first, second]
            }
        }
    }
}

/// Parses `kill,partition-ring,partition+kill,all,none`: fault names,
/// groups (`kill`, `pause`, `partition`, `loss`, `clock`, `power`,
/// `latency`, `wipe`, `disk`), `all`, `none`, or two names or groups joined
/// by `+`: a composed step, one fault of each side in effect at the same
/// time. Compositions whose faults would undo or wait on each other are
/// refused (see [`conflict`]).
pub fn parse(list: &str) -> Result<Plan, String> {
    let mut plain = BTreeSet::new();
    let mut composed: Vec<Entry> = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if !word.contains('+') {
            if word != "none" {
                plain.extend(expand(word)?);
            }
            continue;
        }
        let sides: Vec<&str> = word.split('+').map(str::trim).collect();
        if sides.len() != 2 {
            return Err(format!(
                "composed nemesis {word:?}: join exactly two faults or groups with + (partition+kill)"
            ));
        }
        let mut parsed = Vec::new();
        for side in &sides {
            if side.is_empty() || *side == "all" || *side == "none" {
                return Err(format!(
                    "composed nemesis {word:?}: each side of + is a fault name or one of the groups {GROUPS}, not {side:?}"
                ));
            }
            parsed.push(Side {
                word: (*side).to_string(),
                faults: expand(side)?,
            });
        }
        for a in &parsed[0].faults {
            for b in &parsed[1].faults {
                if let Some(why) = conflict(*a, *b) {
                    return Err(format!(
                        "composed nemesis {word:?} cannot be applied: {} with {}: {why}",
                        a.name(),
                        b.name()
                    ));
                }
            }
        }
        let second = parsed.pop();
        let first = parsed.pop();
        if let (Some(a), Some(b)) = (first, second) {
            let entry = Entry::Composed(a, b);
            if !composed.contains(&entry) {
                composed.push(entry);
            }
        }
    }
    let mut entries: Vec<Entry> = plain.into_iter().map(Entry::One).collect();
    entries.extend(composed);
    Ok(Plan { entries })
}

/// What a fault did, so that its heal can undo exactly that.
enum Undo {
    Restart(Vec<u64>),
    Resume(Vec<u64>),
    Network,
    Clocks(Vec<u64>),
    Latency,
    /// A disk fault on these nodes' lazyfs: switch it off, then restart
    /// those of them that stopped on it.
    Disk(DiskFault, Vec<u64>),
    /// A partition move was asked for: wait (bounded) for moves to finish.
    Moves,
    /// A node is being removed: let the removal finish (bounded), then add
    /// the node back.
    Rejoin(Removal),
}

/// The free space the disk-full nemesis shows before the disk is full: under
/// the 512 MiB headroom nodes keep by default (`min_free_disk_bytes`), so
/// they refuse publishes (HTTP 507, RESOURCE_EXHAUSTED) while writes still
/// succeed.
const LOW_FREE_BYTES: u64 = 64 << 20;

/// How long after a disk fault is healed a node may still exit because of
/// it: the node logs the failure, stops its groups (at most 10 s) and exits.
const STORAGE_EXIT_GRACE: Duration = Duration::from_secs(30);
/// How long a heal waits for the victims of a disk fault to settle: each
/// either serving (`/readyz` not saying `storage_failed`) or exited and
/// restarted.
const SETTLE_LIMIT: Duration = Duration::from_secs(25);

pub struct Nemesis {
    pub net: Arc<Net>,
    pub cluster: Arc<Mutex<Cluster>>,
    /// Present in runs whose faults include `latency`.
    pub proxies: Option<Arc<PeerProxies>>,
    pub recorder: Arc<Recorder>,
    /// What each step picks among.
    pub plan: Plan,
    pub seed: u64,
    pub token: String,
    /// Nodes that may exit with status 74 (storage failed) because a disk
    /// fault was injected on them: `None` while the fault is on, else until
    /// when that stays expected.
    pub storage_faults: Mutex<BTreeMap<u64, Option<Instant>>>,
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

/// One step of the schedule: a quiet period, then these faults (one, or two
/// composed) held for `hold`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    quiet: Duration,
    hold: Duration,
    faults: Vec<Fault>,
}

/// Draws the next step from the seeded generator. With only plain entries
/// the draws are those of the single-fault schedule, so a seed keeps its
/// schedule.
fn next_step(plan: &Plan, rng: &mut StdRng) -> Step {
    let quiet = Duration::from_millis(rng.random_range(2_000..5_000));
    let hold = Duration::from_millis(rng.random_range(3_000..8_000));
    let faults = plan.pick(rng);
    Step {
        quiet,
        hold,
        faults,
    }
}

impl Nemesis {
    /// Applies `act` to each of `nodes` in turn, under one hold of the
    /// cluster lock, and returns what each gave; stops at the first error.
    fn on_each_node<T>(
        &self,
        nodes: &[u64],
        mut act: impl FnMut(&mut Cluster, u64) -> anyhow::Result<T>,
    ) -> anyhow::Result<Vec<T>> {
        let mut cluster = self.cluster.lock();
        nodes.iter().map(|n| act(&mut cluster, *n)).collect()
    }

    /// The admin API of whichever nodes are running at each call.
    fn admin(&self) -> Admin {
        let cluster = self.cluster.clone();
        Admin {
            token: self.token.clone(),
            running: Arc::new(move || {
                let mut cluster = cluster.lock();
                cluster.nodes().filter(|n| cluster.is_running(*n)).collect()
            }),
        }
    }

    /// The nodes that lead a partition of the topic, each by its own
    /// account. Each running node is asked for its local view only (the
    /// node's local header): a cluster-wide `ClusterStatus` asks every peer
    /// with a 2 s deadline, so while another fault cuts a node off, every
    /// node would answer too late.
    async fn leaders(&self) -> Vec<u64> {
        let running: Vec<u64> = {
            let mut cluster = self.cluster.lock();
            cluster.nodes().filter(|n| cluster.is_running(*n)).collect()
        };
        let mut claimed = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for node in running {
            let addr = grpc_addr(node);
            let status = async {
                let mut grpc = raftstream_client::connect(&addr, Some(&self.token))
                    .await
                    .ok()?;
                let mut request = tonic::Request::new(pb::ClusterStatusRequest {});
                request.metadata_mut().insert(
                    "x-raftstream-local",
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                grpc.cluster_status(request)
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            };
            if let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                for leader in status
                    .groups
                    .iter()
                    .filter(|g| g.topic == crate::workload::TOPIC)
                    .filter_map(|g| g.leader)
                {
                    seen.insert(leader);
                    if leader == node {
                        claimed.insert(leader);
                    }
                }
            }
        }
        // Nodes that say they lead; else whom the others take for leaders.
        if claimed.is_empty() {
            seen.into_iter().collect()
        } else {
            claimed.into_iter().collect()
        }
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
                self.on_each_node(&victims, Cluster::kill)?;
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::PauseOne | Fault::PauseLeaders => {
                let victims = if fault == Fault::PauseOne {
                    nodes[..1].to_vec()
                } else {
                    leaders
                };
                self.on_each_node(&victims, Cluster::pause)?;
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
                self.on_each_node(&victims, Cluster::power_loss)?;
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::TornWrite => {
                // A power loss in the middle of writes: one node, a
                // minority, or every node at once.
                let victims = match rng.random_range(0..3) {
                    0 => nodes[..1].to_vec(),
                    1 => nodes[..minority.max(1)].to_vec(),
                    _ => nodes.clone(),
                };
                let reports = self.on_each_node(&victims, |cluster, v| {
                    let seed: u64 = rng.random();
                    let report = cluster.torn_power_loss(v, seed)?;
                    Ok(format!("node {v}: {report}"))
                })?;
                let d = format!("{}; {}", describe(&victims), reports.join("; "));
                (Undo::Restart(victims), d)
            }
            Fault::FsyncEio | Fault::DiskFull => {
                let Some(disk) = fault.disk_fault() else {
                    anyhow::bail!("{} is not a disk fault", fault.name());
                };
                // One node, or every node's disk at once.
                let victims = if rng.random_bool(0.5) {
                    nodes[..1].to_vec()
                } else {
                    nodes.clone()
                };
                {
                    let mut expected = self.storage_faults.lock();
                    for v in &victims {
                        expected.insert(*v, None);
                    }
                }
                let mut d = describe(&victims);
                if disk == DiskFault::DiskFull {
                    // A disk fills up before it is full: first only the free
                    // space shown drops under the nodes' headroom.
                    let low_for = Duration::from_millis(rng.random_range(1_500..3_000));
                    self.on_each_node(&victims, |cluster, v| {
                        cluster.set_free_space(v, Some(LOW_FREE_BYTES))
                    })?;
                    self.sleep_checking(low_for, u64::MAX).await;
                    d = format!(
                        "{d}: {} MiB free for {:.1} s, then full",
                        LOW_FREE_BYTES >> 20,
                        low_for.as_secs_f64()
                    );
                }
                self.on_each_node(&victims, |cluster, v| cluster.set_disk_fault(v, disk, true))?;
                (Undo::Disk(disk, victims), d)
            }
            Fault::MovePartition => {
                // A partition to a random set of replicas, in a random
                // order (so on 3 nodes, a new preferred leader).
                let partition = rng.random_range(0..crate::workload::PARTITIONS);
                let replicas = nodes[..(size.min(3) as usize)].to_vec();
                let answer = self
                    .admin()
                    .move_partition(crate::workload::TOPIC, partition, &replicas)
                    .await?;
                let d = match answer {
                    Ok(()) => format!("partition {partition} to {replicas:?}"),
                    Err(status) => format!(
                        "partition {partition} to {replicas:?} refused: {:?} {}",
                        status.code(),
                        status.message()
                    ),
                };
                (Undo::Moves, d)
            }
            Fault::RemoveNode => {
                let victim = nodes[0];
                let removal = Removal::start(self.admin(), victim);
                (Undo::Rejoin(removal), format!("node {victim}"))
            }
            Fault::WipeOne => {
                // A replaced disk: the node comes back empty and must catch
                // up before it votes.
                let victims = nodes[..1].to_vec();
                self.on_each_node(&victims, Cluster::wipe)?;
                let d = describe(&victims);
                (Undo::Restart(victims), d)
            }
            Fault::Clock => {
                let victims = nodes[..minority.max(1)].to_vec();
                let d = self.on_each_node(&victims, |cluster, v| {
                    let magnitude = rng.random_range(2..=120);
                    let offset = if rng.random_bool(0.5) {
                        magnitude
                    } else {
                        -magnitude
                    };
                    cluster.set_clock_offset(v, offset)?;
                    Ok(format!("{v}: {offset:+}s"))
                })?;
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

    /// Undoes a fault; returns what the heal found out, if anything.
    async fn heal(&self, undo: Undo) -> anyhow::Result<Option<String>> {
        match undo {
            Undo::Moves => return Ok(Some(self.admin().settle_moves().await)),
            Undo::Rejoin(removal) => {
                let node = removal.node;
                let (removed, refused) = removal.finish(REMOVAL_GRACE).await;
                if refused {
                    return Ok(Some(removed));
                }
                let peer_addr = self.cluster.lock().peer_addr(node);
                let added = match self.admin().add_node(node, &peer_addr).await? {
                    Ok(()) => "added back".to_string(),
                    Err(status) => format!(
                        "adding it back refused: {:?} {}",
                        status.code(),
                        status.message()
                    ),
                };
                return Ok(Some(format!("{removed}; {added}")));
            }
            Undo::Restart(nodes) => {
                self.on_each_node(&nodes, Cluster::start)?;
            }
            Undo::Resume(nodes) => {
                self.on_each_node(&nodes, Cluster::resume)?;
            }
            Undo::Network => self.net.heal()?,
            Undo::Clocks(nodes) => {
                self.on_each_node(&nodes, |cluster, n| cluster.set_clock_offset(n, 0))?;
            }
            Undo::Latency => {
                if let Some(proxies) = &self.proxies {
                    proxies.heal();
                }
            }
            Undo::Disk(fault, nodes) => {
                let mut reports = self.on_each_node(&nodes, |cluster, n| {
                    let report = cluster.set_disk_fault(n, fault, false)?;
                    if fault == DiskFault::DiskFull {
                        cluster.set_free_space(n, None)?;
                    }
                    Ok(format!("node {n}: {report}"))
                })?;
                {
                    let mut expected = self.storage_faults.lock();
                    let until = Instant::now() + STORAGE_EXIT_GRACE;
                    for n in &nodes {
                        expected.insert(*n, Some(until));
                    }
                }
                let restarted = self.settle(&nodes).await?;
                if !restarted.is_empty() {
                    reports.push(format!("restarted {restarted:?} after exit 74"));
                }
                return Ok(Some(reports.join("; ")));
            }
        }
        Ok(None)
    }

    /// After a disk fault is healed, waits (bounded) until each victim is
    /// either serving or has exited (and was restarted, as a supervisor
    /// would). Returns the nodes restarted.
    async fn settle(&self, nodes: &[u64]) -> anyhow::Result<Vec<u64>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        // Those that stopped while the fault was on come back now.
        let mut restarted = Vec::new();
        {
            let mut cluster = self.cluster.lock();
            for node in nodes {
                if !cluster.is_running(*node) {
                    cluster.start(*node)?;
                    restarted.push(*node);
                }
            }
        }
        // A call the fault failed just before the heal reaches the node's
        // failure handling within moments; give it those.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deadline = Instant::now() + SETTLE_LIMIT;
        let mut pending: Vec<u64> = nodes.to_vec();
        loop {
            restarted.extend(self.note_crashes());
            pending.retain(|n| !restarted.contains(n));
            let mut still = Vec::new();
            for node in pending {
                if !self.cluster.lock().is_running(node) {
                    continue;
                }
                let answer = http
                    .get(format!("http://{}/readyz", http_addr(node)))
                    .send()
                    .await;
                let failed = match answer {
                    Ok(r) => r
                        .text()
                        .await
                        .unwrap_or_default()
                        .contains("storage_failed"),
                    // Stopping after a failure closes the listeners first.
                    Err(_) => true,
                };
                if failed {
                    still.push(node);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(restarted);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "nemesis: nodes {pending:?} neither serve nor exited {} s after the heal",
                    SETTLE_LIMIT.as_secs()
                );
                return Ok(restarted);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Records nodes that exited on their own. A node that stopped with
    /// status 74 because of a disk fault injected on it did what it should,
    /// and is restarted once that fault is healed; any other exit is a
    /// crash, which is a finding. Returns the nodes restarted.
    pub fn note_crashes(&self) -> Vec<u64> {
        let mut restarted = Vec::new();
        let mut cluster = self.cluster.lock();
        for (node, status) in cluster.exited() {
            let now = self.recorder.now_us();
            // A node's exit is seen at one instant, not over a span.
            let record_exit = |outcome, detail, kind| {
                self.recorder
                    .record("nemesis", now, now, outcome, Some(detail), kind)
            };
            let expected = match self.storage_faults.lock().get(&node) {
                Some(None) => Some(false),
                Some(Some(until)) if Instant::now() <= *until => Some(true),
                _ => None,
            };
            match expected {
                Some(healed) if status.code() == Some(EXIT_STORAGE_FAILED) => {
                    let logged = cluster
                        .storage_failure_logged(node)
                        .unwrap_or_else(|| "no storage failure in its log".into());
                    eprintln!(
                        "[{:>6.1}s] nemesis: node {node} stopped on the disk fault ({status}): {logged}",
                        now as f64 / 1e6
                    );
                    record_exit(
                        Outcome::Info,
                        format!("node {node} {status}: {logged}"),
                        Kind::StorageExit { node },
                    );
                    if healed {
                        match cluster.start(node) {
                            Ok(()) => restarted.push(node),
                            Err(e) => eprintln!("nemesis: restarting node {node}: {e:#}"),
                        }
                    }
                }
                _ => record_exit(
                    Outcome::Fail,
                    format!("node {node} exited on its own: {status}"),
                    Kind::Crash { node },
                ),
            }
        }
        restarted
    }

    /// Runs faults until `until` (µs since start), then heals.
    pub async fn run(&self, until_us: u64) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        if self.plan.is_empty() {
            while self.recorder.now_us() < until_us {
                self.note_crashes();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            return Ok(());
        }
        loop {
            let step = next_step(&self.plan, &mut rng);
            self.sleep_checking(step.quiet, until_us).await;
            if self.recorder.now_us() + (step.hold.as_micros() as u64) / 2 > until_us {
                return Ok(());
            }
            let name = step
                .faults
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join("+");
            let composed = step.faults.len() > 1;
            let start = self.recorder.now_us();
            // Each fault in turn; the ones on are healed in the reverse order.
            let mut on: Vec<(Fault, Undo, String)> = Vec::new();
            for fault in &step.faults {
                let at = self.recorder.now_us();
                match self.apply(*fault, &mut rng).await {
                    Ok((undo, detail)) => {
                        eprintln!(
                            "[{:>6.1}s] nemesis: {}{} {detail}",
                            at as f64 / 1e6,
                            if composed {
                                format!("{name}: ")
                            } else {
                                String::new()
                            },
                            fault.name()
                        );
                        on.push((*fault, undo, detail));
                    }
                    Err(e) => {
                        // Leave nothing on behind the error.
                        for (f, undo, _) in on.into_iter().rev() {
                            if let Err(h) = self.heal(undo).await {
                                eprintln!("nemesis: healing {} after an error: {h:#}", f.name());
                            }
                        }
                        return Err(e.context(format!("applying {}", fault.name())));
                    }
                }
            }
            self.sleep_checking(step.hold, until_us).await;
            let mut details = Vec::new();
            let mut failed = None;
            for (fault, undo, detail) in on.into_iter().rev() {
                let found = match self.heal(undo).await {
                    Ok(found) => found,
                    Err(e) => {
                        // Heal the others all the same, then stop the run.
                        failed.get_or_insert(e.context(format!("healing {}", fault.name())));
                        None
                    }
                };
                eprintln!(
                    "[{:>6.1}s] nemesis: healed {}{}{}",
                    self.recorder.now_us() as f64 / 1e6,
                    if composed {
                        format!("{name}: ")
                    } else {
                        String::new()
                    },
                    fault.name(),
                    found.as_ref().map_or(String::new(), |f| format!(" ({f})"))
                );
                let detail = match found {
                    Some(found) => format!("{detail}; heal: {found}"),
                    None => detail.clone(),
                };
                details.push((fault, detail));
            }
            if let Some(e) = failed {
                return Err(e);
            }
            let end = self.recorder.now_us();
            // In the order the faults were applied.
            details.reverse();
            let detail = if composed {
                details
                    .iter()
                    .map(|(f, d)| format!("{}: {d}", f.name()))
                    .collect::<Vec<_>>()
                    .join(" + ")
            } else {
                details.pop().map(|(_, d)| d).unwrap_or_default()
            };
            self.recorder.record(
                "nemesis",
                start,
                end,
                Outcome::Ok,
                None,
                Kind::Fault { name, detail },
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

    /// Keeps noting exits for `wait` after the last fault (the recovery
    /// phase), restarting nodes that stop on a healed disk fault.
    pub async fn watch(&self, wait: Duration) {
        let end = Instant::now() + wait;
        while Instant::now() < end {
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
        assert_eq!(parse("all").unwrap().faults().len(), Fault::ALL.len());
        assert_eq!(
            parse("kill").unwrap().faults(),
            vec![
                Fault::KillOne,
                Fault::KillMinority,
                Fault::KillLeaders,
                Fault::KillAll
            ]
        );
        assert_eq!(
            parse("loss,pause-one").unwrap().faults(),
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
        assert_eq!(parse("latency").unwrap().faults(), vec![Fault::Latency]);
        assert!(parse("all").unwrap().faults().contains(&Fault::Latency));
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
    fn disk_faults_are_their_own_group_and_torn_writes_are_power_faults() {
        assert_eq!(
            parse("disk").unwrap().faults(),
            vec![Fault::FsyncEio, Fault::DiskFull]
        );
        assert_eq!(
            parse("power").unwrap().faults(),
            vec![Fault::PowerLoss, Fault::TornWrite]
        );
        assert_eq!(
            parse("torn-write,fsync-eio,disk-full").unwrap().faults(),
            vec![Fault::TornWrite, Fault::FsyncEio, Fault::DiskFull]
        );
        let on_lazyfs: Vec<Fault> = Fault::ALL
            .iter()
            .copied()
            .filter(|f| f.needs_lazyfs())
            .collect();
        assert_eq!(
            on_lazyfs,
            vec![
                Fault::PowerLoss,
                Fault::TornWrite,
                Fault::FsyncEio,
                Fault::DiskFull
            ]
        );
        let all = parse("all").unwrap().faults();
        assert!(all.contains(&Fault::TornWrite) && all.contains(&Fault::DiskFull));
    }

    #[test]
    fn a_three_node_ring_is_a_bridge() {
        assert_eq!(ring_cuts(&[2, 3, 1]), vec![(2, 1)]);
    }

    #[test]
    fn a_composed_word_expands_each_side_and_keeps_its_name() {
        let plan = parse("partition+kill").unwrap();
        assert_eq!(plan.names(), "partition+kill");
        let Entry::Composed(a, b) = &plan.entries[0] else {
            panic!("{plan:?}");
        };
        assert_eq!(a.faults, parse("partition").unwrap().faults());
        assert_eq!(b.faults, parse("kill").unwrap().faults());
        // Every fault of either side is prepared for.
        let mut both = parse("partition,kill").unwrap().faults();
        both.sort();
        assert_eq!(plan.faults(), both);
        // Single names compose too, with spaces around +.
        assert_eq!(
            parse("loss + power-loss").unwrap().names(),
            "loss+power-loss"
        );
    }

    #[test]
    fn plain_and_composed_words_mix_and_each_is_one_entry() {
        let plan = parse("kill, partition+kill, loss+pause, partition+kill").unwrap();
        // Four kill faults, then the two compositions once each, in order.
        assert_eq!(plan.entries.len(), 6);
        assert_eq!(
            plan.names(),
            "kill-one,kill-minority,kill-leaders,kill-all,partition+kill,loss+pause"
        );
        // Order matters: B+A is another step than A+B.
        assert_eq!(
            parse("kill+partition,partition+kill")
                .unwrap()
                .entries
                .len(),
            2
        );
        // Only the side that needs it brings lazyfs, proxies or faketime.
        assert!(
            parse("partition+power-loss")
                .unwrap()
                .faults()
                .iter()
                .any(|f| f.needs_lazyfs())
        );
        assert!(parse("kill+latency").unwrap().contains(Fault::Latency));
        assert!(parse("clock+partition-one").unwrap().contains(Fault::Clock));
        assert!(!parse("kill+partition").unwrap().contains(Fault::Clock));
        // A list of plain words keeps its meaning.
        assert_eq!(
            parse("loss,pause-one").unwrap().entries,
            vec![Entry::One(Fault::PauseOne), Entry::One(Fault::Loss)]
        );
    }

    #[test]
    fn network_faults_compose_with_every_process_and_disk_fault() {
        for net in ["partition", "loss", "latency"] {
            for node in [
                "kill",
                "pause",
                "power-loss",
                "torn-write",
                "wipe-one",
                "clock",
                "fsync-eio",
                "disk-full",
            ] {
                for word in [format!("{net}+{node}"), format!("{node}+{net}")] {
                    assert!(parse(&word).is_ok(), "{word}: {:?}", parse(&word));
                }
            }
        }
        // Different mechanisms: the proxies delay what the rules let through.
        assert!(parse("latency+partition").is_ok());
        assert!(parse("loss+latency").is_ok());
        // Process faults with independent heals.
        assert!(parse("kill+pause").is_ok());
        assert!(parse("clock+kill").is_ok());
        assert!(parse("disk+clock").is_ok());
    }

    #[test]
    fn compositions_whose_heals_interfere_are_refused_with_the_reason() {
        let refused = |word: &str, why: &str| {
            let e = parse(word).unwrap_err();
            assert!(
                e.contains(&format!("{word:?}")) && e.contains(why),
                "{word}: {e}"
            );
        };
        refused("kill-one+kill-all", "both are kill faults");
        refused("partition-one+partition-ring", "both are partition faults");
        refused("power-loss+torn-write", "both are power faults");
        refused("partition+loss", "nftables chain");
        refused("loss+partition-one-way", "nftables chain");
        refused("kill+power-loss", "both stop nodes and restart them");
        refused("wipe-one+kill-one", "both stop nodes and restart them");
        refused("torn-write+wipe", "both stop nodes and restart them");
        refused("fsync-eio+kill", "restarts every victim that is down");
        refused("power-loss+disk-full", "restarts every victim that is down");
        refused("disk+wipe-one", "restarts every victim that is down");
        refused("pause-leaders+fsync-eio", "a paused node");
        // Words that are not a pair of faults or groups.
        refused("partition+kill+loss", "exactly two");
        refused("all+kill", "not \"all\"");
        refused("kill+", "not \"\"");
        refused("none+kill", "not \"none\"");
        let e = parse("kill+meteor").unwrap_err();
        assert!(e.contains("unknown nemesis \"meteor\""), "{e}");
        // One refused word refuses the list.
        assert!(parse("kill,partition+kill,kill+wipe").is_err());
    }

    #[test]
    fn the_schedule_follows_the_seed_and_draws_composed_steps() {
        let plan = parse("kill,partition+kill,loss+pause").unwrap();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|_| next_step(&plan, &mut rng))
                .collect::<Vec<_>>()
        };
        let steps = draw(7);
        assert_eq!(steps, draw(7));
        assert_ne!(steps, draw(8));
        let names: BTreeSet<String> = steps
            .iter()
            .map(|s| {
                s.faults
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect();
        // Plain kills, every partition with some kill, loss with each pause.
        for kill in ["kill-one", "kill-minority", "kill-leaders", "kill-all"] {
            assert!(names.contains(kill), "{names:?}");
        }
        for partition in parse("partition").unwrap().faults() {
            let prefix = format!("{}+kill-", partition.name());
            assert!(names.iter().any(|n| n.starts_with(&prefix)), "{names:?}");
        }
        assert!(names.contains("loss+pause-one") && names.contains("loss+pause-leaders"));
        for step in &steps {
            assert!((2_000..5_000).contains(&(step.quiet.as_millis() as u64)));
            assert!((3_000..8_000).contains(&(step.hold.as_millis() as u64)));
            match step.faults[..] {
                [f] => assert_eq!(f.group(), "kill"),
                [a, b] => assert!(conflict(a, b).is_none() && a.group() != "kill"),
                _ => panic!("{step:?}"),
            }
        }
        // Six entries, each picked about a sixth of the time... roughly:
        // the composed ones together about a third.
        let composed = steps.iter().filter(|s| s.faults.len() == 2).count();
        assert!((30..110).contains(&composed), "{composed}");
    }

    #[test]
    fn a_plain_list_keeps_the_schedule_of_a_seed() {
        // The single-fault schedule: quiet, hold, then the index of one of
        // the faults in Fault::ALL order.
        let plan = parse("kill,loss").unwrap();
        let faults = plan.faults();
        let mut rng = StdRng::seed_from_u64(3);
        let mut old = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let step = next_step(&plan, &mut rng);
            let quiet = Duration::from_millis(old.random_range(2_000..5_000));
            let hold = Duration::from_millis(old.random_range(3_000..8_000));
            let fault = faults[old.random_range(0..faults.len())];
            assert_eq!(
                step,
                Step {
                    quiet,
                    hold,
                    faults: vec![fault]
                }
            );
        }
    }
}
