//! Value encoding of Raft records (entries, votes, log ids).
//!
//! A value is one format byte followed by bincode (varint integers, trailing bytes rejected).
//! The format byte lets a future version change the encoding on purpose and makes a value
//! written by something else fail loudly instead of decoding into garbage.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMAT_V1: u8 = 1;

fn options() -> impl Options {
    // Decoding reads from a slice, so a corrupt length prefix fails with an error instead of
    // allocating: bincode checks the remaining slice length before it allocates a buffer.
    bincode::DefaultOptions::new()
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    // Sized first: a publish batch is about a megabyte, and growing the buffer while
    // serializing copied it several times (it showed in the write path's profile).
    let size = usize::try_from(options().serialized_size(value)?).unwrap_or(0);
    let mut out = Vec::with_capacity(1 + size);
    out.push(FORMAT_V1);
    options().serialize_into(&mut out, value)?;
    Ok(out)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => options().deserialize(body),
        Some((&other, _)) => Err(Box::new(bincode::ErrorKind::Custom(format!(
            "unknown value format {other}"
        )))),
        None => Err(Box::new(bincode::ErrorKind::Custom(
            "empty value".to_string(),
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let value = (7u64, "payload".to_string(), Some(vec![1u8, 2, 3]));
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(),
            value
        );

        assert!(decode::<u64>(&[]).is_err());
        assert!(decode::<u64>(&[9, 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&trailing).is_err());
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // Format byte, then a bincode varint (marker 253: a u64 follows) length of u64::MAX.
        let bytes = [
            FORMAT_V1, 253, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
    }
}
