//! lazyfs: a FUSE passthrough filesystem that keeps file data written since
//! the last fsync in memory, so a simulated power loss can drop it. See the
//! README for what it models and how the jepsen-lite harness drives it.

pub mod control;
mod fs;
pub mod overlay;

pub use fs::{Config, Control, Dropped, Fault, FaultReport, LazyFs, NewError, SplitMix, Torn};

/// The mount source of every lazyfs mount, as `/proc/self/mountinfo` shows
/// it (the field after the filesystem type `fuse`).
pub const FSNAME: &str = "lazyfs";

/// Mount options for a lazyfs session.
///
/// One request thread keeps the order of requests the order the kernel sent
/// them, which keeps the model simple; the filesystem holds one lock anyway.
/// `default_permissions` lets the kernel check access against the modes we
/// report instead of us re-implementing it.
pub fn mount_config() -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(FSNAME.to_string()),
        fuser::MountOption::Subtype("lazyfs".to_string()),
        fuser::MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(1);
    config
}
