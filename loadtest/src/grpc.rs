//! gRPC subscribers for pushgate (`pushgate.v1.Gateway/Subscribe`): one HTTP/2 connection per subscriber, spoken with the h2 crate directly.
//!
//! The request is encoded by hand (three fields of `SubscribeRequest`) and
//! the response read frame by frame: a `Record` event carries the record's
//! JSON text as bytes, so the publisher's `"ts":` timestamp is found in the
//! raw message as on the other transports. Nothing is decoded that the
//! measurement does not need.

use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};

use crate::client::{connect, find_ts, mark_ready, ClientConfig, Failure, OpenGuard, Shared};

/// `SubscribeRequest { topic: 1, keys: 2, snapshot: 5 = false }`, protobuf.
fn request(topic: &str, key: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(topic.len() + key.len() + 8);
    for (tag, value) in [(0x0a_u8, topic), (0x12, key)] {
        m.push(tag);
        varint(&mut m, value.len() as u64);
        m.extend_from_slice(value.as_bytes());
    }
    m.extend_from_slice(&[0x28, 0x00]);
    m
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One gRPC message framed: compression flag, big-endian length, bytes.
pub(crate) fn framed(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The HTTP/2 request that opens `pushgate.v1.Gateway/Subscribe` on `host`.
pub(crate) fn subscribe_call(host: &str) -> http::Result<http::Request<()>> {
    http::Request::post(format!("http://{host}/pushgate.v1.Gateway/Subscribe"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
}

/// Splits complete gRPC messages off the front of `buf`.
pub(crate) fn next_message(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}

pub(crate) async fn subscribe(
    conn: usize,
    key: &str,
    cfg: &ClientConfig,
    sh: &Shared,
) -> Result<(), Failure> {
    let stream = connect(cfg, conn).await.map_err(|_| Failure::Connect)?;
    let _open = OpenGuard::new(sh);
    let handshake = h2::client::Builder::new()
        .initial_window_size(256 * 1024)
        .handshake::<_, Bytes>(stream);
    let (client, connection) = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(pair)) => pair,
        _ => return Err(Failure::Connect),
    };
    // The connection is driven here, beside the stream, so no task outlives the subscriber.
    let connection = async move {
        let _ = connection.await;
    };
    tokio::pin!(connection);
    let mut client = client.ready().await.map_err(|_| Failure::Connect)?;
    let req = subscribe_call(&cfg.host).map_err(|_| Failure::Connect)?;
    let (response, mut send) = client
        .send_request(req, false)
        .map_err(|_| Failure::Connect)?;
    send.send_data(framed(&request(&cfg.topic, key)), true)
        .map_err(|_| Failure::Connect)?;
    let response = tokio::select! {
        _ = &mut connection => return Err(Failure::Connect),
        r = tokio::time::timeout(cfg.handshake_timeout, response) => match r {
            Ok(Ok(r)) => r,
            _ => return Err(Failure::Connect),
        },
    };
    if response.status() != 200 {
        return Err(Failure::Status);
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    loop {
        let data = tokio::select! {
            _ = sh.stop.cancelled() => return Ok(()),
            _ = &mut connection => return Err(Failure::Stream),
            data = body.data() => data,
        };
        let data = match data {
            Some(Ok(data)) => data,
            // The end of the stream (a status in the trailers) or a reset.
            _ => return Err(Failure::Stream),
        };
        let _ = body.flow_control().release_capacity(data.len());
        buf.extend_from_slice(&data);
        while let Some(message) = next_message(&mut buf) {
            match message.first() {
                // Event.record (field 2)
                Some(0x12) => {
                    if let Some(ts) = find_ts(&message) {
                        sh.stats.record(conn, ts);
                    }
                }
                // Event.subscribed (field 1)
                Some(0x0a) if !sh.ready[conn].load(Ordering::Relaxed) => mark_ready(conn, sh),
                _ => {}
            }
        }
        if buf.capacity() > 64 * 1024 && buf.is_empty() {
            buf = BytesMut::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere() {
        let wire = [framed(b"\x12abc"), framed(b"\x0a"), framed(&[0x12; 300])].concat();
        for split in 0..wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(part);
                while let Some(m) = next_message(&mut buf) {
                    got.push(m.len());
                }
            }
            assert_eq!(got, vec![4, 1, 300], "split at {split}");
        }
        assert_eq!(request("t", "k"), b"\x0a\x01t\x12\x01k\x28\x00");
    }
}
