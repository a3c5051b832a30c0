"""Writes api/conformance/registry/type-mapping.json: the README's Avro and Protobuf to JSON
mapping as a vector, with the encoded bytes made by fastavro and Google's protobuf runtime
(PyPI, in tests/registry/.venv), not by pushgate. pushgate's unit test
(src/source/kafka/registry.rs, `the_type_mapping_vector`) decodes each case and compares.

Usage: tests/registry/.venv/bin/python tests/registry/mapping_vector.py
"""

import datetime
import decimal
import io
import json
import pathlib
import uuid

import fastavro
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2, wrappers_pb2

AVRO = {
    "type": "record", "name": "Mapped", "namespace": "vector",
    "fields": [
        {"name": "b", "type": "boolean"}, {"name": "i", "type": "int"}, {"name": "l", "type": "long"},
        {"name": "f", "type": "float"}, {"name": "d", "type": "double"}, {"name": "s", "type": "string"},
        {"name": "by", "type": "bytes"}, {"name": "fx", "type": {"type": "fixed", "name": "F2", "size": 2}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}},
        {"name": "u", "type": ["null", "string", "long"]},
        {"name": "a", "type": {"type": "array", "items": "int"}},
        {"name": "m", "type": {"type": "map", "values": "long"}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4}},
        {"name": "date", "type": {"type": "int", "logicalType": "date"}},
        {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "tu", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tsu", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "nested", "type": {"type": "record", "name": "N", "fields": [{"name": "x", "type": ["null", "N"], "default": None}]}},
    ],
}
UTC = datetime.timezone.utc
AVRO_CASES = [
    ({"b": True, "i": -7, "l": 9007199254740993, "f": 1.5, "d": -0.125, "s": "é\"\n", "by": b"\xff\x00\x01",
      "fx": b"\x01\x02", "e": "B", "u": None, "a": [1, 2], "m": {"z": 1, "a": 2},
      "dec": decimal.Decimal("-12345678901234.5678"), "date": datetime.date(2024, 2, 29),
      "tm": datetime.time(1, 2, 3, 4000), "tu": datetime.time(23, 59, 59, 999999),
      "ts": datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
      "tsu": datetime.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
      "id": uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), "nested": {"x": {"x": None}}},
     {"b": True, "i": -7, "l": 9007199254740993, "f": 1.5, "d": -0.125, "s": "é\"\n", "by": "/wAB",
      "fx": "AQI=", "e": "B", "u": None, "a": [1, 2], "m": {"a": 2, "z": 1},
      "dec": "-12345678901234.5678", "date": "2024-02-29", "tm": "01:02:03.004", "tu": "23:59:59.999999",
      "ts": "2024-01-02T03:04:05.123Z", "tsu": "1969-12-31T23:59:59.999999Z",
      "id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "nested": {"x": {"x": None}}}),
]

PROTO = """syntax = "proto3";
package vector;
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
message Other { string x = 1; }
message Mapped {
  enum State { NEW = 0; PAID = 1; }
  message Line { string sku = 1; }
  int64 big = 1;
  uint32 small = 2;
  double d = 3;
  bool flag = 4;
  string s = 5;
  bytes by = 6;
  State state = 7;
  repeated Line lines = 8;
  map<string, int32> tags = 9;
  google.protobuf.Timestamp at = 10;
  google.protobuf.Int64Value maybe = 11;
  string unset = 12;
}
"""


def proto_classes():
    """The descriptor of PROTO built by hand (no protoc here); the test compiles PROTO itself."""
    fdp = descriptor_pb2.FileDescriptorProto(name="vector.proto", package="vector", syntax="proto3")
    fdp.dependency.extend(["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"])
    F = descriptor_pb2.FieldDescriptorProto
    fdp.message_type.add(name="Other").field.add(name="x", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m = fdp.message_type.add(name="Mapped")
    st = m.enum_type.add(name="State")
    st.value.add(name="NEW", number=0)
    st.value.add(name="PAID", number=1)
    m.nested_type.add(name="Line").field.add(name="sku", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry = m.nested_type.add(name="TagsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    add = m.field.add
    add(name="big", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    add(name="small", number=2, type=F.TYPE_UINT32, label=F.LABEL_OPTIONAL)
    add(name="d", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    add(name="flag", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    add(name="s", number=5, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    add(name="by", number=6, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    add(name="state", number=7, type=F.TYPE_ENUM, type_name=".vector.Mapped.State", label=F.LABEL_OPTIONAL)
    add(name="lines", number=8, type=F.TYPE_MESSAGE, type_name=".vector.Mapped.Line", label=F.LABEL_REPEATED)
    add(name="tags", number=9, type=F.TYPE_MESSAGE, type_name=".vector.Mapped.TagsEntry", label=F.LABEL_REPEATED)
    add(name="at", number=10, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp", label=F.LABEL_OPTIONAL)
    add(name="maybe", number=11, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Int64Value", label=F.LABEL_OPTIONAL)
    add(name="unset", number=12, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    for dep in (timestamp_pb2, wrappers_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(dep.DESCRIPTOR.serialized_pb))
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("vector.Mapped"))


def main():
    parsed = fastavro.parse_schema(AVRO)
    avro_cases = []
    for value, expected in AVRO_CASES:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, value)
        avro_cases.append({"datum_hex": buf.getvalue().hex(), "json": expected})
    Mapped = proto_classes()
    msg = Mapped(big=9007199254740993, small=7, d=float("nan"), flag=True, s="x", by=b"\xff\x00", state=1,
                 lines=[{"sku": "a"}, {"sku": "b"}], tags={"t": 1},
                 at=datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC), maybe={"value": -5})
    proto_cases = [{
        "message_indexes": [1],
        "message_hex": msg.SerializeToString(deterministic=True).hex(),
        "json": {"big": 9007199254740993, "small": 7, "d": "NaN", "flag": True, "s": "x", "by": "/wA=",
                 "state": "PAID", "lines": [{"sku": "a"}, {"sku": "b"}], "tags": {"t": 1},
                 "at": "2024-01-02T03:04:05.123Z", "maybe": -5, "unset": ""},
    }]
    vector = {
        "name": "schema-registry type mapping",
        "description": "Avro and Protobuf values (bytes after the wire header and, for Protobuf, the message-index list) and the JSON `data` pushgate sends for them: the README's table. Bytes made by fastavro and Google's protobuf runtime (tests/registry/mapping_vector.py).",
        "avro": {"schema": AVRO, "cases": avro_cases},
        "protobuf": {"schema": PROTO, "cases": proto_cases},
    }
    out = pathlib.Path(__file__).resolve().parents[2] / "api/conformance/registry/type-mapping.json"
    out.write_text(json.dumps(vector, indent=2, ensure_ascii=False) + "\n")
    print(out)


main()
