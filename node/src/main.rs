//! `raftstream-node`: run a cluster node, or a single-node dev cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use raftstream_node::config::NodeConfig;
use raftstream_node::config::parse_peers;
use raftstream_node::server::RunningNode;

#[derive(Parser, Debug)]
#[command(name = "raftstream-node", version, about = "A Raftstream cluster node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a single-node cluster: data in ./data, gRPC on 127.0.0.1:50051, HTTP on 127.0.0.1:8080.
    Dev {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
    },
    /// Runs one node of a cluster, from flags or a TOML config file.
    ///
    /// Example: raftstream-node run --node-id 1 --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8081
    ///          --data-dir data/1 --peers 1=127.0.0.1:50051,2=127.0.0.1:50052,3=127.0.0.1:50053
    Run {
        /// A TOML file with every setting (see deploy/node1.toml); flags are then not needed.
        #[arg(long, conflicts_with_all = ["node_id", "peers"])]
        config: Option<PathBuf>,
        #[arg(long)]
        node_id: Option<u64>,
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Every node, this one included: id=host:port,...
        #[arg(long)]
        peers: Option<String>,
        /// Acknowledge after the OS write instead of after fsync (unsafe on power loss).
        #[arg(long)]
        no_fsync: bool,
    },
}

fn config_from(cmd: Cmd) -> anyhow::Result<NodeConfig> {
    let config = match cmd {
        Cmd::Dev {
            data_dir,
            grpc_addr,
            http_addr,
        } => NodeConfig {
            node_id: 1,
            grpc_addr,
            http_addr,
            data_dir,
            peers: [(1, grpc_addr.to_string())].into(),
            raft: Default::default(),
            limits: Default::default(),
            fsync: true,
            admin_token: None,
        },
        Cmd::Run {
            config: Some(path), ..
        } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        Cmd::Run {
            config: None,
            node_id,
            grpc_addr,
            http_addr,
            data_dir,
            peers,
            no_fsync,
        } => {
            let node_id = node_id.context("--node-id is required without --config")?;
            let peers = match peers {
                Some(text) => parse_peers(&text).map_err(anyhow::Error::msg)?,
                None => [(node_id, grpc_addr.to_string())].into(),
            };
            NodeConfig {
                node_id,
                grpc_addr,
                http_addr,
                data_dir,
                peers,
                raft: Default::default(),
                limits: Default::default(),
                fsync: !no_fsync,
                admin_token: None,
            }
        }
    };
    let mut config = config;
    if let Ok(token) = std::env::var("RAFTSTREAM_ADMIN_TOKEN")
        && !token.is_empty()
    {
        config.admin_token = Some(token);
    }
    config.validate().map_err(anyhow::Error::msg)?;
    Ok(config)
}

async fn shutdown_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// openraft warns of every failed heartbeat: one per group, follower and
/// interval, which with a peer down or busy and 1,000 groups is thousands of
/// lines a second saying only that the peer is slow. Replication errors
/// still show at warn.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    let config = config_from(Cli::parse().command)?;
    let running = RunningNode::start(config)
        .await
        .context("starting the node")?;
    println!(
        "raftstream node {} serving gRPC on {} and HTTP on {}",
        running.node.id(),
        running.grpc_addr,
        running.http_addr
    );
    shutdown_requested().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
