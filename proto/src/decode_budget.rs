//! A bound on what a message decodes into, checked on its wire bytes before
//! prost allocates anything.
//!
//! prost gives each nested message, map entry, string and bytes field memory
//! of its own: about 100 bytes for an empty `Record`, a hash-table slot for
//! a header. On the wire each of them can take 2 bytes, so an 8 MiB request
//! of empty records or empty headers would decode into about 50 times its
//! size. The byte limits of the listeners bound the wire size; this bounds
//! the count of such elements, so a request decodes into at most its own
//! bytes plus a fixed overhead.
//!
//! The walk follows the message's descriptors (compiled in by build.rs):
//! only fields declared as messages are descended into, so payload bytes
//! that happen to look like protobuf are never counted.

use std::collections::HashMap;
use std::sync::LazyLock;

use prost::Message as _;
use prost_types::field_descriptor_proto::Type;

/// Nested messages, map entries, strings and bytes fields one message may
/// hold at most: about 50 MiB decoded beyond the wire bytes. A publish batch
/// at its byte limit of records of a few bytes each holds fewer.
pub const MAX_DECODED_ELEMENTS: usize = 1 << 19;

/// Nesting followed at most; deeper elements are not counted (no message
/// of the API nests this deep, and prost refuses at 100).
const MAX_DEPTH: usize = 32;

/// How a length-delimited field decodes.
#[derive(Debug)]
enum Field {
    /// A nested message (or map entry), by full name: counted, and walked.
    Message(String),
    /// A string or bytes value: counted.
    Buffer,
}

/// Fields of every message of the API, by the message's full name.
type Schema = HashMap<String, HashMap<u32, Field>>;

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // Written by build.rs from the same protos as the code: it decodes.
    let set =
        prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut schema = Schema::new();
    for file in &set.file {
        for message in &file.message_type {
            add_message(&mut schema, file.package(), message);
        }
    }
    schema
});

fn add_message(schema: &mut Schema, scope: &str, message: &prost_types::DescriptorProto) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        add_message(schema, &name, nested);
    }
    let fields = message
        .field
        .iter()
        .filter_map(|field| {
            let shape = match field.r#type() {
                Type::Message => {
                    Field::Message(field.type_name().trim_start_matches('.').to_string())
                }
                Type::String | Type::Bytes => Field::Buffer,
                _ => return None,
            };
            Some((u32::try_from(field.number()).ok()?, shape))
        })
        .collect();
    schema.insert(name, fields);
}

/// The message in `bytes` (of type `message`, a full name) holds more than
/// `limit` elements.
#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: usize,
}

/// Counts the elements of `bytes` up to `limit`. Malformed bytes end the
/// count quietly: decoding them reports the error.
pub fn check(message: &str, bytes: &[u8], limit: usize) -> Result<usize, Exceeded> {
    let mut count = 0;
    walk(&SCHEMA, SCHEMA.get(message), bytes, 0, &mut count, limit)?;
    Ok(count)
}

fn walk(
    schema: &Schema,
    fields: Option<&HashMap<u32, Field>>,
    mut bytes: &[u8],
    depth: usize,
    count: &mut usize,
    limit: usize,
) -> Result<(), Exceeded> {
    use prost::encoding::decode_varint;
    let Some(fields) = fields else {
        return Ok(());
    };
    while !bytes.is_empty() {
        let Ok(key) = decode_varint(&mut bytes) else {
            return Ok(());
        };
        let skip = match key & 0b111 {
            0 => match decode_varint(&mut bytes) {
                Ok(_) => 0,
                Err(_) => return Ok(()),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some(len) = decode_varint(&mut bytes)
                    .ok()
                    .and_then(|len| usize::try_from(len).ok())
                    .filter(|len| *len <= bytes.len())
                else {
                    return Ok(());
                };
                let (inner, rest) = bytes.split_at(len);
                bytes = rest;
                let field = u32::try_from(key >> 3).ok().and_then(|n| fields.get(&n));
                if let Some(field) = field {
                    *count += 1;
                    if *count > limit {
                        return Err(Exceeded { limit });
                    }
                    if let Field::Message(name) = field
                        && depth < MAX_DEPTH
                    {
                        walk(schema, schema.get(name), inner, depth + 1, count, limit)?;
                    }
                }
                0
            }
            // Groups, or not protobuf: prost refuses them.
            _ => return Ok(()),
        };
        if skip > bytes.len() {
            return Ok(());
        }
        bytes = &bytes[skip..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::{Message, Name};

    use super::*;
    use crate::v1 as pb;

    fn count<M: Message + Name>(message: &M) -> Result<usize, Exceeded> {
        check(
            &M::full_name(),
            &message.encode_to_vec(),
            MAX_DECODED_ELEMENTS,
        )
    }

    fn record(value: &[u8], headers: usize) -> pb::Record {
        pb::Record {
            key: Default::default(),
            value: value.to_vec().into(),
            headers: (0..headers)
                .map(|i| (format!("h{i}"), String::new()))
                .collect(),
            partition: None,
        }
    }

    #[test]
    fn records_and_their_headers_are_counted() {
        let batch = pb::PublishBatchRequest {
            records: vec![record(b"x", 2), record(b"y", 0)],
            ..Default::default()
        };
        // Each record, its value, and each header entry with its key (the
        // empty header value is not on the wire); the topic ref is unset.
        assert_eq!(count(&batch), Ok(2 + 2 + 2 * 2));
    }

    #[test]
    fn payload_bytes_that_look_like_protobuf_are_not_walked() {
        let inner = pb::PublishBatchRequest {
            records: (0..1000).map(|_| record(b"", 0)).collect(),
            ..Default::default()
        };
        let outer = pb::PublishBatchRequest {
            records: vec![record(&inner.encode_to_vec(), 0)],
            ..Default::default()
        };
        assert_eq!(count(&outer), Ok(2));
    }

    #[test]
    fn a_flood_of_empty_records_is_refused_before_decoding() {
        // 2 bytes a record on the wire: 1.5 MiB would decode into ~75 MiB.
        let flood = pb::PublishBatchRequest {
            records: (0..MAX_DECODED_ELEMENTS + 1)
                .map(|_| record(b"", 0))
                .collect(),
            ..Default::default()
        };
        assert!(flood.encoded_len() < 2 << 20);
        assert_eq!(
            count(&flood),
            Err(Exceeded {
                limit: MAX_DECODED_ELEMENTS
            })
        );
    }

    #[test]
    fn malformed_bytes_are_left_to_the_decoder() {
        let name = pb::PublishBatchRequest::full_name();
        for bytes in [&[0xff_u8; 11][..], &[0x12, 0x7f, 0x00][..], &[0x0b][..]] {
            assert!(check(&name, bytes, 10).is_ok(), "{bytes:?}");
            assert!(pb::PublishBatchRequest::decode(bytes).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn every_message_of_the_api_is_known() {
        for name in [
            pb::PublishRequest::full_name(),
            pb::PublishBatchRequest::full_name(),
            pb::Record::full_name(),
            pb::CreateTokenRequest::full_name(),
            pb::DeliverRequest::full_name(),
            pb::RaftMessage::full_name(),
        ] {
            assert!(SCHEMA.contains_key(&name), "{name}");
        }
    }
}
