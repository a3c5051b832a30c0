//! Cursors: the compact, versioned token a client hands back to resume a topic.
//!
//! A cursor names one topic incarnation (its `epoch`) and, for each partition,
//! the next offset the client has not yet seen. Offsets are the log's own
//! (Kafka's, or the embedded log's, which numbers records the same way), so a
//! cursor made by one node is understood by every node reading the same log.
//!
//! Wire form: base64url (no padding) of
//! `[version = 1][epoch: u64 little-endian][n: varint][offset_0: varint]..[offset_n-1: varint]`.
//! It is safe in an SSE `id:` line, a query parameter and a JSON string.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;
/// More partitions than any topic we accept; bounds the work a hostile cursor can cause.
pub const MAX_PARTITIONS: usize = 4096;
/// Longest encoded cursor we try to decode (4096 partitions of 10-byte varints, in base64).
const MAX_ENCODED_LEN: usize = 56 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    /// `offsets[p]` is the next offset to deliver from partition `p`.
    pub offsets: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is empty")]
    Empty,
    #[error("cursor is too long")]
    TooLong,
    #[error("cursor is not base64url")]
    Encoding,
    #[error("cursor version {0} is not supported")]
    Version(u8),
    #[error("cursor is truncated")]
    Truncated,
    #[error("cursor names too many partitions")]
    TooManyPartitions,
    #[error("cursor has trailing bytes")]
    Trailing,
}

impl Cursor {
    pub fn new(epoch: u64, offsets: Vec<u64>) -> Self {
        Self { epoch, offsets }
    }

    /// Next offset for `partition`; partitions the cursor does not name start at 0
    /// (they were added after the cursor was made, so the client saw none of them).
    pub fn offset(&self, partition: usize) -> u64 {
        self.offsets.get(partition).copied().unwrap_or(0)
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 + self.offsets.len() * 4);
        encode_into(self.epoch, &self.offsets, &mut out);
        out
    }

    pub fn decode(text: &str) -> Result<Self, CursorError> {
        if text.is_empty() {
            return Err(CursorError::Empty);
        }
        if text.len() > MAX_ENCODED_LEN {
            return Err(CursorError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| CursorError::Encoding)?;
        let mut input = bytes.as_slice();
        let version = take_byte(&mut input)?;
        if version != VERSION {
            return Err(CursorError::Version(version));
        }
        if input.len() < 8 {
            return Err(CursorError::Truncated);
        }
        let (epoch_bytes, rest) = input.split_at(8);
        input = rest;
        let epoch = u64::from_le_bytes(epoch_bytes.try_into().expect("8 bytes"));
        let n = read_varint(&mut input)?;
        if n > MAX_PARTITIONS as u64 {
            return Err(CursorError::TooManyPartitions);
        }
        let mut offsets = Vec::with_capacity(n as usize);
        for _ in 0..n {
            offsets.push(read_varint(&mut input)?);
        }
        if !input.is_empty() {
            return Err(CursorError::Trailing);
        }
        Ok(Self { epoch, offsets })
    }
}

/// Encodes a cursor straight into `out`, for the ingest path that builds frames in place.
pub fn encode_into(epoch: u64, offsets: &[u64], out: &mut String) {
    let mut raw = Vec::with_capacity(1 + 8 + 2 + offsets.len() * 5);
    raw.push(VERSION);
    raw.extend_from_slice(&epoch.to_le_bytes());
    write_varint(&mut raw, offsets.len() as u64);
    for &offset in offsets {
        write_varint(&mut raw, offset);
    }
    URL_SAFE_NO_PAD.encode_string(&raw, out);
}

fn take_byte(input: &mut &[u8]) -> Result<u8, CursorError> {
    let (&first, rest) = input.split_first().ok_or(CursorError::Truncated)?;
    *input = rest;
    Ok(first)
}

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn read_varint(input: &mut &[u8]) -> Result<u64, CursorError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = take_byte(input)?;
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the top bit of a u64.
        if shift == 63 && bits > 1 {
            return Err(CursorError::Encoding);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CursorError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for offsets in [vec![], vec![0], vec![1, 2, 3], vec![u64::MAX, 0, 1 << 40]] {
            let cursor = Cursor::new(0xdead_beef_0bad_f00d, offsets);
            let text = cursor.encode();
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(Cursor::decode(""), Err(CursorError::Empty));
        assert_eq!(Cursor::decode("!!!"), Err(CursorError::Encoding));
        assert_eq!(Cursor::decode("AA"), Err(CursorError::Version(0)));
        assert_eq!(Cursor::decode("AQ"), Err(CursorError::Truncated));
        let mut long = Cursor::new(1, vec![5]).encode();
        long.push_str("AA");
        assert!(Cursor::decode(&long).is_err());
        // A partition count beyond the limit is refused before allocating.
        let mut raw = vec![1u8];
        raw.extend_from_slice(&7u64.to_le_bytes());
        write_varint(&mut raw, 1 << 40);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(raw)),
            Err(CursorError::TooManyPartitions)
        );
    }

    #[test]
    fn missing_partitions_start_at_zero() {
        let cursor = Cursor::new(1, vec![4]);
        assert_eq!(cursor.offset(0), 4);
        assert_eq!(cursor.offset(3), 0);
    }
}
