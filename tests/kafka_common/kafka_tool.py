#!/usr/bin/env python3
"""Independent Kafka client for pushgate's tests (kafka-python: shares no code with librdkafka).

produce: N records keyed k<i % keys>, value {"seq": i, "t": <send time, s>}, at a rate;
         every record is retried until the broker acknowledges it (acks=all), so a
         broker outage only delays the run. Prints "acked <count>" at the end.
dump:    every record of a topic as JSON lines {"p","o","key","seq","value","headers"}, then "end"
         (value: the raw value as text, null for a tombstone; headers: {"name": "value"}).
         --expect N: read until N records were seen (at most 30 s) instead of up to the end
         offsets, which tansu under-reports after a batch of several records.
raw:     produces the records given on stdin, one JSON line each:
         {"key": <JSON>, "value": <JSON>, "headers": {"name": "value"}}: key and value are
         sent as their compact JSON text; a null (or missing) key is no key, a null value
         a tombstone. "key_raw"/"value_raw" (strings) send those exact bytes instead
         (e.g. a value that is not JSON). Waits for each ack; prints {"p","o"} per record.
low:     the low watermark of each partition, as a JSON list.
create:  creates a topic (--partitions, --config k=v ...); delete: deletes it.
add-partitions: grows a topic to --count partitions with the admin client's
         CreatePartitions; tansu 0.6 does not implement that request, so with
         --sqlite (the broker's sqlite storage file) the new partitions are
         written into tansu's own tables instead, as its CreateTopics would
         write them; the running broker serves them from its next request.
         Prints "added via create_partitions" or "added via tansu storage".

--security-protocol SSL|SASL_SSL|SASL_PLAINTEXT with --ssl-cafile/--ssl-certfile/--ssl-keyfile
and --sasl-mechanism/--sasl-username/--sasl-password reach a secured broker (every command).
"""
import argparse, json, os, signal, sqlite3, sys, time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


def security(a):
    """kafka-python keyword arguments for the --security-protocol/--ssl-*/--sasl-* options."""
    kw = {"security_protocol": a.security_protocol}
    if "SSL" in a.security_protocol:
        kw.update(ssl_cafile=a.ssl_cafile, ssl_certfile=a.ssl_certfile, ssl_keyfile=a.ssl_keyfile,
                  ssl_check_hostname=True)
    if a.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=a.sasl_mechanism, sasl_plain_username=a.sasl_username,
                  sasl_plain_password=a.sasl_password)
    return kw


def produce(a):
    producer = KafkaProducer(bootstrap_servers=a.brokers, **security(a), acks="all", retries=5,
                             request_timeout_ms=3000, max_block_ms=60000,
                             reconnect_backoff_ms=50, reconnect_backoff_max_ms=500, linger_ms=0)
    interval = 1.0 / a.rate if a.rate > 0 else 0
    start = time.time()
    pending = []
    for i in range(a.start, a.start + a.count):
        due = start + (i - a.start) * interval
        now = time.time()
        if due > now:
            time.sleep(due - now)
        key = f"k{i % a.keys}".encode()
        value = json.dumps({"seq": i, "t": time.time()}).encode()
        headers = [("source", b"kafka-python")]
        if a.wait:
            while True:
                try:
                    producer.send(a.topic, key=key, value=value, headers=headers).get(timeout=10)
                    break
                except Exception as e:  # broker away: try again until it is back
                    print(f"retry {i}: {e}", file=sys.stderr)
                    time.sleep(0.2)
        else:
            pending.append(producer.send(a.topic, key=key, value=value, headers=headers))
    for f in pending:
        f.get(timeout=30)
    producer.flush()
    print(f"acked {a.count}", flush=True)


def dump(a):
    consumer = KafkaConsumer(bootstrap_servers=a.brokers, **security(a), enable_auto_commit=False)
    parts = consumer.partitions_for_topic(a.topic) or set()
    tps = [TopicPartition(a.topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    if a.expect:
        end = {tp: float("inf") for tp in tps}
    deadline = time.time() + 30
    seen = 0

    def more():
        if a.expect:
            return seen < a.expect
        return any(consumer.position(tp) < end[tp] for tp in tps)

    while more() and time.time() < deadline:
        for tp, records in consumer.poll(timeout_ms=200).items():
            for r in records:
                if r.offset >= end[tp]:
                    continue
                seen += 1
                try:
                    seq = json.loads(r.value)["seq"]
                except Exception:
                    seq = None
                print(json.dumps({"p": tp.partition, "o": r.offset,
                                  "key": r.key.decode() if r.key else None, "seq": seq,
                                  "value": r.value.decode(errors="replace") if r.value is not None else None,
                                  "headers": {k: v.decode(errors="replace") if v is not None else None
                                              for k, v in (r.headers or [])}}))
    print("end", flush=True)


def add_partitions(a):
    from kafka.admin import KafkaAdminClient, NewPartitions
    from kafka.errors import IncompatibleBrokerVersion, UnsupportedVersionError
    admin = KafkaAdminClient(bootstrap_servers=a.brokers, **security(a))
    try:
        admin.create_partitions({a.topic: NewPartitions(a.count)})
        print("added via create_partitions", flush=True)
        return
    except (IncompatibleBrokerVersion, UnsupportedVersionError) as e:
        if not a.sqlite:
            raise
        print(f"CreatePartitions unsupported ({e}); writing tansu storage", file=sys.stderr)
    finally:
        admin.close()
    db = sqlite3.connect(a.sqlite, timeout=10)
    with db:  # one transaction: the topic row, its topitions and their watermarks
        row = db.execute("select id, partitions from topic where name = ?", (a.topic,)).fetchone()
        if row is None:
            sys.exit(f"no topic {a.topic} in {a.sqlite}")
        tid, have = row
        if a.count <= have:
            sys.exit(f"{a.topic} already has {have} partitions")
        for p in range(have, a.count):
            tp = db.execute("insert into topition (topic, partition) values (?, ?) returning id",
                            (tid, p)).fetchone()[0]
            db.execute("insert into watermark (topition) values (?)", (tp,))
        db.execute("update topic set partitions = ?, last_updated = current_timestamp where id = ?",
                   (a.count, tid))
    db.close()
    print("added via tansu storage", flush=True)


def raw(a):
    producer = KafkaProducer(bootstrap_servers=a.brokers, **security(a), acks="all", retries=5,
                             request_timeout_ms=3000, max_block_ms=30000, linger_ms=0)

    def field(line, name):
        if name + "_raw" in line:
            return line[name + "_raw"].encode()
        value = line.get(name)
        return None if value is None else json.dumps(value, separators=(",", ":")).encode()

    count = 0
    for text in sys.stdin:
        if not text.strip():
            continue
        line = json.loads(text)
        headers = [(k, v.encode()) for k, v in (line.get("headers") or {}).items()]
        meta = producer.send(a.topic, key=field(line, "key"), value=field(line, "value"),
                             headers=headers).get(timeout=10)
        print(json.dumps({"p": meta.partition, "o": meta.offset}), flush=True)
        count += 1
    producer.flush()
    print(f"acked {count}", flush=True)


def low(a):
    consumer = KafkaConsumer(bootstrap_servers=a.brokers, **security(a), enable_auto_commit=False)
    tps = [TopicPartition(a.topic, p) for p in sorted(consumer.partitions_for_topic(a.topic) or set())]
    print(json.dumps([consumer.beginning_offsets(tps)[tp] for tp in tps]), flush=True)


def admin(a):
    return KafkaAdminClient(bootstrap_servers=a.brokers, **security(a), request_timeout_ms=5000)


def create(a):
    configs = dict(c.split("=", 1) for c in a.config)
    admin(a).create_topics([NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1,
                                     topic_configs=configs)])
    print("created", flush=True)


def delete(a):
    admin(a).delete_topics([a.topic])
    print("deleted", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["produce", "dump", "low", "create", "delete", "add-partitions", "raw"])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--keys", type=int, default=5)
    ap.add_argument("--expect", type=int, default=0, help="dump: read until this many records")
    ap.add_argument("--wait", action="store_true", help="wait for each ack (and retry) before the next")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--config", action="append", default=[], help="topic config k=v (create)")
    ap.add_argument("--sqlite", help="add-partitions: tansu's sqlite storage, used if CreatePartitions is unsupported")
    ap.add_argument("--security-protocol", default="PLAINTEXT",
                    choices=["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"])
    ap.add_argument("--ssl-cafile")
    ap.add_argument("--ssl-certfile")
    ap.add_argument("--ssl-keyfile")
    ap.add_argument("--sasl-mechanism", default="SCRAM-SHA-512")
    ap.add_argument("--sasl-username")
    ap.add_argument("--sasl-password")
    ap.add_argument("--timeout", type=float, default=0,
                    help="exit 3 after this many seconds (kafka-python waits long on a refused login)")
    a = ap.parse_args()
    if a.timeout > 0:
        signal.signal(signal.SIGALRM, lambda *_: (print("timed out", file=sys.stderr, flush=True), os._exit(3)))
        signal.setitimer(signal.ITIMER_REAL, a.timeout)
    {"produce": produce, "dump": dump, "low": low, "create": create, "delete": delete,
     "add-partitions": add_partitions, "raw": raw}[a.cmd](a)
