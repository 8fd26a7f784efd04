//! Within one consumer session, polls move forward without skipping or
//! going back: a poll returns consecutive offsets starting exactly where it
//! asked (the offset, or the one after the message id), and the next poll
//! asks where the previous one ended.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::Anomaly;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;
use crate::history::Start;

pub const SKIP: &str = "poll_skip";
pub const NON_MONOTONIC: &str = "poll_non_monotonic";

pub fn check(ops: &[Op]) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let mut sessions: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if let Kind::Poll { session, .. } = &op.kind
            && op.outcome == Outcome::Ok
        {
            sessions.entry(*session).or_default().push(op);
        }
    }
    for (session, mut polls) in sessions {
        polls.sort_by_key(|op| op.start_us);
        // The last message the session saw: (offset, op id).
        let mut last: Option<(u64, u64)> = None;
        for op in polls {
            let Kind::Poll {
                start, messages, ..
            } = &op.kind
            else {
                continue;
            };
            let expected_first = match start {
                Start::Offset(o) => Some(*o),
                Start::After(o) => Some(o + 1),
                Start::Timestamp(_) => None,
            };
            if let (Some(first), Some(m)) = (expected_first, messages.first()) {
                let kind = match m.offset.cmp(&first) {
                    Ordering::Greater => Some(SKIP),
                    Ordering::Less => Some(NON_MONOTONIC),
                    Ordering::Equal => None,
                };
                if let Some(kind) = kind {
                    anomalies.push(Anomaly::new(
                        kind,
                        format!(
                            "session {session}: asked from offset {first}, got {} first",
                            m.offset
                        ),
                        vec![op.id],
                    ));
                }
            }
            if let (Some((last_offset, last_op)), Some(m)) = (last, messages.first())
                && m.offset <= last_offset
            {
                anomalies.push(Anomaly::new(
                    NON_MONOTONIC,
                    format!(
                        "session {session}: offset {} after offset {last_offset}",
                        m.offset
                    ),
                    vec![last_op, op.id],
                ));
            }
            for pair in messages.windows(2) {
                let (from, to) = (pair[0].offset, pair[1].offset);
                let step = if to > from + 1 {
                    Some((SKIP, "jumped"))
                } else if to <= from {
                    Some((NON_MONOTONIC, "went"))
                } else {
                    None
                };
                if let Some((kind, how)) = step {
                    anomalies.push(Anomaly::new(
                        kind,
                        format!("session {session}: one poll {how} from offset {from} to {to}"),
                        vec![op.id],
                    ));
                }
            }
            if let Some(m) = messages.last() {
                last = Some((m.offset, op.id));
            }
        }
    }
    anomalies
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::checker::build::msg;
    use crate::history::Start;

    /// Session 1's first poll, from offset 0, reads offsets 0 and 1.
    fn first_poll_reads_offsets_0_and_1(h: &mut H) {
        h.poll(
            1,
            (10, 20),
            Start::Offset(0),
            vec![msg(0, "v0", 0), msg(1, "v1", 10)],
        );
    }

    #[test]
    fn consecutive_polls_from_where_the_last_ended_are_clean() {
        let mut h = H::sent(&["v0", "v1", "v2"]);
        first_poll_reads_offsets_0_and_1(&mut h);
        h.poll(1, (30, 40), Start::Offset(2), vec![msg(2, "v2", 20)]);
        h.poll(1, (50, 60), Start::After(2), vec![]);
        assert!(h.kinds().is_empty());
    }

    #[test]
    fn a_poll_that_starts_later_than_asked_skips() {
        let mut h = H::sent(&["v0", "v1", "v2"]);
        h.poll(1, (10, 20), Start::Offset(0), vec![msg(1, "v1", 10)]);
        assert_eq!(h.kinds(), vec![super::SKIP]);
    }

    #[test]
    fn a_gap_inside_a_poll_skips() {
        let mut h = H::sent(&["v0", "v1", "v2"]);
        h.poll(
            1,
            (10, 20),
            Start::After(0),
            vec![msg(1, "v1", 10), msg(2, "v2", 20), msg(4, "v0", 0)],
        );
        assert!(h.kinds().contains(&super::SKIP));
    }

    #[test]
    fn a_later_poll_returning_an_earlier_offset_is_non_monotonic() {
        let mut h = H::sent(&["v0", "v1", "v2"]);
        first_poll_reads_offsets_0_and_1(&mut h);
        h.poll(1, (30, 40), Start::Timestamp(0), vec![msg(0, "v0", 0)]);
        assert_eq!(h.kinds(), vec![super::NON_MONOTONIC]);
    }
}
