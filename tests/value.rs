//! Value-aware delivery end to end (issue 11): filters on records' data over WebSocket and SSE, live, in snapshots and on resume.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(250);

/// `value` as a URL query parameter value.
fn enc(value: &Value) -> String {
    form_urlencoded::byte_serialize(value.to_string().as_bytes()).collect()
}

/// Record messages until nothing arrives for `QUIET`.
async fn ws_drain(ws: &mut WsClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(ev) = ws.event_within(QUIET).await {
        match ev {
            WsEvent::Json(v) if v["type"] == "record" => out.push(v),
            WsEvent::Json(v) => panic!("unexpected message {v}"),
            WsEvent::Closed(code) => panic!("closed ({code:?})"),
        }
    }
    out
}

async fn sse_drain(sse: &mut SseClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(ev) = sse.next_within(QUIET).await {
        assert_eq!(ev.event, "message", "{ev:?}");
        let v = ev.json();
        // Snapshot events carry no id but the last (a drop mid-snapshot starts over).
        if v["snapshot"] != true {
            assert_eq!(
                ev.id.as_deref(),
                v["cursor"].as_str(),
                "SSE id is the cursor"
            );
        }
        out.push(v);
    }
    out
}

fn keys(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect()
}

fn set(keys: &[&str]) -> BTreeSet<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

/// Records r0..r7: numbers, numbers as strings, nulls, missing fields,
/// nested objects, arrays and a value that is not an object.
fn corpus() -> Vec<(&'static str, Value)> {
    vec![
        (
            "r0",
            json!({"price": 150, "sector": "tech", "name": "Apple", "tags": ["big", "us"], "customer": {"id": "42"}}),
        ),
        (
            "r1",
            json!({"price": 99.5, "sector": "energy", "name": "BP", "tags": ["uk"], "customer": {"id": 42}}),
        ),
        (
            "r2",
            json!({"price": "150", "sector": "tech", "name": "apple-fake"}),
        ),
        ("r3", json!({"sector": null, "name": "Nothing"})),
        (
            "r4",
            json!({"price": 200, "sector": "health", "name": "Pfizer", "customer": {"id": "43"}, "status": "open"}),
        ),
        ("r5", json!("just a string")),
        (
            "r6",
            json!({"price": 10, "sector": "tech", "status": "closed", "tags": []}),
        ),
        (
            "r7",
            json!({"price": 150.0, "sector": "TECH", "name": "Applied"}),
        ),
    ]
}

/// Each operator and combinator, with the keys of `corpus` it must select.
fn cases() -> Vec<(Value, BTreeSet<String>)> {
    vec![
        (json!({"price": {"gt": 100}}), set(&["r0", "r4", "r7"])),
        (json!({"price": 150}), set(&["r0", "r7"])),
        (json!({"price": "150"}), set(&["r2"])),
        (
            json!({"price": {"gte": 99.5, "lte": 150}}),
            set(&["r0", "r1", "r7"]),
        ),
        (
            json!({"price": {"between": [10, 99.5]}}),
            set(&["r1", "r6"]),
        ),
        (json!({"price": {"lt": 100}}), set(&["r1", "r6"])),
        (
            json!({"price": {"ne": 150}}),
            set(&["r1", "r2", "r3", "r4", "r5", "r6"]),
        ),
        (
            json!({"sector": {"in": ["tech", "energy"]}}),
            set(&["r0", "r1", "r2", "r6"]),
        ),
        (
            json!({"sector": {"nin": ["tech", "energy"]}}),
            set(&["r3", "r4", "r5", "r7"]),
        ),
        (json!({"name": {"prefix": "Appl"}}), set(&["r0", "r7"])),
        (
            json!({"name": {"contains": "pp"}}),
            set(&["r0", "r2", "r7"]),
        ),
        (json!({"tags": {"contains": "us"}}), set(&["r0"])),
        (json!({"customer.id": "42"}), set(&["r0"])),
        (
            json!({"customer.id": {"in": [42, "43"]}}),
            set(&["r1", "r4"]),
        ),
        (json!({"sector": {"exists": false}}), set(&["r5"])),
        (json!({"status": {"exists": true}}), set(&["r4", "r6"])),
        (
            json!({"or": [{"status": "open"}, {"and": [{"sector": "tech"}, {"not": {"price": {"gte": 100}}}]}]}),
            set(&["r2", "r4", "r6"]),
        ),
        (json!({"name": {"gt": "Apple", "lt": "B"}}), set(&["r7"])),
        (
            json!({"price": {"not": {"in": [150]}}, "sector": "tech"}),
            set(&["r2", "r6"]),
        ),
        (json!({"tags": []}), set(&["r6"])),
        (json!({"customer": {"eq": {"id": "43"}}}), set(&["r4"])),
        (
            json!({"price": {"or": [{"lt": 50}, {"gt": 199}]}}),
            set(&["r4", "r6"]),
        ),
    ]
}

async fn publish_corpus(server: &TestServer, topic: &str) {
    let records: Vec<(String, Value)> = corpus()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    server.publish_batch(topic, &records).await;
}

#[tokio::test]
async fn every_operator_and_combinator_live_on_ws_and_sse() {
    let server = TestServer::start().await;
    let cases = cases();
    let mut ws_clients = Vec::new();
    let mut sse_clients = Vec::new();
    for (filter, _) in &cases {
        let mut ws = server.ws().await;
        ws.subscribe(json!({"topic": "one", "filter": filter, "snapshot": false}))
            .await;
        ws_clients.push(ws);
        let mut sse = server
            .sse(
                &format!("topic=one&snapshot=false&filter={}", enc(filter)),
                None,
            )
            .await;
        assert_eq!(sse.status, 200, "{filter}");
        assert_eq!(sse.next().await.event, "subscribed");
        sse_clients.push(sse);
    }
    // A subscriber without a filter still gets everything, unchanged.
    let mut plain = server.ws().await;
    plain
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    publish_corpus(&server, "one").await;
    let ws_got = join_all(ws_clients.iter_mut().map(ws_drain)).await;
    let sse_got = join_all(sse_clients.iter_mut().map(sse_drain)).await;
    for (((filter, want), ws), sse) in cases.iter().zip(&ws_got).zip(&sse_got) {
        assert_eq!(&keys(ws), want, "ws {filter}");
        assert_eq!(&keys(sse), want, "sse {filter}");
        assert_eq!(ws.len(), want.len(), "each once: {filter}");
        assert_eq!(ws, sse, "same record JSON on both transports: {filter}");
    }
    let all = ws_drain(&mut plain).await;
    assert_eq!(all.len(), 8);
    // Filtered records are the very bytes the unfiltered subscriber got.
    let by_offset = |o: &Value| all.iter().find(|r| r["offset"] == *o).unwrap().clone();
    for r in ws_got.iter().flatten() {
        assert_eq!(*r, by_offset(&r["offset"]));
    }
    server.stop().await;
}

#[tokio::test]
async fn snapshots_and_resumes_hold_only_matching_records() {
    let server = TestServer::start().await;
    let filter = json!({"sector": {"in": ["tech", "energy"]}});
    let want = set(&["r0", "r1", "r2", "r6"]);
    publish_corpus(&server, "one").await;

    // Snapshot: only matching keys, on both transports.
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "one", "filter": filter}))
        .await;
    assert_eq!(reply["snapshot"], 4, "{reply}");
    let snap = ws.records(4).await;
    assert!(snap.iter().all(|r| r["snapshot"] == true));
    assert_eq!(keys(&snap), want);
    let mut sse = server
        .sse(&format!("topic=one&filter={}", enc(&filter)), None)
        .await;
    assert_eq!(sse.next().await.json()["snapshot"], 4);
    assert_eq!(keys(&sse_drain(&mut sse).await), want);

    // Resume from the start (ring): only matching records; the `live`
    // message's cursor covers the filtered-out tail (r7 is last).
    let start = Cursor::new(
        Cursor::decode(snap[0]["cursor"].as_str().unwrap())
            .unwrap()
            .epoch,
        vec![0],
    )
    .encode();
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "filter": filter, "cursor": start}))
        .await;
    let replayed = ws_drain(&mut ws).await;
    assert_eq!(keys(&replayed), want);
    assert_eq!(ws.lives.len(), 1);
    assert_eq!(ws.lives[0]["replayed"], 4);
    let live_cursor = ws.lives[0]["cursor"].as_str().unwrap().to_owned();
    assert_eq!(Cursor::decode(&live_cursor).unwrap().offsets, vec![8]);
    let last = replayed.last().unwrap()["cursor"].as_str().unwrap();
    assert_eq!(
        Cursor::decode(last).unwrap().offsets,
        vec![7],
        "r6 at offset 6"
    );
    // Resuming from the `live` cursor replays nothing: r7 is behind it.
    let mut again = server.ws().await;
    again
        .subscribe(json!({"topic": "one", "filter": filter, "cursor": live_cursor}))
        .await;
    assert!(ws_drain(&mut again).await.is_empty());
    assert_eq!(again.lives[0]["replayed"], 0);

    // SSE: the `live` event carries the cursor as its id too.
    let mut sse = server
        .sse(
            &format!("topic=one&cursor={start}&filter={}", enc(&filter)),
            None,
        )
        .await;
    assert_eq!(sse.next().await.event, "subscribed");
    assert_eq!(keys(&sse_drain(&mut sse).await), want);
    assert_eq!(sse.lives[0]["cursor"], live_cursor.as_str());

    // A plain subscription's `live` message is unchanged (no cursor).
    let mut plain = server.ws().await;
    plain
        .subscribe(json!({"topic": "one", "cursor": start}))
        .await;
    assert_eq!(ws_drain(&mut plain).await.len(), 8);
    assert!(plain.lives[0].get("cursor").is_none());
    server.stop().await;
}

#[tokio::test]
async fn resume_from_the_log_beyond_the_ring_is_filtered_too() {
    let server = TestServer::start().await;
    // `small` keeps 5 records in its ring: 9 records push the start out of it.
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "snapshot": false}))
        .await;
    let first = server.publish("small", "a", json!({"n": 0})).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    for n in 1..9 {
        let key = if n % 2 == 0 { "even" } else { "odd" };
        server.publish("small", key, json!({"n": n})).await;
    }
    let filter = json!({"n": {"in": [2, 3, 4]}});
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "filter": filter, "cursor": cursor}))
        .await;
    let replayed = ws_drain(&mut ws).await;
    let got: Vec<(u64, String)> = replayed
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["op"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    // 2 (even, first seen), 3 (odd was 1: enters), 4, then 5 and 6 leave;
    // 7 and 8 stay out.
    let want: Vec<(u64, String)> = [(2, ""), (3, "enter"), (4, ""), (5, "leave"), (6, "leave")]
        .iter()
        .map(|(o, op)| (*o, (*op).to_owned()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(ws.lives[0]["replayed"], 5);
    let covered = Cursor::decode(ws.lives[0]["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(covered.offsets, vec![9]);
    // Live continues through the filter.
    server.publish("small", "odd", json!({"n": 3})).await;
    server.publish("small", "odd", json!({"n": 5})).await;
    server.publish("small", "odd", json!({"n": 7})).await;
    let live = ws_drain(&mut ws).await;
    assert_eq!(ops(&live), pairs(&[("odd", "enter"), ("odd", "leave")]));
    assert_eq!(live[0]["offset"], 9);
    server.stop().await;
}

#[tokio::test]
async fn bad_filters_get_bad_filter_and_the_connection_stays() {
    let server =
        TestServer::start_with("[limits]\nmax_filter_depth = 3\nmax_filter_list = 4\nmax_filter_operators = 6\nmax_filter_bytes = 300\n")
            .await;
    let mut ws = server.ws().await;
    let mut deep = json!({"a": 1});
    for _ in 0..5 {
        deep = json!({"not": deep});
    }
    let many: serde_json::Map<String, Value> =
        (0..8).map(|i| (format!("f{i}"), json!(i))).collect();
    let cases = [
        (json!(5), "JSON object"),
        (json!("price > 5"), "JSON object"),
        (json!([{"a": 1}]), "JSON object"),
        (json!({"a": {"gt": [1]}}), "`gt` needs a number or a string"),
        (
            json!({"a": {"gt": null}}),
            "`gt` needs a number or a string",
        ),
        (json!({"a": {"in": "x"}}), "`in` takes a list"),
        (json!({"a": {"in": [1, 2, 3, 4, 5]}}), "at most 4"),
        (json!({"a": {"between": [3]}}), "between"),
        (json!({"a": {"exists": 1}}), "exists"),
        (json!({"a": {"prefix": 1}}), "prefix"),
        (json!({"a": {"lt": 1, "b": 2}}), "mixed"),
        (json!({"a.": 1}), "field path"),
        (json!({"and": {"a": 1}}), "`and` takes a list"),
        (json!({"or": []}), "at least one"),
        (deep, "deeper than 3"),
        (Value::Object(many), "more than 6 operators"),
        (json!({"a": "x".repeat(400)}), "at most 300"),
    ];
    for (filter, says) in &cases {
        ws.send(json!({"type": "subscribe", "id": 9, "topic": "one", "filter": filter}))
            .await;
        let err = ws.json().await;
        assert_eq!(err["type"], "error", "{filter}");
        assert_eq!(err["code"], "bad_filter", "{filter}: {err}");
        assert_eq!(err["id"], 9);
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(says), "{filter}: {message}");
        // SSE: 400 with the same code and message.
        let r = server
            .http
            .get(server.url(&format!("/sse?topic=one&filter={}", enc(filter))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{filter}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_filter");
        assert_eq!(body["message"], message);
    }
    // SSE: a filter that is not JSON at all.
    let r = server.sse("topic=one&filter=%7Bprice", None).await;
    assert_eq!(r.status, 400);
    // Nesting past the JSON parser's own depth: refused, nothing panics.
    let abyss = format!("{}1{}", "{\"not\":".repeat(300), "}".repeat(300));
    ws.send_raw(&format!(
        "{{\"type\":\"subscribe\",\"topic\":\"one\",\"filter\":{abyss}}}"
    ))
    .await;
    assert_eq!(ws.json().await["type"], "error");
    let r = server
        .http
        .get(server.url(&format!(
            "/sse?topic=one&filter={}",
            form_urlencoded::byte_serialize(abyss.as_bytes()).collect::<String>()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // The connection still works, with a filter within the limits.
    ws.subscribe(json!({"topic": "one", "filter": {"a": {"in": [1, 2]}}, "snapshot": false}))
        .await;
    server.publish("one", "k", json!({"a": 3})).await;
    server.publish("one", "k", json!({"a": 2})).await;
    let got = ws_drain(&mut ws).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"]["a"], 2);
    server.stop().await;
}

/// (key, op) of each record; `op` is "" when absent. Leave records must carry no value.
fn ops(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            let op = r["op"].as_str().unwrap_or("").to_owned();
            if op == "leave" {
                assert!(r.get("data").is_none() && r.get("patch").is_none(), "{r}");
                assert!(r["cursor"].is_string() && r["offset"].is_u64(), "{r}");
            } else {
                assert!(r.get("data").is_some(), "{r}");
            }
            (r["key"].as_str().unwrap().to_owned(), op)
        })
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, o)| ((*k).to_owned(), (*o).to_owned()))
        .collect()
}

#[tokio::test]
async fn enter_and_leave_live_in_snapshots_and_on_resume() {
    let server = TestServer::start().await;
    let filter = json!({"status": "open"});
    server.publish("one", "o1", json!({"status": "open"})).await;
    server
        .publish("one", "o2", json!({"status": "closed"}))
        .await;
    let mut ws = server.ws().await;
    let reply = ws
        .subscribe(json!({"topic": "one", "filter": filter}))
        .await;
    let start = reply["cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        keys(&ws.records(1).await),
        set(&["o1"]),
        "snapshot: matching keys only"
    );
    let mut sse = server
        .sse(
            &format!("topic=one&snapshot=false&filter={}", enc(&filter)),
            None,
        )
        .await;
    assert_eq!(sse.next().await.event, "subscribed");
    let mut plain = server.ws().await;
    plain
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;

    for (key, data) in [
        ("o2", json!({"status": "open"})),           // enter
        ("o1", json!({"status": "closed"})),         // leave
        ("o1", json!({"status": "closed", "n": 1})), // still out: nothing
        ("o3", json!({"status": "open"})),           // a key never seen: no op
        ("o3", json!({"status": "open", "n": 2})),   // still in: no op
        ("o4", json!({"status": "closed"})),         // never in: nothing
        ("o1", json!({"status": "open"})),           // enter again
        ("o3", Value::Null),                         // delete of a matching key
        ("o2", json!({"n": 3})),                     // status gone: leave
    ] {
        server.publish("one", key, data).await;
    }
    let want = pairs(&[
        ("o2", "enter"),
        ("o1", "leave"),
        ("o3", ""),
        ("o3", ""),
        ("o1", "enter"),
        ("o3", "delete"),
        ("o2", "leave"),
    ]);
    let live = ws_drain(&mut ws).await;
    assert_eq!(ops(&live), want, "websocket");
    assert_eq!(
        live[0]["data"],
        json!({"status": "open"}),
        "enter carries whole data"
    );
    assert_eq!(live[5]["data"], Value::Null);
    assert_eq!(live[5]["tombstone"], true);
    assert_eq!(ops(&sse_drain(&mut sse).await), want, "sse");
    // Subscribers without a filter see no `op` on ordinary records.
    let all = ws_drain(&mut plain).await;
    assert_eq!(all.len(), 9);
    assert!(all
        .iter()
        .filter(|r| r["data"].is_object())
        .all(|r| r.get("op").is_none()));

    // Resuming from before all that (the ring) replays the same decisions:
    // the ring's older records tell what o1 and o2 were.
    let mut again = server.ws().await;
    again
        .subscribe(json!({"topic": "one", "filter": filter, "cursor": start}))
        .await;
    assert_eq!(ops(&ws_drain(&mut again).await), want, "ring replay");
    assert_eq!(again.lives[0]["replayed"], 7);
    let mut sse = server
        .sse(
            &format!("topic=one&cursor={start}&filter={}", enc(&filter)),
            None,
        )
        .await;
    assert_eq!(sse.next().await.event, "subscribed");
    assert_eq!(ops(&sse_drain(&mut sse).await), want, "sse ring replay");

    // A new snapshot lists only the keys now matching: o1.
    let mut fresh = server.ws().await;
    let reply = fresh
        .subscribe(json!({"topic": "one", "filter": filter}))
        .await;
    assert_eq!(reply["snapshot"], 1);
    let snap = fresh.records(1).await;
    assert_eq!(snap[0]["key"], "o1");
    assert!(snap[0].get("op").is_none());
    server.stop().await;
}

#[tokio::test]
async fn enter_and_leave_on_a_resume_from_the_log() {
    let server = TestServer::start().await;
    let filter = json!({"status": "open"});
    let first = server
        .publish("small", "a", json!({"status": "open"}))
        .await;
    let epoch = Cursor::decode(first["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    for (key, status) in [
        ("b", "closed"),
        ("a", "closed"),
        ("b", "open"),
        ("c", "closed"),
        ("c", "closed"),
        ("c", "closed"),
        ("c", "closed"),
        ("a", "open"),
    ] {
        server
            .publish("small", key, json!({"status": status}))
            .await;
    }
    // Offset 0 is older than the ring of 5: read back from the log.
    let zero = Cursor::new(epoch, vec![0]).encode();
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "filter": filter, "cursor": zero}))
        .await;
    assert_eq!(
        ops(&ws_drain(&mut ws).await),
        pairs(&[("a", ""), ("a", "leave"), ("b", "enter"), ("a", "enter")]),
        "b was first closed (not sent), then entered"
    );
    // From offset 2 on (still the log), a's first replayed value (closed) is
    // out of the filter and nothing before it is read: no leave can be told;
    // its next value enters.
    let three = Cursor::new(epoch, vec![2]).encode();
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "filter": filter, "cursor": three}))
        .await;
    assert_eq!(
        ops(&ws_drain(&mut ws).await),
        pairs(&[("b", ""), ("a", "enter")])
    );
    server.stop().await;
}

#[tokio::test]
async fn fields_project_data_everywhere_and_filters_may_use_other_fields() {
    let server = TestServer::start().await;
    let quote = |price: f64, sector: &str| json!({"price": price, "change": 0.5, "sector": sector, "meta": {"ts": 7, "src": "feed"}});
    server.publish("one", "A", quote(10.0, "tech")).await;
    server.publish("one", "B", quote(20.0, "energy")).await;
    // `sector` filters but is not projected.
    let spec =
        json!({"topic": "one", "fields": ["price", "meta.ts"], "filter": {"sector": "tech"}});
    let mut ws = server.ws().await;
    let reply = ws.subscribe(spec.clone()).await;
    let start = reply["cursor"].as_str().unwrap().to_owned();
    let snap = ws.records(1).await;
    assert_eq!(snap[0]["data"], json!({"price": 10.0, "meta": {"ts": 7}}));
    assert_eq!(snap[0]["snapshot"], true);
    let mut sse = server
        .sse(
            &format!(
                "topic=one&snapshot=false&field=price&field=meta.ts&filter={}",
                enc(&json!({"sector": "tech"}))
            ),
            None,
        )
        .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next().await.event, "subscribed");
    let mut only_fields = server.ws().await;
    only_fields
        .subscribe(json!({"topic": "one", "fields": ["nothing.here"], "snapshot": false}))
        .await;

    server.publish("one", "B", quote(21.0, "tech")).await; // enter
    server
        .publish("one", "A", json!({"price": 11.0, "sector": "tech"}))
        .await; // no meta
    server.publish("one", "A", json!({"sector": "tech"})).await; // none of the fields
    server.publish("one", "A", quote(12.0, "energy")).await; // leave
    let want_ops = pairs(&[("B", "enter"), ("A", ""), ("A", ""), ("A", "leave")]);
    let want_data = [
        json!({"price": 21.0, "meta": {"ts": 7}}),
        json!({"price": 11.0}),
        json!({}),
    ];
    let live = ws_drain(&mut ws).await;
    assert_eq!(ops(&live), want_ops);
    for (r, want) in live.iter().zip(&want_data) {
        assert_eq!(r["data"], *want);
    }
    let over_sse = sse_drain(&mut sse).await;
    assert_eq!(over_sse, live, "the same bytes over SSE");
    let empty = ws_drain(&mut only_fields).await;
    assert_eq!(empty.len(), 4);
    assert!(empty.iter().all(|r| r["data"] == json!({})));

    // Resume from the start (ring): projected and filtered the same way.
    let mut again = server.ws().await;
    let mut resume = spec.clone();
    resume["cursor"] = json!(start);
    again.subscribe(resume).await;
    let replayed = ws_drain(&mut again).await;
    assert_eq!(ops(&replayed), want_ops);
    for (r, want) in replayed.iter().zip(&want_data) {
        assert_eq!(r["data"], *want);
    }

    // Bad lists: bad_message, the connection stays; SSE 400.
    for bad in [
        json!([]),
        json!(["a..b"]),
        json!([""]),
        json!("price"),
        json!([1]),
    ] {
        ws.send(json!({"type": "subscribe", "id": "x", "topic": "t", "fields": bad}))
            .await;
        let err = ws.json().await;
        assert_eq!(err["code"], "bad_message", "{bad}: {err}");
    }
    let r = server.sse("topic=one&field=a..b", None).await;
    assert_eq!(r.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn max_rate_conflates_per_key_keeps_the_latest_and_cursors_exact() {
    let server = TestServer::start().await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "snapshot": false, "max_rate": 4}))
        .await;
    let mut sse = server
        .sse("topic=one&snapshot=false&max_rate=4", None)
        .await;
    assert_eq!(sse.next().await.event, "subscribed");
    let mut plain = server.ws().await;
    plain
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;

    // 100 updates of one key over about half a second, read as they come.
    let started = std::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut arrivals = Vec::new();
        let mut got = Vec::new();
        while let Some(WsEvent::Json(v)) = ws.event_within(Duration::from_millis(800)).await {
            arrivals.push(started.elapsed());
            got.push(v);
        }
        (ws, arrivals, got)
    });
    for burst in 0..10u64 {
        let batch: Vec<(String, Value)> = (0..10)
            .map(|i| ("hot".to_owned(), json!({"seq": burst * 10 + i})))
            .collect();
        server.publish_batch("one", &batch).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ws, arrivals, got) = reader.await.unwrap();
    let seqs: Vec<u64> = got.iter().map(seq).collect();
    assert_eq!(
        *seqs.last().unwrap(),
        99,
        "the latest value always arrives: {seqs:?}"
    );
    assert!(seqs.len() >= 2 && seqs.len() <= 6, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    for gap in arrivals.windows(2) {
        assert!(
            gap[1] - gap[0] >= Duration::from_millis(200),
            "at most 4 a second: {arrivals:?}"
        );
    }
    let over_sse: Vec<u64> = sse_drain(&mut sse).await.iter().map(seq).collect();
    assert_eq!(*over_sse.last().unwrap(), 99);
    assert!(over_sse.len() <= 6, "{over_sse:?}");
    assert_eq!(
        ws_drain(&mut plain).await.len(),
        100,
        "others get everything"
    );

    // The last record's cursor covers all that was conflated away.
    let last = got.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut resumed = server.ws().await;
    resumed
        .subscribe(json!({"topic": "one", "cursor": last}))
        .await;
    assert!(ws_drain(&mut resumed).await.is_empty());
    assert_eq!(resumed.lives[0]["replayed"], 0);

    // While a value waits, other keys' cursors stay below it: a resume from
    // them gets the waiting value, never skips it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.publish("one", "hot", json!({"seq": 1000})).await; // sent at once
    let waiting = server.publish("one", "hot", json!({"seq": 1001})).await; // waits
    server.publish("one", "cold", json!({"seq": 2000})).await; // sent at once
    let first = ws.records(2).await;
    assert_eq!(seq(&first[0]), 1000);
    assert_eq!(seq(&first[1]), 2000);
    let cold_cursor = Cursor::decode(first[1]["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(
        cold_cursor.offsets[0],
        waiting["offset"].as_u64().unwrap(),
        "capped below the waiting record"
    );
    let mut from_cold = server.ws().await;
    from_cold
        .subscribe(json!({"topic": "one", "cursor": first[1]["cursor"]}))
        .await;
    let replay: Vec<u64> = ws_drain(&mut from_cold).await.iter().map(seq).collect();
    assert_eq!(replay, vec![1001, 2000]);
    // And the waiting value arrives when due.
    let later = ws.records(1).await;
    assert_eq!(seq(&later[0]), 1001);

    // Bad rates: bad_message, the connection stays; SSE 400.
    for bad in [json!(0), json!(-1), json!("4"), json!(1e9), json!([4])] {
        ws.send(json!({"type": "subscribe", "id": "r", "topic": "t", "max_rate": bad}))
            .await;
        let err = ws.json().await;
        assert_eq!(err["code"], "bad_message", "{bad}: {err}");
    }
    assert_eq!(
        server.sse("topic=one&max_rate=fast", None).await.status,
        400
    );
    assert_eq!(server.sse("topic=one&max_rate=0", None).await.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn resume_latest_sends_each_keys_latest_missed_record_in_offset_order() {
    let server = TestServer::start().await;
    let first = server.publish("one", "k0", json!({"seq": 0})).await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    // Missed: 30 records over 5 keys; the last of each key is 25..29.
    let batch: Vec<(String, Value)> = (1..=30u64)
        .map(|n| (format!("k{}", n % 5), json!({"seq": n})))
        .collect();
    server.publish_batch("one", &batch).await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "one", "cursor": cursor, "resume": "latest"}))
        .await;
    let got = ws_drain(&mut ws).await;
    assert_eq!(
        got.iter().map(seq).collect::<Vec<_>>(),
        vec![26, 27, 28, 29, 30]
    );
    assert_eq!(ws.lives[0]["replayed"], 5);
    assert_eq!(ws.lives[0]["compacted"], 25);
    // The last one's cursor covers the whole range: nothing more to replay.
    let end = got.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut again = server.ws().await;
    again
        .subscribe(json!({"topic": "one", "cursor": end, "resume": "latest"}))
        .await;
    assert!(ws_drain(&mut again).await.is_empty());
    assert_eq!(again.lives[0]["compacted"], 0);
    // SSE, with keys and a projection on top.
    let mut sse = server
        .sse(
            &format!("topic=one&cursor={cursor}&resume=latest&key=k1&key=k2&field=seq"),
            None,
        )
        .await;
    assert_eq!(sse.next().await.event, "subscribed");
    let over_sse = sse_drain(&mut sse).await;
    assert_eq!(over_sse.iter().map(seq).collect::<Vec<_>>(), vec![26, 27]);
    assert_eq!(sse.lives[0]["replayed"], 2);
    assert_eq!(sse.lives[0]["compacted"], 10);
    // `all` (the default) is unchanged, and says nothing of compaction.
    let mut all = server.ws().await;
    all.subscribe(json!({"topic": "one", "cursor": cursor, "resume": "all"}))
        .await;
    assert_eq!(ws_drain(&mut all).await.len(), 30);
    assert!(all.lives[0].get("compacted").is_none());
    // With a filter: the latest of each key, then the filter (k0's latest, 30, is even).
    let mut filtered = server.ws().await;
    filtered
        .subscribe(json!({"topic": "one", "cursor": cursor, "resume": "latest", "filter": {"seq": {"in": [26, 28, 30]}}}))
        .await;
    assert_eq!(
        ws_drain(&mut filtered)
            .await
            .iter()
            .map(seq)
            .collect::<Vec<_>>(),
        vec![26, 28, 30]
    );
    // Bad modes: bad_message; SSE 400.
    for bad in [json!("some"), json!(true), json!("LATEST")] {
        ws.send(json!({"type": "subscribe", "id": "z", "topic": "t", "resume": bad}))
            .await;
        assert_eq!(ws.json().await["code"], "bad_message", "{bad}");
    }
    assert_eq!(server.sse("topic=one&resume=most", None).await.status, 400);
    server.stop().await;
}

#[tokio::test]
async fn resume_latest_from_the_log_beyond_the_ring() {
    let server = TestServer::start().await;
    let first = server.publish("small", "a", json!({"seq": 0})).await;
    let epoch = Cursor::decode(first["cursor"].as_str().unwrap())
        .unwrap()
        .epoch;
    let batch: Vec<(String, Value)> = (1..9u64)
        .map(|n| {
            (
                ["a", "b", "c"][n as usize % 3].to_owned(),
                json!({"seq": n}),
            )
        })
        .collect();
    server.publish_batch("small", &batch).await;
    // Offset 0 is older than the ring of 5: compacted from the log.
    let zero = Cursor::new(epoch, vec![0]).encode();
    let mut ws = server.ws().await;
    ws.subscribe(json!({"topic": "small", "cursor": zero, "resume": "latest"}))
        .await;
    assert_eq!(
        ws_drain(&mut ws).await.iter().map(seq).collect::<Vec<_>>(),
        vec![6, 7, 8]
    );
    assert_eq!(ws.lives[0]["replayed"], 3);
    assert_eq!(ws.lives[0]["compacted"], 6);
    server.stop().await;
}
