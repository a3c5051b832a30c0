//! Subscriptions from the token: the grants claim's `subscribe_on_connect` list, read into subscribe requests.
//!
//! Each entry takes the fields of a WebSocket `subscribe` (`topic`, `keys`,
//! `prefix`, `filter`, `fields`, `delta`, `max_rate`, `snapshot`, `resume`);
//! `id` and `cursor` are the server's and the client's, so an entry naming
//! them, or any other member, is refused. The server names entry `N` (from 0,
//! in list order) `token-N`. `{sub}` in `keys` and `prefix` becomes the
//! token's `sub` (not in `topic` or `filter`). An entry that cannot be read
//! is kept as its error, so the transport reports it under its id instead of
//! dropping it silently. Grants are not checked here: the entry is then
//! opened like any client's subscribe, through the same checks.

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};

/// The member of the grants claim that holds the list.
pub const CLAIM_MEMBER: &str = "subscribe_on_connect";

/// The placeholder replaced by the token's subject.
const SUBJECT: &str = "{sub}";

/// What the server names the token's subscriptions: `token-0`, `token-1`, …
pub const ID_PREFIX: &str = "token-";

/// One entry of `subscribe_on_connect`: its server-chosen id and the request
/// to open (with that id), or why it cannot be opened.
#[derive(Debug, Clone)]
pub struct TokenSub {
    pub id: String,
    pub request: Result<SubscribeRequest, ClientError>,
}

/// The fields an entry may have: a `subscribe` message's, less `id` and `cursor`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    topic: String,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    delta: Option<String>,
    #[serde(default)]
    max_rate: Option<f64>,
    #[serde(default)]
    snapshot: Option<bool>,
    #[serde(default)]
    resume: Option<String>,
}

/// Reads `subscribe_on_connect` from the grants claim. A missing member is no
/// entries; a member that is not a list is one entry in error (`token-0`), so
/// the mistake shows.
pub fn parse(grants: Option<&Value>, subject: Option<&str>) -> Vec<TokenSub> {
    let Some(list) = grants.and_then(|g| g.get(CLAIM_MEMBER)) else {
        return Vec::new();
    };
    let Some(items) = list.as_array() else {
        return vec![TokenSub {
            id: format!("{ID_PREFIX}0"),
            request: Err(ClientError::new(
                ErrorCode::BadMessage,
                format!("the token's `{CLAIM_MEMBER}` is not a list"),
            )),
        }];
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let id = format!("{ID_PREFIX}{i}");
            let request = entry(item, subject).map(|mut req| {
                req.id = Some(Value::String(id.clone()));
                req
            });
            TokenSub { id, request }
        })
        .collect()
}

fn entry(item: &Value, subject: Option<&str>) -> Result<SubscribeRequest, ClientError> {
    let entry = Entry::deserialize(item).map_err(|e| {
        ClientError::new(
            ErrorCode::BadMessage,
            format!("the token's `{CLAIM_MEMBER}` entry: {e}"),
        )
    })?;
    let fill = |text: String| -> Result<String, ClientError> {
        if !text.contains(SUBJECT) {
            return Ok(text);
        }
        match subject {
            Some(sub) => Ok(text.replace(SUBJECT, sub)),
            None => Err(ClientError::new(
                ErrorCode::BadMessage,
                "the token's entry uses `{sub}` but the token has no `sub`",
            )),
        }
    };
    let keys = entry
        .keys
        .map(|keys| keys.into_iter().map(fill).collect::<Result<Vec<_>, _>>())
        .transpose()?;
    let prefix = entry.prefix.map(fill).transpose()?;
    Ok(SubscribeRequest {
        id: None,
        topic: entry.topic,
        keys,
        prefix,
        cursor: None,
        snapshot: entry.snapshot,
        filter: entry.filter,
        fields: entry.fields,
        max_rate: entry.max_rate,
        resume: entry.resume,
        delta: entry.delta,
    })
}

/// The cursors a reconnecting WebSocket hands back for the token's
/// subscriptions: `cursor.token-N=<cursor>` query parameters of `GET /ws`.
pub fn set_ws_cursors(subs: &mut [TokenSub], query: Option<&str>) {
    let Some(query) = query else { return };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some(id) = name.strip_prefix("cursor.") else {
            continue;
        };
        let found = subs.iter_mut().find(|s| s.id == id);
        if let Some(Ok(req)) = found.map(|s| s.request.as_mut()) {
            req.cursor = Some(value.into_owned());
        }
    }
}

/// The subscription `GET /sse` opens without a `topic`: `None` when the query
/// names a topic or the token has no entries (the usual `topic is required`
/// then); the one entry; or an error when there are several (one stream
/// carries one subscription) or the query asks for more than a `cursor`.
pub fn for_sse(subs: &[TokenSub], query: &str) -> Option<Result<SubscribeRequest, ClientError>> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    if subs.is_empty() || params.iter().any(|(n, _)| n == "topic") {
        return None;
    }
    let [only] = subs else {
        return Some(Err(ClientError::new(
            ErrorCode::BadMessage,
            format!(
                "the token subscribes to {} entries and a stream carries one: \
                 use GET /ws, or one `topic` per stream",
                subs.len()
            ),
        )));
    };
    let shaping = [
        "key", "field", "fields", "prefix", "filter", "snapshot", "resume", "delta", "max_rate",
    ];
    if let Some((name, _)) = params.iter().find(|(n, _)| shaping.contains(&n.as_str())) {
        return Some(Err(ClientError::new(
            ErrorCode::BadMessage,
            format!("`{name}` needs a `topic`: without one the token's subscription is opened as the token says"),
        )));
    }
    let cursor = params
        .into_iter()
        .find(|(n, _)| n == "cursor")
        .map(|(_, v)| v);
    Some(only.request.clone().map(|mut req| {
        req.cursor = cursor;
        req
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_get_ids_and_the_subject() {
        let claim = json!({"subscribe_on_connect": [
            {"topic": "notes", "keys": ["{sub}"]},
            {"topic": "news", "prefix": "eu.{sub}.", "snapshot": false},
            {"topic": "bad", "cursor": "x"},
        ]});
        let subs = parse(Some(&claim), Some("alice"));
        assert_eq!(subs.len(), 3);
        let a = subs[0].request.as_ref().unwrap();
        assert_eq!(a.id, Some(json!("token-0")));
        assert_eq!(a.keys, Some(vec!["alice".to_owned()]));
        let b = subs[1].request.as_ref().unwrap();
        assert_eq!(b.prefix.as_deref(), Some("eu.alice."));
        assert_eq!(b.snapshot, Some(false));
        assert_eq!(subs[2].id, "token-2");
        assert!(subs[2].request.is_err(), "`cursor` is not the token's");
    }

    #[test]
    fn no_subject_no_placeholder() {
        let claim = json!({"subscribe_on_connect": [{"topic": "notes", "keys": ["{sub}"]}]});
        let subs = parse(Some(&claim), None);
        assert!(subs[0]
            .request
            .as_ref()
            .unwrap_err()
            .message
            .contains("sub"));
        assert!(parse(Some(&json!({})), None).is_empty());
        assert!(parse(Some(&json!({"subscribe_on_connect": 3})), None)[0]
            .request
            .is_err());
    }

    #[test]
    fn ws_cursors_and_sse() {
        let claim = json!({"subscribe_on_connect": [{"topic": "notes"}]});
        let mut subs = parse(Some(&claim), None);
        set_ws_cursors(
            &mut subs,
            Some("access_token=t&cursor.token-0=abc&cursor.token-9=z"),
        );
        assert_eq!(
            subs[0].request.as_ref().unwrap().cursor.as_deref(),
            Some("abc")
        );
        let req = for_sse(&subs, "cursor=c1").unwrap().unwrap();
        assert_eq!(req.cursor.as_deref(), Some("c1"));
        assert!(for_sse(&subs, "topic=x").is_none());
        assert!(for_sse(&subs, "key=k").unwrap().is_err());
        assert!(for_sse(&[], "").is_none());
        let two = json!({"subscribe_on_connect": [{"topic": "a"}, {"topic": "b"}]});
        assert!(for_sse(&parse(Some(&two), None), "").unwrap().is_err());
    }
}
