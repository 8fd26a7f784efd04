//! The domain model: plain values every layer may name, from the state
//! machines up to the wire adapters. It depends on nothing of the node's
//! own, so naming one of its items never pulls a module into an import
//! cycle.

mod ids;
mod message_id;

pub use self::ids::GroupId;
pub use self::ids::MAX_PARTITIONS;
pub use self::ids::NodeId;
pub use self::ids::Offset;
pub use self::ids::PARTITION_BITS;
pub use self::ids::TopicId;
pub use self::message_id::MessageId;

/// A topic named by id or by name, as every API accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicName {
    Id(TopicId),
    Name(String),
}

impl TopicName {
    /// Digits name a topic by id (names may not be numbers).
    pub fn parse(text: &str) -> TopicName {
        match text.parse::<u64>() {
            Ok(id) => TopicName::Id(TopicId(id)),
            Err(_) => TopicName::Name(text.to_string()),
        }
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicName::Id(id) => write!(f, "{id}"),
            TopicName::Name(name) => write!(f, "{name:?}"),
        }
    }
}

/// Milliseconds since the epoch as RFC 3339 in UTC; empty when out of
/// range.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_name_a_topic_by_id_and_anything_else_by_name() {
        assert_eq!(TopicName::parse("42"), TopicName::Id(TopicId(42)));
        assert_eq!(TopicName::parse("orders"), TopicName::Name("orders".into()));
        assert_eq!(TopicName::parse("-1"), TopicName::Name("-1".into()));
        assert_eq!(TopicName::parse("42").to_string(), "42");
        assert_eq!(TopicName::parse("orders").to_string(), "\"orders\"");
    }

    #[test]
    fn times_format_as_rfc3339_and_out_of_range_as_empty() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
        assert_eq!(rfc3339(i64::MAX), "");
    }
}
