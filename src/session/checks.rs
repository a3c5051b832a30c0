//! The checks every subscription (and view page) passes before it is served: its key filter and delivery spec within the limits and grants, its cursor, and whether its topic is ready on this node.

use std::sync::Arc;
use std::time::Duration;

use super::truncate;
use crate::auth::Grants;
use crate::config::LimitsConfig;
use crate::cursor::Cursor;
use crate::hub::{Filter, Topic};
use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};
use crate::shaping::{Fields, Spec, ValueFilter};
use crate::source::Source;
use crate::state::AppState;

/// Builds the key filter of a request, within the configured limits.
pub fn filter_for(req: &SubscribeRequest, limits: &LimitsConfig) -> Result<Filter, ClientError> {
    let bad = |m: String| ClientError::new(ErrorCode::BadFilter, m);
    let keys = match &req.keys {
        None => None,
        Some(keys) if keys.is_empty() => {
            return Err(bad(
                "`keys` is empty: leave it out to receive all keys".into()
            ))
        }
        Some(keys) if keys.len() > limits.max_keys_per_subscription => {
            return Err(ClientError::new(
                ErrorCode::TooManyKeys,
                format!(
                    "at most {} keys per subscription",
                    limits.max_keys_per_subscription
                ),
            ))
        }
        Some(keys) => {
            if let Some(long) = keys.iter().find(|k| k.len() > limits.max_key_bytes) {
                return Err(bad(format!(
                    "key of {} bytes is longer than {}",
                    long.len(),
                    limits.max_key_bytes
                )));
            }
            Some(
                keys.iter()
                    .map(|k| Arc::from(k.as_str()))
                    .collect::<crate::hub::KeySet>(),
            )
        }
    };
    let prefix = match &req.prefix {
        Some(p) if p.is_empty() => return Err(bad("`prefix` is empty".into())),
        Some(p) if p.len() > limits.max_key_bytes => {
            return Err(bad("`prefix` is too long".into()))
        }
        Some(p) => Some(p.clone().into_boxed_str()),
        None => None,
    };
    Ok(Filter::new(keys, prefix))
}

/// Builds the delivery spec of a request: the client's value filter ANDed
/// with the one `grants` enforce on the topic. `None`: a plain subscription.
pub fn spec_for(
    req: &SubscribeRequest,
    grants: &Grants,
    limits: &LimitsConfig,
) -> Result<Option<Arc<Spec>>, ClientError> {
    let client = match &req.filter {
        None => None,
        Some(value) => Some(
            ValueFilter::compile(value, &limits.filter_limits())
                .map_err(|e| ClientError::new(ErrorCode::BadFilter, e.0))?,
        ),
    };
    let filter = match (client, grants.enforced(&req.topic)) {
        (Some(client), Some(enforced)) => Some(client.and(&enforced)),
        (client, enforced) => client.or(enforced),
    };
    let fields = match &req.fields {
        None => None,
        Some(list) => Some(
            Fields::new(list, limits.max_filter_list)
                .map_err(|e| ClientError::new(ErrorCode::BadMessage, e))?,
        ),
    };
    let max_rate = match req.max_rate {
        None => None,
        Some(rate) if rate > 0.0 && rate.is_finite() && rate <= 1e6 => Some(rate),
        Some(_) => {
            return Err(ClientError::new(
                ErrorCode::BadMessage,
                "`max_rate` must be a number > 0 (records per second per key, at most 1000000)",
            ))
        }
    };
    let delta = match req.delta.as_deref() {
        None => false,
        Some("json-patch") => true,
        Some(_) => {
            return Err(ClientError::new(
                ErrorCode::BadMessage,
                "`delta` must be \"json-patch\"",
            ))
        }
    };
    Ok(Spec::new(filter, fields, max_rate, delta).map(Arc::new))
}

/// Decodes an optional cursor, as a client error when it is malformed.
pub fn parse_cursor(text: Option<&str>) -> Result<Option<Cursor>, ClientError> {
    match text {
        None => Ok(None),
        Some(t) => Cursor::decode(t)
            .map(Some)
            .map_err(|e| ClientError::new(ErrorCode::BadCursor, e.to_string())),
    }
}

/// How often a waiting subscribe looks again: readiness of the source and of
/// a topic not yet discovered has no wake-up of its own.
pub const READY_POLL: Duration = Duration::from_millis(25);

/// Whether a topic can be served on this node now.
pub enum Readiness {
    Ready(Arc<Topic>),
    /// Known (or configured by name or pattern) but its warm start, or the
    /// source's, is not done: never serve from a ring and view not yet filled.
    Warming,
    Unknown,
}

impl Readiness {
    pub fn is_warming(&self) -> bool {
        matches!(self, Readiness::Warming)
    }
}

/// Whether `topic_name` can be served on this node now.
pub fn readiness(state: &AppState, topic_name: &str) -> Readiness {
    match state.hub.topic(topic_name) {
        Ok(topic) if topic.is_ready() && state.source.is_ready() => Readiness::Ready(topic),
        Ok(_) => Readiness::Warming,
        // A configured topic (by name or pattern) this node has not learned yet is not unknown.
        Err(_) if !state.source.is_ready() && state.config.has_topic(topic_name) => {
            Readiness::Warming
        }
        Err(_) => Readiness::Unknown,
    }
}

/// Waits, for at most `limit`, while `topic_name` is [warming](Readiness::Warming)
/// on this node. Used by the transports whose subscribe owns its request
/// (SSE, gRPC); WebSocket parks the request instead so the connection's other
/// messages go on.
pub async fn until_ready(state: &AppState, topic_name: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return;
        }
        match state.hub.topic(topic_name) {
            // Only the topic's own warm start is left: its wake-up ends the wait.
            Ok(topic) if state.source.is_ready() => {
                topic.wait_ready(left).await;
                return;
            }
            _ if !readiness(state, topic_name).is_warming() => return,
            _ => tokio::time::sleep(READY_POLL.min(left)).await,
        }
    }
}

/// A request's key filter, delivery spec and topic, as [`admitted`] checked them.
pub type Admitted = (Filter, Option<Arc<Spec>>, Arc<Topic>);

/// What `grants` let `req` read: its key filter, its delivery spec and its
/// topic, ready on this node. The checks of every subscription, shared by
/// [`open`] and the view pages.
pub fn admitted(
    state: &AppState,
    grants: &Grants,
    req: &SubscribeRequest,
) -> Result<Admitted, ClientError> {
    let limits = &state.config.limits;
    // The control topic is the nodes' own: no client reads it, whatever its grants.
    if state.config.is_control_topic(&req.topic) {
        return Err(ClientError::new(
            ErrorCode::UnknownTopic,
            format!("unknown topic `{}`", truncate(&req.topic)),
        ));
    }
    let filter = filter_for(req, limits)?;
    if !grants.allows_filter(&req.topic, &filter) {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            "not allowed to subscribe to these keys of this topic",
        ));
    }
    let spec = spec_for(req, grants, limits)?;
    // Never serve from a ring and view the warm start has not filled: the
    // client would get an empty snapshot and then history as if it were live.
    let topic = match readiness(state, &req.topic) {
        Readiness::Ready(topic) => topic,
        Readiness::Warming => {
            return Err(ClientError::new(
                ErrorCode::Unavailable,
                format!(
                    "topic `{}` is warming up on this node: retry shortly",
                    truncate(&req.topic)
                ),
            ))
        }
        Readiness::Unknown => {
            // Configured and present in the log, but not readable (Kafka ACLs): say why.
            if let Some(cause) = state.source.unavailable_cause(&req.topic) {
                return Err(ClientError::new(
                    ErrorCode::Unavailable,
                    format!("topic `{}` is not served: {cause}", truncate(&req.topic)),
                ));
            }
            return Err(ClientError::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic `{}`", truncate(&req.topic)),
            ));
        }
    };
    Ok((filter, spec, topic))
}
