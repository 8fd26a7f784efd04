//! `campaign`: many runs, each a child `jepsen-lite run`, over seeds,
//! cluster sizes and nemesis mixes, summed up in a table.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;

use crate::Binaries;
use crate::EXIT_ANOMALIES;
use crate::EXIT_ERROR;
use crate::host::lazyfs_binary_if_needed;
use crate::host::node_binary;
use crate::host::require_root;
use crate::nemesis;

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

pub(crate) fn campaign(
    runs: u64,
    time_limit: u64,
    seed: u64,
    mixes: &str,
    sizes: &str,
    binaries: Binaries,
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
    let bin = node_binary(binaries.node_bin)?;
    let mut every_fault = Vec::new();
    for mix in &mixes {
        every_fault.extend(nemesis::parse(mix).map_err(anyhow::Error::msg)?.faults());
    }
    let lazyfs = lazyfs_binary_if_needed(binaries.lazyfs_bin, every_fault)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let dir = binaries.out.join(format!("campaign-{stamp}"));
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
