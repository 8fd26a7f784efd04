//! Two values at one offset: on one node (two reads from it disagree), or
//! across nodes (two copies disagree), or an acknowledgement that named an
//! offset which finally holds another value.

use std::collections::BTreeMap;
use std::collections::HashMap;

use super::Anomaly;
use super::FinalLogs;
use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

pub const KIND: &str = "divergent_offset";
pub const ACK_MISMATCH: &str = "ack_offset_mismatch";

pub fn check(ops: &[Op], finals: &FinalLogs) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    // (partition, offset) → first (value, node, op) read there, polls and final reads alike.
    let mut at: HashMap<(u32, u64), (&str, u64, u64)> = HashMap::new();
    let mut reported = std::collections::HashSet::new();
    for op in ops {
        let (partition, node, messages) = match &op.kind {
            Kind::Poll {
                partition,
                node,
                messages,
                ..
            }
            | Kind::FinalRead {
                partition,
                node,
                messages,
            } if op.outcome == Outcome::Ok => (*partition, *node, messages),
            _ => continue,
        };
        for m in messages {
            let key = (partition, m.offset);
            match at.get(&key) {
                None => {
                    at.insert(key, (&m.value, node, op.id));
                }
                Some((value, first_node, first_op))
                    if *value != m.value && reported.insert(key) =>
                {
                    let place = if *first_node == node {
                        format!("on node {node}")
                    } else {
                        format!("across nodes {first_node} and {node}")
                    };
                    anomalies.push(Anomaly::new(
                        KIND,
                        format!(
                            "offset {partition}-{} holds {value:?} and {:?} ({place})",
                            m.offset, m.value
                        ),
                        vec![*first_op, op.id],
                    ));
                }
                Some(_) => {}
            }
        }
    }
    // Acknowledgements against the final copies.
    let finals_at: BTreeMap<(u32, u64), (&str, u64)> = finals
        .copies
        .iter()
        .flat_map(|(p, copies)| {
            copies.values().flat_map(move |(op, messages)| {
                messages
                    .iter()
                    .map(move |m| ((*p, m.offset), (m.value.as_str(), *op)))
            })
        })
        .collect();
    for op in ops {
        let Kind::Send {
            value,
            partition: Some(p),
            offset: Some(o),
            ..
        } = &op.kind
        else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        if let Some((stored, final_op)) = finals_at.get(&(*p, *o))
            && *stored != value
        {
            anomalies.push(Anomaly::new(
                ACK_MISMATCH,
                format!("{value:?} was acknowledged at {p}-{o}, which finally holds {stored:?}"),
                vec![op.id, *final_op],
            ));
        }
    }
    anomalies
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::checker::build::msg;
    use crate::history::Outcome;
    use crate::history::Start;

    #[test]
    fn two_nodes_disagreeing_on_an_offset_diverge() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Info, None);
        h.send("p0", (0, 10), "b", Outcome::Info, None);
        h.final_read(1, &["a"]);
        h.final_read(2, &["b"]);
        assert_eq!(h.kinds(), vec![super::KIND]);
    }

    #[test]
    fn a_lagging_copy_is_not_divergent() {
        let mut h = H::acked_and_read(&[("p0", (0, 10), "a", 0), ("p0", (20, 30), "b", 1)]);
        h.final_read(2, &["a"]);
        assert!(h.kinds().is_empty());
    }

    #[test]
    fn a_poll_that_saw_another_value_diverges_from_the_final_copy() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Info, None);
        h.send("p0", (0, 10), "b", Outcome::Ok, Some((0, 0)));
        h.poll(1, (20, 30), Start::Offset(0), vec![msg(0, "a", 0)]);
        h.final_read(1, &["b"]);
        assert_eq!(h.kinds(), vec![super::KIND]);
    }

    #[test]
    fn an_acknowledged_offset_holding_another_value_is_a_mismatch() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Ok, Some((0, 1)));
        h.send("p0", (0, 10), "b", Outcome::Info, None);
        h.final_read(1, &["a", "b"]);
        assert_eq!(h.kinds(), vec![super::ACK_MISMATCH]);
    }
}
