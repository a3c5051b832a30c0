"""Smoke check of the schema registry the tests run, through a client that shares no code
with pushgate: confluent-kafka's SchemaRegistryClient and its Avro, Protobuf and JSON Schema
serializers (PyPI). It proves the server is a real registry speaking the Confluent REST API
and wire format: schemas registered and read back by id, ids shared across subjects as
Confluent does, compatibility enforced, unknown ids answered with Confluent's error code, and
serialized records framed as magic byte 0 + 4-byte big-endian schema id (+ Protobuf's message
index list) that decode again with the schema fetched by that id.

Usage: smoke.py URL   (URL as printed by `scripts/registry start`, e.g.
                       http://127.0.0.1:PORT/apis/ccompat/v7)
Ends with the line 'N passed, N failed'; exits 1 if any check failed.
"""

import base64
import io
import json
import struct
import sys
import time
import traceback
import uuid

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

URL = sys.argv[1]
# Subjects are unique per run, so the check can run again against a registry still up.
RUN = uuid.uuid4().hex[:8]
results = []


def check(name):
    def wrap(fn):
        t0 = time.monotonic()
        try:
            fn()
            results.append((name, None))
            print(f"ok    {name} ({(time.monotonic() - t0) * 1000:.0f} ms)")
        except Exception as e:  # report every failure, run the rest
            results.append((name, e))
            print(f"FAIL  {name}: {e!r}")
            traceback.print_exc()
        return fn

    return wrap


def fresh_client():
    # A new client has an empty cache, so what it returns came from the server.
    return SchemaRegistryClient({"url": URL})


def frame(data):
    """Splits a Confluent-framed value into (schema id, rest); asserts the magic byte."""
    assert len(data) >= 5, f"value too short for the wire format: {data!r}"
    assert data[0] == 0, f"magic byte is {data[0]}, not 0"
    (schema_id,) = struct.unpack(">I", data[1:5])
    return schema_id, data[5:]


def read_varint_zigzag(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return (result >> 1) ^ -(result & 1), pos


client = SchemaRegistryClient({"url": URL})

AVRO_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "smoke.avro",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "qty", "type": "long"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    ],
}
JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order",
    "type": "object",
    "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["id", "qty"],
    "additionalProperties": False,
}
PROTO_TEXT = """syntax = "proto3";
package smoke.proto;

message Customer {
  string name = 1;
}

message Order {
  string id = 1;
  int64 qty = 2;
  Customer customer = 3;
  repeated string tags = 4;
}
"""


@check("register Avro, Protobuf and JSON Schema schemas and read them back by id")
def _():
    ids = {}
    for kind, text in (
        ("AVRO", json.dumps(AVRO_V1)),
        ("PROTOBUF", PROTO_TEXT),
        ("JSON", json.dumps(JSON_SCHEMA)),
    ):
        subject = f"smoke-{RUN}-{kind.lower()}-value"
        schema_id = client.register_schema(subject, Schema(text, kind))
        assert isinstance(schema_id, int) and schema_id > 0, schema_id
        got = fresh_client().get_schema(schema_id)
        assert got.schema_type == kind, (kind, got.schema_type)
        if kind == "PROTOBUF":
            # The text may be reformatted by the server; the declarations must survive.
            for needle in ("package smoke.proto", "message Customer", "message Order", "Customer customer = 3"):
                assert needle in got.schema_str, (needle, got.schema_str)
        else:
            assert json.loads(got.schema_str) == json.loads(text), got.schema_str
        latest = fresh_client().get_latest_version(subject)
        assert latest.schema_id == schema_id and latest.version == 1, latest
        ids[kind] = schema_id
    assert len(set(ids.values())) == 3, f"three schemas, ids {ids}"
    subjects = fresh_client().get_subjects()
    for kind in ids:
        assert f"smoke-{RUN}-{kind.lower()}-value" in subjects, subjects


@check("the same schema under another subject gets the same id (Confluent's content ids)")
def _():
    text = json.dumps(AVRO_V1)
    a = client.register_schema(f"smoke-{RUN}-shared-a", Schema(text, "AVRO"))
    b = client.register_schema(f"smoke-{RUN}-shared-b", Schema(text, "AVRO"))
    assert a == b, (a, b)
    found = fresh_client().lookup_schema(f"smoke-{RUN}-shared-b", Schema(text, "AVRO"))
    assert found.schema_id == a, found


@check("an unknown schema id is a 404 with Confluent's error code 40403")
def _():
    try:
        fresh_client().get_schema(987654321)
    except SchemaRegistryError as e:
        assert e.http_status_code == 404 and e.error_code == 40403, (e.http_status_code, e.error_code, e)
    else:
        raise AssertionError("get_schema of an unknown id succeeded")


@check("BACKWARD compatibility: a field added with a default is a new version, one without is refused")
def _():
    subject = f"smoke-{RUN}-evolve-value"
    v1 = client.register_schema(subject, Schema(json.dumps(AVRO_V1), "AVRO"))
    client.set_compatibility(subject_name=subject, level="BACKWARD")
    assert fresh_client().get_compatibility(subject) == "BACKWARD"
    v2_schema = dict(AVRO_V1, fields=AVRO_V1["fields"] + [{"name": "channel", "type": "string", "default": "web"}])
    bad_schema = dict(AVRO_V1, fields=AVRO_V1["fields"] + [{"name": "region", "type": "string"}])
    assert client.test_compatibility(subject, Schema(json.dumps(v2_schema), "AVRO")) is True
    assert client.test_compatibility(subject, Schema(json.dumps(bad_schema), "AVRO")) is False
    v2 = client.register_schema(subject, Schema(json.dumps(v2_schema), "AVRO"))
    assert v2 != v1, (v1, v2)
    assert fresh_client().get_versions(subject) == [1, 2]
    try:
        client.register_schema(subject, Schema(json.dumps(bad_schema), "AVRO"))
    except SchemaRegistryError as e:
        assert e.http_status_code == 409, (e.http_status_code, e.error_code, e)
    else:
        raise AssertionError("an incompatible schema was registered")


@check("AvroSerializer: magic byte 0, schema id, Avro body that decodes with the schema fetched by that id")
def _():
    topic = f"smoke-{RUN}-avro-ser"
    ctx = SerializationContext(topic, MessageField.VALUE)
    from decimal import Decimal

    record = {"id": "o-1", "qty": 3, "price": Decimal("12.34"), "note": None, "status": "PAID"}
    data = AvroSerializer(client, json.dumps(AVRO_V1))(record, ctx)
    schema_id, body = frame(data)
    assert schema_id == fresh_client().get_latest_version(f"{topic}-value").schema_id
    fetched = fresh_client().get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    parsed = fastavro.parse_schema(json.loads(fetched.schema_str))
    assert fastavro.schemaless_reader(io.BytesIO(body), parsed) == record
    assert AvroDeserializer(fresh_client())(data, ctx) == record


def order_classes():
    """Builds the Protobuf message classes at run time (no protoc): Customer is message 0 of
    the file, Order message 1, so an Order's frame carries a non-trivial message index list."""
    fdp = descriptor_pb2.FileDescriptorProto(name=f"smoke_{RUN}.proto", package="smoke.proto", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    cust = fdp.message_type.add(name="Customer")
    cust.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="name")
    order = fdp.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="id")
    order.field.add(name="qty", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL, json_name="qty")
    order.field.add(name="customer", number=3, type=F.TYPE_MESSAGE, type_name=".smoke.proto.Customer",
                    label=F.LABEL_OPTIONAL, json_name="customer")
    order.field.add(name="tags", number=4, type=F.TYPE_STRING, label=F.LABEL_REPEATED, json_name="tags")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("smoke.proto.Customer")), get(pool.FindMessageTypeByName("smoke.proto.Order"))


def fetched_descriptor(schema_str):
    """The FileDescriptorProto of a Protobuf schema as GET /schemas/ids/{id} returns it. The
    Python serializer registers a base64 serialized FileDescriptorProto; Confluent's server
    turns that into .proto text, Apicurio 3.3.3 keeps and serves it as registered (and its
    ?format=serialized, which Python's ProtobufDeserializer asks for, fails on such content
    with HTTP 500), so a reader of this registry must take the base64 form as it is."""
    fdp = descriptor_pb2.FileDescriptorProto()
    fdp.ParseFromString(base64.b64decode(schema_str, validate=True))
    return fdp


@check("ProtobufSerializer: magic byte 0, schema id, message index [1], Protobuf body")
def _():
    Customer, Order = order_classes()
    topic = f"smoke-{RUN}-proto-ser"
    ctx = SerializationContext(topic, MessageField.VALUE)
    msg = Order(id="o-2", qty=7, customer=Customer(name="Ada"), tags=["a", "b"])
    data = ProtobufSerializer(Order, client, {"use.deprecated.format": False})(msg, ctx)
    schema_id, rest = frame(data)
    assert schema_id == fresh_client().get_latest_version(f"{topic}-value").schema_id
    # Message index list: zigzag varint count, then zigzag varint indexes; Order is [1].
    count, pos = read_varint_zigzag(rest, 0)
    indexes = []
    for _i in range(count):
        ix, pos = read_varint_zigzag(rest, pos)
        indexes.append(ix)
    assert indexes == [1], indexes
    back = Order()
    back.ParseFromString(rest[pos:])
    assert back == msg, back


@check("Protobuf: the schema fetched by the frame's id alone decodes the body (what a consumer does)")
def _():
    Customer, Order = order_classes()
    topic = f"smoke-{RUN}-proto-read"
    ctx = SerializationContext(topic, MessageField.VALUE)
    msg = Order(id="o-3", qty=1, customer=Customer(name="Grace"), tags=["z"])
    data = ProtobufSerializer(Order, client, {"use.deprecated.format": False})(msg, ctx)
    schema_id, rest = frame(data)
    fetched = fresh_client().get_schema(schema_id)
    assert fetched.schema_type == "PROTOBUF", fetched.schema_type
    fdp = fetched_descriptor(fetched.schema_str)
    assert [m.name for m in fdp.message_type] == ["Customer", "Order"], fdp
    # A pool of its own: nothing from order_classes() is reused to read the bytes.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    count, pos = read_varint_zigzag(rest, 0)
    assert count == 1
    index, pos = read_varint_zigzag(rest, pos)
    desc = pool.FindMessageTypeByName(f"{fdp.package}.{fdp.message_type[index].name}")
    decoded = message_factory.GetMessageClass(desc)()
    decoded.ParseFromString(rest[pos:])
    assert json_format.MessageToDict(decoded) == {"id": "o-3", "qty": "1", "customer": {"name": "Grace"}, "tags": ["z"]}


@check("JSONSerializer: magic byte 0, schema id, JSON body; an invalid record is refused")
def _():
    topic = f"smoke-{RUN}-json-ser"
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {"id": "o-4", "qty": 2, "tags": ["x"]}
    ser = JSONSerializer(json.dumps(JSON_SCHEMA), client)
    data = ser(record, ctx)
    schema_id, body = frame(data)
    assert schema_id == fresh_client().get_latest_version(f"{topic}-value").schema_id
    assert json.loads(body) == record
    fetched = fresh_client().get_schema(schema_id)
    assert fetched.schema_type == "JSON" and json.loads(fetched.schema_str) == JSON_SCHEMA
    assert JSONDeserializer(None, schema_registry_client=fresh_client())(data, ctx) == record
    try:
        ser({"id": "o-5", "qty": "two"}, ctx)
    except Exception as e:  # SerializationError wrapping the validation error
        assert "qty" in str(e) or "integer" in str(e), e
    else:
        raise AssertionError("a record breaking the JSON Schema was serialized")


failed = sum(1 for _n, e in results if e is not None)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
