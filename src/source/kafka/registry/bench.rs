//! The decoding cost per record of each registry encoding, against a plain JSON value:
//! what `loadtest/registry-decode-cost.sh` measures (through `pushgate::registry_decode_cost`).
//! The schemas are in the cache, as they are after the first record of each id.

use std::time::Instant;

use apache_avro::types::Value;
use prost_reflect::DynamicMessage;

use super::avro::AvroSchema;
use super::protobuf::ProtoSchema;
use super::{Parsed, Registry};
use crate::source::registry_config::SchemaRegistryConfig;
use crate::source::topics::Encoding;

const AVRO: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
  {"name":"id","type":"string"},{"name":"qty","type":"long"},
  {"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"state","type":{"type":"enum","name":"State","symbols":["NEW","PAID"]}},
  {"name":"note","type":["null","string"]},
  {"name":"attrs","type":{"type":"map","values":"long"}},
  {"name":"ratio","type":"double"}]}"#;

const PROTO: &str = r#"syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Order {
  enum State { NEW = 0; PAID = 1; }
  string id = 1; int64 qty = 2; string price = 3; google.protobuf.Timestamp at = 4;
  State state = 5; string note = 6; map<string, int64> attrs = 7; double ratio = 8;
}
"#;

/// The same order as plain JSON (the Protobuf message is built from it).
const JSON: &str = r#"{"id":"order-000123","qty":7,"price":"1234.50","at":"2024-01-02T03:04:05.123Z","state":"PAID","note":"leave at the door","attrs":{"a":1,"b":2},"ratio":0.25}"#;

/// (encoding, bytes per record, nanoseconds per record) for `records` decodes of each.
pub fn run(records: usize) -> Vec<(&'static str, usize, f64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = SchemaRegistryConfig {
        url: "http://127.0.0.1:9".into(),
        ..SchemaRegistryConfig::default()
    };
    let registry = Registry::new(&config, rt.handle().clone()).expect("registry");
    let avro = AvroSchema::parse(AVRO, &[]).expect("avro schema");
    let proto = ProtoSchema::parse(PROTO, &[]).expect("proto schema");
    let order = Value::Record(vec![
        ("id".into(), Value::String("order-000123".into())),
        ("qty".into(), Value::Long(7)),
        (
            "price".into(),
            Value::Decimal(apache_avro::Decimal::from(vec![0x01, 0xe2, 0x42])),
        ),
        ("at".into(), Value::TimestampMillis(1_704_164_645_123)),
        ("state".into(), Value::Enum(1, "PAID".into())),
        (
            "note".into(),
            Value::Union(1, Box::new(Value::String("leave at the door".into()))),
        ),
        (
            "attrs".into(),
            Value::Map(
                [
                    ("a".to_owned(), Value::Long(1)),
                    ("b".to_owned(), Value::Long(2)),
                ]
                .into(),
            ),
        ),
        ("ratio".into(), Value::Double(0.25)),
    ]);
    let schema = apache_avro::Schema::parse_str(AVRO).expect("avro");
    let mut avro_bytes = vec![0, 0, 0, 0, 1];
    avro_bytes.extend(apache_avro::to_avro_datum(&schema, order).expect("avro datum"));
    let desc = proto.message(&[0]).expect("Order");
    let json: serde_json::Value = serde_json::from_str(JSON).expect("json");
    let msg = DynamicMessage::deserialize(desc, json).expect("proto message");
    let mut proto_bytes = vec![0, 0, 0, 0, 2, 0];
    prost::Message::encode(&msg, &mut proto_bytes).expect("encode");
    let mut json_bytes = vec![0, 0, 0, 0, 3];
    json_bytes.extend(JSON.as_bytes());
    registry.insert(1, Parsed::Avro(Box::new(avro)));
    registry.insert(2, Parsed::Protobuf(proto));
    registry.insert(3, Parsed::Json);

    let time = |f: &dyn Fn() -> usize| {
        // A warm-up pass, then the timed one; the lengths keep the work from being optimized out.
        let mut sink = 0;
        for _ in 0..records / 10 {
            sink += f();
        }
        let start = Instant::now();
        for _ in 0..records {
            sink += f();
        }
        std::hint::black_box(sink);
        start.elapsed().as_nanos() as f64 / records as f64
    };
    let decode = |encoding, bytes: &[u8]| registry.decode(encoding, bytes).expect("decodes").len();
    vec![
        (
            "json (no registry: compacted as on a plain topic)",
            JSON.len(),
            time(&|| crate::record::compact_json(JSON).expect("json").len()),
        ),
        (
            "avro",
            avro_bytes.len(),
            time(&|| decode(Encoding::Avro, &avro_bytes)),
        ),
        (
            "protobuf",
            proto_bytes.len(),
            time(&|| decode(Encoding::Protobuf, &proto_bytes)),
        ),
        (
            "json-schema",
            json_bytes.len(),
            time(&|| decode(Encoding::JsonSchema, &json_bytes)),
        ),
    ]
}
