//! The real binary: restart on the same data dir, SIGTERM drain, and the no-config demo.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn publish_n(http: &reqwest::Client, addr: std::net::SocketAddr, from: u64, n: u64) {
    for seq in from..from + n {
        publish(
            http,
            addr,
            "t",
            &format!("k{}", seq % 5),
            json!({"seq": seq}),
        )
        .await;
    }
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1012_and_ends_sse_then_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_toml(&data, "");
    let http = reqwest::Client::new();

    let mut node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "t", "snapshot": false})).await;
    let mut sse = SseClient::connect(&http, node.addr, "topic=t&snapshot=false", None).await;
    sse.next().await; // subscribed
    publish_n(&http, node.addr, 0, 20).await;
    let seen = ws.records(20).await;
    let early_cursor = seen[4]["cursor"].as_str().unwrap().to_owned(); // after 5 records
    let last_cursor = seen[19]["cursor"].as_str().unwrap().to_owned();
    let sse_seen = sse.records(20).await;
    let sse_last_id = sse_seen[19].id.clone().unwrap();

    node.sigterm();
    assert_eq!(
        ws.close_code().await,
        Some(1012),
        "drain closes WebSockets with 1012"
    );
    assert!(
        sse.wait_end(Duration::from_secs(10)).await,
        "SSE stream ends on drain"
    );
    assert!(sse.retry_lines >= 1, "SSE ends with a retry line");
    assert_eq!(node.wait(Duration::from_secs(10)).await, Some(0));

    // Same data dir, new process: everything acknowledged is still there.
    let node = Process::start(dir.path(), &config, "127.0.0.1:0").await;
    publish_n(&http, node.addr, 20, 30).await;

    let mut ws = WsClient::connect(node.addr).await;
    let reply = ws
        .subscribe(json!({"topic": "t", "cursor": last_cursor}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let mut got: Vec<u64> = ws.records(30).await.iter().map(seq).collect();
    got.sort();
    assert_eq!(
        got,
        (20..50).collect::<Vec<_>>(),
        "exactly the missed records"
    );
    ws.expect_silence(Duration::from_millis(300)).await;

    let mut from_early = WsClient::connect(node.addr).await;
    from_early
        .subscribe(json!({"topic": "t", "cursor": early_cursor}))
        .await;
    let mut got: Vec<u64> = from_early.records(45).await.iter().map(seq).collect();
    got.sort();
    assert_eq!(
        got,
        (5..50).collect::<Vec<_>>(),
        "records from before the restart replay too"
    );

    let mut sse = SseClient::connect(&http, node.addr, "topic=t", Some(&sse_last_id)).await;
    assert_eq!(sse.next().await.json()["recovered"], true);
    let mut got: Vec<u64> = sse
        .records(30)
        .await
        .iter()
        .map(|e| seq(&e.json()))
        .collect();
    got.sort();
    assert_eq!(got, (20..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn no_config_runs_the_demo_with_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let mut node = Process::spawn(&["--listen", "127.0.0.1:0", "--data-dir", &data]).await;
    let http = reqwest::Client::new();
    let page = http
        .get(format!("http://{}/", node.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html"));
    // The ticker publishes to `prices` on its own.
    let mut sse = SseClient::connect(&http, node.addr, "topic=prices&snapshot=false", None).await;
    sse.next().await;
    let rec = sse.next().await.json();
    assert_eq!(rec["topic"], "prices");
    assert!(rec["data"]["price"].as_f64().unwrap() > 0.0);
    assert_eq!(rec["key"], rec["data"]["symbol"]);
    node.sigterm();
    assert_eq!(node.wait(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn invalid_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[limits]\nqueue_bytes = -1\n[[topics]]\nname = \"a\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue_bytes"), "{stderr}");
}
