//! The gateway core end to end: real server on 127.0.0.1:0, real WebSocket and SSE clients.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use common::*;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

/// Publishes `n` records over keys k0..k{keys-1} (seq = global counter), in batches.
async fn publish_seq(
    server: &TestServer,
    topic: &str,
    keys: usize,
    from: u64,
    n: u64,
) -> Vec<(String, u64)> {
    let mut published = Vec::new();
    let mut batch = Vec::new();
    for seq in from..from + n {
        let key = format!("k{}", seq as usize % keys);
        batch.push((key.clone(), json!({"seq": seq})));
        published.push((key, seq));
        if batch.len() == 7 {
            server.publish_batch(topic, &batch).await;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        server.publish_batch(topic, &batch).await;
    }
    published
}

/// Checks offsets rise by partition, and returns (key, seq) in arrival order.
fn check_partition_order(records: &[Value]) -> Vec<(String, u64)> {
    let mut last: HashMap<u64, u64> = HashMap::new();
    for r in records {
        let p = r["partition"].as_u64().unwrap();
        let o = r["offset"].as_u64().unwrap();
        if let Some(prev) = last.insert(p, o) {
            assert!(o > prev, "partition {p}: offset {o} after {prev}");
        }
    }
    records
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_owned(), seq(r)))
        .collect()
}

#[tokio::test]
async fn ws_key_filter_gets_exactly_matching_records_in_partition_order() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"id": "s1", "topic": "t", "keys": ["k1", "k4"], "snapshot": false}))
        .await;
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["id"], "s1");
    // Another client on all keys, to be sure filtering is per subscription.
    let mut all = server.ws().await;
    all.subscribe(json!({"topic": "t", "snapshot": false}))
        .await;

    let published = publish_seq(&server, "t", 6, 0, 120).await;
    let expected: Vec<(String, u64)> = published
        .iter()
        .filter(|(k, _)| k == "k1" || k == "k4")
        .cloned()
        .collect();
    let got = check_partition_order(&ws.records(expected.len()).await);
    assert_eq!(
        got.iter().cloned().collect::<HashSet<_>>(),
        expected.iter().cloned().collect::<HashSet<_>>()
    );
    // Per key, records arrive in publish order.
    for key in ["k1", "k4"] {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .collect();
        let want: Vec<u64> = expected
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, want);
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    let everything = check_partition_order(&all.records(120).await);
    assert_eq!(everything.len(), 120);
    server.stop().await;
}

#[tokio::test]
async fn prefix_filter_and_all_keys() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "prefix": "eu.", "keys": ["us.nyc"], "snapshot": false}))
        .await;
    for key in ["eu.par", "us.sfo", "eu.ber", "us.nyc", "asia.tok"] {
        server.publish("one", key, json!({"k": key})).await;
    }
    let keys: Vec<String> = ws
        .records(3)
        .await
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, vec!["eu.par", "eu.ber", "us.nyc"]);
    ws.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn sse_key_filter_gets_the_same_records_with_cursor_ids() {
    let server = TestServer::start().await;
    let mut sse = server
        .sse("topic=t&key=k2&key=k3&snapshot=false", None)
        .await;
    assert_eq!(sse.status, 200);
    let subscribed = sse.next().await;
    assert_eq!(subscribed.event, "subscribed");
    let published = publish_seq(&server, "t", 5, 0, 60).await;
    let expected: HashSet<(String, u64)> = published
        .into_iter()
        .filter(|(k, _)| k == "k2" || k == "k3")
        .collect();
    let events = sse.records(expected.len()).await;
    let records: Vec<Value> = events.iter().map(|e| e.json()).collect();
    let got = check_partition_order(&records);
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), expected);
    for (ev, rec) in events.iter().zip(&records) {
        assert_eq!(
            ev.id.as_deref(),
            rec["cursor"].as_str(),
            "SSE id is the cursor"
        );
        assert_eq!(rec["type"], "record");
    }
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());
    server.stop().await;
}

/// Disconnect, miss records, come back with the cursor: exactly the missed ones.
async fn ws_resume_case(missed: u64) {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "t", "keys": ["k0", "k1", "k2", "k3"], "snapshot": false}))
        .await;
    publish_seq(&server, "t", 4, 0, 40).await;
    let first = ws.records(40).await;
    let cursor = first.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    drop(ws);

    // Missed while away; k9 records do not match the filter.
    let published = publish_seq(&server, "t", 4, 40, missed).await;
    server.publish("t", "k9", json!({"seq": 999_999})).await;

    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "t", "keys": ["k0", "k1", "k2", "k3"], "cursor": cursor}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["snapshot"], 0);
    let replayed = check_partition_order(&ws.records(missed as usize).await);
    // Catch-up ends with a `live` marker counting exactly the replayed records.
    ws.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(ws.lives.len(), 1);
    assert_eq!(ws.lives[0]["replayed"], missed);
    let mut got: Vec<u64> = replayed.iter().map(|(_, s)| *s).collect();
    got.sort();
    let want: Vec<u64> = published.iter().map(|(_, s)| *s).collect();
    assert_eq!(got, want, "0 lost, 0 duplicated");
    // And live continues after the replay.
    publish_seq(&server, "t", 4, 40 + missed, 5).await;
    let live: Vec<u64> = ws.records(5).await.iter().map(seq).collect();
    assert_eq!(
        live.iter().copied().collect::<HashSet<_>>(),
        (40 + missed..45 + missed).collect()
    );
    ws.expect_silence(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test]
async fn ws_resume_from_ring() {
    // 6 missed over 3 partitions fits the ring of 8 per partition.
    ws_resume_case(6).await;
}

#[tokio::test]
async fn ws_resume_from_log_beyond_ring() {
    // 700 missed: far older than the ring, read back from the embedded log in chunks.
    ws_resume_case(700).await;
}

#[tokio::test]
async fn sse_resume_with_last_event_id_and_cursor_param() {
    let server = TestServer::start().await;
    let mut sse = server.sse("topic=t&snapshot=false", None).await;
    sse.next().await; // subscribed
    publish_seq(&server, "t", 3, 0, 30).await;
    let events = sse.records(30).await;
    let last_id = events.last().unwrap().id.clone().unwrap();
    drop(sse);
    let missed = publish_seq(&server, "t", 3, 30, 50).await;

    // As EventSource does on reconnect: the header, with a stale cursor in the URL that must lose.
    let stale = events[0].id.clone().unwrap();
    let mut sse = server
        .sse(&format!("topic=t&cursor={stale}"), Some(&last_id))
        .await;
    let subscribed = sse.next().await.json();
    assert_eq!(subscribed["recovered"], true);
    let got: Vec<u64> = sse
        .records(50)
        .await
        .iter()
        .map(|e| seq(&e.json()))
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, missed.iter().map(|(_, s)| *s).collect::<Vec<_>>());
    assert!(sse.next_within(Duration::from_millis(300)).await.is_none());

    // The query parameter alone works the same.
    let mut by_param = server.sse(&format!("topic=t&cursor={last_id}"), None).await;
    by_param.next().await;
    assert_eq!(by_param.records(50).await.len(), 50);
    assert!(by_param
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    server.stop().await;
}

#[tokio::test]
async fn snapshot_then_live_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    let server = TestServer::start().await;
    let keys = ["a", "b", "c", "d", "e"];
    let http = server.http.clone();
    let addr = server.addr;
    // Publisher: per key, a counter that rises by one per record.
    let publisher = tokio::spawn(async move {
        for round in 0..150u64 {
            let records: Vec<Value> = keys
                .iter()
                .map(|k| json!({"key": k, "data": {"n": round}}))
                .collect();
            let r = http
                .post(format!("http://{addr}/topics/t"))
                .json(&json!({"records": records}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    });
    let mut checked = 0;
    let mut subscribers = Vec::new();
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(15 * i)).await;
        let mut ws = server.ws().await;
        let reply = ws.subscribe(json!({"topic": "t", "keys": keys})).await;
        subscribers.push((ws, reply["snapshot"].as_u64().unwrap()));
    }
    publisher.await.unwrap();
    for (mut ws, snapshot_len) in subscribers {
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen_live = false;
        let mut snapshot_seen = 0;
        // Read until every key reached 149.
        while next.len() < keys.len() || next.values().any(|&n| n < 150) {
            let rec = ws.json().await;
            assert_eq!(rec["type"], "record", "{rec}");
            let key = rec["key"].as_str().unwrap().to_owned();
            let n = rec["data"]["n"].as_u64().unwrap();
            if rec["snapshot"] == true {
                assert!(!seen_live, "snapshot record after live ones");
                snapshot_seen += 1;
            } else {
                seen_live = true;
            }
            if let Some(&want) = next.get(&key) {
                assert_eq!(n, want, "key {key}: gap or duplicate at the seam");
            }
            next.insert(key, n + 1);
        }
        assert_eq!(snapshot_seen, snapshot_len);
        ws.expect_silence(Duration::from_millis(100)).await;
        checked += 1;
    }
    assert_eq!(checked, 12);
    server.stop().await;
}

#[tokio::test]
async fn snapshot_gives_latest_value_per_key_then_live() {
    let server = TestServer::start().await;
    for n in 0..3 {
        server.publish("t", "AAPL", json!({"price": 100 + n})).await;
        server.publish("t", "MSFT", json!({"price": 200 + n})).await;
    }
    server.publish("t", "GOOG", json!({"price": 1})).await;
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "t", "keys": ["AAPL", "MSFT", "NONE"]}))
        .await;
    assert_eq!(reply["snapshot"], 2);
    let snap = ws.records(2).await;
    let prices: HashMap<String, i64> = snap
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                r["data"]["price"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        prices,
        HashMap::from([("AAPL".into(), 102), ("MSFT".into(), 202)])
    );
    assert!(snap.iter().all(|r| r["snapshot"] == true));
    server.publish("t", "AAPL", json!({"price": 103})).await;
    let live = ws.json().await;
    assert_eq!(
        ws.lives.len(),
        1,
        "snapshot, then the live marker, then live"
    );
    assert_eq!(ws.lives[0]["replayed"], 0);
    assert_eq!(live["data"]["price"], 103);
    assert!(live.get("snapshot").is_none());

    // SSE: the same snapshot; every snapshot event carries an id (the
    // first one's resumes the snapshot after its key, the last one's is live).
    let mut sse = server.sse("topic=t&key=AAPL&key=MSFT", None).await;
    sse.next().await;
    let events = sse.records(2).await;
    assert!(events[0].id.is_some() && events[1].id.is_some());
    assert_ne!(events[0].id, events[1].id);
    server.stop().await;
}

#[tokio::test]
async fn evicted_position_answers_recovered_false_and_gap() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "snapshot": false}))
        .await;
    server.publish("small", "x", json!({"seq": 0})).await;
    let first = ws.json().await;
    let old_cursor = first["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    for seq in 1..40 {
        server.publish("small", "x", json!({"seq": seq})).await;
    }
    // Retention keeps 10 of 40 and runs every 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"id": 7, "topic": "small", "cursor": old_cursor}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let gap = ws.json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "retention");
    assert_eq!(gap["id"], 7);
    let earliest = Cursor::decode(gap["earliest"].as_str().unwrap()).unwrap();
    assert_eq!(
        earliest.offsets,
        vec![30],
        "retention keeps the last 10 of 40"
    );
    // A fresh snapshot follows (the latest value of x), never a partial replay.
    assert_eq!(reply["snapshot"], 1);
    let snap = ws.json().await;
    assert_eq!(snap["snapshot"], true);
    assert_eq!(snap["data"]["seq"], 39);
    ws.expect_silence(Duration::from_millis(200)).await;

    // The earliest cursor itself is honoured: exactly the 10 retained records.
    let mut again = server.ws().await;
    let reply = again
        .subscribe(json!({"topic": "small", "cursor": gap["earliest"]}))
        .await;
    assert_eq!(reply["recovered"], true);
    let seqs: Vec<u64> = again.records(10).await.iter().map(seq).collect();
    assert_eq!(seqs, (30..40).collect::<Vec<_>>());

    // A cursor from another log (another epoch) is treated the same way.
    let foreign = Cursor::new(12345, vec![3]).encode();
    let mut sse = server
        .sse(&format!("topic=small&cursor={foreign}"), None)
        .await;
    let subscribed = sse.next().await;
    assert_eq!(subscribed.json()["recovered"], false);
    let gap = sse.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.json()["reason"], "epoch");
    server.stop().await;
}

#[tokio::test]
async fn slow_client_is_disconnected_while_others_keep_receiving() {
    // A long write timeout: this client is slow, not gone, and reads its 4001 later.
    let server =
        TestServer::start_with("[limits]\nqueue_bytes = 1048576\nwrite_timeout = \"60s\"\n").await;
    let mut slow = server.ws().await;
    slow.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut fast = server.ws().await;
    fast.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut fast_sse = server.sse("topic=one&snapshot=false", None).await;
    fast_sse.next().await;

    // ~24 MB in 400 records of 60 KB: more than loopback socket buffers hold.
    let payload = "x".repeat(60_000);
    let reader = tokio::spawn(async move {
        let mut n = 0;
        let records = fast.records(400).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(seq(r), i as u64);
            n += 1;
        }
        n
    });
    let sse_reader = tokio::spawn(async move { fast_sse.records(400).await.len() });
    for chunk in 0..40u64 {
        let batch: Vec<(String, Value)> = (0..10)
            .map(|i| {
                (
                    "k".to_owned(),
                    json!({"seq": chunk * 10 + i, "pad": payload}),
                )
            })
            .collect();
        server.publish_batch("one", &batch).await;
    }
    assert_eq!(reader.await.unwrap(), 400, "fast WS client got everything");
    assert_eq!(
        sse_reader.await.unwrap(),
        400,
        "fast SSE client got everything"
    );
    // The slow client finally reads: some records, then close 4001.
    let code = tokio::time::timeout(Duration::from_secs(20), slow.close_code())
        .await
        .unwrap();
    assert_eq!(code, Some(4001));
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_harms_nobody() {
    let server = TestServer::start().await;
    let mut bystander = server.ws().await;
    bystander
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut ws = server.ws().await;

    let expect_error = |code: &'static str| {
        let code = code.to_owned();
        move |v: Value| {
            assert_eq!(v["type"], "error", "{v}");
            assert_eq!(v["code"], code, "{v}");
        }
    };
    for (input, code) in [
        ("{not json", "bad_json"),
        ("[]", "bad_json"),
        (r#"{"type":"fly"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "bad_message"),
        (r#"{"type":"subscribe","topic":"nope"}"#, "unknown_topic"),
        (
            r#"{"type":"subscribe","topic":"one","cursor":"%%%"}"#,
            "bad_cursor",
        ),
        (
            r#"{"type":"subscribe","topic":"one","cursor":"AQID"}"#,
            "bad_cursor",
        ),
        (
            r#"{"type":"subscribe","topic":"one","keys":[]}"#,
            "bad_filter",
        ),
        (r#"{"type":"unsubscribe","id":"x"}"#, "not_subscribed"),
    ] {
        ws.send_raw(input).await;
        expect_error(code)(ws.json().await);
    }
    // Binary frames are refused with an error too.
    futures_util::SinkExt::send(
        &mut ws.stream,
        tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into()),
    )
    .await
    .unwrap();
    expect_error("bad_message")(ws.json().await);
    // The connection still works.
    ws.subscribe(json!({"id": 1, "topic": "one", "snapshot": false}))
        .await;
    ws.send(json!({"type": "subscribe", "id": 2, "topic": "one"}))
        .await;
    expect_error("already_subscribed")(ws.json().await);
    ws.send(json!({"type": "ping", "id": 5})).await;
    assert_eq!(ws.json().await["type"], "pong");

    // Bad publish bodies: 4xx JSON, nothing appended.
    for body in [
        "nope",
        "{\"key\":\"a\"}",
        "{\"records\":[{\"data\":1},{\"key\":2,\"data\":1}]}",
    ] {
        let r = server
            .http
            .post(server.url("/topics/one"))
            .body(body)
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
    }
    let r = server
        .http
        .post(server.url("/topics/nope"))
        .body("{}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let big = format!("{{\"key\":\"a\",\"data\":\"{}\"}}", "x".repeat(2 << 20));
    let r = server
        .http
        .post(server.url("/topics/one"))
        .body(big)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = server.sse("topic=one&cursor=garbage", None).await;
    assert_eq!(r.status, 400);
    let r = server.sse("topic=nope", None).await;
    assert_eq!(r.status, 404);

    // An oversized frame closes that connection with 1009...
    let mut big_frame = server.ws().await;
    big_frame.send_raw(&"y".repeat(100_000)).await;
    assert_eq!(big_frame.close_code().await, Some(1009));

    // ...and the first record ever appended is offset 0: nothing bad was appended.
    let published = server.publish("one", "k", json!({"seq": 1})).await;
    assert_eq!(published["offset"], 0);
    assert_eq!(ws.json().await["data"]["seq"], 1);
    assert_eq!(bystander.json().await["data"]["seq"], 1);
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_resubscribe_with_cursor_resumes() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"id": "a", "topic": "one", "keys": ["x"], "snapshot": false}))
        .await;
    server.publish("one", "x", json!({"seq": 0})).await;
    let cursor = ws.json().await["cursor"].clone();
    ws.send(json!({"type": "unsubscribe", "id": "a"})).await;
    assert_eq!(ws.json().await["type"], "unsubscribed");
    server.publish("one", "x", json!({"seq": 1})).await;
    ws.expect_silence(Duration::from_millis(200)).await;
    ws.subscribe(json!({"id": "b", "topic": "one", "keys": ["x", "y"], "cursor": cursor}))
        .await;
    assert_eq!(seq(&ws.json().await), 1);
    server.stop().await;
}

/// At a few thousand records a second, `unsubscribed` is the last word of a
/// subscription: records already queued for it go out before the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_arrives_after_unsubscribed_at_a_high_publish_rate() {
    let server =
        TestServer::start_with("[limits]\npublish_rate = 100000.0\npublish_burst = 100000.0\n")
            .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (http, addr, stop) = (server.http.clone(), server.addr, stop.clone());
        tokio::spawn(async move {
            let mut published = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let records: Vec<Value> = (0..30)
                    .map(|i| json!({"key": format!("k{i}"), "data": {"n": published + i}}))
                    .collect();
                let r = http
                    .post(format!("http://{addr}/topics/one"))
                    .json(&json!({ "records": records }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                published += 30;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            published
        })
    };
    let mut ws = server.ws().await;
    let (mut late, mut rounds_with_late, mut delivered) = (0, 0, 0);
    for round in 0..300 {
        ws.subscribe(json!({"id": round, "topic": "one", "snapshot": false}))
            .await;
        // Let some records queue up, then unsubscribe with more in flight.
        for _ in 0..3 {
            let v = ws.json().await;
            assert_eq!(v["type"], "record", "{v}");
            delivered += 1;
        }
        ws.send(json!({"type": "unsubscribe", "id": round})).await;
        loop {
            let v = ws.json().await;
            match v["type"].as_str() {
                Some("record") => delivered += 1,
                Some("unsubscribed") => break,
                _ => panic!("unexpected {v}"),
            }
        }
        // Anything of the old subscription arriving now is late.
        let mut late_here = 0;
        while let Some(WsEvent::Json(v)) = ws.event_within(Duration::from_millis(2)).await {
            assert_eq!(v["type"], "record", "{v}");
            late_here += 1;
        }
        late += late_here;
        rounds_with_late += usize::from(late_here > 0);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.unwrap();
    println!("{published} records published, {delivered} delivered in 300 rounds, {late} late");
    assert_eq!(
        (late, rounds_with_late),
        (0, 0),
        "records arrived after `unsubscribed`"
    );
    server.stop().await;
}

#[tokio::test]
async fn publish_answers_positions_and_cursors() {
    let server = TestServer::start().await;
    let one = server.publish("t", "AAPL", json!({"p": 1})).await;
    let partition = one["partition"].as_u64().unwrap();
    assert_eq!(one["offset"], 0);
    let cursor = Cursor::decode(one["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(cursor.offsets[partition as usize], 1);
    // Same key, same partition (Kafka's murmur2 partitioner).
    let two = server.publish("t", "AAPL", json!({"p": 2})).await;
    assert_eq!(two["partition"], partition);
    assert_eq!(two["offset"], 1);
    let batch = server
        .publish_batch("t", &[("a".into(), json!(1)), ("b".into(), json!(2))])
        .await;
    assert_eq!(batch["records"].as_array().unwrap().len(), 2);
    let metrics = server.metrics_text().await;
    assert!(metrics.contains("pushgate_records_in_total"), "{metrics}");
    server.stop().await;
}

/// A node at `limits.max_connections` refuses more streams with 503 and says
/// when to retry, like every other refusal a retry can cure.
#[tokio::test]
async fn a_full_node_answers_503_with_retry_after() {
    let server = TestServer::start_with("[limits]\nmax_connections = 1\n").await;
    let mut first = server.ws().await;
    first
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let refused = server
        .http
        .get(server.url("/sse?topic=one"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    drop(first);
    server.stop().await;
}

/// Handshakes are checked by pushgate itself (src/transport/ws_io.rs): a
/// request that is not a valid RFC 6455 upgrade gets a JSON `bad_request`, and
/// a valid one with a comma-separated `Connection` header (as Firefox sends it)
/// is upgraded with the right `Sec-WebSocket-Accept`.
#[tokio::test]
async fn websocket_handshakes_are_checked_and_answered() {
    let server = TestServer::start().await;
    let handshake = |version: &'static str| {
        server
            .http
            .get(server.url("/ws"))
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", version)
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    };
    // RFC 6455 1.3's own example key and answer.
    let ok = handshake("13").await.unwrap();
    assert_eq!(ok.status(), 101);
    assert_eq!(
        ok.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let version = handshake("8").await.unwrap();
    assert_eq!(version.status(), 400);
    assert_eq!(version.headers()["sec-websocket-version"], "13");
    let body: Value = version.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    let plain = server.http.get(server.url("/ws")).send().await.unwrap();
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");
    server.stop().await;
}

/// The value of the first series of `metric` whose labels contain every one of `labels`.
fn series(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(metric)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|l| set.split(',').any(|s| s == *l))
            .then(|| value.trim().parse().ok())?
    })
}

/// Freshness and lag: after records are published and delivered over
/// WebSocket and SSE, `/metrics` has each partition's lag (0: the embedded
/// log's end is ingested), a record-age sample per transport, and
/// subscriptions counted per topic.
#[tokio::test]
async fn metrics_show_partition_lag_record_age_per_transport_and_subscriptions_per_topic() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut sse = server.sse("topic=one&snapshot=false", None).await;
    assert_eq!(sse.status, 200);
    // The SSE subscription is registered once its opening frames are out.
    sse.next().await;
    for i in 0..3 {
        server.publish("one", "k", json!({"i": i})).await;
    }
    assert_eq!(ws.records(3).await.len(), 3);
    assert_eq!(sse.records(3).await.len(), 3);
    let metrics = server.metrics_text().await;
    assert_eq!(
        series(
            &metrics,
            "pushgate_partition_lag_records",
            &[r#"topic="one""#, r#"partition="0""#]
        ),
        Some(0.0),
        "{metrics}"
    );
    for transport in ["ws", "sse"] {
        let label = format!(r#"transport="{transport}""#);
        let count = series(&metrics, "pushgate_record_age_seconds_count", &[&label]);
        assert!(
            count.is_some_and(|n| n >= 3.0),
            "{transport}: {count:?}\n{metrics}"
        );
        let bucket = series(
            &metrics,
            "pushgate_record_age_seconds_bucket",
            &[&label, r#"le="+Inf""#],
        );
        assert!(bucket.is_some_and(|n| n >= 3.0), "a histogram: {metrics}");
    }
    let subs = series(&metrics, "pushgate_subscriptions", &[r#"topic="one""#]);
    assert!(subs.is_some_and(|n| n >= 2.0), "{subs:?}\n{metrics}");
    server.stop().await;
}
