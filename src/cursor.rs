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
//!
//! Version 2 carries, per partition, a [`ShardPos`]: a source's own opaque
//! position of any length (a Kinesis sequence number, as a big-endian
//! integer), "nothing seen yet", or "closed and read to its end" (a Kinesis
//! parent shard after a split or merge):
//! `[version = 2][epoch: u64 LE][n: varint]` then per partition
//! `[tag 0]` (start) | `[tag 1][len: varint][len bytes]` (after that position) | `[tag 2]` (closed).
//! Version 1 cursors keep decoding exactly as before.
//!
//! Either version may end with a snapshot position (`snapshot_after`): a
//! client cut off mid-snapshot holds every key up to that one (in key
//! order) at the cursor's position and nothing after it, so a resume
//! replays the keys up to it and streams the rest of the snapshot:
//! `[tag 1][len: varint][len bytes of UTF-8 key]` after the partitions.
//! Carried in the cursor (not beside it) so an SSE `Last-Event-ID`, a
//! query parameter or a `pushgate-cursor` trailer resumes mid-snapshot
//! with no client code.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;
/// Cursors whose partitions carry opaque positions ([`ShardPos`]).
const VERSION_SHARDS: u8 = 2;
/// Longest opaque position accepted (a Kinesis sequence number of 129 digits needs 54).
pub const MAX_POSITION_BYTES: usize = 64;
/// More partitions than any topic we accept; bounds the work a hostile cursor can cause.
pub const MAX_PARTITIONS: usize = 4096;
/// Longest encoded cursor we try to decode (4096 partitions of 10-byte varints, in base64).
const MAX_ENCODED_LEN: usize = 56 * 1024;
/// Longest `snapshot_after` key a cursor may carry.
pub const MAX_SNAPSHOT_KEY_BYTES: usize = 32 * 1024;
/// Tag of the trailing snapshot position.
const TAG_SNAPSHOT_AFTER: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    /// `offsets[p]` is the next offset to deliver from partition `p` (version 1).
    pub offsets: Vec<u64>,
    /// Version 2: per partition, where the client stands in the source's own
    /// positions. `None` for a version 1 cursor.
    pub shards: Option<Vec<ShardPos>>,
    /// Mid-snapshot: the client holds every key up to this one (in key order)
    /// at this position, and none after it.
    pub snapshot_after: Option<Box<str>>,
}

/// One partition's place in a version 2 cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardPos {
    /// Nothing of this partition seen yet.
    Start,
    /// Everything up to and including this position seen (big-endian, no leading zero bytes).
    After(Box<[u8]>),
    /// The partition is closed and was read to its end (a parent shard).
    Closed,
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
        Self {
            epoch,
            offsets,
            shards: None,
            snapshot_after: None,
        }
    }

    /// A version 2 cursor.
    pub fn with_shards(epoch: u64, shards: Vec<ShardPos>) -> Self {
        Self {
            epoch,
            offsets: Vec::new(),
            shards: Some(shards),
            snapshot_after: None,
        }
    }

    /// Next offset for `partition`; partitions the cursor does not name start at 0
    /// (they were added after the cursor was made, so the client saw none of them).
    pub fn offset(&self, partition: usize) -> u64 {
        self.offsets.get(partition).copied().unwrap_or(0)
    }

    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 + self.offsets.len() * 4);
        match &self.shards {
            None => encode_into(self.epoch, &self.offsets, &mut out),
            Some(shards) => encode_shards_into(self.epoch, shards, &mut out),
        }
        match &self.snapshot_after {
            Some(key) => with_snapshot_after(&out, key),
            None => out,
        }
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
        if version != VERSION && version != VERSION_SHARDS {
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
        if version == VERSION_SHARDS {
            let mut shards = Vec::with_capacity((n as usize).min(input.len()));
            for _ in 0..n {
                shards.push(match take_byte(&mut input)? {
                    0 => ShardPos::Start,
                    1 => {
                        let len = read_varint(&mut input)?;
                        if len == 0 || len > MAX_POSITION_BYTES as u64 {
                            return Err(CursorError::Encoding);
                        }
                        if input.len() < len as usize {
                            return Err(CursorError::Truncated);
                        }
                        let (bytes, rest) = input.split_at(len as usize);
                        if bytes[0] == 0 && bytes.len() > 1 {
                            // Not canonical: positions compare by length first.
                            return Err(CursorError::Encoding);
                        }
                        input = rest;
                        ShardPos::After(bytes.into())
                    }
                    2 => ShardPos::Closed,
                    _ => return Err(CursorError::Encoding),
                });
            }
            let snapshot_after = read_snapshot_after(&mut input)?;
            return Ok(Self {
                snapshot_after,
                ..Self::with_shards(epoch, shards)
            });
        }
        let mut offsets = Vec::with_capacity((n as usize).min(input.len()));
        for _ in 0..n {
            offsets.push(read_varint(&mut input)?);
        }
        let snapshot_after = read_snapshot_after(&mut input)?;
        Ok(Self {
            snapshot_after,
            ..Self::new(epoch, offsets)
        })
    }
}

/// The optional trailing snapshot position; anything else left over is an error.
fn read_snapshot_after(input: &mut &[u8]) -> Result<Option<Box<str>>, CursorError> {
    if input.is_empty() {
        return Ok(None);
    }
    if take_byte(input)? != TAG_SNAPSHOT_AFTER {
        return Err(CursorError::Trailing);
    }
    let len = read_varint(input)?;
    if len > MAX_SNAPSHOT_KEY_BYTES as u64 {
        return Err(CursorError::TooLong);
    }
    if input.len() < len as usize {
        return Err(CursorError::Truncated);
    }
    let (key, rest) = input.split_at(len as usize);
    *input = rest;
    if !input.is_empty() {
        return Err(CursorError::Trailing);
    }
    let key = std::str::from_utf8(key).map_err(|_| CursorError::Encoding)?;
    Ok(Some(key.into()))
}

/// Raw bytes of an encoded cursor (one this node made), to which
/// [`snapshot_cursor`] appends a key per snapshot record.
pub fn raw(encoded: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(encoded.as_bytes())
        .unwrap_or_default()
}

/// `raw` (a cursor without a snapshot position) with `snapshot_after = key`, encoded.
pub fn snapshot_cursor(raw: &[u8], key: &str) -> String {
    let key = key.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len() + 3 + key.len());
    bytes.extend_from_slice(raw);
    bytes.push(TAG_SNAPSHOT_AFTER);
    write_varint(&mut bytes, key.len() as u64);
    bytes.extend_from_slice(key);
    URL_SAFE_NO_PAD.encode(&bytes)
}

fn with_snapshot_after(encoded: &str, key: &str) -> String {
    snapshot_cursor(&raw(encoded), key)
}

/// Encodes a version 2 cursor into `out`.
pub fn encode_shards_into(epoch: u64, shards: &[ShardPos], out: &mut String) {
    let mut raw = Vec::with_capacity(1 + 8 + 2 + shards.len() * 26);
    raw.push(VERSION_SHARDS);
    raw.extend_from_slice(&epoch.to_le_bytes());
    write_varint(&mut raw, shards.len() as u64);
    for shard in shards {
        match shard {
            ShardPos::Start => raw.push(0),
            ShardPos::After(bytes) => {
                raw.push(1);
                write_varint(&mut raw, bytes.len() as u64);
                raw.extend_from_slice(bytes);
            }
            ShardPos::Closed => raw.push(2),
        }
    }
    URL_SAFE_NO_PAD.encode_string(&raw, out);
}

/// A decimal position (a Kinesis sequence number) as a big-endian integer
/// without leading zero bytes, so that positions compare by (length, bytes).
/// `None` when `text` is not 1 to 154 decimal digits.
pub fn decimal_to_position(text: &str) -> Option<Box<[u8]>> {
    if text.is_empty() || text.len() > 154 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Little-endian base-256 digits while multiplying in.
    let mut le: Vec<u8> = Vec::with_capacity(text.len() / 2 + 1);
    for digit in text.bytes().map(|b| b - b'0') {
        let mut carry = u32::from(digit);
        for byte in le.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = v as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            le.push(carry as u8);
            carry >>= 8;
        }
    }
    if le.is_empty() {
        le.push(0);
    }
    le.reverse();
    if le.len() > MAX_POSITION_BYTES {
        return None;
    }
    Some(le.into_boxed_slice())
}

/// The decimal text of a position made by [`decimal_to_position`].
pub fn position_to_decimal(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = Vec::new();
    let mut num: Vec<u8> = bytes.to_vec();
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for byte in num.iter_mut() {
            let v = (rem << 8) | u32::from(*byte);
            *byte = (v / 10) as u8;
            rem = v % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        return "0".into();
    }
    digits.reverse();
    String::from_utf8(digits).expect("ascii digits")
}

/// Orders two positions made by [`decimal_to_position`].
pub fn compare_positions(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
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
    fn a_snapshot_position_round_trips_on_both_versions() {
        let mut v1 = Cursor::new(7, vec![3, 4]);
        v1.snapshot_after = Some("k\u{e9}y 42".into());
        let text = v1.encode();
        assert_eq!(Cursor::decode(&text).unwrap(), v1);
        assert_eq!(
            snapshot_cursor(&raw(&Cursor::new(7, vec![3, 4]).encode()), "k\u{e9}y 42"),
            text
        );
        let mut v2 = Cursor::with_shards(7, vec![ShardPos::Start, ShardPos::Closed]);
        v2.snapshot_after = Some("".into());
        assert_eq!(Cursor::decode(&v2.encode()).unwrap(), v2);
        // An unknown trailing tag, a key cut short, bytes after the key.
        let mut bytes = raw(&Cursor::new(7, vec![3]).encode());
        bytes.extend_from_slice(&[2, 1, b'a']);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(CursorError::Trailing)
        );
        let mut bytes = raw(&Cursor::new(7, vec![3]).encode());
        bytes.extend_from_slice(&[1, 5, b'a']);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(CursorError::Truncated)
        );
        let mut bytes = raw(&Cursor::new(7, vec![3]).encode());
        bytes.extend_from_slice(&[1, 1, b'a', 0]);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes)),
            Err(CursorError::Trailing)
        );
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
    fn version_2_round_trips_and_version_1_still_decodes() {
        let seq = "49590338271490256608559692538361571095921575989136588898";
        let pos = decimal_to_position(seq).unwrap();
        assert_eq!(position_to_decimal(&pos), seq);
        let cursor = Cursor::with_shards(
            42,
            vec![
                ShardPos::Closed,
                ShardPos::After(pos.clone()),
                ShardPos::Start,
            ],
        );
        let text = cursor.encode();
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
        // A version 1 cursor handed out before version 2 existed.
        let v1 = URL_SAFE_NO_PAD.encode([1u8, 7, 0, 0, 0, 0, 0, 0, 0, 2, 5, 0x80, 0x01]);
        assert_eq!(Cursor::decode(&v1).unwrap(), Cursor::new(7, vec![5, 128]));
        // Truncated positions, unknown tags and non-canonical bytes are refused.
        let raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 3])).is_err());
        let mut bad = vec![2u8];
        bad.extend_from_slice(&1u64.to_le_bytes());
        bad.extend_from_slice(&[1, 9]);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&bad)),
            Err(CursorError::Encoding)
        );
        let mut lead = vec![2u8];
        lead.extend_from_slice(&1u64.to_le_bytes());
        lead.extend_from_slice(&[1, 1, 2, 0, 5]);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&lead)),
            Err(CursorError::Encoding)
        );
    }

    #[test]
    fn positions_order_as_the_numbers_do() {
        let order = [
            "0",
            "9",
            "255",
            "256",
            "1000",
            "49590338271490256608559692538361571095921575989136588898",
            "49590338271490256608559692538361571095921575989136588899",
            "100000000000000000000000000000000000000000000000000000000",
        ];
        for w in order.windows(2) {
            let (a, b) = (
                decimal_to_position(w[0]).unwrap(),
                decimal_to_position(w[1]).unwrap(),
            );
            assert_eq!(compare_positions(&a, &b), std::cmp::Ordering::Less, "{w:?}");
            assert_eq!(
                position_to_decimal(&a),
                w[0].trim_start_matches('0').to_owned().max("0".into())
            );
        }
        assert!(decimal_to_position("12a").is_none());
        assert!(decimal_to_position("").is_none());
    }

    #[test]
    fn missing_partitions_start_at_zero() {
        let cursor = Cursor::new(1, vec![4]);
        assert_eq!(cursor.offset(0), 4);
        assert_eq!(cursor.offset(3), 0);
    }
}
