//! The token's subscriptions on a WebSocket: opened on connect, before any client message is read, as if the client had sent each `subscribe`.
//!
//! Each goes through [`Connection::subscribe`], so it meets every check a
//! client's does (grants, limits, one subscription per topic, warming topics
//! parked) and is answered the same way: `subscribed` (then its records) or an
//! `error`, under its server-chosen id (`token-N`). A client `subscribe`
//! reusing an id in use gets the usual `already_subscribed`. A reconnecting
//! client resumes these with `cursor.token-N=<cursor>` on the `GET /ws` URL.

use serde_json::Value;
use tracing::Instrument;

use super::{send_error, Connection, Ending, Socket};
use crate::telemetry;
use crate::token_subs::{self, TokenSub};

/// The entries still to open on a new connection.
pub(super) struct OnConnect(Vec<TokenSub>);

/// What a new connection will open for its token (`None`: nothing), with the
/// cursors its URL hands back for them.
pub(super) fn pending(mut subs: Vec<TokenSub>, query: Option<&str>) -> Option<Box<OnConnect>> {
    if subs.is_empty() {
        return None;
    }
    token_subs::set_ws_cursors(&mut subs, query);
    Some(Box::new(OnConnect(subs)))
}

impl Connection {
    /// Opens the token's subscriptions, in the token's order; an entry that
    /// cannot be opened gets an `error` and the rest carry on.
    pub(super) async fn subscribe_from_token(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        let Some(on_connect) = self.on_connect.take() else {
            return Ok(());
        };
        let span = self.span();
        async move {
            for sub in on_connect.0 {
                match sub.request {
                    Ok(req) => self.subscribe(socket, req, true).await?,
                    Err(err) => {
                        telemetry::client_error(err.code.as_str());
                        let id = Value::String(sub.id);
                        self.guarded(send_error(socket, Some(&id), &err)).await?
                    }
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }
}
