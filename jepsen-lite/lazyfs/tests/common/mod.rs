//! Starts a real `lazyfs` process on temporary directories and cleans up
//! after it, also when a test fails. Needs root and /dev/fuse, as CI has.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Appends the records `{prefix}record {i};`, for each `i` in `numbers`,
/// to `log`; answers the bytes appended.
pub fn append_records(log: &mut impl std::io::Write, prefix: &str, numbers: Range<u32>) -> Vec<u8> {
    let mut appended = Vec::new();
    for i in numbers {
        let record = format!("{prefix}record {i};");
        log.write_all(record.as_bytes()).unwrap();
        appended.extend_from_slice(record.as_bytes());
    }
    appended
}

/// The whole content of the file at `path`.
pub fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

/// A running lazyfs mount. Dropping it stops lazyfs and makes sure the
/// mount is gone.
pub struct Lazy {
    child: Option<Child>,
    stderr: Receiver<String>,
    /// Everything lazyfs printed so far, for failure messages.
    log: Vec<String>,
    pub source: PathBuf,
    pub mnt: PathBuf,
    /// The control socket, when lazyfs was started with one.
    pub control: Option<PathBuf>,
    _dirs: TempDir,
}

/// True when `mountpoint` is a mount point whose source is `lazyfs`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        Path::new(fields[4]) == mountpoint && fields.get(sep + 2) == Some(&lazyfs::FSNAME)
    })
}

/// Polls `ready` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

impl Lazy {
    pub fn start() -> Lazy {
        Self::start_with(&[])
    }

    /// Starts lazyfs with a control socket (`control.sock` beside the
    /// mountpoint).
    pub fn start_with_control() -> Lazy {
        Self::start_inner(&[], true)
    }

    /// Starts lazyfs with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Lazy {
        Self::start_inner(args, false)
    }

    fn start_inner(args: &[&str], with_control: bool) -> Lazy {
        let dirs = TempDir::new().unwrap();
        let base = dirs.path().canonicalize().unwrap();
        let source = base.join("source");
        let mnt = base.join("mnt");
        fs::create_dir(&source).unwrap();
        fs::create_dir(&mnt).unwrap();
        let control = with_control.then(|| base.join("control.sock"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_lazyfs"));
        if let Some(control) = &control {
            command.arg("--control").arg(control);
        }
        let mut child = command
            .arg("--source")
            .arg(&source)
            .arg("--mountpoint")
            .arg(&mnt)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lazy = Lazy {
            child: Some(child),
            stderr: rx,
            log: Vec::new(),
            source,
            mnt,
            control,
            _dirs: dirs,
        };
        let start = Instant::now();
        while !is_mounted(&lazy.mnt) {
            if let Some(status) = lazy.child.as_mut().unwrap().try_wait().unwrap() {
                lazy.drain();
                panic!(
                    "lazyfs exited with {status} before mounting: {:?}",
                    lazy.log
                );
            }
            assert!(start.elapsed() < DEADLINE, "lazyfs did not mount in time");
            thread::sleep(Duration::from_millis(20));
        }
        lazy
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    fn drain(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.log.push(line);
        }
    }

    /// Waits for the next stderr line that contains `needle`.
    pub fn expect_line(&mut self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!("no line with {needle:?} from lazyfs; got {:?}", self.log)
                }
            }
        }
    }

    /// Simulates a power loss and returns lazyfs's report of it.
    pub fn power_loss(&mut self) -> String {
        kill(self.pid(), Signal::SIGUSR1).unwrap();
        self.expect_line("power loss")
    }

    /// Simulates a power loss whose report says `expected`.
    #[track_caller]
    pub fn power_loss_reporting(&mut self, expected: &str) {
        let report = self.power_loss();
        assert!(report.contains(expected), "{report}");
    }

    /// Sends one line on the control socket and returns the reply line.
    pub fn command(&self, line: &str) -> String {
        use std::io::Write;
        let path = self.control.as_ref().expect("started without --control");
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }

    /// How lazyfs exited, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Opens the file `name` on the mount for appending, creating it, as a
    /// log is written.
    pub fn append_to(&self, name: &str) -> fs::File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap()
    }

    /// Creates the file `name` on the mount holding `synced`, made durable
    /// with fdatasync; answers it open for more writes.
    pub fn create_synced(&self, name: &str, synced: &[u8]) -> fs::File {
        let file = fs::File::create(self.path(name)).unwrap();
        file.write_all_at(synced, 0).unwrap();
        file.sync_data().unwrap();
        file
    }

    pub fn backing(&self, name: &str) -> PathBuf {
        self.source.join(name)
    }

    /// Stops lazyfs with SIGTERM and returns how it exited.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.terminate();
        assert!(!is_mounted(&self.mnt), "still mounted after lazyfs exited");
        status
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                return child.wait().unwrap();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lazy {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        if is_mounted(&self.mnt) {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}
