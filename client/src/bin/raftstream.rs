//! `raftstream`: the command line for Raftstream clusters.

// Beside the crate root, not in src/bin/ where Cargo takes each file for a binary.
#[path = "raftstream/profiles.rs"]
mod profiles;
#[path = "raftstream/subscriptions.rs"]
mod subscriptions;

use std::io::BufRead;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::ArgMatches;
use clap::Args;
use clap::CommandFactory;
use clap::FromArgMatches;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use clap::parser::ValueSource;
use comfy_table::Table;
use futures::StreamExt;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Consumer;
use raftstream_client::IngestedEvent;
use raftstream_client::Position;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_client::pb;
use raftstream_client::rfc3339;
use serde_json::json;

use crate::profiles::Profile;
use crate::profiles::ProfileFile;

const EXAMPLES: &str = "\
Examples:
  raftstream topics create orders --partitions 3
  echo '{\"id\": 1}' | raftstream produce orders
  raftstream produce orders --file events.jsonl --key customer-7
  raftstream consume orders --from-beginning --max 10
  raftstream consume orders --since 1h --json
  raftstream consume orders --group billing --follow
  raftstream cluster status

Connection: --addr / RAFTSTREAM_ADDR (default 127.0.0.1:50051), --token / RAFTSTREAM_TOKEN,
TLS with --tls-ca / RAFTSTREAM_TLS_CA (and --tls-cert, --tls-key when the cluster asks
clients for a certificate). Or save them as a profile (in
$XDG_CONFIG_HOME/raftstream/config.toml, by default ~/.config/raftstream/config.toml):
  raftstream profile create prod --addr 10.0.0.1:50051 --token rst_... --tls-ca ca.pem
  raftstream profile use prod
Flags win over the environment, which wins over the profile (--profile NAME, else the
current one).

Exit status: 0 done, 1 failed, 2 usage error, 3 the token was missing or refused,
4 no node reachable.";

/// Exit statuses, besides 0 and clap's 2 for usage errors.
const EXIT_FAILED: u8 = 1;
const EXIT_AUTH: u8 = 3;
const EXIT_UNREACHABLE: u8 = 4;

#[derive(Parser, Debug)]
#[command(name = "raftstream", version, about = "Work with a Raftstream cluster", after_help = EXAMPLES)]
struct Cli {
    /// Node addresses (host:port, comma separated); any node serves every request.
    #[arg(long, global = true, env = "RAFTSTREAM_ADDR")]
    addr: Option<String>,
    /// API token.
    #[arg(long, global = true, env = "RAFTSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Connect with this profile instead of the current one (see `raftstream profile`).
    #[arg(long, global = true, env = "RAFTSTREAM_PROFILE")]
    profile: Option<String>,
    /// CA certificate (PEM) the nodes' certificates are checked against;
    /// connects over TLS when given.
    #[arg(long, global = true, env = "RAFTSTREAM_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that ask clients for one.
    #[arg(long, global = true, env = "RAFTSTREAM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, global = true, env = "RAFTSTREAM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Machine-readable output: one JSON document, or one JSON object per
    /// line for messages and events.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
    /// Which connection settings this command line gave (not the
    /// environment); set from the parsed arguments.
    #[arg(skip)]
    given: OnCommandLine,
}

/// Which connection settings were flags on this command line rather than
/// environment variables: `profile create` saves only those, and errors
/// name the flag or the variable a token came from.
#[derive(Debug, Default, Clone, Copy)]
struct OnCommandLine {
    addr: bool,
    token: bool,
    tls_ca: bool,
    tls_cert: bool,
    tls_key: bool,
}

impl OnCommandLine {
    fn of(matches: &ArgMatches) -> OnCommandLine {
        OnCommandLine {
            addr: given_on_command_line(matches, "addr"),
            token: given_on_command_line(matches, "token"),
            tls_ca: given_on_command_line(matches, "tls_ca"),
            tls_cert: given_on_command_line(matches, "tls_cert"),
            tls_key: given_on_command_line(matches, "tls_key"),
        }
    }
}

/// Whether global argument `id` was a flag, before the subcommand or
/// after it.
fn given_on_command_line(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
        || matches
            .subcommand()
            .is_some_and(|(_, sub)| given_on_command_line(sub, id))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, describe, update, purge and delete topics.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Publish messages from arguments, stdin lines or a JSONL file.
    #[command(
        after_help = "Examples:\n  raftstream produce orders '{\"id\": 1}' '{\"id\": 2}'\n  cat events.jsonl | raftstream produce orders --key user-1"
    )]
    Produce(ProduceArgs),
    /// Read messages.
    #[command(
        after_help = "Examples:\n  raftstream consume orders --from-beginning --max 100\n  raftstream consume orders --since 1h --json\n  raftstream consume orders --since 2026-11-23T10:00:00Z --output raw\n  raftstream consume orders --group billing --follow"
    )]
    Consume(ConsumeArgs),
    /// Consumer groups: list, show and reset committed offsets.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Cluster state.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Webhook ingestion sources and their events.
    #[command(
        subcommand,
        after_help = "Examples:\n  raftstream ingest create crm-hooks --type workato --topic crm --hmac-secret whsec_0123456789abcdef\n  raftstream ingest tail src_0123abcd --follow"
    )]
    Ingest(IngestCommand),
    /// Push subscriptions: the cluster POSTs a topic's messages, signed, to an endpoint.
    #[command(
        subcommand,
        after_help = "Examples:\n  raftstream subscriptions create billing --topic orders --endpoint https://billing.example/hooks --from-beginning\n  raftstream subscriptions replay sub_0123abcd --since 2h"
    )]
    Subscriptions(subscriptions::SubscriptionsCommand),
    /// Saved connections: create, use, list and delete profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum ProfileCommand {
    /// Save --addr, --token and --tls-ca (--tls-cert, --tls-key) as profile NAME.
    #[command(
        after_help = "Only flags on this command line are saved, not RAFTSTREAM_* variables. \
                      The first profile becomes the current one.\n\nExample:\n  \
                      raftstream profile create prod --addr 10.0.0.1:50051,10.0.0.2:50051 --token rst_... --tls-ca ca.pem"
    )]
    Create {
        name: String,
        /// Replace a profile of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Connect with profile NAME from now on, when --profile is not given.
    Use { name: String },
    /// List the profiles (tokens are not shown).
    List,
    /// Delete profile NAME.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Default: min(3, cluster size).
        #[arg(long)]
        replication_factor: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
        /// A JSON Schema file every published payload must satisfy.
        #[arg(long)]
        schema: Option<PathBuf>,
        #[arg(long)]
        retention_hours: Option<u64>,
        #[arg(long)]
        retention_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Show one topic and its partitions.
    Describe { topic: String },
    /// Change a topic.
    Update {
        topic: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, conflicts_with = "no_schema")]
        schema: Option<PathBuf>,
        /// Remove the topic's schema.
        #[arg(long)]
        no_schema: bool,
        #[arg(long)]
        retention_hours: Option<u64>,
        #[arg(long)]
        retention_bytes: Option<u64>,
    },
    /// Delete every message, keep the topic.
    Purge {
        topic: String,
        #[arg(long)]
        partition: Option<u32>,
    },
    /// Delete the topic and its messages.
    Delete { topic: String },
    /// Move a partition to other nodes; the first becomes its preferred
    /// leader. Returns once the move is recorded: `cluster status` shows it
    /// under way until the new replicas caught up.
    #[command(after_help = "Example:\n  raftstream topics move orders 0 --to 2,3,4")]
    Move {
        topic: String,
        partition: u32,
        /// As many distinct node ids as the topic's replication factor,
        /// comma separated.
        #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
        to: Vec<u64>,
    },
}

#[derive(Args, Debug)]
struct ProduceArgs {
    topic: String,
    /// Message values; without them, stdin lines (or --file) are sent.
    values: Vec<String>,
    /// A JSONL file: one message per line.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    partition: Option<u32>,
    /// A header on every message (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

/// `--header name=value`: the name is what comes before the first `=`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Pretty,
    Json,
    Raw,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    topic: String,
    /// One partition; all partitions when absent.
    #[arg(long)]
    partition: Option<u32>,
    #[arg(long, conflicts_with_all = ["after", "since", "latest"])]
    from_offset: Option<u64>,
    /// Start after this message id.
    #[arg(long, conflicts_with_all = ["since", "latest"])]
    after: Option<String>,
    /// Start at the first message at or after this time: a duration ago
    /// (`90s`, `15m`, `1h`, `2d 12h`), an RFC 3339 time, or milliseconds
    /// since the epoch.
    #[arg(long, conflicts_with = "latest")]
    since: Option<String>,
    /// Start at the oldest message (the default without --group).
    #[arg(long)]
    from_beginning: bool,
    /// Start after the newest message.
    #[arg(long)]
    latest: bool,
    /// Keep reading new messages until interrupted.
    #[arg(long)]
    follow: bool,
    /// Resume from and commit to this consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many messages.
    #[arg(long)]
    max: Option<u64>,
    /// pretty (the default), json (as --json: one object per line) or raw
    /// (the values only).
    #[arg(long, value_enum)]
    output: Option<Output>,
}

#[derive(Subcommand, Debug)]
enum GroupsCommand {
    /// Groups with committed offsets on a topic.
    List { topic: String },
    /// A group's committed offsets.
    Offsets { topic: String, group: String },
    /// Move a group's committed offsets.
    Reset {
        topic: String,
        group: String,
        #[arg(long, required_unless_present_any = ["to_earliest", "to_latest"])]
        to_offset: Option<u64>,
        #[arg(long)]
        to_earliest: bool,
        #[arg(long)]
        to_latest: bool,
        #[arg(long)]
        partition: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Nodes (replicas, leaders, preferred leaders, voter, draining), how
    /// evenly they are spread, partition moves under way, and every group's
    /// leader, term, commit index and lag.
    Status,
    /// Add a node started empty with --join; returns once it is a voter,
    /// and the balancer then moves replicas onto it.
    #[command(after_help = "Example:\n  raftstream cluster add-node 4 10.0.0.4:7000")]
    AddNode {
        id: u64,
        /// Where the other nodes reach the new node's peer listener (host:port).
        // Not `addr`: that id is the global --addr, which it would shadow.
        #[arg(value_name = "ADDR")]
        peer_addr: String,
    },
    /// Remove a node: its replicas move away first (progress is printed
    /// while they do), then it leaves the cluster.
    #[command(after_help = "Example:\n  raftstream cluster remove-node 3 --timeout 30m")]
    RemoveNode {
        id: u64,
        /// Give up after this long (`90s`, `15m`, `1h`); running the command
        /// again carries on where it was.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Create a token; its secret is shown once.
    Create {
        name: String,
        /// publish, consume or admin (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Limit to these topics (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
    },
    List,
    /// Revoke a token by id.
    Revoke {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum IngestCommand {
    /// Create a source; its secret is shown once.
    Create {
        name: String,
        /// workato (normalised), generic (any JSON) or flow (the request itself).
        #[arg(long = "type", default_value = "generic", value_parser = ["workato", "generic", "flow"])]
        source_type: String,
        /// An existing topic (name or id), or the name of one to create.
        #[arg(long)]
        topic: String,
        /// Require deliveries signed with this secret (X-Workato-Signature over
        /// the timestamp and body); at least 16 bytes.
        #[arg(long)]
        hmac_secret: Option<String>,
        /// Copied into every event's tenantId.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List sources: status, event counts, last event.
    List,
    /// Show one source.
    Get { id: String },
    /// Give a source a new secret; the old one stops working at once.
    Rotate { id: String },
    /// Delete a source; its events stay in the topic.
    Delete { id: String },
    /// Print a source's latest events; --follow keeps printing new ones.
    Tail {
        id: String,
        /// Keep printing new deliveries until interrupted.
        #[arg(long)]
        follow: bool,
        /// How many past events to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
    },
}

/// Where the token a command sends came from, for errors that say which
/// one to fix.
#[derive(Debug, Clone, PartialEq)]
enum TokenOrigin {
    Flag,
    Env,
    Profile(String),
}

impl std::fmt::Display for TokenOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenOrigin::Flag => f.write_str("--token"),
            TokenOrigin::Env => f.write_str("RAFTSTREAM_TOKEN"),
            TokenOrigin::Profile(name) => write!(f, "profile {name:?}"),
        }
    }
}

/// How to reach the cluster: flags, else environment variables (clap
/// merges those two), else the selected profile, else the defaults.
#[derive(Debug)]
struct Connection {
    addr: String,
    token: Option<(String, TokenOrigin)>,
    tls_ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
}

impl Connection {
    fn resolve(cli: &Cli) -> anyhow::Result<Connection> {
        let path = profiles::default_config_path();
        let selected = match &path {
            Ok(path) => ProfileFile::load(path)?.select(cli.profile.as_deref(), path)?,
            Err(_) if cli.profile.is_none() => None,
            Err(e) => bail!("--profile: {e}"),
        };
        let (profile_name, profile) = selected.unwrap_or_default();
        Ok(Connection::merge(cli, &profile_name, profile))
    }

    fn merge(cli: &Cli, profile_name: &str, profile: Profile) -> Connection {
        // An empty variable (RAFTSTREAM_TOKEN=) counts as unset.
        let set = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let token_origin = if cli.given.token {
            TokenOrigin::Flag
        } else {
            TokenOrigin::Env
        };
        let token = set(&cli.token).map(|t| (t, token_origin)).or_else(|| {
            set(&profile.token).map(|t| (t, TokenOrigin::Profile(profile_name.to_string())))
        });
        let identity = match (&cli.tls_cert, &cli.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => profile.tls_cert.zip(profile.tls_key),
        };
        Connection {
            addr: set(&cli.addr)
                .or(profile.addr)
                .unwrap_or_else(|| "127.0.0.1:50051".into()),
            token,
            tls_ca: cli.tls_ca.clone().or(profile.tls_ca),
            identity,
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Ok(Client::connect(client_config(cli)?).await?)
}

fn client_config(cli: &Cli) -> anyhow::Result<ClientConfig> {
    let connection = Connection::resolve(cli)?;
    let seeds = connection
        .addr
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let mut config = ClientConfig::new(seeds);
    if let Some((token, _)) = connection.token {
        config = config.with_token(token);
    }
    if let Some(ca) = &connection.tls_ca {
        let identity = connection
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        config = config.with_tls(raftstream_client::tls_from_files(ca, identity)?);
    }
    Ok(config)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// What a command did: `json` with `--json`, else the line `text`.
fn print_outcome(cli: &Cli, json: &serde_json::Value, text: std::fmt::Arguments) {
    if cli.json {
        print_json(json);
    } else {
        println!("{text}");
    }
}

/// A deleted `what` (a source, a profile, a subscription) named `id`.
fn print_deleted(cli: &Cli, what: &str, id: &str) {
    print_outcome(
        cli,
        &json!({ "deleted": id }),
        format_args!("deleted {what} {id}"),
    );
}

fn topic_json(t: &pb::Topic) -> serde_json::Value {
    let retention = t.retention.unwrap_or_default();
    json!({
        "id": t.id, "name": t.name, "description": t.description, "schema": t.schema,
        "replication_factor": t.replication_factor,
        "retention_ms": retention.retention_ms, "retention_bytes": retention.retention_bytes,
        "partitions": t.partitions.iter().map(|p| json!({"partition": p.partition, "replicas": p.replicas})).collect::<Vec<_>>(),
    })
}

fn read_schema(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

async fn topics(cli: &Cli, command: &TopicsCommand) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    match command {
        TopicsCommand::Create {
            name,
            partitions,
            replication_factor,
            description,
            schema,
            retention_hours,
            retention_bytes,
        } => {
            let topic = client
                .create_topic(pb::CreateTopicRequest {
                    name: name.clone(),
                    description: description.clone(),
                    partitions: *partitions,
                    replication_factor: replication_factor.unwrap_or(0),
                    schema: read_schema(schema)?,
                    retention: Some(pb::RetentionPolicy {
                        retention_ms: retention_hours.unwrap_or(0) * 3_600_000,
                        retention_bytes: retention_bytes.unwrap_or(0),
                    }),
                })
                .await?;
            print_outcome(
                cli,
                &topic_json(&topic),
                format_args!(
                    "created topic {} (id {}, {} partitions)",
                    topic.name,
                    topic.id,
                    topic.partitions.len()
                ),
            );
        }
        TopicsCommand::List => {
            let topics = client.list_topics().await?;
            if cli.json {
                print_json(&json!(topics.iter().map(topic_json).collect::<Vec<_>>()));
            } else {
                let mut table = Table::new();
                table.set_header([
                    "ID",
                    "NAME",
                    "PARTITIONS",
                    "REPLICATION",
                    "SCHEMA",
                    "DESCRIPTION",
                ]);
                for t in &topics {
                    table.add_row(vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.partitions.len().to_string(),
                        t.replication_factor.to_string(),
                        if t.schema.is_some() { "yes" } else { "no" }.to_string(),
                        t.description.clone(),
                    ]);
                }
                println!("{table}");
            }
        }
        TopicsCommand::Describe { topic } => {
            let t = client.topic(topic).await?;
            let status = client.cluster_status().await?;
            if cli.json {
                print_json(&topic_json(&t));
            } else {
                println!("topic {} (id {}): {}", t.name, t.id, t.description);
                let mut table = Table::new();
                table.set_header(["PARTITION", "REPLICAS", "LEADER", "OFFSETS"]);
                for p in &t.partitions {
                    let group = status.groups.iter().find(|g| g.group_id == p.group_id);
                    table.add_row(vec![
                        p.partition.to_string(),
                        format!("{:?}", p.replicas),
                        group
                            .and_then(|g| g.leader)
                            .map_or("-".into(), |l| l.to_string()),
                        group.map_or("-".into(), |g| {
                            format!("{}..{}", g.log_start_offset, g.high_watermark)
                        }),
                    ]);
                }
                println!("{table}");
            }
        }
        TopicsCommand::Update {
            topic,
            name,
            description,
            schema,
            no_schema,
            retention_hours,
            retention_bytes,
        } => {
            let current = client.topic(topic).await?;
            let retention = (retention_hours.is_some() || retention_bytes.is_some()).then(|| {
                let old = current.retention.unwrap_or_default();
                pb::RetentionPolicy {
                    retention_ms: retention_hours.map_or(old.retention_ms, |h| h * 3_600_000),
                    retention_bytes: retention_bytes.unwrap_or(old.retention_bytes),
                }
            });
            let schema = if *no_schema {
                Some(String::new())
            } else {
                read_schema(schema)?
            };
            let t = client
                .update_topic(pb::UpdateTopicRequest {
                    topic: Some(raftstream_client::topic_ref(topic)),
                    name: name.clone(),
                    description: description.clone(),
                    schema,
                    retention,
                })
                .await?;
            print_outcome(
                cli,
                &topic_json(&t),
                format_args!("updated topic {}", t.name),
            );
        }
        TopicsCommand::Purge { topic, partition } => {
            client.purge_topic(topic, *partition).await?;
            print_outcome(
                cli,
                &json!({"purged": topic, "partition": partition}),
                format_args!("purged {topic}"),
            );
        }
        TopicsCommand::Delete { topic } => {
            client.delete_topic(topic).await?;
            print_outcome(
                cli,
                &json!({"deleted": topic}),
                format_args!("deleted {topic}"),
            );
        }
        TopicsCommand::Move {
            topic,
            partition,
            to,
        } => {
            let t = client.topic(topic).await?;
            let from = t
                .partitions
                .iter()
                .find(|p| p.partition == *partition)
                .map(|p| p.replicas.clone());
            client.move_partition(topic, *partition, to.clone()).await?;
            print_outcome(
                cli,
                &json!({"topic": t.name, "partition": partition, "from": from, "to": to}),
                format_args!(
                    "moving {} partition {partition} from {} to {}: see `raftstream cluster status`",
                    t.name,
                    from.map_or("-".into(), |f| node_list(&f)),
                    node_list(to)
                ),
            );
        }
    }
    Ok(())
}

async fn produce(cli: &Cli, args: &ProduceArgs) -> anyhow::Result<()> {
    // Headers travel as a map: a name given twice would silently lose a value.
    let mut names = std::collections::BTreeSet::new();
    if let Some((name, _)) = args.headers.iter().find(|(name, _)| !names.insert(name)) {
        bail!("--header {name} is given twice; a message carries one value per header");
    }
    let client = connect(cli).await?;
    let producer = Producer::new(&client, &args.topic, ProducerConfig::default()).await?;
    let lines: Box<dyn Iterator<Item = std::io::Result<String>>> = if !args.values.is_empty() {
        Box::new(args.values.clone().into_iter().map(Ok))
    } else if let Some(path) = &args.file {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file).lines())
    } else {
        Box::new(std::io::stdin().lock().lines())
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} messages ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for line in lines {
        let line = line.context("reading input")?;
        if line.trim().is_empty() {
            continue;
        }
        let mut record = Record::new(line.into_bytes());
        if let Some(key) = &args.key {
            record = record.with_key(key.clone());
        }
        if let Some(p) = args.partition {
            record = record.with_partition(p);
        }
        for (name, value) in &args.headers {
            record = record.with_header(name.clone(), value.clone());
        }
        deliveries.push(producer.send(record).await?);
        progress.inc(1);
    }
    let mut stored = 0u64;
    let mut last = None;
    for delivery in deliveries {
        let ack = delivery.await.context("the producer stopped")??;
        stored += 1;
        last = Some(ack);
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    if cli.json {
        print_json(
            &json!({"produced": stored, "seconds": seconds, "last_message_id": last.map(|a| a.message_id)}),
        );
    } else {
        eprintln!(
            "produced {stored} messages in {seconds:.2} s ({:.0} msg/s)",
            stored as f64 / seconds
        );
    }
    Ok(())
}

/// `--since`: milliseconds since the epoch, an RFC 3339 time, or a
/// duration before `now_ms` (`1h`, `15m`, `2d 12h`).
fn parse_since(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Some(ms) = time_rfc3339(text) {
        return Ok(ms);
    }
    let ago = humantime::parse_duration(text).map_err(|e| {
        anyhow::anyhow!(
            "--since {text:?}: not a duration ({e}; e.g. 90s, 15m, 1h, 2d 12h), \
             an RFC 3339 time (2026-11-23T10:00:00Z) or milliseconds since the epoch"
        )
    })?;
    let ago_ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(ago_ms).max(0))
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Parses RFC 3339 (`2026-11-23T10:00:00Z`, `...+02:00`, fractions).
fn time_rfc3339(text: &str) -> Option<i64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn print_message(output: Output, m: &pb::Message) {
    let value = String::from_utf8_lossy(&m.value);
    match output {
        Output::Raw => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&m.value);
            let _ = out.write_all(b"\n");
        }
        Output::Json => println!(
            "{}",
            json!({"message_id": m.message_id, "partition": m.partition, "offset": m.offset, "timestamp_ms": m.timestamp_ms,
                   "key": String::from_utf8_lossy(&m.key), "value": value, "headers": m.headers})
        ),
        Output::Pretty => {
            let key = if m.key.is_empty() {
                String::new()
            } else {
                format!(" key={}", String::from_utf8_lossy(&m.key))
            };
            let mut headers: Vec<String> =
                m.headers.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            headers.sort();
            let headers = headers.concat();
            println!(
                "{}/{} @{}{key}{headers}  {value}",
                m.partition, m.offset, m.timestamp_ms
            );
        }
    }
}

async fn consume(cli: &Cli, args: &ConsumeArgs) -> anyhow::Result<()> {
    let output = match (cli.json, args.output) {
        (true, None | Some(Output::Json)) => Output::Json,
        (true, Some(other)) => bail!("--json and --output {other:?} disagree: give one"),
        (false, output) => output.unwrap_or(Output::Pretty),
    };
    // Parsed before connecting: a mistyped --since fails at once, and "1h"
    // means an hour before the command ran.
    let since = args
        .since
        .as_deref()
        .map(|t| parse_since(t, now_ms()))
        .transpose()?;
    let client = connect(cli).await?;
    let topic = client.topic(&args.topic).await?;
    let partitions: Vec<u32> = match (args.partition, &args.after) {
        (Some(p), _) => vec![p],
        (None, Some(id)) => vec![
            id.split('-')
                .next()
                .and_then(|p| p.parse().ok())
                .context("--after takes a message id like 0-42")?,
        ],
        (None, None) => (0..topic.partitions.len() as u32).collect(),
    };
    let committed = match &args.group {
        Some(group) => client.committed_offsets(&args.topic, group).await?,
        None => vec![],
    };
    let explicit = args.from_offset.is_some()
        || args.after.is_some()
        || args.since.is_some()
        || args.latest
        || args.from_beginning;
    let mut consumers = Vec::new();
    for p in partitions {
        let start = if let Some(o) = args.from_offset {
            Position::Offset(o)
        } else if let Some(id) = &args.after {
            Position::AfterMessage(id.clone())
        } else if let Some(t) = since {
            Position::Timestamp(t)
        } else if args.latest {
            Position::Latest
        } else if let (false, Some((_, o))) = (explicit, committed.iter().find(|(cp, _)| *cp == p))
        {
            Position::Offset(*o)
        } else {
            Position::Earliest
        };
        consumers.push(Consumer::new(&client, &args.topic, p, start).await?);
    }
    let limit = args.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    if args.follow {
        let group = args.group.clone();
        let streams = consumers.into_iter().map(|c| {
            let client = client.clone();
            let topic = args.topic.clone();
            let partition = c.partition();
            let group = group.clone();
            c.into_stream().then(move |m| {
                let client = client.clone();
                let topic = topic.clone();
                let group = group.clone();
                async move {
                    if let (Ok(m), Some(group)) = (&m, &group) {
                        client
                            .commit_offset(&topic, group, partition, m.offset + 1)
                            .await?;
                    }
                    m
                }
            })
        });
        let mut merged = futures::stream::select_all(streams.map(Box::pin));
        while let Some(message) = merged.next().await {
            print_message(output, &message?);
            printed += 1;
            if printed >= limit {
                break;
            }
        }
        return Ok(());
    }
    for mut consumer in consumers {
        loop {
            if printed >= limit {
                break;
            }
            let want = (limit - printed).min(1000) as u32;
            let messages = consumer.poll(want, Duration::ZERO).await?;
            if messages.is_empty() {
                break;
            }
            for m in &messages {
                print_message(output, m);
            }
            printed += messages.len() as u64;
            if let Some(group) = &args.group {
                consumer.commit(group).await?;
            }
        }
    }
    Ok(())
}

async fn groups(cli: &Cli, command: &GroupsCommand) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    match command {
        GroupsCommand::List { topic } => {
            let groups = client.list_groups(topic).await?;
            if cli.json {
                print_json(&json!(groups))
            } else {
                groups.iter().for_each(|g| println!("{g}"))
            }
        }
        GroupsCommand::Offsets { topic, group } => {
            let offsets = client.committed_offsets(topic, group).await?;
            let status = client.cluster_status().await?;
            let t = client.topic(topic).await?;
            let end = |p: u32| {
                status
                    .groups
                    .iter()
                    .find(|g| g.topic == t.name && g.partition == p)
                    .map(|g| g.high_watermark)
            };
            if cli.json {
                print_json(&json!(offsets.iter().map(|(p, o)| json!({"partition": p, "offset": o, "lag": end(*p).map(|e| e.saturating_sub(*o))})).collect::<Vec<_>>()));
            } else {
                let mut table = Table::new();
                table.set_header(["PARTITION", "COMMITTED", "END", "LAG"]);
                for (p, o) in &offsets {
                    let e = end(*p);
                    table.add_row(vec![
                        p.to_string(),
                        o.to_string(),
                        e.map_or("-".into(), |e| e.to_string()),
                        e.map_or("-".into(), |e| e.saturating_sub(*o).to_string()),
                    ]);
                }
                println!("{table}");
            }
        }
        GroupsCommand::Reset {
            topic,
            group,
            to_offset,
            to_earliest,
            to_latest,
            partition,
        } => {
            let t = client.topic(topic).await?;
            let status = client.cluster_status().await?;
            let partitions: Vec<u32> = match partition {
                Some(p) => vec![*p],
                None => (0..t.partitions.len() as u32).collect(),
            };
            let mut moved = Vec::new();
            for p in partitions {
                let g = status
                    .groups
                    .iter()
                    .find(|g| g.topic == t.name && g.partition == p);
                let offset = match (to_offset, to_earliest, to_latest) {
                    (Some(o), _, _) => *o,
                    (None, true, _) => g.map_or(0, |g| g.log_start_offset),
                    (None, _, true) => g.map_or(0, |g| g.high_watermark),
                    _ => bail!("say where to: --to-offset, --to-earliest or --to-latest"),
                };
                client.commit_offset(topic, group, p, offset).await?;
                if !cli.json {
                    println!("group {group} partition {p} → {offset}");
                }
                moved.push(json!({"partition": p, "offset": offset}));
            }
            if cli.json {
                print_json(&json!(moved));
            }
        }
    }
    Ok(())
}

/// Node ids as `2,3,4`.
fn node_list(nodes: &[u64]) -> String {
    nodes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn yes_no(on: bool) -> String {
    if on { "yes" } else { "no" }.to_string()
}

async fn cluster(cli: &Cli, command: &ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => cluster_status(cli).await,
        ClusterCommand::AddNode { id, peer_addr } => {
            let client = connect(cli).await?;
            client.add_node(*id, peer_addr).await?;
            print_outcome(
                cli,
                &json!({"added": id, "peer_addr": peer_addr}),
                format_args!(
                    "node {id} ({peer_addr}) is a voter; replicas move onto it as the cluster \
                     balances"
                ),
            );
            Ok(())
        }
        ClusterCommand::RemoveNode { id, timeout } => remove_node(cli, *id, *timeout).await,
    }
}

/// Calls RemoveNode until the node is out, printing how many replicas it
/// still holds while they move away, for at most `timeout`.
async fn remove_node(cli: &Cli, id: u64, timeout: Duration) -> anyhow::Result<()> {
    use backoff::backoff::Backoff;
    let mut config = client_config(cli)?;
    // Each call gives up soon, so that progress is printed between calls;
    // this loop does the waiting.
    config.retry_for = config.retry_for.min(Duration::from_secs(5));
    let client = Client::connect(config).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = backoff::ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(500))
        .with_max_interval(Duration::from_secs(5))
        .with_max_elapsed_time(None)
        .build();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = tokio::time::timeout(left, client.remove_node(id)).await;
        match outcome {
            Ok(Ok(())) => break,
            Ok(Err(raftstream_client::Error::Unavailable { .. })) | Err(_) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
        let progress = draining_progress(&client, id).await;
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "node {id} is not removed after {}{}; run `raftstream cluster remove-node {id}` \
                 again to carry on",
                humantime::format_duration(timeout),
                progress.map_or(String::new(), |p| format!(" ({p})"))
            );
        }
        if !cli.json
            && let Some(progress) = progress
        {
            eprintln!("node {id} is draining: {progress}");
        }
        let wait = pause.next_backoff().unwrap_or(Duration::from_secs(5));
        tokio::time::sleep(
            wait.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
        )
        .await;
    }
    print_outcome(
        cli,
        &json!({"removed": id}),
        format_args!("node {id} is removed from the cluster"),
    );
    Ok(())
}

/// How far node `id`'s replicas are from gone, if the cluster says.
async fn draining_progress(client: &Client, id: u64) -> Option<String> {
    let status = client.cluster_status().await.ok()?;
    let node = status.nodes.iter().find(|n| n.id == id)?;
    let moving = status
        .moves
        .iter()
        .filter(|m| m.from.contains(&id) && !m.to.contains(&id))
        .count();
    Some(format!(
        "{} partition replicas left, {moving} moves off it under way",
        node.replicas
    ))
}

async fn cluster_status(cli: &Cli) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let status = client.cluster_status().await?;
    let spread = status
        .spread
        .context("the node's cluster status carries no spread")?;
    if cli.json {
        let groups: Vec<_> = status
            .groups
            .iter()
            .map(|g| json!({"group_id": g.group_id, "topic": g.topic, "partition": g.partition, "leader": g.leader, "term": g.term,
                            "commit_index": g.commit_index, "replicas": g.replicas, "replica_lag": g.replica_lag,
                            "high_watermark": g.high_watermark, "quiesced": g.quiesced}))
            .collect();
        let nodes: Vec<_> = status
            .nodes
            .iter()
            .map(|n| {
                json!({"id": n.id, "addr": n.grpc_addr, "reachable": n.reachable,
                            "replicas": n.replicas, "leaders": n.leaders,
                            "preferred_leaders": n.preferred_leaders, "voter": n.voter,
                            "draining": n.draining})
            })
            .collect();
        let moves: Vec<_> = status
            .moves
            .iter()
            .map(
                |m| json!({"topic": m.topic, "partition": m.partition, "from": m.from, "to": m.to}),
            )
            .collect();
        let spread = json!({"replicas": spread.replicas, "leaders": spread.leaders});
        print_json(&json!({"nodes": nodes, "groups": groups, "moves": moves, "spread": spread}));
        return Ok(());
    }
    let mut nodes = Table::new();
    nodes.set_header([
        "NODE",
        "ADDRESS",
        "REACHABLE",
        "VOTER",
        "DRAINING",
        "REPLICAS",
        "LEADERS",
        "PREFERRED LEADERS",
    ]);
    for n in &status.nodes {
        nodes.add_row(vec![
            n.id.to_string(),
            n.grpc_addr.clone(),
            yes_no(n.reachable),
            yes_no(n.voter),
            yes_no(n.draining),
            n.replicas.to_string(),
            n.leaders.to_string(),
            n.preferred_leaders.to_string(),
        ]);
    }
    println!("{nodes}");
    println!(
        "spread (most minus fewest per node): {} replicas, {} leaders",
        spread.replicas, spread.leaders
    );
    if status.moves.is_empty() {
        println!("no partition moves under way");
    } else {
        println!("partition moves under way:");
        let mut moves = Table::new();
        moves.set_header(["TOPIC", "PARTITION", "FROM", "TO"]);
        for m in &status.moves {
            moves.add_row(vec![
                m.topic.clone(),
                m.partition.to_string(),
                node_list(&m.from),
                node_list(&m.to),
            ]);
        }
        println!("{moves}");
    }
    let mut groups = Table::new();
    groups.set_header([
        "GROUP",
        "TOPIC",
        "PARTITION",
        "LEADER",
        "TERM",
        "COMMIT",
        "REPLICAS",
        "LAG",
        "END OFFSET",
    ]);
    for g in &status.groups {
        let lag: u64 = g.replica_lag.values().copied().max().unwrap_or(0);
        groups.add_row(vec![
            g.group_id.to_string(),
            if g.topic.is_empty() {
                "(metadata)".into()
            } else {
                g.topic.clone()
            },
            if g.topic.is_empty() {
                "-".into()
            } else {
                g.partition.to_string()
            },
            g.leader.map_or("-".into(), |l| l.to_string()),
            g.term.to_string(),
            g.commit_index.to_string(),
            format!("{:?}", g.replicas),
            lag.to_string(),
            g.high_watermark.to_string(),
        ]);
    }
    println!("{groups}");
    Ok(())
}

async fn tokens(cli: &Cli, command: &TokensCommand) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    match command {
        TokensCommand::Create {
            name,
            scopes,
            topics,
        } => {
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let created = client.create_token(name, &scopes, &topics).await?;
            let id = created.token.map_or(0, |t| t.id);
            print_outcome(
                cli,
                &json!({"id": id, "token": created.secret}),
                format_args!("token {id} (shown once): {}", created.secret),
            );
        }
        TokensCommand::List => {
            let tokens = client.list_tokens().await?;
            if cli.json {
                print_json(&json!(tokens.iter().map(|t| json!({"id": t.id, "name": t.name, "scopes": t.scopes, "topics": t.topics})).collect::<Vec<_>>()));
            } else {
                let mut table = Table::new();
                table.set_header(["ID", "NAME", "SCOPES", "TOPICS"]);
                for t in &tokens {
                    table.add_row(vec![
                        t.id.to_string(),
                        t.name.clone(),
                        t.scopes.join(","),
                        if t.topics.is_empty() {
                            "*".into()
                        } else {
                            t.topics.join(",")
                        },
                    ]);
                }
                println!("{table}");
            }
        }
        TokensCommand::Revoke { id } => {
            client.delete_token(*id).await?;
            print_outcome(
                cli,
                &json!({"revoked": id}),
                format_args!("revoked token {id}"),
            );
        }
    }
    Ok(())
}

fn source_json(s: &pb::Source) -> serde_json::Value {
    json!({
        "id": s.id, "name": s.name, "source_type": s.source_type, "status": s.status,
        "topic": s.topic_name, "topic_id": s.topic_id, "partition": s.partition,
        "secret_last_four": s.secret_last_four, "hmac": s.hmac, "tenant_id": s.tenant_id,
        "created_at_ms": s.created_at_ms, "last_event_ms": s.last_event_ms,
        "event_count": s.event_count,
    })
}

/// Where the HTTP gateway takes a source's deliveries.
fn webhook_path(s: &pb::Source) -> String {
    match s.source_type.as_str() {
        "flow" => format!("/webhook/flow/{}", s.id),
        _ => format!("/api/ingest/webhook/{}", s.id),
    }
}

fn print_with_secret(cli: &Cli, created: &pb::SourceWithSecret) {
    let source = created.source.clone().unwrap_or_default();
    if cli.json {
        let mut value = source_json(&source);
        value["secret"] = json!(created.secret);
        value["webhook_path"] = json!(webhook_path(&source));
        print_json(&value);
    } else {
        println!(
            "source {} ({}, topic {})",
            source.id, source.source_type, source.topic_name
        );
        println!("secret (shown once): {}", created.secret);
        println!("deliver to: POST <gateway>{}", webhook_path(&source));
    }
}

async fn ingest(cli: &Cli, command: &IngestCommand) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    match command {
        IngestCommand::Create {
            name,
            source_type,
            topic,
            hmac_secret,
            tenant,
        } => {
            let request = pb::CreateSourceRequest {
                name: name.clone(),
                source_type: source_type.clone(),
                topic: Some(raftstream_client::topic_ref(topic)),
                hmac_secret: hmac_secret.clone(),
                tenant_id: tenant.clone().unwrap_or_default(),
            };
            print_with_secret(cli, &client.create_source(request).await?);
        }
        IngestCommand::Rotate { id } => {
            print_with_secret(cli, &client.rotate_source_secret(id).await?);
        }
        IngestCommand::List => {
            let sources = client.list_sources().await?;
            if cli.json {
                print_json(&json!(sources.iter().map(source_json).collect::<Vec<_>>()));
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header([
                "ID",
                "NAME",
                "TYPE",
                "TOPIC",
                "STATUS",
                "EVENTS",
                "LAST EVENT",
                "SECRET",
            ]);
            for s in &sources {
                table.add_row(vec![
                    s.id.clone(),
                    s.name.clone(),
                    s.source_type.clone(),
                    s.topic_name.clone(),
                    s.status.clone(),
                    s.event_count.to_string(),
                    s.last_event_ms.map(rfc3339).unwrap_or_else(|| "-".into()),
                    format!("…{}", s.secret_last_four),
                ]);
            }
            println!("{table}");
        }
        IngestCommand::Get { id } => {
            let source = client.source(id).await?;
            let mut value = source_json(&source);
            value["webhook_path"] = json!(webhook_path(&source));
            print_json(&value);
        }
        IngestCommand::Delete { id } => {
            client.delete_source(id).await?;
            print_deleted(cli, "source", id);
        }
        IngestCommand::Tail { id, follow, lines } => {
            tail(cli, &client, id, *follow, *lines).await?;
        }
    }
    Ok(())
}

/// Prints the source's last `lines` events, then (with `follow`) every new
/// one as soon as it commits: the consumer long-polls its partition.
async fn tail(
    cli: &Cli,
    client: &Client,
    id: &str,
    follow: bool,
    lines: usize,
) -> anyhow::Result<()> {
    let source = client.source(id).await?;
    let topic = source.topic_id.to_string();
    let (recent, end) = recent_events(client, &topic, source.partition, id, lines).await?;
    let print = |event: &IngestedEvent| {
        if cli.json {
            println!("{}", event.value);
        } else {
            println!("{}", event.row());
        }
    };
    recent.iter().for_each(print);
    if follow {
        let from = Position::Offset(end);
        let consumer = Consumer::new(client, &topic, source.partition, from).await?;
        let mut stream = Box::pin(consumer.into_stream());
        while let Some(message) = stream.next().await {
            if let Some(event) = IngestedEvent::from_message(id, &message?) {
                print(&event);
            }
        }
    }
    Ok(())
}

/// The source's last `lines` events before the partition's current end,
/// and that end. Other sources may share the partition, so it reads back
/// from the end in growing windows rather than from the beginning.
async fn recent_events(
    client: &Client,
    topic: &str,
    partition: u32,
    id: &str,
    lines: usize,
) -> anyhow::Result<(Vec<IngestedEvent>, u64)> {
    let mut probe = Consumer::new(client, topic, partition, Position::Latest).await?;
    probe.poll(1, Duration::ZERO).await?;
    let end = match probe.position() {
        Position::Offset(offset) => *offset,
        _ => 0,
    };
    let mut window = (lines as u64).max(1) * 4;
    loop {
        let start = end.saturating_sub(window);
        let mut reader = Consumer::new(client, topic, partition, Position::Offset(start)).await?;
        let mut found = Vec::new();
        'read: loop {
            let messages = reader.poll(1000, Duration::ZERO).await?;
            if messages.is_empty() {
                break;
            }
            for message in &messages {
                if message.offset >= end {
                    break 'read;
                }
                found.extend(IngestedEvent::from_message(id, message));
            }
        }
        if found.len() >= lines || start == 0 {
            let skip = found.len().saturating_sub(lines);
            return Ok((found.split_off(skip), end));
        }
        window = window.saturating_mul(4);
    }
}

/// `raftstream profile ...`: works on the profiles file alone, without
/// connecting.
fn profile(cli: &Cli, command: &ProfileCommand) -> anyhow::Result<()> {
    let path = profiles::default_config_path()?;
    let mut file = ProfileFile::load(&path)?;
    match command {
        ProfileCommand::Create { name, force } => {
            if name.trim().is_empty() {
                bail!("a profile needs a name");
            }
            if file.profiles.contains_key(name) && !force {
                bail!("profile {name:?} exists; --force replaces it");
            }
            let given = cli.given;
            // Relative TLS paths would break when run from elsewhere.
            let absolute = |path: &Option<PathBuf>, given: bool| {
                path.as_ref()
                    .filter(|_| given)
                    .map(std::path::absolute)
                    .transpose()
            };
            let profile = Profile {
                addr: cli.addr.clone().filter(|_| given.addr),
                token: cli.token.clone().filter(|_| given.token),
                tls_ca: absolute(&cli.tls_ca, given.tls_ca)?,
                tls_cert: absolute(&cli.tls_cert, given.tls_cert)?,
                tls_key: absolute(&cli.tls_key, given.tls_key)?,
            };
            if profile == Profile::default() {
                bail!(
                    "nothing to save: give --addr, --token or --tls-ca on this command line \
                     (RAFTSTREAM_* variables are not saved)"
                );
            }
            file.profiles.insert(name.clone(), profile);
            if file.in_use().is_none() {
                file.current = Some(name.clone());
            }
            file.save(&path)?;
            let current = file.in_use() == Some(name.as_str());
            if cli.json {
                print_json(&json!({"created": name, "current": current, "path": path}));
            } else if current {
                println!("created profile {name} in {}, in use", path.display());
            } else {
                println!(
                    "created profile {name} in {}; `raftstream profile use {name}` makes it current",
                    path.display()
                );
            }
        }
        ProfileCommand::Use { name } => {
            if !file.profiles.contains_key(name) {
                bail!(
                    "no profile {name:?} in {}; `raftstream profile list` shows the profiles",
                    path.display()
                );
            }
            file.current = Some(name.clone());
            file.save(&path)?;
            print_outcome(
                cli,
                &json!({"current": name}),
                format_args!("using profile {name}"),
            );
        }
        ProfileCommand::List => {
            let in_use = file.in_use();
            if cli.json {
                let listed: Vec<_> = file
                    .profiles
                    .iter()
                    .map(|(name, p)| {
                        json!({"name": name, "current": in_use == Some(name.as_str()),
                               "addr": p.addr, "token_set": p.token.is_some(),
                               "tls_ca": p.tls_ca, "tls_cert": p.tls_cert, "tls_key": p.tls_key})
                    })
                    .collect();
                print_json(&json!(listed));
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["", "NAME", "ADDR", "TOKEN", "TLS CA"]);
            for (name, p) in &file.profiles {
                let set = |set: bool| if set { "set" } else { "-" }.to_string();
                table.add_row(vec![
                    if in_use == Some(name.as_str()) {
                        "*"
                    } else {
                        ""
                    }
                    .to_string(),
                    name.clone(),
                    p.addr.clone().unwrap_or_else(|| "-".into()),
                    set(p.token.is_some()),
                    p.tls_ca
                        .as_ref()
                        .map_or("-".into(), |ca| ca.display().to_string()),
                ]);
            }
            println!("{table}");
        }
        ProfileCommand::Delete { name } => {
            if file.profiles.remove(name).is_none() {
                bail!("no profile {name:?} in {}", path.display());
            }
            if file.current.as_ref() == Some(name) {
                file.current = None;
            }
            file.save(&path)?;
            print_deleted(cli, "profile", name);
        }
    }
    Ok(())
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Topics(c) => topics(cli, c).await,
        Command::Produce(a) => produce(cli, a).await,
        Command::Consume(a) => consume(cli, a).await,
        Command::Groups(c) => groups(cli, c).await,
        Command::Cluster(c) => cluster(cli, c).await,
        Command::Tokens(c) => tokens(cli, c).await,
        Command::Ingest(c) => ingest(cli, c).await,
        Command::Subscriptions(c) => subscriptions::subscriptions(cli, c).await,
        Command::Profile(c) => profile(cli, c),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "raftstream",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// The error as one line (the causes joined) and the exit status. A
/// missing or refused token is told apart from the rest and names where
/// the token came from (`token`).
fn explain(e: &anyhow::Error, token: Option<&TokenOrigin>) -> (String, u8) {
    use raftstream_client::Error;
    let mut status = EXIT_FAILED;
    let causes: Vec<String> = e
        .chain()
        .map(|cause| match (cause.downcast_ref::<Error>(), token) {
            (Some(Error::Unauthenticated(_)), None) => {
                status = EXIT_AUTH;
                "authentication failed: no token given; set RAFTSTREAM_TOKEN \
                 (or --token, or a profile: raftstream profile create)"
                    .to_string()
            }
            (Some(Error::Unauthenticated(why)), Some(origin)) => {
                status = EXIT_AUTH;
                format!(
                    "authentication failed: the token from {origin} was refused ({why}); \
                     set RAFTSTREAM_TOKEN (or --token) to a valid token"
                )
            }
            (Some(Error::PermissionDenied(why)), origin) => {
                status = EXIT_AUTH;
                let whose = origin.map_or("the token".into(), |o| format!("the token from {o}"));
                format!("permission denied: {why}; {whose} lacks the scope or topic")
            }
            (Some(Error::NoNodeReachable { .. }), _) => {
                status = EXIT_UNREACHABLE;
                cause.to_string()
            }
            _ => cause.to_string(),
        })
        .collect();
    (causes.join(": "), status)
}

fn parse() -> Cli {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.given = OnCommandLine::of(&matches);
    cli
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let token = Connection::resolve(&cli)
                .ok()
                .and_then(|connection| connection.token)
                .map(|(_, origin)| origin);
            let (line, status) = explain(&e, token.as_ref());
            eprintln!("error: {line}");
            ExitCode::from(status)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rfc3339_times_parse_to_epoch_millis() {
        assert_eq!(time_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(time_rfc3339("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            time_rfc3339("2026-11-23T10:00:00+02:00"),
            Some(1_795_420_800_000)
        );
        assert_eq!(time_rfc3339("yesterday"), None);
    }

    #[test]
    fn since_takes_a_duration_ago_a_time_or_epoch_millis() {
        let now = 1_795_420_800_000;
        assert_eq!(parse_since("1h", now).ok(), Some(now - 3_600_000));
        assert_eq!(parse_since("15m", now).ok(), Some(now - 900_000));
        assert_eq!(parse_since("2d 12h", now).ok(), Some(now - 216_000_000));
        assert_eq!(parse_since("1h30m", now).ok(), Some(now - 5_400_000));
        assert_eq!(
            parse_since("2026-11-23T09:00:00+02:00", now).ok(),
            Some(now - 3_600_000)
        );
        assert_eq!(parse_since("1234", now).ok(), Some(1234));
        // Further back than the epoch is the epoch.
        assert_eq!(parse_since("100000y", now).ok(), Some(0));
        let wrong = parse_since("an hour", now).unwrap_err().to_string();
        assert!(
            wrong.contains("--since \"an hour\": not a duration"),
            "{wrong}"
        );
    }

    #[test]
    fn headers_are_name_equals_value() {
        assert_eq!(
            parse_header("trace-id=abc=1"),
            Ok(("trace-id".into(), "abc=1".into()))
        );
        assert_eq!(parse_header("empty="), Ok(("empty".into(), String::new())));
        assert!(parse_header("no-equals").is_err());
        assert!(parse_header("=value").is_err());
        let cli = Cli::try_parse_from([
            "raftstream",
            "produce",
            "t",
            "v",
            "--header",
            "a=1",
            "--header",
            "b=2",
        ])
        .unwrap();
        let Command::Produce(args) = cli.command else {
            panic!("not produce: {:?}", cli.command)
        };
        assert_eq!(
            args.headers,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
    }

    fn parsed(args: &[&str]) -> Cli {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let mut cli = Cli::from_arg_matches(&matches).unwrap();
        cli.given = OnCommandLine::of(&matches);
        // As if no RAFTSTREAM_* variable were set where the tests run.
        let given = cli.given;
        cli.addr = cli.addr.filter(|_| given.addr);
        cli.token = cli.token.filter(|_| given.token);
        cli.tls_ca = cli.tls_ca.filter(|_| given.tls_ca);
        cli.profile = None;
        cli
    }

    #[test]
    fn connection_flags_are_told_apart_before_and_after_the_subcommand() {
        let cli = parsed(&[
            "raftstream",
            "--addr",
            "a:1",
            "profile",
            "create",
            "p",
            "--token",
            "t",
        ]);
        assert!(cli.given.addr && cli.given.token);
        assert!(!cli.given.tls_ca && !cli.given.tls_cert && !cli.given.tls_key);
        let cli = parsed(&["raftstream", "topics", "list"]);
        assert!(!cli.given.addr && !cli.given.token);
    }

    #[test]
    fn flags_then_the_environment_then_the_profile() {
        let profile = Profile {
            addr: Some("profile:1".into()),
            token: Some("rst_profile".into()),
            tls_ca: Some("/profile/ca.pem".into()),
            ..Profile::default()
        };
        // Nothing given: all from the profile.
        let cli = parsed(&["raftstream", "topics", "list"]);
        let connection = Connection::merge(&cli, "prod", profile.clone());
        assert_eq!(connection.addr, "profile:1");
        assert_eq!(
            connection.token,
            Some(("rst_profile".into(), TokenOrigin::Profile("prod".into())))
        );
        assert_eq!(connection.tls_ca, Some(PathBuf::from("/profile/ca.pem")));
        // A flag wins over the profile and is named as the token's origin.
        let cli = parsed(&["raftstream", "--token", "rst_flag", "topics", "list"]);
        let connection = Connection::merge(&cli, "prod", profile.clone());
        assert_eq!(connection.addr, "profile:1");
        assert_eq!(
            connection.token,
            Some(("rst_flag".into(), TokenOrigin::Flag))
        );
        // A value clap took from the environment is not a flag.
        let mut cli = parsed(&["raftstream", "topics", "list"]);
        cli.token = Some("rst_env".into());
        let connection = Connection::merge(&cli, "prod", profile.clone());
        assert_eq!(connection.token, Some(("rst_env".into(), TokenOrigin::Env)));
        // An empty one is unset.
        cli.token = Some(String::new());
        let connection = Connection::merge(&cli, "prod", profile);
        assert_eq!(
            connection.token.map(|(_, o)| o),
            Some(TokenOrigin::Profile("prod".into()))
        );
        // No profile: the default address, no token.
        let cli = parsed(&["raftstream", "topics", "list"]);
        let connection = Connection::merge(&cli, "", Profile::default());
        assert_eq!(connection.addr, "127.0.0.1:50051");
        assert_eq!(connection.token, None);
    }

    #[test]
    fn a_refused_token_names_where_it_came_from_and_exits_3() {
        use raftstream_client::Error;
        let refused = || {
            anyhow::Error::from(Error::Unauthenticated("unknown or revoked token".into()))
                .context("listing topics")
        };
        let (line, status) = explain(&refused(), None);
        assert_eq!(status, EXIT_AUTH);
        assert!(
            line.starts_with(
                "listing topics: authentication failed: no token given; set RAFTSTREAM_TOKEN"
            ),
            "{line}"
        );
        let (line, _) = explain(&refused(), Some(&TokenOrigin::Profile("prod".into())));
        assert!(
            line.contains("the token from profile \"prod\" was refused (unknown or revoked token)"),
            "{line}"
        );
        let denied = anyhow::Error::from(Error::PermissionDenied("needs admin".into()));
        let (line, status) = explain(&denied, Some(&TokenOrigin::Env));
        assert_eq!(status, EXIT_AUTH);
        assert!(
            line.contains("the token from RAFTSTREAM_TOKEN lacks"),
            "{line}"
        );
        let unreachable = anyhow::Error::from(Error::NoNodeReachable {
            seeds: vec!["a:1".into()],
        });
        assert_eq!(explain(&unreachable, None).1, EXIT_UNREACHABLE);
        assert_eq!(
            explain(&anyhow::anyhow!("other"), None),
            ("other".into(), EXIT_FAILED)
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
