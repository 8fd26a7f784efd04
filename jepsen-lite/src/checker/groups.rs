//! Consumer-group offsets. Each group is committed by one consumer that
//! only moves forward, so a committed offset read back must be at least
//! every commit acknowledged before the read started and at least what an
//! earlier read returned; and it must never point past the end of the log.

use std::collections::BTreeMap;

use super::Anomaly;
use super::FinalLogs;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

pub const BACKWARDS: &str = "group_offset_backwards";
pub const PAST_END: &str = "group_offset_past_end";

#[derive(Default)]
struct Group<'a> {
    commits: Vec<(&'a Op, u64)>,
    fetches: Vec<(&'a Op, Option<u64>)>,
}

pub fn check(ops: &[Op], finals: &FinalLogs) -> Vec<Anomaly> {
    let mut groups: BTreeMap<(&str, u32), Group> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.outcome == Outcome::Ok) {
        let (Kind::Commit {
            group, partition, ..
        }
        | Kind::FetchCommitted {
            group, partition, ..
        }) = &op.kind
        else {
            continue;
        };
        let g = groups.entry((group, *partition)).or_default();
        match op.kind {
            Kind::Commit { offset, .. } => g.commits.push((op, offset)),
            Kind::FetchCommitted { offset, .. } => g.fetches.push((op, offset)),
            _ => {}
        }
    }
    let mut anomalies = Vec::new();
    for ((group, partition), g) in groups {
        let end = finals
            .copies
            .contains_key(&partition)
            .then(|| finals.end(partition));
        for (fetch, value) in &g.fetches {
            if let Some((commit, offset)) = highest_finished_before(&g.commits, fetch)
                && value.is_none_or(|v| v < *offset)
            {
                anomalies.push(Anomaly::new(
                    BACKWARDS,
                    format!(
                        "group {group} partition {partition}: read {value:?} after offset {offset} was committed"
                    ),
                    vec![commit.id, fetch.id],
                ));
            }
            if let Some((earlier, Some(earlier_value))) = highest_finished_before(&g.fetches, fetch)
                && value.is_none_or(|v| v < *earlier_value)
            {
                anomalies.push(Anomaly::new(
                    BACKWARDS,
                    format!(
                        "group {group} partition {partition}: read {value:?} after an earlier read saw {earlier_value}"
                    ),
                    vec![earlier.id, fetch.id],
                ));
            }
            if let (Some(v), Some(end)) = (value, end)
                && *v > end
            {
                anomalies.push(Anomaly::new(
                    PAST_END,
                    format!(
                        "group {group} partition {partition}: committed offset {v} is past the log's end {end}"
                    ),
                    vec![fetch.id],
                ));
            }
        }
    }
    anomalies
}

/// Of the operations that finished before `fetch` started, the one with the
/// highest offset: what `fetch` must read at least.
fn highest_finished_before<'a, 'o, T: Ord>(
    ops: &'a [(&'o Op, T)],
    fetch: &Op,
) -> Option<&'a (&'o Op, T)> {
    ops.iter()
        .filter(|(op, _)| op.end_us < fetch.start_us)
        .max_by_key(|(_, offset)| offset)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::history::Outcome;

    #[test]
    fn reads_of_forward_commits_are_clean() {
        let mut h = H::sent_and_read(&["a", "b", "c"]);
        h.commit((10, 20), 1, Outcome::Ok);
        h.fetch((30, 40), Some(1));
        h.commit((50, 60), 3, Outcome::Ok);
        h.fetch((55, 70), Some(1));
        h.fetch((80, 90), Some(3));
        assert!(h.kinds().is_empty());
    }

    #[test]
    fn a_read_below_an_acknowledged_commit_goes_backwards() {
        let mut h = H::sent_and_read(&["a", "b", "c"]);
        h.commit((10, 20), 2, Outcome::Ok);
        h.fetch((30, 40), Some(1));
        assert_eq!(h.kinds(), vec![super::BACKWARDS]);
    }

    #[test]
    fn a_commit_past_the_end_of_the_log_is_reported() {
        let mut h = H::sent_and_read(&["a", "b", "c"]);
        h.commit((10, 20), 7, Outcome::Ok);
        h.fetch((30, 40), Some(7));
        assert_eq!(h.kinds(), vec![super::PAST_END]);
    }
}
