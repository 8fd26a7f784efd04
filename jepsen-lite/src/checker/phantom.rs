//! Values that should not exist: read although no send ever carried them,
//! or read although their send definitely failed.

use std::collections::HashMap;

use super::Anomaly;
use crate::history::Kind;
use crate::history::Msg;
use crate::history::Op;
use crate::history::Outcome;

pub const NEVER_SENT: &str = "never_sent";
pub const FAILED_SEND_READ: &str = "failed_send_read";

fn reads(op: &Op) -> &[Msg] {
    match &op.kind {
        Kind::Poll { messages, .. } | Kind::FinalRead { messages, .. } => messages,
        _ => &[],
    }
}

pub fn check(ops: &[Op]) -> Vec<Anomaly> {
    // value → (send op, whether some attempt may have stored it)
    let mut sends: HashMap<&str, (u64, bool)> = HashMap::new();
    for op in ops {
        if let Kind::Send { value, .. } = &op.kind {
            let maybe = op.outcome != Outcome::Fail;
            let entry = sends.entry(value.as_str()).or_insert((op.id, maybe));
            entry.1 |= maybe;
        }
    }
    let mut anomalies = Vec::new();
    let mut reported = std::collections::HashSet::new();
    for op in ops {
        for m in reads(op) {
            if !reported.insert(m.value.as_str()) {
                continue;
            }
            match sends.get(m.value.as_str()) {
                None => anomalies.push(Anomaly::new(
                    NEVER_SENT,
                    format!(
                        "{:?} at offset {} was never sent (first read by op {})",
                        m.value, m.offset, op.id
                    ),
                    vec![op.id],
                )),
                Some((send, false)) => anomalies.push(Anomaly::new(
                    FAILED_SEND_READ,
                    format!(
                        "{:?} at offset {} was read by op {} although its send (op {send}) failed",
                        m.value, m.offset, op.id
                    ),
                    vec![*send, op.id],
                )),
                Some((_, true)) => {}
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
    use crate::history::Outcome;
    use crate::history::Start;

    #[test]
    fn a_value_nobody_sent_is_reported() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Ok, Some((0, 0)));
        h.poll(
            1,
            (20, 30),
            Start::Offset(0),
            vec![msg(0, "a", 0), msg(1, "zz", 10)],
        );
        h.final_read(1, &["a"]);
        assert!(h.kinds().contains(&super::NEVER_SENT));
    }

    #[test]
    fn a_definitely_failed_send_must_not_be_read_but_an_indeterminate_one_may() {
        let mut h = H::default();
        h.send("p0", (0, 10), "a", Outcome::Fail, None);
        h.send("p0", (0, 10), "b", Outcome::Info, None);
        h.final_read(1, &["a", "b"]);
        assert_eq!(h.kinds(), vec![super::FAILED_SEND_READ]);
    }
}
