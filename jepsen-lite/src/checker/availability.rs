//! Availability: the share of sends that succeeded while a fault was in
//! force and outside faults, and how long after each heal the first send
//! succeeded (recovery time).

use serde::Serialize;

use crate::history::Kind;
use crate::history::Op;
use crate::history::Outcome;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Availability {
    pub sends_during_faults: usize,
    pub ok_during_faults: usize,
    pub sends_outside_faults: usize,
    pub ok_outside_faults: usize,
    /// ok ÷ sends, or None without sends.
    pub ok_share_during_faults: Option<f64>,
    pub ok_share_outside_faults: Option<f64>,
    /// Per heal: ms from the heal to the end of the first successful send
    /// that started after it.
    pub recovery_ms: Vec<u64>,
    pub recovery_ms_max: Option<u64>,
    /// Heals after which no send succeeded at all.
    pub never_recovered: usize,
}

pub fn measure(ops: &[Op]) -> Availability {
    let faults: Vec<(u64, u64)> = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Fault { .. }))
        .map(|op| (op.start_us, op.end_us))
        .collect();
    let mut sends: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Send { .. }))
        .collect();
    sends.sort_by_key(|op| op.start_us);
    let mut a = Availability::default();
    for op in &sends {
        let during = faults
            .iter()
            .any(|(s, e)| op.start_us < *e && op.end_us > *s);
        let ok = op.outcome == Outcome::Ok;
        if during {
            a.sends_during_faults += 1;
            a.ok_during_faults += usize::from(ok);
        } else {
            a.sends_outside_faults += 1;
            a.ok_outside_faults += usize::from(ok);
        }
    }
    let share = |ok: usize, all: usize| (all > 0).then(|| ok as f64 / all as f64);
    a.ok_share_during_faults = share(a.ok_during_faults, a.sends_during_faults);
    a.ok_share_outside_faults = share(a.ok_outside_faults, a.sends_outside_faults);
    for (_, heal) in &faults {
        let first_ok = sends
            .iter()
            .filter(|op| op.start_us >= *heal && op.outcome == Outcome::Ok)
            .map(|op| op.end_us)
            .min();
        match first_ok {
            Some(end) => a.recovery_ms.push((end - heal) / 1000),
            None => a.never_recovered += 1,
        }
    }
    a.recovery_ms_max = a.recovery_ms.iter().copied().max();
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::checker::build::H;
    use crate::history::Outcome;

    #[test]
    fn sends_are_split_by_fault_windows_and_recovery_is_timed_from_the_heal() {
        let mut h = H::default();
        h.fault((100_000, 200_000));
        h.send("p0", (0, 10_000), "a", Outcome::Ok, Some((0, 0)));
        h.send("p0", (150_000, 160_000), "b", Outcome::Info, None);
        h.send("p0", (200_000, 210_000), "c", Outcome::Fail, None);
        h.send("p0", (220_000, 250_000), "d", Outcome::Ok, Some((0, 1)));
        let a = super::measure(&h.ops);
        assert_eq!((a.sends_during_faults, a.ok_during_faults), (1, 0));
        assert_eq!((a.sends_outside_faults, a.ok_outside_faults), (3, 2));
        assert_eq!(a.recovery_ms, vec![50]);
    }
}
