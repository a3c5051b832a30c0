//! Prints the decoding cost per record of each schema-registry encoding (Avro, Protobuf,
//! JSON Schema) next to a plain JSON value: `loadtest/registry-decode-cost.sh` runs it.
//! Usage: registry_decode_cost [RECORDS] (default 200000).

fn main() {
    let records: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    println!("{records} records each, one thread, schemas cached");
    println!("{:<52} {:>6} {:>10}", "encoding", "bytes", "ns/record");
    for (name, bytes, ns) in pushgate::registry_decode_cost(records) {
        println!("{name:<52} {bytes:>6} {ns:>10.0}");
    }
}
