//! A real lazyfs mount: what survives a simulated power loss and what does not.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::{Lazy, append_records, read};

/// `name` shows `shown` through the mount while the disk still holds
/// `on_disk`, and a power loss brings `on_disk` back.
fn assert_power_loss_reverts(lazy: &mut Lazy, name: &str, shown: &[u8], on_disk: &[u8]) {
    assert_eq!(read(&lazy.path(name)), shown);
    assert_eq!(read(&lazy.backing(name)), on_disk);
    lazy.power_loss();
    assert_eq!(read(&lazy.path(name)), on_disk);
}

#[test]
fn an_unsynced_write_is_visible_until_a_power_loss_drops_it() {
    let mut lazy = Lazy::start();
    let mut file = File::create(lazy.path("data")).unwrap();
    file.write_all(b"not yet durable").unwrap();
    drop(file); // close(2) must not make it durable

    assert_eq!(read(&lazy.path("data")), b"not yet durable");
    assert_eq!(fs::metadata(lazy.path("data")).unwrap().len(), 15);
    assert_eq!(
        read(&lazy.backing("data")),
        b"",
        "nothing reached the backing file"
    );

    lazy.power_loss_reporting("dropped 15 unsynced bytes in 1 files");
    assert_eq!(read(&lazy.path("data")), b"");
    assert_eq!(fs::metadata(lazy.path("data")).unwrap().len(), 0);
    assert_eq!(read(&lazy.backing("data")), b"");
    assert!(lazy.stop().success());
}

#[test]
fn an_fsynced_write_survives_a_power_loss() {
    let mut lazy = Lazy::start();
    let mut file = File::create(lazy.path("data")).unwrap();
    file.write_all(b"durable").unwrap();
    file.sync_all().unwrap();
    assert_eq!(read(&lazy.backing("data")), b"durable");

    lazy.power_loss();
    assert_eq!(read(&lazy.path("data")), b"durable");
    assert_eq!(read(&lazy.backing("data")), b"durable");
}

#[test]
fn fdatasync_makes_writes_durable_too() {
    let mut lazy = Lazy::start();
    let file = lazy.create_synced("data", b"0123456789");
    file.write_all_at(b"ab", 3).unwrap();

    assert_power_loss_reverts(&mut lazy, "data", b"012ab56789", b"0123456789");
}

#[test]
fn pwrites_at_offsets_overlay_the_synced_file_and_sync_exactly() {
    let mut lazy = Lazy::start();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lazy.path("data"))
        .unwrap();
    file.write_all_at(b"aaaaaaaaaa", 0).unwrap();
    file.sync_all().unwrap();
    file.write_all_at(b"XX", 4).unwrap();
    file.write_all_at(b"Y", 13).unwrap();

    let mut buf = [0u8; 6];
    file.read_exact_at(&mut buf, 3).unwrap();
    assert_eq!(&buf, b"aXXaaa");
    assert_eq!(read(&lazy.path("data")), b"aaaaXXaaaa\0\0\0Y");

    file.sync_all().unwrap();
    file.write_all_at(b"lost", 0).unwrap();
    lazy.power_loss();
    assert_eq!(read(&lazy.backing("data")), b"aaaaXXaaaa\0\0\0Y");
    assert_eq!(read(&lazy.path("data")), b"aaaaXXaaaa\0\0\0Y");
}

#[test]
fn an_appended_log_ends_at_its_synced_length_after_a_power_loss() {
    // What RocksDB does with its WAL: append records, fsync, append more.
    let mut lazy = Lazy::start();
    let mut log = lazy.append_to("000004.log");
    let mut synced = append_records(&mut log, "", 0..100);
    log.sync_data().unwrap();
    append_records(&mut log, "", 100..150);
    assert!(read(&lazy.path("000004.log")).len() > synced.len());

    lazy.power_loss_reporting("in 1 files");
    assert_eq!(read(&lazy.path("000004.log")), synced);
    assert_eq!(read(&lazy.backing("000004.log")), synced);

    // The log keeps working after the loss, from its synced end.
    log.write_all(b"after;").unwrap();
    log.sync_all().unwrap();
    synced.extend_from_slice(b"after;");
    assert_eq!(read(&lazy.backing("000004.log")), synced);
}

#[test]
fn a_renamed_fsynced_file_survives_under_its_new_name() {
    // How RocksDB replaces CURRENT: write a temp file, fsync, rename over.
    let mut lazy = Lazy::start();
    fs::write(lazy.path("CURRENT"), b"MANIFEST-000001\n").unwrap();
    File::open(lazy.path("CURRENT"))
        .unwrap()
        .sync_all()
        .unwrap();

    let mut tmp = File::create(lazy.path("000002.dbtmp")).unwrap();
    tmp.write_all(b"MANIFEST-000002\n").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(lazy.path("000002.dbtmp"), lazy.path("CURRENT")).unwrap();
    File::open(&lazy.mnt).unwrap().sync_all().unwrap(); // fsyncdir

    lazy.power_loss();
    assert_eq!(read(&lazy.path("CURRENT")), b"MANIFEST-000002\n");
    assert_eq!(read(&lazy.backing("CURRENT")), b"MANIFEST-000002\n");
    assert!(!lazy.path("000002.dbtmp").exists());
}

#[test]
fn unsynced_data_follows_its_file_through_a_rename() {
    let mut lazy = Lazy::start();
    let mut file = File::create(lazy.path("a")).unwrap();
    file.write_all(b"moving").unwrap();
    fs::rename(lazy.path("a"), lazy.path("b")).unwrap();
    assert_eq!(read(&lazy.path("b")), b"moving");
    file.sync_all().unwrap();
    lazy.power_loss();
    assert_eq!(read(&lazy.backing("b")), b"moving");
}

#[test]
fn unsynced_truncation_is_undone_by_a_power_loss() {
    let mut lazy = Lazy::start();
    let file = File::create(lazy.path("data")).unwrap();
    file.write_all_at(b"0123456789", 0).unwrap();
    file.sync_all().unwrap();

    file.set_len(4).unwrap(); // ftruncate
    assert_eq!(read(&lazy.path("data")), b"0123");
    file.set_len(6).unwrap();
    assert_power_loss_reverts(&mut lazy, "data", b"0123\0\0", b"0123456789");

    // Opening with O_TRUNC is a size change like any other.
    fs::write(lazy.path("data"), b"new").unwrap();
    assert_power_loss_reverts(&mut lazy, "data", b"new", b"0123456789");

    // Synced, the truncation sticks.
    file.set_len(2).unwrap();
    file.sync_all().unwrap();
    lazy.power_loss();
    assert_eq!(read(&lazy.backing("data")), b"01");
}

#[test]
fn fsync_on_one_descriptor_syncs_writes_made_through_another() {
    let mut lazy = Lazy::start();
    let writer = File::create(lazy.path("data")).unwrap();
    writer.write_all_at(b"shared", 0).unwrap();
    File::open(lazy.path("data")).unwrap().sync_all().unwrap();
    lazy.power_loss();
    assert_eq!(read(&lazy.path("data")), b"shared");
}

#[test]
fn only_the_files_that_were_not_synced_lose_data() {
    let mut lazy = Lazy::start();
    fs::create_dir(lazy.path("dir")).unwrap();
    let mut kept = File::create(lazy.path("dir/kept")).unwrap();
    kept.write_all(b"kept").unwrap();
    kept.sync_all().unwrap();
    fs::write(lazy.path("dir/lost1"), b"12345").unwrap();
    fs::write(lazy.path("lost2"), b"678").unwrap();

    lazy.power_loss_reporting("dropped 8 unsynced bytes in 2 files");
    assert_eq!(read(&lazy.path("dir/kept")), b"kept");
    // Directory entries pass straight through: the files exist, empty.
    assert_eq!(read(&lazy.path("dir/lost1")), b"");
    assert_eq!(read(&lazy.path("lost2")), b"");

    // A second loss with nothing unsynced drops nothing.
    lazy.power_loss_reporting("dropped 0 unsynced bytes in 0 files");
}

#[test]
fn directories_and_names_pass_through() {
    let lazy = Lazy::start();
    fs::create_dir_all(lazy.path("a/b")).unwrap();
    fs::write(lazy.path("a/b/f"), b"x").unwrap();
    fs::hard_link(lazy.path("a/b/f"), lazy.path("a/g")).unwrap();
    let mut names: Vec<String> = fs::read_dir(lazy.path("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "g"]);
    assert_eq!(
        read(&lazy.path("a/g")),
        b"x",
        "a hard link shares the unsynced data"
    );

    fs::rename(lazy.path("a"), lazy.path("c")).unwrap();
    assert_eq!(read(&lazy.path("c/b/f")), b"x");
    assert!(lazy.backing("c/b/f").exists());
    fs::remove_file(lazy.path("c/b/f")).unwrap();
    fs::remove_dir(lazy.path("c/b")).unwrap();
    assert!(!lazy.backing("c/b").exists());
    assert_eq!(
        fs::remove_dir(lazy.path("c")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        fs::read(lazy.path("missing")).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert!(lazy.stop().success());
}

#[test]
fn a_recreated_file_does_not_inherit_the_unsynced_data_of_a_deleted_one() {
    let lazy = Lazy::start();
    for round in 0..20u8 {
        let mut file = File::create(lazy.path("f")).unwrap();
        file.write_all(&[round; 3]).unwrap();
        drop(file);
        assert_eq!(read(&lazy.path("f")), [round; 3]);
        fs::remove_file(lazy.path("f")).unwrap();
        File::create(lazy.path("f")).unwrap();
        assert_eq!(read(&lazy.path("f")), b"", "round {round}");
        fs::remove_file(lazy.path("f")).unwrap();
    }
}

#[test]
fn attributes_and_fallocate_behave_like_a_local_filesystem() {
    use std::os::unix::fs::PermissionsExt;
    let lazy = Lazy::start();
    let file = File::create(lazy.path("data")).unwrap();
    fs::set_permissions(lazy.path("data"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(lazy.path("data"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    file.set_modified(mtime).unwrap();
    assert_eq!(
        fs::metadata(lazy.path("data")).unwrap().modified().unwrap(),
        mtime
    );

    // RocksDB preallocates with FALLOC_FL_KEEP_SIZE; the size stays.
    nix::fcntl::fallocate(
        &file,
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        4096,
    )
    .unwrap();
    assert_eq!(fs::metadata(lazy.path("data")).unwrap().len(), 0);
    // A plain fallocate grows the file, unsynced like a write.
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, 100).unwrap();
    assert_eq!(fs::metadata(lazy.path("data")).unwrap().len(), 100);
    assert_eq!(fs::metadata(lazy.backing("data")).unwrap().len(), 0);

    let stat = nix::sys::statvfs::statvfs(&lazy.mnt).unwrap();
    assert!(stat.blocks() > 0);
}

#[test]
fn a_posix_lock_on_the_mount_excludes_other_processes() {
    // RocksDB takes an fcntl lock on its LOCK file; the kernel handles FUSE
    // locks locally, which is enough for processes on one machine.
    let lazy = Lazy::start();
    let lock = File::create(lazy.path("LOCK")).unwrap();
    let whole_file = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&lock, nix::fcntl::FcntlArg::F_SETLK(&whole_file)).unwrap();
    let try_lock = |path: &std::path::Path| {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl, sys\n\
                 try:\n    fcntl.lockf(open(sys.argv[1], 'r+'), fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
                 except OSError:\n    sys.exit(7)",
            )
            .arg(path)
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(
        try_lock(&lazy.path("LOCK")),
        Some(7),
        "a second process got the lock"
    );
    drop(lock);
    assert_eq!(
        try_lock(&lazy.path("LOCK")),
        Some(0),
        "the lock outlived its holder"
    );
}

#[test]
fn writes_past_the_unsynced_limit_fail_with_enospc_until_an_fsync() {
    let lazy = Lazy::start_with(&["--unsynced-bytes-max", "100"]);
    let file = File::create(lazy.path("data")).unwrap();
    file.write_all_at(&[1; 60], 0).unwrap();
    let err = file.write_all_at(&[2; 60], 60).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    // An fsync writes the unsynced bytes back and frees the room.
    file.sync_data().unwrap();
    file.write_all_at(&[2; 60], 60).unwrap();
    file.sync_data().unwrap();
    assert_eq!(read(&lazy.backing("data")).len(), 120);
}

#[test]
fn a_directory_larger_than_one_readdir_reply_lists_every_entry_once() {
    let lazy = Lazy::start();
    let count = 600;
    for i in 0..count {
        File::create(lazy.path(&format!("{i:06}.sst-with-a-long-enough-name"))).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&lazy.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let listed = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "entries are missing");
    assert_eq!(listed, count, "entries were listed twice");
}
