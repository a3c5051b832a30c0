//! Behind a load balancer: HAProxy configured from the shipped
//! `deploy/haproxy.cfg`, clients from several 127.0.0.x source addresses.
//! A node takes more clients than `limits.max_connections_per_ip` through the
//! balancer, the per-IP limit still holds per real client (X-Forwarded-For,
//! or the PROXY protocol v2 with `send-proxy-v2`), and an untrusted peer's
//! X-Forwarded-For is ignored. Needs `haproxy` (scripts/setup installs it).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy from the shipped config, on test ports, in front of `node`.
struct HaProxy {
    _child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    async fn start(node: SocketAddr, server_options: &str) -> Self {
        let shipped = include_str!("../deploy/haproxy.cfg");
        assert!(
            shipped.contains("option forwardfor"),
            "the shipped config passes the client's address"
        );
        let port = free_port();
        let mut cfg = String::new();
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("bind ") {
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if trimmed.starts_with("server ") {
                continue;
            } else if trimmed.starts_with("default-server ") {
                cfg.push_str("    default-server inter 200ms fall 2 rise 1\n");
            } else if trimmed.starts_with("maxconn ") {
                // Two descriptors per client, within this machine's 20,000.
                cfg.push_str("    maxconn 8000\n");
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        cfg.push_str(&format!("    server n0 {node} check {server_options}\n"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy not found: run scripts/setup");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let proxy = Self {
            _child: child,
            addr,
            _dir: dir,
        };
        // Up, and the node marked healthy (its /readyz check passed).
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(Ok(ws)) = connect_from([127, 0, 0, 250], addr, None).await {
                drop(ws);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "HAProxy never passed a WebSocket"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proxy
    }
}

/// `pushgate_connections_refused_total{reason="ip_limit"}`.
async fn refused(node: &TestServer) -> f64 {
    let metrics = node.metrics_text().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_connections_refused_total{reason=\"ip_limit\"} "))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// A WebSocket handshake from source address `from` to `to`; the outer error
/// is the TCP connect, the inner the handshake (an HTTP refusal's status).
async fn connect_from(
    from: [u8; 4],
    to: SocketAddr,
    forwarded_for: Option<&str>,
) -> std::io::Result<Result<Ws, u16>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(from), 0))?;
    let stream = socket.connect(to).await?;
    let mut request = format!("ws://{to}/ws").into_client_request().unwrap();
    if let Some(xff) = forwarded_for {
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(WsError::Http(response)) => Ok(Err(response.status().as_u16())),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Opens `n` WebSockets from `from`; panics on any refusal.
async fn open_all(from: [u8; 4], to: SocketAddr, n: usize) -> Vec<Ws> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        match connect_from(from, to, None).await.expect("tcp connect") {
            Ok(ws) => out.push(ws),
            Err(status) => panic!("connection {} from {from:?} refused: {status}", i + 1),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_node_takes_more_than_the_per_ip_limit_and_limits_each_client() {
    if !tiers(&["haproxy"]) {
        return;
    }
    // The shipped defaults but for the balancer's address (limits.max_connections_per_ip: 1000).
    let node = TestServer::start_with("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n").await;
    let lb = HaProxy::start(node.addr, "").await;
    let refused_before = refused(&node).await;

    // 1,200 clients from two addresses, all through one balancer address.
    let mut held = open_all([127, 0, 0, 2], lb.addr, 600).await;
    held.extend(open_all([127, 0, 0, 3], lb.addr, 600).await);
    assert_eq!(held.len(), 1200);

    // The per-IP limit still holds per real client.
    held.extend(open_all([127, 0, 0, 2], lb.addr, 400).await);
    match connect_from([127, 0, 0, 2], lb.addr, None).await.unwrap() {
        Ok(_) => panic!("the 1,001st connection from one client address was accepted"),
        Err(status) => assert_eq!(status, 429),
    }
    let other = connect_from([127, 0, 0, 4], lb.addr, None).await.unwrap();
    assert!(other.is_ok(), "another client address is accepted");
    // Counted by reason (at least this one: the other tests share the recorder).
    assert!(refused(&node).await > refused_before);
    drop(held);
    drop(other);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_with_proxy_protocol_v2_the_client_address_comes_from_the_header() {
    if !tiers(&["haproxy"]) {
        return;
    }
    // The balancer connects from 127.0.0.9, the only trusted address: the
    // harness's own readiness checks (from 127.0.0.1) send no PROXY header.
    let node = TestServer::start_with(
        "[server]\ntrusted_proxies = [\"127.0.0.9\"]\nproxy_protocol = true\n[limits]\nmax_connections_per_ip = 20\n",
    )
    .await;
    let lb = HaProxy::start(node.addr, "send-proxy-v2 source 127.0.0.9").await;
    let held = open_all([127, 0, 0, 6], lb.addr, 20).await;
    match connect_from([127, 0, 0, 6], lb.addr, None).await.unwrap() {
        Ok(_) => panic!("the 21st connection from one client address was accepted"),
        Err(status) => assert_eq!(status, 429),
    }
    let other = open_all([127, 0, 0, 7], lb.addr, 20).await;
    // X-Forwarded-For from a client behind a PROXY-protocol balancer is not believed:
    // the client (127.0.0.6) is not a trusted proxy.
    match connect_from([127, 0, 0, 6], lb.addr, Some("10.9.9.9"))
        .await
        .unwrap()
    {
        Ok(_) => panic!("a client's own X-Forwarded-For escaped its per-IP limit"),
        Err(status) => assert_eq!(status, 429),
    }
    drop(held);
    drop(other);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peers_forwarded_for_is_ignored() {
    if !tiers(&["haproxy"]) {
        return;
    }
    let node = TestServer::start_with(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 10\n",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..10 {
        let xff = format!("10.0.0.{i}");
        match connect_from([127, 0, 0, 8], node.addr, Some(&xff))
            .await
            .unwrap()
        {
            Ok(ws) => held.push(ws),
            Err(status) => panic!("connection {i} refused: {status}"),
        }
    }
    // Each claimed another address; all counted as 127.0.0.8.
    match connect_from([127, 0, 0, 8], node.addr, Some("10.0.0.99"))
        .await
        .unwrap()
    {
        Ok(_) => panic!("an untrusted peer's X-Forwarded-For was believed"),
        Err(status) => assert_eq!(status, 429),
    }
    // The trusted proxy's own connections are not per-IP limited.
    for _ in 0..15 {
        assert!(connect_from([127, 0, 0, 1], node.addr, None)
            .await
            .unwrap()
            .is_ok());
    }
    drop(held);
    node.stop().await;
}
