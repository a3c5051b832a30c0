"""An independent gRPC client for pushgate's tests: grpcio with stubs that grpcio-tools generates from proto/pushgate/v1/gateway.proto.

Usage (each prints JSON lines on stdout):
  client.py subscribe ADDR REQUEST_JSON [--records N] [--token T] [--timeout S] [--raw HEX] [--tls-ca PEM]
      One line per event as it arrives, then {"end": {"code", "details", "trailers"}}.
      Stops after N records (cancelling the call), when the server ends the
      stream, or after S seconds ({"end": {"code": "TIMEOUT"}}).
  client.py publish ADDR REQUEST_JSON [--token T] [--raw HEX] [--tls-ca PEM]
      {"code", "details", "trailers", "response"}.
  client.py call ADDR METHOD_PATH HEX
      A unary call with raw request bytes to any path: {"code", "details", "trailers"}.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto")


def generated():
    """Generates the stubs from the committed proto into a fresh directory and imports them."""
    out = tempfile.mkdtemp(prefix="pushgate-grpc-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", PROTO_ROOT,
         "--python_out", out, "--grpc_python_out", out,
         os.path.join(PROTO_ROOT, "pushgate", "v1", "gateway.proto")],
        check=True,
    )
    sys.path.insert(0, out)
    from pushgate.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
    return gateway_pb2, gateway_pb2_grpc


pb, pb_grpc = generated()
import grpc  # noqa: E402


def as_json(raw):
    return json.loads(raw) if raw else None


def event_json(ev):
    kind = ev.WhichOneof("kind")
    if kind == "subscribed":
        s = ev.subscribed
        return {"type": "subscribed", "topic": s.topic, "cursor": s.cursor,
                "recovered": s.recovered, "snapshot": s.snapshot,
                "snapshot_partial": s.snapshot_partial,
                "snapshot_partial_reason": s.snapshot_partial_reason}
    if kind == "record":
        r = ev.record
        return {"type": "record", "topic": r.topic,
                "key": r.key if r.HasField("key") else None,
                "partition": r.partition, "offset": r.offset, "cursor": r.cursor,
                "timestamp_ms": r.timestamp_ms, "data": as_json(r.data_json),
                "has_data": len(r.data_json) > 0, "snapshot": r.snapshot, "op": r.op,
                "patch": as_json(r.patch_json), "extra": as_json(r.extra_json)}
    if kind == "live":
        l = ev.live
        return {"type": "live", "replayed": l.replayed, "cursor": l.cursor,
                "compacted": l.compacted if l.HasField("compacted") else None,
                "snapshot_skipped": l.snapshot_skipped if l.HasField("snapshot_skipped") else None}
    if kind == "gap":
        return {"type": "gap", "reason": ev.gap.reason, "earliest": ev.gap.earliest}
    if kind == "token_expiring":
        return {"type": "token_expiring", "grace_ms": ev.token_expiring.grace_ms}
    return {"type": None}


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def metadata(token):
    return [("authorization", "Bearer " + token)] if token else None


def status_of(err):
    trailers = {}
    for md in (err.initial_metadata() or []), (err.trailing_metadata() or []):
        for k, v in md:
            trailers[k] = v if isinstance(v, str) else v.hex()
    return {"code": err.code().name, "details": err.details(), "trailers": trailers}


def channel_for(args):
    """A cleartext (h2c) channel, or TLS trusting the PEM in --tls-ca."""
    ca = getattr(args, "tls_ca", None)
    if ca:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(args.addr, creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])
    return grpc.insecure_channel(args.addr)


def subscribe(args):
    channel = channel_for(args)
    if args.raw is not None:
        call = channel.unary_stream(
            "/pushgate.v1.Gateway/Subscribe",
            request_serializer=lambda b: b,
            response_deserializer=pb.Event.FromString,
        )(bytes.fromhex(args.raw), metadata=metadata(args.token), timeout=args.timeout)
    else:
        request = pb.SubscribeRequest(**json.loads(args.request))
        stub = pb_grpc.GatewayStub(channel)
        call = stub.Subscribe(request, metadata=metadata(args.token), timeout=args.timeout)
    records = 0
    try:
        for ev in call:
            out = event_json(ev)
            emit(out)
            if out["type"] == "live" and args.pause:
                # A consumer that stops reading for a while (the slow-consumer test).
                time.sleep(args.pause)
            if out["type"] == "record":
                records += 1
                if args.records is not None and records >= args.records:
                    call.cancel()
                    emit({"end": {"code": "CANCELLED_BY_CLIENT", "details": "", "trailers": {}}})
                    return
        trailers = {k: v for k, v in (call.trailing_metadata() or [])}
        emit({"end": {"code": "OK", "details": "", "trailers": trailers}})
    except grpc.RpcError as err:
        end = status_of(err)
        if end["code"] == "DEADLINE_EXCEEDED":
            end["code"] = "TIMEOUT"
        emit({"end": end})


def publish(args):
    channel = channel_for(args)
    try:
        if args.raw is not None:
            reply = channel.unary_unary(
                "/pushgate.v1.Gateway/Publish",
                request_serializer=lambda b: b,
                response_deserializer=pb.PublishResponse.FromString,
            )(bytes.fromhex(args.raw), metadata=metadata(args.token), timeout=10)
        else:
            spec = json.loads(args.request)
            records = [pb.PublishRecord(key=r.get("key"),
                                        data_json=json.dumps(r["data"]).encode()
                                        if "data" in r else r.get("data_json", "").encode())
                       for r in spec.get("records", [])]
            reply = pb_grpc.GatewayStub(channel).Publish(
                pb.PublishRequest(topic=spec["topic"], records=records),
                metadata=metadata(args.token), timeout=10)
        emit({"code": "OK", "response": {
            "topic": reply.topic,
            "records": [{"partition": a.partition, "offset": a.offset, "cursor": a.cursor}
                        for a in reply.records]}})
    except grpc.RpcError as err:
        emit(status_of(err))


def call(args):
    channel = grpc.insecure_channel(args.addr)
    try:
        channel.unary_unary(args.method, request_serializer=lambda b: b,
                            response_deserializer=lambda b: b)(bytes.fromhex(args.hex), timeout=10)
        emit({"code": "OK"})
    except grpc.RpcError as err:
        emit(status_of(err))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subscribe")
    s.add_argument("addr")
    s.add_argument("request")
    s.add_argument("--records", type=int)
    s.add_argument("--token")
    s.add_argument("--timeout", type=float, default=30)
    s.add_argument("--raw")
    s.add_argument("--tls-ca")
    s.add_argument("--pause", type=float, help="stop reading for this many seconds after the live event")
    p = sub.add_parser("publish")
    p.add_argument("addr")
    p.add_argument("request")
    p.add_argument("--token")
    p.add_argument("--raw")
    p.add_argument("--tls-ca")
    c = sub.add_parser("call")
    c.add_argument("addr")
    c.add_argument("method")
    c.add_argument("hex")
    args = parser.parse_args()
    {"subscribe": subscribe, "publish": publish, "call": call}[args.cmd](args)


if __name__ == "__main__":
    main()
