//! The history checker: one module per property. Each check returns the
//! anomalies it found, each with the ids of the operations that show it.
//! `availability` adds figures, not anomalies.

pub mod availability;
pub mod divergence;
pub mod duplicates;
pub mod groups;
pub mod lost;
pub mod order;
pub mod phantom;
pub mod polls;
pub mod timestamps;

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde::Serialize;

use crate::history::Kind;
use crate::history::Msg;
use crate::history::Op;
use crate::history::Outcome;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    /// A stable name, e.g. `lost_write`; results.json counts by it.
    pub kind: &'static str,
    pub message: String,
    /// The operations that show it.
    pub ops: Vec<u64>,
}

impl Anomaly {
    pub fn new(kind: &'static str, message: impl Into<String>, ops: Vec<u64>) -> Anomaly {
        Anomaly {
            kind,
            message: message.into(),
            ops,
        }
    }
}

/// Every anomaly kind the checker can report, so that results.json lists
/// zeros too.
pub const KINDS: &[&str] = &[
    CRASH,
    lost::KIND,
    lost::FINAL_READ_FAILED,
    duplicates::KIND,
    phantom::NEVER_SENT,
    phantom::FAILED_SEND_READ,
    divergence::KIND,
    divergence::ACK_MISMATCH,
    polls::SKIP,
    polls::NON_MONOTONIC,
    order::PRODUCER,
    order::REAL_TIME,
    timestamps::TOO_OLD,
    timestamps::MISSED,
    groups::BACKWARDS,
    groups::PAST_END,
];

/// A node process exited although the nemesis did not kill it.
pub const CRASH: &str = "node_crashed";

fn crashes(ops: &[Op]) -> Vec<Anomaly> {
    ops.iter()
        .filter(|op| matches!(op.kind, Kind::Crash { .. }))
        .map(|op| {
            Anomaly::new(
                CRASH,
                op.error.clone().unwrap_or_else(|| "a node crashed".into()),
                vec![op.id],
            )
        })
        .collect()
}

/// The final state of every partition, from the final reads: for each
/// partition, each node's copy.
#[derive(Debug, Default)]
pub struct FinalLogs {
    /// partition → node → (op id, messages).
    pub copies: BTreeMap<u32, BTreeMap<u64, (u64, Vec<Msg>)>>,
    /// Final reads that did not complete: the check cannot be trusted.
    pub failed: Vec<u64>,
}

impl FinalLogs {
    pub fn of(ops: &[Op]) -> FinalLogs {
        let mut logs = FinalLogs::default();
        for op in ops {
            if let Kind::FinalRead {
                node,
                partition,
                messages,
            } = &op.kind
            {
                if op.outcome == Outcome::Ok {
                    logs.copies
                        .entry(*partition)
                        .or_default()
                        .insert(*node, (op.id, messages.clone()));
                } else {
                    logs.failed.push(op.id);
                }
            }
        }
        logs
    }

    /// value → (partition, offset) as any node's final copy holds it; the
    /// first copy wins (divergence reports disagreement).
    pub fn positions(&self) -> HashMap<&str, (u32, u64)> {
        let mut at = HashMap::new();
        for (partition, copies) in &self.copies {
            for (_, messages) in copies.values() {
                for m in messages {
                    at.entry(m.value.as_str()).or_insert((*partition, m.offset));
                }
            }
        }
        at
    }

    /// The longest copy of a partition: the one other checks compare to.
    pub fn longest(&self, partition: u32) -> Option<&(u64, Vec<Msg>)> {
        self.copies
            .get(&partition)?
            .values()
            .max_by_key(|(_, m)| m.len())
    }

    /// One past the last offset any copy of the partition holds.
    pub fn end(&self, partition: u32) -> u64 {
        self.longest(partition)
            .and_then(|(_, m)| m.last())
            .map_or(0, |m| m.offset + 1)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    pub counts: BTreeMap<&'static str, usize>,
    /// Human lines such as "3 of 1200 acknowledged messages lost".
    pub lines: Vec<String>,
    pub availability: availability::Availability,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Runs every check over a history.
pub fn check(ops: &[Op]) -> Report {
    let finals = FinalLogs::of(ops);
    let mut anomalies = Vec::new();
    let mut lines = Vec::new();
    let lost = lost::check(ops, &finals);
    lines.push(lost.summary.clone());
    anomalies.extend(lost.anomalies);
    anomalies.extend(crashes(ops));
    anomalies.extend(duplicates::check(&finals));
    anomalies.extend(phantom::check(ops));
    anomalies.extend(divergence::check(ops, &finals));
    anomalies.extend(polls::check(ops));
    anomalies.extend(order::check(ops, &finals));
    anomalies.extend(timestamps::check(ops, &finals));
    anomalies.extend(groups::check(ops, &finals));
    let availability = availability::measure(ops);
    let mut counts: BTreeMap<&'static str, usize> = KINDS.iter().map(|k| (*k, 0)).collect();
    for a in &anomalies {
        *counts.entry(a.kind).or_default() += 1;
    }
    Report {
        anomalies,
        counts,
        lines,
        availability,
    }
}

/// Shortens a list of op ids for a message.
pub(crate) fn some_ids(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(8).map(u64::to_string).collect();
    if ids.len() > 8 {
        format!("{}, … ({} in all)", shown.join(", "), ids.len())
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod build {
    //! Hand-made histories for the checker's tests.

    use crate::history::Kind;
    use crate::history::Msg;
    use crate::history::Op;
    use crate::history::Outcome;
    use crate::history::Start;
    use crate::history::Via;

    /// An acknowledged send: `(process, (start, end), value, offset)`.
    pub type AckedSend<'a> = (&'a str, (u64, u64), &'a str, u64);

    #[derive(Default)]
    pub struct H {
        pub ops: Vec<Op>,
    }

    pub fn msg(offset: u64, value: &str, timestamp_ms: i64) -> Msg {
        Msg {
            offset,
            value: value.to_string(),
            timestamp_ms,
        }
    }

    impl H {
        /// Sends of `values` by one producer, their outcomes unknown.
        pub fn sent(values: &[&str]) -> H {
            let mut h = H::default();
            for v in values {
                h.send("p0", (0, 1), v, Outcome::Info, None);
            }
            h
        }

        /// `sent(values)`, then found by node 1's final read in that order
        /// (see `final_read`).
        pub fn sent_and_read(values: &[&str]) -> H {
            let mut h = H::sent(values);
            h.final_read(1, values);
            h
        }

        /// Sends, each acknowledged at an offset of partition 0, then node
        /// 1's final read holding their values in offset order. A send is
        /// `(process, (start, end), value, offset)`; the offsets must be 0,
        /// 1, ... in some order.
        pub fn acked_and_read(sends: &[AckedSend]) -> H {
            let mut h = H::default();
            for (process, t, value, offset) in sends {
                h.send(process, *t, value, Outcome::Ok, Some((0, *offset)));
            }
            let mut by_offset = sends.to_vec();
            by_offset.sort_by_key(|(_, _, _, offset)| *offset);
            assert!(
                (0..)
                    .zip(&by_offset)
                    .all(|(i, (_, _, _, offset))| *offset == i),
                "offsets must be 0, 1, ...: {sends:?}"
            );
            let values: Vec<&str> = by_offset.iter().map(|(_, _, value, _)| *value).collect();
            h.final_read(1, &values);
            h
        }

        fn push(&mut self, process: &str, t: (u64, u64), outcome: Outcome, kind: Kind) -> u64 {
            let id = self.ops.len() as u64;
            self.ops.push(Op {
                id,
                process: process.to_string(),
                start_us: t.0,
                end_us: t.1,
                outcome,
                error: None,
                kind,
            });
            id
        }

        /// A send; `at` is (partition, offset) when acknowledged.
        pub fn send(
            &mut self,
            process: &str,
            t: (u64, u64),
            value: &str,
            outcome: Outcome,
            at: Option<(u32, u64)>,
        ) -> u64 {
            self.push(
                process,
                t,
                outcome,
                Kind::Send {
                    value: value.to_string(),
                    via: Via::Grpc,
                    node: 1,
                    partition: at.map(|a| a.0),
                    offset: at.map(|a| a.1),
                    timestamp_ms: at.map(|a| a.1 as i64 * 10),
                },
            )
        }

        pub fn poll(
            &mut self,
            session: u64,
            t: (u64, u64),
            start: Start,
            messages: Vec<Msg>,
        ) -> u64 {
            let next = messages.last().map(|m| m.offset + 1);
            self.push(
                &format!("c{session}"),
                t,
                Outcome::Ok,
                Kind::Poll {
                    session,
                    node: 1,
                    partition: 0,
                    start,
                    messages,
                    next_offset: next,
                },
            )
        }

        pub fn commit(&mut self, t: (u64, u64), offset: u64, outcome: Outcome) -> u64 {
            self.push(
                "c0",
                t,
                outcome,
                Kind::Commit {
                    group: "g".into(),
                    partition: 0,
                    offset,
                },
            )
        }

        pub fn fetch(&mut self, t: (u64, u64), offset: Option<u64>) -> u64 {
            self.push(
                "c0",
                t,
                Outcome::Ok,
                Kind::FetchCommitted {
                    group: "g".into(),
                    partition: 0,
                    offset,
                },
            )
        }

        /// A final read of partition 0 on `node` holding these values at
        /// offsets 0, 1, ... with timestamps 10 × offset.
        pub fn final_read(&mut self, node: u64, values: &[&str]) -> u64 {
            let messages = values
                .iter()
                .enumerate()
                .map(|(i, v)| msg(i as u64, v, i as i64 * 10))
                .collect();
            self.final_messages(node, messages)
        }

        pub fn final_messages(&mut self, node: u64, messages: Vec<Msg>) -> u64 {
            self.push(
                "final",
                (1_000_000, 1_000_001),
                Outcome::Ok,
                Kind::FinalRead {
                    node,
                    partition: 0,
                    messages,
                },
            )
        }

        pub fn fault(&mut self, t: (u64, u64)) -> u64 {
            self.push(
                "nemesis",
                t,
                Outcome::Ok,
                Kind::Fault {
                    name: "kill-one".into(),
                    detail: "n1".into(),
                },
            )
        }

        pub fn kinds(&self) -> Vec<&'static str> {
            super::check(&self.ops)
                .anomalies
                .iter()
                .map(|a| a.kind)
                .collect()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::build::H;

    #[test]
    fn a_clean_history_has_no_anomaly_and_counts_every_kind() {
        let mut h = H::acked_and_read(&[("p0", (0, 10), "a", 0), ("p0", (20, 30), "b", 1)]);
        h.final_read(2, &["a", "b"]);
        let report = super::check(&h.ops);
        assert!(report.is_valid(), "{:?}", report.anomalies);
        assert_eq!(report.counts.len(), super::KINDS.len());
        assert_eq!(report.lines[0], "0 of 2 acknowledged messages lost");
    }
}
