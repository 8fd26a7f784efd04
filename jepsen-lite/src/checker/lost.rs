//! Lost acknowledged writes: a send acknowledged as ok whose value is in no
//! node's final copy of the log. Where it was lost is told relative to the
//! surviving acknowledged writes of its partition, in acknowledgement order:
//! before all of them (prefix), between them (middle) or after (end).

use std::collections::BTreeMap;

use super::Anomaly;
use super::FinalLogs;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

pub const KIND: &str = "lost_write";
pub const FINAL_READ_FAILED: &str = "final_read_failed";

pub struct Lost {
    pub anomalies: Vec<Anomaly>,
    pub summary: String,
}

pub fn check(ops: &[Op], finals: &FinalLogs) -> Lost {
    let mut anomalies = Vec::new();
    if !finals.failed.is_empty() {
        anomalies.push(Anomaly::new(
            FINAL_READ_FAILED,
            format!(
                "{} final reads did not complete after healing: the cluster did not recover",
                finals.failed.len()
            ),
            finals.failed.clone(),
        ));
    }
    let present = finals.positions();
    // partition → acknowledged sends in order of acknowledgement: (end, op id, lost?)
    let mut acked: BTreeMap<u32, Vec<(u64, u64, bool)>> = BTreeMap::new();
    let mut total = 0;
    for op in ops {
        if let (
            Kind::Send {
                value, partition, ..
            },
            Outcome::Ok,
        ) = (&op.kind, op.outcome)
        {
            total += 1;
            let lost = !present.contains_key(value.as_str());
            acked
                .entry(partition.unwrap_or(u32::MAX))
                .or_default()
                .push((op.end_us, op.id, lost));
        }
    }
    let mut lost_count = 0;
    for (partition, mut sends) in acked {
        sends.sort();
        let first_kept = sends.iter().position(|s| !s.2);
        let last_kept = sends.iter().rposition(|s| !s.2);
        let mut by_place: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (i, (_, id, lost)) in sends.iter().enumerate() {
            if !lost {
                continue;
            }
            let place = match (first_kept, last_kept) {
                (Some(first), _) if i < first => "prefix",
                (_, Some(last)) if i > last => "end",
                (Some(_), Some(_)) => "middle",
                _ => "all",
            };
            by_place.entry(place).or_default().push(*id);
        }
        for (place, ids) in by_place {
            lost_count += ids.len();
            anomalies.push(Anomaly::new(
                KIND,
                format!(
                    "{} acknowledged messages of partition {partition} are in no final copy ({place}): ops {}",
                    ids.len(),
                    super::some_ids(&ids)
                ),
                ids,
            ));
        }
    }
    Lost {
        anomalies,
        summary: format!("{lost_count} of {total} acknowledged messages lost"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::history::Outcome;

    #[test]
    fn an_acknowledged_message_missing_from_every_copy_is_lost_and_placed() {
        let mut h = H::default();
        let a = h.send("p0", (0, 10), "a", Outcome::Ok, Some((0, 0)));
        h.send("p0", (20, 30), "b", Outcome::Ok, Some((0, 1)));
        let c = h.send("p0", (40, 50), "c", Outcome::Ok, Some((0, 2)));
        h.send("p0", (60, 70), "d", Outcome::Ok, Some((0, 3)));
        let e = h.send("p0", (80, 90), "e", Outcome::Ok, Some((0, 4)));
        h.final_read(1, &["b", "d"]);
        let report = crate::checker::check(&h.ops);
        let lost: Vec<_> = report
            .anomalies
            .iter()
            .filter(|x| x.kind == super::KIND)
            .collect();
        assert_eq!(lost.len(), 3, "{lost:?}");
        let place_of = |id: u64| {
            lost.iter()
                .find(|x| x.ops.contains(&id))
                .map(|x| x.message.clone())
                .unwrap()
        };
        assert!(place_of(a).contains("(prefix)"));
        assert!(place_of(c).contains("(middle)"));
        assert!(place_of(e).contains("(end)"));
        assert_eq!(report.lines[0], "3 of 5 acknowledged messages lost");
    }

    #[test]
    fn unacknowledged_sends_may_be_missing() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Info, None);
        h.send("p0", (0, 10), "b", Outcome::Fail, None);
        h.final_read(1, &[]);
        assert!(h.kinds().is_empty());
    }

    #[test]
    fn a_failed_final_read_is_reported() {
        let mut h = H::default();
        h.final_read(1, &[]);
        h.ops[0].outcome = Outcome::Info;
        assert_eq!(h.kinds(), vec![super::FINAL_READ_FAILED]);
    }
}
