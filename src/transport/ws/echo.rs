//! `GET /echo` (only with `testing.echo_endpoint`): the production framing with no protocol, for Autobahn.

use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{close_frame, config, read_error, Ending, CLOSE_LINGER};
use crate::state::AppState;
use crate::transport::ws_io::Upgrade;

/// `GET /echo` (only with `testing.echo_endpoint`): echoes every message, for Autobahn.
pub async fn echo(State(state): State<AppState>, upgrade: Upgrade) -> Response {
    let (response, socket) = upgrade.accept(
        config(&state),
        state.config.websocket.compression == crate::config::WsCompression::Shared,
    );
    state.shutdown.tracker().spawn(async move {
        let Some(mut socket) = socket.await else {
            return;
        };
        // Keep reading after a Close until the stream ends, so the close handshake completes.
        while let Some(message) = socket.next().await {
            let reply = match message {
                Ok(Message::Text(t)) => Message::Text(t),
                Ok(Message::Binary(b)) => Message::Binary(b),
                Ok(_) => continue,
                Err(e) => {
                    if let Ending::Close(code, reason) = read_error(&e) {
                        let frame = close_frame(code, reason);
                        let _ = tokio::time::timeout(CLOSE_LINGER, socket.send(frame)).await;
                    }
                    return;
                }
            };
            if socket.send(reply).await.is_err() {
                return;
            }
        }
    });
    response
}
