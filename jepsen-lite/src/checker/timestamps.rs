//! Replay by timestamp: a poll from time T must start at the first message
//! stamped at or after T. Against the final copy of the partition, its
//! first message must not be stamped before T (too old), and no message
//! before it may be stamped at or after T (missed).

use super::Anomaly;
use super::FinalLogs;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;
use crate::history::Start;

pub const TOO_OLD: &str = "timestamp_too_old";
pub const MISSED: &str = "timestamp_missed";

pub fn check(ops: &[Op], finals: &FinalLogs) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    for op in ops {
        let Kind::Poll {
            partition,
            start: Start::Timestamp(since),
            messages,
            ..
        } = &op.kind
        else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let Some(first) = messages.first() else {
            continue;
        };
        if first.timestamp_ms < *since {
            anomalies.push(Anomaly::new(
                TOO_OLD,
                format!(
                    "a read from time {since} began at {partition}-{}, stamped {}",
                    first.offset, first.timestamp_ms
                ),
                vec![op.id],
            ));
        }
        if let Some((final_op, log)) = finals.longest(*partition)
            && let Some(earlier) = log
                .iter()
                .find(|m| m.offset < first.offset && m.timestamp_ms >= *since)
        {
            anomalies.push(Anomaly::new(
                MISSED,
                format!(
                    "a read from time {since} began at {partition}-{}, but {partition}-{} is stamped {}",
                    first.offset, earlier.offset, earlier.timestamp_ms
                ),
                vec![op.id, *final_op],
            ));
        }
    }
    anomalies
}

#[cfg(test)]
mod tests {
    use crate::checker::build::H;
    use crate::checker::build::msg;
    use crate::history::Msg;
    use crate::history::Start;

    #[test]
    fn a_replay_from_time_5_must_start_at_the_first_message_stamped_since() {
        // The final copy holds a, b and c, stamped 0, 10 and 20.
        let cases: Vec<(&str, Vec<Msg>, &[&str])> = vec![
            (
                "a replay from the right message is clean",
                vec![msg(1, "b", 10), msg(2, "c", 20)],
                &[],
            ),
            (
                "a replay returning an older message is too old",
                vec![msg(0, "a", 0), msg(1, "b", 10)],
                &[super::TOO_OLD],
            ),
            (
                "a replay starting past a matching message misses it",
                vec![msg(2, "c", 20)],
                &[super::MISSED],
            ),
        ];
        for (case, polled, anomalies) in cases {
            let mut h = H::sent_and_read(&["a", "b", "c"]);
            h.poll(1, (5, 6), Start::Timestamp(5), polled);
            assert_eq!(h.kinds(), anomalies, "{case}");
        }
    }
}
