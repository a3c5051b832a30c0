//! Fixed-rate publishing through each system's own HTTP publish API.
//!
//! A pacer wakes every few milliseconds, makes the messages now due (each
//! payload stamped with the current time in microseconds as `"ts"`), groups
//! them into requests (pushgate and Pushpin take batches, Centrifugo a
//! `/api/batch` of `publish` commands; Nchan takes one message per POST) and hands them to a pool of publisher tasks with
//! keep-alive connections. If every publisher is busy the messages are
//! counted as dropped rather than queued without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, Mutex};

use crate::keys::{key_name, Picker};
use crate::stats::{bump, now_us, Counters};
use crate::System;

pub struct PublishConfig {
    pub system: System,
    pub base: String,
    pub topic: String,
    pub batch: usize,
    pub publishers: usize,
    pub pad: String,
    /// Payloads carry `price` and `sector` (for the value-filter scenarios).
    pub value_payload: bool,
}

struct Request {
    body: String,
    url: String,
    messages: u64,
}

pub fn payload(ts: u64, seq: u64, pad: &str) -> String {
    format!("{{\"ts\":{ts},\"seq\":{seq},\"pad\":\"{pad}\"}}")
}

/// A payload with values for filters: `price` 100..199 and a `sector`.
pub fn value_payload(ts: u64, seq: u64, pad: &str) -> String {
    let price = 100 + seq % 100;
    format!("{{\"ts\":{ts},\"seq\":{seq},\"price\":{price},\"sector\":\"tech\",\"pad\":\"{pad}\"}}")
}

fn build(cfg: &PublishConfig, msgs: &[(usize, String)]) -> Request {
    match cfg.system {
        System::Pushgate | System::Floor => {
            let mut body = String::from("{\"records\":[");
            for (i, (key, data)) in msgs.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    "{{\"key\":\"{}\",\"data\":{}}}",
                    key_name(*key),
                    data
                ));
            }
            body.push_str("]}");
            Request {
                body,
                url: format!("{}/topics/{}", cfg.base, cfg.topic),
                messages: msgs.len() as u64,
            }
        }
        System::Centrifugo => {
            let named: Vec<(String, &str)> = msgs
                .iter()
                .map(|(key, data)| (key_name(*key), data.as_str()))
                .collect();
            Request {
                body: crate::centrifugo::publish_body(&named),
                url: format!("{}/api/batch", cfg.base),
                messages: msgs.len() as u64,
            }
        }
        System::Nchan => Request {
            body: msgs[0].1.clone(),
            url: format!("{}/pub/{}", cfg.base, key_name(msgs[0].0)),
            messages: 1,
        },
        System::Pushpin => {
            let items: Vec<serde_json::Value> = msgs
                .iter()
                .map(|(key, data)| {
                    serde_json::json!({
                        "channel": key_name(*key),
                        "formats": {
                            "http-stream": {"content": format!("data: {data}\n\n")},
                            "ws-message": {"content": data},
                        }
                    })
                })
                .collect();
            Request {
                body: serde_json::json!({ "items": items }).to_string(),
                url: format!("{}/publish/", cfg.base),
                messages: msgs.len() as u64,
            }
        }
    }
}

/// A running publisher pool; dropping the sender stops the workers.
pub struct Pool {
    tx: mpsc::Sender<Request>,
    cfg: Arc<PublishConfig>,
    seq: AtomicU64,
}

impl Pool {
    pub fn start(cfg: PublishConfig, counters: Arc<Counters>) -> Self {
        let cfg = Arc::new(cfg);
        let (tx, rx) = mpsc::channel::<Request>(cfg.publishers * 4);
        let rx = Arc::new(Mutex::new(rx));
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(cfg.publishers)
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .expect("http client");
        for _ in 0..cfg.publishers {
            let rx = Arc::clone(&rx);
            let client = client.clone();
            let counters = Arc::clone(&counters);
            let system = cfg.system;
            tokio::spawn(async move {
                loop {
                    let req = { rx.lock().await.recv().await };
                    let Some(req) = req else { break };
                    let mut builder = client.post(&req.url).body(req.body);
                    if system != System::Nchan {
                        builder = builder.header("content-type", "application/json");
                    }
                    if system == System::Pushpin {
                        // Pushpin 1.36's publish endpoint holds back deliveries of
                        // requests that arrive on a kept-alive connection until
                        // publishing pauses (seen here: all of a 4 s step delivered
                        // at its end); one connection per request avoids that.
                        builder = builder.header("connection", "close");
                    }
                    match builder.send().await {
                        Ok(resp) if resp.status().is_success() => {
                            let body = resp.bytes().await.unwrap_or_default();
                            // Centrifugo answers a batch with 200 and an `error` per failed command.
                            if system == System::Centrifugo
                                && memchr::memmem::find(&body, b"\"error\"").is_some()
                            {
                                if first_few() {
                                    eprintln!("publish: {}", String::from_utf8_lossy(&body));
                                }
                                bump(&counters.publish_errors, req.messages);
                            } else {
                                bump(&counters.published, req.messages);
                            }
                        }
                        Ok(resp) => {
                            let status = resp.status();
                            let text = resp.text().await.unwrap_or_default();
                            if first_few() {
                                eprintln!("publish: {status}: {}", text.trim());
                            }
                            bump(&counters.publish_errors, req.messages);
                        }
                        Err(e) => {
                            if first_few() {
                                eprintln!("publish: {e}");
                            }
                            bump(&counters.publish_errors, req.messages);
                        }
                    }
                }
            });
        }
        Self {
            tx,
            cfg,
            seq: AtomicU64::new(0),
        }
    }

    /// Publishes at `rate` messages/s with keys from `picker` until `until`.
    /// Returns (messages generated, expected deliveries).
    pub async fn run_rate(
        &self,
        rate: f64,
        until: Instant,
        picker: &Picker,
        subs_per_key: &[u64],
        counters: &Counters,
    ) -> (u64, u64) {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut rng = StdRng::seed_from_u64(7 + rate as u64);
        let mut made: u64 = 0;
        let mut expected: u64 = 0;
        let per_request = if self.cfg.system == System::Nchan {
            1
        } else {
            self.cfg.batch.max(1)
        };
        let mut pending: Vec<(usize, String)> = Vec::with_capacity(per_request);
        while Instant::now() < until {
            tick.tick().await;
            let due = (rate * start.elapsed().as_secs_f64()) as u64;
            let n = due.saturating_sub(made).min(1_000_000);
            let ts = now_us();
            for _ in 0..n {
                let key = picker.pick(&mut rng);
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                let data = if self.cfg.value_payload {
                    value_payload(ts, seq, &self.cfg.pad)
                } else {
                    payload(ts, seq, &self.cfg.pad)
                };
                pending.push((key, data));
                if pending.len() == per_request {
                    expected += self.hand_off(&pending, subs_per_key, counters);
                    pending.clear();
                }
            }
            if !pending.is_empty() {
                expected += self.hand_off(&pending, subs_per_key, counters);
                pending.clear();
            }
            made += n;
        }
        (made, expected)
    }

    /// Queues one request; returns the deliveries it should cause (0 if dropped).
    fn hand_off(&self, msgs: &[(usize, String)], subs_per_key: &[u64], counters: &Counters) -> u64 {
        let req = build(&self.cfg, msgs);
        let n = req.messages;
        if self.tx.try_send(req).is_err() {
            bump(&counters.publish_dropped, n);
            return 0;
        }
        msgs.iter()
            .map(|(k, _)| subs_per_key.get(*k).copied().unwrap_or(0))
            .sum()
    }
}

static ONCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// True for the first few error reports only.
pub fn first_few() -> bool {
    ONCE.fetch_add(1, Ordering::Relaxed) < 5
}
