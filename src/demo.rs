//! The demo feed: a simulated stock ticker publishing to a topic keyed by symbol.
//!
//! It publishes through the same [`Source`](crate::source::Source) the publish
//! API uses, a few symbols per tick, and picks up where the last run's prices
//! left off (from the latest-value view) so restarts look continuous.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::record::NewRecord;
use crate::source::Source;
use crate::state::AppState;

struct Quote {
    open: f64,
    last: f64,
}

/// Starts the ticker task (tracked, so shutdown waits for it).
pub fn spawn(state: &AppState) {
    let state = state.clone();
    let tracker = state.shutdown.tracker().clone();
    tracker.spawn(async move { run(state).await });
}

async fn run(state: AppState) {
    let cfg = state.config.demo.clone();
    let Ok(topic) = state.hub.topic(&cfg.topic) else {
        return;
    };
    let mut rng = StdRng::from_os_rng();
    let mut quotes: HashMap<String, Quote> = HashMap::new();
    for symbol in &cfg.symbols {
        let last = topic
            .latest(symbol)
            .and_then(|r| serde_json::from_str::<Value>(r.data()).ok())
            .and_then(|v| Some((v.get("price")?.as_f64()?, v.get("open")?.as_f64()?)));
        let (price, open) = last.unwrap_or_else(|| {
            let base = rng.random_range(40.0..600.0_f64);
            (base, base)
        });
        quotes.insert(symbol.clone(), Quote { open, last: price });
    }
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tracing::info!(topic = %cfg.topic, symbols = cfg.symbols.len(), "demo ticker publishing");
    loop {
        tokio::select! {
            _ = state.shutdown.triggered() => break,
            _ = tick.tick() => {}
        }
        let count = rng.random_range(1..=3.min(cfg.symbols.len()));
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let symbol = &cfg.symbols[rng.random_range(0..cfg.symbols.len())];
            let quote = quotes.get_mut(symbol).expect("every symbol has a quote");
            // A small random walk, pulled gently back towards the open.
            let drift = (quote.open - quote.last) / quote.open * 0.02;
            let step: f64 = rng.random_range(-0.004..0.004) + drift;
            quote.last = (quote.last * (1.0 + step)).max(0.01);
            let price = (quote.last * 100.0).round() / 100.0;
            // `+ 0.0` turns a rounded -0.0 into 0.0.
            let change = ((price - quote.open) * 100.0).round() / 100.0 + 0.0;
            let change_pct = (change / quote.open * 10_000.0).round() / 100.0 + 0.0;
            let data = json!({
                "symbol": symbol,
                "price": price,
                "open": (quote.open * 100.0).round() / 100.0,
                "change": change,
                "change_pct": change_pct,
                "ts": now_ms(),
            });
            records.push(NewRecord {
                key: Some(Arc::from(symbol.as_str())),
                data: data.to_string().into_boxed_str(),
                trace: None,
            });
        }
        if let Err(e) = state.source.publish(&cfg.topic, records).await {
            tracing::warn!(error = %e, "demo publish failed");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
