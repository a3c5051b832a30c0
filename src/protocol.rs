//! The client protocol: messages clients send, control messages the server sends, error and close codes.
//!
//! Records themselves are encoded once in `crate::record`; this module only
//! builds the per-connection control messages (`subscribed`, `gap`, `error`,
//! `pong`), which are off the fan-out path.

use serde::Deserialize;
use serde_json::{json, Value};

/// WebSocket close codes the server uses. 1xxx are RFC 6455's; 4xxx are ours.
pub mod close {
    /// Normal closure (answering a client's close).
    pub const NORMAL: u16 = 1000;
    /// The client broke the WebSocket framing rules.
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const BAD_DATA: u16 = 1007;
    /// The client broke the protocol in a way that ends the connection.
    pub const POLICY: u16 = 1008;
    /// A message or frame over `limits.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed; reconnect and resume.
    pub const INTERNAL: u16 = 1011;
    /// The server is restarting (shutdown drain); reconnect and resume.
    pub const RESTART: u16 = 1012;
    /// The client fell `limits.queue_bytes` behind; reconnect and resume from the last cursor.
    pub const SLOW: u16 = 4001;
    /// A resume could not be completed (the log dropped the range being replayed).
    pub const RECOVERY_LOST: u16 = 4002;
    /// The token's subject or the token itself (`jti`) was revoked (`POST /admin/revocations`).
    pub const REVOKED: u16 = 4003;
    /// The topic was recreated (new epoch: resubscribe; the old cursor gets
    /// `recovered: false`) or deleted (resubscribing answers `unknown_topic`).
    pub const TOPIC_RESET: u16 = 4004;
    /// The client sent no frame (not even a pong) for two ping intervals, or
    /// never subscribed within `websocket.subscribe_timeout`.
    pub const IDLE: u16 = 4008;
    /// The token expired and no fresh one came within `auth.expiry_grace`.
    pub const TOKEN_EXPIRED: u16 = 4010;
}

/// Error codes carried by `{"type":"error"}` messages (and JSON HTTP errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadJson,
    BadMessage,
    UnknownType,
    UnknownTopic,
    BadCursor,
    BadFilter,
    AlreadySubscribed,
    NotSubscribed,
    TooManySubscriptions,
    TooManyKeys,
    Forbidden,
    Unauthorized,
    Unavailable,
    /// The connection's token was revoked (SSE: the last event of the stream).
    Revoked,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadMessage => "bad_message",
            Self::UnknownType => "unknown_type",
            Self::UnknownTopic => "unknown_topic",
            Self::BadCursor => "bad_cursor",
            Self::BadFilter => "bad_filter",
            Self::AlreadySubscribed => "already_subscribed",
            Self::NotSubscribed => "not_subscribed",
            Self::TooManySubscriptions => "too_many_subscriptions",
            Self::TooManyKeys => "too_many_keys",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::Unavailable => "unavailable",
            Self::Revoked => "revoked",
            Self::Internal => "internal",
        }
    }
}

/// A protocol error to report to the client; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What a client asks to subscribe to (WebSocket message or SSE query).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub id: Option<Value>,
    pub topic: String,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub snapshot: Option<bool>,
    /// A value filter on records' `data` (see `shaping::filter`).
    #[serde(default)]
    pub filter: Option<Value>,
    /// Paths of `data` to receive (a projection).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// At most this many records per second per key (conflation).
    #[serde(default)]
    pub max_rate: Option<f64>,
    /// `"all"` (default) or `"latest"`: a resume sends only each key's latest missed record.
    #[serde(default)]
    pub resume: Option<String>,
    /// `"json-patch"`: later records of a key carry an RFC 6902 patch instead of `data`.
    #[serde(default)]
    pub delta: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Subscribe(SubscribeRequest),
    /// By subscription id, or by topic.
    Unsubscribe {
        id: Option<Value>,
        topic: Option<String>,
    },
    Ping {
        id: Option<Value>,
    },
    /// A fresh token for a connection whose token is about to expire.
    Refresh {
        token: String,
    },
}

impl PartialEq for SubscribeRequest {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.topic == other.topic
            && self.keys == other.keys
            && self.prefix == other.prefix
            && self.cursor == other.cursor
            && self.snapshot == other.snapshot
            && self.filter == other.filter
            && self.fields == other.fields
            && self.max_rate == other.max_rate
            && self.resume == other.resume
            && self.delta == other.delta
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeBody {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    topic: Option<String>,
}

#[derive(Deserialize)]
struct RefreshBody {
    token: String,
}

#[derive(Deserialize)]
struct PingBody {
    #[serde(default)]
    id: Option<Value>,
}

/// Longest client-chosen id we echo back.
const MAX_ID_LEN: usize = 128;

impl ClientMessage {
    /// Parses one text frame. Never panics; every failure is a [`ClientError`].
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let envelope: Envelope = serde_json::from_str(text)
            .map_err(|e| ClientError::new(ErrorCode::BadJson, format!("not a JSON object: {e}")))?;
        let bad = |e: serde_json::Error| ClientError::new(ErrorCode::BadMessage, e.to_string());
        let message = match envelope.kind.as_deref() {
            Some("subscribe") => {
                let req: SubscribeRequest = serde_json::from_str(text).map_err(bad)?;
                ClientMessage::Subscribe(req)
            }
            Some("unsubscribe") => {
                let body: UnsubscribeBody = serde_json::from_str(text).map_err(bad)?;
                if body.id.is_none() && body.topic.is_none() {
                    return Err(ClientError::new(
                        ErrorCode::BadMessage,
                        "unsubscribe needs an id or a topic",
                    ));
                }
                ClientMessage::Unsubscribe {
                    id: body.id,
                    topic: body.topic,
                }
            }
            Some("ping") => {
                let body: PingBody = serde_json::from_str(text).map_err(bad)?;
                ClientMessage::Ping { id: body.id }
            }
            Some("refresh") => {
                let body: RefreshBody = serde_json::from_str(text).map_err(bad)?;
                ClientMessage::Refresh { token: body.token }
            }
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                return Err(ClientError::new(
                    ErrorCode::UnknownType,
                    format!("unknown message type `{shown}`"),
                ));
            }
            None => {
                return Err(ClientError::new(
                    ErrorCode::BadMessage,
                    "message has no `type`",
                ))
            }
        };
        match &message {
            ClientMessage::Subscribe(SubscribeRequest { id, .. })
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Ping { id } => check_id(id.as_ref())?,
            ClientMessage::Refresh { .. } => {}
        }
        Ok(message)
    }
}

fn check_id(id: Option<&Value>) -> Result<(), ClientError> {
    match id {
        None | Some(Value::Number(_)) => Ok(()),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(()),
        _ => Err(ClientError::new(
            ErrorCode::BadMessage,
            "`id` must be a number or a string of at most 128 bytes",
        )),
    }
}

/// The subscription starts at `cursor`; `snapshot` records follow. `partial`:
/// why the snapshot lacks keys of the view (`snapshot_partial`, never silent).
pub fn subscribed(
    id: &Value,
    topic: &str,
    cursor: &str,
    recovered: bool,
    snapshot: usize,
    partial: Option<&str>,
) -> String {
    let mut subscribed = json!({
        "type": "subscribed",
        "id": id,
        "topic": topic,
        "cursor": cursor,
        "recovered": recovered,
        "snapshot": snapshot,
    });
    if let Some(reason) = partial {
        subscribed["snapshot_partial"] = json!(true);
        subscribed["snapshot_partial_reason"] = json!(reason);
    }
    subscribed.to_string()
}

/// Catch-up is over: `replayed` records were replayed; what follows is live.
/// `cursor` (subscriptions with a filter) covers what the filter left out.
/// `compacted` (`resume: "latest"`) counts the missed records left out
/// because a later record of their key was sent. `skipped` (a partial
/// snapshot) counts the keys the snapshot left out.
pub fn live(
    id: &Value,
    topic: &str,
    replayed: usize,
    cursor: Option<&str>,
    compacted: Option<usize>,
    skipped: Option<usize>,
) -> String {
    let mut live = json!({"type": "live", "id": id, "topic": topic, "replayed": replayed});
    if let Some(cursor) = cursor {
        live["cursor"] = json!(cursor);
    }
    if let Some(compacted) = compacted {
        live["compacted"] = json!(compacted);
    }
    if let Some(skipped) = skipped {
        live["snapshot_skipped"] = json!(skipped);
    }
    live.to_string()
}

pub fn unsubscribed(id: &Value, topic: &str) -> String {
    json!({"type": "unsubscribed", "id": id, "topic": topic}).to_string()
}

/// A subscription the server ended: `reason` is `revoked` (the subject's
/// grants were narrowed by an operator and no longer allow it).
pub fn unsubscribed_because(id: &Value, topic: &str, reason: &str) -> String {
    json!({"type": "unsubscribed", "id": id, "topic": topic, "reason": reason}).to_string()
}

/// A resume that cannot be honoured: `earliest` is the oldest position still retained.
pub fn gap(id: &Value, topic: &str, reason: &str, earliest: &str) -> String {
    json!({
        "type": "gap",
        "id": id,
        "topic": topic,
        "reason": reason,
        "earliest": earliest,
    })
    .to_string()
}

pub fn error(id: Option<&Value>, err: &ClientError) -> String {
    json!({
        "type": "error",
        "id": id,
        "code": err.code.as_str(),
        "message": err.message,
    })
    .to_string()
}

/// Sent when the token expires: the connection closes (4010) after `grace_ms` unless refreshed.
pub fn token_expiring(grace_ms: u128) -> String {
    json!({"type": "token_expiring", "grace_ms": grace_ms as u64}).to_string()
}

pub fn refreshed(expires_at: Option<u64>) -> String {
    json!({"type": "refreshed", "expires_at": expires_at}).to_string()
}

pub fn pong(id: Option<&Value>) -> String {
    json!({"type": "pong", "id": id}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message() {
        let m = ClientMessage::parse(
            r#"{"type":"subscribe","id":1,"topic":"prices","keys":["A"],"snapshot":false}"#,
        )
        .unwrap();
        let ClientMessage::Subscribe(req) = m else {
            panic!("subscribe")
        };
        assert_eq!(req.keys, Some(vec!["A".to_owned()]));
        assert_eq!(req.snapshot, Some(false));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { id: None })
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"unsubscribe","topic":"t"}"#),
            Ok(ClientMessage::Unsubscribe { .. })
        ));
    }

    #[test]
    fn reports_what_is_wrong() {
        let code = |s: &str| ClientMessage::parse(s).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"type":"subscribe","topic":5}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(code(r#"{"type":"unsubscribe"}"#), ErrorCode::BadMessage);
        assert_eq!(
            code(r#"{"type":"ping","id":{"a":1}}"#),
            ErrorCode::BadMessage
        );
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadMessage);
    }
}
