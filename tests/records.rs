//! `GET /topics/{topic}/records`: catch-up over plain HTTP, against the real gateway and its embedded log.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TestServer, WAIT};
use pushgate::cursor::Cursor;
use reqwest::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use serde_json::{json, Value};

/// A gateway whose publish rate limit does not get in the way of seeding thousands of records.
async fn start() -> TestServer {
    TestServer::start_with("[limits]\npublish_rate = 100000.0\npublish_burst = 100000.0\n").await
}

/// One answer: status, its headers, and its body (`Null` when it has none).
struct Answer {
    status: u16,
    etag: String,
    cache: String,
    body: Value,
}

async fn records_with(
    server: &TestServer,
    topic: &str,
    query: &str,
    prepare: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Answer {
    let request = server
        .http
        .get(server.url(&format!("/topics/{topic}/records?{query}")));
    let r = prepare(request).send().await.unwrap();
    let header = |name| {
        r.headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (status, etag, cache) = (r.status().as_u16(), header(ETAG), header(CACHE_CONTROL));
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    Answer {
        status,
        etag,
        cache,
        body,
    }
}

async fn records(server: &TestServer, topic: &str, query: &str) -> Answer {
    records_with(server, topic, query, |r| r).await
}

fn at(record: &Value) -> (u64, u64) {
    (
        record["partition"].as_u64().unwrap(),
        record["offset"].as_u64().unwrap(),
    )
}

fn list(page: &Value) -> &Vec<Value> {
    page["records"].as_array().unwrap()
}

fn keys_of(page: &Value) -> Vec<String> {
    list(page)
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect()
}

fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Pages through everything after `cursor`: every record once, the final cursor, and the pages' sizes.
async fn page_through(
    server: &TestServer,
    topic: &str,
    cursor: &str,
    extra: &str,
) -> (Vec<Value>, String, Vec<usize>) {
    let mut cursor = cursor.to_owned();
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    loop {
        let a = records(server, topic, &format!("cursor={}{extra}", enc(&cursor))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let page = list(&a.body);
        for record in page {
            common::check_message("Record", record);
        }
        sizes.push(page.len());
        all.extend(page.iter().cloned());
        cursor = a.body["cursor"].as_str().unwrap().to_owned();
        if a.body["more"] == false {
            return (all, cursor, sizes);
        }
        assert!(sizes.len() < 50, "paging never ends: {sizes:?}");
    }
}

/// 2,500 records (ring of 8 per partition, so read back from the log) in
/// pages of 1,000: each once, none missing; then a WebSocket subscription
/// resumed from the last cursor continues with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_continue_exactly_and_a_websocket_resume_meets_them() {
    let server = start().await;
    // No cursor: the head, nothing to send.
    let head = records(&server, "t", "").await;
    assert_eq!(head.status, 200, "{}", head.body);
    assert_eq!(list(&head.body).len(), 0);
    assert_eq!(head.body["more"], false);
    assert_eq!(head.body["recovered"], true);
    let start_cursor = head.body["cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        Cursor::decode(&start_cursor).unwrap().offsets,
        vec![0, 0, 0]
    );
    common::publish_keys(&server, "t", 2500).await;
    let reads_before = catchup_reads(&server).await;

    let (got, end, sizes) = page_through(&server, "t", &start_cursor, "&limit=1000").await;
    assert_eq!(sizes, [1000, 1000, 500], "pages of 1000 then the rest");
    let mut seen = HashSet::new();
    for r in &got {
        assert!(seen.insert(at(r)), "duplicate {:?}", at(r));
        assert_ne!(r["snapshot"], true, "a page replays, it sends no snapshot");
    }
    let keys: HashSet<String> = got
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2500, "every record once");
    let end_offsets = Cursor::decode(&end).unwrap().offsets;
    assert_eq!(end_offsets.iter().sum::<u64>(), 2500, "{end_offsets:?}");
    // Within a partition, in offset order; a record's cursor covers it.
    for w in got.windows(2) {
        if w[0]["partition"] == w[1]["partition"] {
            assert!(at(&w[0]).1 < at(&w[1]).1);
        }
    }
    assert!(
        catchup_reads(&server).await > reads_before,
        "the log was read through the catch-up reads"
    );

    // The default page is 100.
    let a = records(&server, "t", &format!("cursor={}", enc(&start_cursor))).await;
    assert_eq!(list(&a.body).len(), 100);
    assert_eq!(a.body["more"], true);

    // At the head: nothing more, the same cursor.
    let a = records(&server, "t", &format!("cursor={}", enc(&end))).await;
    assert_eq!((list(&a.body).len(), &a.body["more"]), (0, &json!(false)));
    assert_eq!(a.body["cursor"], end.as_str());

    // A WebSocket resume from the last page's cursor: exactly what followed.
    let mut ws = server.ws().await;
    let subscribed = ws.subscribe(json!({"topic": "t", "cursor": end})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let more: Vec<(String, Value)> = (0..30)
        .map(|i| (format!("after{i}"), json!({"n": 10_000 + i})))
        .collect();
    server.publish_batch("t", &more).await;
    let live = tokio::time::timeout(WAIT, ws.records(30)).await.unwrap();
    for r in &live {
        assert!(!seen.contains(&at(r)), "{:?} came in a page already", at(r));
        assert!(r["data"]["n"].as_u64().unwrap() >= 10_000);
    }
    ws.expect_silence(Duration::from_millis(200)).await;
    // And a page from the same cursor gives the same 30.
    let a = records(&server, "t", &format!("cursor={}", enc(&end))).await;
    let paged: HashSet<_> = list(&a.body).iter().map(at).collect();
    let streamed: HashSet<_> = live.iter().map(at).collect();
    assert_eq!(paged, streamed);
    server.stop().await;
}

async fn catchup_reads(server: &TestServer) -> u64 {
    let text = server.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with("pushgate_catchup_reads_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A page below the head is cacheable and has a stable ETag; one at the
/// head is `no-cache`; `If-None-Match` answers 304.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_and_cache_control_below_and_at_the_head() {
    let server = start().await;
    let start_cursor = records(&server, "one", "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    common::publish_keys(&server, "one", 30).await;
    let query = format!("cursor={}&limit=10", enc(&start_cursor));
    let below = records(&server, "one", &query).await;
    assert_eq!(below.status, 200);
    assert_eq!(below.body["more"], true);
    assert_eq!(below.cache, "public, max-age=3600, immutable");
    assert!(below.etag.starts_with('"') && below.etag.ends_with('"'));
    // The same range, read again after more writes: the same tag.
    server.publish("one", "late", json!(1)).await;
    let again = records(&server, "one", &query).await;
    assert_eq!(again.etag, below.etag);
    assert_eq!(again.body, below.body);
    // Revalidation: 304, no body, the same headers.
    let tag = below.etag.clone();
    let not_modified =
        records_with(&server, "one", &query, |r| r.header(IF_NONE_MATCH, &tag)).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.body, Value::Null);
    assert_eq!(not_modified.etag, below.etag);
    let other = records_with(&server, "one", &query, |r| r.header(IF_NONE_MATCH, "\"x\"")).await;
    assert_eq!(other.status, 200);
    // Other parameters, another tag.
    let shaped = records(&server, "one", &format!("{query}&fields=n")).await;
    assert_ne!(shaped.etag, below.etag);

    // Up to the head: no-cache, and the tag moves when the head does.
    let rest = format!(
        "cursor={}&limit=1000",
        enc(below.body["cursor"].as_str().unwrap())
    );
    let head = records(&server, "one", &rest).await;
    assert_eq!(head.body["more"], false);
    assert_eq!(list(&head.body).len(), 21);
    assert_eq!(head.cache, "no-cache");
    let tag = head.etag.clone();
    let unchanged = records_with(&server, "one", &rest, |r| r.header(IF_NONE_MATCH, &tag)).await;
    assert_eq!(unchanged.status, 304, "nothing new at the head");
    server.publish("one", "newer", json!(2)).await;
    let changed = records_with(&server, "one", &rest, |r| r.header(IF_NONE_MATCH, &tag)).await;
    assert_eq!(changed.status, 200, "a new record: a new answer");
    assert_eq!(list(&changed.body).len(), 22);
    assert_ne!(changed.etag, tag);
    server.stop().await;
}

/// Keys, a prefix, a value filter and fields shape a page as they shape a
/// subscription, and the cursor moves past what a filter left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_filter_and_fields_shape_pages_and_the_cursor_passes_what_they_leave_out() {
    let server = start().await;
    let start_cursor = records(&server, "t", "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    common::publish_keys(&server, "t", 300).await;
    let from = format!("cursor={}", enc(&start_cursor));
    let (_, head, _) = page_through(&server, "t", &start_cursor, "&limit=1000").await;

    let a = records(&server, "t", &format!("{from}&key=k00007&key=k00100")).await;
    let mut keys = keys_of(&a.body);
    keys.sort();
    assert_eq!(keys, ["k00007", "k00100"]);
    assert_eq!(
        a.body["cursor"],
        head.as_str(),
        "the whole range is covered"
    );

    let a = records(&server, "t", &format!("{from}&prefix=k0001&limit=1000")).await;
    let mut keys = keys_of(&a.body);
    keys.sort();
    let want: Vec<String> = (10..20).map(|i| format!("k{i:05}")).collect();
    assert_eq!(keys, want);

    let a = records(&server, "t", &format!("{from}&fields=n&limit=5")).await;
    for r in list(&a.body) {
        assert_eq!(r["data"].as_object().unwrap().len(), 1, "{r}");
        assert!(r["data"]["n"].is_u64());
    }

    // A value filter in pages of 40: the 150 even records, each once.
    let filter = format!("&filter={}&limit=40", enc(r#"{"even": true}"#));
    let (got, end, sizes) = page_through(&server, "t", &start_cursor, &filter).await;
    assert_eq!(got.len(), 150, "{sizes:?}");
    assert!(got.iter().all(|r| r["data"]["even"] == true));
    let distinct: HashSet<_> = got.iter().map(at).collect();
    assert_eq!(distinct.len(), 150);
    assert_eq!(end, head, "the last page ends at the head");

    // A filter nothing passes: no records, and the cursor still reaches the head.
    let none = format!("{from}&filter={}", enc(r#"{"n": -1}"#));
    let a = records(&server, "t", &none).await;
    assert_eq!(list(&a.body).len(), 0);
    assert_eq!(a.body["more"], false);
    assert_eq!(a.body["cursor"], head.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_and_unknown_topics_404() {
    let server = start().await;
    server.publish("t", "a", json!(1)).await;
    for (query, code) in [
        ("cursor=abc", "bad_cursor"),
        ("cursor=", "bad_cursor"),
        ("limit=0", "bad_message"),
        ("limit=1001", "bad_message"),
        ("limit=ten", "bad_message"),
        ("snapshot=true", "bad_message"),
        ("resume=latest", "bad_message"),
        ("delta=json-patch", "bad_message"),
        ("max_rate=2", "bad_message"),
        ("filter=%7Bnot-json", "bad_filter"),
        ("prefix=", "bad_filter"),
    ] {
        let a = records(&server, "t", query).await;
        assert_eq!(a.status, 400, "{query}: {}", a.body);
        assert_eq!(a.body["error"], code, "{query}: {}", a.body);
        assert!(a.body["message"].is_string());
    }
    let a = records(&server, "nope", "").await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.body["error"], "unknown_topic");
    // A cursor of another topic is of another epoch: a gap, as on every transport.
    let other = records(&server, "one", "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = records(&server, "t", &format!("cursor={}", enc(&other))).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["recovered"], false);
    assert_eq!(a.body["gap"]["reason"], "epoch");
    server.stop().await;
}

/// A cursor older than retention: no records, `recovered: false` and the
/// `gap` a subscription would be told (reason and earliest retained cursor),
/// the cursor at the head; paging from `earliest` gives what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_gets_the_gap() {
    let server = start().await;
    let old = records(&server, "small", "").await.body["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for seq in 0..40 {
        server.publish("small", "x", json!({"seq": seq})).await;
    }
    // Retention keeps 10 of 40 and runs every 50 ms.
    let deadline = tokio::time::Instant::now() + WAIT;
    let a = loop {
        let a = records(&server, "small", &format!("cursor={}", enc(&old))).await;
        assert_eq!(a.status, 200, "{}", a.body);
        // Retention may have run part-way while the records were written.
        let earliest = a.body["gap"]["earliest"].as_str();
        if earliest.is_some_and(|e| Cursor::decode(e).unwrap().offsets == [30]) {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never kept just the last 10: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(list(&a.body).len(), 0);
    assert_eq!(a.body["more"], false);
    assert_eq!(a.body["gap"]["reason"], "retention");
    assert_eq!(a.cache, "no-cache");
    assert_eq!(a.body["recovered"], false);
    let earliest = a.body["gap"]["earliest"].as_str().unwrap();
    assert_eq!(
        Cursor::decode(a.body["cursor"].as_str().unwrap())
            .unwrap()
            .offsets,
        vec![40],
        "the cursor goes on from the head"
    );
    let left = records(&server, "small", &format!("cursor={}", enc(earliest))).await;
    let seqs: Vec<u64> = list(&left.body).iter().map(common::seq).collect();
    assert_eq!(seqs, (30..40).collect::<Vec<u64>>());
    server.stop().await;
}

/// With authentication on: 401 without a token, 403 beyond the grants, the
/// grant's filter enforced, and a page a token shaped is cached privately only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_what_a_subscription_needs() {
    let server = TestServer::start_with(common::HMAC_AUTH).await;
    let a = records(&server, "t", "").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.body["error"], "unauthorized");

    let granted = common::subscribe_token(
        "reader",
        json!(["one:k*", {"topic": "t", "filter": {"even": true}}]),
    );
    let get = |topic: &'static str, query: String| {
        let granted = granted.clone();
        let server = &server;
        async move { records_with(server, topic, &query, |r| r.bearer_auth(granted)).await }
    };
    let start_one = get("one", "prefix=k".into()).await;
    assert_eq!(start_one.status, 200, "{}", start_one.body);
    let start_t = get("t", String::new()).await;
    common::publish_keys(&server, "t", 20).await;
    common::publish_keys(&server, "one", 3).await;
    server.publish("one", "other", json!(1)).await;

    assert_eq!(
        get("one", String::new()).await.status,
        403,
        "keys beyond the grant"
    );
    let cursor = enc(start_one.body["cursor"].as_str().unwrap());
    let a = get("one", format!("prefix=k&cursor={cursor}&limit=2")).await;
    assert_eq!(a.status, 200);
    assert_eq!(keys_of(&a.body), ["k00000", "k00001"]);
    assert_eq!(a.cache, "private, max-age=3600, immutable");

    // The token's filter holds: only even values.
    let cursor = enc(start_t.body["cursor"].as_str().unwrap());
    let a = get("t", format!("cursor={cursor}")).await;
    assert_eq!(a.status, 200);
    assert_eq!(list(&a.body).len(), 10, "{}", a.body);
    assert!(list(&a.body).iter().all(|r| r["data"]["even"] == true));
    server.stop().await;
}
