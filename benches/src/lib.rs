//! The pieces of `loadgen` that need no server: the payload every message
//! carries, the ledger of what was acknowledged, the check that consumers read
//! exactly that, and latency summaries.
//!
//! Every message starts with who sent it and when, so that a consumer can
//! attribute it to one publish of one run and measure publish-to-consume
//! latency without any state shared with the producer.

use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Run id, producer, sequence and send time: four little-endian integers.
pub const HEADER_BYTES: usize = 4 + 4 + 8 + 8;

/// What a message says about its own origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub producer: u32,
    pub seq: u64,
    /// Wall-clock send time, nanoseconds since the Unix epoch. Producer and
    /// consumer run in one process, so the clocks agree.
    pub sent_ns: u64,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Stamp {
    /// A binary payload of exactly `size` bytes (at least [`HEADER_BYTES`]).
    pub fn encode_binary(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(HEADER_BYTES));
        out.extend_from_slice(&self.run.to_le_bytes());
        out.extend_from_slice(&self.producer.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sent_ns.to_le_bytes());
        out.resize(size.max(HEADER_BYTES), b'x');
        out
    }

    pub fn decode_binary(bytes: &[u8]) -> Option<Stamp> {
        let run = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let producer = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let sent_ns = u64::from_le_bytes(bytes.get(16..24)?.try_into().ok()?);
        Some(Stamp {
            run,
            producer,
            seq,
            sent_ns,
        })
    }

    /// A JSON object (the HTTP gateway takes JSON objects only) padded to
    /// `size` bytes when `size` is larger than the object without padding.
    pub fn encode_json(&self, size: usize) -> serde_json::Value {
        let bare = format!(
            r#"{{"r":{},"p":{},"s":{},"t":{},"x":""}}"#,
            self.run, self.producer, self.seq, self.sent_ns
        );
        let pad = size.saturating_sub(bare.len());
        serde_json::json!({
            "r": self.run,
            "p": self.producer,
            "s": self.seq,
            "t": self.sent_ns,
            "x": "x".repeat(pad),
        })
    }

    pub fn decode_json(value: &serde_json::Value) -> Option<Stamp> {
        Some(Stamp {
            run: u32::try_from(value.get("r")?.as_u64()?).ok()?,
            producer: u32::try_from(value.get("p")?.as_u64()?).ok()?,
            seq: value.get("s")?.as_u64()?,
            sent_ns: value.get("t")?.as_u64()?,
        })
    }
}

/// The outcome of one publish, as the producer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    NotSent = 0,
    Acked = 1,
    /// Refused, timed out or unknown: it may or may not be stored, so a
    /// consumer may read it at most once.
    Errored = 2,
}

/// Per producer, the outcome of every sequence number it used.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    producers: Vec<Vec<Outcome>>,
}

impl Ledger {
    pub fn record(&mut self, producer: u32, seq: u64, outcome: Outcome) {
        let p = producer as usize;
        if self.producers.len() <= p {
            self.producers.resize_with(p + 1, Vec::new);
        }
        let seqs = &mut self.producers[p];
        let s = seq as usize;
        if seqs.len() <= s {
            seqs.resize(s + 1, Outcome::NotSent);
        }
        seqs[s] = outcome;
    }

    pub fn merge(&mut self, other: Ledger) {
        for (p, seqs) in other.producers.into_iter().enumerate() {
            for (s, outcome) in seqs.into_iter().enumerate() {
                if outcome != Outcome::NotSent {
                    self.record(p as u32, s as u64, outcome);
                }
            }
        }
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.producers
            .iter()
            .flatten()
            .filter(|o| **o == outcome)
            .count() as u64
    }

    fn outcome(&self, producer: u32, seq: u64) -> Outcome {
        self.producers
            .get(producer as usize)
            .and_then(|seqs| seqs.get(seq as usize))
            .copied()
            .unwrap_or(Outcome::NotSent)
    }
}

/// How many times consumers read each (producer, sequence) of one run.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    counts: Vec<Vec<u16>>,
    /// Messages of other runs (a reused topic): skipped, only counted.
    pub foreign: u64,
    /// Messages whose payload is not a loadgen stamp.
    pub undecodable: u64,
}

impl Reads {
    pub fn record(&mut self, run: u32, stamp: Option<Stamp>) {
        let Some(stamp) = stamp else {
            self.undecodable += 1;
            return;
        };
        if stamp.run != run {
            self.foreign += 1;
            return;
        }
        let p = stamp.producer as usize;
        if self.counts.len() <= p {
            self.counts.resize_with(p + 1, Vec::new);
        }
        let seqs = &mut self.counts[p];
        let s = stamp.seq as usize;
        if seqs.len() <= s {
            seqs.resize(s + 1, 0);
        }
        seqs[s] = seqs[s].saturating_add(1);
    }

    pub fn merge(&mut self, other: Reads) {
        self.foreign += other.foreign;
        self.undecodable += other.undecodable;
        for (p, seqs) in other.counts.into_iter().enumerate() {
            if self.counts.len() <= p {
                self.counts.resize_with(p + 1, Vec::new);
            }
            let mine = &mut self.counts[p];
            if mine.len() < seqs.len() {
                mine.resize(seqs.len(), 0);
            }
            for (s, n) in seqs.into_iter().enumerate() {
                mine[s] = mine[s].saturating_add(n);
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().map(|n| u64::from(*n)).sum()
    }
}

/// The comparison of what was acknowledged with what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub acked: u64,
    pub errored: u64,
    /// Acknowledged messages that no consumer read.
    pub missing: u64,
    /// Messages read more than once.
    pub duplicated: u64,
    /// Messages read that were never sent, or not by this run's producers.
    pub unexpected: u64,
    /// Errored publishes that were stored after all (read exactly once).
    pub errored_but_stored: u64,
    pub undecodable: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0 && self.undecodable == 0
    }
}

/// Every acknowledged message must be read exactly once; an errored one at
/// most once; nothing else at all.
pub fn verify(ledger: &Ledger, reads: &Reads) -> Verification {
    let mut v = Verification {
        acked: ledger.count(Outcome::Acked),
        errored: ledger.count(Outcome::Errored),
        undecodable: reads.undecodable,
        ..Default::default()
    };
    for (p, seqs) in ledger.producers.iter().enumerate() {
        for (s, outcome) in seqs.iter().enumerate() {
            let n = reads
                .counts
                .get(p)
                .and_then(|c| c.get(s))
                .copied()
                .unwrap_or(0);
            match (outcome, n) {
                (_, n) if n > 1 => v.duplicated += 1,
                (Outcome::Acked, 0) => v.missing += 1,
                (Outcome::Errored, 1) => v.errored_but_stored += 1,
                (Outcome::NotSent, 1) => v.unexpected += 1,
                _ => {}
            }
        }
    }
    for (p, seqs) in reads.counts.iter().enumerate() {
        for (s, n) in seqs.iter().enumerate() {
            if *n > 0 && ledger.outcome(p as u32, s as u64) == Outcome::NotSent {
                let counted_above = ledger.producers.get(p).is_some_and(|seqs| s < seqs.len());
                if !counted_above {
                    v.unexpected += 1;
                }
            }
        }
    }
    v
}

/// Latencies in microseconds, from 1 µs to 10 minutes at three significant
/// figures.
pub fn latency_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
}

/// p50, p99 and p99.9 in milliseconds, and the sample count.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stamp(producer: u32, seq: u64) -> Stamp {
        Stamp {
            run: 7,
            producer,
            seq,
            sent_ns: 123,
        }
    }

    #[test]
    fn stamps_round_trip_in_both_encodings_at_the_requested_size() {
        let s = stamp(3, 99);
        let bytes = s.encode_binary(100);
        assert_eq!(bytes.len(), 100);
        assert_eq!(Stamp::decode_binary(&bytes), Some(s));
        assert_eq!(Stamp::decode_binary(&bytes[..10]), None);
        let json = s.encode_json(200);
        assert_eq!(serde_json::to_vec(&json).unwrap().len(), 200);
        assert_eq!(Stamp::decode_json(&json), Some(s));
    }

    fn check(acked: &[(u32, u64)], errored: &[(u32, u64)], read: &[(u32, u64)]) -> Verification {
        let mut ledger = Ledger::default();
        for (p, s) in acked {
            ledger.record(*p, *s, Outcome::Acked);
        }
        for (p, s) in errored {
            ledger.record(*p, *s, Outcome::Errored);
        }
        let mut reads = Reads::default();
        for (p, s) in read {
            reads.record(7, Some(stamp(*p, *s)));
        }
        verify(&ledger, &reads)
    }

    #[test]
    fn reading_exactly_the_acknowledged_messages_verifies() {
        let v = check(&[(0, 0), (0, 1), (1, 0)], &[], &[(1, 0), (0, 1), (0, 0)]);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.acked, 3);
    }

    #[test]
    fn a_missing_acknowledged_message_fails() {
        let v = check(&[(0, 0), (0, 1)], &[], &[(0, 0)]);
        assert_eq!(v.missing, 1);
        assert!(!v.ok());
    }

    #[test]
    fn a_duplicate_fails_even_of_an_errored_publish() {
        assert_eq!(check(&[(0, 0)], &[], &[(0, 0), (0, 0)]).duplicated, 1);
        assert_eq!(check(&[], &[(0, 0)], &[(0, 0), (0, 0)]).duplicated, 1);
    }

    #[test]
    fn a_message_never_sent_fails() {
        assert_eq!(check(&[(0, 0)], &[], &[(0, 0), (0, 5)]).unexpected, 1);
        assert_eq!(check(&[(0, 0)], &[], &[(0, 0), (4, 0)]).unexpected, 1);
        assert_eq!(check(&[(0, 1)], &[], &[(0, 1), (0, 0)]).unexpected, 1);
    }

    #[test]
    fn an_errored_publish_may_be_read_once_or_not_at_all() {
        let v = check(&[(0, 0)], &[(0, 1), (0, 2)], &[(0, 0), (0, 2)]);
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.errored_but_stored, 1);
    }

    #[test]
    fn other_runs_are_skipped() {
        let mut reads = Reads::default();
        reads.record(8, Some(stamp(0, 0)));
        reads.record(8, None);
        assert_eq!((reads.total(), reads.foreign, reads.undecodable), (0, 1, 1));
    }
}
