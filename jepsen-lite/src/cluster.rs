//! The nodes: real `raftstream-node` processes, each started inside its own
//! network namespace through `ip netns exec` (which execs the node, so the
//! child's pid is the node's). Only these pids are ever signalled.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::net::Net;
use crate::net::node_addr;

pub const GRPC_PORT: u16 = 50051;
pub const HTTP_PORT: u16 = 8080;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

pub fn grpc_addr(node: u64) -> String {
    format!("{}:{GRPC_PORT}", node_addr(node))
}

pub fn http_addr(node: u64) -> String {
    format!("{}:{HTTP_PORT}", node_addr(node))
}

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    paused: bool,
}

#[derive(Debug)]
pub struct Cluster {
    pub size: u64,
    bin: PathBuf,
    dir: PathBuf,
    token: String,
    peers: String,
    /// Whether nodes run under libfaketime (for the clock nemesis).
    faketime: bool,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

impl Cluster {
    pub fn new(
        net: &Net,
        size: u64,
        bin: &Path,
        dir: &Path,
        token: &str,
        faketime: bool,
    ) -> anyhow::Result<Cluster> {
        if faketime && !Path::new(FAKETIME_LIB).exists() {
            anyhow::bail!("the clock nemesis needs {FAKETIME_LIB} (apt-get install faketime)");
        }
        let peers = (1..=size)
            .map(|n| format!("{n}={}", grpc_addr(n)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            size,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            token: token.to_string(),
            peers,
            faketime,
            namespaces: (1..=size).map(|n| net.node_ns(n)).collect(),
            procs: (0..size)
                .map(|_| Proc {
                    child: None,
                    paused: false,
                })
                .collect(),
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = u64> + use<> {
        1..=self.size
    }

    fn proc(&mut self, node: u64) -> anyhow::Result<&mut Proc> {
        let i = usize::try_from(node.wrapping_sub(1))?;
        self.procs
            .get_mut(i)
            .with_context(|| format!("no node {node}"))
    }

    fn clock_file(&self, node: u64) -> PathBuf {
        self.dir.join(format!("n{node}.faketime"))
    }

    /// Sets `node`'s wall clock offset (seconds; it takes effect within a
    /// second, libfaketime rereads the file).
    pub fn set_clock_offset(&self, node: u64, seconds: i64) -> anyhow::Result<()> {
        std::fs::write(self.clock_file(node), format!("{seconds:+}\n"))?;
        Ok(())
    }

    /// Starts `node` if it is not running.
    pub fn start(&mut self, node: u64) -> anyhow::Result<()> {
        if self.proc(node)?.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{node}.log")))?;
        let ns = self.namespaces[usize::try_from(node - 1)?].clone();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.bin)
            .args([
                "run",
                "--node-id",
                &node.to_string(),
                "--peers",
                &self.peers,
            ])
            .args([
                "--grpc-addr",
                &grpc_addr(node),
                "--http-addr",
                &http_addr(node),
            ])
            .arg("--data-dir")
            .arg(self.dir.join(format!("n{node}")))
            .env("RUST_LOG", "warn")
            .env("RAFTSTREAM_ADMIN_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if self.faketime {
            let file = self.clock_file(node);
            if !file.exists() {
                self.set_clock_offset(node, 0)?;
            }
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", &file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting node {node}"))?;
        let proc = self.proc(node)?;
        proc.child = Some(child);
        proc.paused = false;
        Ok(())
    }

    pub fn is_running(&mut self, node: u64) -> bool {
        self.proc(node).is_ok_and(|p| p.child.is_some())
    }

    fn signal(&mut self, node: u64, signal: Signal) -> anyhow::Result<()> {
        if let Some(child) = &self.proc(node)?.child {
            let pid = Pid::from_raw(i32::try_from(child.id())?);
            nix::sys::signal::kill(pid, signal)
                .with_context(|| format!("sending {signal} to node {node}"))?;
        }
        Ok(())
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, node: u64) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGKILL)?;
        let proc = self.proc(node)?;
        if let Some(mut child) = proc.child.take() {
            child.wait()?;
        }
        proc.paused = false;
        Ok(())
    }

    pub fn pause(&mut self, node: u64) -> anyhow::Result<()> {
        self.signal(node, Signal::SIGSTOP)?;
        self.proc(node)?.paused = true;
        Ok(())
    }

    pub fn resume(&mut self, node: u64) -> anyhow::Result<()> {
        if self.proc(node)?.paused {
            self.signal(node, Signal::SIGCONT)?;
            self.proc(node)?.paused = false;
        }
        Ok(())
    }

    /// SIGTERM and wait up to `grace` for a clean exit, then SIGKILL.
    pub fn stop(&mut self, node: u64, grace: Duration) -> anyhow::Result<()> {
        self.resume(node)?;
        self.signal(node, Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        let proc = self.proc(node)?;
        if let Some(child) = &mut proc.child {
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    proc.child = None;
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill(node)
    }

    /// Nodes that exited on their own (a crash), with their exit status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for node in self.nodes() {
            if let Ok(proc) = self.proc(node)
                && let Some(child) = &mut proc.child
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((node, status.to_string()));
                proc.child = None;
            }
        }
        out
    }

    /// Kills every node this cluster started.
    pub fn kill_all(&mut self) {
        for node in self.nodes() {
            let _ = self.kill(node);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
