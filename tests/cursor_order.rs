//! Architecture invariant 3: a live record's cursor is right for every
//! subscriber, whatever its filter. Whatever a client receives after a record
//! is outside that record's cursor, and resuming from the cursor of any record
//! it received gives exactly what it received after it: nothing lost, nothing
//! repeated. Real server, real WebSocket clients, publishers racing on a topic
//! of three partitions.

mod common;

use std::collections::BTreeSet;

use common::*;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

const PUBLISHERS: u64 = 4;
const PER_PUBLISHER: u64 = 150;
const KEYS: u64 = 12;

/// Whether a subscription receives the record numbered `seq`.
type Receives = fn(u64) -> bool;

fn position(record: &Value) -> (usize, u64) {
    (
        record["partition"].as_u64().unwrap() as usize,
        record["offset"].as_u64().unwrap(),
    )
}

fn cursor_of(record: &Value) -> Cursor {
    Cursor::decode(record["cursor"].as_str().unwrap()).unwrap()
}

/// Each record is inside its own cursor, and no record arrives that an
/// earlier record's cursor already covers (it would be lost on a resume).
fn assert_cursors_cover_only_what_came_before(name: &str, records: &[Value]) {
    let mut covered = [0u64; 3];
    for (i, record) in records.iter().enumerate() {
        let (p, offset) = position(record);
        assert!(
            offset >= covered[p],
            "{name}: record {i} (partition {p}, offset {offset}) arrived after a cursor that covers offsets below {}",
            covered[p]
        );
        let cursor = cursor_of(record);
        assert!(
            cursor.offset(p) > offset,
            "{name}: record {i}'s cursor does not cover the record itself"
        );
        for (q, c) in covered.iter_mut().enumerate() {
            *c = (*c).max(cursor.offset(q));
        }
    }
}

#[tokio::test]
async fn what_follows_a_record_is_exactly_what_its_cursor_resumes_whatever_the_filter() {
    let server = TestServer::start().await;
    let total = (PUBLISHERS * PER_PUBLISHER) as usize;
    // (name, the subscription's options, does it receive this seq)
    // The filter leaves out most records but never flips for a key, so no
    // `enter` or `leave` (publishers race, so a key's order is not seq order).
    let hot = |seq: u64| seq % KEYS % 4 == 3;
    let keyed = |seq: u64| matches!(seq % KEYS, 1 | 4);
    let subscriptions: [(&str, Value, Receives); 3] = [
        ("all keys", json!({}), |_| true),
        ("value filter", json!({"filter": {"hot": true}}), hot),
        ("two keys", json!({"keys": ["k1", "k4"]}), keyed),
    ];
    let mut clients = Vec::new();
    for (_, options, _) in &subscriptions {
        let mut ws = server.ws().await;
        let mut request = options.clone();
        request["topic"] = json!("t");
        request["snapshot"] = json!(false);
        ws.subscribe(request).await;
        clients.push(ws);
    }

    // Publishers race, so records of the three partitions interleave.
    let mut tasks = Vec::new();
    for publisher in 0..PUBLISHERS {
        let http = server.http.clone();
        let url = server.url("/topics/t");
        tasks.push(tokio::spawn(async move {
            let seqs: Vec<u64> =
                (publisher * PER_PUBLISHER..(publisher + 1) * PER_PUBLISHER).collect();
            for chunk in seqs.chunks(5) {
                let records: Vec<Value> = chunk
                    .iter()
                    .map(|&seq| {
                        json!({"key": format!("k{}", seq % KEYS), "data": {"seq": seq, "hot": seq % KEYS % 4 == 3}})
                    })
                    .collect();
                post_records(&http, &url, records).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    for ((name, options, wanted), ws) in subscriptions.iter().zip(&mut clients) {
        let expected = (0..total as u64).filter(|&s| wanted(s)).count();
        let received = ws.records(expected).await;
        let seqs: BTreeSet<u64> = received.iter().map(seq).collect();
        assert_eq!(seqs.len(), expected, "{name}: a record came twice");
        assert!(
            seqs.iter().all(|&s| wanted(s)),
            "{name}: a record outside the subscription"
        );
        assert_cursors_cover_only_what_came_before(name, &received);

        // Resume from the cursors of records spread over the stream: each
        // gives exactly the records that followed it.
        for i in (0..received.len()).step_by(received.len().div_ceil(6).max(1)) {
            let after: BTreeSet<(usize, u64)> = received[i + 1..].iter().map(position).collect();
            let mut again = server.ws().await;
            let mut request = options.clone();
            request["topic"] = json!("t");
            request["cursor"] = received[i]["cursor"].clone();
            let reply = again.subscribe(request).await;
            assert_eq!(reply["recovered"], true, "{name}: {reply}");
            let replayed = again.records(after.len()).await;
            let got: BTreeSet<(usize, u64)> = replayed.iter().map(position).collect();
            assert_eq!(
                got, after,
                "{name}: resuming after record {i} gave other records than followed it"
            );
            again
                .expect_silence(std::time::Duration::from_millis(200))
                .await;
        }
    }
    server.stop().await;
}
