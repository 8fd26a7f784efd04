//! `raftstream-node`: run a cluster node, or a single-node dev cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use raftstream_node::config::ClientTls;
use raftstream_node::config::NodeConfig;
use raftstream_node::config::PeerTls;
use raftstream_node::config::parse_peers;
use raftstream_node::server::RunningNode;
use raftstream_node::tls::write_dev_certs;

#[derive(Parser, Debug)]
#[command(name = "raftstream-node", version, about = "A Raftstream cluster node")]
struct Cli {
    /// How log lines are written (to stderr): `text` for people, `json`
    /// (one object per line) for log collectors. Colours only on a terminal.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "RAFTSTREAM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at `RUST_LOG` (or the default filter) in `format`;
/// stdout is left to what a command prints (`certs`).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // An event's fields sit beside its level and target, so a
        // collector filters on them without reaching into a nested object.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs a single-node cluster: data in ./data, gRPC on 127.0.0.1:50051, HTTP on
    /// 127.0.0.1:8080, the peer listener on 127.0.0.1:50061 (plain: loopback only).
    Dev {
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:50061")]
        peer_addr: SocketAddr,
        #[command(flatten)]
        client_tls: ClientTlsArgs,
    },
    /// Runs one node of a cluster, from flags or a TOML config file.
    ///
    /// Example: raftstream-node run --node-id 1 --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8081
    ///          --peer-addr 127.0.0.1:50061 --data-dir data/1
    ///          --peers 1=127.0.0.1:50061,2=127.0.0.1:50062,3=127.0.0.1:50063
    Run {
        /// A TOML file with every setting (see deploy/node1.toml); flags are then not needed.
        #[arg(long, conflicts_with_all = ["node_id", "peers"])]
        config: Option<PathBuf>,
        #[arg(long)]
        node_id: Option<u64>,
        /// The public gRPC listener (client API, webhook ingestion).
        #[arg(long, default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// The peer listener (Raft, forwarded calls): for other nodes only.
        #[arg(long, default_value = "127.0.0.1:50061")]
        peer_addr: SocketAddr,
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// Every node, this one included, at its peer listener: id=host:port,...
        #[arg(long)]
        peers: Option<String>,
        /// Acknowledge after the OS write instead of after fsync (unsafe on power loss).
        #[arg(long)]
        no_fsync: bool,
        /// The cluster CA (PEM): peers must present a certificate it signed.
        #[arg(long, requires_all = ["peer_tls_cert", "peer_tls_key"])]
        peer_tls_ca: Option<PathBuf>,
        /// This node's certificate (PEM), signed by the cluster CA.
        #[arg(long, requires = "peer_tls_ca")]
        peer_tls_cert: Option<PathBuf>,
        /// The key of --peer-tls-cert (PEM).
        #[arg(long, requires = "peer_tls_ca")]
        peer_tls_key: Option<PathBuf>,
        /// The name peers' certificates must carry, when the peer addresses
        /// name hosts the certificates do not (raftstream-node certs adds
        /// `raftstream-node` to every node certificate).
        #[arg(long, requires = "peer_tls_ca")]
        peer_tls_server_name: Option<String>,
        /// Serve the peer listener without TLS on a non-loopback address
        /// (only on a network no one but the cluster's nodes can reach).
        #[arg(long, conflicts_with = "peer_tls_ca")]
        insecure_peers: bool,
        #[command(flatten)]
        client_tls: ClientTlsArgs,
    },
    /// Writes a development CA, a certificate per node and a client
    /// certificate into a directory (never overwriting a file).
    ///
    /// Example: raftstream-node certs --out certs --nodes 1,2,3 --hosts localhost,127.0.0.1
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Node ids: node-<id>.pem and node-<id>.key are written for each.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        nodes: Vec<u64>,
        /// Host names and IP addresses every node certificate names.
        #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
        hosts: Vec<String>,
    },
}

/// TLS on the public gRPC and HTTP listeners.
#[derive(clap::Args, Debug)]
struct ClientTlsArgs {
    /// The certificate (PEM) the public gRPC and HTTP listeners present;
    /// they serve TLS only when it is given.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Ask clients for a certificate this CA (PEM) signed.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn into_config(self) -> Option<ClientTls> {
        let (cert, key) = (self.tls_cert?, self.tls_key?);
        Some(ClientTls {
            cert,
            key,
            client_ca: self.tls_client_ca,
        })
    }
}

fn config_from(cmd: Cmd) -> anyhow::Result<NodeConfig> {
    let config = match cmd {
        Cmd::Dev {
            data_dir,
            grpc_addr,
            http_addr,
            peer_addr,
            client_tls,
        } => NodeConfig {
            node_id: 1,
            grpc_addr,
            http_addr,
            peer_addr,
            data_dir,
            peers: [(1, peer_addr.to_string())].into(),
            raft: Default::default(),
            limits: Default::default(),
            fsync: true,
            admin_token: None,
            peer_tls: None,
            insecure_peers: false,
            client_tls: client_tls.into_config(),
            link_faults: None,
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
            peer_addr,
            data_dir,
            peers,
            no_fsync,
            peer_tls_ca,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_server_name,
            insecure_peers,
            client_tls,
        } => {
            let node_id = node_id.context("--node-id is required without --config")?;
            let peers = match peers {
                Some(text) => parse_peers(&text).map_err(anyhow::Error::msg)?,
                None => [(node_id, peer_addr.to_string())].into(),
            };
            let peer_tls = match (peer_tls_ca, peer_tls_cert, peer_tls_key) {
                (Some(ca), Some(cert), Some(key)) => Some(PeerTls {
                    ca,
                    cert,
                    key,
                    server_name: peer_tls_server_name,
                }),
                _ => None,
            };
            NodeConfig {
                node_id,
                grpc_addr,
                http_addr,
                peer_addr,
                data_dir,
                peers,
                raft: Default::default(),
                limits: Default::default(),
                fsync: !no_fsync,
                admin_token: None,
                peer_tls,
                insecure_peers,
                client_tls: client_tls.into_config(),
                link_faults: None,
            }
        }
        Cmd::Certs { .. } => anyhow::bail!("certs runs no node"),
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

/// The exit status after a failed write or fsync (sysexits' EX_IOERR), so a
/// supervisor restarts the node and recovery replays what was fsynced.
const EXIT_STORAGE_FAILED: i32 = 74;
/// How long a node whose storage failed waits for its listeners to close.
const STOP_AFTER_FAILURE: std::time::Duration = std::time::Duration::from_secs(10);

/// openraft warns of every failed heartbeat: one per group, follower and
/// interval, which with a peer down or busy and 1,000 groups is thousands of
/// lines a second saying only that the peer is slow. Replication errors
/// still show at warn.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let command = cli.command;
    if let Cmd::Certs { out, nodes, hosts } = &command {
        let written = write_dev_certs(out, nodes, hosts)?;
        println!("CA: {}", written.ca.display());
        for (id, cert, key) in &written.nodes {
            println!("node {id}: {} {}", cert.display(), key.display());
        }
        println!(
            "client: {} {}",
            written.client.0.display(),
            written.client.1.display()
        );
        return Ok(());
    }
    let config = config_from(command)?;
    let running = RunningNode::start(config)
        .await
        .context("starting the node")?;
    let storage_failed = tokio::select! {
        _ = shutdown_requested() => false,
        // The node has logged why and stopped its groups.
        _ = running.node.failed() => true,
    };
    if storage_failed {
        let _ = tokio::time::timeout(STOP_AFTER_FAILURE, running.shutdown()).await;
        std::process::exit(EXIT_STORAGE_FAILED);
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
