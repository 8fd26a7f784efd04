//! Value encoding of Raft records (entries, votes, log ids).
//!
//! A value is one format byte followed by the format's body. The format byte lets a version
//! change the encoding on purpose and makes a value written by something else fail loudly
//! instead of decoding into garbage.
//!
//! - [`FORMAT_V2`] (written): an xxh3-64 checksum of the bincode bytes (8 bytes, little-endian),
//!   then the bincode bytes. A value whose bytes changed on disk fails its checksum instead of
//!   decoding into a plausible but wrong entry, or one that bincode happens to accept.
//! - [`FORMAT_V1`] (read only): bincode with no checksum, as binaries before checksums wrote
//!   it. Such values are still accepted as they were.
//!
//! bincode uses varint integers and rejects trailing bytes in both formats.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const CHECKSUM_BYTES: usize = 8;
/// The format byte and the checksum in front of a [`FORMAT_V2`] body.
const V2_HEADER_BYTES: usize = 1 + CHECKSUM_BYTES;

/// Why a stored value did not decode. A checksum mismatch is kept apart from everything else:
/// it means the bytes changed after they were written, which says the disk is not trusted.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("checksum mismatch: stored {stored:016x}, computed {computed:016x}")]
    Checksum { stored: u64, computed: u64 },
    #[error(transparent)]
    Malformed(#[from] bincode::Error),
}

fn options() -> impl Options {
    // Decoding reads from a slice, so a corrupt length prefix fails with an error instead of
    // allocating: bincode checks the remaining slice length before it allocates a buffer.
    bincode::DefaultOptions::new()
}

fn checksum(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    // Sized first: a publish batch is about a megabyte, and growing the buffer while
    // serializing copied it several times (it showed in the write path's profile).
    let size = usize::try_from(options().serialized_size(value)?).unwrap_or(0);
    let mut out = Vec::with_capacity(V2_HEADER_BYTES + size);
    out.push(FORMAT_V2);
    out.extend_from_slice(&[0; CHECKSUM_BYTES]);
    options().serialize_into(&mut out, value)?;
    // The body is hashed where it was serialized, so it is neither copied nor serialized twice.
    let (header, body) = out.split_at_mut(V2_HEADER_BYTES);
    header[1..].copy_from_slice(&checksum(body).to_le_bytes());
    Ok(out)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let body = verified_body(bytes)?;
    Ok(options().deserialize(body)?)
}

/// Checks `bytes` as [`decode`] does, without decoding the body: for stored values that are
/// passed on as they are (to another replica's backfill), which must not pass on corruption.
pub(super) fn verify(bytes: &[u8]) -> Result<(), DecodeError> {
    verified_body(bytes).map(|_| ())
}

/// The bincode body of a stored value, after its checksum if its format has one.
fn verified_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V2, rest)) => {
            let Some((stored, body)) = rest.split_first_chunk::<CHECKSUM_BYTES>() else {
                return Err(malformed(format!(
                    "value of {} bytes is shorter than a checksum",
                    bytes.len()
                )));
            };
            let stored = u64::from_le_bytes(*stored);
            let computed = checksum(body);
            if stored != computed {
                return Err(DecodeError::Checksum { stored, computed });
            }
            Ok(body)
        }
        Some((&FORMAT_V1, body)) => Ok(body),
        Some((&other, _)) => Err(malformed(format!("unknown value format {other}"))),
        None => Err(malformed("empty value".to_string())),
    }
}

/// Encodes `value` as binaries before checksums did ([`FORMAT_V1`]), for tests that old
/// values still read.
#[cfg(test)]
pub(super) fn encode_v1<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    let mut out = vec![FORMAT_V1];
    options().serialize_into(&mut out, value)?;
    Ok(out)
}

fn malformed(detail: String) -> DecodeError {
    DecodeError::Malformed(Box::new(bincode::ErrorKind::Custom(detail)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type Value = (u64, String, Option<Vec<u8>>);

    fn value() -> Value {
        (7, "payload".to_string(), Some(vec![1, 2, 3]))
    }

    #[test]
    fn round_trips_with_a_checksum() {
        let bytes = encode(&value()).unwrap();
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(
            bytes[1..V2_HEADER_BYTES],
            checksum(&bytes[V2_HEADER_BYTES..]).to_le_bytes()
        );
        assert_eq!(decode::<Value>(&bytes).unwrap(), value());
        verify(&bytes).unwrap();
    }

    #[test]
    fn v2_golden_bytes_are_stable() {
        // Values on disk must keep decoding, so the layout may not drift: format byte, xxh3-64
        // of the body little-endian, bincode body.
        let bytes = encode(&(300u64, "ab".to_string())).unwrap();
        let body = [251, 44, 1, 2, b'a', b'b'];
        let mut expected = vec![FORMAT_V2];
        expected.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn v1_values_written_before_checksums_still_decode() {
        // Bytes as binaries before checksums wrote them: format 1, then bincode with varints
        // (300 = marker 251 and a little-endian u16; a string is its varint length and bytes).
        let golden = [FORMAT_V1, 251, 44, 1, 2, b'a', b'b'];
        assert_eq!(
            decode::<(u64, String)>(&golden).unwrap(),
            (300, "ab".to_string())
        );
        verify(&golden).unwrap();
        // V1 damage is still caught where bincode can see it.
        assert!(decode::<(u64, String)>(&golden[..golden.len() - 1]).is_err());
    }

    #[test]
    fn every_flipped_bit_of_a_v2_value_is_refused() {
        let bytes = encode(&value()).unwrap();
        for position in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[position] ^= 1 << bit;
                assert!(
                    decode::<Value>(&damaged).is_err(),
                    "byte {position} bit {bit} flipped still decoded"
                );
                assert!(verify(&damaged).is_err(), "byte {position} bit {bit}");
            }
        }
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0x40;
        assert!(matches!(
            decode::<Value>(&damaged),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn malformed_values_are_refused() {
        let bytes = encode(&value()).unwrap();
        assert!(decode::<u64>(&[]).is_err());
        assert!(decode::<u64>(&[9, 1]).is_err());
        assert!(matches!(
            decode::<u64>(&bytes[..V2_HEADER_BYTES - 1]),
            Err(DecodeError::Malformed(_))
        ));
        // A body cut short or grown fails its checksum before bincode sees it.
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<Value>(&trailing).is_err());
        assert!(decode::<Value>(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // A bincode varint (marker 253: a u64 follows) length of u64::MAX, in both formats.
        let body = [253, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let mut v2 = vec![FORMAT_V2];
        v2.extend_from_slice(&checksum(&body).to_le_bytes());
        v2.extend_from_slice(&body);
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&body);
        for bytes in [v1, v2] {
            assert!(decode::<Vec<u8>>(&bytes).is_err());
            assert!(decode::<String>(&bytes).is_err());
        }
    }
}
