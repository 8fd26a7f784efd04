//! `lazyfs --source DIR --mountpoint DIR`: mounts DIR through lazyfs until
//! SIGTERM or SIGINT; SIGUSR1 simulates a power loss.

use std::path::PathBuf;
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

    let mut power_losses = 0u64;
    loop {
        match signals.wait().context("waiting for signals")? {
            Signal::SIGUSR1 => {
                power_losses += 1;
                let dropped = control.power_loss();
                eprintln!(
                    "lazyfs: power loss {power_losses}: dropped {} unsynced bytes in {} files",
                    dropped.bytes, dropped.files
                );
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
