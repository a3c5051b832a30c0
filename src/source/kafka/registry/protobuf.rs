//! Protobuf: a registry's `.proto` text compiled (by protox) into descriptors, and a
//! message decoded (by prost-reflect) into the JSON mapping the README states: proto
//! field names, fields without presence always there (at their default when unset),
//! 64-bit integers as numbers, enums by name, bytes base64, well-known types in their
//! proto3 JSON forms.

use std::collections::HashMap;

use prost_reflect::{DynamicMessage, FileDescriptor, MessageDescriptor, SerializeOptions};
use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

/// The name the registered schema's own file is compiled under (the registry keeps no
/// file name for it; its references are imported by their reference names).
const MAIN: &str = "pushgate-registry-schema.proto";

const OPTIONS: SerializeOptions = SerializeOptions::new()
    .stringify_64_bit_integers(false)
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// A compiled schema: the file whose messages the message-index list points into.
pub(crate) struct ProtoSchema {
    file: FileDescriptor,
}

/// The registered text and its references (name as imported -> text).
struct Sources(HashMap<String, String>);

impl FileResolver for Sources {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match self.0.get(name) {
            Some(text) => match serialized(text) {
                // Renamed to the name it is imported (or compiled) under.
                Some(mut fdp) => {
                    fdp.name = Some(name.to_owned());
                    Ok(File::from_file_descriptor_proto(fdp))
                }
                None => File::from_source(name, text),
            },
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// A schema registered as a base64 serialized `FileDescriptorProto` (what confluent-kafka's
/// Python serializer registers; Confluent's registry serves it back as `.proto` text,
/// Apicurio as registered). `.proto` text is never valid base64 (it has spaces and `;`).
fn serialized(text: &str) -> Option<prost_reflect::prost_types::FileDescriptorProto> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    prost::Message::decode(bytes.as_slice()).ok()
}

impl ProtoSchema {
    pub(crate) fn parse(text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let mut files: HashMap<String, String> = references.iter().cloned().collect();
        files.insert(MAIN.to_owned(), text.to_owned());
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources(files));
        // google/protobuf/*.proto (timestamp, duration, wrappers, struct, any, …).
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler.open_file(MAIN).map_err(|e| e.to_string())?;
        let file = compiler
            .descriptor_pool()
            .get_file_by_name(MAIN)
            .ok_or("the compiled schema has no file")?;
        Ok(Self { file })
    }

    /// Decodes the bytes after the schema id: the message-index list, then the message.
    pub(crate) fn to_json(&self, bytes: &[u8]) -> Result<String, String> {
        let (indexes, rest) = message_indexes(bytes)?;
        let desc = self.message(&indexes)?;
        let msg = DynamicMessage::decode(desc, rest).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(64 + rest.len());
        let mut ser = serde_json::Serializer::new(&mut out);
        msg.serialize_with_options(&mut ser, &OPTIONS)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }

    pub(crate) fn message(&self, indexes: &[usize]) -> Result<MessageDescriptor, String> {
        let (first, nested) = indexes.split_first().ok_or("empty message-index list")?;
        let mut desc = self
            .file
            .messages()
            .nth(*first)
            .ok_or_else(|| format!("message index {first} not in the schema"))?;
        for i in nested {
            let child = desc.child_messages().nth(*i);
            desc = child
                .ok_or_else(|| format!("nested message index {i} not in {}", desc.full_name()))?;
        }
        Ok(desc)
    }
}

/// Confluent's message-index list: a zigzag varint count, then that many zigzag
/// varints; a lone 0 stands for `[0]` (the file's first message).
pub(crate) fn message_indexes(bytes: &[u8]) -> Result<(Vec<usize>, &[u8]), String> {
    let (count, mut rest) = zigzag(bytes)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    if !(1..=64).contains(&count) {
        return Err(format!("message-index list of {count} entries"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (i, r) = zigzag(rest)?;
        if i < 0 {
            return Err(format!("negative message index {i}"));
        }
        out.push(i as usize);
        rest = r;
    }
    Ok((out, rest))
}

fn zigzag(bytes: &[u8]) -> Result<(i64, &[u8]), String> {
    let mut v: u64 = 0;
    for (n, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * n);
        if b & 0x80 == 0 {
            let decoded = ((v >> 1) as i64) ^ -((v & 1) as i64);
            return Ok((decoded, &bytes[n + 1..]));
        }
    }
    Err("truncated message-index list".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_index_lists() {
        assert_eq!(message_indexes(&[0, 9]).unwrap(), (vec![0], &[9u8][..]));
        // [1, 0]: count 2 (zigzag 4), 1 (2), 0 (0).
        assert_eq!(message_indexes(&[4, 2, 0]).unwrap().0, vec![1, 0]);
        assert!(message_indexes(&[]).is_err());
        assert!(message_indexes(&[4, 2]).is_err());
        assert!(message_indexes(&[3, 2]).is_err(), "negative count");
    }

    #[test]
    fn decodes_nested_and_well_known_types() {
        let text = r#"syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message Other { string x = 1; }
message Order {
  enum State { NEW = 0; PAID = 1; }
  message Line { string sku = 1; int64 qty = 2; }
  int64 id = 1;
  State state = 2;
  repeated Line lines = 3;
  map<string, int32> tags = 4;
  bytes blob = 5;
  google.protobuf.Timestamp at = 6;
  google.protobuf.StringValue note = 7;
  double price = 8;
  string unset = 9;
}
"#;
        let schema = ProtoSchema::parse(text, &[]).unwrap();
        // id=9007199254740993, state=PAID, one line, tag a=1, blob ff00, at=1704164645.123, note "n".
        let order = schema.message(&[1]).unwrap();
        let json = serde_json::json!({
            "id": "9007199254740993", "state": "PAID",
            "lines": [{"sku": "s", "qty": 2}], "tags": {"a": 1}, "blob": "/wA=",
            "at": "2024-01-02T03:04:05.123Z", "note": "n", "price": 1.5
        });
        let msg = DynamicMessage::deserialize(order, json).unwrap();
        let mut bytes = vec![2, 2]; // [1]
        prost::Message::encode(&msg, &mut bytes).unwrap();
        let out: serde_json::Value =
            serde_json::from_str(&schema.to_json(&bytes).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "id": 9007199254740993u64, "state": "PAID",
                "lines": [{"sku": "s", "qty": 2}], "tags": {"a": 1}, "blob": "/wA=",
                "at": "2024-01-02T03:04:05.123Z", "note": "n", "price": 1.5, "unset": ""
            })
        );
        // [1, 0]: Order.Line.
        let line = schema.message(&[1, 0]).unwrap();
        assert_eq!(line.full_name(), "shop.Order.Line");
        assert!(schema.to_json(&[2, 20]).is_err(), "index 10 does not exist");
        assert!(ProtoSchema::parse("syntax = \"proto3\"; message {", &[]).is_err());
    }
}
