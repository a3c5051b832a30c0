//! Opening one subscription: the request checked, the registration, the recovery decision, and the catch-up it starts with.

use super::*;
use crate::auth::Grants;
use crate::cursor::Cursor;
use crate::hub::{Registration, ResolveError, SubscribeOptions};
use crate::outbox::Outbox;
use crate::protocol::{ClientError, ErrorCode, SubscribeRequest};

/// Registers a subscription for `req` on `outbox` and decides how it catches up.
#[tracing::instrument(name = "subscription", skip_all, fields(topic = %req.topic))]
pub async fn open(
    state: &AppState,
    grants: &Grants,
    req: &SubscribeRequest,
    cursor: Option<Cursor>,
    outbox: Arc<Outbox>,
) -> Result<Opened, ClientError> {
    let limits = &state.config.limits;
    // The connection's span: the parent of this subscription's catch-up span.
    let connection_trace = outbox.trace().copied();
    let latest = match req.resume.as_deref() {
        None | Some("all") => false,
        Some("latest") => true,
        Some(_) => {
            return Err(ClientError::new(
                ErrorCode::BadMessage,
                "`resume` must be \"all\" or \"latest\"",
            ))
        }
    };
    let (filter, spec, topic) = admitted(state, grants, req)?;
    let enforced = grants.enforced(&req.topic).map(|f| f.canonical().into());
    if topic.has_shard_positions() && req.max_rate.is_some() {
        return Err(ClientError::new(
            ErrorCode::BadMessage,
            "`max_rate` is not supported on Kinesis topics yet",
        ));
    }
    // Shard topics (Kinesis): the cursor's positions become this node's
    // ordinals. A cursor of the other kind is answered like a foreign epoch, one
    // older than anything held like one past retention; a client ahead of this
    // node retries (another node, or this one a moment later, serves it exactly).
    let mut forced_gap = None;
    let cursor = match cursor.map(|c| topic.resolve_cursor(&c)) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(ResolveError::Ahead)) => {
            return Err(ClientError::new(
                ErrorCode::Unavailable,
                format!(
                    "this node has not read `{}` as far as the cursor yet: retry shortly",
                    truncate(&req.topic)
                ),
            ))
        }
        Some(Err(ResolveError::Foreign)) => {
            forced_gap = Some("epoch");
            Some(Cursor::new(topic.epoch, Vec::new()))
        }
        Some(Err(ResolveError::Retention)) => {
            forced_gap = Some("retention");
            Some(Cursor::new(topic.epoch, Vec::new()))
        }
    };
    // Partitions are only ever added: a cursor of this incarnation naming more
    // than this node knows may come from a node that saw them first. Once this
    // node's count is confirmed (final, or a metadata refresh started after the
    // request says so) and still short, no node will ever serve it: bad_cursor.
    // Unconfirmed, retrying resumes it exactly; a gap would not.
    if let Some(c) = &cursor {
        let names_more = |c: &Cursor| {
            c.epoch == topic.epoch && c.offsets.len() > topic.partition_count() as usize
        };
        if names_more(c) {
            if !state.source.confirm_partition_counts().await {
                return Err(ClientError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the cursor names partitions of `{}` this node has not seen yet: retry shortly",
                        truncate(&req.topic)
                    ),
                ));
            }
            if names_more(c) {
                return Err(ClientError::new(
                    ErrorCode::BadCursor,
                    format!(
                        "the cursor names {} partitions; `{}` has {}",
                        c.offsets.len(),
                        truncate(&req.topic),
                        topic.partition_count()
                    ),
                ));
            }
        }
    }
    let want_snapshot = req.snapshot.unwrap_or(true);
    let mut options = Some(SubscribeOptions {
        filter,
        spec,
        outbox,
        cursor: if forced_gap.is_some() {
            None
        } else {
            cursor.as_ref()
        },
        snapshot: want_snapshot,
        max_snapshot: limits.max_snapshot_records,
        backlog_limit: limits.queue_bytes,
        stored: None,
    });
    // Registered with the source's stored view pinned at the hub's position
    // (the embedded log), so keys the in-memory view evicted come from disk.
    let mut reg: Registration = off_the_worker(|| {
        let mut registered = None;
        state.source.pinned_view(&topic.name, &mut |stored| {
            if let Some(options) = options.take() {
                registered = Some(topic.register(SubscribeOptions { stored, ..options }));
            }
        });
        // A source that did not call back: registered without a stored view.
        registered.or_else(|| options.take().map(|options| topic.register(options)))
    })
    .ok_or_else(|| ClientError::new(ErrorCode::Internal, "registration did not run"))?;
    let guard = SubGuard {
        topic: Arc::clone(&topic),
        sub: Arc::clone(&reg.sub),
    };
    let partitions = reg.high.len();

    let mut gap_reason = reg.foreign_cursor.then_some("epoch").or(forced_gap);
    let mut earliest = None;
    if let (Some(_), None) = (&cursor, gap_reason) {
        if reg.replay.iter().any(|r| matches!(r, Replay::Log { .. })) {
            let e = state
                .source
                .earliest(&topic.name)
                .await
                .map_err(|e| ClientError::new(ErrorCode::Unavailable, e.to_string()))?;
            let below = reg.replay.iter().any(|r| match r {
                Replay::Log {
                    partition, from, ..
                } => *from < e.get(*partition as usize).copied().unwrap_or(0),
                Replay::Ring { .. } => false,
            });
            if below {
                gap_reason = Some("retention");
            }
            earliest = Some(e);
        }
    }

    // Only a snapshot that is sent lists its stored keys (a resume from the
    // log takes one in case the cursor is unrecoverable, and sends none).
    let sends_snapshot = match (&cursor, gap_reason) {
        (Some(c), None) => c.snapshot_after.is_some(),
        _ => true,
    };
    if reg.needs_store() && sends_snapshot {
        // Listing the stored keys reads the disk, ordering a large snapshot takes
        // a core for a while: off the async workers, and a few at a time, so a
        // crowd subscribing to a big view cannot take every core from the
        // connections being served.
        let _turn = SNAPSHOT_PREPARATION
            .acquire()
            .await
            .map_err(|e| ClientError::new(ErrorCode::Unavailable, e.to_string()))?;
        let (back, listed) = tokio::task::spawn_blocking(move || {
            let listed = reg.complete();
            (reg, listed)
        })
        .await
        .map_err(|e| ClientError::new(ErrorCode::Unavailable, e.to_string()))?;
        listed.map_err(|e| {
            ClientError::new(ErrorCode::Unavailable, format!("the log's view: {e}"))
        })?;
        reg = back;
    }
    let stored = reg.stored_view();
    let high_cursor = topic.encode_cursor(&reg.high);
    let mut segments = VecDeque::new();
    let mut partial = None;
    // A cursor with a snapshot position: replay the keys the client holds, then stream the rest.
    let mut upto = None;
    let (recovered, start_cursor, gap) = match (&cursor, gap_reason) {
        (Some(c), None) => {
            for replay in reg.replay {
                segments.push_back(Segment::Replay(replay));
            }
            let mut offsets: Vec<u64> = (0..partitions).map(|p| c.offset(p)).collect();
            offsets.truncate(partitions);
            let mut start = topic.encode_cursor(&offsets);
            if let Some(after) = &c.snapshot_after {
                let mut rest = reg.snapshot;
                rest.skip_through(after);
                if !rest.is_empty() {
                    segments.push_back(Segment::Snapshot(rest));
                }
                partial = reg.partial;
                start = crate::cursor::snapshot_cursor(&crate::cursor::raw(&start), after);
                upto = Some(after.clone());
            }
            (true, start, None)
        }
        (cursor, reason) => {
            let gap = match (cursor, reason) {
                (Some(_), Some(reason)) => {
                    telemetry::resume_gap();
                    let e = match earliest {
                        Some(e) => e,
                        None => state
                            .source
                            .earliest(&topic.name)
                            .await
                            .unwrap_or_else(|_| vec![0; partitions]),
                    };
                    Some((reason, topic.encode_cursor(&e)))
                }
                _ => None,
            };
            if !reg.snapshot.is_empty() {
                segments.push_back(Segment::Snapshot(reg.snapshot));
            }
            // Only a snapshot that is sent can be partial (a resume sends none).
            partial = reg.partial;
            (cursor.is_none(), high_cursor.clone(), gap)
        }
    };
    let snapshot_len = segments
        .iter()
        .map(|s| match s {
            Segment::Snapshot(snapshot) => snapshot.len(),
            Segment::Replay(_) => 0,
        })
        .sum();
    let high = reg.high;
    let position = match &cursor {
        Some(c) if gap.is_none() => (0..partitions).map(|p| c.offset(p)).collect(),
        _ => high.clone(),
    };
    if let Some(partial) = &partial {
        telemetry::snapshot_partial(partial.reason);
    }
    tracing::debug!(
        recovered,
        gap = gap.as_ref().map(|(reason, _)| *reason),
        snapshot = snapshot_len,
        "subscribed"
    );
    Ok(Opened {
        guard,
        id: req
            .id
            .clone()
            .unwrap_or_else(|| Value::String(req.topic.clone())),
        topic_name: Arc::clone(&topic.name),
        cursor: start_cursor,
        recovered,
        gap,
        snapshot_len,
        partial,
        catch_up: CatchUp {
            span: tracing::Span::current(),
            trace: crate::traces::CatchUpSpan::open(
                &topic.name,
                recovered,
                snapshot_len,
                connection_trace.as_ref(),
            ),
            topic,
            sub: reg.sub,
            source: Arc::clone(&state.source) as Arc<dyn Source>,
            stored,
            reads: Arc::clone(&state.log_reads),
            segments,
            position,
            high,
            raw_high: crate::cursor::raw(&high_cursor),
            high_cursor,
            upto,
            hold: limits.snapshot_hold_bytes as u64,
            pending: None,
            resyncs: Resyncs::default(),
            live: false,
            marked: false,
            replayed: 0,
            replayer: Replayer::default(),
            latest,
            compacted: 0,
            skipped: partial.map(|p| p.skipped),
            last_of: HashMap::new(),
            delta_base: HashMap::new(),
        },
        enforced,
    })
}

/// Runs a registration, which takes every partition lock of its topic (the
/// ingest's too) and scans the ring under them. In a reconnect storm many
/// wait for those locks at once; waiting on an async worker stalled every
/// connection on it, health checks and `/metrics` included (seen with gdb
/// in a 4,000-client balancer restart: both workers in `lock_all`, the
/// ingest thread behind them). On a multi-thread runtime the worker hands
/// its other tasks on first. (A per-topic async turn before it, to keep
/// the waiting threads few, made resumes in the storm three times slower:
/// each hand-over of the turn waits for a busy worker to poll its task.)
fn off_the_worker<R>(register: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(register),
        _ => register(),
    }
}
