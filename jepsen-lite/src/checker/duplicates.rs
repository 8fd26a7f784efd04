//! Duplicates: a value stored at more than one offset. Every send carries a
//! unique value, so any repeat in a final copy is a duplicate.

use std::collections::HashMap;

use super::Anomaly;
use super::FinalLogs;

pub const KIND: &str = "duplicate";

pub fn check(finals: &FinalLogs) -> Vec<Anomaly> {
    let mut anomalies = Vec::new();
    let nodes: std::collections::BTreeSet<u64> = finals
        .copies
        .values()
        .flat_map(|c| c.keys().copied())
        .collect();
    // Each node's copies of all partitions are checked on their own: a
    // value on two offsets of one node is a duplicate wherever it is.
    for node in nodes {
        let mut seen: HashMap<&str, (u32, u64, u64)> = HashMap::new();
        for (partition, copies) in &finals.copies {
            let Some((op, messages)) = copies.get(&node) else {
                continue;
            };
            for m in messages {
                if let Some((p, o, first_op)) = seen.get(m.value.as_str()) {
                    anomalies.push(Anomaly::new(
                        KIND,
                        format!(
                            "node {node} stores {:?} twice: at {p}-{o} and at {partition}-{}",
                            m.value, m.offset
                        ),
                        vec![*first_op, *op],
                    ));
                } else {
                    seen.insert(&m.value, (*partition, m.offset, *op));
                }
            }
        }
    }
    anomalies
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::history::Outcome;

    #[test]
    fn a_value_at_two_offsets_is_a_duplicate() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Ok, Some((0, 0)));
        h.final_read(1, &["a", "a"]);
        assert_eq!(h.kinds(), vec![super::KIND]);
    }

    #[test]
    fn the_same_value_on_two_nodes_is_not_a_duplicate() {
        let mut h = H::acked_and_read(&[("p0", (0, 10), "a", 0)]);
        h.final_read(2, &["a"]);
        assert!(h.kinds().is_empty());
    }
}
