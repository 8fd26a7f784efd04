//! A publish batch's records in one buffer.
//!
//! A batch travels from the client's request through the Raft entry, RocksDB, every follower
//! and every read. Holding its records as one `Bytes` buffer (instead of a `Vec` per key and
//! value) makes each of those stages one copy and one allocation per batch, not several per
//! record, and lets reads hand out slices of the entry without copying the values.
//!
//! Layout, all lengths little-endian `u32`, records back to back:
//! `key_len key value_len value header_count (name_len name value_len value)*`.

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("a record or the batch is larger than 4 GiB")]
    TooLarge,
    #[error("malformed record batch: {0}")]
    Malformed(&'static str),
}

/// Records of one publish batch. Cloning shares the buffer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBatch {
    count: u32,
    /// Sum of key, value, header name and header value lengths: what
    /// retention by bytes counts.
    payload_bytes: u64,
    buf: Bytes,
}

impl std::fmt::Debug for RecordBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBatch")
            .field("count", &self.count)
            .field("payload_bytes", &self.payload_bytes)
            .finish()
    }
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    headers: &'a [u8],
    header_count: u32,
}

impl RecordBatch {
    pub fn builder() -> RecordBatchBuilder {
        RecordBatchBuilder::default()
    }

    /// A builder whose buffer holds `bytes` (see [`RecordBatch::encoded_len`]) without
    /// growing.
    pub fn builder_with_capacity(bytes: usize) -> RecordBatchBuilder {
        RecordBatchBuilder {
            buf: Vec::with_capacity(bytes),
            ..RecordBatchBuilder::default()
        }
    }

    /// How many bytes of the batch's buffer a record takes.
    pub fn encoded_len<'h>(
        key: &[u8],
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> usize {
        let prefix = std::mem::size_of::<u32>();
        let headers: usize = headers
            .into_iter()
            .map(|(name, value)| 2 * prefix + name.len() + value.len())
            .sum();
        3 * prefix + key.len() + value.len() + headers
    }

    /// A batch of exactly one record.
    pub fn single<'h>(
        key: &[u8],
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<RecordBatch, BatchError> {
        let mut builder = RecordBatch::builder();
        builder.push(key, value, headers)?;
        Ok(builder.finish())
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// `part` (a slice of this batch's records) as a `Bytes` that shares
    /// the batch's buffer.
    pub fn share(&self, part: &[u8]) -> Bytes {
        if part.is_empty() {
            return Bytes::new();
        }
        self.buf.slice_ref(part)
    }

    pub fn iter(&self) -> RecordIter<'_> {
        RecordIter {
            rest: &self.buf,
            left: self.count,
        }
    }
}

#[derive(Default)]
pub struct RecordBatchBuilder {
    count: u32,
    payload_bytes: u64,
    buf: Vec<u8>,
}

impl RecordBatchBuilder {
    /// Appends a record; `headers` are stored in the order given.
    pub fn push<'h>(
        &mut self,
        key: &[u8],
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<(), BatchError> {
        let start = self.buf.len();
        let result = self.push_unchecked(key, value, headers);
        if result.is_err() {
            self.buf.truncate(start);
        }
        result
    }

    fn push_unchecked<'h>(
        &mut self,
        key: &[u8],
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) -> Result<(), BatchError> {
        let count = self.count.checked_add(1).ok_or(BatchError::TooLarge)?;
        let mut payload = key.len() + value.len();
        self.put(key)?;
        self.put(value)?;
        let count_at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        let mut header_count = 0u32;
        for (name, value) in headers {
            self.put(name.as_bytes())?;
            self.put(value.as_bytes())?;
            payload += name.len() + value.len();
            header_count = header_count.checked_add(1).ok_or(BatchError::TooLarge)?;
        }
        self.buf[count_at..count_at + 4].copy_from_slice(&header_count.to_le_bytes());
        self.count = count;
        self.payload_bytes += payload as u64;
        Ok(())
    }

    fn put(&mut self, part: &[u8]) -> Result<(), BatchError> {
        let len = u32::try_from(part.len()).map_err(|_| BatchError::TooLarge)?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(part);
        Ok(())
    }

    pub fn finish(self) -> RecordBatch {
        RecordBatch {
            count: self.count,
            payload_bytes: self.payload_bytes,
            buf: Bytes::from(self.buf),
        }
    }
}

pub struct RecordIter<'a> {
    rest: &'a [u8],
    left: u32,
}

fn take<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], BatchError> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(BatchError::Malformed("truncated length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if tail.len() < len {
        return Err(BatchError::Malformed("truncated field"));
    }
    let (part, tail) = tail.split_at(len);
    *rest = tail;
    Ok(part)
}

impl<'a> RecordIter<'a> {
    fn next_record(&mut self) -> Result<RecordRef<'a>, BatchError> {
        let key = take(&mut self.rest)?;
        let value = take(&mut self.rest)?;
        let (count, tail) = self
            .rest
            .split_first_chunk::<4>()
            .ok_or(BatchError::Malformed("truncated header count"))?;
        let header_count = u32::from_le_bytes(*count);
        let headers_start = tail;
        self.rest = tail;
        for _ in 0..header_count {
            take(&mut self.rest)?;
            take(&mut self.rest)?;
        }
        let headers_len = headers_start.len() - self.rest.len();
        Ok(RecordRef {
            key,
            value,
            headers: &headers_start[..headers_len],
            header_count,
        })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let record = self.next_record();
        if record.is_err() {
            // Nothing after a malformed record can be trusted.
            self.left = 0;
        }
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

impl<'a> RecordRef<'a> {
    /// The headers in stored order; fails on a name or value that is not UTF-8.
    pub fn headers(&self) -> Result<Vec<(String, String)>, BatchError> {
        let mut rest = self.headers;
        let mut headers = Vec::with_capacity(self.header_count as usize);
        for _ in 0..self.header_count {
            let name = take(&mut rest)?;
            let value = take(&mut rest)?;
            let text = |part: &[u8]| {
                std::str::from_utf8(part)
                    .map(str::to_string)
                    .map_err(|_| BatchError::Malformed("header is not UTF-8"))
            };
            headers.push((text(name)?, text(value)?));
        }
        Ok(headers)
    }

    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers()
            .ok()?
            .into_iter()
            .find_map(|(n, v)| (n == name).then_some(v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sample() -> RecordBatch {
        let mut builder = RecordBatch::builder();
        builder
            .push(b"k1", b"value one", [("a", "1"), ("b", "2")])
            .unwrap();
        builder.push(b"", b"", []).unwrap();
        builder.push(b"k3", &[7u8; 1000], [("h", "")]).unwrap();
        builder.finish()
    }

    #[test]
    fn encoded_len_is_exactly_what_push_adds() {
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let records: [(&[u8], &[u8], Headers<'_>); 3] = [
            (b"k1", b"value one", &[("a", "1"), ("bb", "22")]),
            (b"", b"", &[]),
            (b"k3", &[7u8; 1000], &[("h", "")]),
        ];
        let mut total = 0;
        let mut builder = RecordBatch::builder();
        for (key, value, headers) in records {
            let len = RecordBatch::encoded_len(key, value, headers.iter().copied());
            builder.push(key, value, headers.iter().copied()).unwrap();
            total += len;
            assert_eq!(builder.buf.len(), total);
        }
        let sized = RecordBatch::builder_with_capacity(total);
        assert!(sized.buf.capacity() >= total);
    }

    #[test]
    fn records_come_back_as_pushed_in_order() {
        let batch = sample();
        assert_eq!(batch.len(), 3);
        let records: Vec<RecordRef<'_>> = batch.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(records[0].key, b"k1");
        assert_eq!(records[0].value, b"value one");
        assert_eq!(
            records[0].headers().unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(records[1].key, b"");
        assert_eq!(records[1].value, b"");
        assert!(records[1].headers().unwrap().is_empty());
        assert_eq!(records[2].value, &[7u8; 1000][..]);
        assert_eq!(records[2].header("h").as_deref(), Some(""));
        assert_eq!(records[2].header("missing"), None);
        assert_eq!(batch.payload_bytes(), 2 + 9 + 4 + 2 + 1000 + 1);
    }

    #[test]
    fn shared_slices_point_into_the_batch() {
        let batch = sample();
        let record = batch.iter().next().unwrap().unwrap();
        let value = batch.share(record.value);
        assert_eq!(&value[..], b"value one");
        assert_eq!(value.as_ptr(), record.value.as_ptr(), "no copy");
        assert!(batch.share(&[]).is_empty());
    }

    #[test]
    fn a_batch_survives_bincode_unchanged() {
        let batch = sample();
        let encoded = bincode::serialize(&batch).unwrap();
        let decoded: RecordBatch = bincode::deserialize(&encoded).unwrap();
        assert_eq!(decoded, batch);
        assert_eq!(decoded.iter().count(), 3);
    }

    #[test]
    fn a_truncated_or_lying_buffer_yields_an_error_and_no_panic() {
        let batch = sample();
        for cut in 0..batch.buf.len() {
            let broken = RecordBatch {
                buf: batch.buf.slice(..cut),
                ..batch.clone()
            };
            let results: Vec<_> = broken.iter().collect();
            assert!(results.iter().any(Result::is_err), "cut at {cut}");
            assert!(results.len() <= 3);
        }
        let lying = RecordBatch {
            count: 1,
            payload_bytes: 0,
            buf: Bytes::from_static(&[255, 255, 255, 255, 1]),
        };
        assert_eq!(
            lying.iter().next(),
            Some(Err(BatchError::Malformed("truncated field")))
        );
        // An empty key and value, then one header whose name is not UTF-8.
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.push(0xff);
        buf.extend_from_slice(&0u32.to_le_bytes());
        let invalid = RecordBatch {
            count: 1,
            payload_bytes: 1,
            buf: Bytes::from(buf),
        };
        let record = invalid.iter().next().unwrap().unwrap();
        assert!(record.headers().is_err());
    }
}
