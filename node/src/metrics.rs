//! Prometheus metrics of one node, served at `/metrics` on the HTTP port.
//!
//! Every node has a registry of its own rather than the process-wide
//! default, so that the nodes a test runs in one process keep their
//! numbers apart. Counters and histograms are updated where the event
//! happens; the per-partition gauges are read from the groups when
//! scraped, so idle partitions cost nothing between scrapes.

use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::Encoder;
use prometheus::HistogramOpts;
use prometheus::HistogramVec;
use prometheus::IntCounter;
use prometheus::IntCounterVec;
use prometheus::IntGaugeVec;
use prometheus::Opts;
use prometheus::Registry;

use crate::group::GroupStatus;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::storage::SyncMetrics;

/// The metrics of one node.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    publish_messages: IntCounterVec,
    publish_bytes: IntCounterVec,
    consume_messages: IntCounterVec,
    consume_bytes: IntCounterVec,
    http_requests: IntCounterVec,
    http_seconds: HistogramVec,
    ingest_deliveries: IntCounterVec,
    platform_events_dropped: IntCounter,
    elections: IntCounter,
    leader_changes: IntCounter,
    partition: PartitionGauges,
    /// Each group's term and leader at the last scrape: elections and
    /// leader changes are counted from how they moved since.
    seen: Mutex<HashMap<GroupId, (u64, Option<NodeId>)>>,
}

/// Gauges set from the groups' state at each scrape.
#[derive(Debug)]
struct PartitionGauges {
    commit_index: IntGaugeVec,
    high_watermark: IntGaugeVec,
    follower_lag: IntGaugeVec,
    leader: IntGaugeVec,
    is_leader: IntGaugeVec,
    quiesced: IntGaugeVec,
}

const PARTITION_LABELS: &[&str] = &["topic", "partition"];

/// `metric`, registered with `registry`.
fn registered<M>(registry: &Registry, metric: M) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    registered(registry, IntCounter::new(name, help)?)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl NodeMetrics {
    /// The node's metrics, with storage's group-commit histograms.
    pub fn new(sync: &SyncMetrics) -> prometheus::Result<NodeMetrics> {
        let r = Registry::new();
        r.register(Box::new(sync.fsync_seconds.clone()))?;
        r.register(Box::new(sync.batch_entries.clone()))?;
        let http_seconds = HistogramVec::new(
            HistogramOpts::new(
                "raftstream_http_request_duration_seconds",
                "How long the HTTP gateway took to answer, by route and status.",
            )
            .buckets(prometheus::exponential_buckets(0.000_5, 2.0, 18)?),
            &["route", "status"],
        )?;
        r.register(Box::new(http_seconds.clone()))?;
        let partition = PartitionGauges {
            commit_index: gauge_vec(
                &r,
                "raftstream_partition_commit_index",
                "The Raft log index this node knows to be committed.",
                PARTITION_LABELS,
            )?,
            high_watermark: gauge_vec(
                &r,
                "raftstream_partition_high_watermark",
                "The offset the next message will get (applied on this node).",
                PARTITION_LABELS,
            )?,
            follower_lag: gauge_vec(
                &r,
                "raftstream_partition_follower_lag",
                "Entries a follower is behind its leader; reported by the leader.",
                &["topic", "partition", "follower"],
            )?,
            leader: gauge_vec(
                &r,
                "raftstream_partition_leader",
                "The node id of the partition's leader as this node knows it (0: none).",
                PARTITION_LABELS,
            )?,
            is_leader: gauge_vec(
                &r,
                "raftstream_partition_is_leader",
                "1 when this node leads the partition.",
                PARTITION_LABELS,
            )?,
            quiesced: gauge_vec(
                &r,
                "raftstream_partition_quiesced",
                "1 when this node has stopped the idle partition's timers.",
                PARTITION_LABELS,
            )?,
        };
        Ok(NodeMetrics {
            publish_messages: counter_vec(
                &r,
                "raftstream_publish_messages_total",
                "Messages this node appended as a partition's leader.",
                &["topic"],
            )?,
            publish_bytes: counter_vec(
                &r,
                "raftstream_publish_bytes_total",
                "Bytes (keys, values, headers) of the messages this node appended.",
                &["topic"],
            )?,
            consume_messages: counter_vec(
                &r,
                "raftstream_consume_messages_total",
                "Messages this node served to consumers from its own replicas.",
                &["topic"],
            )?,
            consume_bytes: counter_vec(
                &r,
                "raftstream_consume_bytes_total",
                "Bytes of the messages this node served to consumers.",
                &["topic"],
            )?,
            http_requests: counter_vec(
                &r,
                "raftstream_http_requests_total",
                "HTTP gateway requests, by route and status.",
                &["route", "status"],
            )?,
            http_seconds,
            ingest_deliveries: counter_vec(
                &r,
                "raftstream_ingest_deliveries_total",
                "Webhook deliveries, by outcome: stored, duplicate, or the error code.",
                &["outcome"],
            )?,
            platform_events_dropped: counter(
                &r,
                "raftstream_platform_events_dropped_total",
                "Platform events dropped: the queue to their publish was full, or the publish failed.",
            )?,
            elections: counter(
                &r,
                "raftstream_elections_total",
                "Raft terms started in the groups this node hosts, seen between scrapes.",
            )?,
            leader_changes: counter(
                &r,
                "raftstream_leader_changes_total",
                "Groups hosted here whose leader changed between two scrapes.",
            )?,
            partition,
            seen: Mutex::new(HashMap::new()),
            registry: r,
        })
    }

    pub fn published(&self, topic: &str, messages: u64, bytes: u64) {
        self.publish_messages
            .with_label_values(&[topic])
            .inc_by(messages);
        self.publish_bytes.with_label_values(&[topic]).inc_by(bytes);
    }

    pub fn consumed(&self, topic: &str, messages: u64, bytes: u64) {
        self.consume_messages
            .with_label_values(&[topic])
            .inc_by(messages);
        self.consume_bytes.with_label_values(&[topic]).inc_by(bytes);
    }

    /// One HTTP request answered: `route` is the matched route template.
    pub fn http_request(&self, route: &str, status: u16, took: Duration) {
        let status = status.to_string();
        let labels = [route, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_seconds
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
    }

    /// The counter of dropped platform events, for the node's emitter.
    pub fn platform_events_dropped(&self) -> IntCounter {
        self.platform_events_dropped.clone()
    }

    pub fn delivery(&self, outcome: &str) {
        self.ingest_deliveries.with_label_values(&[outcome]).inc();
    }

    /// Every metric in Prometheus' text format, the partition gauges set
    /// from `groups` (this node's view of them) first.
    pub fn render(&self, me: NodeId, groups: &[GroupStatus]) -> String {
        self.observe_groups(me, groups);
        let mut text = Vec::new();
        // Encoding into memory fails only on metrics that break the text
        // format, which `new` would have refused.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8_lossy(&text).into_owned()
    }

    fn observe_groups(&self, me: NodeId, groups: &[GroupStatus]) {
        let p = &self.partition;
        // Partitions deleted or moved away since the last scrape go.
        for gauge in [
            &p.commit_index,
            &p.high_watermark,
            &p.follower_lag,
            &p.leader,
            &p.is_leader,
            &p.quiesced,
        ] {
            gauge.reset();
        }
        let mut seen = self.seen.lock();
        for g in groups {
            let (term, leader) = seen.get(&g.group_id).copied().unwrap_or((g.term, g.leader));
            self.elections.inc_by(g.term.saturating_sub(term));
            if g.leader.is_some() && g.leader != leader {
                self.leader_changes.inc();
            }
            seen.insert(g.group_id, (g.term, g.leader));
            if g.group_id == GroupId::META {
                continue;
            }
            let partition = g.partition.to_string();
            let labels = [g.topic.as_str(), partition.as_str()];
            p.commit_index
                .with_label_values(&labels)
                .set(gauge(g.commit_index));
            p.high_watermark
                .with_label_values(&labels)
                .set(gauge(g.high_watermark.0));
            p.leader
                .with_label_values(&labels)
                .set(gauge(g.leader.map_or(0, |id| id.0)));
            p.is_leader
                .with_label_values(&labels)
                .set(i64::from(g.leader == Some(me)));
            p.quiesced
                .with_label_values(&labels)
                .set(i64::from(g.quiesced));
            for (follower, lag) in &g.replica_lag {
                if *follower == me {
                    continue;
                }
                let follower = follower.to_string();
                p.follower_lag
                    .with_label_values(&[g.topic.as_str(), partition.as_str(), follower.as_str()])
                    .set(gauge(*lag));
            }
        }
        let hosted: HashSet<GroupId> = groups.iter().map(|g| g.group_id).collect();
        seen.retain(|id, _| hosted.contains(id));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Offset;

    fn status(group: u64, term: u64, leader: Option<u64>) -> GroupStatus {
        GroupStatus {
            group_id: GroupId(group),
            topic: "t".into(),
            partition: 0,
            leader: leader.map(NodeId),
            term,
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            replicas: vec![],
            replica_lag: BTreeMap::new(),
            high_watermark: Offset(0),
            log_start_offset: Offset(0),
            quiesced: false,
        }
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    }

    #[test]
    fn elections_and_leader_changes_count_from_the_second_sighting_of_a_group() {
        let sync = crate::storage::SyncMetrics::new_for_test();
        let metrics = NodeMetrics::new(&sync).unwrap();
        // First seen at term 7: what came before this node's start is not
        // counted.
        let text = metrics.render(NodeId(1), &[status(1 << 20, 7, Some(2))]);
        assert_eq!(value(&text, "raftstream_elections_total"), 0.0);
        assert_eq!(value(&text, "raftstream_leader_changes_total"), 0.0);
        // Two terms later, under another leader.
        let text = metrics.render(NodeId(1), &[status(1 << 20, 9, Some(1))]);
        assert_eq!(value(&text, "raftstream_elections_total"), 2.0);
        assert_eq!(value(&text, "raftstream_leader_changes_total"), 1.0);
        assert_eq!(
            value(
                &text,
                "raftstream_partition_is_leader{partition=\"0\",topic=\"t\"}"
            ),
            1.0
        );
        // A group that went away leaves no gauge behind.
        let text = metrics.render(NodeId(1), &[]);
        assert!(!text.contains("raftstream_partition_is_leader{"), "{text}");
    }

    #[test]
    fn counters_are_labelled_by_topic_route_and_outcome() {
        let metrics = NodeMetrics::new(&crate::storage::SyncMetrics::new_for_test()).unwrap();
        metrics.published("orders", 3, 30);
        metrics.consumed("orders", 2, 20);
        metrics.http_request("/healthz", 200, Duration::from_millis(3));
        metrics.delivery("duplicate");
        let text = metrics.render(NodeId(1), &[]);
        for (series, expected) in [
            ("raftstream_publish_messages_total{topic=\"orders\"}", 3.0),
            ("raftstream_publish_bytes_total{topic=\"orders\"}", 30.0),
            ("raftstream_consume_messages_total{topic=\"orders\"}", 2.0),
            ("raftstream_consume_bytes_total{topic=\"orders\"}", 20.0),
            (
                "raftstream_http_requests_total{route=\"/healthz\",status=\"200\"}",
                1.0,
            ),
            (
                "raftstream_ingest_deliveries_total{outcome=\"duplicate\"}",
                1.0,
            ),
        ] {
            assert_eq!(value(&text, series), expected, "{series}");
        }
    }
}

/// The README's metrics table is the documentation of every metric: the
/// node exports exactly the metrics it lists, of the types it says.
#[cfg(test)]
mod documented {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::Offset;

    #[test]
    fn the_readme_table_lists_every_exported_metric() {
        #[allow(clippy::unwrap_used)]
        let metrics = NodeMetrics::new(&crate::storage::SyncMetrics::new_for_test()).unwrap();
        // Labelled metrics appear in the output once they have a series.
        metrics.published("t", 1, 1);
        metrics.consumed("t", 1, 1);
        metrics.http_request("/", 200, Duration::ZERO);
        metrics.delivery("stored");
        let mut status = GroupStatus {
            group_id: GroupId(1 << 20),
            topic: "t".into(),
            partition: 0,
            leader: Some(NodeId(1)),
            term: 1,
            commit_index: 0,
            applied_index: 0,
            last_log_index: 0,
            replicas: vec![],
            replica_lag: Default::default(),
            high_watermark: Offset(0),
            log_start_offset: Offset(0),
            quiesced: false,
        };
        status.replica_lag.insert(NodeId(2), 0);
        let exported: BTreeSet<(String, String)> = metrics
            .render(NodeId(1), &[status])
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect();
        let documented: BTreeSet<(String, String)> = include_str!("../../README.md")
            .lines()
            .filter_map(|l| l.strip_prefix("| `raftstream_"))
            .filter_map(|l| {
                let mut cells = l.split('|');
                let name = cells.next()?.trim().trim_end_matches('`');
                let kind = cells.next()?.trim();
                Some((format!("raftstream_{name}"), kind.to_string()))
            })
            .collect();
        assert_eq!(exported, documented);
    }
}
