//! OpenTelemetry traces, end to end: the real gateway exports to a real OTLP receiver in this
//! test (OTLP/HTTP decoded with the protocol's own protobuf types, and a tonic gRPC server), in
//! front of a real upstream that records the `traceparent` it receives.

mod support;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A span as received, with its resource's attributes.
#[derive(Debug, Clone)]
struct Got {
    span: Span,
    resource: BTreeMap<String, String>,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex::encode(&self.span.span_id)
    }
    fn parent_id(&self) -> String {
        hex::encode(&self.span.parent_span_id)
    }
}

fn attr(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    let kv = kvs.iter().find(|kv| kv.key == key)?;
    Some(match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// Every span a receiver has decoded (and, for gRPC, each request's `x-collector-key`).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Got>>>, Arc<Mutex<Vec<String>>>);

impl Received {
    fn take_request(&self, req: ExportTraceServiceRequest) {
        let mut all = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let resource: BTreeMap<String, String> = rs
                .resource
                .map(|r| {
                    r.attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), attr(&r.attributes, &kv.key)?)))
                        .collect()
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    all.push(Got {
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    /// The server span whose `portcullis.request_id` is `id`, once it has arrived.
    async fn server_span(&self, request_id: &str) -> Got {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            if let Some(g) = self
                .all()
                .into_iter()
                .find(|g| g.attr("portcullis.request_id").as_deref() == Some(request_id))
            {
                return g;
            }
            assert!(
                Instant::now() < deadline,
                "no server span for request {request_id}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The children of `parent`, by name (the receiver gets them no later than the parent: they
    /// end first and are exported in the same or an earlier batch).
    fn children(&self, parent: &Got) -> BTreeMap<String, Got> {
        self.all()
            .into_iter()
            .filter(|g| g.trace_id() == parent.trace_id() && g.parent_id() == parent.span_id())
            .map(|g| (g.span.name.clone(), g))
            .collect()
    }
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.
async fn http_receiver() -> (SocketAddr, Received) {
    let got = Received::default();
    let g = got.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let g = g.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                g.take_request(req);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, got)
}

/// An OTLP/gRPC receiver (the collector's `TraceService`).
struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(k) = request.metadata().get("x-collector-key") {
            self.0
                 .1
                .lock()
                .unwrap()
                .push(k.to_str().unwrap().to_string());
        }
        self.0.take_request(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_receiver() -> (SocketAddr, Received) {
    let got = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(GrpcReceiver(got.clone()));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_of(listener))
            .await;
    });
    (addr, got)
}

/// The listener as the stream of connections tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

const APPROVER: &str = "apv_tracing_test_approver_4c2d9e";

/// A route held for approval, an approver, and `tracing:` pointing at `endpoint`.
fn setup(up: &Upstream, tracing: &str) -> Setup {
    let mut s = Setup::new(up);
    s.extra_routes = format!(
        r#"  - name: refunds
    methods: [POST]
    path: /api/refunds
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: hold
      timeout: 60s
approvals:
  store: approvals.db
  approvers:
    - name: alice
      token_sha256: "{}"
"#,
        hex::encode(sha2::Sha256::digest(APPROVER.as_bytes()))
    );
    s.admin = format!("{}{tracing}", admin_section(""));
    s
}

fn tracing_section(endpoint: &str, extra: &str) -> String {
    format!("tracing:\n  endpoint: {endpoint}\n  export_interval: 100ms\n{extra}")
}

/// A gateway in front of `up` exporting to the collector at `collector`, with `extra` lines
/// in its `tracing:` section.
async fn start_traced(up: &Upstream, collector: SocketAddr, extra: &str) -> Gateway {
    Gateway::start(setup(
        up,
        &tracing_section(&format!("http://{collector}"), extra),
    ))
    .await
}

/// A W3C `traceparent` an agent might send: its own trace and span.
const AGENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const AGENT_SPAN: &str = "00f067aa0ba902b7";

async fn get_with(gw: &Gateway, path: &str, token: &str, headers: &[(&str, &str)]) -> Answer {
    let mut rb = client().get(gw.url(path)).bearer_auth(token);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    Answer::read(rb.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_denied_and_approved_held_calls_are_spans_with_their_children() {
    let (collector, got) = http_receiver().await;
    let up = Upstream::start().await;
    let gw = start_traced(
        &up,
        collector,
        "  sample_ratio: 1.0\n  service_name: gw-under-test\n",
    )
    .await;
    let writer = token("support-bot", &["tickets:read", "tickets:write"]);

    // 1. Allowed, continuing the agent's trace: the gateway's span is a child of the agent's,
    //    and the upstream's parent is the gateway's upstream span.
    let traceparent = format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01");
    let a = get_with(
        &gw,
        "/api/tickets/7",
        &writer,
        &[("traceparent", &traceparent), ("tracestate", "agent=1")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let server = got.server_span(a.request_id()).await;
    assert_eq!(server.span.kind, SpanKind::Server as i32);
    assert_eq!(server.span.name, "GET tickets-read");
    assert_eq!(server.trace_id(), AGENT_TRACE);
    assert_eq!(server.parent_id(), AGENT_SPAN);
    for (k, v) in [
        ("portcullis.agent", "support-bot"),
        ("portcullis.owner", "alice@example.com"),
        ("portcullis.route", "tickets-read"),
        ("portcullis.decision", "allow"),
        ("portcullis.upstream", "tickets-api"),
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("url.path", "/api/tickets/7"),
    ] {
        assert_eq!(server.attr(k).as_deref(), Some(v), "{k} of {server:#?}");
    }
    assert!(server.attr("portcullis.reason").is_none());
    assert!(server.attr("portcullis.upstream.duration_ms").is_some());
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("gw-under-test")
    );
    let children = got.children(&server);
    // The first call with this token missed the cache: its signature check is a span.
    let verify = &children["verify token"];
    assert!(verify.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(verify.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    let upstream = &children["upstream tickets-api"];
    assert_eq!(upstream.span.kind, SpanKind::Client as i32);
    assert_eq!(
        upstream.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        upstream.attr("server.address").as_deref(),
        Some("127.0.0.1")
    );
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{AGENT_TRACE}-{}-01", upstream.span_id()).as_str()),
        "the upstream's parent is the gateway's upstream span"
    );
    assert_eq!(seen.header("tracestate"), Some("agent=1"));
    // The access-log line names the trace, so the SIEM can find the spans.
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(line["trace_id"], AGENT_TRACE);

    // The same token again: a cache hit, so no verification span.
    let a = get_with(&gw, "/api/tickets/8", &writer, &[]).await;
    assert_eq!(a.status, 200);
    let server = got.server_span(a.request_id()).await;
    assert_ne!(
        server.trace_id(),
        AGENT_TRACE,
        "a new trace without traceparent"
    );
    assert!(server.parent_id().is_empty(), "a root span: {server:#?}");
    let children = got.children(&server);
    assert!(!children.contains_key("verify token"), "{children:#?}");
    assert!(children.contains_key("upstream tickets-api"));

    // 2. Denied: the span says why, is an error, and nothing reached the upstream.
    let reader = token("reporting-bot", &["tickets:read"]);
    let hits = up.hits();
    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(&reader)
        .json(&json!({"subject": "x"}))
        .send()
        .await
        .unwrap();
    let d = Answer::read(r).await;
    d.assert_refusal(403, "insufficient_scope");
    let server = got.server_span(d.request_id()).await;
    assert_eq!(server.span.name, "POST tickets-create");
    assert_eq!(server.attr("portcullis.decision").as_deref(), Some("deny"));
    assert_eq!(
        server.attr("portcullis.reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(
        server.attr("portcullis.agent").as_deref(),
        Some("reporting-bot")
    );
    let status = server.span.status.clone().expect("a status");
    assert_eq!(status.code, 2, "error status: {status:?}");
    assert!(!got.children(&server).contains_key("upstream tickets-api"));
    assert_eq!(up.hits(), hits);

    // 3. Held for approval, approved: a wait span, then the upstream span, all in one trace.
    let held = {
        let rb = client()
            .post(gw.url("/api/refunds"))
            .bearer_auth(&writer)
            .json(&json!({"order": 42, "amount": 10}));
        tokio::spawn(async move { Answer::read(rb.send().await.unwrap()).await })
    };
    let id = pending_approval(&gw).await;
    let r = client()
        .post(gw.admin_url(&format!("/api/approvals/{id}/approve")))
        .bearer_auth(APPROVER)
        .json(&json!({"reason": "refund checked"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = held.await.unwrap();
    assert_eq!(h.status, 200, "{}", h.body);
    let server = got.server_span(h.request_id()).await;
    assert_eq!(
        server.attr("portcullis.approval_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(server.attr("portcullis.decision").as_deref(), Some("allow"));
    let children = got.children(&server);
    let wait = &children["approval wait"];
    assert_eq!(
        wait.attr("portcullis.approval_id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(
        wait.attr("portcullis.approval.outcome").as_deref(),
        Some("approved")
    );
    let upstream = &children["upstream tickets-api"];
    assert!(
        upstream.span.start_time_unix_nano >= wait.span.end_time_unix_nano,
        "the upstream call follows the approval"
    );
    let seen = up.seen_with_request_id(h.request_id());
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{}-{}-01", server.trace_id(), upstream.span_id()).as_str())
    );

    let m = gw.metrics().await;
    assert!(spans(&m, "exported") >= 8.0);
    assert_eq!(
        metric(
            &m,
            "portcullis_trace_spans_total",
            &[("outcome", "dropped_queue_full")]
        ),
        Some(0.0)
    );
}

/// `portcullis_trace_spans_total{outcome}` in the metrics text `m` (0 when absent).
fn spans(m: &str, outcome: &str) -> f64 {
    metric(m, "portcullis_trace_spans_total", &[("outcome", outcome)]).unwrap_or(0.0)
}

/// The id of the one pending approval, once it is there.
async fn pending_approval(gw: &Gateway) -> String {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let v: serde_json::Value = client()
            .get(gw.admin_url("/api/approvals?status=pending"))
            .bearer_auth(APPROVER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no pending approval: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A prompt-injected agent sets `traceparent` with the sampled flag to make the gateway trace
/// (and pay for) every call: it is not obeyed, and its header reaches the upstream untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_force_tracing_and_unsampled_calls_pass_its_trace_on() {
    let (collector, got) = http_receiver().await;
    let up = Upstream::start().await;
    let gw = start_traced(&up, collector, "  sample_ratio: 0\n").await;
    let writer = token("support-bot", &["tickets:read"]);
    let traceparent = format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01");
    for i in 0..20 {
        let a = get_with(
            &gw,
            &format!("/api/tickets/{i}"),
            &writer,
            &[("traceparent", &traceparent)],
        )
        .await;
        assert_eq!(a.status, 200);
        let seen = up.seen_with_request_id(a.request_id());
        assert_eq!(seen.header("traceparent"), Some(traceparent.as_str()));
    }
    // Several export intervals: nothing was recorded, so nothing arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(got.all().is_empty(), "{:#?}", got.all());
    let lines = gw.wait_access_log(20).await;
    assert!(lines.iter().all(|l| l.get("trace_id").is_none()));
    let m = gw.metrics().await;
    assert_eq!(spans(&m, "exported"), 0.0);
}

/// With `respect_parent_sampling: true` (agents whose traces the operator trusts), a sampled
/// incoming trace is traced even at ratio 0; an unsampled one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respecting_parent_sampling_traces_exactly_the_sampled_incoming_calls() {
    let (collector, got) = http_receiver().await;
    let up = Upstream::start().await;
    let gw = start_traced(
        &up,
        collector,
        "  sample_ratio: 0\n  respect_parent_sampling: true\n",
    )
    .await;
    let writer = token("support-bot", &["tickets:read"]);
    let sampled = format!("00-{AGENT_TRACE}-{AGENT_SPAN}-01");
    let unsampled = format!("00-{}-{AGENT_SPAN}-00", "1".repeat(32));
    let a = get_with(
        &gw,
        "/api/tickets/1",
        &writer,
        &[("traceparent", &unsampled)],
    )
    .await;
    let b = get_with(&gw, "/api/tickets/2", &writer, &[("traceparent", &sampled)]).await;
    let server = got.server_span(b.request_id()).await;
    assert_eq!(server.trace_id(), AGENT_TRACE);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !got.all()
            .iter()
            .any(|g| g.attr("portcullis.request_id").as_deref() == Some(a.request_id())),
        "the unsampled call was traced"
    );
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.header("traceparent"), Some(unsampled.as_str()));
}

/// A collector that accepts connections and never answers: calls go on, spans past the queue
/// are dropped and counted, none is claimed as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_never_fails_calls_and_its_drops_are_counted() {
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = stuck.local_addr().unwrap();
    // Accept and hold every connection without reading or answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in stuck.incoming() {
            held.push(c);
        }
    });
    let up = Upstream::start().await;
    let gw = start_traced(
        &up,
        addr,
        "  sample_ratio: 1\n  queue_size: 4\n  batch_size: 2\n  export_timeout: 30s\n",
    )
    .await;
    let writer = token("support-bot", &["tickets:read"]);
    for i in 0..30 {
        let a = get_with(&gw, &format!("/api/tickets/{i}"), &writer, &[]).await;
        assert_eq!(a.status, 200, "call {i}: {}", a.body);
    }
    // 30 calls make 61 spans (two per call, plus one verification). The exporter is stuck on
    // its first batch (one or two spans) and the queue holds 4: every other span is dropped.
    let deadline = Instant::now() + POLL_TIMEOUT;
    let (m, dropped) = loop {
        let m = gw.metrics().await;
        let dropped = spans(&m, "dropped_queue_full");
        if dropped >= 55.0 || Instant::now() > deadline {
            break (m, dropped);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((55.0..=56.0).contains(&dropped), "{dropped}");
    assert_eq!(spans(&m, "exported"), 0.0);
}

/// OTLP over gRPC reaches a tonic collector with the same spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_grpc_collector() {
    let (collector, got) = grpc_receiver().await;
    let up = Upstream::start().await;
    let gw = start_traced(
        &up,
        collector,
        "  protocol: grpc\n  sample_ratio: 1\n  headers:\n    x-collector-key: k1\n",
    )
    .await;
    let writer = token("support-bot", &["tickets:read"]);
    let a = get_with(&gw, "/api/tickets/3", &writer, &[]).await;
    assert_eq!(a.status, 200);
    let server = got.server_span(a.request_id()).await;
    assert_eq!(
        server.attr("portcullis.route").as_deref(),
        Some("tickets-read")
    );
    assert_eq!(
        server.resource.get("service.name").map(String::as_str),
        Some("portcullis")
    );
    let upstream = &got.children(&server)["upstream tickets-api"];
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{}-{}-01", server.trace_id(), upstream.span_id()).as_str())
    );
    // The configured header travels as gRPC metadata on every export.
    let keys = got.1.lock().unwrap().clone();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "k1"),
        "{keys:?}"
    );
}
