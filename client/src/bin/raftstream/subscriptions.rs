//! `raftstream subscriptions ...`: push subscriptions, which POST a topic's
//! messages, signed, to an HTTP endpoint.

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use clap::Subcommand;
use comfy_table::Table;
use raftstream_client::DeliverySettings;
use raftstream_client::DeliveryStart;
use raftstream_client::FilterChange;
use raftstream_client::NewSubscription;
use raftstream_client::PayloadFilter;
use raftstream_client::SubscriptionUpdate;
use raftstream_client::pb;
use serde_json::Value;
use serde_json::json;

use crate::Cli;
use crate::connect;
use crate::now_ms;
use crate::parse_since;
use crate::print_deleted;
use crate::print_json;
use crate::print_outcome;

#[derive(Subcommand, Debug)]
pub enum SubscriptionsCommand {
    /// Create a subscription; its signing secret is shown once.
    Create {
        name: String,
        /// The topic to deliver (name or id).
        #[arg(long)]
        topic: String,
        /// Where to POST messages: an http:// or https:// URL.
        #[arg(long)]
        endpoint: String,
        /// Deliver only payloads holding VALUE at the JSON pointer (`/type=paid`,
        /// `/n=3`, `/tags/0="x"`); VALUE is JSON, or else a string.
        #[arg(long, value_name = "POINTER=VALUE", value_parser = parse_filter)]
        filter: Option<PayloadFilter>,
        /// Where failed messages go; <topic>.dead-letter (created when
        /// missing) by default.
        #[arg(long)]
        dead_letter_topic: Option<String>,
        /// The signing secret, at least 16 characters; generated when absent.
        #[arg(long)]
        secret: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Where delivery starts; messages published from now on by default.
        #[command(flatten)]
        start: StartArgs,
    },
    /// List subscriptions and how far each has delivered.
    List,
    /// Show one subscription.
    Get { id: String },
    /// Change a subscription; delivery carries on from where it is.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        /// A new filter (see `create --filter`).
        #[arg(long, value_name = "POINTER=VALUE", value_parser = parse_filter, conflicts_with = "no_filter")]
        filter: Option<PayloadFilter>,
        /// Remove the filter: deliver every message.
        #[arg(long)]
        no_filter: bool,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Delete a subscription; delivery stops, its dead-letter topic stays.
    Delete { id: String },
    /// Stop delivering where it is.
    Pause { id: String },
    /// Deliver again from where it was paused.
    Resume { id: String },
    /// Deliver again from an offset, a time, the oldest or the newest
    /// message, in every partition.
    #[command(
        after_help = "Examples:\n  raftstream subscriptions replay sub_0123abcd --from-beginning\n  raftstream subscriptions replay sub_0123abcd --since 2h\n  raftstream subscriptions replay sub_0123abcd --from-offset 1200"
    )]
    Replay {
        id: String,
        #[command(flatten)]
        start: StartArgs,
    },
}

/// How a subscription delivers; unset flags take the defaults (create) or
/// stay as they are (update).
#[derive(Args, Debug, Clone, Copy)]
pub struct SettingsArgs {
    /// Messages per POST (default 1).
    #[arg(long)]
    batch_size: Option<u32>,
    /// POSTs of a batch before it is dead-lettered (default 5).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// The wait after the first failed POST, doubled after each (default 500).
    #[arg(long)]
    initial_backoff_ms: Option<u64>,
    /// The longest wait between two POSTs of a batch (default 60000).
    #[arg(long)]
    max_backoff_ms: Option<u64>,
    /// How long one POST may take (default 10000).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// POSTs in flight at once per node (default 4).
    #[arg(long)]
    max_in_flight: Option<u32>,
}

impl SettingsArgs {
    fn settings(self) -> DeliverySettings {
        DeliverySettings {
            batch_size: self.batch_size,
            max_attempts: self.max_attempts,
            initial_backoff_ms: self.initial_backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
            timeout_ms: self.timeout_ms,
            max_in_flight: self.max_in_flight,
        }
    }
}

/// Where delivery starts: one of these, as `consume` takes them.
#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct StartArgs {
    /// Every retained message.
    #[arg(long)]
    from_beginning: bool,
    /// Only messages published from now on.
    #[arg(long)]
    latest: bool,
    /// The same offset in every partition.
    #[arg(long)]
    from_offset: Option<u64>,
    /// The first message at or after this time: a duration ago (`90s`,
    /// `1h`), an RFC 3339 time, or milliseconds since the epoch.
    #[arg(long)]
    since: Option<String>,
}

impl StartArgs {
    /// The start asked for, if any.
    fn start(&self) -> anyhow::Result<Option<DeliveryStart>> {
        Ok(if self.from_beginning {
            Some(DeliveryStart::Earliest)
        } else if self.latest {
            Some(DeliveryStart::Latest)
        } else if let Some(offset) = self.from_offset {
            Some(DeliveryStart::Offset(offset))
        } else if let Some(since) = &self.since {
            Some(DeliveryStart::TimeMs(parse_since(since, now_ms())?))
        } else {
            None
        })
    }
}

/// `--filter POINTER=VALUE`: the pointer is what comes before the first
/// `=`; the value is JSON when it parses as JSON, else the text itself.
fn parse_filter(text: &str) -> Result<PayloadFilter, String> {
    let (pointer, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not POINTER=VALUE (e.g. /type=paid)"))?;
    let equals = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
    Ok(PayloadFilter::new(pointer, equals))
}

fn subscription_json(s: &pb::Subscription) -> Value {
    let settings = s.settings.unwrap_or_default();
    let filter = s.filter.as_ref().map(|f| {
        let equals: Value = serde_json::from_str(&f.equals_json).unwrap_or(Value::Null);
        json!({"pointer": f.pointer, "equals": equals})
    });
    json!({
        "id": s.id, "name": s.name, "topic": s.topic_name, "topic_id": s.topic_id,
        "endpoint": s.endpoint, "filter": filter,
        "settings": {
            "batch_size": settings.batch_size, "max_attempts": settings.max_attempts,
            "initial_backoff_ms": settings.initial_backoff_ms,
            "max_backoff_ms": settings.max_backoff_ms, "timeout_ms": settings.timeout_ms,
            "max_in_flight": settings.max_in_flight,
        },
        "dead_letter_topic": s.dead_letter_topic_name,
        "dead_letter_topic_id": s.dead_letter_topic_id,
        "paused": s.paused, "generation": s.generation,
        "secret_last_four": s.secret_last_four,
        "created_at_ms": s.created_at_ms, "updated_at_ms": s.updated_at_ms,
        "positions": s.positions.iter().map(|p| json!({
            "partition": p.partition, "next_offset": p.next_offset,
            "high_watermark": p.high_watermark, "lag": lag(p),
        })).collect::<Vec<_>>(),
    })
}

/// Messages of a partition not delivered yet; unknown when either end is.
fn lag(p: &pb::PartitionPosition) -> Option<u64> {
    match (p.next_offset, p.high_watermark) {
        (Some(next), Some(end)) => Some(end.saturating_sub(next)),
        // Nothing delivered yet in an empty partition.
        (None, Some(0)) => Some(0),
        _ => None,
    }
}

fn state(s: &pb::Subscription) -> &'static str {
    if s.paused { "paused" } else { "active" }
}

/// One subscription after a change: JSON, or `message` and its id.
fn print_changed(cli: &Cli, s: &pb::Subscription, message: &str) {
    print_outcome(
        cli,
        &subscription_json(s),
        format_args!("{message} subscription {} ({})", s.id, state(s)),
    );
}

pub async fn subscriptions(cli: &Cli, command: &SubscriptionsCommand) -> anyhow::Result<()> {
    // Parsed before connecting: a mistyped --since fails at once, and "1h"
    // means an hour before the command ran.
    let start = match command {
        SubscriptionsCommand::Create { start, .. } => start.start()?,
        SubscriptionsCommand::Replay { start, .. } => match start.start()? {
            Some(start) => Some(start),
            None => bail!(
                "replay from where? give --from-beginning, --latest, --from-offset or --since"
            ),
        },
        _ => None,
    };
    let client = connect(cli).await?;
    match command {
        SubscriptionsCommand::Create {
            name,
            topic,
            endpoint,
            filter,
            dead_letter_topic,
            secret,
            settings,
            start: _,
        } => {
            let mut new =
                NewSubscription::new(name, topic, endpoint).with_settings(settings.settings());
            new.filter = filter.clone();
            new.dead_letter_topic = dead_letter_topic.clone();
            new.secret = secret.clone();
            new.start = start;
            let created = client.create_subscription(new).await?;
            let s = &created.subscription;
            if cli.json {
                let mut value = subscription_json(s);
                value["secret"] = json!(created.secret);
                print_json(&value);
            } else {
                println!(
                    "subscription {} (topic {} → {}, dead letters to {})",
                    s.id, s.topic_name, s.endpoint, s.dead_letter_topic_name
                );
                println!("signing secret (shown once): {}", created.secret);
            }
        }
        SubscriptionsCommand::List => {
            let subscriptions = client.list_subscriptions().await?;
            if cli.json {
                print_json(&json!(
                    subscriptions
                        .iter()
                        .map(subscription_json)
                        .collect::<Vec<_>>()
                ));
                return Ok(());
            }
            let mut table = Table::new();
            table.set_header(["ID", "NAME", "TOPIC", "ENDPOINT", "STATE", "LAG", "SECRET"]);
            for s in &subscriptions {
                let lags: Option<Vec<u64>> = s.positions.iter().map(lag).collect();
                table.add_row(vec![
                    s.id.clone(),
                    s.name.clone(),
                    s.topic_name.clone(),
                    s.endpoint.clone(),
                    state(s).to_string(),
                    lags.map_or("?".into(), |l| l.iter().sum::<u64>().to_string()),
                    format!("…{}", s.secret_last_four),
                ]);
            }
            println!("{table}");
        }
        SubscriptionsCommand::Get { id } => {
            print_json(&subscription_json(&client.subscription(id).await?));
        }
        SubscriptionsCommand::Update {
            id,
            name,
            endpoint,
            filter,
            no_filter,
            settings,
        } => {
            let update = SubscriptionUpdate {
                name: name.clone(),
                endpoint: endpoint.clone(),
                filter: match (filter, no_filter) {
                    (Some(filter), _) => FilterChange::Set(filter.clone()),
                    (None, true) => FilterChange::Remove,
                    (None, false) => FilterChange::Keep,
                },
                settings: settings.settings(),
            };
            let s = client.update_subscription(id, &update).await?;
            print_changed(cli, &s, "updated");
        }
        SubscriptionsCommand::Delete { id } => {
            client.delete_subscription(id).await?;
            print_deleted(cli, "subscription", id);
        }
        SubscriptionsCommand::Pause { id } => {
            print_changed(cli, &client.pause_subscription(id).await?, "paused");
        }
        SubscriptionsCommand::Resume { id } => {
            print_changed(cli, &client.resume_subscription(id).await?, "resumed");
        }
        SubscriptionsCommand::Replay { id, start: _ } => {
            let from = start.context("a replay has a start (checked above)")?;
            let s = client.replay_subscription(id, from).await?;
            print_changed(cli, &s, &format!("replaying (generation {})", s.generation));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn filters_take_json_or_else_text() {
        let filter = parse_filter("/type=paid").unwrap();
        assert_eq!(
            (filter.pointer.as_str(), filter.equals),
            ("/type", json!("paid"))
        );
        assert_eq!(parse_filter("/n=3").unwrap().equals, json!(3));
        assert_eq!(parse_filter("/a=b=c").unwrap().equals, json!("b=c"));
        assert_eq!(parse_filter(r#"/t="x""#).unwrap().equals, json!("x"));
        assert!(parse_filter("/type").is_err());
    }

    #[test]
    fn lag_is_known_only_when_both_ends_are() {
        let position = |next, end| pb::PartitionPosition {
            partition: 0,
            next_offset: next,
            high_watermark: end,
        };
        assert_eq!(lag(&position(Some(3), Some(10))), Some(7));
        assert_eq!(lag(&position(None, Some(0))), Some(0));
        assert_eq!(lag(&position(None, Some(4))), None);
        assert_eq!(lag(&position(Some(3), None)), None);
    }
}
