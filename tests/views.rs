//! `GET /topics/{topic}/view`: a topic's view by page, against the real gateway.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, WAIT};
use pushgate::cursor::Cursor;
use serde_json::{json, Value};

/// A gateway whose publish rate limit does not get in the way of seeding thousands of keys.
async fn start() -> TestServer {
    TestServer::start_with("[limits]\npublish_rate = 100000.0\npublish_burst = 100000.0\n").await
}

/// One page: status and body.
async fn view(server: &TestServer, topic: &str, query: &str) -> (u16, Value) {
    let r = server
        .http
        .get(server.url(&format!("/topics/{topic}/view?{query}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn keys_of(page: &Value) -> Vec<String> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_2500_keys_gives_every_key_once_in_order() {
    let server = start().await;
    common::publish_keys(&server, "t", 2500).await;
    // The latest value of a key is the one a page shows.
    server
        .publish("t", "k00007", json!({"n": 7, "updated": true}))
        .await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &after {
            Some(key) => format!("limit=1000&after={key}"),
            None => "limit=1000".to_owned(),
        };
        let (status, page) = view(&server, "t", &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for record in page["records"].as_array().unwrap() {
            common::check_message("Record", record);
            assert_eq!(record["snapshot"], true);
            assert_eq!(
                record["cursor"], page["cursor"],
                "records carry the page's cursor"
            );
        }
        let keys = keys_of(&page);
        assert!(keys.len() <= 1000);
        seen.extend(keys.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(
                    Some(next),
                    keys.last().map(String::as_str),
                    "next is the page's last key"
                );
                after = Some(next.to_owned());
            }
            None => break,
        }
        assert!(pages < 10, "paging never ends");
    }
    assert_eq!(pages, 3, "2500 keys in pages of 1000");
    let expected: Vec<String> = (0..2500).map(|i| format!("k{i:05}")).collect();
    assert_eq!(seen, expected, "every key once, in key order");

    // The default page is 100 keys; the latest value wins.
    let (status, page) = view(&server, "t", "").await;
    assert_eq!(status, 200);
    assert_eq!(keys_of(&page).len(), 100);
    assert_eq!(page["next"], "k00099");
    assert_eq!(page["records"][7]["data"], json!({"n": 7, "updated": true}));
    // The last page exactly full: nothing follows, so no `next`.
    let (_, page) = view(&server, "t", "after=k01499&limit=1000").await;
    assert_eq!(keys_of(&page).len(), 1000);
    assert_eq!(page["next"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_filter_and_fields_shape_a_page() {
    let server = start().await;
    common::publish_keys(&server, "t", 300).await;
    server
        .publish("t", "other", json!({"n": 1, "even": false}))
        .await;

    let (status, page) = view(&server, "t", "key=k00003&key=k00001&key=nope").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(keys_of(&page), ["k00001", "k00003"]);

    let (_, page) = view(&server, "t", "prefix=k001&limit=1000").await;
    let keys = keys_of(&page);
    assert_eq!(keys.len(), 100);
    assert!(keys.iter().all(|k| k.starts_with("k001")), "{keys:?}");

    let filter = urlencode(&json!({"even": true}).to_string());
    let (status, page) = view(&server, "t", &format!("filter={filter}&field=n&limit=10")).await;
    assert_eq!(status, 200, "{page}");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 10);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            record["data"],
            json!({"n": i * 2}),
            "filtered and projected: {record}"
        );
    }
    assert_eq!(page["next"], "k00018");
    // Paging on with the filter starts after the last key it gave.
    let (_, page) = view(
        &server,
        "t",
        &format!("filter={filter}&fields=n&limit=2&after=k00018"),
    )
    .await;
    assert_eq!(keys_of(&page), ["k00020", "k00022"]);

    // The filter applies before the limit: a page past the filtered keys is empty.
    let (_, page) = view(&server, "t", &format!("filter={filter}&after=k00298")).await;
    assert_eq!(keys_of(&page), Vec::<String>::new());
    assert_eq!(page["next"], Value::Null);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_refused_with_400_and_unknown_topics_with_404() {
    let server = start().await;
    server.publish("t", "a", json!(1)).await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=many",
        "filter=%7Bnot-json",
        "filter=%5B1%5D",
        "prefix=",
        "cursor=abc",
        "snapshot=false",
        "delta=json-patch",
        "max_rate=5",
        "resume=latest",
    ] {
        let (status, body) = view(&server, "t", query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{query}: {body}"
        );
    }
    let long = "x".repeat(2000);
    let (status, _) = view(&server, "t", &format!("after={long}")).await;
    assert_eq!(status, 400, "`after` longer than any key");
    let (status, body) = view(&server, "nope", "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "unknown_topic");
    server.stop().await;
}

/// A page needs what subscribing needs: a token (anonymous off), grants
/// covering every key it could hold, and a grant's filter is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_needs_what_a_subscription_needs() {
    let server = TestServer::start_with(common::HMAC_AUTH).await;
    common::publish_keys(&server, "t", 20).await;
    common::publish_keys(&server, "one", 3).await;
    server.publish("one", "other", json!(1)).await;
    let (status, body) = view(&server, "t", "").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");

    let granted = common::subscribe_token(
        "viewer",
        json!(["one:k*", {"topic": "t", "filter": {"even": true}}]),
    );
    let get = |topic: &str, query: &str| {
        server
            .http
            .get(server.url(&format!("/topics/{topic}/view?{query}")))
            .bearer_auth(&granted)
            .send()
    };
    let r = get("one", "").await.unwrap();
    assert_eq!(r.status(), 403, "keys beyond the grant");
    let r = get("one", "prefix=k").await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(keys_of(&page), ["k00000", "k00001", "k00002"]);
    // The token's filter holds: only even values, from the query's token too.
    let r = server
        .http
        .get(server.url(&format!("/topics/t/view?access_token={granted}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let keys = keys_of(&page);
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert!(page["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["data"]["even"] == true));
    server.stop().await;
}

/// The page loader and a WebSocket subscription resumed from the page's
/// cursor, while records are written: together exactly the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_a_subscription_from_its_cursor_meet_exactly_under_writes() {
    let server = start().await;
    const KEYS: usize = 150;
    const WRITES: usize = 900;
    // (partition, offset) -> (key, seq) for every record written.
    let mut log: BTreeMap<(u64, u64), (String, u64)> = BTreeMap::new();
    let seed: Vec<(String, Value)> = (0..KEYS)
        .map(|k| (format!("k{k:03}"), json!({"seq": k})))
        .collect();
    let answer = server.publish_batch("t", &seed).await;
    for (i, r) in answer["records"].as_array().unwrap().iter().enumerate() {
        log.insert(offset_of(r), (seed[i].0.clone(), i as u64));
    }

    let http = server.http.clone();
    let addr = server.addr;
    let landed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&landed);
    let writer = tokio::spawn(async move {
        let mut written = Vec::new();
        for i in KEYS..KEYS + WRITES {
            let key = format!("k{:03}", i % KEYS);
            let r = common::publish(&http, addr, "t", &key, json!({"seq": i})).await;
            written.push((offset_of(&r), (key, i as u64)));
            counter.fetch_add(1, Ordering::Relaxed);
        }
        written
    });
    // Let some writes land (however slow the machine), then take the page in
    // the middle of them.
    tokio::time::timeout(WAIT, async {
        while landed.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the writer's first records landed");
    let (status, page) = view(&server, "t", "limit=1000").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["next"], Value::Null);
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t", "cursor": cursor})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let written = writer.await.unwrap();
    assert!(written.len() == WRITES, "the writer finished");
    log.extend(written);

    let position = Cursor::decode(&cursor).unwrap();
    let after: Vec<_> = log
        .iter()
        .filter(|((p, o), _)| *o >= position.offset(*p as usize))
        .collect();
    let before_count = log.len() - after.len();
    assert!(
        before_count > KEYS,
        "the page was taken after some writes ({before_count})"
    );
    assert!(!after.is_empty(), "and before the last ones");

    // The page: each key's latest record before the position.
    let mut expected_page: HashMap<String, u64> = HashMap::new();
    for ((p, o), (key, seq)) in &log {
        if *o < position.offset(*p as usize) {
            expected_page.insert(key.clone(), *seq);
        }
    }
    let page_values: HashMap<String, u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["key"].as_str().unwrap().to_owned(), common::seq(r)))
        .collect();
    assert_eq!(page_values.len(), KEYS);
    assert_eq!(
        page_values, expected_page,
        "the page is the view at its cursor"
    );

    // The subscription: every record after the position, once, in order per partition.
    let received = tokio::time::timeout(WAIT, ws.records(after.len()))
        .await
        .expect("all records after the page");
    let mut got = HashSet::new();
    for r in &received {
        assert_ne!(r["snapshot"], true, "a resume sends no snapshot");
        let at = offset_of(r);
        assert!(got.insert(at), "duplicate {at:?}");
        assert!(
            at.1 >= position.offset(at.0 as usize),
            "{at:?} is before the page's position"
        );
        assert_eq!(log[&at].1, common::seq(r));
    }
    let want: HashSet<(u64, u64)> = after.iter().map(|(at, _)| **at).collect();
    assert_eq!(got, want, "no gap");
    ws.expect_silence(Duration::from_millis(200)).await;
    server.stop().await;
}

fn offset_of(record: &Value) -> (u64, u64) {
    (
        record["partition"].as_u64().unwrap(),
        record["offset"].as_u64().unwrap(),
    )
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Page by page (an odd page size) the view is exactly the snapshot a
/// subscription streams at the same position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_match_the_streamed_snapshot() {
    let server = start().await;
    common::publish_keys(&server, "t", 700).await;
    for i in (0..700).step_by(7) {
        server
            .publish("t", &format!("k{i:05}"), json!({"n": i, "again": true}))
            .await;
    }
    let mut paged: BTreeMap<String, Value> = BTreeMap::new();
    let mut after = String::new();
    let cursor = loop {
        let query = if after.is_empty() {
            "limit=97".to_owned()
        } else {
            format!("limit=97&after={after}")
        };
        let (status, page) = view(&server, "t", &query).await;
        assert_eq!(status, 200, "{page}");
        for r in page["records"].as_array().unwrap() {
            let key = r["key"].as_str().unwrap().to_owned();
            assert!(paged
                .insert(key, json!([r["partition"], r["offset"], r["data"]]))
                .is_none());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break page["cursor"].clone(),
        }
    };
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t"})).await;
    assert_eq!(
        subscribed["cursor"], cursor,
        "nothing was written in between: the same position"
    );
    let n = subscribed["snapshot"].as_u64().unwrap() as usize;
    let streamed: BTreeMap<String, Value> = ws
        .records(n)
        .await
        .into_iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_owned(),
                json!([r["partition"], r["offset"], r["data"]]),
            )
        })
        .collect();
    assert_eq!(paged.len(), 700);
    assert_eq!(paged, streamed);

    // A prefix with `after` inside it, and one before it.
    let (_, page) = view(&server, "t", "prefix=k003&after=k00349&limit=30").await;
    let keys = keys_of(&page);
    assert_eq!(keys.first().map(String::as_str), Some("k00350"));
    assert_eq!(keys.len(), 30);
    assert_eq!(page["next"], "k00379");
    let (_, page) = view(&server, "t", "prefix=k0069&after=a&limit=1000").await;
    assert_eq!(keys_of(&page).len(), 10);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = view(&server, "t", "prefix=k0069&after=k00699").await;
    assert!(keys_of(&page).is_empty());
    server.stop().await;
}
