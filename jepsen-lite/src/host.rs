//! What a run needs from the machine: root, the network tools, and the
//! workspace's binaries (the node, lazyfs), built with cargo when not given.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;

use crate::nemesis;

pub(crate) fn require_root() -> anyhow::Result<()> {
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

pub(crate) fn node_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    workspace_binary(given, "raftstream-node")
}

/// The lazyfs binary when some of `faults` need it (as given, or built);
/// `None` when none does.
pub(crate) fn lazyfs_binary_if_needed(
    given: Option<PathBuf>,
    faults: impl IntoIterator<Item = nemesis::Fault>,
) -> anyhow::Result<Option<PathBuf>> {
    let needing: BTreeSet<nemesis::Fault> =
        faults.into_iter().filter(|f| f.needs_lazyfs()).collect();
    if needing.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = needing.iter().map(|f| f.name()).collect();
    let bin = workspace_binary(given, "lazyfs").with_context(|| {
        format!(
            "the {} nemesis runs nodes on lazyfs: pass --lazyfs-bin",
            names.join(", ")
        )
    })?;
    Ok(Some(bin))
}
