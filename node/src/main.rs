//! `raftstream-node`: run a cluster node, or a single-node dev cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;
use raftstream_node::config::ConfigLayers;
use raftstream_node::config::NodeConfig;
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
        #[command(flatten)]
        settings: Settings,
    },
    /// Runs one node of a cluster. Settings merge, lowest precedence first: the
    /// defaults, `--config` (TOML, see deploy/node1.toml), `RAFTSTREAM_*` environment
    /// variables (`RAFTSTREAM_NODE_ID`, `RAFTSTREAM_LIMITS__WRITE_TIMEOUT_MS`), the flags,
    /// then `--set`.
    ///
    /// Example: raftstream-node run --node-id 1 --grpc-addr 127.0.0.1:50051 --http-addr 127.0.0.1:8081
    ///          --peer-addr 127.0.0.1:50061 --data-dir data/1
    ///          --peers 1=127.0.0.1:50061,2=127.0.0.1:50062,3=127.0.0.1:50063
    Run {
        /// A TOML file with any of the settings; flags and the environment override it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        node_id: Option<u64>,
        /// Every node, this one included, at its peer listener: id=host:port,...
        /// (default: this node alone).
        #[arg(long)]
        peers: Option<String>,
        /// Join a running cluster (which --peers names) as a new, empty
        /// node instead of forming one; an admin then adds it with
        /// `raftstream cluster add-node`.
        #[arg(long)]
        join: bool,
        /// Acknowledge after the OS write instead of after fsync (unsafe on power loss).
        #[arg(long)]
        no_fsync: bool,
        /// The cluster CA (PEM): peers must present a certificate it signed.
        #[arg(long)]
        peer_tls_ca: Option<PathBuf>,
        /// This node's certificate (PEM), signed by the cluster CA.
        #[arg(long)]
        peer_tls_cert: Option<PathBuf>,
        /// The key of --peer-tls-cert (PEM).
        #[arg(long)]
        peer_tls_key: Option<PathBuf>,
        /// The name peers' certificates must carry, when the peer addresses
        /// name hosts the certificates do not (raftstream-node certs adds
        /// `raftstream-node` to every node certificate).
        #[arg(long)]
        peer_tls_server_name: Option<String>,
        /// Serve the peer listener without TLS on a non-loopback address
        /// (only on a network no one but the cluster's nodes can reach).
        #[arg(long)]
        insecure_peers: bool,
        #[command(flatten)]
        settings: Settings,
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

/// Settings both `dev` and `run` take. A flag left out leaves the setting
/// to the layers below it (environment, file, defaults).
#[derive(clap::Args, Debug)]
struct Settings {
    /// [default: data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The public gRPC listener (client API, webhook ingestion) [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// The HTTP gateway [default: 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// The peer listener (Raft, forwarded calls), for other nodes only
    /// [default: 127.0.0.1:50061].
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// The gRPC address clients are told to use for this node, when not
    /// --grpc-addr (NAT, a load balancer, a container port, 0.0.0.0).
    #[arg(long)]
    advertise_grpc: Option<String>,
    /// The HTTP address the API documents name, when not --http-addr.
    #[arg(long)]
    advertise_http: Option<String>,
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
    /// Any setting by its key, for those without a flag of their own:
    /// `--set limits.write_timeout_ms=5000` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// The defaults of `dev` and `run`: one node on loopback, data in ./data.
fn defaults(node_id: Option<u64>) -> serde_json::Value {
    let mut defaults = serde_json::json!({
        "grpc_addr": "127.0.0.1:50051",
        "http_addr": "127.0.0.1:8080",
        "peer_addr": "127.0.0.1:50061",
        "data_dir": "data",
    });
    if let Some(id) = node_id {
        defaults["node_id"] = id.into();
    }
    defaults
}

impl Settings {
    /// The flags given, as configuration keys; `flags` holds the others the
    /// command has.
    fn into_layers(
        self,
        defaults: serde_json::Value,
        file: Option<PathBuf>,
        mut flags: serde_json::Map<String, serde_json::Value>,
    ) -> ConfigLayers {
        let mut set = |key: &str, value: Option<serde_json::Value>| {
            if let Some(value) = value {
                flags.insert(key.to_string(), value);
            }
        };
        let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string().into());
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string().into());
        set("data_dir", path(self.data_dir));
        set("grpc_addr", addr(self.grpc_addr));
        set("http_addr", addr(self.http_addr));
        set("peer_addr", addr(self.peer_addr));
        set("advertise_grpc_addr", self.advertise_grpc.map(Into::into));
        set("advertise_http_addr", self.advertise_http.map(Into::into));
        if let Some(cert) = self.tls_cert {
            set(
                "client_tls",
                Some(serde_json::json!({
                    "cert": cert,
                    "key": self.tls_key,
                    "client_ca": self.tls_client_ca,
                })),
            );
        }
        ConfigLayers {
            defaults,
            file,
            flags: flags.into(),
            sets: self.sets,
        }
    }
}

fn config_from(cmd: Cmd) -> anyhow::Result<NodeConfig> {
    let layers = match cmd {
        Cmd::Dev { settings } => {
            settings.into_layers(defaults(Some(1)), None, serde_json::Map::new())
        }
        Cmd::Run {
            config,
            node_id,
            peers,
            join,
            no_fsync,
            peer_tls_ca,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_server_name,
            insecure_peers,
            settings,
        } => {
            let mut flags = serde_json::Map::new();
            if let Some(id) = node_id {
                flags.insert("node_id".into(), id.into());
            }
            if let Some(peers) = peers {
                flags.insert("peers".into(), peers.into());
            }
            if join {
                flags.insert("join".into(), true.into());
            }
            if no_fsync {
                flags.insert("fsync".into(), false.into());
            }
            if insecure_peers {
                flags.insert("insecure_peers".into(), true.into());
            }
            match (peer_tls_ca, peer_tls_cert, peer_tls_key) {
                (Some(ca), Some(cert), Some(key)) => {
                    flags.insert(
                        "peer_tls".into(),
                        serde_json::json!({
                            "ca": ca,
                            "cert": cert,
                            "key": key,
                            "server_name": peer_tls_server_name,
                        }),
                    );
                }
                (None, None, None) => {}
                _ => anyhow::bail!("--peer-tls-ca, --peer-tls-cert and --peer-tls-key go together"),
            }
            settings.into_layers(defaults(None), config, flags)
        }
        Cmd::Certs { .. } => anyhow::bail!("certs runs no node"),
    };
    let config = layers.load().map_err(anyhow::Error::msg)?;
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
        // The node's own task logs why and then starts stopping; wait for
        // that, or on a busy machine the exit could come before the task
        // ran and the one line saying why would be missing.
        let mut stopping = running.node.shutdown_signal();
        let _ = tokio::time::timeout(STOP_AFTER_FAILURE, async {
            let _ = stopping.wait_for(|stopping| *stopping).await;
            running.shutdown().await;
        })
        .await;
        std::process::exit(EXIT_STORAGE_FAILED);
    }
    tracing::info!("shutting down: handing off leadership first");
    running.shutdown().await;
    Ok(())
}
