//! `GET /topics/{topic}/view?after=KEY&limit=N`: a topic's view by page, in key order, with the cursor that resumes live after it.
//!
//! A page is read at one position, under the same partition locks a
//! subscription's registration takes for its snapshot (`Topic::view_after`),
//! so subscribing with the page's `cursor` delivers exactly the records
//! written after it: a page-by-page loader and a live subscription meet with
//! no gap and no duplicate. Each record has the JSON of a snapshot `record`
//! message, its cursor the page's. Admission, the key, prefix, filter and
//! field parameters and their checks are the SSE endpoint's.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::sse::{client_error_response, parse_params};
use crate::admission::{self, Admission};
use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};
use crate::record::{push_json_str, Framing, Record};
use crate::session;
use crate::shaping::Spec;
use crate::state::AppState;

/// Keys per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most keys one page may ask for.
pub const MAX_LIMIT: usize = 1000;

/// A page's own parameters, beside the subscription ones.
#[derive(Debug, Default)]
struct Paging {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /topics/{topic}/view`: admitted and checked as a subscription to
/// `topic` is, then one page of its view as
/// `{"records": [...], "cursor": "...", "next": KEY or null}`.
pub async fn handler(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // Authenticate first: an unauthenticated caller learns nothing else.
    let Admission { identity, slot, .. } =
        match admission::admit(&state, &headers, query.as_deref(), peer, "view") {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.into_response(),
        };
    let answer = async {
        let (mut req, paging) = parse(query.as_deref().unwrap_or(""))?;
        req.topic = topic;
        let max_key = state.config.limits.max_key_bytes;
        if paging
            .after
            .as_ref()
            .is_some_and(|after| after.len() > max_key)
        {
            return Err(bad("`after` is longer than the longest key allowed"));
        }
        // A node that just started answers once the topic is warm, as `GET /sse` does.
        session::until_ready(&state, &req.topic, session::TOPIC_READY_WAIT).await;
        let (filter, spec, topic) = session::admitted(&state, &identity.subscribe, &req)?;
        let limit = paging.limit.unwrap_or(DEFAULT_LIMIT);
        // Without a value filter a page (and whether more follow) is among the
        // first `limit + 1` keys of each partition; with one, any key may be.
        let take = spec
            .as_ref()
            .is_none_or(|s| s.filter.is_none())
            .then_some(limit + 1);
        let mut page =
            session::view_page(&state, &topic, &filter, paging.after.as_deref(), take).await?;
        let cursor = topic.encode_cursor(&page.high);
        Ok::<_, ClientError>(encode_page(
            &topic.name,
            &mut page.records,
            spec.as_deref(),
            limit,
            &cursor,
        ))
    }
    .await;
    drop(slot);
    match answer {
        Ok(body) => {
            let mut response = body.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // A page is one moment of the view: never to be served again from a cache.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => client_error_response(&e),
    }
}

fn bad(message: &str) -> ClientError {
    ClientError::new(ErrorCode::BadMessage, message)
}

/// The query's subscription parameters (parsed as `GET /sse` parses them)
/// and its paging ones. Parameters that only make sense for a stream are refused.
fn parse(query: &str) -> Result<(SubscribeRequest, Paging), ClientError> {
    let mut paging = Paging::default();
    let req = parse_params(query, |name, value| {
        match name {
            "after" => paging.after = Some(value.to_owned()),
            "limit" => paging.limit = Some(parse_limit(value)?),
            // `topic` is the path's; `access_token` and anything else are not ours.
            _ => {}
        }
        Ok(())
    })?;
    if req.cursor.is_some() {
        return Err(bad(
            "`cursor` applies to a subscription, not to a view page",
        ));
    }
    refuse_stream_parameters(&req, "a view page")?;
    Ok((req, paging))
}

/// A page's `limit`: 1 to [`MAX_LIMIT`] (the records pages share it).
pub(super) fn parse_limit(value: &str) -> Result<usize, ClientError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            bad(&format!(
                "`limit` must be a whole number from 1 to {MAX_LIMIT}"
            ))
        })
}

/// Refuses the parameters that only shape a stream (a snapshot, a resume
/// mode, deltas, a rate) in a request for `what`, a one-shot page.
pub(super) fn refuse_stream_parameters(
    req: &SubscribeRequest,
    what: &str,
) -> Result<(), ClientError> {
    let streaming_only = [
        ("snapshot", req.snapshot.is_some()),
        ("resume", req.resume.is_some()),
        ("delta", req.delta.is_some()),
        ("max_rate", req.max_rate.is_some()),
    ];
    match streaming_only.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(bad(&format!(
            "`{name}` applies to a subscription, not to {what}"
        ))),
        None => Ok(()),
    }
}

/// Encodes one page: the first `limit` of `candidates` in key order that the
/// spec's value filter admits, projected onto its fields, each reframed as a
/// snapshot record at `cursor`.
fn encode_page(
    topic: &str,
    candidates: &mut Vec<Arc<Record>>,
    spec: Option<&Spec>,
    limit: usize,
    cursor: &str,
) -> String {
    // Key order; a key a producer wrote to more than one partition counts
    // once, with its latest value (by timestamp, then partition).
    candidates.sort_unstable_by(|a, b| {
        a.key
            .cmp(&b.key)
            .then(b.timestamp().cmp(&a.timestamp()))
            .then(b.partition.cmp(&a.partition))
    });
    candidates.dedup_by(|later, first| later.key == first.key);
    let mut admitted = candidates
        .iter()
        .filter(|r| spec.is_none_or(|s| s.admits(r.key.as_deref(), r.data())));
    let mut body = String::from("{\"records\":[");
    let mut last_key = None;
    for (i, record) in admitted.by_ref().take(limit).enumerate() {
        if i > 0 {
            body.push(',');
        }
        let shaped = spec.and_then(|s| s.shape(topic, record));
        let record = shaped.as_ref().unwrap_or(record);
        let framed = record.reframe(topic, cursor, Framing::Snapshot { with_id: false });
        body.push_str(framed.ws.as_str());
        last_key = record.key.clone();
    }
    body.push_str("],\"cursor\":\"");
    body.push_str(cursor);
    body.push_str("\",\"next\":");
    match (last_key, admitted.next().is_some()) {
        (Some(key), true) => push_json_str(&mut body, &key),
        _ => body.push_str("null"),
    }
    body.push('}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogRecord;

    fn record(partition: u32, key: &str, timestamp: i64, data: &str) -> Arc<Record> {
        let log = LogRecord {
            trace: None,
            partition,
            offset: 1,
            timestamp,
            key: Some(Arc::from(key)),
            data: data.into(),
            extra: None,
            delete: false,
            position: None,
        };
        Arc::new(Record::encode("t", &log, "OLD", Framing::Normal))
    }

    #[test]
    fn a_page_is_in_key_order_once_per_key_latest_first_with_next() {
        // "b" in two partitions (a producer's own partitioner): the later one counts.
        let mut candidates = vec![
            record(1, "c", 5, "3"),
            record(0, "b", 9, "20"),
            record(2, "a", 5, "1"),
            record(1, "b", 4, "2"),
        ];
        let body = encode_page("t", &mut candidates, None, 2, "CUR");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        let keys: Vec<_> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].clone())
            .collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(page["records"][1]["data"], 20);
        assert_eq!(page["records"][1]["cursor"], "CUR");
        assert_eq!(page["records"][1]["snapshot"], true);
        assert_eq!(page["cursor"], "CUR");
        assert_eq!(page["next"], "b");
        let body = encode_page("t", &mut candidates, None, 3, "CUR");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["records"].as_array().unwrap().len(), 3);
        assert_eq!(page["next"], serde_json::Value::Null);
    }

    #[test]
    fn parses_paging_and_refuses_stream_parameters() {
        let (req, paging) = parse("after=k%201&limit=5&key=a&field=x&fields=y").unwrap();
        assert_eq!(paging.after.as_deref(), Some("k 1"));
        assert_eq!(paging.limit, Some(5));
        assert_eq!(req.keys, Some(vec!["a".to_owned()]));
        assert_eq!(req.fields, Some(vec!["x".to_owned(), "y".to_owned()]));
        for query in [
            "limit=0",
            "limit=1001",
            "limit=-1",
            "limit=ten",
            "cursor=abc",
            "snapshot=true",
            "delta=json-patch",
            "max_rate=2",
            "resume=latest",
            "filter=%7B",
        ] {
            assert!(parse(query).is_err(), "{query} is refused");
        }
        assert_eq!(parse("limit=1000").unwrap().1.limit, Some(1000));
    }
}
