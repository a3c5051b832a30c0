//! Admission of a streaming client (WebSocket or SSE): its token, its address's connection limit, and its connection slot.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::auth::{self, Identity};
use crate::outbox::Outbox;
use crate::reply::{json_error, unauthorized, unavailable};
use crate::state::{AppState, ConnectionSlot, Refused};

/// A streaming client let in: who it is and the connection slot it holds.
pub struct Admission {
    pub identity: Identity,
    pub slot: ConnectionSlot,
    /// The connection's queue, known to the admin API's registry (every
    /// subscription of the connection feeds it).
    pub outbox: Arc<Outbox>,
}

/// Why a streaming client was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    TooManyFromIp,
    Unavailable,
    /// Over `limits.connect_rate`: retry after a moment.
    Busy,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => unauthorized(),
            Refusal::TooManyFromIp => json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "too many connections from this address",
            ),
            Refusal::Unavailable => unavailable("not accepting connections"),
            Refusal::Busy => unavailable("too many new connections right now: retry shortly"),
        }
    }
}

/// Authenticates a streaming (WebSocket or SSE) client and takes its connection slot.
pub fn admit(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
    transport: &'static str,
) -> Result<Admission, Refusal> {
    // First and cheapest: under a storm, refuse before any token is verified.
    if !state.connect_limiter.allow() {
        crate::telemetry::connection_refused("rate");
        return Err(Refusal::Busy);
    }
    let token = auth::token_from(headers, query, &state.config.auth.cookie);
    if token.is_none() && !state.config.auth.anonymous_subscribe {
        return Err(Refusal::Unauthorized);
    }
    let identity = state.auth.identify(token.as_deref()).map_err(|e| {
        tracing::debug!(error = %e, %peer, "authentication failed");
        Refusal::Unauthorized
    })?;
    let ip = crate::proxy::client_ip(peer, headers, &state.config.server.trusted_proxies);
    let outbox = Arc::new(Outbox::new(state.config.limits.queue_bytes));
    let slot = state
        .connection_slot(transport, ip, &identity, &outbox)
        .map_err(|refused| match refused {
            Refused::TooManyFromIp => Refusal::TooManyFromIp,
            Refused::TooMany | Refused::Draining => Refusal::Unavailable,
        })?;
    // A revocation applied between the token check and the registration
    // above found no connection to end: look again now that it is registered.
    if state
        .auth
        .revocations
        .refuses(identity.subject.as_deref(), identity.jti.as_deref())
    {
        return Err(Refusal::Unauthorized);
    }
    Ok(Admission {
        identity,
        slot,
        outbox,
    })
}
