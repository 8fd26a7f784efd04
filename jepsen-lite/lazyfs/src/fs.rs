//! The FUSE side: a passthrough filesystem over a source directory whose file
//! data goes through an [`Overlay`] per inode until it is fsynced.
//!
//! Faults can be switched on at runtime through [`Control`]: fsyncs that fail
//! with EIO, a full disk, and a power loss that tears the unsynced tail of
//! each file instead of dropping all of it. The README says what each models.
//!
//! Inodes are tracked by path. Our inode numbers are handed out once and never
//! reused, and each is tied to the backing file's (device, inode) pair so hard
//! links share one overlay. One lock guards all state; the session runs a
//! single request thread, so the lock is never contended by requests, only by
//! a power loss arriving from the control thread.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::overlay::Overlay;

/// The kernel must ask us again for every attribute and name lookup: a power
/// loss changes file sizes behind its back, and we never notify it.
const TTL: Duration = Duration::ZERO;
const ROOT: u64 = 1;

/// What a power loss dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    /// Written bytes that were never fsynced.
    pub bytes: u64,
    /// Files that had any unsynced change (data or size).
    pub files: u64,
}

/// What a torn power loss did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Torn {
    /// Unsynced bytes that reached the disk: the kept prefixes of the tails.
    pub kept_bytes: u64,
    /// Unsynced bytes dropped, lost bytes and the rest of each tail included.
    pub dropped_bytes: u64,
    /// Files that had any unsynced change.
    pub files: u64,
    /// Of those, files whose tail was cut inside (some but not all of it kept).
    pub torn_files: u64,
}

/// The faults that can be switched on and off while mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `fsync`, `fdatasync` and directory fsyncs fail with EIO.
    FsyncEio,
    /// Writes that would grow a file, and `fallocate`, fail with ENOSPC;
    /// `statfs` reports no free blocks.
    DiskFull,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::FsyncEio => "fsync-eio",
            Fault::DiskFull => "disk-full",
        }
    }
}

/// What a fault did while it was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultReport {
    /// Whether it was on before this switch.
    pub was_on: bool,
    /// Calls it failed since it was last switched on.
    pub failed_calls: u64,
}

/// Injected failures are reported on stderr, this many per fault window;
/// the rest are only counted.
const REPORTED_FAILURES_MAX: u64 = 10;

/// A small seeded generator (SplitMix64), so that a torn power loss with a
/// given seed tears the same files at the same bytes.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }
}

/// The filesystem handed to the FUSE session.
#[derive(Debug)]
pub struct LazyFs {
    shared: Arc<Mutex<State>>,
}

/// The other end, kept by whoever simulates power losses.
#[derive(Debug, Clone)]
pub struct Control {
    shared: Arc<Mutex<State>>,
}

impl Control {
    /// Drops every unsynced write and size change of every file, so the
    /// backing directory and the mount both show only what was fsynced.
    pub fn power_loss(&self) -> Dropped {
        let mut state = lock(&self.shared);
        let mut dropped = Dropped::default();
        for inode in state.inodes.values_mut() {
            if !inode.overlay.is_clean() {
                dropped.bytes += inode.overlay.unsynced_bytes();
                dropped.files += 1;
                inode.overlay = Overlay::default();
            }
        }
        state.unsynced_bytes = 0;
        dropped
    }

    /// A power loss that tears writes: for every file that extends past its
    /// synced end, a prefix of that unsynced tail, cut at a byte drawn from
    /// `seed` (0 to all of it, not aligned to anything), reaches the disk and
    /// is synced there; every other unsynced change is dropped, as in
    /// [`Control::power_loss`]. Files are visited in inode order, so a seed
    /// tears the same way given the same files.
    ///
    /// Every overlay is dropped even when writing a prefix fails; the first
    /// such error is returned after that.
    pub fn torn_power_loss(&self, seed: u64) -> io::Result<Torn> {
        let mut state = lock(&self.shared);
        let mut rng = SplitMix::new(seed);
        let mut torn = Torn::default();
        let mut first_error = None;
        let mut inos: Vec<u64> = state
            .inodes
            .iter()
            .filter(|(_, inode)| !inode.overlay.is_clean())
            .map(|(ino, _)| *ino)
            .collect();
        inos.sort_unstable();
        for ino in inos {
            let Some(inode) = state.inodes.get_mut(&ino) else {
                continue;
            };
            let overlay = std::mem::take(&mut inode.overlay);
            torn.files += 1;
            let mut kept = 0;
            // An unlinked file is gone after a power loss, whatever it held.
            if let Some(path) = &inode.path {
                match tear(&overlay, path, &mut rng) {
                    Ok((k, whole)) => {
                        kept = k;
                        if k > 0 && k < whole {
                            torn.torn_files += 1;
                        }
                        eprintln!(
                            "lazyfs: torn: {}: kept {k} of the {whole} unsynced bytes past its synced end, dropped {} unsynced bytes in all",
                            path.display(),
                            overlay.unsynced_bytes().saturating_sub(k)
                        );
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| {
                            io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        });
                    }
                }
            }
            torn.kept_bytes += kept;
            torn.dropped_bytes += overlay.unsynced_bytes().saturating_sub(kept);
        }
        state.unsynced_bytes = 0;
        match first_error {
            Some(e) => Err(e),
            None => Ok(torn),
        }
    }

    /// Switches `fault` on or off; returns what it did while it was on.
    pub fn set_fault(&self, fault: Fault, on: bool) -> FaultReport {
        let mut state = lock(&self.shared);
        let slot = match fault {
            Fault::FsyncEio => &mut state.fsync_eio,
            Fault::DiskFull => &mut state.disk_full,
        };
        let report = FaultReport {
            was_on: slot.on,
            failed_calls: slot.failed,
        };
        if on && !slot.on {
            slot.failed = 0;
        }
        slot.on = on;
        report
    }

    /// Makes `statfs` report `bytes` free (rounded down to whole blocks), or
    /// with `None` the backing file system's own figures again. Writes are
    /// not affected: this is a disk that is filling up, not a full one
    /// ([`Fault::DiskFull`], which reports no free space whatever this says).
    pub fn set_free_space(&self, bytes: Option<u64>) {
        lock(&self.shared).free_space = bytes;
    }

    /// What `statfs` is told to report free, if anything.
    pub fn free_space(&self) -> Option<u64> {
        lock(&self.shared).free_space
    }

    /// Whether `fault` is on, and the calls it failed since it was last
    /// switched on.
    pub fn fault(&self, fault: Fault) -> (bool, u64) {
        let state = lock(&self.shared);
        let slot = match fault {
            Fault::FsyncEio => &state.fsync_eio,
            Fault::DiskFull => &state.disk_full,
        };
        (slot.on, slot.failed)
    }

    /// Unsynced bytes held over all files, and of those the lost ones.
    pub fn unsynced(&self) -> (u64, u64) {
        let state = lock(&self.shared);
        let lost = state.inodes.values().map(|i| i.overlay.lost_bytes()).sum();
        (state.unsynced_bytes, lost)
    }
}

/// Writes a random prefix of `overlay`'s tearable tail to the backing file
/// at `path` and syncs it. Returns (bytes kept, tail length).
fn tear(overlay: &Overlay, path: &Path, rng: &mut SplitMix) -> io::Result<(u64, u64)> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        // Not a regular file any more (replaced by a directory, say): there
        // is no tail to keep.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    if !file.metadata()?.is_file() {
        return Ok((0, 0));
    }
    let Some((offset, tail)) = overlay.tearable_tail(&&file)? else {
        return Ok((0, 0));
    };
    let whole = tail.len() as u64;
    let keep = rng.up_to(whole);
    if keep > 0 {
        let keep_len =
            usize::try_from(keep).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &tail[..keep_len], offset)?;
        file.sync_data()?;
    }
    Ok((keep, whole))
}

/// How to build a [`LazyFs`].
#[derive(Debug, Clone)]
pub struct Config {
    /// The backing directory.
    pub source: PathBuf,
    /// Unsynced written bytes held in memory over all files, at most. A write
    /// that would go past it fails with ENOSPC: lazyfs cannot hold more, and
    /// writing it back would make it durable, which it must not be.
    pub unsynced_bytes_max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("source {path}: {source}")]
    Source { path: PathBuf, source: io::Error },
    #[error("source {0} is not a directory")]
    NotADirectory(PathBuf),
}

impl LazyFs {
    pub fn new(config: &Config) -> Result<(LazyFs, Control), NewError> {
        let source = config.source.as_path();
        let path = source
            .canonicalize()
            .map_err(|source_err| NewError::Source {
                path: source.to_path_buf(),
                source: source_err,
            })?;
        let meta = fs::metadata(&path).map_err(|source_err| NewError::Source {
            path: path.clone(),
            source: source_err,
        })?;
        if !meta.is_dir() {
            return Err(NewError::NotADirectory(path));
        }
        let mut state = State {
            inodes: HashMap::new(),
            by_backing: HashMap::new(),
            handles: HashMap::new(),
            next_ino: ROOT,
            next_fh: 1,
            unsynced_bytes: 0,
            unsynced_bytes_max: config.unsynced_bytes_max,
            fsync_eio: FaultSlot::default(),
            disk_full: FaultSlot::default(),
            free_space: None,
        };
        let root = state.register(path, key(&meta));
        debug_assert_eq!(root, ROOT);
        let shared = Arc::new(Mutex::new(state));
        Ok((
            LazyFs {
                shared: shared.clone(),
            },
            Control { shared },
        ))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave an overlay half-edited in a
    // way that matters more than losing the process, so keep serving.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    /// (device, inode) of the backing file to our inode number.
    by_backing: HashMap<(u64, u64), u64>,
    handles: HashMap<u64, Handle>,
    next_ino: u64,
    next_fh: u64,
    /// The sum of `unsynced_bytes()` over all overlays.
    unsynced_bytes: u64,
    unsynced_bytes_max: u64,
    fsync_eio: FaultSlot,
    disk_full: FaultSlot,
    /// Free bytes `statfs` reports instead of the backing file system's,
    /// when set (a disk filling up; writes still succeed).
    free_space: Option<u64>,
}

/// One switchable fault: whether it is on, and what it failed since.
#[derive(Debug, Default)]
struct FaultSlot {
    on: bool,
    failed: u64,
}

impl FaultSlot {
    /// Counts one failed call and says whether to report it on stderr.
    fn count(&mut self) -> bool {
        self.failed += 1;
        self.failed <= REPORTED_FAILURES_MAX
    }
}

#[derive(Debug)]
struct Inode {
    /// Absolute path in the source directory; `None` once unlinked.
    path: Option<PathBuf>,
    key: (u64, u64),
    overlay: Overlay,
    open_handles: u32,
}

#[derive(Debug)]
enum Handle {
    File {
        ino: u64,
        file: Arc<File>,
        /// Opened with O_APPEND: every write goes to the logical end.
        append: bool,
        writable: bool,
    },
    Dir {
        entries: Vec<(u64, FileType, OsString)>,
    },
}

/// The attribute changes one `setattr` asks for; `None` leaves one as it is.
#[derive(Debug, Default)]
struct AttrChanges {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

fn key(meta: &Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    fn register(&mut self, path: PathBuf, key: (u64, u64)) -> u64 {
        if let Some(&ino) = self.by_backing.get(&key)
            && let Some(inode) = self.inodes.get_mut(&ino)
        {
            inode.path = Some(path);
            return ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_backing.insert(key, ino);
        self.inodes.insert(
            ino,
            Inode {
                path: Some(path),
                key,
                overlay: Overlay::default(),
                open_handles: 0,
            },
        );
        ino
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    /// Changes the overlay of `ino`, keeping the running total of unsynced
    /// bytes right.
    fn edit<R>(&mut self, ino: u64, change: impl FnOnce(&mut Overlay) -> R) -> Result<R, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        let before = inode.overlay.unsynced_bytes();
        let result = change(&mut inode.overlay);
        let after = inode.overlay.unsynced_bytes();
        self.unsynced_bytes = self.unsynced_bytes - before + after;
        Ok(result)
    }

    fn remove_inode(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.remove(&ino) {
            self.unsynced_bytes -= inode.overlay.unsynced_bytes();
        }
    }

    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.inode(ino)?.path.clone().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn file(&self, fh: u64) -> Result<(u64, Arc<File>, bool, bool), Errno> {
        match self.handles.get(&fh) {
            Some(Handle::File {
                ino,
                file,
                append,
                writable,
            }) => Ok((*ino, file.clone(), *append, *writable)),
            Some(Handle::Dir { .. }) => Err(Errno::EISDIR),
            None => Err(Errno::EBADF),
        }
    }

    fn attr(&self, ino: u64, meta: &Metadata) -> FileAttr {
        let size = match self.inodes.get(&ino) {
            Some(inode) if meta.is_file() => inode.overlay.size(meta.len()),
            _ => meta.len(),
        };
        attr(ino, meta, size)
    }

    /// Forgets the backing (device, inode) pair of a file whose last name is
    /// gone, so a new file that reuses the pair gets a fresh inode and
    /// overlay. Handles still open keep the old inode alive.
    fn detach(&mut self, path: &Path, meta: &Metadata) {
        let Some(&ino) = self.by_backing.get(&key(meta)) else {
            return;
        };
        let last_link = meta.is_dir() || meta.nlink() <= 1;
        if let Some(inode) = self.inodes.get_mut(&ino) {
            if inode.path.as_deref() == Some(path) {
                inode.path = None;
            }
            if last_link {
                self.by_backing.remove(&inode.key);
                if inode.open_handles == 0 {
                    self.remove_inode(ino);
                }
            }
        }
    }

    /// Moves every known path under `from` to the same place under `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        for inode in self.inodes.values_mut() {
            if let Some(path) = &inode.path
                && let Ok(rest) = path.strip_prefix(from)
            {
                inode.path = Some(if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                });
            }
        }
    }

    fn open_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        if let Handle::File { ino, .. } = &handle
            && let Some(inode) = self.inodes.get_mut(ino)
        {
            inode.open_handles += 1;
        }
        self.handles.insert(fh, handle);
        fh
    }

    /// Gives the file at `path` (not following a symlink) its inode and
    /// returns its attributes.
    fn register_path(&mut self, path: PathBuf) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        let ino = self.register(path, key(&meta));
        Ok(self.attr(ino, &meta))
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        self.register_path(path)
    }

    fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr, Errno> {
        let meta = match fh.map(|fh| self.file(fh)) {
            Some(Ok((_, file, _, _))) => file.metadata(),
            _ => fs::symlink_metadata(self.path(ino)?),
        }
        .map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    fn setattr(
        &mut self,
        ino: u64,
        fh: Option<u64>,
        changes: AttrChanges,
    ) -> Result<FileAttr, Errno> {
        let open = fh
            .and_then(|fh| self.file(fh).ok())
            .map(|(_, file, _, _)| file);
        let path = self.inode(ino)?.path.clone();
        // Attribute changes are metadata and go straight to the backing file.
        let target = || -> Result<Arc<File>, Errno> {
            match (&open, &path) {
                (Some(file), _) => Ok(file.clone()),
                (None, Some(path)) => File::open(path).map(Arc::new).map_err(errno),
                (None, None) => Err(Errno::ENOENT),
            }
        };
        if let Some(mode) = changes.mode {
            let perms = fs::Permissions::from_mode(mode & 0o7777);
            match (&open, &path) {
                (None, Some(path)) => fs::set_permissions(path, perms),
                _ => target()?.set_permissions(perms),
            }
            .map_err(errno)?;
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            match (&open, &path) {
                (None, Some(path)) => std::os::unix::fs::lchown(path, changes.uid, changes.gid),
                _ => std::os::unix::fs::fchown(&*target()?, changes.uid, changes.gid),
            }
            .map_err(errno)?;
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            let resolve = |t: TimeOrNow| match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            let mut times = FileTimes::new();
            if let Some(t) = changes.atime {
                times = times.set_accessed(resolve(t));
            }
            if let Some(t) = changes.mtime {
                times = times.set_modified(resolve(t));
            }
            target()?.set_times(times).map_err(errno)?;
        }
        if let Some(size) = changes.size {
            // A size change is file data: it stays unsynced like a write.
            let meta = target()?.metadata().map_err(errno)?;
            if meta.is_dir() {
                return Err(Errno::EISDIR);
            }
            if !meta.is_file() {
                return Err(Errno::EINVAL);
            }
            self.edit(ino, |overlay| overlay.truncate(size, meta.len()))?;
        }
        let meta = target()?.metadata().map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        fs::DirBuilder::new()
            .mode(mode & 0o7777)
            .create(&path)
            .map_err(errno)?;
        self.register_path(path)
    }

    fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let path = self.child(parent, name)?;
        let mut options = OpenOptions::new();
        options.create(true).mode(mode & 0o7777);
        if flags & libc::O_EXCL != 0 {
            options.create_new(true);
        }
        let (file, writable) = open_backing(&path, flags, &mut options)?;
        let meta = file.metadata().map_err(errno)?;
        let ino = self.register(path, key(&meta));
        if flags & libc::O_TRUNC != 0 {
            // The file may have existed after all; O_TRUNC is a data change.
            self.edit(ino, |overlay| overlay.truncate(0, meta.len()))?;
        }
        let fh = self.open_handle(Handle::File {
            ino,
            file: Arc::new(file),
            append: flags & libc::O_APPEND != 0,
            writable,
        });
        Ok((self.attr(ino, &meta), fh))
    }

    fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        // The kernel turns O_TRUNC into a setattr of the size, which the
        // overlay records; it must not reach the backing file here.
        let (file, writable) = open_backing(&path, flags, &mut OpenOptions::new())?;
        Ok(self.open_handle(Handle::File {
            ino,
            file: Arc::new(file),
            append: flags & libc::O_APPEND != 0,
            writable,
        }))
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (ino, file, _, _) = self.file(fh)?;
        self.inode(ino)?
            .overlay
            .read(offset, size, &&*file)
            .map_err(errno)
    }

    fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (ino, file, append, _) = self.file(fh)?;
        let written = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        if self.unsynced_bytes.saturating_add(u64::from(written)) > self.unsynced_bytes_max {
            return Err(Errno::ENOSPC);
        }
        let backing_size = file.metadata().map_err(errno)?.len();
        let size = self.inode(ino)?.overlay.size(backing_size);
        // Our view of the size is the true one; the kernel's may predate a
        // power loss.
        let offset = if append { size } else { offset };
        if self.disk_full.on && offset.saturating_add(u64::from(written)) > size {
            if self.disk_full.count() {
                eprintln!(
                    "lazyfs: disk-full: a write of {written} bytes at {offset} growing {} failed with ENOSPC",
                    self.describe(ino)
                );
            }
            return Err(Errno::ENOSPC);
        }
        self.edit(ino, |overlay| overlay.write(offset, data, backing_size))?
            .map_err(|_| Errno::EFBIG)?;
        Ok(written)
    }

    fn release(&mut self, fh: u64) {
        let Some(Handle::File { ino, .. }) = self.handles.remove(&fh) else {
            return;
        };
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.open_handles = inode.open_handles.saturating_sub(1);
        // An unlinked file whose last handle closed can never be read or
        // synced again; its unsynced data goes with it.
        let orphan = self.by_backing.get(&inode.key) != Some(&ino);
        if inode.open_handles == 0 && orphan {
            self.remove_inode(ino);
        }
    }

    fn fsync(&mut self, fh: u64, datasync: bool) -> Result<(), Errno> {
        let (ino, file, _, writable) = self.file(fh)?;
        if self.fsync_eio.on {
            // The disk refused the writeback: nothing reaches the backing
            // file, and what was unsynced is lost (see `Overlay`).
            let unsynced = self.inode(ino)?.overlay.unsynced_bytes();
            self.edit(ino, Overlay::fail_sync)?;
            if self.fsync_eio.count() {
                eprintln!(
                    "lazyfs: fsync-eio: {} of {} failed with EIO; its {unsynced} unsynced bytes are lost",
                    if datasync { "fdatasync" } else { "fsync" },
                    self.describe(ino)
                );
            }
            return Err(Errno::EIO);
        }
        let inode = self.inode_mut(ino)?;
        if inode.overlay.is_clean() {
            return sync(&file, datasync).map_err(errno);
        }
        let target = if writable {
            file
        } else {
            // fsync(2) on a read-only descriptor still syncs what other
            // descriptors wrote.
            let path = inode.path.clone().ok_or(Errno::EBADF)?;
            Arc::new(OpenOptions::new().write(true).open(path).map_err(errno)?)
        };
        // The overlay is cleared only once the backing file is synced, so a
        // real failure here leaves the data unsynced, and a retry writes it
        // again. Lost bytes stay behind, readable and never written.
        inode.overlay.apply(&mut &*target).map_err(errno)?;
        sync(&target, datasync).map_err(errno)?;
        self.edit(ino, |overlay| *overlay = overlay.synced())?;
        Ok(())
    }

    /// The path of `ino` for messages.
    fn describe(&self, ino: u64) -> String {
        match self.inodes.get(&ino).and_then(|i| i.path.as_ref()) {
            Some(path) => path.display().to_string(),
            None => format!("unlinked inode {ino}"),
        }
    }

    fn fsyncdir(&mut self, ino: u64) -> Result<(), Errno> {
        if self.fsync_eio.on {
            if self.fsync_eio.count() {
                eprintln!(
                    "lazyfs: fsync-eio: fsync of directory {} failed with EIO",
                    self.describe(ino)
                );
            }
            return Err(Errno::EIO);
        }
        File::open(self.path(ino)?)
            .and_then(|dir| dir.sync_all())
            .map_err(errno)
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let meta = fs::symlink_metadata(&path).map_err(errno)?;
        if dir {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(errno)?;
        self.detach(&path, &meta);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        let moved = fs::symlink_metadata(&from).map_err(errno)?;
        let replaced = fs::symlink_metadata(&to).ok();
        fs::rename(&from, &to).map_err(errno)?;
        if let Some(replaced) = replaced
            && key(&replaced) != key(&moved)
        {
            self.detach(&to, &replaced);
        }
        self.moved(&from, &to);
        Ok(())
    }

    fn link(&mut self, ino: u64, newparent: u64, newname: &OsStr) -> Result<FileAttr, Errno> {
        let from = self.path(ino)?;
        let to = self.child(newparent, newname)?;
        fs::hard_link(&from, &to).map_err(errno)?;
        let meta = fs::symlink_metadata(&to).map_err(errno)?;
        Ok(self.attr(ino, &meta))
    }

    fn symlink(&mut self, parent: u64, name: &OsStr, target: &Path) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        std::os::unix::fs::symlink(target, &path).map_err(errno)?;
        self.register_path(path)
    }

    fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        let path = self.path(ino)?;
        let meta = fs::metadata(&path).map_err(errno)?;
        let parent = match path.parent() {
            Some(parent) if ino != ROOT => fs::metadata(parent)
                .map(|m| self.by_backing.get(&key(&m)).copied().unwrap_or(ROOT))
                .unwrap_or(ROOT),
            _ => ROOT,
        };
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        for entry in fs::read_dir(&path).map_err(errno)? {
            let entry = entry.map_err(errno)?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            let child = self.register(
                entry.path(),
                (meta.dev(), std::os::unix::fs::DirEntryExt::ino(&entry)),
            );
            entries.push((child, kind, entry.file_name()));
        }
        Ok(self.open_handle(Handle::Dir { entries }))
    }

    /// The backing file system's figures, with no free blocks while the
    /// disk is full, or as many as `free_space` says.
    fn statfs(&self) -> Result<StatFs, Errno> {
        let s =
            nix::sys::statvfs::statvfs(&self.path(ROOT)?).map_err(|e| Errno::from_i32(e as i32))?;
        // statvfs(3) counts free blocks in fragments.
        let fragment = s.fragment_size().max(1);
        let (free, available) = match (self.disk_full.on, self.free_space) {
            (true, _) => (0, 0),
            (false, Some(bytes)) => (bytes / fragment, bytes / fragment),
            (false, None) => (s.blocks_free(), s.blocks_available()),
        };
        Ok(StatFs {
            blocks: s.blocks(),
            blocks_free: free,
            blocks_available: available,
            files: s.files(),
            files_free: s.files_free(),
            block_size: u32::try_from(s.block_size()).unwrap_or(4096),
            name_max: u32::try_from(s.name_max()).unwrap_or(255),
            fragment_size: u32::try_from(s.fragment_size()).unwrap_or(4096),
        })
    }

    fn fallocate(&mut self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let (ino, file, _, _) = self.file(fh)?;
        if self.disk_full.on && length > 0 {
            if self.disk_full.count() {
                eprintln!(
                    "lazyfs: disk-full: fallocate of {length} bytes at {offset} in {} failed with ENOSPC",
                    self.describe(ino)
                );
            }
            return Err(Errno::ENOSPC);
        }
        match mode {
            // Reserving space changes no content, so there is nothing to keep
            // unsynced.
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            // A plain fallocate may grow the file, which is a size change.
            0 => {
                let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
                let backing_size = file.metadata().map_err(errno)?.len();
                self.edit(ino, |overlay| {
                    if end > overlay.size(backing_size) {
                        overlay.truncate(end, backing_size);
                    }
                })
            }
            // Punching holes and the like would need a zeroed extent model;
            // callers fall back on EOPNOTSUPP.
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}

/// What `statfs` answers.
#[derive(Debug, Clone, Copy)]
struct StatFs {
    blocks: u64,
    blocks_free: u64,
    blocks_available: u64,
    files: u64,
    files_free: u64,
    block_size: u32,
    name_max: u32,
    fragment_size: u32,
}

/// Opens the backing file read-write whenever possible, so that an fsync on
/// any descriptor can write the overlay back. The kernel has already checked
/// the caller's access mode. O_TRUNC, O_APPEND and O_DIRECT are handled by
/// the overlay and must not reach the backing file.
fn open_backing(path: &Path, flags: i32, options: &mut OpenOptions) -> Result<(File, bool), Errno> {
    match options.read(true).write(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EROFS) =>
        {
            let accmode = flags & libc::O_ACCMODE;
            let writable = accmode != libc::O_RDONLY;
            options
                .read(accmode != libc::O_WRONLY)
                .write(writable)
                .open(path)
                .map(|file| (file, writable))
                .map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

fn sync(file: &File, datasync: bool) -> io::Result<()> {
    if datasync {
        file.sync_data()
    } else {
        file.sync_all()
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                + Duration::from_nanos(u64::from(nanos))
        }
    }
}

fn attr(ino: u64, meta: &Metadata, size: u64) -> FileAttr {
    let kind = FileType::from_std(meta.file_type()).unwrap_or(FileType::RegularFile);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: u32::try_from(meta.rdev()).unwrap_or(0),
        blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

const GENERATION: Generation = Generation(0);

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.state().lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().getattr(ino.0, fh.map(|fh| fh.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let result = self.state().setattr(ino.0, fh.map(|fh| fh.0), changes);
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self
            .state()
            .path(ino.0)
            .and_then(|path| fs::read_link(path).map_err(errno));
        match target {
            Ok(target) => reply.data(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.state().mkdir(parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.state().unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.state().symlink(parent.0, link_name, target) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE and RENAME_EXCHANGE would need renameat2; nothing
        // this filesystem serves uses them.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        match self.state().rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.state().link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // Direct I/O keeps the kernel page cache out of the way: every read
        // and write reaches the overlay, and nothing the kernel cached can
        // outlive a power loss.
        match self.state().open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.state().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable; that is the point of this filesystem.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.state().opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.state();
        let Some(Handle::Dir { entries }) = state.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.state().fsyncdir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.state().statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.fragment_size,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.state().create(parent.0, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                GENERATION,
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.state().fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A filesystem over a fresh source directory, driven without FUSE.
    struct Fixture {
        dir: tempfile::TempDir,
        fs: LazyFs,
        control: Control,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let (fs, control) = LazyFs::new(&Config {
                source: dir.path().to_path_buf(),
                unsynced_bytes_max: 1 << 20,
            })
            .unwrap();
            Fixture { dir, fs, control }
        }

        /// Creates `name` and returns its inode and a read-write handle.
        fn create(&self, name: &str) -> (u64, u64) {
            let (attr, fh) = self
                .fs
                .state()
                .create(ROOT, OsStr::new(name), 0o644, libc::O_RDWR)
                .unwrap();
            (attr.ino.0, fh)
        }

        fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
            self.fs.state().write(fh, offset, data)
        }

        fn fsync(&self, fh: u64) -> Result<(), Errno> {
            self.fs.state().fsync(fh, true)
        }

        /// The whole file as the mount shows it.
        fn read(&self, fh: u64) -> Vec<u8> {
            self.fs.state().read(fh, 0, u32::MAX).unwrap()
        }

        /// The whole backing file: what the disk holds.
        fn disk(&self, name: &str) -> Vec<u8> {
            fs::read(self.dir.path().join(name)).unwrap()
        }
    }

    #[test]
    fn fsync_eio_fails_fsyncs_and_the_bytes_it_failed_never_reach_the_disk() {
        let f = Fixture::new();
        let (_, fh) = f.create("wal");
        f.write(fh, 0, b"synced").unwrap();
        f.fsync(fh).unwrap();
        f.write(fh, 6, b" lost").unwrap();

        assert!(!f.control.set_fault(Fault::FsyncEio, true).was_on);
        assert_eq!(f.fsync(fh), Err(Errno::EIO));
        assert_eq!(f.fs.state().fsync(fh, false), Err(Errno::EIO), "fsync too");
        assert_eq!(f.fs.state().fsyncdir(ROOT), Err(Errno::EIO));
        assert_eq!(f.disk("wal"), b"synced", "nothing was written back");
        assert_eq!(f.read(fh), b"synced lost", "the bytes still read back");
        // Writes still go through while fsyncs fail.
        f.write(fh, 11, b"!").unwrap();
        assert_eq!(f.control.unsynced(), (6, 5));

        let report = f.control.set_fault(Fault::FsyncEio, false);
        assert!(report.was_on);
        assert_eq!(report.failed_calls, 3);
        // A later fsync succeeds but, like Linux after a failed writeback,
        // does not write the bytes it lost: the disk has zeros there.
        f.fsync(fh).unwrap();
        f.fs.state().fsyncdir(ROOT).unwrap();
        assert_eq!(f.disk("wal"), b"synced\0\0\0\0\0!");
        assert_eq!(f.read(fh), b"synced lost!");
        // A power loss then shows what the disk has.
        assert_eq!(f.control.power_loss().bytes, 5);
        assert_eq!(f.read(fh), b"synced\0\0\0\0\0!");
    }

    #[test]
    fn a_failed_fsync_of_a_clean_file_fails_too() {
        let f = Fixture::new();
        let (_, fh) = f.create("clean");
        f.control.set_fault(Fault::FsyncEio, true);
        assert_eq!(f.fsync(fh), Err(Errno::EIO));
        assert_eq!(f.control.fault(Fault::FsyncEio), (true, 1));
        // Switching it on again starts a new count.
        f.control.set_fault(Fault::FsyncEio, false);
        f.control.set_fault(Fault::FsyncEio, true);
        assert_eq!(f.control.fault(Fault::FsyncEio), (true, 0));
    }

    #[test]
    fn disk_full_refuses_growing_writes_and_fallocate_and_reports_no_free_space() {
        let f = Fixture::new();
        let (ino, fh) = f.create("data");
        f.write(fh, 0, b"0123456789").unwrap();
        assert!(f.fs.state().statfs().unwrap().blocks_available > 0);

        f.control.set_fault(Fault::DiskFull, true);
        let stat = f.fs.state().statfs().unwrap();
        assert_eq!((stat.blocks_free, stat.blocks_available), (0, 0));
        assert!(stat.blocks > 0);
        // Overwriting allocated bytes still works; growing does not.
        assert_eq!(f.write(fh, 2, b"ab"), Ok(2));
        assert_eq!(f.write(fh, 8, b"xyz"), Err(Errno::ENOSPC));
        assert_eq!(f.write(fh, 10, b"z"), Err(Errno::ENOSPC));
        assert_eq!(
            f.fs.state()
                .fallocate(fh, 0, 4096, libc::FALLOC_FL_KEEP_SIZE),
            Err(Errno::ENOSPC)
        );
        assert_eq!(f.fs.state().fallocate(fh, 0, 100, 0), Err(Errno::ENOSPC));
        // Growing by truncation allocates nothing (a sparse file).
        f.fs.state()
            .setattr(
                ino,
                Some(fh),
                AttrChanges {
                    size: Some(12),
                    ..AttrChanges::default()
                },
            )
            .unwrap();
        // An O_APPEND handle appends at our end of the file, and is refused.
        let fh_append =
            f.fs.state()
                .open(ino, libc::O_WRONLY | libc::O_APPEND)
                .unwrap();
        assert_eq!(f.write(fh_append, 0, b"a"), Err(Errno::ENOSPC));
        // fsync still works: the data was already accepted.
        f.fsync(fh).unwrap();
        assert_eq!(f.disk("data"), b"01ab456789\0\0");

        let report = f.control.set_fault(Fault::DiskFull, false);
        assert_eq!(report.failed_calls, 5);
        assert!(f.fs.state().statfs().unwrap().blocks_available > 0);
        assert_eq!(f.write(fh, 12, b"!"), Ok(1));
        assert_eq!(f.read(fh), b"01ab456789\0\0!");
    }

    #[test]
    fn a_disk_filling_up_shows_little_free_space_and_still_takes_writes() {
        let f = Fixture::new();
        let (_, fh) = f.create("data");
        f.control.set_free_space(Some(10 << 20));
        assert_eq!(f.control.free_space(), Some(10 << 20));
        let stat = f.fs.state().statfs().unwrap();
        assert_eq!(
            stat.blocks_available * u64::from(stat.fragment_size),
            10 << 20
        );
        assert_eq!(stat.blocks_free, stat.blocks_available);
        assert_eq!(f.write(fh, 0, b"grows"), Ok(5));
        // Full wins over the figure shown.
        f.control.set_fault(Fault::DiskFull, true);
        assert_eq!(f.fs.state().statfs().unwrap().blocks_available, 0);
        f.control.set_fault(Fault::DiskFull, false);
        f.control.set_free_space(None);
        let real = nix::sys::statvfs::statvfs(f.dir.path()).unwrap();
        let shown = f.fs.state().statfs().unwrap();
        assert_eq!(shown.blocks, real.blocks());
        assert!(shown.blocks_available > 0);
    }

    #[test]
    fn a_torn_power_loss_keeps_a_random_prefix_of_each_unsynced_tail() {
        let tail: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut kept = Vec::new();
        for seed in 0..40 {
            let f = Fixture::new();
            let (_, fh) = f.create("wal");
            f.write(fh, 0, b"head").unwrap();
            f.fsync(fh).unwrap();
            f.write(fh, 4, &tail).unwrap();
            // An overwrite of synced bytes is dropped, not torn.
            f.write(fh, 0, b"H").unwrap();
            let torn = f.control.torn_power_loss(seed).unwrap();
            assert_eq!(torn.files, 1);
            assert_eq!(torn.kept_bytes + torn.dropped_bytes, 5001);
            let disk = f.disk("wal");
            let k = disk.len() - 4;
            assert_eq!(torn.kept_bytes, k as u64);
            assert_eq!(&disk[..4], b"head", "seed {seed}");
            assert_eq!(&disk[4..], &tail[..k], "seed {seed}: a prefix of the tail");
            assert_eq!(f.read(fh), disk, "the mount shows the disk");
            assert_eq!(f.control.unsynced(), (0, 0));
            kept.push(k);

            // The same seed over the same files tears at the same byte.
            let again = Fixture::new();
            let (_, fh) = again.create("wal");
            again.write(fh, 0, b"head").unwrap();
            again.fsync(fh).unwrap();
            again.write(fh, 4, &tail).unwrap();
            again.control.torn_power_loss(seed).unwrap();
            assert_eq!(again.disk("wal"), disk, "seed {seed} repeats");
        }
        // Cut points are spread over the tail, not aligned to blocks.
        assert!(kept.iter().any(|k| *k > 0 && *k < 2500), "{kept:?}");
        assert!(kept.iter().any(|k| *k > 2500 && *k < 5000), "{kept:?}");
        assert!(kept.iter().any(|k| k % 512 != 0), "{kept:?}");
    }

    #[test]
    fn a_torn_power_loss_tears_every_file_and_drops_what_is_not_a_tail() {
        let f = Fixture::new();
        let (_, a) = f.create("a");
        let (_, b) = f.create("b");
        let (ino_c, c) = f.create("c");
        f.write(a, 0, &[1; 300]).unwrap();
        f.write(b, 0, &[2; 300]).unwrap();
        // A file truncated since its last sync keeps nothing unsynced.
        f.write(c, 0, b"0123456789").unwrap();
        f.fsync(c).unwrap();
        f.fs.state()
            .setattr(
                ino_c,
                Some(c),
                AttrChanges {
                    size: Some(2),
                    ..AttrChanges::default()
                },
            )
            .unwrap();
        f.write(c, 2, b"new tail").unwrap();
        // An unlinked file leaves nothing behind.
        let (_, gone) = f.create("gone");
        f.write(gone, 0, &[3; 50]).unwrap();
        f.fs.state()
            .unlink(ROOT, OsStr::new("gone"), false)
            .unwrap();

        let torn = f.control.torn_power_loss(99).unwrap();
        assert_eq!(torn.files, 4);
        assert_eq!(torn.kept_bytes + torn.dropped_bytes, 300 + 300 + 8 + 50);
        let (la, lb) = (f.disk("a").len(), f.disk("b").len());
        assert_eq!(torn.kept_bytes, (la + lb) as u64);
        assert_eq!(f.disk("a"), vec![1; la]);
        assert_eq!(f.disk("b"), vec![2; lb]);
        assert_eq!(f.disk("c"), b"0123456789");
        assert_eq!(f.read(c), b"0123456789");
        assert_eq!(f.control.unsynced(), (0, 0));
    }

    #[test]
    fn a_torn_power_loss_never_keeps_bytes_a_failed_fsync_lost() {
        let f = Fixture::new();
        let (_, fh) = f.create("wal");
        f.write(fh, 0, &[7; 100]).unwrap();
        f.control.set_fault(Fault::FsyncEio, true);
        assert_eq!(f.fsync(fh), Err(Errno::EIO));
        f.control.set_fault(Fault::FsyncEio, false);
        f.write(fh, 100, &[8; 100]).unwrap();
        for seed in 0..20 {
            let torn = f.control.torn_power_loss(seed).unwrap();
            assert_eq!(torn.kept_bytes, 0, "seed {seed}");
        }
        assert_eq!(f.disk("wal"), b"");
    }

    #[test]
    fn split_mix_stays_in_range() {
        let mut rng = SplitMix::new(1);
        for max in [0, 1, 7, 4095, u64::MAX] {
            for _ in 0..100 {
                assert!(rng.up_to(max) <= max);
            }
        }
        assert_eq!(SplitMix::new(5).next_u64(), SplitMix::new(5).next_u64());
    }
}
