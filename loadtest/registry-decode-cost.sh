#!/usr/bin/env bash
# The decoding cost per record of the schema-registry encodings (Avro, Protobuf, JSON
# Schema) on one thread, next to what a plain JSON value costs (compacted, as on a
# `format = "json"` topic without an encoding): the work the Kafka consumer thread does
# once per record at ingest (every transport then sends the same JSON).
#   loadtest/registry-decode-cost.sh [RECORDS]   (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p pushgate --example registry_decode_cost -- "${1:-200000}"
