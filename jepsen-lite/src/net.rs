//! The network the cluster runs in: one namespace per node, one for the
//! harness's clients ("control") and one holding the bridge, all named
//! `jl<harness pid>-…` so that leftovers of a crashed run are found and
//! removed. Nothing is added to the root namespace: veth pairs are created
//! inside the bridge namespace with their peer end moved straight into the
//! node's namespace. Faults are nftables rules in each node's own input
//! chain; they only ever name other nodes' addresses, never the control
//! namespace's, so clients always reach every node that is up.

use std::io::Write;
use std::process::Command;
use std::process::Stdio;

use anyhow::Context;
use anyhow::bail;

/// Every namespace this harness creates starts with this.
const PREFIX: &str = "jl";
const SUBNET: &str = "10.99.0";
const TABLE: &str = "jlite";

pub fn node_addr(node: u64) -> String {
    format!("{SUBNET}.{}", 10 + node)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("ip").args(args))
}

/// Feeds an nftables script to `nft -f -` inside a namespace.
fn nft(ns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (is nftables installed?)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "nft in {ns} failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn namespaces() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The harness pid a namespace name carries, if it is one of ours.
fn owner(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Kills what runs in a namespace (only processes in namespaces this
/// harness created) and deletes it.
fn remove_namespace(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        let me = std::process::id() as i32;
        // The harness itself lives in the control namespace: never itself.
        for pid in pids
            .lines()
            .filter_map(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p != me)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = ip(&["netns", "del", name]);
}

/// Whether a process runs (a zombie, killed but not yet reaped, does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Removes the namespaces (and the processes in them) of earlier runs
/// whose harness process no longer exists.
pub fn clean_leftovers() -> anyhow::Result<usize> {
    let mut removed = 0;
    for name in namespaces()? {
        if let Some(pid) = owner(&name)
            && !alive(pid)
        {
            remove_namespace(&name);
            removed += 1;
        }
    }
    Ok(removed)
}

/// Moves the calling thread into network namespace `name`: sockets it
/// opens from then on live there (sockets opened before stay where they
/// were).
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {path}"))?;
    Ok(())
}

#[derive(Debug)]
pub struct Net {
    tag: String,
    nodes: u64,
    created: Vec<String>,
}

impl Net {
    pub fn node_ns(&self, node: u64) -> String {
        format!("{}-n{node}", self.tag)
    }

    pub fn control_ns(&self) -> String {
        format!("{}-c", self.tag)
    }

    fn bridge_ns(&self) -> String {
        format!("{}-br", self.tag)
    }

    /// Builds the bridge, the control namespace and one namespace per node.
    pub fn create(nodes: u64) -> anyhow::Result<Net> {
        let mut net = Net {
            tag: format!("{PREFIX}{}", std::process::id()),
            nodes,
            created: Vec::new(),
        };
        net.build().inspect_err(|_| net.destroy())?;
        Ok(net)
    }

    fn add_ns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let br = self.bridge_ns();
        self.add_ns(&br)?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        let mut members: Vec<(String, String)> = vec![(self.control_ns(), format!("{SUBNET}.2"))];
        for node in 1..=self.nodes {
            members.push((self.node_ns(node), node_addr(node)));
        }
        for (i, (ns, addr)) in members.iter().enumerate() {
            self.add_ns(ns)?;
            let port = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        for node in 1..=self.nodes {
            nft(
                &self.node_ns(node),
                &format!(
                    "table inet {TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n}}\n"
                ),
            )?;
        }
        Ok(())
    }

    /// Moves this process's network namespace to the control namespace, so
    /// that every socket the workload opens lives there. Call it before any
    /// thread starts: only the calling thread moves, and threads it starts
    /// later inherit its namespace.
    pub fn enter_control(&self) -> anyhow::Result<()> {
        enter(&self.control_ns())
    }

    /// Replaces `node`'s input rules: drop everything from `blocked`, and a
    /// `loss_percent` share of what comes from `lossy`.
    pub fn set_rules(
        &self,
        node: u64,
        blocked: &[u64],
        lossy: &[u64],
        loss_percent: u32,
    ) -> anyhow::Result<()> {
        let set = |nodes: &[u64]| {
            nodes
                .iter()
                .map(|n| node_addr(*n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut script = format!("flush chain inet {TABLE} input\n");
        if !blocked.is_empty() {
            script.push_str(&format!(
                "add rule inet {TABLE} input ip saddr {{ {} }} drop\n",
                set(blocked)
            ));
        }
        if !lossy.is_empty() && loss_percent > 0 {
            script.push_str(&format!(
                "add rule inet {TABLE} input ip saddr {{ {} }} numgen random mod 100 < {loss_percent} drop\n",
                set(lossy)
            ));
        }
        nft(&self.node_ns(node), &script)
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        for node in 1..=self.nodes {
            self.set_rules(node, &[], &[], 0)?;
        }
        Ok(())
    }

    /// Deletes every namespace this run created, killing what still runs
    /// in them. Safe to call twice.
    pub fn destroy(&mut self) {
        for name in self.created.drain(..).rev() {
            remove_namespace(&name);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_alive_and_an_unused_pid_is_not() {
        assert!(super::alive(std::process::id()));
        assert!(!super::alive(u32::MAX));
    }

    #[test]
    fn only_names_with_our_prefix_and_a_pid_are_ours() {
        assert_eq!(super::owner("jl1234-n1"), Some(1234));
        assert_eq!(super::owner("jl99-br"), Some(99));
        assert_eq!(super::owner("jlx-n1"), None);
        assert_eq!(super::owner("bench-n1"), None);
    }
}
