//! jepsen-lite: `run` one seeded fault-injection test against a real
//! cluster, or a `campaign` of many. Needs root (network namespaces and
//! nftables).

mod cluster;
mod nemesis;
mod net;
mod plot;
mod proxy;
mod workload;

use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Parser;
use clap::Subcommand;
use jepsen_lite::checker;
use jepsen_lite::history;
use jepsen_lite::history::Kind;
use jepsen_lite::history::Outcome;
use parking_lot::Mutex;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::pb;

use crate::cluster::Cluster;
use crate::cluster::NodeSetup;
use crate::cluster::grpc_addr;
use crate::cluster::http_addr;
use crate::nemesis::Nemesis;
use crate::net::Net;
use crate::proxy::PeerProxies;
use crate::workload::Recorder;
use crate::workload::Workload;

/// Exit status: anomalies found.
const EXIT_ANOMALIES: u8 = 1;
/// Exit status: the harness itself failed (setup, cluster never ready).
const EXIT_ERROR: u8 = 2;
const TOKEN: &str = "rst_jepsen-lite-admin-token-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(about = "Fault-injection tests of a real Raftstream cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seconds of workload under faults (a recovery phase and the final
    /// reads follow).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults: all, none, kill, pause, partition, loss, clock, power,
    /// latency, wipe, disk, or single names such as kill-leaders,
    /// partition-ring, fsync-eio (comma-separated); two of them joined by +
    /// (partition+kill) are one step with both faults in effect at once.
    #[arg(long, default_value = "all")]
    nemesis: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The raftstream-node binary; built with cargo when absent.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// The lazyfs binary (for the power-loss, torn-write, fsync-eio and
    /// disk-full nemeses); built with cargo when absent and needed.
    #[arg(long)]
    lazyfs_bin: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "target/jepsen-lite")]
    out: PathBuf,
    /// Run the nodes with --no-fsync (acknowledge before fsync): a cluster
    /// this harness must catch losing acknowledged writes to power losses.
    #[arg(long)]
    no_fsync: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One seeded run; exit 1 on any anomaly.
    Run(RunArgs),
    /// Many runs over seeds, sizes and nemesis mixes; a table of results.
    Campaign {
        #[arg(long, default_value_t = 12)]
        runs: u64,
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// The first seed; run i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nemesis mixes, `;`-separated (each a --nemesis list, composed
        /// words such as partition+kill included); runs cycle through them.
        #[arg(
            long,
            default_value = "kill;pause;partition;loss,partition-one-way;clock,kill-one;all"
        )]
        mixes: String,
        /// Cluster sizes, comma-separated; runs cycle through them.
        #[arg(long, default_value = "3,5")]
        sizes: String,
        #[arg(long)]
        node_bin: Option<PathBuf>,
        #[arg(long)]
        lazyfs_bin: Option<PathBuf>,
        #[arg(long, default_value = "target/jepsen-lite")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Campaign {
            runs,
            time_limit,
            seed,
            mixes,
            sizes,
            node_bin,
            lazyfs_bin,
            out,
        } => campaign(
            runs,
            time_limit,
            seed,
            &mixes,
            &sizes,
            (node_bin, lazyfs_bin),
            &out,
        ),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jepsen-lite: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("jepsen-lite needs root: it creates network namespaces and nftables rules");
    }
    for tool in ["ip", "nft"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("{tool} is missing: apt-get install iproute2 nftables (scripts/setup.sh does)");
        }
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A binary of this workspace: as given, or built with cargo (a no-op when
/// fresh) next to this executable.
fn workspace_binary(given: Option<PathBuf>, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(bin) = given {
        return std::fs::canonicalize(&bin).with_context(|| format!("{}", bin.display()));
    }
    let status = std::process::Command::new("cargo")
        .args(["build", "--quiet", "-p", package, "--bin", package])
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo to build {package} (or pass its binary)"))?;
    if !status.success() {
        bail!("building {package} failed");
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("no directory for the current executable")?
        .join(package);
    if !bin.exists() {
        bail!("{} is missing; pass its path", bin.display());
    }
    Ok(bin)
}

fn node_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    workspace_binary(given, "raftstream-node")
}

/// The lazyfs binary for runs whose faults need it: as given, or built.
fn lazyfs_binary(given: Option<PathBuf>, faults: &[nemesis::Fault]) -> anyhow::Result<PathBuf> {
    let needing: Vec<&str> = faults
        .iter()
        .filter(|f| f.needs_lazyfs())
        .map(|f| f.name())
        .collect();
    workspace_binary(given, "lazyfs").with_context(|| {
        format!(
            "the {} nemesis runs nodes on lazyfs: pass --lazyfs-bin",
            needing.join(", ")
        )
    })
}

fn repeat_command(args: &RunArgs) -> String {
    let mut cmd = format!(
        "cargo run -p jepsen-lite -- run --nodes {} --time-limit {} --nemesis '{}' --seed {}",
        args.nodes, args.time_limit, args.nemesis, args.seed
    );
    if let Some(bin) = &args.node_bin {
        cmd.push_str(&format!(" --node-bin {}", bin.display()));
    }
    if let Some(bin) = &args.lazyfs_bin {
        cmd.push_str(&format!(" --lazyfs-bin {}", bin.display()));
    }
    if args.no_fsync {
        cmd.push_str(" --no-fsync");
    }
    cmd
}

fn run(args: RunArgs) -> anyhow::Result<u8> {
    let plan = nemesis::parse(&args.nemesis).map_err(anyhow::Error::msg)?;
    require_root()?;
    let fault_names = plan.names();
    // Every fault a step may apply, alone or composed with another.
    let faults = plan.faults();
    let bin = node_binary(args.node_bin.clone())?;
    let lazyfs = if faults.iter().any(|f| f.needs_lazyfs()) {
        Some(lazyfs_binary(args.lazyfs_bin.clone(), &faults)?)
    } else {
        None
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let label: String = args
        .nemesis
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '+'
            }
        })
        .collect();
    let dir = args
        .out
        .join(format!("{stamp}-n{}-s{}-{label}", args.nodes, args.seed));
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let removed = net::clean_leftovers()?;
    if removed > 0 {
        eprintln!("removed {removed} namespaces left by an earlier crashed run");
    }
    let unmounted = cluster::clean_leftover_mounts();
    if unmounted > 0 {
        eprintln!("removed {unmounted} lazyfs mounts left by an earlier crashed run");
    }
    let started = Instant::now();
    let net = Arc::new(Net::create(args.nodes)?);
    // From here on every socket of this process is in the control namespace.
    net.enter_control()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let proxies = if faults.contains(&nemesis::Fault::Latency) {
        Some(Arc::new(PeerProxies::start(&net, args.nodes)?))
    } else {
        None
    };
    let setup = NodeSetup {
        faketime: faults.contains(&nemesis::Fault::Clock),
        lazyfs,
        peer_proxies: proxies.is_some(),
        no_fsync: args.no_fsync,
    };
    let cluster = Arc::new(Mutex::new(Cluster::new(
        &net, args.nodes, &bin, &dir, TOKEN, setup,
    )?));
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = execute(&args, &plan, net.clone(), cluster.clone(), proxies.clone()) => r,
            _ = interrupted() => Err(anyhow::anyhow!("interrupted; cleaned up")),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    cluster.lock().kill_all();
    drop(cluster);
    if let Some(proxies) = proxies {
        // Before the namespaces go: their threads hold them open.
        proxies.stop();
    }
    match Arc::try_unwrap(net) {
        Ok(mut net) => net.destroy(),
        Err(net) => eprintln!("network still in use; it is removed at exit ({net:?})"),
    }
    let ops = outcome?;

    history::write(&dir.join("history.jsonl"), &ops)?;
    let report = checker::check(&ops);
    if let Err(e) = plot::draw(&dir.join("plots.svg"), &ops) {
        eprintln!("plotting failed: {e:#}");
    }
    let sends = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Send { .. }))
        .count();
    let storage_exits = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::StorageExit { .. }))
        .count();
    // Publishes a leader refused for want of disk space: HTTP 507
    // (`insufficient_storage`), or RESOURCE_EXHAUSTED naming the headroom.
    let refused_for_space = ops
        .iter()
        .filter(|op| {
            matches!(op.kind, Kind::Send { .. })
                && op.error.as_deref().is_some_and(|e| {
                    e.to_ascii_lowercase().contains("insufficient") || e.contains("MiB headroom")
                })
        })
        .count();
    let ok = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Send { .. }) && op.outcome == Outcome::Ok)
        .count();
    let polls = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Poll { .. }))
        .count();
    let faults_done = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Fault { .. }))
        .count();
    let repeat = repeat_command(&args);
    let results = serde_json::json!({
        "valid": report.is_valid(),
        "seed": args.seed,
        "nodes": args.nodes,
        "time_limit_s": args.time_limit,
        "nemesis": fault_names,
        "duration_s": started.elapsed().as_secs_f64(),
        "sends": sends,
        "sends_ok": ok,
        "polls": polls,
        "faults": faults_done,
        "storage_exits": storage_exits,
        "sends_refused_for_disk_space": refused_for_space,
        "counts": report.counts,
        "lines": report.lines,
        "availability": report.availability,
        "anomalies": report.anomalies,
        "repeat": repeat,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;

    println!("run directory: {}", dir.display());
    println!(
        "{sends} sends ({ok} ok), {polls} polls, {faults_done} faults in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if storage_exits > 0 || refused_for_space > 0 {
        println!(
            "disk faults: {storage_exits} node exits on storage failures (status 74, restarted), \
             {refused_for_space} sends refused for disk space"
        );
    }
    for line in &report.lines {
        println!("{line}");
    }
    let a = &report.availability;
    println!(
        "availability: {} ok during faults, {} outside; recovery after heal max {} ms{}",
        share(a.ok_share_during_faults),
        share(a.ok_share_outside_faults),
        a.recovery_ms_max.map_or("-".into(), |m| m.to_string()),
        if a.never_recovered > 0 {
            format!(", {} heals never recovered", a.never_recovered)
        } else {
            String::new()
        }
    );
    for anomaly in report.anomalies.iter().take(20) {
        println!("ANOMALY {}: {}", anomaly.kind, anomaly.message);
    }
    if report.anomalies.len() > 20 {
        println!("… {} more in results.json", report.anomalies.len() - 20);
    }
    println!(
        "{}: {} anomalies",
        if report.is_valid() {
            "VALID"
        } else {
            "INVALID"
        },
        report.anomalies.len()
    );
    println!("repeat with: {repeat}");
    Ok(if report.is_valid() { 0 } else { EXIT_ANOMALIES })
}

fn share(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
}

async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Polls until `check` is true or `limit` passes.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(cluster: &Arc<Mutex<Cluster>>, nodes: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for node in 1..=nodes {
        eventually(
            &format!("node {node} ready (GET /readyz)"),
            Duration::from_secs(90),
            || {
                let http = http.clone();
                async move {
                    http.get(format!("http://{}/readyz", http_addr(node)))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await
        .with_context(|| {
            let crashed = cluster.lock().exited();
            format!("crashed nodes: {crashed:?}")
        })?;
    }
    Ok(())
}

async fn setup_topic(nodes: u64) -> anyhow::Result<()> {
    let seeds: Vec<String> = (1..=nodes).map(grpc_addr).collect();
    let client = Client::connect(ClientConfig::new(seeds).with_token(TOKEN)).await?;
    eventually("topic created", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let request = pb::CreateTopicRequest {
                name: workload::TOPIC.into(),
                partitions: workload::PARTITIONS,
                replication_factor: nodes.min(3) as u32,
                ..Default::default()
            };
            matches!(
                client.create_topic(request).await,
                Ok(_) | Err(raftstream_client::Error::AlreadyExists(_))
            )
        }
    })
    .await?;
    eventually(
        "every partition has a leader",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                client.cluster_status().await.is_ok_and(|s| {
                    s.groups
                        .iter()
                        .filter(|g| g.topic == workload::TOPIC && g.leader.is_some())
                        .count()
                        == workload::PARTITIONS as usize
                })
            }
        },
    )
    .await
}

async fn execute(
    args: &RunArgs,
    plan: &nemesis::Plan,
    net: Arc<Net>,
    cluster: Arc<Mutex<Cluster>>,
    proxies: Option<Arc<PeerProxies>>,
) -> anyhow::Result<Vec<history::Op>> {
    for node in 1..=args.nodes {
        cluster.lock().start(node)?;
    }
    wait_ready(&cluster, args.nodes).await?;
    setup_topic(args.nodes).await?;
    eprintln!("cluster of {} ready; workload starts", args.nodes);

    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workload = Workload {
        recorder: recorder.clone(),
        acked: Arc::default(),
        nodes: args.nodes,
        token: TOKEN.to_string(),
        seed: args.seed,
        stop: stop.clone(),
        clock_faults: plan.contains(nemesis::Fault::Clock),
    };
    let mut workers = Vec::new();
    for w in 0..2 {
        workers.push(tokio::spawn(workload.clone().idempotent_producer(w)));
        workers.push(tokio::spawn(workload.clone().grpc_producer(10 + w)));
        workers.push(tokio::spawn(workload.clone().http_producer(20 + w)));
        workers.push(tokio::spawn(workload.clone().consumer(30 + w)));
        workers.push(tokio::spawn(workload.clone().http_consumer(40 + w)));
    }
    let nemesis = Nemesis {
        net: net.clone(),
        cluster: cluster.clone(),
        proxies,
        recorder: recorder.clone(),
        plan: plan.clone(),
        seed: args.seed,
        token: TOKEN.to_string(),
        storage_faults: Mutex::default(),
    };
    let until = args.time_limit * 1_000_000;
    nemesis.run(until).await?;
    // Everything is healed: a recovery phase with the workload still on.
    nemesis.watch(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        // Every request has a deadline, so workers end soon after `stop`.
        if tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .is_err()
        {
            bail!("a workload worker did not stop within 30 s");
        }
    }
    // The last exits, expected (a disk fault's) or not, before every node
    // is restarted for the final reads.
    nemesis.note_crashes();
    final_reads(args.nodes, &cluster, &recorder).await?;
    Ok(recorder.ops())
}

/// Restarts every node, waits until all replicas of every partition agree
/// on its end, then reads every partition from offset 0 on every node.
/// Exits until now were noted by the nemesis.
async fn final_reads(
    nodes: u64,
    cluster: &Arc<Mutex<Cluster>>,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut cluster = c.lock();
        for node in 1..=nodes {
            cluster.stop(node, Duration::from_secs(10))?;
        }
        for node in 1..=nodes {
            cluster.start(node)?;
        }
        Ok(())
    })
    .await??;
    eprintln!("all nodes restarted; final reads");
    let ready = wait_ready(cluster, nodes).await;
    let mut clients = Vec::new();
    for node in 1..=nodes {
        clients.push(workload::grpc_to(node, TOKEN)?);
    }
    // Each partition is read on the nodes that hold a replica of it.
    let all: Vec<u64> = (1..=nodes).collect();
    let mut replicas: Vec<Vec<u64>> = vec![all.clone(); workload::PARTITIONS as usize];
    if ready.is_ok() {
        let seeds: Vec<String> = (1..=nodes).map(grpc_addr).collect();
        let topic = async {
            let client = Client::connect(ClientConfig::new(seeds).with_token(TOKEN)).await?;
            client.topic(workload::TOPIC).await
        };
        match tokio::time::timeout(Duration::from_secs(30), topic).await {
            Ok(Ok(topic)) => {
                for p in &topic.partitions {
                    if let Some(r) = replicas.get_mut(p.partition as usize) {
                        *r = p.replicas.clone();
                    }
                }
            }
            other => eprintln!("final reads: no topic metadata ({other:?}); reading every node"),
        }
    }
    let replicas = Arc::new(replicas);
    // Replicas catch up after the restart: wait (bounded) until every copy
    // of a partition reports the same end.
    let converged = if ready.is_ok() {
        eventually("replicas converge", Duration::from_secs(45), || {
            let clients = clients.clone();
            let replicas = replicas.clone();
            async move {
                for partition in 0..workload::PARTITIONS {
                    let mut ends = std::collections::BTreeSet::new();
                    for node in &replicas[partition as usize] {
                        let Some(mut grpc) = clients.get((*node - 1) as usize).cloned() else {
                            return false;
                        };
                        match workload::read_local(&mut grpc, partition).await {
                            Ok((messages, _)) => {
                                ends.insert(messages.last().map_or(0, |m| m.offset + 1));
                            }
                            Err(_) => return false,
                        }
                    }
                    if ends.len() != 1 {
                        return false;
                    }
                }
                true
            }
        })
        .await
    } else {
        ready
    };
    if let Err(e) = &converged {
        eprintln!("final reads: {e:#}");
    }
    for partition in 0..workload::PARTITIONS {
        for node in replicas[partition as usize].iter().copied() {
            let Some(mut grpc) = clients.get((node - 1) as usize).cloned() else {
                continue;
            };
            let start = recorder.now_us();
            let mut last_error = None;
            let mut result = None;
            for _ in 0..5 {
                match workload::read_local(&mut grpc, partition).await {
                    Ok((messages, _)) => {
                        result = Some(messages);
                        break;
                    }
                    Err(e) => {
                        last_error = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            let (outcome, messages) = match result {
                Some(m) => (Outcome::Ok, m),
                None => (Outcome::Info, Vec::new()),
            };
            recorder.record(
                "final",
                start,
                recorder.now_us(),
                outcome,
                last_error.filter(|_| outcome != Outcome::Ok).or_else(|| {
                    converged
                        .as_ref()
                        .err()
                        .map(|e| format!("replicas had not converged: {e:#}"))
                }),
                Kind::FinalRead {
                    node,
                    partition,
                    messages,
                },
            );
        }
    }
    Ok(())
}

/// One row of the campaign table.
#[derive(serde::Serialize)]
struct Row {
    seed: u64,
    nodes: u64,
    nemesis: String,
    exit: i32,
    duration_s: f64,
    sends_ok: u64,
    faults: u64,
    lost: String,
    anomalies: usize,
    run_dir: String,
}

#[allow(clippy::too_many_arguments)]
fn campaign(
    runs: u64,
    time_limit: u64,
    seed: u64,
    mixes: &str,
    sizes: &str,
    (node_bin, lazyfs_bin): (Option<PathBuf>, Option<PathBuf>),
    out: &Path,
) -> anyhow::Result<u8> {
    let mixes: Vec<&str> = mixes
        .split(';')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    for mix in &mixes {
        nemesis::parse(mix).map_err(anyhow::Error::msg)?;
    }
    let sizes: Vec<u64> = sizes
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--sizes: comma-separated numbers")?;
    if mixes.is_empty() || sizes.is_empty() {
        bail!("--mixes and --sizes must not be empty");
    }
    require_root()?;
    let bin = node_binary(node_bin)?;
    let mut on_lazyfs = Vec::new();
    for mix in &mixes {
        on_lazyfs.extend(
            nemesis::parse(mix)
                .map_err(anyhow::Error::msg)?
                .faults()
                .into_iter()
                .filter(|f| f.needs_lazyfs()),
        );
    }
    let lazyfs = if on_lazyfs.is_empty() {
        None
    } else {
        on_lazyfs.sort();
        on_lazyfs.dedup();
        Some(lazyfs_binary(lazyfs_bin, &on_lazyfs)?)
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = out.join(format!("campaign-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for i in 0..runs {
        let mix = mixes[(i as usize) % mixes.len()];
        let nodes = sizes[(i as usize / mixes.len()) % sizes.len()];
        let run_seed = seed + i;
        let t0 = Instant::now();
        eprintln!(
            "=== run {}/{runs}: --nodes {nodes} --nemesis {mix} --seed {run_seed}",
            i + 1
        );
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["run", "--nodes", &nodes.to_string()])
            .args(["--time-limit", &time_limit.to_string()])
            .args(["--nemesis", mix, "--seed", &run_seed.to_string()])
            .arg("--node-bin")
            .arg(&bin)
            .arg("--out")
            .arg(&dir)
            .stderr(std::process::Stdio::inherit());
        if let Some(lazyfs) = &lazyfs {
            cmd.arg("--lazyfs-bin").arg(lazyfs);
        }
        let output = cmd.output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        print!("{stdout}");
        let run_dir = stdout
            .lines()
            .find_map(|l| l.strip_prefix("run directory: "))
            .unwrap_or("")
            .to_string();
        let results: serde_json::Value =
            std::fs::read_to_string(Path::new(&run_dir).join("results.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        rows.push(Row {
            seed: run_seed,
            nodes,
            nemesis: mix.to_string(),
            exit: output.status.code().unwrap_or(-1),
            duration_s: t0.elapsed().as_secs_f64(),
            sends_ok: results["sends_ok"].as_u64().unwrap_or(0),
            faults: results["faults"].as_u64().unwrap_or(0),
            lost: results["lines"][0].as_str().unwrap_or("-").to_string(),
            anomalies: results["anomalies"].as_array().map_or(0, Vec::len),
            run_dir,
        });
    }
    let mut table = String::from(
        "| seed | nodes | nemesis | exit | seconds | ok sends | faults | lost | anomalies |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} |\n",
            r.seed,
            r.nodes,
            r.nemesis,
            r.exit,
            r.duration_s,
            r.sends_ok,
            r.faults,
            r.lost,
            r.anomalies
        ));
    }
    std::fs::write(dir.join("campaign.md"), &table)?;
    std::fs::write(
        dir.join("campaign.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("\n{table}");
    let invalid = rows
        .iter()
        .filter(|r| r.exit == i32::from(EXIT_ANOMALIES))
        .count();
    let errors = rows
        .iter()
        .filter(|r| r.exit != 0 && r.exit != i32::from(EXIT_ANOMALIES))
        .count();
    println!(
        "campaign: {} runs in {:.0} s, {invalid} with anomalies, {errors} harness errors; {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(if errors > 0 {
        EXIT_ERROR
    } else if invalid > 0 {
        EXIT_ANOMALIES
    } else {
        0
    })
}
