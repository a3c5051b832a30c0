//! A WebSocket subscriber that negotiates permessage-deflate (RFC 7692) with
//! `server_no_context_takeover; client_no_context_takeover`, for measuring
//! pushgate's `websocket.compression = "shared"` (tokio-tungstenite has no
//! extension support, so this one speaks the handshake and the framing itself).
//! Each compressed message is inflated on its own, as no context takeover allows.

use flate2::{Decompress, FlushDecompress, Status};
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::{connect, deliver, mark_ready, ClientConfig, Failure, OpenGuard, Shared};
use crate::stats::bump;

/// Subscribes to `key` and counts deliveries until the run stops.
pub(crate) async fn subscribe(
    conn: usize,
    key: &str,
    cfg: &ClientConfig,
    sh: &Shared,
) -> Result<(), Failure> {
    let mut stream = connect(cfg, conn).await.map_err(|_| Failure::Connect)?;
    let _open = OpenGuard::new(sh);
    let handshake = async {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n\r\n",
            cfg.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            stream.read_exact(&mut byte).await?;
            head.push(byte[0]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(cfg.handshake_timeout, handshake).await {
        Ok(Ok(head)) => head,
        _ => return Err(Failure::Connect),
    };
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(Failure::Status);
    }
    // A server that declined the extension sends plain frames, which this client
    // reads as well; the run would then not measure compression, so refuse it.
    if memmem::find(&head.to_ascii_lowercase(), b"permessage-deflate").is_none() {
        return Err(Failure::Status);
    }
    let mut sub = serde_json::json!({
        "type": "subscribe", "id": 1, "topic": cfg.topic, "keys": [key], "snapshot": false
    });
    if let Some(rate) = cfg.max_rate {
        sub["max_rate"] = rate.into();
    }
    write_frame(&mut stream, 0x1, sub.to_string().as_bytes())
        .await
        .map_err(|_| Failure::Stream)?;
    // Buffered reads: a frame header and its payload in one read call, as
    // tungstenite's reader does for the uncompressed runs.
    let mut stream = BufReader::with_capacity(4096, stream);

    let mut inflater = Decompress::new(false);
    let mut plain = Vec::with_capacity(4096);
    let mut message = Vec::with_capacity(4096);
    let mut compressed = false;
    loop {
        let frame = tokio::select! {
            _ = sh.stop.cancelled() => return Ok(()),
            frame = read_frame(&mut stream, &mut message) => frame,
        };
        let (fin, rsv1, opcode) = frame.map_err(|_| Failure::Stream)?;
        match opcode {
            0x0..=0x2 => {
                if opcode != 0x0 {
                    compressed = rsv1;
                }
                if !fin {
                    continue;
                }
                let bytes: &[u8] = if compressed {
                    message.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    inflate(&mut inflater, &message, &mut plain).map_err(|_| Failure::Stream)?;
                    &plain
                } else {
                    &message
                };
                if let Some(ts) = crate::client::find_ts(bytes) {
                    bump(&sh.counters.compressed, u64::from(compressed));
                    deliver(conn, ts, crate::client::find_seq(bytes), &mut None, sh);
                } else if memmem::find(bytes, b"\"subscribed\"").is_some() {
                    mark_ready(conn, sh);
                } else if memmem::find(bytes, b"\"error\"").is_some() {
                    return Err(Failure::Status);
                }
                message.clear();
            }
            0x8 => return Err(Failure::Stream),
            0x9 => {
                let payload = std::mem::take(&mut message);
                write_frame(stream.get_mut(), 0xA, &payload)
                    .await
                    .map_err(|_| Failure::Stream)?;
            }
            _ => message.clear(),
        }
    }
}

/// Inflates one whole message (already ending in 00 00 FF FF) into `out`.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), flate2::DecompressError> {
    d.reset(false);
    out.clear();
    let mut read = 0;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let before = d.total_in();
        let status = d.decompress_vec(&input[read..], out, FlushDecompress::Sync)?;
        read += (d.total_in() - before) as usize;
        if read >= input.len() || status == Status::StreamEnd {
            return Ok(());
        }
    }
}

/// Reads one frame's payload, appended to `buf`; returns FIN, RSV1 and the opcode.
async fn read_frame(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<(bool, bool, u8)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    if len > 64 << 20 {
        return Err(std::io::Error::other("frame too large"));
    }
    let at = buf.len();
    buf.resize(at + len, 0);
    s.read_exact(&mut buf[at..]).await?;
    Ok((h[0] & 0x80 != 0, h[0] & 0x40 != 0, h[0] & 0x0f))
}

/// Writes one masked client frame (the mask is fixed: this client tests servers, not proxies).
async fn write_frame(s: &mut TcpStream, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    s.write_all(&frame).await
}
