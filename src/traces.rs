//! Traces: optional OpenTelemetry spans, exported over OTLP/HTTP (`[telemetry] otlp_endpoint`).
//!
//! Off by default. When on, a record's ingest, its fan-out and its first
//! delivery per transport get spans (continuing the producer's trace when the
//! record carries a W3C `traceparent`), and so do connections and catch-ups.
//! Spans are built with the OpenTelemetry API directly, not through `tracing`:
//! per-record spans must cost one branch when traces are off, and the
//! sampler decides once per record at ingest. The SDK's batch span processor
//! queues finished spans (bounded; full means dropped) and exports them from
//! its own thread; [`shutdown`] flushes it within the shutdown grace.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span,
};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

use crate::telemetry::{
    ATTR_DELIVERIES, ATTR_OFFSET, ATTR_PARTITION, ATTR_PEER, ATTR_RECOVERED, ATTR_REPLAYED,
    ATTR_SNAPSHOT, ATTR_TOPIC, ATTR_TRANSPORT, SPAN_CATCH_UP, SPAN_CONNECTION, SPAN_DELIVER,
    SPAN_FANOUT, SPAN_INGEST,
};

/// `[telemetry]`: where traces go, and how many.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP receiver's base address (`http://127.0.0.1:4318`): spans
    /// are posted to `<otlp_endpoint>/v1/traces` as protobuf. Not set: no traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// The share of traces started here that are kept (0 to 1): records
    /// without a `traceparent`, connections. A record whose `traceparent`
    /// says sampled (or not) follows its producer's decision.
    pub trace_sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Finished spans waiting for export at most; past that new ones are dropped.
    pub max_queued_spans: usize,
    /// How long one export request may take.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            trace_sample_ratio: 0.01,
            service_name: "pushgate".into(),
            max_queued_spans: 2048,
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// A `[telemetry]` setting that cannot work: its key and what is wrong (the
/// configuration reports it as its own error; `config` imports this module,
/// not the other way round).
#[derive(Debug)]
pub struct InvalidTelemetry {
    pub key: &'static str,
    pub problem: &'static str,
}

fn invalid(key: &'static str, problem: &'static str) -> InvalidTelemetry {
    InvalidTelemetry { key, problem }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self) -> Result<(), InvalidTelemetry> {
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(invalid(
                "telemetry.trace_sample_ratio",
                "must be between 0 and 1",
            ));
        }
        if self.service_name.is_empty() {
            return Err(invalid("telemetry.service_name", "must not be empty"));
        }
        if self.max_queued_spans == 0 {
            return Err(invalid("telemetry.max_queued_spans", "must be at least 1"));
        }
        if self.export_timeout.is_zero() {
            return Err(invalid("telemetry.export_timeout", "must be more than 0"));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            traces_url(endpoint)?;
        }
        Ok(())
    }
}

/// `<endpoint>/v1/traces`, or the endpoint itself when it already names that path.
fn traces_url(endpoint: &str) -> Result<String, InvalidTelemetry> {
    let key = "telemetry.otlp_endpoint";
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| invalid(key, "must be a URL such as http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http") => {}
        // reqwest is built without TLS here: say so rather than fail at each export.
        Some("https") => return Err(invalid(
            key,
            "must be an http:// URL (https is not supported: send to a local collector over http)",
        )),
        _ => {
            return Err(invalid(
                key,
                "must be an http:// URL such as http://127.0.0.1:4318",
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(key, "must name a host"));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

/// Could not start the exporter.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the OTLP trace exporter: {source}")]
pub struct TracesError {
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Whether spans are made at all: the one branch hot paths pay when off.
static ON: AtomicBool = AtomicBool::new(false);
static TRACER: RwLock<Option<SdkTracer>> = RwLock::new(None);
static PROVIDER: Mutex<Option<SdkTracerProvider>> = Mutex::new(None);

/// Traces are being made (an endpoint is configured and the exporter runs).
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Starts the exporter when `config` names an endpoint (once per run).
pub fn start(config: &TelemetryConfig) -> Result<(), TracesError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(());
    };
    // Validated with the rest of the configuration: a bad URL never gets here.
    let url = traces_url(endpoint).unwrap_or_else(|_| endpoint.clone());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|source| TracesError { source })?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queued_spans)
        .with_max_export_batch_size(512.min(config.max_queued_spans))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "pushgate");
    *TRACER.write().expect("tracer lock") = Some(tracer);
    if let Some(old) = PROVIDER.lock().expect("provider lock").replace(provider) {
        let _ = old.shutdown();
    }
    ON.store(true, Ordering::Relaxed);
    tracing::info!(endpoint = %url, ratio = config.trace_sample_ratio, "exporting traces over OTLP");
    Ok(())
}

/// Stops making spans and exports those still queued, within `deadline`.
pub async fn shutdown(deadline: Duration) {
    ON.store(false, Ordering::Relaxed);
    TRACER.write().expect("tracer lock").take();
    let Some(provider) = PROVIDER.lock().expect("provider lock").take() else {
        return;
    };
    // The SDK's shutdown blocks until its thread has exported: off the async workers.
    let flushed =
        tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(deadline)).await;
    match flushed {
        Ok(Ok(())) => tracing::debug!("traces flushed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "traces not all exported at shutdown"),
        Err(e) => tracing::warn!(error = %e, "the trace flush failed"),
    }
}

/// Runs `f` with the tracer, if traces are on.
fn with_tracer<T>(f: impl FnOnce(&SdkTracer) -> T) -> Option<T> {
    if !on() {
        return None;
    }
    TRACER.read().ok()?.as_ref().map(f)
}

/// A W3C trace context (`traceparent`): the span a record or request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`); `None`
    /// when it is malformed, as the W3C spec says to ignore it then. A later
    /// version's value is read by its first four fields.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let bytes = value.as_bytes();
        // ASCII first: the fields below are sliced by byte position.
        if !value.is_ascii()
            || bytes.len() < 55
            || bytes[2] != b'-'
            || bytes[35] != b'-'
            || bytes[52] != b'-'
        {
            return None;
        }
        let version = hex::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if version > 0 && bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let trace_id = hex::<16>(&value[3..35])?;
        let span_id = hex::<8>(&value[36..52])?;
        let flags = hex::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The `traceparent` header value (version 00).
    pub fn header(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        self.trace_id.iter().for_each(|b| push_hex(&mut out, *b));
        out.push('-');
        self.span_id.iter().for_each(|b| push_hex(&mut out, *b));
        out.push('-');
        push_hex(&mut out, self.flags);
        out
    }

    fn context(&self, remote: bool) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            remote,
            TraceState::default(),
        ))
    }

    fn of(span: &SpanContext) -> Self {
        Self {
            trace_id: span.trace_id().to_bytes(),
            span_id: span.span_id().to_bytes(),
            flags: span.trace_flags().to_u8(),
        }
    }
}

/// Lower-case hex only, as the W3C spec requires.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != N * 2 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn push_hex(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(DIGITS[(b >> 4) as usize] as char);
    out.push(DIGITS[(b & 15) as usize] as char);
}

/// The `traceparent` of a request's headers, if it has a valid one.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<TraceParent> {
    if !on() {
        return None;
    }
    TraceParent::parse(headers.get("traceparent")?.to_str().ok()?)
}

/// What a sampled live record carries to its first delivery on each
/// transport: the fan-out span (the deliveries' parent) and when it began.
#[derive(Debug)]
pub struct RecordTrace {
    parent: TraceParent,
    fanned_out: SystemTime,
}

#[cfg(test)]
impl RecordTrace {
    /// A trace as a sampled record would carry it.
    pub fn sampled_for_tests() -> Self {
        Self {
            parent: TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .expect("valid"),
            fanned_out: SystemTime::now(),
        }
    }
}

/// A record's ingest and fan-out spans, open while the hub takes it in.
pub struct Ingest {
    ingest: Span,
    fanout: Span,
    /// Set when sampled: the record carries it (see [`RecordTrace`]).
    pub record: Option<Arc<RecordTrace>>,
}

/// Opens the ingest span of a record (child of `parent`, the producer's span,
/// when it has one) and its fan-out span; `None` when traces are off.
pub fn ingest(
    topic: &str,
    partition: u32,
    offset: u64,
    parent: Option<&TraceParent>,
) -> Option<Ingest> {
    with_tracer(|tracer| {
        let parent = parent.map_or_else(Context::new, |p| p.context(true));
        let ingest = tracer
            .span_builder(SPAN_INGEST)
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new(ATTR_TOPIC, topic.to_owned()),
                KeyValue::new(ATTR_PARTITION, i64::from(partition)),
                KeyValue::new(ATTR_OFFSET, offset as i64),
            ])
            .start_with_context(tracer, &parent);
        let ingest_cx = Context::new().with_remote_span_context(ingest.span_context().clone());
        let started = SystemTime::now();
        let fanout = tracer
            .span_builder(SPAN_FANOUT)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(tracer, &ingest_cx);
        let record = fanout.span_context().is_sampled().then(|| {
            Arc::new(RecordTrace {
                parent: TraceParent::of(fanout.span_context()),
                fanned_out: started,
            })
        });
        Ingest {
            ingest,
            fanout,
            record,
        }
    })
}

impl Ingest {
    /// The fan-out reached `deliveries` subscriptions.
    pub fn fanned_out(mut self, deliveries: usize) {
        self.fanout
            .set_attribute(KeyValue::new(ATTR_DELIVERIES, deliveries as i64));
        self.fanout.end();
        self.ingest.end();
    }
}

/// The first write of a traced record on `transport`: a span from its fan-out to now.
pub fn delivered(trace: &RecordTrace, transport: &'static str) {
    with_tracer(|tracer| {
        tracer
            .span_builder(SPAN_DELIVER)
            .with_kind(SpanKind::Producer)
            .with_start_time(trace.fanned_out)
            .with_attributes([KeyValue::new(ATTR_TRANSPORT, transport)])
            .start_with_context(tracer, &trace.parent.context(false))
            .end();
    });
}

/// A connection's span, ended when the connection closes (dropped).
#[derive(Default)]
pub struct ConnectionSpan(Option<Span>);

impl std::fmt::Debug for ConnectionSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSpan")
    }
}

impl ConnectionSpan {
    /// Opens a connection's span (child of the request's `traceparent`, if it had one).
    pub fn open(
        transport: &'static str,
        peer: std::net::IpAddr,
        parent: Option<&TraceParent>,
    ) -> Self {
        Self(with_tracer(|tracer| {
            let parent = parent.map_or_else(Context::new, |p| p.context(true));
            tracer
                .span_builder(SPAN_CONNECTION)
                .with_kind(SpanKind::Server)
                .with_attributes([
                    KeyValue::new(ATTR_TRANSPORT, transport),
                    KeyValue::new(ATTR_PEER, peer.to_string()),
                ])
                .start_with_context(tracer, &parent)
        }))
    }

    /// The span's context, when it is sampled: the parent of the connection's catch-ups.
    pub fn parent(&self) -> Option<TraceParent> {
        let span = self.0.as_ref()?;
        span.span_context()
            .is_sampled()
            .then(|| TraceParent::of(span.span_context()))
    }
}

/// A subscription's catch-up (snapshot and replay) span, ended when it goes live (or is dropped).
#[derive(Default)]
pub struct CatchUpSpan(Option<Span>);

impl CatchUpSpan {
    /// Opens a catch-up's span, inside its connection's (`parent`).
    pub fn open(
        topic: &str,
        recovered: bool,
        snapshot: usize,
        parent: Option<&TraceParent>,
    ) -> Self {
        Self(with_tracer(|tracer| {
            let parent = parent.map_or_else(Context::new, |p| p.context(false));
            tracer
                .span_builder(SPAN_CATCH_UP)
                .with_kind(SpanKind::Internal)
                .with_attributes([
                    KeyValue::new(ATTR_TOPIC, topic.to_owned()),
                    KeyValue::new(ATTR_RECOVERED, recovered),
                    KeyValue::new(ATTR_SNAPSHOT, snapshot as i64),
                ])
                .start_with_context(tracer, &parent)
        }))
    }

    /// The catch-up is done: `replayed` records were sent again from the ring or the log.
    pub fn live(&mut self, replayed: usize) {
        if let Some(mut span) = self.0.take() {
            span.set_attribute(KeyValue::new(ATTR_REPLAYED, replayed as i64));
            span.end();
        }
    }
}

impl std::fmt::Debug for CatchUpSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CatchUpSpan")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_w3c_traceparent() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(v).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        assert_eq!(p.flags, 1);
        assert_eq!(p.header(), v);
        // A later version with more fields is read by its first four.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        assert_eq!(TraceParent::parse(later).unwrap().flags, 0);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoint_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert!(traces_url("https://collector:4318").is_err());
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("not a url").is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = TelemetryConfig {
            trace_sample_ratio: 1.5,
            ..TelemetryConfig::default()
        };
        assert!(c.validate().is_err());
        c.trace_sample_ratio = 0.5;
        c.validate().unwrap();
        c.otlp_endpoint = Some("ftp://x".into());
        assert!(c.validate().is_err());
    }
}
