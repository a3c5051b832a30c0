//! A queue that overflows while a write is blocked closes the client at once. (Its own process: see tests/stall/mod.rs.)

mod common;
mod stall;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_while_blocked_closes_at_once() {
    stall::overflow_while_blocked_closes_at_once().await;
}
