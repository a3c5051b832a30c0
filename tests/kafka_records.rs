//! The Kafka-only members of a record, as clients receive them: a value that
//! is not JSON (`"encoding":"base64"`), a tombstone (`"tombstone":true`,
//! `data` null) and headers (a value that is not UTF-8 as `"base64:…"`, a
//! missing one as null), over WebSocket and SSE from Apache Kafka.
//! The harness checks each against api/schemas/messages.json; this test
//! checks the values.

mod common;
mod kafka_common;

use std::time::Duration;

use common::*;
use kafka_common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

#[tokio::test]
async fn binary_values_tombstones_and_headers_reach_clients_as_documented() {
    if !tiers(&["kafka"]) {
        return;
    }
    let broker = Broker::shared();
    broker.create_topic("raw", 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(
        dir.path(),
        &kafka_config(&broker.addr(), &[("raw", 64)], ""),
        "127.0.0.1:0",
    )
    .await;
    let http = reqwest::Client::new();
    let mut ws = WsClient::connect(node.addr).await;
    ws.subscribe(json!({"topic": "raw", "snapshot": false}))
        .await;
    let mut sse = SseClient::connect(&http, node.addr, "topic=raw&snapshot=false", None).await;
    assert_eq!(sse.next().await.event, "subscribed");

    // On the listener PUSHGATE_TEST_KAFKA_SECURITY picks, like pushgate.
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.addr())
        .set("message.timeout.ms", "10000");
    broker.mode.rdkafka(&mut config);
    let producer: FutureProducer = config.create().unwrap();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "text",
            value: Some("v"),
        })
        .insert(Header {
            key: "bin",
            value: Some(&[0xff_u8, 0x00][..]),
        })
        .insert(Header {
            key: "none",
            value: None::<&[u8]>,
        });
    let sends = [
        FutureRecord::to("raw")
            .key("bin")
            .payload(&[0xff_u8, 0x00, 0x01][..])
            .headers(headers),
        FutureRecord::<str, [u8]>::to("raw").key("gone"),
        FutureRecord::to("raw")
            .key("json")
            .payload(&b"{\"a\":1}"[..]),
    ];
    for record in sends {
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("produce");
    }

    let check = |records: &[Value]| {
        let [binary, tombstone, plain] = records else {
            panic!("three records: {records:?}")
        };
        assert_eq!(binary["key"], "bin");
        assert_eq!(binary["encoding"], "base64");
        assert_eq!(binary["data"], "/wAB", "standard base64 of ff 00 01");
        assert_eq!(
            binary["headers"],
            json!({"text": "v", "bin": "base64:/wA=", "none": null})
        );
        assert_eq!(tombstone["key"], "gone");
        assert_eq!(tombstone["tombstone"], true);
        assert_eq!(tombstone["data"], Value::Null);
        assert!(tombstone.get("encoding").is_none(), "{tombstone}");
        assert_eq!(plain["data"], json!({"a": 1}));
        assert!(plain.get("encoding").is_none() && plain.get("tombstone").is_none());
        assert!(
            plain.get("headers").is_none(),
            "no headers, no member: {plain}"
        );
    };
    check(&ws.records(3).await);
    let events = sse.records(3).await;
    check(&events.iter().map(SseEvent::json).collect::<Vec<_>>());
    ws.expect_silence(Duration::from_millis(300)).await;
}
