//! The control socket's language: one command per line, one reply line per
//! command. `ok ...` when it was done, `error ...` when not. Each reply is
//! also what lazyfs prints on stderr, after `lazyfs: `.
//!
//! | command | effect |
//! |---|---|
//! | `power-loss` | drop every unsynced write (as SIGUSR1 does) |
//! | `torn-power-loss SEED` | keep a random prefix of each file's unsynced tail, drop the rest |
//! | `fsync-eio on` / `fsync-eio off` | fsyncs fail with EIO while on |
//! | `disk-full on` / `disk-full off` | growing writes fail with ENOSPC, statfs shows no free blocks |
//! | `free-space BYTES` / `free-space real` | statfs shows BYTES free (writes unaffected), or the real figure |
//! | `status` | which faults are on, unsynced and lost bytes |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fs::{Control, Fault};

/// A parsed control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    PowerLoss,
    TornPowerLoss {
        seed: u64,
    },
    Set {
        fault: Fault,
        on: bool,
    },
    /// Free bytes for statfs to report; `None`: the real figure.
    FreeSpace(Option<u64>),
    Status,
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let switch = |word: &str| match word {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(format!("expected on or off, not {other:?}")),
        };
        match words.as_slice() {
            ["power-loss"] => Ok(Command::PowerLoss),
            ["torn-power-loss", seed] => seed
                .parse()
                .map(|seed| Command::TornPowerLoss { seed })
                .map_err(|_| format!("torn-power-loss: {seed:?} is not a seed (a u64)")),
            ["fsync-eio", on] => Ok(Command::Set {
                fault: Fault::FsyncEio,
                on: switch(on)?,
            }),
            ["disk-full", on] => Ok(Command::Set {
                fault: Fault::DiskFull,
                on: switch(on)?,
            }),
            ["free-space", "real"] => Ok(Command::FreeSpace(None)),
            ["free-space", bytes] => bytes
                .parse()
                .map(|bytes| Command::FreeSpace(Some(bytes)))
                .map_err(|_| format!("free-space: {bytes:?} is neither a byte count nor real")),
            ["status"] => Ok(Command::Status),
            _ => Err(format!(
                "unknown command {line:?}; use power-loss, torn-power-loss SEED, \
                 fsync-eio on|off, disk-full on|off, free-space BYTES|real or status"
            )),
        }
    }
}

/// Runs commands against one mount; numbers the power losses, whichever
/// way (signal or socket) they come.
#[derive(Debug, Clone)]
pub struct Controller {
    control: Control,
    power_losses: Arc<AtomicU64>,
}

impl Controller {
    pub fn new(control: Control) -> Controller {
        Controller {
            control,
            power_losses: Arc::default(),
        }
    }

    /// Runs one command; the reply line without its newline.
    pub fn execute(&self, command: Command) -> Result<String, String> {
        match command {
            Command::PowerLoss => {
                let n = self.power_losses.fetch_add(1, Ordering::Relaxed) + 1;
                let dropped = self.control.power_loss();
                Ok(format!(
                    "power loss {n}: dropped {} unsynced bytes in {} files",
                    dropped.bytes, dropped.files
                ))
            }
            Command::TornPowerLoss { seed } => {
                let n = self.power_losses.fetch_add(1, Ordering::Relaxed) + 1;
                match self.control.torn_power_loss(seed) {
                    Ok(torn) => Ok(format!(
                        "torn power loss {n} (seed {seed}): kept {} and dropped {} unsynced bytes in {} files, {} torn inside their tail",
                        torn.kept_bytes, torn.dropped_bytes, torn.files, torn.torn_files
                    )),
                    Err(e) => Err(format!(
                        "torn power loss {n} (seed {seed}): every unsynced write was dropped, but keeping a tail failed: {e}"
                    )),
                }
            }
            Command::Set { fault, on } => {
                let report = self.control.set_fault(fault, on);
                let name = fault.name();
                Ok(match (on, report.was_on) {
                    (true, true) => format!("{name} on (it already was)"),
                    (true, false) => format!("{name} on"),
                    (false, true) => format!("{name} off; it failed {} calls", report.failed_calls),
                    (false, false) => format!("{name} off (it already was)"),
                })
            }
            Command::FreeSpace(bytes) => {
                self.control.set_free_space(bytes);
                Ok(match bytes {
                    Some(bytes) => format!("free-space {bytes} bytes shown"),
                    None => "free-space real".to_string(),
                })
            }
            Command::Status => {
                let describe = |fault: Fault| {
                    let (on, failed) = self.control.fault(fault);
                    format!(
                        "{} {} ({failed} failed calls)",
                        fault.name(),
                        if on { "on" } else { "off" }
                    )
                };
                let (unsynced, lost) = self.control.unsynced();
                let free = self
                    .control
                    .free_space()
                    .map_or("real".to_string(), |b| format!("{b} bytes"));
                Ok(format!(
                    "status: {}, {}, free-space {free}, {unsynced} unsynced bytes of which {lost} lost",
                    describe(Fault::FsyncEio),
                    describe(Fault::DiskFull)
                ))
            }
        }
    }

    /// Parses and runs one line; the reply (`ok ...` or `error ...`) is
    /// also printed on stderr.
    pub fn handle_line(&self, line: &str) -> String {
        let result = Command::parse(line).and_then(|command| self.execute(command));
        let reply = match result {
            Ok(text) => format!("ok {text}"),
            Err(text) => format!("error {text}"),
        };
        match reply.strip_prefix("ok ") {
            Some(text) => eprintln!("lazyfs: {text}"),
            None => eprintln!("lazyfs: control: {reply}"),
        }
        reply
    }

    /// Serves connections on `listener` one at a time until it fails.
    pub fn serve(&self, listener: &UnixListener) {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(e) = self.serve_one(stream) {
                        eprintln!("lazyfs: control connection: {e}");
                    }
                }
                Err(e) => {
                    eprintln!("lazyfs: control socket: {e}");
                    return;
                }
            }
        }
    }

    fn serve_one(&self, stream: UnixStream) -> std::io::Result<()> {
        let mut writer = stream.try_clone()?;
        for line in BufReader::new(stream).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let reply = self.handle_line(&line);
            writer.write_all(format!("{reply}\n").as_bytes())?;
            writer.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_are_refused() {
        assert_eq!(Command::parse("power-loss"), Ok(Command::PowerLoss));
        assert_eq!(
            Command::parse(" torn-power-loss 42 "),
            Ok(Command::TornPowerLoss { seed: 42 })
        );
        assert_eq!(
            Command::parse("fsync-eio on"),
            Ok(Command::Set {
                fault: Fault::FsyncEio,
                on: true
            })
        );
        assert_eq!(
            Command::parse("disk-full off"),
            Ok(Command::Set {
                fault: Fault::DiskFull,
                on: false
            })
        );
        assert_eq!(Command::parse("status"), Ok(Command::Status));
        assert_eq!(
            Command::parse("free-space 1048576"),
            Ok(Command::FreeSpace(Some(1 << 20)))
        );
        assert_eq!(
            Command::parse("free-space real"),
            Ok(Command::FreeSpace(None))
        );
        assert!(Command::parse("free-space lots").is_err());
        assert!(Command::parse("torn-power-loss").is_err());
        assert!(Command::parse("torn-power-loss -1").is_err());
        assert!(Command::parse("disk-full maybe").is_err());
        assert!(
            Command::parse("meteor")
                .unwrap_err()
                .contains("fsync-eio on|off")
        );
    }

    #[test]
    fn switching_a_fault_reports_what_it_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (_fs, control) = crate::LazyFs::new(&crate::Config {
            source: dir.path().to_path_buf(),
            unsynced_bytes_max: 1 << 20,
        })
        .unwrap();
        let controller = Controller::new(control);
        assert_eq!(controller.handle_line("fsync-eio on"), "ok fsync-eio on");
        assert_eq!(
            controller.handle_line("fsync-eio on"),
            "ok fsync-eio on (it already was)"
        );
        assert!(
            controller
                .handle_line("status")
                .starts_with("ok status: fsync-eio on (0 failed calls), disk-full off"),
        );
        assert_eq!(
            controller.handle_line("fsync-eio off"),
            "ok fsync-eio off; it failed 0 calls"
        );
        assert_eq!(
            controller.handle_line("power-loss"),
            "ok power loss 1: dropped 0 unsynced bytes in 0 files"
        );
        assert!(
            controller
                .handle_line("torn-power-loss 7")
                .starts_with("ok torn power loss 2 (seed 7): kept 0")
        );
        assert_eq!(
            controller.handle_line("free-space 4096"),
            "ok free-space 4096 bytes shown"
        );
        assert!(
            controller
                .handle_line("status")
                .contains("free-space 4096 bytes")
        );
        assert_eq!(
            controller.handle_line("free-space real"),
            "ok free-space real"
        );
        assert!(
            controller
                .handle_line("bogus")
                .starts_with("error unknown command")
        );
    }
}
