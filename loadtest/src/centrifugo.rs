//! Centrifugo v6 as a peer: its unidirectional WebSocket and SSE transports
//! (no Centrifugo SDK on the client side), one channel per key, publishes
//! through its HTTP API (`/api/batch` of `publish` commands), and recovery
//! of a server-side subscription from `offset` and `epoch` on reconnect.
//!
//! A unidirectional client sends one connect request, here in the
//! `cf_connect` URL parameter: `{"subs":{"k7":{}}}` asks for a server-side
//! subscription to channel `k7` (centrifuge takes the keys of `subs` as the
//! channels the client wants; Centrifugo grants them under
//! `allow_subscribe_for_client` and `allow_subscribe_for_anonymous` in
//! peers/centrifugo/config.json), and `{"subs":{"k7":{"recover":true,
//! "offset":N,"epoch":"E"}}}` resumes it. The
//! server answers with a connect push, then one push per publication:
//! `{"channel":"k7","pub":{"data":{...},"offset":N}}`.

use memchr::memmem;
use serde_json::Value;

use crate::client::{find_ts, form_urlencoded, Position, StreamPos};
use crate::stats::bump;

/// The `cf_connect` request for a subscriber of `key`, resuming from `pos` when it has one.
pub(crate) fn connect_request(key: &str, pos: &StreamPos) -> String {
    let sub = match (pos.offset, pos.epoch.as_deref()) {
        (Some(offset), Some(epoch)) => {
            serde_json::json!({ "recover": true, "offset": offset, "epoch": epoch })
        }
        _ => serde_json::json!({}),
    };
    serde_json::json!({ "subs": { key: sub } }).to_string()
}

/// Request path of the unidirectional transport (`uni_websocket` or `uni_sse`).
pub(crate) fn path(endpoint: &str, key: &str, pos: &StreamPos) -> String {
    format!(
        "/connection/{endpoint}?cf_connect={}",
        form_urlencoded(&connect_request(key, pos))
    )
}

/// What one push was.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// The connect push: the subscription exists (recovered or not).
    Connected { recovered: bool },
    /// A publication (or several recovered ones inside a connect push).
    Publication,
    /// A ping (`{}`) or anything else this load generator ignores.
    Other,
    /// A disconnect push or a connect push without our channel.
    Refused,
}

/// The number after the last `"offset":` in `bytes` (a publication's data precedes its offset).
fn last_offset(bytes: &[u8]) -> Option<u64> {
    let at = memmem::rfind(bytes, b"\"offset\":")? + 9;
    let digits: Vec<u8> = bytes[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Handles one push (one JSON object); `deliver(ts, seq)` is called per publication.
pub(crate) fn on_push(
    bytes: &[u8],
    key: &str,
    pos: &mut StreamPos,
    mut deliver: impl FnMut(u64, Option<u64>),
) -> Push {
    // The common case first, without a JSON parse: a live publication.
    if bytes.starts_with(b"{\"channel\":") && memmem::find(bytes, b"\"pub\":").is_some() {
        if let Some(ts) = find_ts(bytes) {
            if let Some(offset) = last_offset(bytes) {
                pos.offset = Some(offset);
            }
            deliver(ts, crate::client::find_seq(bytes));
            return Push::Publication;
        }
        return Push::Other;
    }
    if memmem::find(bytes, b"\"connect\":").is_none() {
        if memmem::find(bytes, b"\"disconnect\":").is_some() {
            return Push::Refused;
        }
        return Push::Other;
    }
    let Ok(push) = serde_json::from_slice::<Value>(bytes) else {
        return Push::Other;
    };
    let Some(sub) = push.pointer(&format!("/connect/subs/{key}")) else {
        return Push::Refused;
    };
    if let Some(epoch) = sub.get("epoch").and_then(Value::as_str) {
        pos.epoch = Some(epoch.to_owned());
    }
    let recovered = sub
        .get("recovered")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let was_recovering = sub
        .get("was_recovering")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for publication in sub
        .get("publications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = publication.to_string();
        if let Some(ts) = find_ts(text.as_bytes()) {
            deliver(ts, crate::client::find_seq(text.as_bytes()));
        }
        if let Some(offset) = publication.get("offset").and_then(Value::as_u64) {
            pos.offset = Some(offset);
        }
    }
    // A fresh subscription starts at the stream's top; a failed recovery jumps there too.
    if let Some(offset) = sub.get("offset").and_then(Value::as_u64) {
        if !was_recovering || !recovered {
            pos.offset = Some(offset);
        }
    }
    Push::Connected {
        recovered: !was_recovering || recovered,
    }
}

/// Handles a push and does the bookkeeping every transport shares; false: stop this connection.
pub(crate) fn handle(
    bytes: &[u8],
    conn: usize,
    key: &str,
    pos: &mut Position,
    sh: &crate::client::Shared,
) -> bool {
    let seen = &mut pos.seen;
    let push = on_push(bytes, key, &mut pos.stream, |ts, seq| {
        crate::client::deliver(conn, ts, seq, seen, sh)
    });
    match push {
        Push::Connected { recovered } => {
            if !recovered {
                bump(&sh.counters.not_recovered, 1);
            }
            crate::client::mark_ready(conn, sh);
            true
        }
        Push::Refused => false,
        Push::Publication | Push::Other => true,
    }
}

/// One HTTP API request publishing `msgs` (key, JSON data): `/api/batch` of `publish` commands.
pub(crate) fn publish_body(msgs: &[(String, &str)]) -> String {
    let mut body = String::from("{\"commands\":[");
    for (i, (channel, data)) in msgs.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            "{{\"publish\":{{\"channel\":\"{channel}\",\"data\":{data}}}}}"
        ));
    }
    body.push_str("]}");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_the_channel_and_resumes_from_offset_and_epoch() {
        let mut pos = StreamPos::default();
        assert_eq!(connect_request("k3", &pos), r#"{"subs":{"k3":{}}}"#);
        pos.offset = Some(12);
        pos.epoch = Some("xyz".into());
        let req: Value = serde_json::from_str(&connect_request("k3", &pos)).unwrap();
        assert_eq!(req["subs"]["k3"]["recover"], true);
        assert_eq!(req["subs"]["k3"]["offset"], 12);
        assert_eq!(req["subs"]["k3"]["epoch"], "xyz");
    }

    #[test]
    fn reads_publications_and_connect_pushes() {
        let mut pos = StreamPos::default();
        let mut got = Vec::new();
        let connect = br#"{"connect":{"client":"c","version":"6.9.1","subs":{"k1":{"recoverable":true,"epoch":"ep","offset":4,"positioned":true}},"ping":25}}"#;
        let p = on_push(connect, "k1", &mut pos, |ts, seq| got.push((ts, seq)));
        assert_eq!(p, Push::Connected { recovered: true });
        assert_eq!((pos.offset, pos.epoch.as_deref()), (Some(4), Some("ep")));
        let publication =
            br#"{"channel":"k1","pub":{"data":{"ts":1700000000000001,"seq":9,"pad":"x"},"offset":5}}"#;
        let p = on_push(publication, "k1", &mut pos, |ts, seq| got.push((ts, seq)));
        assert_eq!(p, Push::Publication);
        assert_eq!(pos.offset, Some(5));
        assert_eq!(got, vec![(1700000000000001, Some(9))]);
        // A recovered reconnect: the missed publications come inside the connect push.
        let resumed = br#"{"connect":{"subs":{"k1":{"recoverable":true,"epoch":"ep","offset":7,"recovered":true,"was_recovering":true,"publications":[{"data":{"ts":2,"seq":10},"offset":6},{"data":{"ts":3,"seq":11},"offset":7}]}}}}"#;
        let p = on_push(resumed, "k1", &mut pos, |ts, seq| got.push((ts, seq)));
        assert_eq!(p, Push::Connected { recovered: true });
        assert_eq!(pos.offset, Some(7));
        assert_eq!(got.len(), 3);
        let lost = br#"{"connect":{"subs":{"k1":{"epoch":"new","offset":1,"recovered":false,"was_recovering":true}}}}"#;
        let p = on_push(lost, "k1", &mut pos, |_, _| {});
        assert_eq!(p, Push::Connected { recovered: false });
        assert_eq!((pos.offset, pos.epoch.as_deref()), (Some(1), Some("new")));
        let other = br#"{"connect":{"subs":{"k2":{}}}}"#;
        assert_eq!(on_push(other, "k1", &mut pos, |_, _| {}), Push::Refused);
        assert_eq!(on_push(b"{}", "k1", &mut pos, |_, _| {}), Push::Other);
    }

    #[test]
    fn batches_publish_commands() {
        let body = publish_body(&[("k1".into(), r#"{"ts":1}"#), ("k2".into(), r#"{"ts":2}"#)]);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["commands"][1]["publish"]["channel"], "k2");
        assert_eq!(v["commands"][0]["publish"]["data"]["ts"], 1);
    }
}
