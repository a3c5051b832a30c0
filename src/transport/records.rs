//! `GET /topics/{topic}/records?cursor=C`: what a client missed since its cursor, in one request, read by the same catch-up a resuming subscription runs.
//!
//! An app that wakes up (a push notification, back to the foreground) asks
//! for what it missed without opening a socket. The request is opened as a
//! resume without a snapshot (`session::open`), and its catch-up is driven
//! until `limit` records or the position the registration read (`high`):
//! ring first, then the log through `LogReads` (`limits.catchup_concurrency`,
//! identical range reads shared). Admission, parameters, checks and the gap
//! decision are the subscription's, so the grants and error codes are too.
//!
//! A page that ends below `high` never changes: it carries an `ETag` and is
//! cacheable for `server.records_max_age` (`private` when a token shaped it);
//! one that reaches the head is `no-cache`, revalidated by its `ETag`.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::sse::{client_error_response, parse_params};
use super::view::{parse_limit, refuse_stream_parameters, DEFAULT_LIMIT};
use crate::admission::{self, Admission};
use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};
use crate::record::{push_json_str, Record};
use crate::session::{self, CatchUpError, Opened, Step};
use crate::state::AppState;

/// One answer: the records after the request's cursor and where they end.
struct Page {
    records: Vec<Arc<Record>>,
    /// Covers every record of the range, those the filters left out included.
    cursor: String,
    /// Records remained before the head when the page was read.
    more: bool,
    /// The cursor could not be honoured: (`reason`, earliest retained cursor).
    gap: Option<(&'static str, String)>,
}

/// `GET /topics/{topic}/records`: admitted and checked as a subscription to
/// `topic` resuming from `cursor` is, then
/// `{"records": [...], "cursor": "...", "more": bool, "recovered": bool}`
/// (and `gap` when the cursor is older than the log keeps).
pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Authenticate first: an unauthenticated caller learns nothing else.
    let Admission {
        identity,
        slot,
        outbox,
    } = match admission::admit(&state, &headers, query.as_deref(), peer, "records") {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_response(),
    };
    let answer = async {
        let (mut req, limit) = parse(query.as_deref().unwrap_or(""))?;
        req.topic = topic;
        req.snapshot = Some(false);
        let cursor = session::parse_cursor(req.cursor.as_deref())?;
        // A node that just started answers once the topic is warm, as `GET /sse` does.
        session::until_ready(&state, &req.topic, session::TOPIC_READY_WAIT).await;
        let mut opened = session::open(&state, &identity.subscribe, &req, cursor, outbox).await?;
        let page = read_page(&mut opened, limit).await?;
        let etag = etag(&req, limit, &opened, &page);
        Ok::<_, ClientError>((page, etag))
    }
    .await;
    drop(slot);
    let (page, etag) = match answer {
        Ok(answer) => answer,
        Err(e) => return client_error_response(&e),
    };
    let max_age = state.config.server.records_max_age.as_secs();
    // Below the head the range is fixed; at the head (or a gap, whose earliest
    // cursor moves with retention) only a revalidation may reuse it. An answer a
    // token shaped (its grants, its filter) must never reach another user.
    let cache_control = match (page.more && page.gap.is_none() && max_age > 0, &identity) {
        (false, _) => "no-cache".to_owned(),
        (true, id) if id.expires_at.is_some() => format!("private, max-age={max_age}, immutable"),
        (true, _) => format!("public, max-age={max_age}, immutable"),
    };
    let mut response = if matches(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = encode(&page).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    let out = response.headers_mut();
    // Both are ASCII: a quoted hex hash, and directives with a number.
    out.insert(header::ETAG, HeaderValue::from_str(&etag).expect("ascii"));
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&cache_control).expect("ascii"),
    );
    // A shared cache keeps an anonymous answer apart from one a token shaped.
    out.insert(
        header::VARY,
        HeaderValue::from_static("Authorization, Cookie"),
    );
    response
}

/// The query's subscription parameters (parsed as `GET /sse` parses them) and
/// the page's `limit`. Parameters that only shape a stream are refused.
fn parse(query: &str) -> Result<(SubscribeRequest, usize), ClientError> {
    let mut limit = None;
    let req = parse_params(query, |name, value| {
        if name == "limit" {
            limit = Some(parse_limit(value)?);
        }
        // `topic` is the path's; `access_token` and anything else are not ours.
        Ok(())
    })?;
    refuse_stream_parameters(&req, "a records page")?;
    if req.cursor.as_deref() == Some("") {
        return Err(ClientError::new(
            ErrorCode::BadCursor,
            "`cursor` is empty: leave it out to start at the head",
        ));
    }
    Ok((req, limit.unwrap_or(DEFAULT_LIMIT)))
}

/// Drives the catch-up of `opened` (a resume without a snapshot) until
/// `limit` records or the head as it stood at registration. One record more
/// than `limit` is read to tell whether any follow.
async fn read_page(opened: &mut Opened, limit: usize) -> Result<Page, ClientError> {
    if let Some(gap) = opened.gap.take() {
        // As a subscription's `gap`: nothing replayed, and it goes on from the
        // head; the client reloads its state (the view) or reads what is left
        // from `earliest`.
        return Ok(Page {
            records: Vec::new(),
            cursor: opened.cursor.clone(),
            more: false,
            gap: Some(gap),
        });
    }
    let mut records = Vec::new();
    let mut more = false;
    'read: loop {
        match opened.catch_up.next_batch().await {
            Ok(Some(Step::Records(batch))) => {
                for record in batch {
                    if records.len() == limit {
                        more = true;
                        break 'read;
                    }
                    records.push(record);
                }
            }
            // The head as registered: what follows would be live records.
            Ok(Some(Step::Live { .. })) | Ok(None) => break,
            Err(CatchUpError::Lost(e)) => {
                // Retention took part of the range while it was read: a retry answers with the gap.
                return Err(ClientError::new(
                    ErrorCode::Unavailable,
                    format!("the log dropped part of the range while it was read ({e}): retry"),
                ));
            }
            Err(CatchUpError::Closed(reason)) => {
                return Err(ClientError::new(
                    ErrorCode::Unavailable,
                    format!("the read was cut short ({reason:?}): retry"),
                ));
            }
        }
    }
    // Cut by `limit`: up to the last record sent (what the filters left out
    // before it is covered by its cursor). Otherwise the whole range.
    let cursor = match (more, records.last()) {
        (true, Some(last)) => last.cursor().to_owned(),
        _ => opened.catch_up.cursor(),
    };
    Ok(Page {
        records,
        cursor,
        more,
        gap: None,
    })
}

/// The answer's body: each record as the WebSocket `record` message.
fn encode(page: &Page) -> String {
    let size: usize = page.records.iter().map(|r| r.ws.len() + 1).sum();
    let mut body = String::with_capacity(size + page.cursor.len() + 96);
    body.push_str("{\"records\":[");
    for (i, record) in page.records.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(record.ws.as_str());
    }
    body.push_str("],\"cursor\":");
    push_json_str(&mut body, &page.cursor);
    body.push_str(",\"more\":");
    body.push_str(if page.more { "true" } else { "false" });
    body.push_str(",\"recovered\":");
    body.push_str(if page.gap.is_some() { "false" } else { "true" });
    if let Some((reason, earliest)) = &page.gap {
        body.push_str(",\"gap\":{\"reason\":");
        push_json_str(&mut body, reason);
        body.push_str(",\"earliest\":");
        push_json_str(&mut body, earliest);
        body.push('}');
    }
    body.push('}');
    body
}

/// A strong validator of the answer: the range (topic, where it starts and
/// ends) and everything that shapes it (the parameters, the token's enforced
/// filter). The hash is the standard library's, fixed for a build: nodes of a
/// fleet running one build agree, and a different build only costs a 200.
fn etag(req: &SubscribeRequest, limit: usize, opened: &Opened, page: &Page) -> String {
    let mut h = DefaultHasher::new();
    "records/1".hash(&mut h);
    req.topic.hash(&mut h);
    opened.cursor.hash(&mut h);
    page.cursor.hash(&mut h);
    page.more.hash(&mut h);
    page.gap.hash(&mut h);
    limit.hash(&mut h);
    let mut keys = req.keys.clone().unwrap_or_default();
    keys.sort_unstable();
    keys.hash(&mut h);
    req.prefix.hash(&mut h);
    req.filter.as_ref().map(|f| f.to_string()).hash(&mut h);
    req.fields.hash(&mut h);
    opened.enforced.hash(&mut h);
    format!("\"{:016x}\"", h.finish())
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak forms compare equal.
fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_parameters_and_refuses_stream_ones() {
        let (req, limit) = parse("cursor=abc&key=a&key=b&prefix=p&fields=x&limit=7").unwrap();
        assert_eq!(req.cursor.as_deref(), Some("abc"));
        assert_eq!(req.keys, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(req.prefix.as_deref(), Some("p"));
        assert_eq!(limit, 7);
        assert_eq!(parse("").unwrap().1, DEFAULT_LIMIT);
        for query in [
            "limit=0",
            "limit=1001",
            "snapshot=true",
            "resume=latest",
            "delta=json-patch",
            "max_rate=1",
            "cursor=",
            "filter=%7B",
        ] {
            assert!(parse(query).is_err(), "{query} is refused");
        }
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let tag = "\"00ff\"";
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(matches(&with("\"00ff\""), tag));
        assert!(matches(&with("\"aa\", W/\"00ff\""), tag));
        assert!(matches(&with("*"), tag));
        assert!(!matches(&with("\"00fe\""), tag));
        assert!(!matches(&HeaderMap::new(), tag));
    }
}
