//! How lazyfs starts and stops: the interface the harness relies on.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Write;
use std::process::Command;

use common::{Lazy, is_mounted, wait_until};

/// Stops lazyfs (SIGTERM): it must exit zero and leave no mount behind.
fn assert_stops_cleanly(lazy: Lazy) {
    let mnt = lazy.mnt.clone();
    let status = lazy.stop();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    assert_stops_cleanly(Lazy::start());
}

#[test]
fn sigterm_with_files_still_open_detaches_the_mount_and_exits_zero() {
    // The harness should stop the node first, but a leftover open file must
    // not leave a mount behind.
    let lazy = Lazy::start();
    let mut open = File::create(lazy.path("held")).unwrap();
    open.write_all(b"x").unwrap();
    assert_stops_cleanly(lazy);
}

#[test]
fn an_external_unmount_ends_lazyfs_cleanly() {
    let mut lazy = Lazy::start();
    let umount = Command::new("umount").arg(&lazy.mnt).status().unwrap();
    assert!(umount.success());
    lazy.expect_line("unmounted");
    wait_until("lazyfs to exit", || lazy.exited().is_some());
    assert_eq!(lazy.exited().and_then(|s| s.code()), Some(0));
}

#[test]
fn a_missing_source_directory_fails_without_mounting() {
    let dirs = tempfile::TempDir::new().unwrap();
    let mnt = dirs.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_lazyfs"))
        .arg("--source")
        .arg(dirs.path().join("missing"))
        .arg("--mountpoint")
        .arg(&mnt)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing"));
    assert!(!is_mounted(&mnt));
}
