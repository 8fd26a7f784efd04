//! Faults switched through the control socket of a real lazyfs mount:
//! failing fsyncs, a full disk, and torn writes on a power loss.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::{Lazy, append_records, read};

#[test]
fn fsync_eio_fails_fsync_and_fdatasync_and_loses_what_they_failed() {
    let mut lazy = Lazy::start_with_control();
    let file = lazy.create_synced("wal", b"synced");
    file.write_all_at(b" lost", 6).unwrap();

    assert_eq!(lazy.command("fsync-eio on"), "ok fsync-eio on");
    lazy.expect_line("fsync-eio on");
    let err = file.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let err = file.sync_all().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let dir = File::open(&lazy.mnt).unwrap();
    assert_eq!(dir.sync_all().unwrap_err().raw_os_error(), Some(libc::EIO));
    lazy.expect_line("fdatasync of");
    assert_eq!(read(&lazy.backing("wal")), b"synced");
    assert_eq!(read(&lazy.path("wal")), b"synced lost");
    assert!(
        lazy.command("status")
            .contains("fsync-eio on (3 failed calls)")
    );

    assert_eq!(
        lazy.command("fsync-eio off"),
        "ok fsync-eio off; it failed 3 calls"
    );
    // The lost bytes never reach the disk, though later fsyncs succeed.
    file.write_all_at(b"!", 11).unwrap();
    file.sync_data().unwrap();
    assert_eq!(read(&lazy.backing("wal")), b"synced\0\0\0\0\0!");
    assert_eq!(read(&lazy.path("wal")), b"synced lost!");
    lazy.power_loss_reporting("dropped 5 unsynced bytes");
    assert_eq!(read(&lazy.path("wal")), b"synced\0\0\0\0\0!");
}

#[test]
fn disk_full_refuses_appends_with_enospc_and_statfs_shows_no_space() {
    let lazy = Lazy::start_with_control();
    let mut log = lazy.append_to("log");
    log.write_all(b"before;").unwrap();
    assert!(
        nix::sys::statvfs::statvfs(&lazy.mnt)
            .unwrap()
            .blocks_available()
            > 0
    );

    assert_eq!(lazy.command("disk-full on"), "ok disk-full on");
    let stat = nix::sys::statvfs::statvfs(&lazy.mnt).unwrap();
    assert_eq!(stat.blocks_available(), 0);
    assert_eq!(stat.blocks_free(), 0);
    let err = log.write_all(b"during;").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // Data already accepted can still be synced.
    log.sync_all().unwrap();
    assert_eq!(read(&lazy.backing("log")), b"before;");

    assert!(
        lazy.command("disk-full off")
            .starts_with("ok disk-full off; it failed")
    );
    // A disk filling up shows little free space, and still takes writes.
    assert_eq!(
        lazy.command("free-space 8388608"),
        "ok free-space 8388608 bytes shown"
    );
    let stat = nix::sys::statvfs::statvfs(&lazy.mnt).unwrap();
    assert_eq!(stat.blocks_available() * stat.fragment_size(), 8 << 20);
    log.write_all(b"low;").unwrap();
    assert_eq!(lazy.command("free-space real"), "ok free-space real");
    assert!(
        nix::sys::statvfs::statvfs(&lazy.mnt)
            .unwrap()
            .blocks_available()
            > 0
    );
    log.write_all(b"after;").unwrap();
    assert_eq!(read(&lazy.path("log")), b"before;low;after;");
}

#[test]
fn a_torn_power_loss_leaves_each_log_at_a_random_byte_of_its_unsynced_tail() {
    let mut lazy = Lazy::start_with_control();
    let mut logs = Vec::new();
    for name in ["000004.log", "MANIFEST-000005", "LOG"] {
        let mut log = lazy.append_to(name);
        let prefix = format!("{name} ");
        let mut content = append_records(&mut log, &prefix, 0..50);
        log.sync_data().unwrap();
        let synced = content.len();
        content.extend(append_records(&mut log, &prefix, 50..400));
        logs.push((name, synced, content));
    }
    let reply = lazy.command("torn-power-loss 12345");
    assert!(
        reply.starts_with("ok torn power loss 1 (seed 12345): kept "),
        "{reply}"
    );
    assert!(reply.contains("in 3 files"), "{reply}");
    lazy.expect_line("torn power loss 1");
    let mut kept_total = 0;
    for (name, synced, content) in &logs {
        let disk = read(&lazy.backing(name));
        assert!(disk.len() >= *synced, "{name}: synced bytes are kept");
        assert_eq!(
            disk,
            content[..disk.len()],
            "{name}: a prefix of what was written"
        );
        assert_eq!(
            read(&lazy.path(name)),
            disk,
            "{name}: the mount shows the disk"
        );
        kept_total += disk.len() - synced;
    }
    assert!(
        reply.contains(&format!("kept {kept_total} and dropped")),
        "{reply}"
    );
    // A plain power loss after it numbers on, with nothing left to drop.
    lazy.power_loss_reporting("power loss 2: dropped 0 unsynced bytes");
}

#[test]
fn the_control_socket_answers_errors_and_is_removed_at_exit() {
    let lazy = Lazy::start_with_control();
    let socket = lazy.control.clone().unwrap();
    assert!(lazy.command("meteor").starts_with("error unknown command"));
    assert!(
        lazy.command("disk-full sometimes")
            .starts_with("error expected on or off")
    );
    assert!(
        lazy.command("status")
            .starts_with("ok status: fsync-eio off")
    );
    assert!(socket.exists());
    assert!(lazy.stop().success());
    assert!(!socket.exists(), "the socket outlived lazyfs");
}
