//! jepsen-lite: `run` one seeded fault-injection test against a real
//! cluster, or a `campaign` of many. Needs root (network namespaces and
//! nftables).

mod campaign;
mod cluster;
mod host;
mod membership;
mod nemesis;
mod net;
mod phases;
mod plot;
mod proxy;
mod run;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;
// nemesis.rs imports the history as `crate::history`, which resolves here.
use jepsen_lite::history;

/// Exit status: anomalies found.
const EXIT_ANOMALIES: u8 = 1;
/// Exit status: the harness itself failed (setup, cluster never ready).
const EXIT_ERROR: u8 = 2;
const TOKEN: &str = "rst_jepsen-lite-admin-token-0123456789abcdef";

#[derive(Parser, Debug)]
#[command(about = "Fault-injection tests of a real Raftstream cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct RunArgs {
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seconds of workload under faults (a recovery phase and the final
    /// reads follow).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults: all, none, kill, pause, partition, loss, clock, power,
    /// latency, wipe, disk, membership, or single names such as kill-leaders,
    /// partition-ring, fsync-eio (comma-separated); two of them joined by +
    /// (partition+kill) are one step with both faults in effect at once.
    #[arg(long, default_value = "all")]
    nemesis: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    binaries: Binaries,
    /// Run the nodes with --no-fsync (acknowledge before fsync): a cluster
    /// this harness must catch losing acknowledged writes to power losses.
    #[arg(long)]
    no_fsync: bool,
}

/// The binaries a run uses and where its directory goes; `run` and
/// `campaign` take the same options.
#[derive(clap::Args, Debug, Clone)]
struct Binaries {
    /// The raftstream-node binary; built with cargo when absent.
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// The lazyfs binary (for the power-loss, torn-write, fsync-eio and
    /// disk-full nemeses); built with cargo when absent and needed.
    #[arg(long)]
    lazyfs_bin: Option<PathBuf>,
    /// Where run directories go.
    #[arg(long, default_value = "target/jepsen-lite")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One seeded run; exit 1 on any anomaly.
    Run(RunArgs),
    /// Many runs over seeds, sizes and nemesis mixes; a table of results.
    Campaign {
        #[arg(long, default_value_t = 12)]
        runs: u64,
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// The first seed; run i uses seed + i.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Nemesis mixes, `;`-separated (each a --nemesis list, composed
        /// words such as partition+kill included); runs cycle through them.
        #[arg(
            long,
            default_value = "kill;pause;partition;loss,partition-one-way;clock,kill-one;all"
        )]
        mixes: String,
        /// Cluster sizes, comma-separated; runs cycle through them.
        #[arg(long, default_value = "3,5")]
        sizes: String,
        #[command(flatten)]
        binaries: Binaries,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Campaign {
            runs,
            time_limit,
            seed,
            mixes,
            sizes,
            binaries,
        } => campaign::campaign(runs, time_limit, seed, &mixes, &sizes, binaries),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jepsen-lite: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
