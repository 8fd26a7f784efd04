//! Node configuration, merged from layers (lowest precedence first): the
//! built-in defaults, a TOML file, `RAFTSTREAM_*` environment variables,
//! and command-line flags (named ones, then `--set key=value`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::model::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where the public gRPC server (client API, webhook ingestion) listens.
    pub grpc_addr: SocketAddr,
    /// Where the HTTP gateway listens.
    pub http_addr: SocketAddr,
    /// Where the peer listener (Raft transport, node heartbeats, calls
    /// forwarded by other nodes) listens. Only other nodes should reach it:
    /// see `peer_tls`.
    pub peer_addr: SocketAddr,
    /// The public gRPC address clients are told to use for this node (in
    /// `ClusterStatus`), when it is not `grpc_addr`: behind NAT, a load
    /// balancer or a container port mapping, or when binding `0.0.0.0`.
    #[serde(default)]
    pub advertise_grpc_addr: Option<String>,
    /// The HTTP address the API documents name (`/asyncapi.yaml`'s host),
    /// when it is not `http_addr`.
    #[serde(default)]
    pub advertise_http_addr: Option<String>,
    pub data_dir: PathBuf,
    /// Every node of the cluster, this one included: node id → the address
    /// other nodes reach its peer listener at.
    /// As a table, or as `id=host:port,...` (an environment variable or
    /// `--peers`). When absent, the node alone: its id at `peer_addr`.
    #[serde(
        default,
        serialize_with = "peers_to_strings",
        deserialize_with = "peers_from_strings"
    )]
    pub peers: BTreeMap<NodeId, String>,
    /// Join a running cluster instead of forming one: the node never writes
    /// a group's first membership, and waits (empty) until an admin adds it
    /// (`raftstream cluster add-node`). `peers` then names this node and
    /// some nodes of the cluster. Once the node belongs to the cluster, the
    /// metadata group's membership, not `peers`, says where the nodes are.
    #[serde(default)]
    pub join: bool,
    #[serde(default)]
    pub raft: RaftTimings,
    #[serde(default)]
    pub limits: Limits,
    /// Acknowledge publishes only after an fsync (the default). `false`
    /// acknowledges after the write reaches the OS, so a power loss on a
    /// majority can lose acknowledged messages. See ARCHITECTURE.md.
    #[serde(default = "default_true")]
    pub fsync: bool,
    /// The secret of the cluster's first admin token; generated (and
    /// written to `admin-token` in the data directory) when absent.
    /// `RAFTSTREAM_ADMIN_TOKEN` sets it too.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// Mutual TLS between nodes. Without it the peer listener is plain and
    /// unauthenticated, which `validate` allows only on loopback or with
    /// `insecure_peers`.
    #[serde(default)]
    pub peer_tls: Option<PeerTls>,
    /// Serve the peer listener without TLS on a non-loopback address.
    #[serde(default)]
    pub insecure_peers: bool,
    /// TLS on the public gRPC and HTTP listeners.
    #[serde(default)]
    pub client_tls: Option<ClientTls>,
    /// Publish platform events (what the cluster did: `platform.activity`,
    /// `platform.executions`, `platform.errors`; see `platform.rs`).
    #[serde(default = "default_true")]
    pub platform_events: bool,
    /// Faults on the links to this node, for clusters that tests run in
    /// one process (`link_faults.rs`); never read from a file.
    #[serde(skip)]
    pub link_faults: Option<std::sync::Arc<crate::link_faults::LinkFaults>>,
    /// This node's failpoints, for clusters that tests run in one process
    /// (`failpoints.rs`); never read from a file.
    #[serde(skip)]
    pub failpoints: Option<std::sync::Arc<crate::failpoints::Failpoints>>,
}

/// The files of a node's peer identity: every node presents a certificate
/// its cluster CA signed, and accepts only peers that do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTls {
    /// PEM of the cluster CA.
    pub ca: PathBuf,
    /// PEM of this node's certificate (chain), signed by the cluster CA.
    pub cert: PathBuf,
    /// PEM of the certificate's private key.
    pub key: PathBuf,
    /// The name a peer's certificate must carry. When absent, the host of
    /// the peer's address. `raftstream-node certs` puts `raftstream-node`
    /// in every node certificate, for addresses that name no host of the
    /// certificate (proxies, NAT).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The public listeners' TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// PEM of the certificate (chain) the listeners present.
    pub cert: PathBuf,
    /// PEM of its private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// TOML table keys are strings; node ids are numbers. A string is the
/// `id=host:port,...` form of `--peers`.
fn peers_from_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<NodeId, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Peers {
        Listed(String),
        Table(BTreeMap<String, String>),
    }
    let raw = match Peers::deserialize(d)? {
        Peers::Listed(text) => return parse_peers(&text).map_err(serde::de::Error::custom),
        Peers::Table(table) => table,
    };
    raw.into_iter()
        .map(|(id, addr)| {
            let id = id
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("peer id {id:?} is not a number")))?;
            Ok((id, addr))
        })
        .collect()
}

fn peers_to_strings<S: serde::Serializer>(
    peers: &BTreeMap<NodeId, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let raw: BTreeMap<String, &String> = peers
        .iter()
        .map(|(id, addr)| (id.to_string(), addr))
        .collect();
    raw.serialize(s)
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A partition group whose leader's log has not grown for this long
    /// stops ticking on every replica, and one heartbeat per peer node
    /// stands in for its own (see `raft::quiesce`). 0 keeps every group
    /// ticking.
    pub quiesce_after_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            // openraft lets a follower elect only after the leader's lease
            // (election_timeout_max) plus a random election timeout have
            // passed without a heartbeat: 1.2-1.6 s with these, so a leader
            // crash costs well under the 2 s failover target.
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            quiesce_after_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest message value + key + headers a publish accepts.
    pub max_message_bytes: usize,
    /// The largest sum of messages one batch publish accepts.
    pub max_batch_bytes: usize,
    /// The largest body of an HTTP batch publish (`{"payloads": [...]}`):
    /// room for 100 payloads of 1 MiB and the JSON around them. The
    /// gateway stores such a batch in pieces of at most `max_batch_bytes`.
    pub max_http_batch_bytes: usize,
    /// How long a publish waits for its commit before reporting an unknown
    /// outcome.
    pub write_timeout_ms: u64,
    /// How often leaders check retention.
    pub retention_interval_ms: u64,
    /// Requests per second one HTTP token may make; unlimited when absent.
    pub rate_limit_per_sec: Option<u32>,
    /// The largest gRPC request the public listener decodes; a larger one
    /// is refused (RESOURCE_EXHAUSTED) before it is read into memory.
    pub max_request_bytes: usize,
    /// The most bytes of keys, values and headers one read returns (a
    /// consume, a long poll, one step of a subscription).
    pub max_read_bytes: usize,
    /// Long polls (consumes that wait) parked on this node at once; more
    /// are refused with RESOURCE_EXHAUSTED / HTTP 429.
    pub max_long_polls: usize,
    /// Open Subscribe streams on this node at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    pub max_subscriptions: usize,
    /// Concurrent calls (HTTP/2 streams) one client connection may have.
    pub max_streams_per_connection: u32,
    /// The longest a public gRPC call may take to be answered (a stream's
    /// messages are not bounded, only its start). Longer than any long poll.
    pub request_timeout_ms: u64,
    /// Publishes and webhook deliveries are refused (RESOURCE_EXHAUSTED,
    /// HTTP 507) while the data directory's file system has less free than
    /// this, so the disk never fills: a node whose disk is full stops.
    /// Metadata changes still go through, so topics can be deleted or their
    /// retention shortened to free space.
    pub min_free_disk_bytes: u64,
    /// A leader expires messages by age only while its wall clock is within
    /// this of the clocks of a majority of the partition's replicas, so a
    /// clock that jumped ahead purges nothing (see `clock.rs`).
    pub max_clock_offset_ms: u64,
}

impl Limits {
    /// How long a call forwarded to another node may take: the write
    /// timeout there, and a margin for the hop, so that the other node
    /// answers an unknown outcome before the forward gives up on it.
    pub fn forward_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.write_timeout_ms + 2_000)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            max_batch_bytes: 4 * 1024 * 1024,
            max_http_batch_bytes: 101 * 1024 * 1024,
            write_timeout_ms: 10_000,
            retention_interval_ms: 5_000,
            rate_limit_per_sec: None,
            max_request_bytes: 8 * 1024 * 1024,
            max_read_bytes: 4 * 1024 * 1024,
            max_long_polls: 4096,
            max_subscriptions: 1024,
            max_streams_per_connection: 1024,
            request_timeout_ms: 120_000,
            min_free_disk_bytes: 512 * 1024 * 1024,
            max_clock_offset_ms: 5_000,
        }
    }
}

/// What a publish request carries besides its records' bytes (record
/// framing, topic, producer ids), at most.
pub const REQUEST_FRAMING_BYTES: usize = 256 * 1024;

/// Messages between nodes may carry a whole publish batch.
pub const MAX_RPC_BYTES: usize = 256 * 1024 * 1024;

/// How many messages a consume returns when the request names no maximum.
pub const DEFAULT_MAX_MESSAGES: u32 = 100;
/// The most messages one consume returns, whatever the request asks for.
pub const MAX_MESSAGES: u32 = 10_000;
/// The longest a consume may wait for messages (a long poll).
pub const MAX_WAIT_MS: u32 = 60_000;

/// Parses `1=127.0.0.1:50051,2=127.0.0.1:50052`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("peer {item:?} is not id=host:port"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(format!("peer address {addr:?} is not host:port"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer id {id} appears twice"));
        }
    }
    Ok(peers)
}

/// Environment variables name a key after this prefix, with `__` between
/// the keys of a nested table: `RAFTSTREAM_NODE_ID`,
/// `RAFTSTREAM_LIMITS__WRITE_TIMEOUT_MS`, `RAFTSTREAM_PEER_TLS__CA`.
pub const ENV_PREFIX: &str = "RAFTSTREAM_";

/// Every top-level key of [`NodeConfig`]. Only these are read from the
/// environment: other `RAFTSTREAM_*` variables belong to other tools (the
/// CLI's `RAFTSTREAM_TOKEN`, `RAFTSTREAM_ADDR`) and must not fail a start.
pub const CONFIG_KEYS: &[&str] = &[
    "node_id",
    "grpc_addr",
    "http_addr",
    "peer_addr",
    "advertise_grpc_addr",
    "advertise_http_addr",
    "data_dir",
    "peers",
    "join",
    "raft",
    "limits",
    "fsync",
    "admin_token",
    "peer_tls",
    "insecure_peers",
    "client_tls",
    "platform_events",
];

/// The layers a node's configuration is merged from, lowest precedence
/// first: `defaults`, the TOML `file`, the `RAFTSTREAM_*` environment,
/// `flags`, then `sets`. A key any layer leaves out keeps the value of the
/// layer below.
#[derive(Debug, Clone, Default)]
pub struct ConfigLayers {
    /// What the command defaults to: its addresses, its data directory.
    pub defaults: serde_json::Value,
    /// `--config`: a TOML file.
    pub file: Option<PathBuf>,
    /// The named flags given on the command line, as keys (absent when not
    /// given, so that they do not hide the file or the environment).
    pub flags: serde_json::Value,
    /// `--set key.path=value`, for keys without a flag of their own. The
    /// value is read as TOML (`5000`, `true`, `"text"`), else as a string.
    pub sets: Vec<String>,
}

impl ConfigLayers {
    /// Merges the layers with this process's environment.
    pub fn load(&self) -> Result<NodeConfig, String> {
        let env = figment::providers::Env::prefixed(ENV_PREFIX)
            .filter(|key| {
                let top = key.as_str().split("__").next().unwrap_or_default();
                CONFIG_KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
            })
            .split("__");
        self.load_with(env)
    }

    fn load_with(&self, env: impl figment::Provider) -> Result<NodeConfig, String> {
        use figment::providers::Format;
        use figment::providers::Serialized;
        use figment::providers::Toml;
        let mut figment = figment::Figment::from(Serialized::defaults(&self.defaults));
        if let Some(path) = &self.file {
            if !path.is_file() {
                return Err(format!("the config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(env).merge(Serialized::defaults(&self.flags));
        for set in &self.sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| format!("--set {set:?} is not key=value"))?;
            let top = key.split('.').next().unwrap_or_default();
            if !CONFIG_KEYS.contains(&top) {
                return Err(format!("--set {set:?}: there is no setting {top:?}"));
            }
            figment = figment.merge(Serialized::default(key.trim(), toml_value(value)));
        }
        let mut config: NodeConfig = figment.extract().map_err(|e| e.to_string())?;
        // `RAFTSTREAM_ADMIN_TOKEN=` (set but empty) asks for a generated one.
        if config.admin_token.as_deref() == Some("") {
            config.admin_token = None;
        }
        if config.peers.is_empty() {
            config
                .peers
                .insert(config.node_id, config.peer_addr.to_string());
        }
        Ok(config)
    }
}

/// `value` as TOML (a number, a boolean, a quoted string, an array), or
/// the text itself when it does not parse.
fn toml_value(value: &str) -> toml::Value {
    let value = value.trim();
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

impl NodeConfig {
    /// The gRPC address clients are given for this node.
    pub fn client_grpc_addr(&self) -> String {
        self.advertise_grpc_addr
            .clone()
            .unwrap_or_else(|| self.grpc_addr.to_string())
    }

    /// The HTTP address the API documents give for this node.
    pub fn client_http_addr(&self) -> String {
        self.advertise_http_addr
            .clone()
            .unwrap_or_else(|| self.http_addr.to_string())
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.peers.contains_key(&self.node_id) {
            return Err(format!(
                "peers do not include this node's id {}",
                self.node_id
            ));
        }
        let t = &self.raft;
        if t.heartbeat_ms == 0 || t.election_timeout_min_ms <= t.heartbeat_ms * 2 {
            return Err("election_timeout_min_ms must exceed twice heartbeat_ms".into());
        }
        if t.election_timeout_max_ms <= t.election_timeout_min_ms {
            return Err("election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if self.peer_tls.is_none() && !self.insecure_peers && !self.peer_addr.ip().is_loopback() {
            return Err(format!(
                "the peer listener {} is not on loopback: give it mutual TLS ([peer_tls], \
                 --peer-tls-*) or, on a network only cluster nodes reach, set insecure_peers",
                self.peer_addr
            ));
        }
        let l = &self.limits;
        if l.max_batch_bytes + REQUEST_FRAMING_BYTES > l.max_request_bytes {
            return Err(format!(
                "max_batch_bytes ({}) must leave {REQUEST_FRAMING_BYTES} bytes of max_request_bytes \
                 ({}) for the request's framing",
                l.max_batch_bytes, l.max_request_bytes
            ));
        }
        if l.max_request_bytes > MAX_RPC_BYTES {
            return Err(format!(
                "max_request_bytes must not exceed {MAX_RPC_BYTES} bytes, the largest message \
                 between nodes"
            ));
        }
        if l.max_http_batch_bytes < l.max_message_bytes {
            return Err("max_http_batch_bytes must not be less than max_message_bytes".into());
        }
        if l.max_message_bytes > l.max_batch_bytes {
            return Err("max_message_bytes must not exceed max_batch_bytes".into());
        }
        if l.max_read_bytes == 0 || l.max_long_polls == 0 || l.max_subscriptions == 0 {
            return Err(
                "max_read_bytes, max_long_polls and max_subscriptions must be positive".into(),
            );
        }
        if l.request_timeout_ms <= u64::from(MAX_WAIT_MS) + l.write_timeout_ms {
            return Err(format!(
                "request_timeout_ms must exceed the longest long poll ({MAX_WAIT_MS} ms) plus \
                 write_timeout_ms"
            ));
        }
        for (listener, addr) in [("grpc_addr", self.grpc_addr), ("http_addr", self.http_addr)] {
            if addr == self.peer_addr && addr.port() != 0 {
                return Err(format!(
                    "{listener} and peer_addr are both {addr}: the peer listener needs its own port"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's test jail returns its own (large) error type.
#[allow(clippy::unwrap_used, clippy::result_large_err)]
mod tests {
    use super::*;

    fn layers(file: Option<PathBuf>, flags: serde_json::Value, sets: &[&str]) -> ConfigLayers {
        ConfigLayers {
            defaults: serde_json::json!({
                "grpc_addr": "127.0.0.1:50051",
                "http_addr": "127.0.0.1:8080",
                "peer_addr": "127.0.0.1:50061",
                "data_dir": "data",
            }),
            file,
            flags,
            sets: sets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn layers_merge_defaults_file_environment_flags_then_sets() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                r#"
                node_id = 2
                grpc_addr = "127.0.0.1:1001"
                http_addr = "127.0.0.1:1002"
                [limits]
                write_timeout_ms = 1000
                request_timeout_ms = 90000
                "#,
            )?;
            jail.set_env("RAFTSTREAM_GRPC_ADDR", "127.0.0.1:2001");
            jail.set_env("RAFTSTREAM_LIMITS__WRITE_TIMEOUT_MS", "2000");
            jail.set_env("RAFTSTREAM_PEERS", "2=127.0.0.1:50061,3=127.0.0.1:3003");
            let flags = serde_json::json!({ "http_addr": "127.0.0.1:3002" });
            let config = layers(
                Some("node.toml".into()),
                flags,
                &["limits.max_long_polls=7"],
            )
            .load()
            .map_err(figment::Error::from)?;
            // The file's node id and timeout under the environment's.
            assert_eq!(config.node_id, NodeId(2));
            assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:2001");
            assert_eq!(config.limits.write_timeout_ms, 2000);
            assert_eq!(config.limits.request_timeout_ms, 90_000);
            // The flag over the file; --set for a key without a flag.
            assert_eq!(config.http_addr.to_string(), "127.0.0.1:3002");
            assert_eq!(config.limits.max_long_polls, 7);
            // Defaults where no layer says anything.
            assert_eq!(config.data_dir, PathBuf::from("data"));
            assert_eq!(config.peers.len(), 2);
            config.validate().map_err(figment::Error::from)?;

            // --set wins over everything.
            let config = layers(
                Some("node.toml".into()),
                serde_json::json!({}),
                &["limits.write_timeout_ms=3000", "grpc_addr=127.0.0.1:4001"],
            )
            .load()
            .map_err(figment::Error::from)?;
            assert_eq!(config.limits.write_timeout_ms, 3000);
            assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:4001");
            Ok(())
        });
    }

    #[test]
    fn other_tools_variables_are_ignored_and_an_empty_admin_token_is_none() {
        figment::Jail::expect_with(|jail| {
            // The CLI's variables, in the same shell as the node.
            jail.set_env("RAFTSTREAM_TOKEN", "rst_x");
            jail.set_env("RAFTSTREAM_ADDR", "127.0.0.1:1");
            jail.set_env("RAFTSTREAM_LOG_FORMAT", "json");
            jail.set_env("RAFTSTREAM_ADMIN_TOKEN", "");
            let config = layers(None, serde_json::json!({ "node_id": 5 }), &[])
                .load()
                .map_err(figment::Error::from)?;
            assert_eq!(config.admin_token, None);
            // Alone, without --peers: itself at its peer address.
            assert_eq!(
                config.peers,
                BTreeMap::from([(NodeId(5), "127.0.0.1:50061".to_string())])
            );
            jail.set_env("RAFTSTREAM_ADMIN_TOKEN", "rst_chosen");
            let config = layers(None, serde_json::json!({ "node_id": 5 }), &[])
                .load()
                .map_err(figment::Error::from)?;
            assert_eq!(config.admin_token.as_deref(), Some("rst_chosen"));
            Ok(())
        });
    }

    #[test]
    fn bad_layers_are_refused_with_the_key_they_name() {
        figment::Jail::expect_with(|jail| {
            let node = serde_json::json!({ "node_id": 1 });
            let unknown = layers(None, node.clone(), &["limits.nope=1"]).load();
            assert!(unknown.unwrap_err().contains("nope"));
            let no_such_setting = layers(None, node.clone(), &["nope=1"]).load();
            assert!(no_such_setting.unwrap_err().contains("nope"));
            let not_key_value = layers(None, node.clone(), &["limits"]).load();
            assert!(not_key_value.unwrap_err().contains("key=value"));
            let missing_file = layers(Some("absent.toml".into()), node.clone(), &[]).load();
            assert!(missing_file.unwrap_err().contains("absent.toml"));
            jail.set_env("RAFTSTREAM_LIMITS__WRITE_TIMEOUT_MS", "soon");
            let wrong_type = layers(None, node.clone(), &[]).load().unwrap_err();
            let named = wrong_type.to_ascii_lowercase().contains("write_timeout_ms");
            assert!(named, "{wrong_type}");
            Ok(())
        });
    }

    #[test]
    fn config_keys_are_exactly_the_settings() {
        let config = layers(None, serde_json::json!({ "node_id": 1 }), &[])
            .load_with(figment::providers::Serialized::defaults(serde_json::json!(
                {}
            )))
            .unwrap();
        let serialized = serde_json::to_value(&config).unwrap();
        let mut keys: Vec<&str> = serialized
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed = CONFIG_KEYS.to_vec();
        keys.sort_unstable();
        listed.sort_unstable();
        assert_eq!(keys, listed);
    }

    #[test]
    fn set_values_are_read_as_toml_else_as_text() {
        assert_eq!(toml_value("5000"), toml::Value::Integer(5000));
        assert_eq!(toml_value("true"), toml::Value::Boolean(true));
        assert_eq!(toml_value("\"a b\""), toml::Value::String("a b".into()));
        assert_eq!(toml_value("data/1"), toml::Value::String("data/1".into()));
    }

    #[test]
    fn peers_parse_and_reject_bad_input() {
        let peers = parse_peers("1=127.0.0.1:1, 2=localhost:2").unwrap();
        assert_eq!(peers[&NodeId(2)], "localhost:2");
        for bad in ["1", "x=a:1", "1=a", "1=a:b", "1=a:1,1=b:2"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_config_round_trips_with_defaults() {
        let text = r#"
            node_id = 2
            grpc_addr = "127.0.0.1:50052"
            http_addr = "127.0.0.1:8082"
            peer_addr = "127.0.0.1:50062"
            data_dir = "data/2"
            [peers]
            1 = "127.0.0.1:50061"
            2 = "127.0.0.1:50062"
        "#;
        let config: NodeConfig = toml::from_str(text).unwrap();
        assert!(config.fsync);
        assert_eq!(config.limits.max_message_bytes, 1024 * 1024);
        config.validate().unwrap();
    }

    #[test]
    fn a_plain_peer_listener_off_loopback_needs_insecure_peers() {
        let text = r#"
            node_id = 1
            grpc_addr = "0.0.0.0:50051"
            http_addr = "0.0.0.0:8081"
            peer_addr = "10.0.0.1:50061"
            data_dir = "data/1"
            [peers]
            1 = "10.0.0.1:50061"
        "#;
        let mut config: NodeConfig = toml::from_str(text).unwrap();
        let refused = config.validate().unwrap_err();
        assert!(refused.contains("peer_tls"), "{refused}");
        config.insecure_peers = true;
        config.validate().unwrap();
        config.insecure_peers = false;
        config.peer_tls = Some(PeerTls {
            ca: "ca.pem".into(),
            cert: "node-1.pem".into(),
            key: "node-1.key".into(),
            server_name: None,
        });
        config.validate().unwrap();
        config.peer_addr = config.grpc_addr;
        assert!(config.validate().unwrap_err().contains("own port"));
    }

    #[test]
    fn shipped_deploy_config_parses() {
        let config: NodeConfig = toml::from_str(include_str!("../../deploy/node1.toml")).unwrap();
        config.validate().unwrap();
        assert_eq!(config.peers.len(), 3);
    }
}
