//! Turning a Kafka message into a [`LogRecord`]: key, JSON or base64 value, headers, timestamp.
//!
//! - The key (UTF-8) is the subscription key; a record without a key has none.
//! - A value that is JSON is passed on as compact JSON; any other value is
//!   passed on as a base64 string with `"encoding":"base64"` next to it.
//! - A missing value (a tombstone) is `null` with `"tombstone":true`.
//! - Headers become `"headers":{"name":"value"}`; a value that is not UTF-8 is
//!   written `"base64:<base64>"`, a missing value `null`.
//! - The Kafka timestamp (create or log-append time, ms) is the record's `timestamp`.
//!
//! A record whose key is not UTF-8, or whose value is larger than
//! `kafka.max_record_bytes`, is bad: the caller counts it, logs its position,
//! copies it to the dead-letter topic if one is set, and skips it.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rdkafka::message::{Headers, Message};

use crate::record::{compact_json, push_json_str, LogRecord};

/// Why a record was skipped (a fixed set: used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    TooLarge,
    KeyNotUtf8,
}

impl Bad {
    pub fn label(self) -> &'static str {
        match self {
            Bad::TooLarge => "too_large",
            Bad::KeyNotUtf8 => "key_not_utf8",
        }
    }
}

pub fn decode<M: Message>(msg: &M, max_bytes: usize) -> Result<LogRecord, Bad> {
    let payload = msg.payload();
    if payload.map(<[u8]>::len).unwrap_or(0) > max_bytes {
        return Err(Bad::TooLarge);
    }
    let key = match msg.key() {
        None => None,
        Some(k) => Some(Arc::<str>::from(
            std::str::from_utf8(k).map_err(|_| Bad::KeyNotUtf8)?,
        )),
    };
    let mut extra = String::new();
    let data: Box<str> = match payload {
        None => {
            extra.push_str("\"tombstone\":true");
            "null".into()
        }
        Some(bytes) => match std::str::from_utf8(bytes).ok().map(compact_json) {
            Some(Ok(json)) => json,
            _ => {
                extra.push_str("\"encoding\":\"base64\"");
                let mut s = String::with_capacity(bytes.len() * 4 / 3 + 4);
                push_json_str(&mut s, &STANDARD.encode(bytes));
                s.into_boxed_str()
            }
        },
    };
    if let Some(headers) = msg.headers() {
        if headers.count() > 0 {
            if !extra.is_empty() {
                extra.push(',');
            }
            extra.push_str("\"headers\":{");
            for (i, h) in headers.iter().enumerate() {
                if i > 0 {
                    extra.push(',');
                }
                push_json_str(&mut extra, h.key);
                extra.push(':');
                match h.value {
                    None => extra.push_str("null"),
                    Some(v) => match std::str::from_utf8(v) {
                        Ok(s) => push_json_str(&mut extra, s),
                        Err(_) => {
                            push_json_str(&mut extra, &format!("base64:{}", STANDARD.encode(v)))
                        }
                    },
                }
            }
            extra.push('}');
        }
    }
    Ok(LogRecord {
        partition: msg.partition().max(0) as u32,
        offset: msg.offset().max(0) as u64,
        timestamp: msg.timestamp().to_millis().unwrap_or(0),
        key,
        data,
        extra: (!extra.is_empty()).then(|| extra.into_boxed_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn msg(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> OwnedMessage {
        OwnedMessage::new(
            value.map(<[u8]>::to_vec),
            key.map(<[u8]>::to_vec),
            "t".into(),
            Timestamp::CreateTime(42),
            1,
            7,
            headers,
        )
    }

    #[test]
    fn json_binary_tombstone_headers() {
        let r = decode(&msg(Some(b"k"), Some(b"{ \"a\" :\n 1 }"), None), 100).unwrap();
        assert_eq!(&*r.data, "{\"a\":1}");
        assert!(r.extra.is_none());
        assert_eq!((r.partition, r.offset, r.timestamp), (1, 7, 42));
        let r = decode(&msg(Some(b"k"), Some(b"\xff\x00hi"), None), 100).unwrap();
        assert_eq!(&*r.data, "\"/wBoaQ==\"");
        assert_eq!(r.extra.as_deref(), Some("\"encoding\":\"base64\""));
        let r = decode(&msg(Some(b"k"), Some(b"not json"), None), 100).unwrap();
        assert_eq!(r.extra.as_deref(), Some("\"encoding\":\"base64\""));
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "trace",
                value: Some("abc"),
            })
            .insert(Header {
                key: "bin",
                value: Some(&[0xffu8][..]),
            });
        let r = decode(&msg(None, None, Some(headers)), 100).unwrap();
        assert_eq!(&*r.data, "null");
        assert!(r.key.is_none());
        let extra = r.extra.unwrap();
        let json: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        assert_eq!(json["tombstone"], true);
        assert_eq!(json["headers"]["trace"], "abc");
        assert_eq!(json["headers"]["bin"], "base64:/w==");
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            decode(&msg(Some(b"k"), Some(&[b'1'; 101]), None), 100).unwrap_err(),
            Bad::TooLarge
        );
        assert_eq!(
            decode(&msg(Some(b"\xff"), Some(b"1"), None), 100).unwrap_err(),
            Bad::KeyNotUtf8
        );
    }
}
