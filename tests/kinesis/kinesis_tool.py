#!/usr/bin/env python3
"""Independent Kinesis client for pushgate's tests (boto3: shares no code with the Rust SDK).

Every command takes --endpoint (kinesalite's URL) and --stream.

create:  creates the stream with --shards shards and waits until it is ACTIVE.
put:     puts --count records (--start first seq) keyed k<i % --keys>, value
         {"seq": i}, with PutRecords in batches of --batch, at --rate records a
         second (0: as fast as it goes); every record is retried until accepted.
         Prints one JSON line per record: {"seq", "key", "shard", "sn"}, then "done".
raw:     puts the records given on stdin, one JSON line each {"key": str, "data": str}
         (data sent as those exact UTF-8 bytes; "data_b64" for raw bytes); prints
         {"shard", "sn"} per record.
shards:  every shard as JSON lines {"id", "parent", "adjacent", "closed", "start", "end"}.
split:   splits --shard in the middle of its hash key range; prints the new shard ids.
merge:   merges --shard with --adjacent; prints the new shard id.
delete:  deletes the stream and waits until it is gone.
"""
import argparse, base64, json, sys, time

import boto3
from botocore.config import Config


def client(a):
    return boto3.client(
        "kinesis",
        endpoint_url=a.endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 10, "mode": "standard"}),
    )


def wait_active(k, stream):
    for _ in range(200):
        s = k.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
        if s["StreamStatus"] == "ACTIVE":
            return
        time.sleep(0.05)
    raise SystemExit("stream never became ACTIVE")


def create(a):
    k = client(a)
    k.create_stream(StreamName=a.stream, ShardCount=a.shards)
    wait_active(k, a.stream)
    print("created", flush=True)


def put_entries(k, stream, entries):
    """PutRecords, retrying the entries Kinesis did not accept; results in order."""
    results = [None] * len(entries)
    pending = list(range(len(entries)))
    delay = 0.05
    while pending:
        out = k.put_records(StreamName=stream, Records=[entries[i] for i in pending])
        again = []
        for i, r in zip(pending, out["Records"]):
            if "ErrorCode" in r:
                again.append(i)
            else:
                results[i] = r
        pending = again
        if pending:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    return results


def put(a):
    k = client(a)
    interval = a.batch / a.rate if a.rate > 0 else 0
    start = time.time()
    i = a.start
    end = a.start + a.count
    while i < end:
        n = min(a.batch, end - i)
        batch = list(range(i, i + n))
        entries = [
            {"Data": json.dumps({"seq": s}).encode(), "PartitionKey": f"k{s % a.keys}"}
            for s in batch
        ]
        results = put_entries(k, a.stream, entries)
        for s, r in zip(batch, results):
            print(json.dumps({"seq": s, "key": f"k{s % a.keys}", "shard": r["ShardId"],
                              "sn": r["SequenceNumber"]}), flush=True)
        i += n
        due = start + (i - a.start) / a.batch * interval
        now = time.time()
        if due > now:
            time.sleep(due - now)
    print("done", flush=True)


def raw(a):
    k = client(a)
    for line in sys.stdin:
        if not line.strip():
            continue
        r = json.loads(line)
        data = base64.b64decode(r["data_b64"]) if "data_b64" in r else r["data"].encode()
        out = put_entries(k, a.stream, [{"Data": data, "PartitionKey": r["key"]}])[0]
        print(json.dumps({"shard": out["ShardId"], "sn": out["SequenceNumber"]}), flush=True)


def list_shards(k, stream):
    shards, token = [], None
    while True:
        out = k.list_shards(NextToken=token) if token else k.list_shards(StreamName=stream)
        shards.extend(out["Shards"])
        token = out.get("NextToken")
        if not token:
            return shards


def shards(a):
    for s in list_shards(client(a), a.stream):
        r = s["SequenceNumberRange"]
        print(json.dumps({"id": s["ShardId"], "parent": s.get("ParentShardId"),
                          "adjacent": s.get("AdjacentParentShardId"),
                          "closed": "EndingSequenceNumber" in r,
                          "start": s["HashKeyRange"]["StartingHashKey"],
                          "end": s["HashKeyRange"]["EndingHashKey"]}), flush=True)


def split(a):
    k = client(a)
    before = {s["ShardId"] for s in list_shards(k, a.stream)}
    shard = next(s for s in list_shards(k, a.stream) if s["ShardId"] == a.shard)
    lo, hi = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
    k.split_shard(StreamName=a.stream, ShardToSplit=a.shard, NewStartingHashKey=str((lo + hi) // 2 + 1))
    wait_active(k, a.stream)
    print(json.dumps(sorted({s["ShardId"] for s in list_shards(k, a.stream)} - before)), flush=True)


def merge(a):
    k = client(a)
    before = {s["ShardId"] for s in list_shards(k, a.stream)}
    k.merge_shards(StreamName=a.stream, ShardToMerge=a.shard, AdjacentShardToMerge=a.adjacent)
    wait_active(k, a.stream)
    print(json.dumps(sorted({s["ShardId"] for s in list_shards(k, a.stream)} - before)), flush=True)


def delete(a):
    k = client(a)
    k.delete_stream(StreamName=a.stream)
    for _ in range(200):
        try:
            k.describe_stream_summary(StreamName=a.stream)
        except k.exceptions.ResourceNotFoundException:
            print("deleted", flush=True)
            return
        time.sleep(0.05)
    raise SystemExit("stream never went away")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["create", "put", "raw", "shards", "split", "merge", "delete"])
    p.add_argument("--endpoint", required=True)
    p.add_argument("--stream", required=True)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--shard")
    p.add_argument("--adjacent")
    a = p.parse_args()
    globals()[a.command](a)


if __name__ == "__main__":
    main()
