#!/usr/bin/env python3
"""Independent Kafka client for pushgate's tests (kafka-python: shares no code with librdkafka).

produce: N records keyed k<i % keys>, value {"seq": i, "t": <send time, s>}, at a rate;
         every record is retried until the broker acknowledges it (acks=all), so a
         broker outage only delays the run. Prints "acked <count>" at the end.
dump:    every record of a topic as JSON lines {"p","o","key","seq","value","key_b64",
         "value_b64","headers"}, then "end" (value: the raw value as text, null for a tombstone;
         key_b64, value_b64: the exact bytes in base64; headers: {"name": "value"}).
         --expect N: read until N records were seen (at most 30 s) instead of up to the end
         offsets. --isolation read_committed skips aborted transactions (default: read_uncommitted,
         every record in the log).
raw:     produces the records given on stdin, one JSON line each:
         {"key": <JSON>, "value": <JSON>, "headers": {"name": "value"}}: key and value are
         sent as their compact JSON text; a null (or missing) key is no key, a null value
         a tombstone. "key_raw"/"value_raw" (strings) send those exact bytes instead
         (e.g. a value that is not JSON). Waits for each ack; prints {"p","o"} per record.
low:     the low watermark of each partition, as a JSON list.
create:  creates a topic (--partitions, --config k=v ...); delete: deletes it.
add-partitions: grows a topic to --count partitions (CreatePartitions). Prints "added".
acl:     --acl allow|deny|remove --principal User:NAME --operation READ|DESCRIBE|... on
         --topic (literal name, or --prefixed) or --group NAME: creates (or removes) one ACL.
txn:     produces --count records (seq --start..) in one transaction with --transactional-id,
         then commits it or, with --abort, aborts it. Prints "committed N" or "aborted N".

--security-protocol SSL|SASL_SSL|SASL_PLAINTEXT with --ssl-cafile/--ssl-certfile/--ssl-keyfile
and --sasl-mechanism/--sasl-username/--sasl-password reach a secured broker (every command).
OAUTHBEARER sends an unsecured JWS (alg "none", no signature) whose `sub` is --sasl-username:
what the test broker's unsecured validator accepts.
"""
import argparse, base64, json, os, signal, sys, time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic


def security(a):
    """kafka-python keyword arguments for the --security-protocol/--ssl-*/--sasl-* options."""
    kw = {"security_protocol": a.security_protocol}
    if "SSL" in a.security_protocol:
        kw.update(ssl_cafile=a.ssl_cafile, ssl_certfile=a.ssl_certfile, ssl_keyfile=a.ssl_keyfile,
                  ssl_check_hostname=True)
    if a.security_protocol.startswith("SASL"):
        kw.update(sasl_mechanism=a.sasl_mechanism)
        if a.sasl_mechanism == "OAUTHBEARER":
            kw.update(sasl_oauth_token_provider=UnsecuredToken(a.sasl_username))
        else:
            kw.update(sasl_plain_username=a.sasl_username, sasl_plain_password=a.sasl_password)
    return kw


try:  # kafka-python 3
    from kafka.net.sasl.oauth import AbstractTokenProvider
except ImportError:  # kafka-python 2
    from kafka.sasl.oauth import AbstractTokenProvider


class UnsecuredToken(AbstractTokenProvider):
    """An unsecured JWS for OAUTHBEARER."""

    def __init__(self, sub):
        super().__init__()
        b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
        now = int(time.time())
        self.jws = b64({"alg": "none"}) + "." + b64({"sub": sub, "iat": now, "exp": now + 3600}) + "."

    def token(self):
        return self.jws

    def extensions(self):
        return {}


def new_producer(a):
    # The tests may stop the broker while this starts (slow on a loaded machine):
    # bootstrapping is retried, bounded, like the sends below.
    deadline = time.time() + 60
    while True:
        try:
            return KafkaProducer(bootstrap_servers=a.brokers, **security(a), acks="all", retries=5,
                                 request_timeout_ms=3000, max_block_ms=60000,
                                 reconnect_backoff_ms=50, reconnect_backoff_max_ms=500, linger_ms=0)
        except Exception as e:
            if time.time() > deadline:
                raise
            print(f"bootstrap retry: {e}", file=sys.stderr)
            time.sleep(0.5)


def produce(a):
    producer = new_producer(a)
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
            failed = 0
            while True:
                try:
                    producer.send(a.topic, key=key, value=value, headers=headers).get(timeout=10)
                    break
                except Exception as e:  # broker away: try again until it is back
                    print(f"retry {i}: {e}", file=sys.stderr)
                    failed += 1
                    if failed % 3 == 0:
                        # A client that lived through the broker's restart has
                        # been seen never to reconnect (over SASL, in CI): start
                        # a new one. Unacknowledged sends are sent again.
                        try:
                            producer.close(timeout=1)
                        except Exception as e:
                            print(f"close: {e}", file=sys.stderr)
                        producer = new_producer(a)
                    time.sleep(0.2)
        else:
            pending.append(producer.send(a.topic, key=key, value=value, headers=headers))
    for f in pending:
        f.get(timeout=30)
    producer.flush()
    print(f"acked {a.count}", flush=True)


def dump(a):
    consumer = KafkaConsumer(bootstrap_servers=a.brokers, **security(a), enable_auto_commit=False,
                             isolation_level=a.isolation)
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
                                  "key": r.key.decode(errors="replace") if r.key else None, "seq": seq,
                                  "key_b64": base64.b64encode(r.key).decode() if r.key is not None else None,
                                  "value": r.value.decode(errors="replace") if r.value is not None else None,
                                  "value_b64": base64.b64encode(r.value).decode() if r.value is not None else None,
                                  "headers": {k: v.decode(errors="replace") if v is not None else None
                                              for k, v in (r.headers or [])}}))
    print("end", flush=True)


def add_partitions(a):
    from kafka.admin import NewPartitions
    adm = admin(a)
    adm.create_partitions({a.topic: NewPartitions(a.count)})
    adm.close()
    print("added", flush=True)


def acl(a):
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType,
                             ResourcePattern, ResourceType)
    if a.group:
        kind, name = ResourceType.GROUP, a.group
    else:
        kind, name = ResourceType.TOPIC, a.topic
    pattern = ResourcePattern(kind, name, ACLResourcePatternType.PREFIXED if a.prefixed
                              else ACLResourcePatternType.LITERAL)
    op = getattr(ACLOperation, a.operation)
    adm = admin(a)
    if a.acl == "remove":
        adm.delete_acls([ACLFilter(a.principal, "*", op, ACLPermissionType.ANY, pattern)])
    else:
        perm = ACLPermissionType.ALLOW if a.acl == "allow" else ACLPermissionType.DENY
        result = adm.create_acls([ACL(a.principal, "*", op, perm, pattern)])
        if result.get("failed"):
            sys.exit(f"create_acls failed: {result['failed']}")
    adm.close()
    print(f"acl {a.acl}", flush=True)


def txn(a):
    producer = KafkaProducer(bootstrap_servers=a.brokers, **security(a), acks="all",
                             transactional_id=a.transactional_id, request_timeout_ms=5000,
                             max_block_ms=30000, linger_ms=0)
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(a.start, a.start + a.count):
        producer.send(a.topic, key=f"k{i % a.keys}".encode(),
                      value=json.dumps({"seq": i, "t": time.time()}).encode()).get(timeout=10)
    if a.abort:
        producer.abort_transaction()
        print(f"aborted {a.count}", flush=True)
    else:
        producer.commit_transaction()
        print(f"committed {a.count}", flush=True)
    producer.close()


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
    adm = admin(a)
    adm.create_topics([NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1,
                                topic_configs=configs)])
    # CreateTopics returns once the controller has the topic; the broker's
    # metadata cache learns it a moment later. Wait until Metadata shows it
    # with a leader for every partition, so a gateway started next finds it.
    deadline = time.monotonic() + 30
    while True:
        described = [t for t in adm.describe_topics([a.topic]) if t.get("name") == a.topic]
        parts = described[0].get("partitions", []) if described else []
        if (described and described[0].get("error_code") == 0 and len(parts) == a.partitions
                and all(p.get("leader_id", -1) >= 0 for p in parts)):
            break
        if time.monotonic() > deadline:
            sys.exit(f"create: {a.topic} not in the broker's metadata after 30 s: {described}")
        time.sleep(0.05)
    adm.close()
    print("created", flush=True)


def alter(a):
    # AlterConfigs (not incremental): settings not given return to the broker's defaults.
    adm = admin(a)
    adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, a.topic,
                                      configs=dict(c.split("=", 1) for c in a.config))])
    adm.close()
    print("altered", flush=True)


def delete(a):
    adm = admin(a)
    adm.delete_topics([a.topic])
    adm.close()
    print("deleted", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["produce", "dump", "low", "create", "alter", "delete", "add-partitions", "raw",
                                    "acl", "txn"])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", default="")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--keys", type=int, default=5)
    ap.add_argument("--expect", type=int, default=0, help="dump: read until this many records")
    ap.add_argument("--wait", action="store_true", help="wait for each ack (and retry) before the next")
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--config", action="append", default=[], help="topic config k=v (create, alter)")
    ap.add_argument("--isolation", default="read_uncommitted", choices=["read_uncommitted", "read_committed"])
    ap.add_argument("--acl", choices=["allow", "deny", "remove"], help="acl: what to do")
    ap.add_argument("--principal", help="acl: User:NAME")
    ap.add_argument("--operation", default="READ", help="acl: READ, WRITE, DESCRIBE, ALL, ...")
    ap.add_argument("--group", help="acl: a consumer group instead of --topic")
    ap.add_argument("--prefixed", action="store_true", help="acl: --topic/--group is a prefix")
    ap.add_argument("--transactional-id", default="pushgate-test-txn")
    ap.add_argument("--abort", action="store_true", help="txn: abort instead of commit")
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
    {"produce": produce, "dump": dump, "low": low, "create": create, "alter": alter, "delete": delete,
     "add-partitions": add_partitions, "raw": raw, "acl": acl, "txn": txn}[a.cmd](a)
