//! Free space on the data directory's file system: writes that grow the
//! data are refused while it is below `Limits::min_free_disk_bytes`, so the
//! disk does not fill up (a node whose writes fail stops, see
//! `Node::stop_on_storage_failure`).

use std::path::Path;
use std::path::PathBuf;

use parking_lot::RwLock;

#[derive(Debug)]
pub struct DiskSpace {
    path: PathBuf,
    min_free_bytes: u64,
    /// Why writes are refused, while they are.
    low: RwLock<Option<String>>,
}

impl DiskSpace {
    pub fn new(path: &Path, min_free_bytes: u64) -> DiskSpace {
        DiskSpace {
            path: path.to_path_buf(),
            min_free_bytes,
            low: RwLock::new(None),
        }
    }

    /// Measures the free space again (a blocking statvfs call).
    pub fn check(&self) {
        let low = match available_bytes(&self.path) {
            Ok(free) => refusal(free, self.min_free_bytes),
            Err(e) => {
                // The data directory cannot even be inspected: its writes
                // will fail too, and stop the node, so nothing is refused
                // here on a guess.
                tracing::warn!(path = %self.path.display(), error = %e, "free space unknown");
                None
            }
        };
        let mut current = self.low.write();
        match (&*current, &low) {
            (None, Some(why)) => tracing::warn!("{why}"),
            (Some(_), None) => {
                tracing::info!("free disk space is back above the headroom; taking writes")
            }
            _ => {}
        }
        *current = low;
    }

    /// Why writes are refused now, if they are.
    pub fn low_on_space(&self) -> Option<String> {
        self.low.read().clone()
    }
}

fn available_bytes(path: &Path) -> nix::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path)?;
    Ok(stats
        .blocks_available()
        .saturating_mul(stats.fragment_size()))
}

/// The refusal for `free` bytes left against a headroom of `min_free`.
fn refusal(free: u64, min_free: u64) -> Option<String> {
    (free < min_free).then(|| {
        format!(
            "this node's disk has {} MiB free, under its {} MiB headroom: publishes are refused \
             until space is freed (delete topics or shorten retention)",
            free >> 20,
            min_free >> 20
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_refused_only_under_the_headroom() {
        assert_eq!(refusal(100 << 20, 64 << 20), None);
        let why = refusal(10 << 20, 64 << 20).unwrap();
        assert!(
            why.contains("10 MiB free") && why.contains("64 MiB"),
            "{why}"
        );
        // The data directory's own file system is measured.
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 0);
        space.check();
        assert_eq!(space.low_on_space(), None);
        let space = DiskSpace::new(dir.path(), u64::MAX);
        space.check();
        assert!(space.low_on_space().is_some());
    }
}
