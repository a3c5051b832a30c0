//! A WebSocket connection's grants changing while it is open: a refreshed token, or grants an operator narrowed (the control topic).

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::{send_error, send_text, Connection, Ending};
use crate::auth::Grants;
use crate::protocol::{self, ClientError, ErrorCode, SubscribeRequest};
use crate::transport::ws_io::Socket;

impl Connection {
    /// Swaps in a fresh token. It must name the same subject; subscriptions the
    /// new grants no longer cover are ended with a `forbidden` error.
    pub(super) async fn refresh(&mut self, socket: &mut Socket, token: &str) -> Result<(), Ending> {
        let fresh = match self.state.auth.verify(token) {
            Ok(identity)
                // A connection without an expiring token may take on any subject.
                if identity.subject == self.subject || self.expiry.is_none() =>
            {
                identity
            }
            Ok(_) | Err(_) => {
                let err = ClientError::new(ErrorCode::Unauthorized, "token refused");
                return self.guarded(send_error(socket, None, &err)).await;
            }
        };
        self.expiry = fresh.time_left().map(|left| Instant::now() + left);
        self.warned = false;
        let mut kept = Vec::with_capacity(self.subs.len());
        for active in std::mem::take(&mut self.subs) {
            // A token that enforces another filter cannot take over: the
            // subscription's group and history were shaped by the old one.
            let enforced = fresh.subscribe.enforced(&active.topic);
            let same = enforced.as_ref().map(|f| f.canonical()) == active.enforced.as_deref();
            if fresh
                .subscribe
                .allows_filter(&active.topic, &active.guard.sub.filter)
                && same
            {
                kept.push(active);
            } else {
                let err = ClientError::new(
                    ErrorCode::Forbidden,
                    "the new token does not cover this subscription",
                );
                self.guarded(send_error(socket, Some(&active.id), &err))
                    .await?;
            }
        }
        self.subs = kept;
        let reply = protocol::refreshed(fresh.expires_at);
        self.subject = fresh.subject;
        self.grants = fresh.subscribe;
        // The fresh token's grants are the subject's current ones.
        self.narrowed = None;
        self.guarded(send_text(socket, reply)).await
    }

    /// Applies grants an operator narrowed the subject to: each subscription
    /// they no longer allow (or whose enforced filter they change) ends with
    /// `unsubscribed`, reason `revoked`; the others go on untouched. Later
    /// subscribes need both the token's grants and these.
    pub(super) async fn narrow(
        &mut self,
        socket: &mut Socket,
        grants: Arc<Grants>,
    ) -> Result<(), Ending> {
        let mut ended: Vec<(Value, Arc<str>)> = Vec::new();
        let mut kept = Vec::with_capacity(self.subs.len());
        for active in std::mem::take(&mut self.subs) {
            let enforced = grants.enforced(&active.topic);
            let same = enforced.as_ref().map(|f| f.canonical()) == active.enforced.as_deref();
            if same && grants.allows_filter(&active.topic, &active.guard.sub.filter) {
                kept.push(active);
            } else {
                // Out of the index now: nothing more is queued for it.
                ended.push((active.id, active.topic));
            }
        }
        self.subs = kept;
        self.narrowed = Some(grants);
        if ended.is_empty() {
            return Ok(());
        }
        // What was queued before goes out ahead of the answers.
        self.flush_outbox(socket).await?;
        for (id, topic) in ended {
            let reply = protocol::unsubscribed_because(&id, &topic, "revoked");
            self.guarded(send_text(socket, reply)).await?;
        }
        Ok(())
    }

    /// A subscribe the narrowed grants (if any) do not allow is `forbidden`.
    pub(super) fn narrowed_allows(&self, req: &SubscribeRequest) -> Result<(), ClientError> {
        let Some(narrowed) = &self.narrowed else {
            return Ok(());
        };
        let filter = crate::session::filter_for(req, &self.state.config.limits)?;
        let same = narrowed
            .enforced(&req.topic)
            .map(|f| f.canonical().to_owned())
            == self
                .grants
                .enforced(&req.topic)
                .map(|f| f.canonical().to_owned());
        if same && narrowed.allows_filter(&req.topic, &filter) {
            Ok(())
        } else {
            Err(ClientError::new(
                ErrorCode::Forbidden,
                "not allowed to subscribe to these keys of this topic",
            ))
        }
    }
}
