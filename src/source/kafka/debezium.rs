//! Debezium change events: the JSON envelope (with or without Kafka Connect's `schema`/`payload` wrapper) and key structs.
//!
//! A change event's value is `{"op":"c|u|d|r","before":{…},"after":{…},"source":{…},…}`,
//! or the same under `"payload"` next to a `"schema"` when the connector runs
//! `JsonConverter` with `schemas.enable=true`. What a client receives is the
//! row image (`after`; `before` for a delete), the operation spelled out, and
//! the `source` metadata. Other envelope members (`ts_ms`, `transaction`, the
//! `before` image of an update) are not passed on.
//!
//! A key is a struct of the table's primary key columns, e.g. `{"id":1001}`:
//! see [`record_key`].
//!
//! A column value the database did not send comes as Debezium's placeholder
//! [`UNAVAILABLE`] (PostgreSQL leaves an unchanged TOASTed value out of an
//! update under `REPLICA IDENTITY DEFAULT`); [`fill_unavailable`] takes it
//! from the key's previous row image.

use serde_json::{Map, Value};

use crate::record::push_json_str;
use crate::source::topics::KeyRule;

/// Why a value on a Debezium topic is not a change event (logged; the metric
/// counts them all under one reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the value is not JSON")]
    NotJson,
    #[error("the value is not a JSON object")]
    NotAnObject,
    #[error("the envelope has no `op`")]
    NoOp,
    #[error("the envelope's `op` is not one of c, u, d, r")]
    UnknownOp,
    #[error("a create, update or read without an `after` image")]
    MissingAfter,
    #[error("a row image (`after` or `before`) that is not a JSON object")]
    RowNotAnObject,
}

/// Debezium's operations, as clients see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A row read by the connector's initial snapshot.
    Read,
}

impl Op {
    fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            _ => return None,
        })
    }

    /// The `op` member's value in a client record.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Read => "read",
        }
    }
}

/// A parsed change-event value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Change {
        op: Op,
        /// Compact JSON of the row image (`null` for a delete without `before`).
        data: Box<str>,
        /// Compact JSON of the `source` block (`null` when absent).
        source: Box<str>,
    },
    /// `null`, or the wrapper with a `null` payload: what JsonConverter writes for no value.
    Tombstone,
}

/// Debezium's `unavailable.value.placeholder` (its default): the value of a
/// column the database did not send. A `bytea` column gets the same text as
/// bytes, which JsonConverter writes in base64 ([`UNAVAILABLE_BASE64`]); an
/// array column, a list holding the placeholder.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";
/// [`UNAVAILABLE`]'s bytes in base64, as a `bytea` column carries it.
pub const UNAVAILABLE_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// True when a row image may hold a placeholder (a text search: cheap, and a
/// false positive only costs [`fill_unavailable`] a parse).
pub fn may_have_unavailable(data: &str) -> bool {
    data.contains(UNAVAILABLE) || data.contains(UNAVAILABLE_BASE64)
}

fn is_unavailable(value: &Value) -> bool {
    match value {
        Value::String(s) => s == UNAVAILABLE || s == UNAVAILABLE_BASE64,
        Value::Array(items) => !items.is_empty() && items.iter().all(is_unavailable),
        _ => false,
    }
}

/// `data` with each member that holds the placeholder replaced by the same
/// member of `previous` (the key's last row image), when that one has a real
/// value. `None` when nothing was filled: not JSON objects, no placeholder,
/// or no previous value for it.
pub fn fill_unavailable(data: &str, previous: &str) -> Option<Box<str>> {
    let Ok(Value::Object(mut row)) = serde_json::from_str::<Value>(data) else {
        return None;
    };
    let Ok(Value::Object(previous)) = serde_json::from_str::<Value>(previous) else {
        return None;
    };
    let mut filled = false;
    for (name, value) in row.iter_mut() {
        if is_unavailable(value) {
            if let Some(old) = previous.get(name).filter(|old| !is_unavailable(old)) {
                *value = old.clone();
                filled = true;
            }
        }
    }
    // Compact, like every other row image (no raw newline can reach an SSE line).
    filled.then(|| Value::Object(row).to_string().into_boxed_str())
}

/// Parses a change-event value. Never panics, whatever the bytes.
pub fn parse_value(bytes: &[u8]) -> Result<Event, EnvelopeError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| EnvelopeError::NotJson)?;
    let mut envelope = match value {
        Value::Null => return Ok(Event::Tombstone),
        Value::Object(map) => map,
        _ => return Err(EnvelopeError::NotAnObject),
    };
    if let Some(payload) = unwrap(&mut envelope) {
        envelope = match payload {
            Value::Null => return Ok(Event::Tombstone),
            Value::Object(map) => map,
            _ => return Err(EnvelopeError::NotAnObject),
        };
    }
    let op = match envelope.get("op") {
        None | Some(Value::Null) => return Err(EnvelopeError::NoOp),
        Some(Value::String(code)) => Op::from_code(code).ok_or(EnvelopeError::UnknownOp)?,
        Some(_) => return Err(EnvelopeError::UnknownOp),
    };
    let image = match op {
        Op::Delete => match envelope.remove("before") {
            // A delete whose connector sends no old image still names its key.
            None | Some(Value::Null) => Value::Null,
            Some(row @ Value::Object(_)) => row,
            Some(_) => return Err(EnvelopeError::RowNotAnObject),
        },
        Op::Create | Op::Update | Op::Read => match envelope.remove("after") {
            None | Some(Value::Null) => return Err(EnvelopeError::MissingAfter),
            Some(row @ Value::Object(_)) => row,
            Some(_) => return Err(EnvelopeError::RowNotAnObject),
        },
    };
    let source = envelope.remove("source").unwrap_or(Value::Null);
    Ok(Event::Change {
        op,
        // `Value`'s Display is compact: no raw newline can end up in an SSE line.
        data: image.to_string().into_boxed_str(),
        source: source.to_string().into_boxed_str(),
    })
}

/// The inner value of Kafka Connect's `{"schema":…,"payload":…}` wrapper, if
/// `map` is one. An envelope with its own `op` is never a wrapper.
fn unwrap(map: &mut Map<String, Value>) -> Option<Value> {
    let wrapped = map.len() == 2
        && !map.contains_key("op")
        && map.contains_key("payload")
        && matches!(map.get("schema"), Some(Value::Object(_) | Value::Null));
    if wrapped {
        map.remove("payload")
    } else {
        None
    }
}

/// The record key of a Debezium key (UTF-8 text): `None` for a `null` key.
///
/// The struct is unwrapped from a `schema`/`payload` wrapper. With
/// [`KeyRule::Field`], a struct of one field gives that field's value (a
/// string as it is, anything else as compact JSON: `{"id":1001}` -> `1001`);
/// otherwise the key is the struct's canonical JSON (members sorted, compact),
/// so the same row always gets the same key whoever serialized it. A key that
/// is not JSON at all (a connector with a string key converter) is used as it is.
pub fn record_key(text: &str, rule: KeyRule) -> Option<Box<str>> {
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return Some(text.into());
    };
    if let Value::Object(map) = &mut value {
        if let Some(inner) = unwrap(map) {
            value = inner;
        }
    }
    let value = match value {
        Value::Null => return None,
        Value::Object(map) if rule == KeyRule::Field && map.len() == 1 => map
            .into_iter()
            .next()
            .map(|(_, v)| v)
            .unwrap_or(Value::Null),
        other => other,
    };
    Some(match value {
        Value::String(s) => s.into_boxed_str(),
        other => {
            let mut out = String::new();
            canonical_json(&other, &mut out);
            out.into_boxed_str()
        }
    })
}

/// Writes `value` as compact JSON with object members sorted by name, whatever
/// order serde_json's map keeps (its `preserve_order` feature may be enabled
/// by another crate).
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (name, member)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, name);
                out.push(':');
                canonical_json(member, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SOURCE: &str = r#"{"version":"2.7.0.Final","connector":"mysql","name":"dbserver1","ts_ms":1700000000000,"snapshot":"false","db":"inventory","table":"customers","server_id":223344,"file":"mysql-bin.000003","pos":484,"row":0}"#;

    fn envelope(op: &str, before: Value, after: Value) -> Value {
        json!({
            "before": before,
            "after": after,
            "source": serde_json::from_str::<Value>(SOURCE).unwrap(),
            "op": op,
            "ts_ms": 1700000000123u64,
            "transaction": null
        })
    }

    /// The same envelope as JsonConverter writes it with `schemas.enable=true`.
    fn wrapped(payload: Value) -> Value {
        json!({
            "schema": {
                "type": "struct",
                "optional": false,
                "name": "dbserver1.inventory.customers.Envelope",
                "fields": [
                    {"type": "struct", "optional": true, "field": "before", "fields": []},
                    {"type": "struct", "optional": true, "field": "after", "fields": []},
                    {"type": "string", "optional": false, "field": "op"}
                ]
            },
            "payload": payload
        })
    }

    fn parse(v: &Value) -> Result<Event, EnvelopeError> {
        parse_value(v.to_string().as_bytes())
    }

    fn row(id: u64, email: &str) -> Value {
        json!({"id": id, "first_name": "Anne", "email": email})
    }

    #[test]
    fn every_op_with_and_without_the_wrapper() {
        let cases = [
            ("c", Value::Null, row(1, "a@x"), Op::Create, row(1, "a@x")),
            ("u", row(1, "a@x"), row(1, "b@x"), Op::Update, row(1, "b@x")),
            ("d", row(1, "b@x"), Value::Null, Op::Delete, row(1, "b@x")),
            ("r", Value::Null, row(2, "r@x"), Op::Read, row(2, "r@x")),
        ];
        for (code, before, after, op, data) in cases {
            let plain = envelope(code, before, after);
            for value in [plain.clone(), wrapped(plain)] {
                match parse(&value).unwrap() {
                    Event::Change {
                        op: got,
                        data: d,
                        source,
                    } => {
                        assert_eq!(got, op, "{code}");
                        assert_eq!(serde_json::from_str::<Value>(&d).unwrap(), data);
                        let source: Value = serde_json::from_str(&source).unwrap();
                        assert_eq!(source["table"], "customers");
                        assert_eq!(source["pos"], 484);
                    }
                    Event::Tombstone => panic!("{code} is a change"),
                }
            }
        }
        assert_eq!(Op::Read.name(), "read");
        assert_eq!(Op::Delete.name(), "delete");
    }

    #[test]
    fn output_is_compact_and_keeps_what_is_needed() {
        let text = "{\n  \"op\": \"c\",\n  \"after\": {\"id\": 1,\n \"note\": \"two\\nlines\"}\n}";
        let Event::Change { data, source, .. } = parse_value(text.as_bytes()).unwrap() else {
            panic!("a change")
        };
        assert!(!data.contains('\n'), "{data}");
        assert_eq!(&*data, r#"{"id":1,"note":"two\nlines"}"#);
        assert_eq!(&*source, "null", "no source block: null");
    }

    #[test]
    fn deletes_without_a_before_image_and_tombstones() {
        let Event::Change { op, data, .. } = parse(&json!({"op": "d", "before": null})).unwrap()
        else {
            panic!("a change")
        };
        assert_eq!((op, &*data), (Op::Delete, "null"));
        assert_eq!(parse_value(b"null").unwrap(), Event::Tombstone);
        assert_eq!(parse(&wrapped(Value::Null)).unwrap(), Event::Tombstone);
        assert_eq!(
            parse(&json!({"schema": null, "payload": null})).unwrap(),
            Event::Tombstone
        );
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        use EnvelopeError::*;
        let cases: Vec<(Vec<u8>, EnvelopeError)> = vec![
            (b"not json".to_vec(), NotJson),
            (b"".to_vec(), NotJson),
            (b"\xff\xfe{".to_vec(), NotJson),
            (b"{\"op\":\"c\",\"after\":{".to_vec(), NotJson),
            (b"[1,2]".to_vec(), NotAnObject),
            (b"\"c\"".to_vec(), NotAnObject),
            (b"42".to_vec(), NotAnObject),
            (json!({"after": row(1, "a")}).to_string().into_bytes(), NoOp),
            (
                json!({"op": null, "after": row(1, "a")})
                    .to_string()
                    .into_bytes(),
                NoOp,
            ),
            (json!({}).to_string().into_bytes(), NoOp),
            (
                json!({"op": "x", "after": row(1, "a")})
                    .to_string()
                    .into_bytes(),
                UnknownOp,
            ),
            (json!({"op": "t"}).to_string().into_bytes(), UnknownOp),
            (
                json!({"op": "C", "after": row(1, "a")})
                    .to_string()
                    .into_bytes(),
                UnknownOp,
            ),
            (
                json!({"op": 1, "after": row(1, "a")})
                    .to_string()
                    .into_bytes(),
                UnknownOp,
            ),
            (json!({"op": "c"}).to_string().into_bytes(), MissingAfter),
            (
                json!({"op": "u", "after": null}).to_string().into_bytes(),
                MissingAfter,
            ),
            (
                json!({"op": "r", "before": row(1, "a")})
                    .to_string()
                    .into_bytes(),
                MissingAfter,
            ),
            (
                json!({"op": "c", "after": [1]}).to_string().into_bytes(),
                RowNotAnObject,
            ),
            (
                json!({"op": "d", "before": "x"}).to_string().into_bytes(),
                RowNotAnObject,
            ),
            (
                wrapped(json!({"after": row(1, "a")}))
                    .to_string()
                    .into_bytes(),
                NoOp,
            ),
            (wrapped(json!([1])).to_string().into_bytes(), NotAnObject),
            (
                wrapped(json!({"op": "c"})).to_string().into_bytes(),
                MissingAfter,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse_value(&bytes),
                Err(want),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // Deeply nested input is refused by serde_json's recursion limit, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_value(deep.as_bytes()), Err(NotJson));
    }

    #[test]
    fn a_schema_member_next_to_op_is_not_a_wrapper() {
        let v = json!({"op": "c", "after": row(3, "s"), "schema": {"type": "struct"}});
        assert!(matches!(
            parse(&v).unwrap(),
            Event::Change { op: Op::Create, .. }
        ));
    }

    #[test]
    fn keys_by_rule() {
        use KeyRule::*;
        let key = |text: &str, rule| record_key(text, rule).map(String::from);
        let some = |s: &str| Some(s.to_owned());
        // One field: its value.
        assert_eq!(key(r#"{"id":1001}"#, Field), some("1001"));
        assert_eq!(key(r#"{"code":"EU-1"}"#, Field), some("EU-1"));
        assert_eq!(key(r#"{"flag":true}"#, Field), some("true"));
        assert_eq!(key(r#"{"n":-1.5}"#, Field), some("-1.5"));
        assert_eq!(
            key(r#"{"id":{"b":1,"a":2}}"#, Field),
            some(r#"{"a":2,"b":1}"#)
        );
        // Several fields, or the json rule: canonical JSON, whatever the member order.
        assert_eq!(
            key(r#"{ "order_id": 7, "line": 2 }"#, Field),
            some(r#"{"line":2,"order_id":7}"#)
        );
        assert_eq!(
            key(r#"{"line":2,"order_id":7}"#, Json),
            some(r#"{"line":2,"order_id":7}"#)
        );
        assert_eq!(key(r#"{"id":1001}"#, Json), some(r#"{"id":1001}"#));
        assert_eq!(key(r#"{"s":"a\"b"}"#, Json), some(r#"{"s":"a\"b"}"#));
        // The schema/payload wrapper.
        let wrapped_key = r#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}],"optional":false,"name":"dbserver1.inventory.customers.Key"},"payload":{"id":1001}}"#;
        assert_eq!(key(wrapped_key, Field), some("1001"));
        assert_eq!(key(wrapped_key, Json), some(r#"{"id":1001}"#));
        // Null keys (tables without a primary key), scalars, and keys that are not JSON.
        assert_eq!(key("null", Field), None);
        assert_eq!(key(r#"{"schema":null,"payload":null}"#, Field), None);
        assert_eq!(key("1001", Field), some("1001"));
        assert_eq!(key(r#""abc""#, Json), some("abc"));
        assert_eq!(key("plain-text key", Field), some("plain-text key"));
        assert_eq!(key("{broken", Json), some("{broken"));
        assert_eq!(key("{}", Field), some("{}"));
        assert_eq!(key(r#"{"id":null}"#, Field), some("null"));
    }

    #[test]
    fn unavailable_values_are_filled_from_the_previous_row() {
        let previous = r#"{"id":1,"title":"a","body":"long text","tags":["x","y"],"blob":"AAEC"}"#;
        let data = format!(
            r#"{{"id":1,"title":"b","body":"{UNAVAILABLE}","tags":["{UNAVAILABLE}"],"blob":"{UNAVAILABLE_BASE64}"}}"#
        );
        assert!(may_have_unavailable(&data));
        let filled: Value =
            serde_json::from_str(&fill_unavailable(&data, previous).unwrap()).unwrap();
        assert_eq!(
            filled,
            json!({"id": 1, "title": "b", "body": "long text", "tags": ["x", "y"], "blob": "AAEC"})
        );
        // Nothing to take it from: left as it is.
        let data = format!(r#"{{"id":1,"body":"{UNAVAILABLE}"}}"#);
        assert_eq!(fill_unavailable(&data, r#"{"id":1}"#), None);
        assert_eq!(fill_unavailable(&data, &data), None);
        assert_eq!(fill_unavailable(&data, "null"), None);
        assert_eq!(fill_unavailable("null", previous), None);
        assert_eq!(fill_unavailable(r#"{"id":1,"body":"x"}"#, previous), None);
        assert!(!may_have_unavailable(previous));
        // A value that only contains the placeholder's text is a real value.
        let data = format!(r#"{{"id":1,"body":"see {UNAVAILABLE}"}}"#);
        assert_eq!(fill_unavailable(&data, previous), None);
    }

    #[test]
    fn canonical_json_sorts_nested_members() {
        let v: Value = serde_json::from_str(r#"{"b":[{"y":1,"x":2}],"a":"é\n"}"#).unwrap();
        let mut out = String::new();
        canonical_json(&v, &mut out);
        assert_eq!(out, r#"{"a":"é\n","b":[{"x":2,"y":1}]}"#);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const VALID: &str = r#"{"schema":{"type":"struct"},"payload":{"before":{"id":1,"s":"a\nb"},"after":{"id":1,"s":"ü"},"source":{"table":"t","lsn":[1,2]},"op":"u","ts_ms":5}}"#;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn any_bytes_are_an_error_or_an_event(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = parse_value(&bytes);
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    let _ = record_key(text, KeyRule::Field);
                    let _ = record_key(text, KeyRule::Json);
                }
            }

            #[test]
            fn json_shaped_text_never_panics(text in r#"[{}\[\]":, a-z0-9.\\-]{0,80}"#) {
                let _ = parse_value(text.as_bytes());
                let _ = record_key(&text, KeyRule::Field);
            }

            /// A real envelope cut or spliced anywhere: parsed or refused, and
            /// what parses is compact, one-line JSON.
            #[test]
            fn damaged_envelopes(from in 0usize..200, len in 0usize..40, insert in "[{}\":,opcudr]{0,4}") {
                let mut text = VALID.to_owned();
                let from = from.min(text.len());
                let to = (from + len).min(text.len());
                if text.is_char_boundary(from) && text.is_char_boundary(to) {
                    text.replace_range(from..to, &insert);
                }
                if let Ok(Event::Change { data, source, .. }) = parse_value(text.as_bytes()) {
                    prop_assert!(!data.contains('\n') && !source.contains('\n'));
                    prop_assert!(serde_json::from_str::<Value>(&data).is_ok());
                    prop_assert!(serde_json::from_str::<Value>(&source).is_ok());
                }
            }

            #[test]
            fn canonical_keys_ignore_member_order(a in any::<i64>(), b in "[a-z]{0,8}") {
                let one = format!(r#"{{"x":{a},"y":"{b}"}}"#);
                let two = format!(r#"{{ "y" : "{b}", "x" : {a} }}"#);
                prop_assert_eq!(record_key(&one, KeyRule::Field), record_key(&two, KeyRule::Field));
                prop_assert_eq!(record_key(&one, KeyRule::Json), record_key(&two, KeyRule::Json));
            }
        }
    }
}
