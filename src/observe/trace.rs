//! OpenTelemetry traces: one server span per sampled call, with child spans for token
//! verification (on a cache miss), the wait for a human approval and the upstream call,
//! exported over OTLP (HTTP/protobuf or gRPC).
//!
//! Cost is paid by sampled calls only. The sampling decision is made first, from a random draw
//! (or, with `respect_parent_sampling`, the incoming `traceparent`'s flag); an unsampled call
//! touches neither the SDK nor the headers, so its `traceparent`, if the agent sent one, reaches
//! the upstream unchanged and the tool's spans still join the agent's trace. A sampled call's
//! spans are built with the SDK (which then always records: the decision is already made) and
//! the upstream receives a `traceparent` naming the gateway's upstream span.
//!
//! Why a random draw and not the trace-id ratio sampler: the trace id comes from the agent,
//! which could pick ids that always fall under the ratio and make the gateway trace (and pay
//! for) every call it makes.
//!
//! Export runs on a thread of its own with a bounded queue ([`QueueProcessor`]), not the SDK's
//! batch processor: that one counts the spans it drops only in a log line at shutdown, and an
//! SRE needs the count as a metric while the collector is down. A span that finds the queue
//! full is dropped and counted; a call never waits for the collector.

use crate::observe::{AccessRecord, Metrics};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    SdkTracer, SdkTracerProvider, Span as SdkSpan, SpanData, SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use std::borrow::Cow;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// `tracing:` as compiled; read at start.
#[derive(Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans go: the full URL (for HTTP, ending in `/v1/traces`).
    pub endpoint: String,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, secrets resolved.
    pub headers: Vec<(String, String)>,
    /// Share of calls traced, 0 to 1.
    pub sample_ratio: f64,
    /// Trace the calls whose incoming `traceparent` is sampled.
    pub respect_parent_sampling: bool,
    /// `service.name`; `None`: `OTEL_SERVICE_NAME`, else `portcullis`.
    pub service_name: Option<String>,
    /// Finished spans waiting for export.
    pub queue_size: usize,
    /// Spans per export request.
    pub batch_size: usize,
    /// Longest wait before a partial batch is sent.
    pub export_interval: Duration,
    /// Longest time one export may take.
    pub export_timeout: Duration,
}

impl fmt::Debug for TracingSettings {
    /// Header values are credentials (a SaaS collector's API key): names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingSettings")
            .field(
                "endpoint",
                &crate::policy::snapshot::redact_url(&self.endpoint),
            )
            .field("protocol", &self.protocol)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("sample_ratio", &self.sample_ratio)
            .field("respect_parent_sampling", &self.respect_parent_sampling)
            .field("service_name", &self.service_name)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("export_interval", &self.export_interval)
            .field("export_timeout", &self.export_timeout)
            .finish()
    }
}

/// The exporter could not be built (bad endpoint, TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("tracing: {0}")]
pub struct TracingError(String);

/// The process's tracer: decides which calls are traced and starts their spans.
pub struct CallTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// A call is sampled when a random `u64` is below this (`u64::MAX` with ratio 1: always).
    threshold: u64,
    respect_parent: bool,
}

impl fmt::Debug for CallTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTracer")
            .field("threshold", &self.threshold)
            .field("respect_parent", &self.respect_parent)
            .finish_non_exhaustive()
    }
}

/// Reads `traceparent`/`tracestate` from a request's headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl CallTracer {
    /// Build the exporter and its thread. Must not run inside a tokio runtime's async context
    /// (the exporter thread owns a runtime of its own).
    pub fn start(s: &TracingSettings, metrics: &Metrics) -> Result<CallTracer, TracingError> {
        let mut resource = Resource::builder();
        if let Some(name) = &s.service_name {
            resource = resource.with_service_name(name.clone());
        } else if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("portcullis");
        }
        let resource = resource
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let processor = QueueProcessor::start(s, resource.clone(), metrics)?;
        let provider = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("portcullis");
        Ok(CallTracer {
            provider,
            tracer,
            threshold: ratio_threshold(s.sample_ratio),
            respect_parent: s.respect_parent_sampling,
        })
    }

    /// Begin a call's trace, or `None` when the call is not sampled (the common case, which
    /// costs one random number).
    pub fn start_call(
        &self,
        headers: &http::HeaderMap,
        method: &http::Method,
        start: SystemTime,
    ) -> Option<Box<CallTrace>> {
        let draw = || self.threshold > 0 && rand::random::<u64>() <= self.threshold;
        let extract = || TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        // The incoming context is looked at only when it decides (a trusted flag) or, once the
        // call is sampled, to be continued: an unsampled call pays for the draw alone.
        let (sampled, parent) = if self.respect_parent && headers.contains_key("traceparent") {
            let cx = extract();
            (cx.span().span_context().is_sampled() || draw(), Some(cx))
        } else {
            (draw(), None)
        };
        if !sampled {
            return None;
        }
        let parent = match parent {
            Some(cx) => cx,
            None if headers.contains_key("traceparent") => extract(),
            None => Context::new(),
        };
        let root = self
            .tracer
            .span_builder(Cow::Owned(method.as_str().to_string()))
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes([KeyValue::new(
                "http.request.method",
                method.as_str().to_string(),
            )])
            .start_with_context(&self.tracer, &parent);
        Some(Box::new(CallTrace {
            tracer: self.tracer.clone(),
            method: method.clone(),
            cx: parent.with_span(root),
            upstream: None,
            approval_wait: None,
        }))
    }

    /// Export what is queued and stop the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "tracing: spans still queued at shutdown were not all exported");
        }
    }
}

/// `ratio` as a threshold on a uniform `u64`.
fn ratio_threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else if ratio <= 0.0 {
        0
    } else {
        // Exact enough: 2^-53 resolution, far below any ratio an operator sets.
        (ratio * u64::MAX as f64) as u64
    }
}

/// A sampled call's spans.
pub struct CallTrace {
    tracer: SdkTracer,
    method: http::Method,
    /// The call's server span, as the parent of the others.
    cx: Context,
    upstream: Option<SdkSpan>,
    approval_wait: Option<SdkSpan>,
}

impl fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallTrace")
            .field("span", self.cx.span().span_context())
            .finish_non_exhaustive()
    }
}

impl CallTrace {
    /// The trace id, 32 hex digits (for the access-log line).
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// A token verification that missed the cache (a signature check ran), `start` to `end`.
    pub fn token_verified(&self, start: SystemTime, end: SystemTime, error: Option<&str>) {
        let mut span = self
            .tracer
            .span_builder("verify token")
            .with_start_time(start)
            .start_with_context(&self.tracer, &self.cx);
        if let Some(e) = error {
            span.set_attribute(KeyValue::new("portcullis.reason", e.to_string()));
            span.set_status(Status::error(e.to_string()));
        }
        span.end_with_timestamp(end);
    }

    /// The call starts waiting for a human decision on `approval_id`.
    pub fn approval_wait_started(&mut self, approval_id: &str) {
        let span = self
            .tracer
            .span_builder("approval wait")
            .with_attributes([KeyValue::new(
                "portcullis.approval_id",
                approval_id.to_string(),
            )])
            .start_with_context(&self.tracer, &self.cx);
        self.approval_wait = Some(span);
    }

    /// The wait ended: `approved`, `denied`, `expired`, `cancelled`, `abandoned`...
    pub fn approval_wait_ended(&mut self, outcome: &str) {
        if let Some(mut span) = self.approval_wait.take() {
            span.set_attribute(KeyValue::new(
                "portcullis.approval.outcome",
                outcome.to_string(),
            ));
            span.end();
        }
    }

    /// The call is being sent to `upstream` at `address`: starts the client span whose id the
    /// upstream receives as its parent.
    pub fn upstream_started(&mut self, upstream: &str, address: &str) {
        if self.upstream.is_some() {
            return;
        }
        let (host, port) = split_host_port(address);
        let mut attrs = vec![
            KeyValue::new("portcullis.upstream", upstream.to_string()),
            KeyValue::new("server.address", host.to_string()),
        ];
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
        let span = self
            .tracer
            .span_builder(Cow::Owned(format!("upstream {upstream}")))
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &self.cx);
        self.upstream = Some(span);
    }

    /// `traceparent` (and `tracestate`, if any) for the upstream request: the upstream span's
    /// context, else the server span's.
    pub fn traceparent(&self) -> (String, Option<String>) {
        let sc: SpanContext = match &self.upstream {
            Some(s) => s.span_context().clone(),
            None => self.cx.span().span_context().clone(),
        };
        let tp = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let ts = sc.trace_state().header();
        (tp, (!ts.is_empty()).then_some(ts))
    }

    /// End every span with what the call came to: its access-log line, and `agent` only when
    /// the caller is a configured agent (the line names an unknown token subject there too).
    pub fn finish(mut self, c: &AccessRecord<'_>, agent: Option<&str>) {
        self.approval_wait_ended("abandoned");
        if let Some(mut up) = self.upstream.take() {
            if c.status > 0 {
                up.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(c.status),
                ));
            }
            if c.decision == "error" {
                up.set_status(Status::error(c.reason.unwrap_or("error").to_string()));
            }
            up.end();
        }
        let span = self.cx.span();
        // Named `METHOD route` once the route is known, as HTTP server spans are.
        if let Some(r) = c.route {
            span.update_name(format!("{} {r}", self.method));
        }
        let mut attrs = Vec::with_capacity(16);
        attrs.push(KeyValue::new(
            "portcullis.request_id",
            c.request_id.to_string(),
        ));
        attrs.push(KeyValue::new("url.path", c.path.to_string()));
        attrs.push(KeyValue::new("portcullis.decision", c.decision.to_string()));
        attrs.push(KeyValue::new(
            "portcullis.config_version",
            c.config_version as i64,
        ));
        let mut opt = |k: &'static str, v: Option<&str>| {
            if let Some(v) = v {
                attrs.push(KeyValue::new(k, v.to_string()));
            }
        };
        opt("portcullis.agent", agent);
        opt("portcullis.owner", c.owner);
        opt("portcullis.on_behalf_of", c.on_behalf_of);
        opt("portcullis.route", c.route);
        opt("http.route", c.route);
        opt("portcullis.reason", c.reason);
        opt("portcullis.would_deny", c.would_deny);
        opt("portcullis.approval_id", c.approval_id);
        opt("portcullis.upstream", c.upstream);
        opt("client.address", c.client.as_deref());
        if let Some(ms) = c.upstream_ms {
            attrs.push(KeyValue::new("portcullis.upstream.duration_ms", ms));
        }
        if c.status > 0 {
            attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(c.status),
            ));
        }
        span.set_attributes(attrs);
        match c.decision {
            "allow" | "held" => {}
            _ => span.set_status(Status::error(c.reason.unwrap_or(c.decision).to_string())),
        }
        span.end();
    }
}

fn split_host_port(address: &str) -> (&str, Option<u16>) {
    match address.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse() {
            Ok(port) => (h.trim_start_matches('[').trim_end_matches(']'), Some(port)),
            Err(_) => (address, None),
        },
        _ => (address, None),
    }
}

/// Control messages to the export thread.
enum Control {
    Flush(std::sync::mpsc::Sender<OTelSdkResult>),
    Shutdown(std::sync::mpsc::Sender<OTelSdkResult>),
}

/// A span processor with a bounded queue and a thread of its own that exports in batches;
/// every span it could not export is counted in `portcullis_trace_spans_total`.
#[derive(Debug)]
struct QueueProcessor {
    spans: tokio::sync::mpsc::Sender<SpanData>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    dropped_full: IntCounter,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the export thread counts.
struct ExportCounters {
    exported: IntCounter,
    failed: IntCounter,
}

impl QueueProcessor {
    fn start(
        s: &TracingSettings,
        resource: Resource,
        metrics: &Metrics,
    ) -> Result<QueueProcessor, TracingError> {
        let (spans, rx) = tokio::sync::mpsc::channel(s.queue_size.max(1));
        let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let counters = ExportCounters {
            exported: metrics.trace_spans.with_label_values(&["exported"]),
            failed: metrics
                .trace_spans
                .with_label_values(&["dropped_export_failed"]),
        };
        let (built_tx, built_rx) = std::sync::mpsc::channel();
        let settings = s.clone();
        let worker = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = built_tx.send(Err(format!("cannot start its runtime: {e}")));
                        return;
                    }
                };
                let exporter = rt.block_on(async { build_exporter(&settings) });
                let mut exporter = match exporter {
                    Ok(x) => {
                        let _ = built_tx.send(Ok(()));
                        x
                    }
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                rt.block_on(export_loop(exporter, rx, control_rx, &settings, &counters));
            })
            .map_err(|e| TracingError(format!("cannot start the export thread: {e}")))?;
        match built_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(TracingError(e)),
            Err(_) => return Err(TracingError("the export thread died".into())),
        }
        Ok(QueueProcessor {
            spans,
            control,
            dropped_full: metrics
                .trace_spans
                .with_label_values(&["dropped_queue_full"]),
            worker: Mutex::new(Some(worker)),
        })
    }

    fn ask(
        &self,
        make: fn(std::sync::mpsc::Sender<OTelSdkResult>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.control.send(make(tx)).is_err() {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut SdkSpan, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped_full.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Control::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let r = self.ask(Control::Shutdown, timeout);
        if r.is_ok() {
            if let Some(w) = crate::util::lock(&self.worker).take() {
                let _ = w.join();
            }
        }
        r
    }
}

/// `SpanExporter` for the configured protocol.
fn build_exporter(s: &TracingSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    let built = match s.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(s.endpoint.clone())
            .with_timeout(s.export_timeout)
            .with_headers(s.headers.iter().cloned().collect())
            .build(),
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &s.headers {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header `{k}`: {e}"))?;
                let value = http::HeaderValue::from_str(v)
                    .map_err(|e| format!("header `{k}` value: {e}"))?;
                headers.insert(name, value);
            }
            let md = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(s.endpoint.clone())
                .with_timeout(s.export_timeout)
                .with_metadata(md);
            if s.endpoint.starts_with("https://") {
                b = b.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_webpki_roots(),
                );
            }
            b.build()
        }
    };
    built.map_err(|e| format!("cannot build the OTLP exporter for {}: {e}", s.endpoint))
}

/// Collect spans into batches of `batch_size`, or whatever arrived within `export_interval`,
/// and export them one batch at a time.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: tokio::sync::mpsc::Receiver<SpanData>,
    mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
    s: &TracingSettings,
    counters: &ExportCounters,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(s.batch_size);
    let mut tick = tokio::time::interval(s.export_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= s.batch_size {
                        export(&exporter, &mut batch, s.export_timeout, counters).await;
                    }
                }
                None => {
                    export(&exporter, &mut batch, s.export_timeout, counters).await;
                    return;
                }
            },
            _ = tick.tick() => {
                export(&exporter, &mut batch, s.export_timeout, counters).await;
            }
            msg = control.recv() => {
                let (reply, last) = match msg {
                    Some(Control::Flush(r)) => (Some(r), false),
                    Some(Control::Shutdown(r)) => (Some(r), true),
                    None => (None, true),
                };
                // Everything queued before the request goes out with it.
                while let Ok(span) = rx.try_recv() {
                    batch.push(span);
                    if batch.len() >= s.batch_size {
                        export(&exporter, &mut batch, s.export_timeout, counters).await;
                    }
                }
                let ok = export(&exporter, &mut batch, s.export_timeout, counters).await;
                if let Some(r) = reply {
                    let _ = r.send(if ok { Ok(()) } else { Err(OTelSdkError::InternalFailure("export failed".into())) });
                }
                if last {
                    let _ = exporter.shutdown();
                    return;
                }
            }
        }
    }
}

/// Export `batch` (emptying it); false if it failed (its spans are counted as dropped).
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    counters: &ExportCounters,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let n = batch.len() as u64;
    let spans = std::mem::take(batch);
    match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {
            counters.exported.inc_by(n);
            true
        }
        Ok(Err(e)) => {
            counters.failed.inc_by(n);
            tracing::warn!(error = %e, spans = n, "tracing: export failed; spans dropped");
            false
        }
        Err(_) => {
            counters.failed.inc_by(n);
            tracing::warn!(spans = n, timeout = ?timeout, "tracing: export timed out; spans dropped");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_thresholds_cover_the_ends() {
        assert_eq!(ratio_threshold(0.0), 0);
        assert_eq!(ratio_threshold(1.0), u64::MAX);
        let one_percent = ratio_threshold(0.01) as f64 / u64::MAX as f64;
        assert!((one_percent - 0.01).abs() < 1e-9);
    }

    #[test]
    fn host_and_port_are_split_for_names_v4_and_v6() {
        assert_eq!(split_host_port("tools:8080"), ("tools", Some(8080)));
        assert_eq!(split_host_port("127.0.0.1:9"), ("127.0.0.1", Some(9)));
        assert_eq!(split_host_port("[::1]:443"), ("::1", Some(443)));
        assert_eq!(split_host_port("tools"), ("tools", None));
    }
}
