//! Message ids, the one format every API hands out and takes back.
//!
//! A message id is `"<partition>-<offset>"`. A consume across a topic of
//! several partitions adds the consumer's position in every partition just
//! after that message, `"<partition>-<offset>@<n0>.<n1>…"` (`n_i` is the
//! next offset to read in partition `i`), so that resuming from it neither
//! misses nor re-reads a message whatever order the partitions commit in.
//! Publish, gRPC and consume of a one-partition topic give the plain form,
//! so there the id a publish returns is the id a consumer sees; every API
//! that takes an id accepts both forms.

use std::fmt;

use super::Offset;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId {
    pub partition: u32,
    pub offset: Offset,
    /// The next offset to read in every partition, just after this
    /// message; only consumes of topics with several partitions carry it.
    pub next_offsets: Option<Vec<Offset>>,
}

impl MessageId {
    /// The plain id of one message.
    pub fn new(partition: u32, offset: Offset) -> MessageId {
        MessageId {
            partition,
            offset,
            next_offsets: None,
        }
    }

    /// The id of a consumed message, with the consumer's position after it
    /// when the topic has more than one partition (with one, the position
    /// is the message's own offset plus one, which the plain id says).
    pub fn with_position(partition: u32, offset: Offset, next_offsets: &[Offset]) -> MessageId {
        MessageId {
            partition,
            offset,
            next_offsets: (next_offsets.len() > 1).then(|| next_offsets.to_vec()),
        }
    }

    /// Parses either form; `None` for anything else.
    pub fn parse(id: &str) -> Option<MessageId> {
        let (message, position) = match id.split_once('@') {
            Some((message, position)) => (message, Some(position)),
            None => (id, None),
        };
        let (partition, offset) = message.split_once('-')?;
        let next_offsets = match position {
            None => None,
            Some(position) => Some(
                position
                    .split('.')
                    .map(|n| parse_digits(n).map(Offset))
                    .collect::<Option<Vec<Offset>>>()?,
            ),
        };
        Some(MessageId {
            partition: u32::try_from(parse_digits(partition)?).ok()?,
            offset: Offset(parse_digits(offset)?),
            next_offsets,
        })
    }
}

/// Decimal digits only: `u64::from_str` would also take a leading `+`,
/// and then two spellings would name one message.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.offset)?;
        if let Some(next) = &self.next_offsets {
            for (i, offset) in next.iter().enumerate() {
                f.write_str(if i == 0 { "@" } else { "." })?;
                write!(f, "{offset}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_forms_round_trip() {
        let plain = MessageId::new(3, Offset(42));
        assert_eq!(plain.to_string(), "3-42");
        assert_eq!(MessageId::parse("3-42").unwrap(), plain);

        let positioned = MessageId::with_position(1, Offset(7), &[Offset(3), Offset(8), Offset(0)]);
        assert_eq!(positioned.to_string(), "1-7@3.8.0");
        assert_eq!(MessageId::parse("1-7@3.8.0").unwrap(), positioned);

        // With one partition the position adds nothing: the plain form.
        assert_eq!(
            MessageId::with_position(0, Offset(4), &[Offset(5)]),
            MessageId::new(0, Offset(4))
        );
    }

    #[test]
    fn garbage_is_no_id() {
        for bad in [
            "",
            "x",
            "3",
            "a-1",
            "1-",
            "-1",
            "1-2@",
            "1-2@a.b",
            "1-2-3",
            "+1-2",
            "1-+2",
            "1-2@3.",
            "4294967296-0",
        ] {
            assert_eq!(MessageId::parse(bad), None, "{bad}");
        }
    }
}
