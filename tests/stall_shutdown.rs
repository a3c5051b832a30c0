//! Stalled clients never hold a drain. (Its own process: see tests/stall/mod.rs.)

mod common;
mod stall;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_by_stalled_clients() {
    stall::shutdown_is_not_held_by_stalled_clients().await;
}
