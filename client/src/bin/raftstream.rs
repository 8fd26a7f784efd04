//! `raftstream`: the command line for Raftstream clusters.

use std::io::BufRead;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use clap::CommandFactory;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
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

const EXAMPLES: &str = "\
Examples:
  raftstream topics create orders --partitions 3
  echo '{\"id\": 1}' | raftstream produce orders
  raftstream produce orders --file events.jsonl --key customer-7
  raftstream consume orders --from-beginning --max 10
  raftstream consume orders --group billing --follow
  raftstream cluster status

Connection: --addr / RAFTSTREAM_ADDR (default 127.0.0.1:50051), --token / RAFTSTREAM_TOKEN,
TLS with --tls-ca / RAFTSTREAM_TLS_CA (and --tls-cert, --tls-key when the cluster asks
clients for a certificate), or a profile in ~/.config/raftstream/config.toml:
  [profiles.default]
  addr = \"127.0.0.1:50051\"
  token = \"rst_...\"
  tls_ca = \"/etc/raftstream/certs/ca.pem\"";

#[derive(Parser, Debug)]
#[command(name = "raftstream", version, about = "Work with a Raftstream cluster", after_help = EXAMPLES)]
struct Cli {
    /// Node addresses (host:port, comma separated); any node serves every request.
    #[arg(long, global = true, env = "RAFTSTREAM_ADDR")]
    addr: Option<String>,
    /// API token.
    #[arg(long, global = true, env = "RAFTSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Profile from ~/.config/raftstream/config.toml.
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
    /// Machine-readable JSON output instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
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
        after_help = "Examples:\n  raftstream consume orders --from-beginning --max 100\n  raftstream consume orders --since 2026-11-23T10:00:00Z --output json\n  raftstream consume orders --group billing --follow"
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
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
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
    /// Start at this time (RFC 3339, or milliseconds since the epoch).
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
    #[arg(long, value_enum, default_value_t = Output::Pretty)]
    output: Output,
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
    /// Nodes, partitions, leaders, terms, commit indexes and lag.
    Status,
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

#[derive(serde::Deserialize, Default)]
struct ProfileFile {
    #[serde(default)]
    profiles: std::collections::BTreeMap<String, Profile>,
}

#[derive(serde::Deserialize, Default, Clone)]
struct Profile {
    addr: Option<String>,
    token: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

fn profile(name: Option<&str>) -> anyhow::Result<Profile> {
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(Profile::default());
    };
    let path = PathBuf::from(home).join(".config/raftstream/config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) if name.is_none() => return Ok(Profile::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let file: ProfileFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    match name {
        Some(name) => file
            .profiles
            .get(name)
            .cloned()
            .with_context(|| format!("no profile {name:?} in {}", path.display())),
        None => Ok(file.profiles.get("default").cloned().unwrap_or_default()),
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let profile = profile(cli.profile.as_deref())?;
    let addr = cli
        .addr
        .clone()
        .or(profile.addr)
        .unwrap_or_else(|| "127.0.0.1:50051".into());
    let mut config = ClientConfig::new(addr.split(',').map(str::trim).filter(|s| !s.is_empty()));
    if let Some(token) = cli.token.clone().or(profile.token) {
        config = config.with_token(token);
    }
    let (cert, key) = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => (Some(cert.clone()), Some(key.clone())),
        _ => (profile.tls_cert, profile.tls_key),
    };
    if let Some(ca) = cli.tls_ca.clone().or(profile.tls_ca) {
        let identity = cert.as_deref().zip(key.as_deref());
        config = config.with_tls(raftstream_client::tls_from_files(&ca, identity)?);
    }
    Ok(Client::connect(config).await?)
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
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
            if cli.json {
                print_json(&topic_json(&topic))
            } else {
                println!(
                    "created topic {} (id {}, {} partitions)",
                    topic.name,
                    topic.id,
                    topic.partitions.len()
                )
            }
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
            if cli.json {
                print_json(&topic_json(&t))
            } else {
                println!("updated topic {}", t.name)
            }
        }
        TopicsCommand::Purge { topic, partition } => {
            client.purge_topic(topic, *partition).await?;
            println!("purged {topic}");
        }
        TopicsCommand::Delete { topic } => {
            client.delete_topic(topic).await?;
            println!("deleted {topic}");
        }
    }
    Ok(())
}

async fn produce(cli: &Cli, args: &ProduceArgs) -> anyhow::Result<()> {
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

fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = time_rfc3339(text)
        .with_context(|| format!("{text:?} is neither RFC 3339 nor milliseconds"))?;
    Ok(t)
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
            println!(
                "{}/{} @{}{key}  {value}",
                m.partition, m.offset, m.timestamp_ms
            );
        }
    }
}

async fn consume(cli: &Cli, args: &ConsumeArgs) -> anyhow::Result<()> {
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
        } else if let Some(t) = &args.since {
            Position::Timestamp(parse_time(t)?)
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
            print_message(args.output, &message?);
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
                print_message(args.output, m);
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
                println!("group {group} partition {p} → {offset}");
            }
        }
    }
    Ok(())
}

async fn cluster(cli: &Cli) -> anyhow::Result<()> {
    let client = connect(cli).await?;
    let status = client.cluster_status().await?;
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
            .map(|n| json!({"id": n.id, "addr": n.grpc_addr, "reachable": n.reachable}))
            .collect();
        print_json(&json!({"nodes": nodes, "groups": groups}));
        return Ok(());
    }
    let mut nodes = Table::new();
    nodes.set_header(["NODE", "ADDRESS", "REACHABLE"]);
    for n in &status.nodes {
        nodes.add_row(vec![
            n.id.to_string(),
            n.grpc_addr.clone(),
            if n.reachable { "yes" } else { "no" }.to_string(),
        ]);
    }
    println!("{nodes}");
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
            if cli.json {
                print_json(&json!({"id": id, "token": created.secret}))
            } else {
                println!("token {id} (shown once): {}", created.secret)
            }
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
            println!("revoked token {id}");
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
            println!("deleted source {id}");
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Topics(c) => topics(&cli, c).await,
        Command::Produce(a) => produce(&cli, a).await,
        Command::Consume(a) => consume(&cli, a).await,
        Command::Groups(c) => groups(&cli, c).await,
        Command::Cluster(ClusterCommand::Status) => cluster(&cli).await,
        Command::Tokens(c) => tokens(&cli, c).await,
        Command::Ingest(c) => ingest(&cli, c).await,
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

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, the causes joined.
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", causes.join(": "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(parse_time("1234").ok(), Some(1234));
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
