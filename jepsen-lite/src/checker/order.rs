//! Order of acknowledged messages within a partition. Offsets are taken
//! from the final copies (an acknowledgement's own offset is checked
//! against them by `divergence`).
//! - Producer order: one producer's later send must not land at an earlier
//!   offset than its earlier send.
//! - Real-time order: a send acknowledged before another send started must
//!   be at a lower offset (the log is linearizable).

use std::collections::BTreeMap;

use super::Anomaly;
use super::FinalLogs;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

pub const PRODUCER: &str = "producer_order";
pub const REAL_TIME: &str = "real_time_order";

struct Placed<'a> {
    op: &'a Op,
    offset: u64,
}

pub fn check(ops: &[Op], finals: &FinalLogs) -> Vec<Anomaly> {
    let positions = finals.positions();
    let mut by_partition: BTreeMap<u32, Vec<Placed>> = BTreeMap::new();
    for op in ops {
        if let Kind::Send { value, .. } = &op.kind
            && op.outcome == Outcome::Ok
            && let Some((p, o)) = positions.get(value.as_str())
        {
            by_partition
                .entry(*p)
                .or_default()
                .push(Placed { op, offset: *o });
        }
    }
    let mut anomalies = Vec::new();
    for (partition, mut placed) in by_partition {
        // Producer order: a producer's sends run one after another.
        let mut by_process: BTreeMap<&str, Vec<&Placed>> = BTreeMap::new();
        for p in &placed {
            by_process.entry(p.op.process.as_str()).or_default().push(p);
        }
        for (process, mut sends) in by_process {
            sends.sort_by_key(|p| p.op.start_us);
            for pair in sends.windows(2) {
                let (earlier, later) = (pair[0], pair[1]);
                if later.offset < earlier.offset {
                    anomalies.push(Anomaly::new(
                        PRODUCER,
                        format!(
                            "producer {process}: a later send is at {partition}-{}, before its earlier send at {partition}-{}",
                            later.offset, earlier.offset
                        ),
                        vec![earlier.op.id, later.op.id],
                    ));
                }
            }
        }
        // Real time, across producers: walking up the offsets, a send that
        // completed before some lower-offset send had even started is out
        // of order. Pairs within one producer were checked above.
        placed.sort_by_key(|p| p.offset);
        // The lower-offset send that started last, and the one that started
        // last among the other producers, so that a pair within one
        // producer never hides a pair across producers.
        let mut latest: Option<&Placed> = None;
        let mut latest_other: Option<&Placed> = None;
        for p in &placed {
            let earlier = match latest {
                Some(l) if l.op.process != p.op.process => Some(l),
                _ => latest_other,
            };
            if let Some(earlier) = earlier
                && p.op.end_us < earlier.op.start_us
            {
                anomalies.push(Anomaly::new(
                    REAL_TIME,
                    format!(
                        "{partition}-{} was acknowledged before the send stored at {partition}-{} started",
                        p.offset, earlier.offset
                    ),
                    vec![p.op.id, earlier.op.id],
                ));
            }
            match latest {
                Some(l) if p.op.start_us <= l.op.start_us => {
                    if l.op.process != p.op.process
                        && latest_other.is_none_or(|o| p.op.start_us > o.op.start_us)
                    {
                        latest_other = Some(p);
                    }
                }
                Some(l) => {
                    if l.op.process != p.op.process {
                        latest_other = Some(l);
                    }
                    latest = Some(p);
                }
                None => latest = Some(p),
            }
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use crate::checker::build::AckedSend;
    use crate::checker::build::H;

    #[test]
    fn acknowledged_sends_are_checked_against_their_final_offsets() {
        // (what the case shows, its sends, the anomalies it must report)
        let cases: &[(&str, &[AckedSend], &[&str])] = &[
            (
                "a producer's later send at an earlier offset is reported",
                &[("p0", (0, 10), "a", 1), ("p0", (20, 30), "b", 0)],
                &[super::PRODUCER],
            ),
            (
                "an acknowledged send ordered after a later one breaks real time",
                &[("p0", (0, 10), "a", 1), ("p1", (20, 30), "b", 0)],
                &[super::REAL_TIME],
            ),
            (
                // p0's send at offset 0 started last of all; p1's at offset 1
                // is concurrent with it, but started after p0's send at
                // offset 2 was acknowledged. p0's own pair breaks producer
                // order as well.
                "a producer's own later send does not hide a real-time violation",
                &[
                    ("p0", (100, 110), "x", 0),
                    ("p1", (50, 120), "y", 1),
                    ("p0", (10, 40), "z", 2),
                ],
                &[super::PRODUCER, super::REAL_TIME],
            ),
            (
                "concurrent sends may land in either order",
                &[("p0", (0, 30), "a", 1), ("p1", (10, 20), "b", 0)],
                &[],
            ),
        ];
        for (case, sends, anomalies) in cases {
            assert_eq!(H::acked_and_read(sends).kinds(), *anomalies, "{case}");
        }
    }
}
