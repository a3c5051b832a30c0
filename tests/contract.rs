//! The message schemas (api/schemas/messages.json) that the harness checks
//! every received WebSocket and SSE message against: they accept what the
//! protocol allows and reject what it does not, so a passing suite means
//! something. The HTTP contract is checked by tests/contract/run.sh.

mod common;

use common::*;
use serde_json::{json, Value};

fn record() -> Value {
    json!({
        "type": "record", "topic": "t", "key": "k", "partition": 0, "offset": 3,
        "cursor": "AQIDBAUGBwgBBA", "timestamp": 1700000000000_i64, "data": {"x": 1}
    })
}

fn with(mut base: Value, member: &str, value: Value) -> Value {
    base[member] = value;
    base
}

fn without(mut base: Value, member: &str) -> Value {
    base.as_object_mut().unwrap().remove(member);
    base
}

#[test]
fn records_need_every_member_with_its_type_and_may_carry_more() {
    assert_eq!(message_errors("Record", &record()), Vec::<String>::new());
    for ok in [
        with(record(), "key", Value::Null),
        with(record(), "data", Value::Null),
        with(record(), "snapshot", json!(true)),
        with(
            with(record(), "encoding", json!("base64")),
            "data",
            json!("/wA="),
        ),
        with(
            with(record(), "tombstone", json!(true)),
            "data",
            Value::Null,
        ),
        with(
            record(),
            "headers",
            json!({"a": "b", "bin": "base64:/w==", "none": null}),
        ),
        // Change-data-capture members, and any other a later version adds.
        with(
            with(record(), "op", json!("update")),
            "source",
            json!({"table": "t"}),
        ),
        with(record(), "something_new", json!([1])),
        // A Kinesis record: the sequence number, wider than 64 bits, as a string.
        with(
            record(),
            "offset",
            json!("49590338271490256608559692538361571095921575989136588898"),
        ),
    ] {
        assert_eq!(message_errors("Record", &ok), Vec::<String>::new(), "{ok}");
    }
    for member in [
        "type",
        "topic",
        "key",
        "partition",
        "offset",
        "cursor",
        "timestamp",
        "data",
    ] {
        let bad = without(record(), member);
        assert!(
            !message_errors("Record", &bad).is_empty(),
            "without {member}"
        );
    }
    for bad in [
        with(record(), "offset", json!(-1)),
        with(record(), "offset", json!("3a")),
        with(record(), "offset", json!("03")),
        with(record(), "offset", json!("")),
        with(record(), "offset", json!(1.5)),
        with(record(), "partition", json!(1.5)),
        with(record(), "cursor", json!("not/base64url=")),
        with(record(), "key", json!(5)),
        with(record(), "snapshot", json!(false)),
        with(record(), "encoding", json!("hex")),
        // base64 data is a string; a tombstone's data is null; never both.
        with(record(), "encoding", json!("base64")),
        with(record(), "tombstone", json!(true)),
        with(
            with(
                with(record(), "encoding", json!("base64")),
                "tombstone",
                json!(true),
            ),
            "data",
            Value::Null,
        ),
        with(record(), "headers", json!({"a": 1})),
        with(record(), "op", json!(1)),
        with(record(), "source", json!("db")),
    ] {
        assert!(!message_errors("Record", &bad).is_empty(), "accepted {bad}");
    }
}

#[test]
fn control_messages_are_exact() {
    let subscribed = json!({"type": "subscribed", "id": 1, "topic": "t",
        "cursor": "AQIDBAUGBwgBBA", "recovered": true, "snapshot": 0});
    check_server_message(&subscribed);
    assert!(!message_errors("Subscribed", &with(subscribed.clone(), "extra", json!(1))).is_empty());
    assert!(!message_errors("Subscribed", &without(subscribed.clone(), "recovered")).is_empty());
    assert!(!message_errors("Subscribed", &with(subscribed, "id", json!({"a": 1}))).is_empty());

    let error = json!({"type": "error", "id": null, "code": "bad_json", "message": "m"});
    check_server_message(&error);
    assert!(!message_errors("Error", &with(error.clone(), "code", json!("oops"))).is_empty());
    assert!(!message_errors("Error", &without(error, "id")).is_empty());

    let gap = json!({"type": "gap", "id": "t", "topic": "t", "reason": "epoch", "earliest": "AQ"});
    check_server_message(&gap);
    assert!(!message_errors("Gap", &with(gap, "reason", json!("lost"))).is_empty());
    check_server_message(&json!({"type": "refreshed", "expires_at": null}));
    assert!(!message_errors("Live", &json!({"type": "live", "id": 1, "topic": "t"})).is_empty());
}

#[test]
fn client_messages_follow_what_the_server_accepts() {
    for ok in [
        json!({"type": "subscribe", "topic": "t"}),
        json!({"type": "subscribe", "id": "a", "topic": "t", "keys": ["k"], "prefix": "p", "cursor": "AQ", "snapshot": false}),
        json!({"type": "unsubscribe", "topic": "t"}),
        json!({"type": "unsubscribe", "id": 2}),
        json!({"type": "ping"}),
        json!({"type": "refresh", "token": "x.y.z"}),
    ] {
        assert_eq!(
            message_errors("ClientMessage", &ok),
            Vec::<String>::new(),
            "{ok}"
        );
        // The server's parser agrees.
        pushgate::protocol::ClientMessage::parse(&ok.to_string()).unwrap();
    }
    for bad in [
        json!({"type": "subscribe"}),
        json!({"type": "subscribe", "topic": "t", "keys": []}),
        json!({"type": "subscribe", "topic": "t", "id": {"a": 1}}),
        json!({"type": "unsubscribe"}),
        json!({"type": "refresh"}),
        json!({"type": "dance"}),
    ] {
        assert!(
            !message_errors("ClientMessage", &bad).is_empty(),
            "accepted {bad}"
        );
    }
}

#[tokio::test]
async fn the_harness_checks_what_it_receives() {
    // A real exchange passes the checks in WsClient and SseClient...
    let server = TestServer::start().await;
    server.publish("one", "k", json!({"n": 1})).await;
    let mut ws = server.ws().await;
    ws.subscribe(json!({"id": 1, "topic": "one"})).await;
    assert_eq!(ws.records(1).await[0]["snapshot"], true);
    ws.expect_silence(std::time::Duration::from_millis(200))
        .await;
    assert_eq!(ws.lives.len(), 1, "the live marker was read (and checked)");
    let mut sse = server.sse("topic=one", None).await;
    assert_eq!(sse.next().await.event, "subscribed");
    assert_eq!(sse.records(1).await[0].json()["snapshot"], true);
    server.stop().await;

    // ...and a message outside the schema fails the test that received it.
    let bad_ws = std::panic::catch_unwind(|| {
        check_server_message(&json!({"type": "pong", "id": 1, "extra": true}))
    });
    assert!(bad_ws.is_err());
    let bad_sse = std::panic::catch_unwind(|| {
        check_sse_event(&SseEvent {
            event: "message".into(),
            id: Some("AQ".into()),
            data: without(record(), "cursor").to_string(),
        })
    });
    assert!(bad_sse.is_err());
    let wrong_id = std::panic::catch_unwind(|| {
        check_sse_event(&SseEvent {
            event: "message".into(),
            id: Some("AQ".into()),
            data: record().to_string(),
        })
    });
    assert!(
        wrong_id.is_err(),
        "an SSE id that is not the record's cursor"
    );
}
