//! A socket that takes no bytes for `limits.write_timeout` is closed. (Its own process: see tests/stall/mod.rs.)

mod common;
mod stall;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_drops_stalled_ws_and_sse() {
    stall::write_timeout_drops_stalled_ws_and_sse().await;
}
