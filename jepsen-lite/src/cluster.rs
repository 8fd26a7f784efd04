//! The nodes: real `raftstream-node` processes, each started inside its own
//! network namespace through `ip netns exec` (which execs the node, so the
//! child's pid is the node's). Only these pids are ever signalled.

use std::io::BufRead;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
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
pub const PEER_PORT: u16 = 50061;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// How `raftstream-node` exits after a failed write or fsync (EX_IOERR);
/// a supervisor restarts it once the disk is healthy.
pub const EXIT_STORAGE_FAILED: i32 = 74;
/// What the node logs when its storage fails and it stops serving.
const STORAGE_FAILED_LOG: &str = "storage failed";
/// How long a lazyfs control command may take.
const LAZYFS_COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// A disk fault that lazyfs switches on and off (its control socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// fsync and fdatasync fail with EIO; the bytes they failed are lost.
    FsyncEio,
    /// Growing writes fail with ENOSPC; statfs reports no free space.
    DiskFull,
}

impl DiskFault {
    /// The fault's name in lazyfs's control language.
    fn command(self) -> &'static str {
        match self {
            DiskFault::FsyncEio => "fsync-eio",
            DiskFault::DiskFull => "disk-full",
        }
    }
}

pub fn grpc_addr(node: u64) -> String {
    format!("{}:{GRPC_PORT}", node_addr(node))
}

pub fn http_addr(node: u64) -> String {
    format!("{}:{HTTP_PORT}", node_addr(node))
}

/// Where node `node`'s peer listener listens.
pub fn peer_listen_addr(node: u64) -> String {
    format!("{}:{PEER_PORT}", node_addr(node))
}

#[derive(Debug)]
struct Proc {
    child: Option<Child>,
    paused: bool,
    /// The node's lazyfs, when its data directory is on one.
    lazyfs: Option<Child>,
}

/// Where a harness records the lazyfs processes and mounts it made, so that
/// a later run can remove them if this harness dies without cleaning up.
const STATE_DIR: &str = "/run/jepsen-lite";

fn state_file(harness: u32) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{harness}.mounts"))
}

/// The control socket of node `node`'s lazyfs: short, as socket paths must
/// be, and named after the harness so a later run can remove it.
fn control_socket(harness: u32, node: u64) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{harness}.n{node}.sock"))
}

/// Stops the lazyfs processes and detaches the mounts that harnesses which
/// no longer run left behind (their nodes were killed with their network
/// namespaces). Only pids recorded by a harness, and only if they still run
/// lazyfs, are signalled.
pub fn clean_leftover_mounts() -> usize {
    let Ok(entries) = std::fs::read_dir(STATE_DIR) else {
        return 0;
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<harness>.n<node>.sock`: a control socket its lazyfs, killed
        // with the harness, could not remove.
        if let Some(harness) = name
            .strip_suffix(".sock")
            .and_then(|rest| rest.split_once('.'))
            .and_then(|(harness, _)| harness.parse::<u32>().ok())
        {
            if !crate::net::alive(harness) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        let Some(harness) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if crate::net::alive(harness) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let Some((pid, mountpoint)) = line.split_once(' ') else {
                continue;
            };
            let Ok(pid) = pid.parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("lazyfs") {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = Command::new("umount")
                .args(["-l", mountpoint])
                .stderr(Stdio::null())
                .status();
            cleaned += 1;
        }
        let _ = std::fs::remove_file(&path);
    }
    cleaned
}

fn mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = mountpoint.display().to_string();
    info.lines().any(|line| {
        let mut fields = line.split(' ');
        fields.nth(4) == Some(wanted.as_str()) && line.contains(" - fuse")
    })
}

/// What the nodes run under besides their binary; each part is on only in
/// runs whose nemesis needs it.
#[derive(Debug, Clone, Default)]
pub struct NodeSetup {
    /// libfaketime, for the clock nemesis.
    pub faketime: bool,
    /// The lazyfs binary that data directories are mounted through, for the
    /// power-loss, torn-write, fsync-eio and disk-full nemeses.
    pub lazyfs: Option<PathBuf>,
    /// Peers reach each other through the harness's proxies
    /// ([`crate::proxy`]), for the latency nemesis.
    pub peer_proxies: bool,
    /// Nodes acknowledge before fsync (`--no-fsync`), for the harness's own
    /// test: power losses must then lose acknowledged writes.
    pub no_fsync: bool,
}

#[derive(Debug)]
pub struct Cluster {
    pub size: u64,
    bin: PathBuf,
    dir: PathBuf,
    token: String,
    peers: String,
    /// Where each node's peer listener is reached (directly or through its
    /// proxy), as `--peers` names it.
    peer_addr: fn(u64) -> String,
    /// The cluster CA and node certificates (`raftstream-node certs`).
    certs: PathBuf,
    no_fsync: bool,
    /// Whether nodes run under libfaketime (for the clock nemesis).
    faketime: bool,
    /// The lazyfs binary, when data directories are on lazyfs (for the
    /// power-loss, torn-write, fsync-eio and disk-full nemeses).
    lazyfs: Option<PathBuf>,
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
        setup: NodeSetup,
    ) -> anyhow::Result<Cluster> {
        if setup.faketime && !Path::new(FAKETIME_LIB).exists() {
            anyhow::bail!("the clock nemesis needs {FAKETIME_LIB} (apt-get install faketime)");
        }
        let peer_addr = if setup.peer_proxies {
            crate::proxy::peer_addr
        } else {
            peer_listen_addr
        };
        let peers = (1..=size)
            .map(|n| format!("{n}={}", peer_addr(n)))
            .collect::<Vec<_>>()
            .join(",");
        // The peer listeners are off loopback, so nodes talk mutual TLS, as
        // a production cluster would; proxies reach them at 127.0.0.1.
        let certs = dir.join("certs");
        if !certs.join("ca.pem").exists() {
            let hosts = std::iter::once("127.0.0.1".to_string())
                .chain((1..=size).map(node_addr))
                .collect::<Vec<_>>()
                .join(",");
            let nodes = (1..=size).map(|n| n.to_string()).collect::<Vec<_>>();
            let written = Command::new(bin)
                .args([
                    "certs",
                    "--nodes",
                    &nodes.join(","),
                    "--hosts",
                    &hosts,
                    "--out",
                ])
                .arg(&certs)
                .output()
                .context("running raftstream-node certs")?;
            anyhow::ensure!(
                written.status.success(),
                "raftstream-node certs failed: {}",
                String::from_utf8_lossy(&written.stderr)
            );
        }
        Ok(Cluster {
            size,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            token: token.to_string(),
            peers,
            peer_addr,
            certs,
            no_fsync: setup.no_fsync,
            faketime: setup.faketime,
            lazyfs: setup.lazyfs,
            namespaces: (1..=size).map(|n| net.node_ns(n)).collect(),
            procs: (0..size)
                .map(|_| Proc {
                    child: None,
                    paused: false,
                    lazyfs: None,
                })
                .collect(),
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = u64> + use<> {
        1..=self.size
    }

    /// Where the other nodes reach node `node`'s peer listener.
    pub fn peer_addr(&self, node: u64) -> String {
        (self.peer_addr)(node)
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

    fn data_dir(&self, node: u64) -> PathBuf {
        let dir = self.dir.join(format!("n{node}"));
        if self.lazyfs.is_some() {
            dir.join("data")
        } else {
            dir
        }
    }

    fn lazyfs_log(&self, node: u64) -> PathBuf {
        self.dir.join(format!("n{node}.lazyfs.log"))
    }

    fn power_losses_logged(&self, node: u64) -> usize {
        std::fs::read_to_string(self.lazyfs_log(node))
            .map(|t| t.matches("lazyfs: power loss").count())
            .unwrap_or(0)
    }

    /// Mounts `node`'s data directory through lazyfs (backing directory
    /// `n<node>/disk`) unless it is mounted; waits until the mount is there.
    fn mount(&mut self, node: u64) -> anyhow::Result<()> {
        let Some(bin) = self.lazyfs.clone() else {
            return Ok(());
        };
        if self.proc(node)?.lazyfs.is_some() {
            return Ok(());
        }
        let disk = self.dir.join(format!("n{node}")).join("disk");
        let data = self.data_dir(node);
        std::fs::create_dir_all(&disk)?;
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lazyfs_log(node))?;
        std::fs::create_dir_all(STATE_DIR)?;
        let child = Command::new(&bin)
            .arg("--source")
            .arg(&disk)
            .arg("--mountpoint")
            .arg(&data)
            .arg("--control")
            .arg(control_socket(std::process::id(), node))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting lazyfs for node {node}"))?;
        let mut state = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_file(std::process::id()))?;
        std::io::Write::write_all(
            &mut state,
            format!("{} {}\n", child.id(), data.display()).as_bytes(),
        )?;
        self.proc(node)?.lazyfs = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !mounted(&data) {
            if Instant::now() > deadline {
                anyhow::bail!(
                    "lazyfs for node {node} did not mount {} within 15 s (see {})",
                    data.display(),
                    self.lazyfs_log(node).display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// A power loss: SIGKILL the node, then make its lazyfs drop every write
    /// that was not fsynced, and wait until it reports having done so.
    pub fn power_loss(&mut self, node: u64) -> anyhow::Result<()> {
        self.kill(node)?;
        let before = self.power_losses_logged(node);
        let Some(pid) = self.proc(node)?.lazyfs.as_ref().map(Child::id) else {
            anyhow::bail!("node {node} has no lazyfs (the power-loss nemesis needs --lazyfs-bin)");
        };
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid)?), Signal::SIGUSR1)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.power_losses_logged(node) <= before {
            if Instant::now() > deadline {
                anyhow::bail!("lazyfs of node {node} did not report its power loss within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Sends one command to `node`'s lazyfs over its control socket; the
    /// text of its `ok` reply, or an error with its `error` reply.
    fn lazyfs_command(
        &mut self,
        node: u64,
        nemesis: &str,
        command: &str,
    ) -> anyhow::Result<String> {
        if self.proc(node)?.lazyfs.is_none() {
            anyhow::bail!("node {node} has no lazyfs (the {nemesis} nemesis needs --lazyfs-bin)");
        }
        let path = control_socket(std::process::id(), node);
        let mut stream = UnixStream::connect(&path)
            .with_context(|| format!("connecting to node {node}'s lazyfs at {}", path.display()))?;
        stream.set_read_timeout(Some(LAZYFS_COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(LAZYFS_COMMAND_TIMEOUT))?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut reply = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut reply)
            .with_context(|| format!("node {node}'s lazyfs did not answer {command:?}"))?;
        let reply = reply.trim_end();
        match reply.strip_prefix("ok ") {
            Some(text) => Ok(text.to_string()),
            None => anyhow::bail!("node {node}'s lazyfs refused {command:?}: {reply}"),
        }
    }

    /// A power loss that tears writes: SIGKILL the node, then make its
    /// lazyfs keep a random prefix (drawn from `seed`) of each file's
    /// unsynced tail and drop everything else unsynced. Returns lazyfs's
    /// report.
    pub fn torn_power_loss(&mut self, node: u64, seed: u64) -> anyhow::Result<String> {
        self.kill(node)?;
        self.lazyfs_command(node, "torn-write", &format!("torn-power-loss {seed}"))
    }

    /// Switches a disk fault of `node`'s lazyfs on or off; returns lazyfs's
    /// report (on `off`, how many calls the fault failed).
    pub fn set_disk_fault(
        &mut self,
        node: u64,
        fault: DiskFault,
        on: bool,
    ) -> anyhow::Result<String> {
        let name = fault.command();
        let switch = if on { "on" } else { "off" };
        self.lazyfs_command(node, name, &format!("{name} {switch}"))
    }

    /// Makes `node`'s lazyfs report `bytes` free to statfs (a disk filling
    /// up; writes still succeed), or with `None` the real figure again.
    pub fn set_free_space(&mut self, node: u64, bytes: Option<u64>) -> anyhow::Result<String> {
        let command = match bytes {
            Some(bytes) => format!("free-space {bytes}"),
            None => "free-space real".to_string(),
        };
        self.lazyfs_command(node, "disk-full", &command)
    }

    /// The last line of `node`'s log saying that its storage failed, if any.
    pub fn storage_failure_logged(&self, node: u64) -> Option<String> {
        let log = std::fs::read_to_string(self.dir.join(format!("n{node}.log"))).ok()?;
        log.lines()
            .rev()
            .find(|line| line.contains(STORAGE_FAILED_LOG))
            .map(|line| strip_ansi(line).trim().to_string())
    }

    /// Unmounts `node`'s lazyfs (SIGTERM); the node must be stopped.
    fn unmount(&mut self, node: u64) {
        let data = self.data_dir(node);
        let Ok(proc) = self.proc(node) else {
            return;
        };
        let Some(mut child) = proc.lazyfs.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if mounted(&data) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&data)
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Starts `node` if it is not running.
    pub fn start(&mut self, node: u64) -> anyhow::Result<()> {
        if self.proc(node)?.child.is_some() {
            return Ok(());
        }
        self.mount(node)?;
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
                "--peer-addr",
                &peer_listen_addr(node),
            ])
            .arg("--peer-tls-ca")
            .arg(self.certs.join("ca.pem"))
            .arg("--peer-tls-cert")
            .arg(self.certs.join(format!("node-{node}.pem")))
            .arg("--peer-tls-key")
            .arg(self.certs.join(format!("node-{node}.key")))
            .args(self.no_fsync.then_some("--no-fsync"))
            .arg("--data-dir")
            .arg(self.data_dir(node))
            .env("RUST_LOG", "warn")
            .env("RAFTSTREAM_ADMIN_TOKEN", &self.token)
            .stdin(Stdio::null())
            // The node logs (tracing) to stderr, and a panic goes there
            // too: its warnings and errors, such as why its storage failed,
            // belong in its log.
            .stdout(log.try_clone()?)
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

    /// Kills `node` and empties its data directory, as a replaced disk
    /// would; `start` brings it back empty.
    pub fn wipe(&mut self, node: u64) -> anyhow::Result<()> {
        self.kill(node)?;
        let data = self.data_dir(node);
        for entry in std::fs::read_dir(&data)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
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

    /// Nodes that exited on their own, with their exit status.
    pub fn exited(&mut self) -> Vec<(u64, ExitStatus)> {
        let mut out = Vec::new();
        for node in self.nodes() {
            if let Ok(proc) = self.proc(node)
                && let Some(child) = &mut proc.child
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((node, status));
                proc.child = None;
            }
        }
        out
    }

    /// Kills every node this cluster started, then unmounts their lazyfs.
    pub fn kill_all(&mut self) {
        for node in self.nodes() {
            let _ = self.kill(node);
        }
        if self.lazyfs.is_some() {
            for node in self.nodes() {
                self.unmount(node);
            }
            let _ = std::fs::remove_file(state_file(std::process::id()));
        }
    }
}

/// `line` without terminal colour codes (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped_from_log_lines() {
        assert_eq!(
            strip_ansi("\u{1b}[31mERROR\u{1b}[0m storage failed"),
            "ERROR storage failed"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn control_sockets_are_short_and_named_after_the_harness() {
        let path = control_socket(4_194_304, 5);
        assert_eq!(path, Path::new("/run/jepsen-lite/4194304.n5.sock"));
        // A Unix socket path must fit in sun_path (108 bytes).
        assert!(path.as_os_str().len() < 108);
    }
}
