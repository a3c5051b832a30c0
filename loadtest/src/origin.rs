//! A minimal GRIP origin for Pushpin. `GET /stream/KEY` is answered with
//! `Grip-Hold: stream` and `Grip-Channel: KEY` (plus a first `subscribed`
//! event), so Pushpin holds the client's stream open and delivers whatever
//! is published to channel KEY. Keep-alive, HTTP/1.1, no dependencies.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listen: SocketAddr, max_secs: u64) -> Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("grip origin listening on http://{}", listener.local_addr()?);
    let deadline = tokio::time::sleep(Duration::from_secs(max_secs));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(handle(stream));
                }
            }
        }
    }
}

async fn handle(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(2048);
    let mut read = [0u8; 4096];
    loop {
        // One request head (GET requests carry no body).
        let end = loop {
            if let Some(at) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break at + 4;
            }
            match tokio::time::timeout(Duration::from_secs(120), stream.read(&mut read)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&read[..n]),
                _ => return,
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let response = match path.strip_prefix("/stream/") {
            Some(channel)
                if !channel.is_empty()
                    && channel.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                    }) =>
            {
                let body = "event: subscribed\ndata: {}\n\n";
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}\r\nGrip-Keep-Alive: :\\n\\n; format=cstring; timeout=25\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n".to_owned(),
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
