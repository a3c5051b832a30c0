//! Avro datums to JSON text, walking the writer's schema beside the value (decimals
//! need their scale, which only the schema has). The mapping is the README's table.

use std::collections::HashMap;
use std::fmt::Write as _;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::time;
use crate::record::push_json_str;

/// A parsed writer schema and its named types (for `Ref`s).
pub(crate) struct AvroSchema {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl AvroSchema {
    /// Parses `text`; `references` are the texts of the schemas it names (registry references).
    pub(crate) fn parse(text: &str, references: &[String]) -> Result<Self, String> {
        let schema = if references.is_empty() {
            Schema::parse_str(text).map_err(|e| e.to_string())?
        } else {
            let (schema, refs) =
                Schema::parse_str_with_list(text, references).map_err(|e| e.to_string())?;
            let mut names = HashMap::new();
            for r in &refs {
                collect_names(r, &mut names);
            }
            collect_names(&schema, &mut names);
            return Ok(Self { schema, names });
        };
        let mut names = HashMap::new();
        collect_names(&schema, &mut names);
        Ok(Self { schema, names })
    }

    /// Decodes one datum (the bytes after the wire header) into JSON text.
    pub(crate) fn to_json(&self, mut datum: &[u8]) -> Result<String, String> {
        let value = apache_avro::from_avro_datum(&self.schema, &mut datum, None)
            .map_err(|e| e.to_string())?;
        if !datum.is_empty() {
            return Err(format!("{} bytes left after the datum", datum.len()));
        }
        let mut out = String::with_capacity(64);
        self.write(&mut out, &self.schema, value, 0)?;
        Ok(out)
    }

    fn resolve<'a>(&'a self, schema: &'a Schema) -> Result<&'a Schema, String> {
        match schema {
            Schema::Ref { name } => self
                .names
                .get(name)
                .ok_or_else(|| format!("unknown named type {}", name.fullname(None))),
            s => Ok(s),
        }
    }

    fn write(
        &self,
        out: &mut String,
        schema: &Schema,
        value: Value,
        depth: u32,
    ) -> Result<(), String> {
        if depth > 128 {
            return Err("nested deeper than 128".into());
        }
        let schema = self.resolve(schema)?;
        match (value, schema) {
            (Value::Null, _) => out.push_str("null"),
            (Value::Boolean(b), _) => out.push_str(if b { "true" } else { "false" }),
            (Value::Int(i), _) => write!(out, "{i}").expect("string"),
            (Value::Long(i), _) => write!(out, "{i}").expect("string"),
            (Value::Float(f), _) => push_float(out, f as f64),
            (Value::Double(f), _) => push_float(out, f),
            (Value::Bytes(b), _) | (Value::Fixed(_, b), _) => {
                push_json_str(out, &STANDARD.encode(b))
            }
            (Value::String(s), _) => push_json_str(out, &s),
            (Value::Enum(_, symbol), _) => push_json_str(out, &symbol),
            (Value::Union(i, v), Schema::Union(u)) => {
                let branch = u
                    .variants()
                    .get(i as usize)
                    .ok_or_else(|| format!("union branch {i} out of range"))?;
                self.write(out, branch, *v, depth + 1)?;
            }
            (Value::Array(items), Schema::Array(a)) => {
                out.push('[');
                for (n, item) in items.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    self.write(out, &a.items, item, depth + 1)?;
                }
                out.push(']');
            }
            (Value::Map(map), Schema::Map(m)) => {
                // Sorted, so the same map is always the same text.
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (n, (k, v)) in entries.into_iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    push_json_str(out, &k);
                    out.push(':');
                    self.write(out, &m.types, v, depth + 1)?;
                }
                out.push('}');
            }
            (Value::Record(fields), Schema::Record(r)) => {
                out.push('{');
                for (n, ((name, v), field)) in fields.into_iter().zip(&r.fields).enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    push_json_str(out, &name);
                    out.push(':');
                    self.write(out, &field.schema, v, depth + 1)?;
                }
                out.push('}');
            }
            (Value::Decimal(d), Schema::Decimal(ds)) => {
                let bytes: Vec<u8> = Vec::try_from(&d).map_err(|e| e.to_string())?;
                push_json_str(out, &decimal_string(&bytes, ds.scale));
            }
            (Value::BigDecimal(d), _) => push_json_str(out, &d.to_string()),
            (Value::Uuid(u), _) => push_json_str(out, &u.to_string()),
            (Value::Date(days), _) => push_json_str(out, &time::date(days as i64)),
            (Value::TimeMillis(ms), _) => {
                push_json_str(out, &time::time_of_day(ms as i64 * 1_000_000, 3))
            }
            (Value::TimeMicros(us), _) => push_json_str(out, &time::time_of_day(us * 1_000, 6)),
            (Value::TimestampMillis(v), _) => {
                push_json_str(out, &time::timestamp(v as i128 * 1_000_000, 3, true))
            }
            (Value::TimestampMicros(v), _) => {
                push_json_str(out, &time::timestamp(v as i128 * 1_000, 6, true))
            }
            (Value::TimestampNanos(v), _) => {
                push_json_str(out, &time::timestamp(v as i128, 9, true))
            }
            (Value::LocalTimestampMillis(v), _) => {
                push_json_str(out, &time::timestamp(v as i128 * 1_000_000, 3, false))
            }
            (Value::LocalTimestampMicros(v), _) => {
                push_json_str(out, &time::timestamp(v as i128 * 1_000, 6, false))
            }
            (Value::LocalTimestampNanos(v), _) => {
                push_json_str(out, &time::timestamp(v as i128, 9, false))
            }
            (Value::Duration(d), _) => write!(
                out,
                "{{\"months\":{},\"days\":{},\"millis\":{}}}",
                u32::from(d.months()),
                u32::from(d.days()),
                u32::from(d.millis())
            )
            .expect("string"),
            (v, s) => return Err(format!("value {v:?} does not fit schema {s}")),
        }
        Ok(())
    }
}

/// NaN and the infinities have no JSON number: they are the strings Protobuf's JSON uses.
pub(crate) fn push_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 {
            "\"Infinity\""
        } else {
            "\"-Infinity\""
        });
    } else {
        out.push_str(&serde_json::Number::from_f64(f).expect("finite").to_string());
    }
}

fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.clone(), schema.clone());
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Decimal(d) => collect_names(&d.inner, names),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => {
            for v in u.variants() {
                collect_names(v, names);
            }
        }
        _ => {}
    }
}

/// The exact decimal text of a big-endian two's-complement unscaled value and a scale.
pub(crate) fn decimal_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    // Magnitude: the two's complement negated for negative values.
    let mut mag: Vec<u8> = if negative {
        let mut m: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for b in m.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        m
    } else {
        bytes.to_vec()
    };
    // Repeated division by 10 (values are a few bytes; this is not a hot spot).
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let text = String::from_utf8(digits).expect("ascii digits");
    let (int, frac) = text.split_at(text.len() - scale);
    let mut s = String::with_capacity(text.len() + 2);
    if negative {
        s.push('-');
    }
    s.push_str(int);
    if scale > 0 {
        s.push('.');
        s.push_str(frac);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal_string(&[0x30, 0x39], 2), "123.45");
        assert_eq!(decimal_string(&[0xcf, 0xc7], 2), "-123.45");
        assert_eq!(decimal_string(&[0x05], 3), "0.005");
        assert_eq!(decimal_string(&[0xff], 0), "-1");
        assert_eq!(decimal_string(&[], 0), "0");
        // 2^127 - 1 with 10 decimals: beyond f64 and i64, still exact.
        let mut max = vec![0x7f];
        max.extend([0xff; 15]);
        assert_eq!(
            decimal_string(&max, 10),
            "17014118346046923173168730371.5884105727"
        );
    }

    #[test]
    fn every_mapped_type() {
        let schema = r#"{"type":"record","name":"T","namespace":"n","fields":[
            {"name":"b","type":"boolean"},{"name":"i","type":"int"},{"name":"l","type":"long"},
            {"name":"f","type":"float"},{"name":"d","type":"double"},{"name":"s","type":"string"},
            {"name":"by","type":"bytes"},{"name":"fx","type":{"type":"fixed","name":"F","size":2}},
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A","B"]}},
            {"name":"u","type":["null","string"]},{"name":"un","type":["null","string"]},
            {"name":"a","type":{"type":"array","items":"int"}},
            {"name":"m","type":{"type":"map","values":"long"}},
            {"name":"dec","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
            {"name":"date","type":{"type":"int","logicalType":"date"}},
            {"name":"tm","type":{"type":"int","logicalType":"time-millis"}},
            {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"tu","type":{"type":"long","logicalType":"timestamp-micros"}},
            {"name":"lt","type":{"type":"long","logicalType":"local-timestamp-millis"}},
            {"name":"uuid","type":{"type":"string","logicalType":"uuid"}},
            {"name":"again","type":"F"}
        ]}"#;
        let parsed = AvroSchema::parse(schema, &[]).unwrap();
        let value = Value::Record(vec![
            ("b".into(), Value::Boolean(true)),
            ("i".into(), Value::Int(-7)),
            ("l".into(), Value::Long(9_007_199_254_740_993)),
            ("f".into(), Value::Float(1.5)),
            ("d".into(), Value::Double(f64::NAN)),
            ("s".into(), Value::String("é\"".into())),
            ("by".into(), Value::Bytes(vec![0xff, 0])),
            ("fx".into(), Value::Fixed(2, vec![1, 2])),
            ("e".into(), Value::Enum(1, "B".into())),
            (
                "u".into(),
                Value::Union(1, Box::new(Value::String("x".into()))),
            ),
            ("un".into(), Value::Union(0, Box::new(Value::Null))),
            ("a".into(), Value::Array(vec![Value::Int(1), Value::Int(2)])),
            (
                "m".into(),
                Value::Map(
                    [
                        ("z".to_owned(), Value::Long(1)),
                        ("a".to_owned(), Value::Long(2)),
                    ]
                    .into(),
                ),
            ),
            (
                "dec".into(),
                Value::Decimal(apache_avro::Decimal::from(vec![0x30, 0x39])),
            ),
            ("date".into(), Value::Date(19723)),
            ("tm".into(), Value::TimeMillis(3_723_004)),
            ("ts".into(), Value::TimestampMillis(1_704_164_645_123)),
            ("tu".into(), Value::TimestampMicros(-1)),
            ("lt".into(), Value::LocalTimestampMillis(0)),
            (
                "uuid".into(),
                Value::Uuid("6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse().unwrap()),
            ),
            ("again".into(), Value::Fixed(2, vec![3, 4])),
        ]);
        let schema_ = apache_avro::Schema::parse_str(schema).unwrap();
        let bytes = apache_avro::to_avro_datum(&schema_, value).unwrap();
        let json = parsed.to_json(&bytes).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"b":true,"i":-7,"l":9007199254740993,"f":1.5,"d":"NaN","s":"é\"","by":"/wA=","fx":"AQI=","#,
                r#""e":"B","u":"x","un":null,"a":[1,2],"m":{"a":2,"z":1},"dec":"123.45","date":"2024-01-01","#,
                r#""tm":"01:02:03.004","ts":"2024-01-02T03:04:05.123Z","tu":"1969-12-31T23:59:59.999999Z","#,
                r#""lt":"1970-01-01T00:00:00.000","uuid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8","again":"AwQ="}"#
            )
        );
        assert!(
            parsed.to_json(&bytes[..bytes.len() - 1]).is_err(),
            "truncated"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(parsed.to_json(&longer).is_err(), "trailing bytes");
    }
}
