//! `lazyfs --source DIR --mountpoint DIR [--control SOCKET]`: mounts DIR
//! through lazyfs until SIGTERM or SIGINT; SIGUSR1 simulates a power loss,
//! and the control socket switches faults (see `lazyfs::control`).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;

use anyhow::Context as _;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// A FUSE passthrough filesystem that keeps unsynced writes in memory and
/// drops them on SIGUSR1 (a simulated power loss).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The backing directory; it holds exactly what was fsynced.
    #[arg(long)]
    source: PathBuf,
    /// Where to mount it; must be an existing empty directory.
    #[arg(long)]
    mountpoint: PathBuf,
    /// Unsynced bytes held in memory over all files, at most; a write past
    /// it fails with ENOSPC.
    #[arg(long, default_value_t = 1 << 30)]
    unsynced_bytes_max: u64,
    /// A Unix socket to create for fault control: one command per line
    /// (power-loss, torn-power-loss SEED, fsync-eio on|off, disk-full
    /// on|off, free-space BYTES|real, status), one reply line each. Removed
    /// at exit.
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazyfs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the control socket at `path`, replacing a socket a previous lazyfs
/// left there (never any other kind of file); only its owner may use it.
fn bind_control(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "control path {} exists and is not a socket",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Removes the control socket when lazyfs exits, however `run` returns.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    // Block the control signals before any thread exists, so every thread
    // inherits the mask and they are only ever taken by the wait below.
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGUSR2,
    ] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking control signals")?;

    let (fs, control) = lazyfs::LazyFs::new(&lazyfs::Config {
        source: args.source.clone(),
        unsynced_bytes_max: args.unsynced_bytes_max,
    })?;
    let controller = lazyfs::control::Controller::new(control);
    let _socket = RemoveOnDrop(args.control.clone());
    if let Some(path) = &args.control {
        let listener = bind_control(path)?;
        let serving = controller.clone();
        thread::Builder::new()
            .name("lazyfs-control".to_string())
            .spawn(move || serving.serve(&listener))
            .context("starting the control thread")?;
    }
    let mountpoint = args
        .mountpoint
        .canonicalize()
        .with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    // Session::new returns after the kernel's INIT handshake, so the mount is
    // usable from here on.
    let mut session = fuser::Session::new(fs, &mountpoint, &lazyfs::mount_config())
        .with_context(|| format!("mounting at {}", mountpoint.display()))?;
    let mut unmounter = session.unmount_callable();
    eprintln!(
        "lazyfs: ready: {} mounted at {} (pid {})",
        args.source.display(),
        mountpoint.display(),
        std::process::id()
    );

    let me = Pid::this();
    let serving = thread::Builder::new()
        .name("lazyfs-session".to_string())
        .spawn(move || {
            let result = session.run();
            // Wake the control loop if the session ended on its own, for
            // example because someone unmounted the filesystem.
            let _ = kill(me, Signal::SIGUSR2);
            result
        })
        .context("starting the session thread")?;

    loop {
        match signals.wait().context("waiting for signals")? {
            Signal::SIGUSR1 => {
                controller.handle_line("power-loss");
            }
            Signal::SIGTERM | Signal::SIGINT => {
                if let Err(e) = unmounter.unmount() {
                    // Something still has files open (the node was not
                    // stopped first). Detach the mount so no stale mount is
                    // left behind; our exit aborts the open files.
                    eprintln!("lazyfs: unmount failed ({e}), detaching lazily");
                    nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH)
                        .with_context(|| format!("detaching {}", mountpoint.display()))?;
                    return Ok(());
                }
                break;
            }
            Signal::SIGUSR2 => break,
            _ => {}
        }
    }
    match serving.join() {
        Ok(result) => result.context("serving the filesystem")?,
        Err(_) => anyhow::bail!("the session thread panicked"),
    }
    eprintln!("lazyfs: unmounted {}", mountpoint.display());
    Ok(())
}
