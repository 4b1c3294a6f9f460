//! Prometheus metrics. Label values come only from the configuration (agent ids, route and
//! upstream names, fixed reason codes) or `unknown`/`none`, so cardinality stays bounded no
//! matter what clients send.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// Every registered metric, so `/metrics` can list the families that have no sample yet
    /// (a labelled metric nothing has touched): dashboards and alert rules can then be checked
    /// against what the gateway exports, not against what happened to occur.
    catalogue: Vec<Box<dyn prometheus::core::Collector>>,
    /// Requests by agent, route, decision (allow/deny/error) and status.
    pub requests: IntCounterVec,
    /// Refusals by machine code.
    pub denials: IntCounterVec,
    /// Total request latency by route.
    pub request_duration: HistogramVec,
    /// Latency the gateway itself adds (total minus upstream time), by route.
    pub gateway_duration: HistogramVec,
    /// Upstream time by upstream.
    pub upstream_duration: HistogramVec,
    /// Upstream failures by upstream and kind.
    pub upstream_errors: IntCounterVec,
    /// Token failures by reason.
    pub token_failures: IntCounterVec,
    /// JWKS fetches by URL and outcome.
    pub jwks_refresh: IntCounterVec,
    /// Seconds since the last successful JWKS fetch, by URL (set at scrape time).
    pub jwks_key_age: prometheus::GaugeVec,
    /// Keys currently held per JWKS URL.
    pub jwks_keys: IntGaugeVec,
    /// Config reloads by outcome (success/failure).
    pub config_reloads: IntCounterVec,
    /// Version of the config in force.
    pub config_version: IntGauge,
    /// 1 if the last reload attempt succeeded, 0 if it failed.
    pub config_last_reload_ok: IntGauge,
    /// Requests in flight.
    pub in_flight: IntGauge,
    /// Access-log lines that had to wait for the writer (channel full).
    pub access_log_backpressure: IntCounter,
    /// Access-log lines that could not be written.
    pub access_log_errors: IntCounter,
    /// 1 while the syslog access-log output has a connection (UDP: a socket), 0 while it has
    /// none, by transport; no sample unless `access_log.syslog` is set.
    pub access_log_syslog_connected: IntGaugeVec,
    /// Syslog connections made again after one failed or was closed.
    pub access_log_syslog_reconnects: IntCounter,
    /// UDP syslog messages cut to fit in one datagram.
    pub access_log_syslog_truncated: IntCounter,
    /// Time spent verifying tokens that missed the cache.
    pub token_verify_duration: Histogram,
    /// Approvals waiting for a decision.
    pub approvals_pending: IntGauge,
    /// Approval outcomes (approved, denied, timeout, abandoned, expired, used).
    pub approval_decisions: IntCounterVec,
    /// Time from request to human decision.
    pub approval_time_to_decision: Histogram,
    /// Webhook notifications delivered.
    pub approval_notifications_sent: IntCounter,
    /// Webhook notifications that failed for good.
    pub approval_notification_failures: IntCounter,
    /// Agent connections open on the proxy listener.
    pub connections_open: IntGauge,
    /// Agent connections refused at accept, by limit (`per_client`, `total`).
    pub connections_refused: IntCounterVec,
    /// Agent connections closed by a deadline, by phase (`headers`, `idle`).
    pub connections_timed_out: IntCounterVec,
    /// Calls a shadowed policy would have refused, by route and refusal code.
    pub shadow_denials: IntCounterVec,
    /// Calls refused (or streams cut) by a rate or volume limit, by agent, route and limit kind
    /// (`rate`, `volume`).
    pub limited: IntCounterVec,
    /// Body bytes charged to volume limits, by agent, route and direction (`request`,
    /// `response`).
    pub limit_volume_bytes: IntCounterVec,
    /// Runtime agent-state changes (kill switch, interventions), by action and credential kind
    /// (`admin`, `approver`, `playbook`).
    pub agent_state_changes: IntCounterVec,
    /// Anomalies detected, by agent, detector and mode (`enforce`, `shadow`).
    pub anomalies: IntCounterVec,
    /// MCP messages, by route, JSON-RPC method (known ones; else `other`) and decision.
    pub mcp_requests: IntCounterVec,
    /// Items removed from MCP list answers, by list.
    pub mcp_hidden: IntCounterVec,
    /// MCP tool definitions seen changed from their pin, by upstream.
    pub mcp_tool_changes: IntCounterVec,
    /// Time of shared-state operations, by store (`postgres`, `redis`) and operation.
    pub state_store_duration: HistogramVec,
    /// Failed shared-state operations (unreachable, timed out, refused), by store and operation.
    pub state_store_errors: IntCounterVec,
    /// 1 while the shared store answers, 0 while it does not, by store.
    pub state_store_up: IntGaugeVec,
    /// Token service requests, by endpoint (`token`, `revoke`, `introspect`), grant and
    /// outcome (`issued`, `revoked`, `active`, `inactive`, or the OAuth error code).
    pub token_requests: IntCounterVec,
    /// Tokens minted or exchanged for upstreams, by upstream and outcome (`minted`,
    /// `exchanged`, `cached`, `failed`).
    pub upstream_tokens: IntCounterVec,
    /// Calls decided without the shared store because it was unreachable, by route and fault
    /// mode (`fail_open`: admitted on local state; `fail_closed`: refused).
    pub state_store_fallbacks: IntCounterVec,
    /// Playbook actions taken, by agent and action.
    pub playbook_actions: IntCounterVec,
    /// Call events the monitor could not take (its queue was full): detection is best effort
    /// under overload, never a brake on traffic.
    pub monitor_events_dropped: IntCounter,
    /// Finished trace spans, by outcome: `exported`, `dropped_queue_full` (the export queue was
    /// full: the collector is slow or down) or `dropped_export_failed`.
    pub trace_spans: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Create and register everything.
    pub fn new() -> Metrics {
        let registry = Catalogued {
            registry: Registry::new(),
            all: std::cell::RefCell::new(Vec::new()),
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let hist = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let requests = counter(
            "portcullis_requests_total",
            "Requests by agent, route, decision and HTTP status.",
            &["agent", "route", "decision", "status"],
        );
        let denials = counter(
            "portcullis_denials_total",
            "Refused requests by machine code.",
            &["reason"],
        );
        let request_duration = hist(
            "portcullis_request_duration_seconds",
            "Total request latency, by route.",
            &["route"],
        );
        let gateway_duration = hist(
            "portcullis_gateway_duration_seconds",
            "Latency added by the gateway (total minus upstream), by route.",
            &["route"],
        );
        let upstream_duration = hist(
            "portcullis_upstream_duration_seconds",
            "Time from connecting to the upstream to the end of its response, by upstream.",
            &["upstream"],
        );
        let upstream_errors = counter(
            "portcullis_upstream_errors_total",
            "Upstream failures by upstream and kind (connect, timeout, protocol).",
            &["upstream", "kind"],
        );
        let token_failures = counter(
            "portcullis_token_failures_total",
            "Rejected bearer tokens by reason.",
            &["reason"],
        );
        let jwks_refresh = counter(
            "portcullis_jwks_refresh_total",
            "JWKS fetches by URL and outcome.",
            &["url", "outcome"],
        );
        let jwks_key_age = register(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "portcullis_jwks_key_age_seconds",
                    "Seconds since the keys of a JWKS URL were last fetched successfully.",
                ),
                &["url"],
            ),
        );
        let jwks_keys = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("portcullis_jwks_keys", "Keys held per JWKS URL."),
                &["url"],
            ),
        );
        let config_reloads = counter(
            "portcullis_config_reloads_total",
            "Config reload attempts by outcome.",
            &["outcome"],
        );
        let config_version = gauge(
            "portcullis_config_version",
            "Version of the configuration in force (1 = first load).",
        );
        let config_last_reload_ok = gauge(
            "portcullis_config_last_reload_success",
            "1 if the last reload attempt succeeded, 0 if the file was refused.",
        );
        let in_flight = gauge("portcullis_in_flight_requests", "Requests in flight.");
        let access_log_backpressure = register(
            &registry,
            IntCounter::new(
                "portcullis_access_log_backpressure_total",
                "Access-log lines that waited because the writer was behind.",
            ),
        );
        let access_log_errors = register(
            &registry,
            IntCounter::new(
                "portcullis_access_log_write_errors_total",
                "Access-log write failures.",
            ),
        );
        let access_log_syslog_connected = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_access_log_syslog_connected",
                    "1 while the syslog access-log output is connected to its server, 0 while it is not, by transport.",
                ),
                &["transport"],
            ),
        );
        let access_log_syslog_reconnects = register(
            &registry,
            IntCounter::new(
                "portcullis_access_log_syslog_reconnects_total",
                "Syslog access-log connections made again after one failed or was closed.",
            ),
        );
        let access_log_syslog_truncated = register(
            &registry,
            IntCounter::new(
                "portcullis_access_log_syslog_truncated_total",
                "Access-log lines cut to fit in one UDP syslog datagram.",
            ),
        );
        let token_verify_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_token_verify_duration_seconds",
                    "Signature verification time of tokens not found in the cache.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            ),
        );
        let approvals_pending = gauge(
            "portcullis_approvals_pending",
            "Held or async approvals waiting for a human decision.",
        );
        let approval_decisions = counter(
            "portcullis_approval_decisions_total",
            "Approval outcomes: approved, denied, timeout, abandoned, expired, used.",
            &["outcome"],
        );
        let approval_time_to_decision = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_approval_time_to_decision_seconds",
                    "Time from an agent's request to the human decision (approve or deny).",
                )
                .buckets(vec![
                    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                ]),
            ),
        );
        let approval_notifications_sent = register(
            &registry,
            IntCounter::new(
                "portcullis_approval_notifications_sent_total",
                "Approval webhook notifications delivered.",
            ),
        );
        let approval_notification_failures = register(
            &registry,
            IntCounter::new(
                "portcullis_approval_notification_failures_total",
                "Approval webhook notifications that failed after every retry.",
            ),
        );
        let connections_open = gauge(
            "portcullis_connections_open",
            "Agent connections open on the proxy listener.",
        );
        let connections_refused = counter(
            "portcullis_connections_refused_total",
            "Agent connections refused at accept because a limit was reached (per_client, total).",
            &["limit"],
        );
        let connections_timed_out = counter(
            "portcullis_connections_timed_out_total",
            "Agent connections closed by a deadline: headers not complete in time, or idle too long.",
            &["phase"],
        );
        let shadow_denials = counter(
            "portcullis_shadow_denials_total",
            "Calls forwarded in shadow mode that a policy would have refused, by route and refusal code.",
            &["route", "reason"],
        );
        let limited = counter(
            "portcullis_limited_total",
            "Calls refused or streams cut by a limit, by agent, route and limit kind (rate, volume).",
            &["agent", "route", "limit"],
        );
        let limit_volume_bytes = counter(
            "portcullis_limit_volume_bytes_total",
            "Body bytes charged to volume limits, by agent, route and direction (request, response).",
            &["agent", "route", "direction"],
        );
        let agent_state_changes = counter(
            "portcullis_agent_state_changes_total",
            "Runtime agent-state changes (pause, resume, revoke_token, revoke_agent_tokens, step_up, throttle, lift), by credential kind (admin, approver, playbook).",
            &["action", "credential"],
        );
        let mcp_requests = counter(
            "portcullis_mcp_requests_total",
            "MCP (JSON-RPC) messages, by route, method (known methods; else other) and decision (allow, deny, held, error).",
            &["route", "method", "decision"],
        );
        let trace_spans = counter(
            "portcullis_trace_spans_total",
            "Finished trace spans, by outcome (exported, dropped_queue_full, dropped_export_failed).",
            &["outcome"],
        );
        let mcp_hidden = counter(
            "portcullis_mcp_list_items_hidden_total",
            "Items removed from MCP list answers because the caller may not use them, by list (tools, prompts, resources, resource_templates).",
            &["list"],
        );
        let state_store_duration = hist(
            "portcullis_state_store_duration_seconds",
            "Time of shared-state operations, by store and operation.",
            &["store", "op"],
        );
        let state_store_errors = counter(
            "portcullis_state_store_errors_total",
            "Failed shared-state operations, by store and operation.",
            &["store", "op"],
        );
        let token_requests = counter(
            "portcullis_token_requests_total",
            "Token service requests, by endpoint, grant type and outcome.",
            &["endpoint", "grant", "outcome"],
        );
        let upstream_tokens = counter(
            "portcullis_upstream_tokens_total",
            "Per-call upstream credentials, by upstream and outcome.",
            &["upstream", "outcome"],
        );
        let state_store_up = {
            let g = IntGaugeVec::new(
                Opts::new(
                    "portcullis_state_store_up",
                    "1 while the shared store answers, 0 while it does not.",
                ),
                &["store"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let state_store_fallbacks = counter(
            "portcullis_state_store_fallbacks_total",
            "Calls decided without the unreachable shared store, by route and fault mode.",
            &["route", "mode"],
        );
        let mcp_tool_changes = counter(
            "portcullis_mcp_tool_changes_total",
            "MCP tool definitions seen changed from the recorded one (rug-pull detection), by upstream.",
            &["upstream"],
        );
        let anomalies = counter(
            "portcullis_anomalies_total",
            "Anomalies detected, by agent, detector and mode (enforce, shadow).",
            &["agent", "detector", "mode"],
        );
        let playbook_actions = counter(
            "portcullis_playbook_actions_total",
            "Playbook actions taken (log, alert, throttle, step_up, pause, revoke), by agent.",
            &["agent", "action"],
        );
        let monitor_events_dropped = IntCounter::new(
            "portcullis_monitor_events_dropped_total",
            "Call events the anomaly monitor dropped because its queue was full.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(monitor_events_dropped.clone()))
            .expect("unique metric");
        config_last_reload_ok.set(1);
        Metrics {
            trace_spans,
            agent_state_changes,
            mcp_requests,
            mcp_hidden,
            mcp_tool_changes,
            state_store_duration,
            state_store_errors,
            state_store_up,
            token_requests,
            upstream_tokens,
            state_store_fallbacks,
            anomalies,
            playbook_actions,
            monitor_events_dropped,
            shadow_denials,
            limited,
            limit_volume_bytes,
            connections_open,
            connections_refused,
            connections_timed_out,
            approvals_pending,
            approval_decisions,
            approval_time_to_decision,
            approval_notifications_sent,
            approval_notification_failures,
            registry: registry.registry,
            catalogue: registry.all.into_inner(),
            requests,
            denials,
            request_duration,
            gateway_duration,
            upstream_duration,
            upstream_errors,
            token_failures,
            jwks_refresh,
            jwks_key_age,
            jwks_keys,
            config_reloads,
            config_version,
            config_last_reload_ok,
            in_flight,
            access_log_backpressure,
            access_log_errors,
            access_log_syslog_connected,
            access_log_syslog_reconnects,
            access_log_syslog_truncated,
            token_verify_duration,
        }
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        let mut text = String::from_utf8(buf).expect("prometheus text is UTF-8");
        // Families without a sample: HELP and TYPE only (valid exposition format), so every
        // metric the gateway can export is visible from the first scrape.
        for c in &self.catalogue {
            for mf in c.collect() {
                if mf.get_metric().is_empty() {
                    let kind = match mf.get_field_type() {
                        prometheus::proto::MetricType::COUNTER => "counter",
                        prometheus::proto::MetricType::GAUGE => "gauge",
                        prometheus::proto::MetricType::HISTOGRAM => "histogram",
                        prometheus::proto::MetricType::SUMMARY => "summary",
                        _ => "untyped",
                    };
                    text.push_str(&format!(
                        "# HELP {0} {1}\n# TYPE {0} {kind}\n",
                        mf.name(),
                        mf.help().replace('\\', "\\\\").replace('\n', "\\n")
                    ));
                }
            }
        }
        text
    }
}

/// A registry that also keeps every metric it registered (see `Metrics::catalogue`).
struct Catalogued {
    registry: Registry,
    all: std::cell::RefCell<Vec<Box<dyn prometheus::core::Collector>>>,
}

impl Catalogued {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: Box<C>,
    ) -> prometheus::Result<()> {
        self.registry.register(Box::new((*c).clone()))?;
        self.all.borrow_mut().push(c);
        Ok(())
    }
}

/// Register a freshly built metric; both steps only fail on programming errors (bad names,
/// duplicates), which the unit test below would catch.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Catalogued,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("valid metric");
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric");
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["a", "r", "allow", "200"])
            .inc();
        m.approval_decisions.with_label_values(&["approved"]).inc();
        m.limited.with_label_values(&["a", "r", "rate"]).inc();
        m.limit_volume_bytes
            .with_label_values(&["a", "r", "response"])
            .inc_by(10);
        let text = m.render();
        for name in [
            "portcullis_requests_total",
            "portcullis_config_version",
            "portcullis_approvals_pending",
            "portcullis_approval_decisions_total",
            "portcullis_access_log_backpressure_total",
            "portcullis_token_verify_duration_seconds",
            "portcullis_limited_total",
            "portcullis_limit_volume_bytes_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
