"""Produces the records of pushgate's schema-registry test (tests/registry_formats.rs) with a
client that shares no code with pushgate: confluent-kafka's Producer, SchemaRegistryClient
and its Avro, Protobuf and JSON Schema serializers (PyPI), against the real registry and
Apache Kafka.

Usage: produce.py REGISTRY_URL BROKERS STEP...
  STEP is TOPIC=KIND:KEY[:ARG], one record each, in order, each acknowledged before the next:
    avro1     Avro, version 1 of the Order schema (every mapped Avro type); ARG: qty
    avro2     Avro, version 2: v1 plus "tier" (string, default "standard"); ARG: tier
    proto     Protobuf Order (message index [1], nested Customer, Timestamp, map, enum)
    json      JSON Schema Order
    unknown   magic byte 0 and a schema id the registry never gave, then an Avro body
    garbage   bytes that are not in the registry's wire format
    avrokey   Avro value v1 with an Avro (record) key {"id": KEY}
Prints one line per record: 'TOPIC PARTITION OFFSET'.
"""

import datetime
import decimal
import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

AVRO_V1 = {
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "qty", "type": "long"},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "blob", "type": "bytes"},
        {"name": "state", "type": {"type": "enum", "name": "State", "symbols": ["NEW", "PAID"]}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "ratio", "type": "double"},
    ],
}
AVRO_V2 = dict(AVRO_V1, fields=AVRO_V1["fields"] + [{"name": "tier", "type": "string", "default": "standard"}])
AVRO_KEY = {"type": "record", "name": "OrderKey", "namespace": "shop", "fields": [{"name": "id", "type": "string"}]}

JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order", "type": "object",
    "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["id", "qty"],
}


def avro_value(key, qty):
    return {
        "id": key, "qty": int(qty), "price": decimal.Decimal("1234.50"),
        "at": datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 1, 2), "blob": b"\xff\x00\x01", "state": "PAID",
        "note": None if int(qty) % 2 else "even", "attrs": {"b": 2, "a": 1}, "ratio": 0.25,
    }


def order_classes():
    """Protobuf classes built at run time (no protoc): Customer is message 0, Order message 1."""
    fdp = descriptor_pb2.FileDescriptorProto(name="pushgate_order.proto", package="shop.proto", syntax="proto3")
    fdp.dependency.append("google/protobuf/timestamp.proto")
    F = descriptor_pb2.FieldDescriptorProto
    state = fdp.enum_type.add(name="State")
    state.value.add(name="NEW", number=0)
    state.value.add(name="PAID", number=1)
    cust = fdp.message_type.add(name="Customer")
    cust.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    order = fdp.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    order.field.add(name="qty", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    order.field.add(name="customer", number=3, type=F.TYPE_MESSAGE, type_name=".shop.proto.Customer", label=F.LABEL_OPTIONAL)
    order.field.add(name="tags", number=4, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    order.field.add(name="state", number=5, type=F.TYPE_ENUM, type_name=".shop.proto.State", label=F.LABEL_OPTIONAL)
    order.field.add(name="at", number=6, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp", label=F.LABEL_OPTIONAL)
    order.field.add(name="blob", number=7, type=F.TYPE_BYTES, label=F.LABEL_OPTIONAL)
    order.field.add(name="shipped", number=8, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(fdp)
    get = message_factory.GetMessageClass
    return get(pool.FindMessageTypeByName("shop.proto.Customer")), get(pool.FindMessageTypeByName("shop.proto.Order"))


def retried(serialize, attempts=3):
    for attempt in range(1, attempts + 1):
        try:
            return serialize()
        except Exception as e:  # the registry client's timeouts and connection errors
            if attempt == attempts:
                raise
            print(f"produce.py: serialization failed ({e!r}); again", file=sys.stderr)
            time.sleep(1)


def main():
    url, brokers, steps = sys.argv[1], sys.argv[2], sys.argv[3:]
    # Bounded requests, each serialization tried three times (registering a schema again
    # is idempotent): with no timeout, one request the registry never answered, right
    # after it started, hung a CI run.
    registry = SchemaRegistryClient({"url": url, "timeout": 15})
    producer = Producer({"bootstrap.servers": brokers, "message.timeout.ms": 20000})
    # Subjects per topic (TopicNameStrategy), registered on first use.
    avro1 = AvroSerializer(registry, json.dumps(AVRO_V1))
    avro2 = AvroSerializer(registry, json.dumps(AVRO_V2))
    avro_key = AvroSerializer(registry, json.dumps(AVRO_KEY))
    Customer, Order = order_classes()
    proto = ProtobufSerializer(Order, registry, {"use.deprecated.format": False})
    jsonser = JSONSerializer(json.dumps(JSON_SCHEMA), registry)
    delivered = []

    def report(err, msg):
        if err is not None:
            raise SystemExit(f"delivery failed: {err}")
        delivered.append(f"{msg.topic()} {msg.partition()} {msg.offset()}")

    for n, step in enumerate(steps, 1):
        topic, spec = step.split("=", 1)
        kind, key, *arg = spec.split(":")
        ctx = SerializationContext(topic, MessageField.VALUE)
        k = key.encode()
        if kind == "avro1":
            value = retried(lambda: avro1(avro_value(key, arg[0] if arg else 1), ctx))
        elif kind == "avro2":
            v = avro_value(key, 2)
            v["tier"] = arg[0] if arg else "standard"
            value = retried(lambda: avro2(v, ctx))
        elif kind == "avrokey":
            value = retried(lambda: avro1(avro_value(key, 1), ctx))
            k = retried(lambda: avro_key({"id": key}, SerializationContext(topic, MessageField.KEY)))
        elif kind == "proto":
            # The pool's own Timestamp class takes a datetime (2024-01-02T03:04:05.123Z).
            at = datetime.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=datetime.timezone.utc)
            msg = Order(id=key, qty=9007199254740993, customer=Customer(name="Ada"), tags=["a", "b"],
                        state=1, at=at, blob=b"\xff\x00")
            value = retried(lambda: proto(msg, ctx))
        elif kind == "json":
            value = retried(lambda: jsonser({"id": key, "qty": 3, "tags": ["x"]}, ctx))
        elif kind == "unknown":
            value = b"\x00" + (2_000_000_000).to_bytes(4, "big") + b"\x02"
        elif kind == "garbage":
            value = b"not in the wire format"
        else:
            raise SystemExit(f"unknown kind {kind}")
        producer.produce(topic, key=k, value=value, on_delivery=report)
        producer.flush(20)
        if len(delivered) != n:
            raise SystemExit(f"{step} was not acknowledged")
    print("\n".join(delivered))


main()
