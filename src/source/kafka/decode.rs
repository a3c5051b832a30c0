//! Turning a Kafka message into a [`LogRecord`]: key, JSON or base64 value, headers, timestamp.
//!
//! Topics with `format = "json"` (the default):
//! - The key (UTF-8) is the subscription key; a record without a key has none.
//! - A value that is JSON is passed on as compact JSON; any other value is
//!   passed on as a base64 string with `"encoding":"base64"` next to it.
//! - A missing value (a tombstone) is `null` with `"op":"delete","tombstone":true`,
//!   and deletes its key from the view.
//!
//! Topics with `format = "debezium"` (see [`debezium`](super::debezium)):
//! - The key is taken from Debezium's key struct by the topic's `key` rule.
//! - A change event becomes `"op":"create|update|delete|read","source":{…}`
//!   with the row image as `data`; a delete removes its key from the view.
//! - A tombstone (Debezium sends one after each delete) is the same as on a
//!   json topic: `data` null, `"op":"delete","tombstone":true`.
//!
//! On both:
//! - Headers become `"headers":{"name":"value"}`; a value that is not UTF-8 is
//!   written `"base64:<base64>"`, a missing value `null`.
//! - The Kafka timestamp (create or log-append time, ms) is the record's `timestamp`.
//!
//! A record whose key is not UTF-8, whose value is larger than
//! `kafka.max_record_bytes`, or (on a Debezium topic) whose value is not a
//! change event, is bad: the caller counts it, logs its position, copies it to
//! the dead-letter topic if one is set, and skips it.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rdkafka::message::{Headers, Message};

use super::debezium::{self, EnvelopeError, Event};
use super::registry::{Registry, SchemaError};
use crate::record::{compact_json, push_json_str, LogRecord, TOMBSTONE_EXTRA};
use crate::source::topics::{Encoding, KeyRule, RecordFormat, TopicConfig};

/// Why a record was skipped (a fixed set: [`Bad::label`] is a metric label).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Bad {
    #[error("the value is larger than kafka.max_record_bytes")]
    TooLarge,
    #[error("the key is not UTF-8")]
    KeyNotUtf8,
    #[error("not a Debezium change event: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("key: {0}")]
    Key(#[source] SchemaError),
    #[error("value: {0}")]
    Value(#[source] SchemaError),
}

impl Bad {
    pub fn label(&self) -> &'static str {
        match self {
            Bad::TooLarge => "too_large",
            Bad::KeyNotUtf8 => "key_not_utf8",
            Bad::Envelope(_) => "bad_envelope",
            Bad::Key(e) | Bad::Value(e) => e.label(),
        }
    }
}

/// How one topic's records are read: its `format`, `key`, `encoding` and `key_encoding` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoding {
    pub format: RecordFormat,
    pub key: KeyRule,
    pub encoding: Encoding,
    pub key_encoding: Encoding,
}

impl Decoding {
    pub fn of(topic: &TopicConfig) -> Self {
        Self {
            format: topic.format,
            key: topic.key,
            encoding: topic.encoding,
            key_encoding: topic.key_encoding,
        }
    }

    /// Whether the key or the value is read through the schema registry.
    pub fn needs_registry(&self) -> bool {
        self.encoding.needs_registry() || self.key_encoding.needs_registry()
    }
}

/// A registry-encoded key or value as JSON text; `None` when there is no registry
/// (the config check makes that impossible for a topic that names an encoding).
fn registry_json(
    registry: Option<&Registry>,
    encoding: Encoding,
    bytes: &[u8],
) -> Result<String, SchemaError> {
    match registry {
        Some(r) => r.decode(encoding, bytes),
        None => Err(SchemaError::Unavailable("no [schema_registry] url".into())),
    }
}

pub fn decode<M: Message>(
    msg: &M,
    max_bytes: usize,
    how: Decoding,
    registry: Option<&Registry>,
) -> Result<LogRecord, Bad> {
    let payload = msg.payload();
    if payload.map(<[u8]>::len).unwrap_or(0) > max_bytes {
        return Err(Bad::TooLarge);
    }
    let key = match msg.key() {
        None => None,
        Some(k) => {
            // A decoded key is JSON text: a string key is the string itself.
            let decoded;
            let text = if how.key_encoding.needs_registry() {
                let json = registry_json(registry, how.key_encoding, k).map_err(Bad::Key)?;
                decoded = match serde_json::from_str::<String>(&json) {
                    Ok(s) if json.starts_with('"') => s,
                    _ => json,
                };
                decoded.as_str()
            } else {
                std::str::from_utf8(k).map_err(|_| Bad::KeyNotUtf8)?
            };
            match how.format {
                RecordFormat::Json => Some(Arc::<str>::from(text)),
                RecordFormat::Debezium => debezium::record_key(text, how.key).map(Arc::from),
            }
        }
    };
    // Registry-encoded values are decoded to JSON once, here; `format` applies to that.
    let decoded: Option<String> = match payload {
        Some(bytes) if how.encoding.needs_registry() => {
            Some(registry_json(registry, how.encoding, bytes).map_err(Bad::Value)?)
        }
        _ => None,
    };
    let mut extra = String::new();
    let mut delete = false;
    let data: Box<str> = match (payload, how.format) {
        (None, _) => {
            extra.push_str(TOMBSTONE_EXTRA);
            delete = true;
            "null".into()
        }
        // Decoded from the registry's encoding: already compact JSON, no second parse.
        (Some(_), RecordFormat::Json) if decoded.is_some() => {
            decoded.unwrap_or_default().into_boxed_str()
        }
        (Some(bytes), RecordFormat::Json) => {
            match std::str::from_utf8(bytes).ok().map(compact_json) {
                Some(Ok(json)) => json,
                _ => {
                    extra.push_str("\"encoding\":\"base64\"");
                    let mut s = String::with_capacity(bytes.len() * 4 / 3 + 4);
                    push_json_str(&mut s, &STANDARD.encode(bytes));
                    s.into_boxed_str()
                }
            }
        }
        (Some(bytes), RecordFormat::Debezium) => {
            match debezium::parse_value(decoded.as_deref().map(str::as_bytes).unwrap_or(bytes))? {
                Event::Tombstone => {
                    extra.push_str(TOMBSTONE_EXTRA);
                    delete = true;
                    "null".into()
                }
                Event::Change { op, data, source } => {
                    extra.push_str("\"op\":\"");
                    extra.push_str(op.name());
                    extra.push_str("\",\"source\":");
                    extra.push_str(&source);
                    delete = op == debezium::Op::Delete;
                    data
                }
            }
        }
    };
    let mut trace = None;
    if let Some(headers) = msg.headers() {
        if headers.count() > 0 {
            if !extra.is_empty() {
                extra.push(',');
            }
            extra.push_str("\"headers\":{");
            // The producer's span, looked for only while traces are on.
            let traced = crate::traces::on();
            for (i, h) in headers.iter().enumerate() {
                if i > 0 {
                    extra.push(',');
                }
                if traced && h.key == "traceparent" {
                    trace = h
                        .value
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(crate::traces::TraceParent::parse);
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
        delete,
        position: None,
        trace,
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
        let r = decode(
            &msg(Some(b"k"), Some(b"{ \"a\" :\n 1 }"), None),
            100,
            Decoding::default(),
            None,
        )
        .unwrap();
        assert_eq!(&*r.data, "{\"a\":1}");
        assert!(r.extra.is_none());
        assert!(!r.delete);
        assert_eq!((r.partition, r.offset, r.timestamp), (1, 7, 42));
        let r = decode(
            &msg(Some(b"k"), Some(b"\xff\x00hi"), None),
            100,
            Decoding::default(),
            None,
        )
        .unwrap();
        assert_eq!(&*r.data, "\"/wBoaQ==\"");
        assert_eq!(r.extra.as_deref(), Some("\"encoding\":\"base64\""));
        let r = decode(
            &msg(Some(b"k"), Some(b"not json"), None),
            100,
            Decoding::default(),
            None,
        )
        .unwrap();
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
        let r = decode(
            &msg(None, None, Some(headers)),
            100,
            Decoding::default(),
            None,
        )
        .unwrap();
        assert_eq!(&*r.data, "null");
        assert!(r.key.is_none());
        let extra = r.extra.unwrap();
        let json: serde_json::Value = serde_json::from_str(&format!("{{{extra}}}")).unwrap();
        assert_eq!(json["tombstone"], true);
        assert_eq!(json["op"], "delete", "a tombstone deletes its key");
        assert!(r.delete);
        assert_eq!(json["headers"]["trace"], "abc");
        assert_eq!(json["headers"]["bin"], "base64:/w==");
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            decode(
                &msg(Some(b"k"), Some(&[b'1'; 101]), None),
                100,
                Decoding::default(),
                None
            )
            .unwrap_err(),
            Bad::TooLarge
        );
        assert_eq!(
            decode(
                &msg(Some(b"\xff"), Some(b"1"), None),
                100,
                Decoding::default(),
                None
            )
            .unwrap_err(),
            Bad::KeyNotUtf8
        );
    }

    const DEBEZIUM: Decoding = Decoding {
        format: RecordFormat::Debezium,
        key: KeyRule::Field,
        encoding: Encoding::Json,
        key_encoding: Encoding::Json,
    };

    fn members(r: &LogRecord) -> serde_json::Value {
        let extra = r.extra.as_deref().unwrap_or("");
        serde_json::from_str(&format!("{{{extra}}}")).unwrap()
    }

    #[test]
    fn debezium_change_events() {
        let key = br#"{"schema":{"type":"struct","fields":[{"type":"int32","field":"id"}]},"payload":{"id":1001}}"#;
        let value = br#"{"before":null,"after":{"id":1001,"email":"a@x"},"source":{"table":"customers","lsn":7},"op":"c","ts_ms":1}"#;
        let headers = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("t1"),
        });
        let r = decode(
            &msg(Some(key), Some(value), Some(headers)),
            1000,
            DEBEZIUM,
            None,
        )
        .unwrap();
        assert_eq!(r.key.as_deref(), Some("1001"));
        assert_eq!(&*r.data, r#"{"email":"a@x","id":1001}"#);
        assert!(!r.delete);
        let m = members(&r);
        assert_eq!(m["op"], "create");
        assert_eq!(m["source"]["lsn"], 7);
        assert_eq!(
            m["headers"]["trace"], "t1",
            "headers are kept on change events"
        );

        let value = br#"{"before":{"id":1001,"email":"a@x"},"after":null,"source":{"table":"customers"},"op":"d"}"#;
        let json_key = Decoding {
            key: KeyRule::Json,
            ..DEBEZIUM
        };
        let r = decode(
            &msg(Some(br#"{"id":1001}"#), Some(value), None),
            1000,
            json_key,
            None,
        )
        .unwrap();
        assert_eq!(r.key.as_deref(), Some(r#"{"id":1001}"#));
        assert_eq!(
            &*r.data, r#"{"email":"a@x","id":1001}"#,
            "a delete carries the before image"
        );
        assert!(r.delete);
        assert_eq!(members(&r)["op"], "delete");

        // The tombstone that follows a delete.
        let r = decode(
            &msg(Some(br#"{"id":1001}"#), None, None),
            1000,
            DEBEZIUM,
            None,
        )
        .unwrap();
        assert_eq!(
            (r.key.as_deref(), &*r.data, r.delete),
            (Some("1001"), "null", true)
        );
        let m = members(&r);
        assert_eq!(
            (m["op"].as_str(), m["tombstone"].as_bool()),
            (Some("delete"), Some(true))
        );
        assert!(m.get("source").is_none());
    }

    /// Debezium's Avro converter through the registry: the key struct and the change
    /// event decode to JSON first, then the envelope is read as on a JSON topic.
    #[test]
    fn debezium_change_events_in_avro() {
        use super::super::registry::avro::AvroSchema;
        use super::super::registry::Parsed;
        use crate::source::registry_config::SchemaRegistryConfig;
        use apache_avro::types::Value as Avro;

        let key_schema = r#"{"type":"record","name":"Key","namespace":"dbserver1.inventory.customers","fields":[{"name":"id","type":"int"}]}"#;
        let value_schema = r#"{"type":"record","name":"Envelope","namespace":"dbserver1.inventory.customers","fields":[
            {"name":"before","type":["null",{"type":"record","name":"Value","fields":[{"name":"id","type":"int"},{"name":"email","type":"string"}]}],"default":null},
            {"name":"after","type":["null","Value"],"default":null},
            {"name":"source","type":{"type":"record","name":"Source","namespace":"io.debezium.connector.postgresql","fields":[{"name":"table","type":"string"},{"name":"lsn","type":["null","long"]}]}},
            {"name":"op","type":"string"},
            {"name":"ts_ms","type":["null","long"]}]}"#;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let config = SchemaRegistryConfig {
            url: "http://127.0.0.1:9".into(),
            retries: 0,
            ..SchemaRegistryConfig::default()
        };
        let registry = Registry::new(&config, rt.handle().clone()).unwrap();
        registry.insert(
            1,
            Parsed::Avro(Box::new(AvroSchema::parse(key_schema, &[]).unwrap())),
        );
        registry.insert(
            2,
            Parsed::Avro(Box::new(AvroSchema::parse(value_schema, &[]).unwrap())),
        );
        let framed = |id: u8, schema: &str, value: Avro| {
            let schema = apache_avro::Schema::parse_str(schema).unwrap();
            let mut bytes = vec![0, 0, 0, 0, id];
            bytes.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
            bytes
        };
        let key = framed(
            1,
            key_schema,
            Avro::Record(vec![("id".into(), Avro::Int(1001))]),
        );
        let row = Avro::Record(vec![
            ("id".into(), Avro::Int(1001)),
            ("email".into(), Avro::String("a@x".into())),
        ]);
        let value = framed(
            2,
            value_schema,
            Avro::Record(vec![
                ("before".into(), Avro::Union(0, Box::new(Avro::Null))),
                ("after".into(), Avro::Union(1, Box::new(row))),
                (
                    "source".into(),
                    Avro::Record(vec![
                        ("table".into(), Avro::String("customers".into())),
                        ("lsn".into(), Avro::Union(1, Box::new(Avro::Long(7)))),
                    ]),
                ),
                ("op".into(), Avro::String("c".into())),
                ("ts_ms".into(), Avro::Union(1, Box::new(Avro::Long(1)))),
            ]),
        );
        let how = Decoding {
            encoding: Encoding::Avro,
            key_encoding: Encoding::Avro,
            ..DEBEZIUM
        };
        let r = decode(
            &msg(Some(&key), Some(&value), None),
            1 << 20,
            how,
            Some(&registry),
        )
        .unwrap();
        assert_eq!(r.key.as_deref(), Some("1001"), "the key struct's one field");
        assert_eq!(&*r.data, r#"{"email":"a@x","id":1001}"#);
        let m = members(&r);
        assert_eq!(
            (m["op"].as_str(), m["source"]["lsn"].as_i64()),
            (Some("create"), Some(7))
        );
        // A value that is not in the wire format is a bad record with the registry's reason.
        let err = decode(
            &msg(Some(&key), Some(b"{}"), None),
            1 << 20,
            how,
            Some(&registry),
        )
        .unwrap_err();
        assert_eq!(err.label(), "undecodable", "{err}");
    }

    #[test]
    fn debezium_bad_envelopes_are_bad_records() {
        for value in [
            &b"not json"[..],
            b"{\"after\":{}}",
            b"{\"op\":\"x\"}",
            b"{\"op\":\"u\"}",
        ] {
            let err = decode(
                &msg(Some(b"{\"id\":1}"), Some(value), None),
                1000,
                DEBEZIUM,
                None,
            )
            .unwrap_err();
            assert!(matches!(err, Bad::Envelope(_)), "{err:?}");
            assert_eq!(err.label(), "bad_envelope");
        }
        // The same bytes on a json topic are fine (passed on as they are, or as base64).
        assert!(decode(
            &msg(Some(b"k"), Some(b"{\"op\":\"x\"}"), None),
            1000,
            Decoding::default(),
            None
        )
        .is_ok());
        assert_eq!(
            decode(&msg(Some(b"\xff"), Some(b"{}"), None), 1000, DEBEZIUM, None).unwrap_err(),
            Bad::KeyNotUtf8
        );
    }

    #[test]
    fn the_readme_examples_are_what_clients_receive() {
        use crate::record::{Framing, Record};
        let readme = include_str!("../../../docs/cdc.md");
        let examples: Vec<&str> = readme
            .lines()
            .filter(|l| {
                l.starts_with(r#"{"type":"record","topic":"dbserver1.inventory.customers""#)
            })
            .collect();
        assert_eq!(examples.len(), 3, "create, delete, tombstone");
        let row = r#"{"id":1004,"first_name":"Anne","last_name":"Kretchmar","email":"annek@noanswer.org"}"#;
        let source = |pos: u64, ts: u64| {
            format!(
                r#"{{"version":"2.7.0.Final","connector":"mysql","name":"dbserver1","ts_ms":{ts},"snapshot":"false","db":"inventory","table":"customers","server_id":223344,"file":"mysql-bin.000003","pos":{pos},"row":0}}"#
            )
        };
        let create = format!(
            r#"{{"before":null,"after":{row},"source":{},"op":"c","ts_ms":1700000000800,"transaction":null}}"#,
            source(484, 1700000000000)
        );
        let delete = format!(
            r#"{{"before":{row},"after":null,"source":{},"op":"d","ts_ms":1700000060100,"transaction":null}}"#,
            source(1022, 1700000060000)
        );
        let message = |value: Option<&str>, offset: i64, ts: i64| {
            OwnedMessage::new(
                value.map(|v| v.as_bytes().to_vec()),
                Some(br#"{"id":1004}"#.to_vec()),
                "dbserver1.inventory.customers".into(),
                Timestamp::CreateTime(ts),
                0,
                offset,
                None,
            )
        };
        let messages = [
            message(Some(&create), 17, 1700000000812),
            message(Some(&delete), 18, 1700000060112),
            message(None, 19, 1700000060112),
        ];
        for (msg, example) in messages.iter().zip(examples) {
            let log = decode(msg, 1 << 20, DEBEZIUM, None).unwrap();
            let record =
                Record::encode("dbserver1.inventory.customers", &log, "…", Framing::Normal);
            assert_eq!(record.ws.as_str(), example);
        }
    }
}
