//! `run`: one seeded fault-injection test. Sets up the namespaces and the
//! cluster, runs the workload under the nemesis, cleans up, checks the
//! history and writes the run directory (history, plots, results).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use jepsen_lite::checker;
use jepsen_lite::history;
use jepsen_lite::history::Kind;
use jepsen_lite::history::Op;
use jepsen_lite::history::Outcome;
use parking_lot::Mutex;

use crate::EXIT_ANOMALIES;
use crate::RunArgs;
use crate::TOKEN;
use crate::cluster;
use crate::cluster::Cluster;
use crate::cluster::NodeSetup;
use crate::host::lazyfs_binary_if_needed;
use crate::host::node_binary;
use crate::host::require_root;
use crate::nemesis;
use crate::nemesis::Nemesis;
use crate::net;
use crate::net::Net;
use crate::phases::final_reads;
use crate::phases::setup_topic;
use crate::phases::wait_ready;
use crate::plot;
use crate::proxy::PeerProxies;
use crate::workload::Recorder;
use crate::workload::Workload;

fn repeat_command(args: &RunArgs) -> String {
    let mut cmd = format!(
        "cargo run -p jepsen-lite -- run --nodes {} --time-limit {} --nemesis '{}' --seed {}",
        args.nodes, args.time_limit, args.nemesis, args.seed
    );
    if let Some(bin) = &args.binaries.node_bin {
        cmd.push_str(&format!(" --node-bin {}", bin.display()));
    }
    if let Some(bin) = &args.binaries.lazyfs_bin {
        cmd.push_str(&format!(" --lazyfs-bin {}", bin.display()));
    }
    if args.no_fsync {
        cmd.push_str(" --no-fsync");
    }
    cmd
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<u8> {
    let plan = nemesis::parse(&args.nemesis).map_err(anyhow::Error::msg)?;
    require_root()?;
    let fault_names = plan.names();
    // Every fault a step may apply, alone or composed with another.
    let faults = plan.faults();
    let bin = node_binary(args.binaries.node_bin.clone())?;
    let lazyfs = lazyfs_binary_if_needed(args.binaries.lazyfs_bin.clone(), faults.iter().copied())?;
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
        .binaries
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
    let sends = count(&ops, |op| matches!(op.kind, Kind::Send { .. }));
    let storage_exits = count(&ops, |op| matches!(op.kind, Kind::StorageExit { .. }));
    // Publishes a leader refused for want of disk space: HTTP 507
    // (`insufficient_storage`), or RESOURCE_EXHAUSTED naming the headroom.
    let refused_for_space = count(&ops, |op| {
        matches!(op.kind, Kind::Send { .. })
            && op.error.as_deref().is_some_and(|e| {
                e.to_ascii_lowercase().contains("insufficient") || e.contains("MiB headroom")
            })
    });
    let ok = count(&ops, |op| {
        matches!(op.kind, Kind::Send { .. }) && op.outcome == Outcome::Ok
    });
    let polls = count(&ops, |op| matches!(op.kind, Kind::Poll { .. }));
    let faults_done = count(&ops, |op| matches!(op.kind, Kind::Fault { .. }));
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

/// How many operations of the history `keep` holds for.
fn count(ops: &[Op], keep: impl Fn(&Op) -> bool) -> usize {
    ops.iter().filter(|op| keep(op)).count()
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
