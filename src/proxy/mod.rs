//! The thin pingora layer: gathers facts, asks the policy, acts on the answer.
//!
//! Phase order (each phase one concern):
//! 1. `request_filter`: load the snapshot once, normalize the path, authenticate, decide. A
//!    refusal is answered here and nothing else runs. Identity comes before routing so that an
//!    anonymous caller learns nothing about which paths exist.
//! 2. `upstream_peer`: the upstream of the route the decision chose (never re-derived).
//! 3. `upstream_request_filter`: strip what the agent may not assert, set the exact normalized
//!    path, inject identity headers and the upstream credential.
//! 4. `response_filter`: make sure the credential header never flows back.
//! 5. `fail_to_proxy`: upstream failures become JSON 502/504.
//! 6. `logging`: metrics and the access-log line, for every request, allowed or not.

mod approval_gate;
use approval_gate::read_body_capped;
pub mod connections;
pub mod headers;
mod mcp;
pub mod refusal;
pub mod upstream;

use crate::identity::VerifiedToken;
use crate::observe::{AccessRecord, LogTime, Outcome};
use crate::policy::conditions::{parse_json_body, BodyFact};
use crate::policy::decision::ConditionRan;
use crate::policy::limits::{Charge, ChargeOutcome, Direction, Refused};
use crate::policy::mcp::{Malformed, McpMessage};
use crate::policy::{
    effective_scopes, evaluate, normalize, Agent, Decision, Denial, NormalizedPath, RequestFacts,
    Snapshot,
};
use crate::state::limits::{acquire, charge_chunk};
use crate::state::shared::Admission;
use crate::state::GatewayState;
use async_trait::async_trait;
use bytes::Bytes;
use headers::{
    bearer, has_method_override_param, prepare_upstream_request, refused_header, request_host,
    requested_upgrade, Forwarding, REQUEST_ID, X_FORWARDED_FOR,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};
use refusal::Refusal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The gateway's pingora application.
pub struct Gateway {
    state: Arc<GatewayState>,
}

impl Gateway {
    /// Wrap the shared state.
    pub fn new(state: Arc<GatewayState>) -> Gateway {
        Gateway { state }
    }
}

/// Decrements the in-flight count however the request ends.
struct InFlight(Arc<GatewayState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.in_flight.dec();
    }
}

/// Per-request state, filled in phase by phase.
pub struct RequestCtx {
    snap: Option<Arc<Snapshot>>,
    request_id: String,
    started: Instant,
    started_wall: SystemTime,
    path: Option<NormalizedPath>,
    token: Option<Arc<VerifiedToken>>,
    agent: Option<Arc<Agent>>,
    route: Option<usize>,
    /// How the call ended; set where that is decided, read once by `record`.
    outcome: Outcome,
    /// Shadow mode: the code of the refusal a shadowed policy would have made.
    would_deny: Option<&'static str>,
    /// Volume limits to charge as the bodies stream (rates were taken before forwarding).
    charge: Charge,
    /// The volume limit that cut this call's stream, for `fail_to_proxy` to answer with.
    cut: Option<Box<Refused>>,
    /// Why the upstream's per-call credential could not be made, for `fail_to_proxy`.
    credential_error: Option<String>,
    /// The conditions that ran for this call and their results.
    conditions: Vec<ConditionRan>,
    upstream_started: Option<Instant>,
    approval_id: Option<String>,
    /// Method, kept for the line written if the request is cut off before `logging`.
    method: Option<http::Method>,
    /// On an MCP route: the JSON-RPC message and what its answer needs.
    mcp: Option<Box<mcp::McpCall>>,
    /// A sampled call's spans (`tracing:`); `None` for every other call.
    trace: Option<Box<crate::observe::trace::CallTrace>>,
    logged: bool,
    _in_flight: Option<InFlight>,
}

impl Drop for RequestCtx {
    /// pingora runs `logging` for every request it finishes; a request still running when the
    /// grace period ends is dropped instead. Its line is written here, so that a call that may
    /// already have reached an upstream is never missing from the audit trail.
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        let Some(state) = self._in_flight.as_ref().map(|g| g.0.clone()) else {
            return;
        };
        // Cut off mid-way: whatever was decided, the call did not complete.
        self.outcome = Outcome::Error { code: "aborted" };
        let method = self.method.clone();
        let seen = Seen {
            method: method.as_ref().map_or("", |m| m.as_str()),
            host: None,
            raw_path: "",
            query: None,
            client: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
        };
        self.record(&state, &seen);
    }
}

/// What the session says about a finished request.
struct Seen<'a> {
    method: &'a str,
    /// The `Host` header as sent (the policy tools normalize it as the router does).
    host: Option<&'a str>,
    raw_path: &'a str,
    query: Option<&'a str>,
    client: Option<String>,
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
}

impl RequestCtx {
    /// Metrics and the access-log line of this request; only once.
    fn record(&mut self, state: &GatewayState, seen: &Seen<'_>) {
        if self.logged {
            return;
        }
        self.logged = true;
        let Some(snap) = self.snap.clone() else {
            return;
        };
        let total = self.started.elapsed();
        let upstream_time = self.upstream_started.map(|t| t.elapsed());
        // Borrowed from this call's snapshot (not from `self`, which is updated below).
        let route: &str = match self.route {
            Some(r) => &snap.routes.routes[r].name,
            None => "none",
        };
        // Only configured agent ids become label values.
        let agent_label = self.agent.as_ref().map(|a| &*a.id).unwrap_or("unknown");
        let m = &state.metrics;
        let decision = self.outcome.decision();
        let reason = self.outcome.reason();
        if let Some(kind) = reason.and_then(limit_kind) {
            m.limited
                .with_label_values(&[agent_label, route, kind])
                .inc();
        }
        m.requests
            .with_label_values(&[agent_label, route, decision, status_label(seen.status)])
            .inc();
        match self.outcome {
            Outcome::Denied { code } => m.denials.with_label_values(&[code]).inc(),
            Outcome::ShadowDenied { would_deny } => m
                .shadow_denials
                .with_label_values(&[route, would_deny])
                .inc(),
            Outcome::Undecided
            | Outcome::Allowed
            | Outcome::Held
            | Outcome::UpstreamError { .. }
            | Outcome::Error { .. } => {}
        }
        m.request_duration
            .with_label_values(&[route])
            .observe(total.as_secs_f64());
        let gateway_only = total.saturating_sub(upstream_time.unwrap_or_default());
        m.gateway_duration
            .with_label_values(&[route])
            .observe(gateway_only.as_secs_f64());
        if let (Some(u), Some(t)) = (self.upstream(), upstream_time) {
            m.upstream_duration
                .with_label_values(&[&u.name])
                .observe(t.as_secs_f64());
        }
        let token = self.token.as_deref();
        let trace = self.trace.take();
        let line = AccessRecord {
            time: LogTime(self.started_wall),
            request_id: &self.request_id,
            agent: self
                .agent
                .as_ref()
                .map(|a| &*a.id)
                .or(token.map(|t| t.subject.as_str())),
            owner: self.agent.as_ref().map(|a| &*a.owner),
            on_behalf_of: token.and_then(|t| t.on_behalf_of.as_deref()),
            prior_actors: token.map_or(&[], |t| t.prior_actors.as_slice()),
            jti: token.and_then(|t| t.jti.as_deref()),
            issuer: token.map(|t| &*t.issuer),
            route: self.route.map(|_| route),
            method: seen.method,
            host: seen.host,
            token_scopes: token.map_or(&[], |t| t.scopes.as_slice()),
            path: self.path.as_ref().map_or(seen.raw_path, |p| p.as_str()),
            query: seen.query,
            client: seen.client.clone(),
            status: seen.status,
            decision,
            reason,
            upstream: if self.outcome.reached_upstream() {
                self.upstream().map(|u| &*u.name)
            } else {
                None
            },
            bytes_in: seen.bytes_in,
            bytes_out: seen.bytes_out,
            duration_ms: millis(total),
            upstream_ms: upstream_time.map(millis),
            config_version: snap.version,
            approval_id: self.approval_id.as_deref(),
            would_deny: self.outcome.would_deny(),
            conditions: &self.conditions,
            mcp: self.mcp.as_deref().map(|c| {
                let msg = c.msg.as_ref();
                crate::observe::access_log::McpFields {
                    method: msg.and_then(|m| m.method.as_deref()),
                    kind: msg.and_then(|m| m.target.as_ref()).map(|(k, _)| k.as_str()),
                    name: msg.and_then(|m| m.target.as_ref()).map(|(_, n)| n.as_str()),
                    args_sha256: msg.and_then(|m| m.args_sha256.as_deref()),
                    rule: c.rule.map(|i| &*c.policy.rules[i].pattern),
                    session: c.session.as_deref(),
                    arguments: c.arguments.as_ref(),
                }
            }),
            trace_id: trace.as_ref().map(|t| t.trace_id()),
        };
        state.access_log.log_access(&line);
        if let Some(trace) = trace {
            trace.finish(&line, self.agent.as_ref().map(|a| &*a.id));
        }
        if let Some(c) = &self.mcp {
            let method = c.msg.as_ref().map_or(seen.method, |m| m.method_label());
            m.mcp_requests
                .with_label_values(&[route, method, decision])
                .inc();
        }
        // Anomaly detection, off the request path: one bounded-queue send per call.
        if let Some(agent) = &self.agent {
            let denied = match self.outcome {
                Outcome::Denied { code } => Some(code),
                _ => None,
            };
            let route = self.route.map(|r| &snap.routes.routes[r]);
            if let Some(ev) = crate::observe::monitor::call_event(
                &snap,
                agent,
                route,
                seen.method,
                denied,
                seen.bytes_in as u64,
                seen.bytes_out as u64,
                self.started_wall,
            ) {
                if !state.monitor.observe(ev) {
                    m.monitor_events_dropped.inc();
                }
            }
        }
    }

    /// The outcome of a call the upstream answered: allowed, or shadow-denied.
    fn forwarded(&self) -> Outcome {
        match self.would_deny {
            Some(would_deny) => Outcome::ShadowDenied { would_deny },
            None => Outcome::Allowed,
        }
    }

    fn route_name(&self) -> &str {
        match (&self.snap, self.route) {
            (Some(s), Some(r)) => &s.routes.routes[r].name,
            _ => "none",
        }
    }

    fn upstream(&self) -> Option<&crate::policy::Upstream> {
        let s = self.snap.as_ref()?;
        Some(&s.upstreams[s.routes.routes[self.route?].upstream])
    }
}

impl Gateway {
    /// Answer with a refusal and record it in the context.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: Refusal,
    ) -> Result<bool> {
        let out = r.render(&ctx.request_id, ctx.snap.as_deref());
        ctx.outcome = r.outcome(out.code);
        if let Refusal::Token(e) = &r {
            self.state
                .metrics
                .token_failures
                .with_label_values(&[e.code()])
                .inc();
        }
        if let Some(agent) = &ctx.agent {
            tracing::info!(request_id = %ctx.request_id, agent = %agent.id, route = ctx.route_name(), decision = ctx.outcome.decision(), reason = out.code, "refused");
        } else {
            tracing::debug!(request_id = %ctx.request_id, decision = ctx.outcome.decision(), reason = out.code, "refused");
        }
        // A body we did not read would be taken for the next request on this connection.
        let req = session.req_header();
        let has_body = req.headers.contains_key(http::header::CONTENT_LENGTH)
            || req.headers.contains_key(http::header::TRANSFER_ENCODING);
        if has_body {
            session.set_keepalive(None);
        }
        // An MCP request with an id is answered in JSON-RPC, as its client expects.
        let (status, body) = match ctx.mcp.as_ref().and_then(|c| Some((c.id()?, c))) {
            Some((id, call)) => match (&r, call.msg.as_ref().and_then(|m| m.target.as_ref())) {
                (Refusal::ApprovalPending { .. }, Some((_, tool))) => {
                    (200, mcp::pending_result(id, &out, tool))
                }
                _ => mcp::jsonrpc_refusal(id, &out),
            },
            None => (out.status, out.body),
        };
        let mut h = ResponseHeader::build(status, Some(6))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("cache-control", "no-store")?;
        h.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(w) = out.www_authenticate {
            h.insert_header("www-authenticate", w)?;
        }
        if let Some(s) = out.retry_after {
            h.insert_header("retry-after", s.to_string())?;
        }
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: pingora adds a (disabled) response-compression module by default,
    /// which still inspects every response. The gateway never compresses.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snap: None,
            request_id: String::new(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            path: None,
            token: None,
            agent: None,
            route: None,
            outcome: Outcome::Undecided,
            would_deny: None,
            charge: Charge::default(),
            cut: None,
            credential_error: None,
            conditions: Vec::new(),
            upstream_started: None,
            approval_id: None,
            method: None,
            mcp: None,
            trace: None,
            logged: false,
            _in_flight: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.state.in_flight.fetch_add(1, Ordering::SeqCst);
        self.state.metrics.in_flight.inc();
        ctx._in_flight = Some(InFlight(self.state.clone()));
        ctx.started = Instant::now();
        ctx.started_wall = SystemTime::now();
        ctx.request_id = uuid::Uuid::now_v7().simple().to_string();
        ctx.method = Some(session.req_header().method.clone());
        if let Some(tracer) = &self.state.tracer {
            let req = session.req_header();
            ctx.trace = tracer.start_call(&req.headers, &req.method, ctx.started_wall);
        }
        if self.state.draining.load(Ordering::Relaxed) {
            // Finish this request but tell the client to reconnect (elsewhere).
            session.set_keepalive(None);
        }
        // One snapshot for the whole request, even if a reload lands meanwhile.
        let snap = self.state.snapshot.load_full();
        ctx.snap = Some(snap.clone());

        let path = match normalize(
            session.req_header().uri.path(),
            snap.settings.max_path_length,
        ) {
            Ok(p) => p,
            Err(e) => return self.refuse(session, ctx, Refusal::BadPath(e)).await,
        };
        ctx.path = Some(path);

        let token = match bearer(session.req_header()) {
            Ok(t) => t,
            Err(p) => return self.refuse(session, ctx, Refusal::NoToken(p)).await,
        };
        let verified = match snap.verifier.verify_cached(token) {
            Some(answer) => answer,
            None => {
                let began = SystemTime::now();
                let answer = snap.verifier.verify_uncached(token).await;
                if let Some(t) = &ctx.trace {
                    let error = answer.as_ref().err().map(|e| e.code());
                    t.token_verified(began, SystemTime::now(), error);
                }
                answer
            }
        };
        let verified = match verified {
            Ok(v) => v,
            Err(e) => return self.refuse(session, ctx, Refusal::Token(e)).await,
        };
        ctx.token = Some(verified.clone());

        let host = request_host(session.req_header());
        let client_ip = condition_client_ip(session, &snap.settings.trusted_proxies);
        let agent_states = self.state.agent_state.current();
        let changed_tools = self.state.mcp.changed();
        let decide = |session: &Session,
                      body: BodyFact<'_>,
                      body_len: Option<u64>,
                      mcp: Option<&Result<McpMessage, Malformed>>| {
            let req = session.req_header();
            let facts = RequestFacts {
                method: &req.method,
                host: host.as_deref(),
                path: ctx.path.as_ref().expect("set above"),
                token: &verified,
                upgrade: requested_upgrade(req),
                headers: &req.headers,
                volumes: &*self.state.limits,
                now: ctx.started_wall,
                client_ip,
                query: req.uri.query(),
                body,
                body_len,
                agent_states: &agent_states,
                mcp,
                changed_tools: &changed_tools,
            };
            evaluate(&snap, &facts)
        };
        let mut decision = decide(session, BodyFact::NotRead, None, None);
        // A condition or an MCP route reads the body: buffer it (capped) and decide again. A
        // buffered HTTP call is forwarded through the executor, as approved calls are; an MCP
        // call by pingora itself, from the copy it kept (see below).
        let mut buffered = None;
        let mut message = None;
        if let Decision::NeedBody(max) = decision {
            // Kept by pingora as it is read, so that an allowed call (up to 64 KiB) is
            // forwarded on the streaming path with this very body.
            session.as_mut().enable_retry_buffering();
            let body = read_body_capped(session, max).await?;
            // Parsed once, strictly (a repeated key is refused: the gateway and the upstream
            // could each believe a different copy); read as one MCP message too, which only
            // routes of `kind: mcp` look at.
            let json = body.as_deref().map(parse_json_body);
            let msg = match &json {
                None => Err(Malformed::TooLarge(max)),
                Some(Ok(v)) => McpMessage::parse(v),
                Some(Err(why)) => Err(Malformed::NotJson(why.clone())),
            };
            let len = body.as_ref().map(|b| b.len() as u64);
            decision = match &json {
                None => decide(session, BodyFact::TooLarge, None, Some(&msg)),
                Some(Ok(v)) => decide(session, BodyFact::Json(v), len, Some(&msg)),
                Some(Err(why)) => decide(session, BodyFact::NotJson(why), len, Some(&msg)),
            };
            message = msg.ok();
            if body.is_none() {
                session.set_keepalive(None);
            }
            buffered = body;
        }
        match decision {
            Decision::NeedBody(_) => {
                tracing::error!(request_id = %ctx.request_id, "the decision asked for the body twice");
                self.refuse(session, ctx, Refusal::Internal).await
            }
            Decision::Allow(a) => {
                ctx.route = Some(a.route);
                ctx.agent = Some(a.agent);
                if let Some(policy) = &snap.routes.routes[a.route].mcp {
                    let sid = session
                        .req_header()
                        .headers
                        .get(mcp::SESSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let mut call = mcp::McpCall::new(policy, message.take(), a.mcp_rule, sid);
                    if policy.log_arguments && call.msg.as_ref().is_some_and(|m| m.is_call()) {
                        call.arguments = mcp::arguments_of(buffered.as_ref());
                    }
                    ctx.mcp = Some(call);
                }
                if let Some(d) = a.would_deny {
                    let code = Refusal::Policy(d).render("", Some(&snap)).code;
                    tracing::info!(request_id = %ctx.request_id, route = ctx.route_name(), would_deny = code, "shadow mode: forwarded a call a policy would refuse");
                    ctx.would_deny = Some(code);
                }
                // Rates are taken here, atomically per limit: a call that is refused later
                // (override header, approval) still counts, as an attempt.
                let limited = if let Some(shared) = &self.state.shared {
                    let route = &snap.routes.routes[a.route];
                    // Supervised agents never fail open: their calls are the risky ones.
                    let supervised = ctx.agent.as_ref().is_some_and(|g| g.supervised);
                    let fail_open = route.fail_open && !supervised;
                    // Boxed: only replicas take this path, and its future is large.
                    match Box::pin(shared.admit(&route.name, fail_open, &a.charge)).await {
                        Ok(()) => None,
                        Err(Admission::Limited(refused)) => Some(refused),
                        Err(Admission::Unavailable) => {
                            return self
                                .refuse(session, ctx, Refusal::StateStoreUnavailable)
                                .await;
                        }
                    }
                } else if !a.charge.rates.is_empty() {
                    acquire(&*self.state.limits, &a.charge).err()
                } else {
                    None
                };
                if let Some(refused) = limited {
                    let agent = ctx.agent.clone().expect("set above");
                    let d = Denial::Limited {
                        agent,
                        route: a.route,
                        refused,
                    };
                    return self.refuse(session, ctx, Refusal::Policy(d)).await;
                }
                ctx.charge = a.charge;
                ctx.conditions = a.conditions;
                // The request must not mean more upstream than what was just decided.
                let req = session.req_header();
                let up = ctx.upstream().expect("allowed call has an upstream");
                if let Some(h) = refused_header(req, &up.refused_headers) {
                    let name = h.as_str().to_string();
                    return self
                        .refuse(session, ctx, Refusal::ForbiddenHeader { name })
                        .await;
                }
                if req.uri.query().is_some_and(has_method_override_param) {
                    return self
                        .refuse(session, ctx, Refusal::MethodOverrideParameter)
                        .await;
                }
                if let Some(call) = &ctx.mcp {
                    let agent = ctx.agent.as_deref().expect("set above");
                    // A session opened through another replica: learn its owner once.
                    if let (Some(shared), Some(id)) = (&self.state.shared, call.session.as_deref())
                    {
                        if self.state.mcp.session_owner(&up.name, id).is_none() {
                            if let Ok(Some(owner)) =
                                Box::pin(shared.sessions.owner(&up.name, id)).await
                            {
                                self.state.mcp.bind_session(
                                    &up.name,
                                    id,
                                    &Arc::from(owner.as_str()),
                                );
                            }
                        }
                    }
                    if let Some(r) = mcp::session_refusal(&self.state, &up.name, agent, call) {
                        return self.refuse(session, ctx, r).await;
                    }
                }
                if let Some(policy) = a.approval {
                    if ctx.mcp.as_ref().is_some_and(|c| c.id().is_some()) {
                        let body = buffered.unwrap_or_default();
                        return Box::pin(self.mcp_approval_gate(session, ctx, policy, body)).await;
                    }
                    // Boxed, like the other rare paths below: their futures are large, and
                    // inlined they would grow the state of every call's request_filter
                    // (which async_trait boxes, copying it whole: +8k instructions a call).
                    return Box::pin(self.approval_gate(session, ctx, policy, buffered)).await;
                }
                if let Some(body) = buffered {
                    if ctx.mcp.is_none() {
                        return Box::pin(self.execute(session, ctx, body)).await;
                    }
                    // MCP: pingora forwards the body it kept, so the answer passes through the
                    // response filters (list filtering, session binding). Past its 64 KiB
                    // buffer, only a call whose answer needs no filtering may go through the
                    // executor.
                    if session.as_ref().retry_buffer_truncated() {
                        let call = ctx.mcp.as_ref().expect("checked above");
                        let plain = mcp::list_of(call.msg.as_ref()).is_none()
                            && call
                                .msg
                                .as_ref()
                                .is_some_and(|m| m.method.as_deref() != Some("initialize"));
                        if !plain {
                            let d = Denial::McpInvalid {
                                agent: ctx.agent.clone().expect("set above"),
                                route: a.route,
                                reason: "a list or initialize request longer than 64 KiB".into(),
                            };
                            return self.refuse(session, ctx, Refusal::Policy(d)).await;
                        }
                        return Box::pin(self.execute(session, ctx, body)).await;
                    }
                }
                ctx.outcome = ctx.forwarded();
                tracing::debug!(request_id = %ctx.request_id, agent = ctx.agent.as_ref().map(|a| &*a.id), route = ctx.route_name(), decision = "allow", "allowed");
                Ok(false)
            }
            Decision::Deny(d) => {
                ctx.agent = d.agent().cloned();
                ctx.route = d.route();
                if let Some(policy) = d.route().and_then(|r| snap.routes.routes[r].mcp.as_ref()) {
                    ctx.mcp = Some(mcp::McpCall::new(policy, message.take(), None, None));
                }
                self.refuse(session, ctx, Refusal::Policy(d)).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Only reachable after an Allow: the route was decided in request_filter.
        let Some(up) = ctx.upstream() else {
            return Error::e_explain(
                ErrorType::InternalError,
                "no route decided before upstream_peer",
            );
        };
        let peer = upstream::peer(up);
        if ctx.trace.is_some() {
            // Traced calls only: `up` borrows the context the span is kept in.
            let (name, authority) = (up.name.clone(), up.authority.clone());
            if let Some(t) = ctx.trace.as_mut() {
                t.upstream_started(&name, &authority);
            }
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let credential = match upstream_credential(&self.state, ctx).await {
            Ok(c) => c,
            Err(why) => {
                ctx.credential_error = Some(why);
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no upstream credential",
                ));
            }
        };
        prepare_upstream(session, ctx, req, credential.as_ref())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(up) = ctx.upstream() {
            upstream::sanitize_response(resp, up);
        }
        resp.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if ctx.mcp.is_some() {
            let issued = resp
                .headers
                .get(mcp::SESSION_HEADER)
                .and_then(|v| v.to_str().ok());
            self.track_session(
                ctx,
                &session.req_header().method,
                resp.status.as_u16(),
                issued,
            );
            let is_list = ctx.mcp.as_ref().and_then(|c| mcp::list_of(c.msg.as_ref()));
            if let (Some(call), Some(_), true) = (
                ctx.mcp.as_mut(),
                is_list,
                resp.status == http::StatusCode::OK,
            ) {
                // The answer is rewritten: its length changes, and it is this caller's alone.
                let ct = resp
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                call.filter = Some(mcp::ListFilter::for_content_type(ct));
                resp.remove_header(&http::header::CONTENT_LENGTH);
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                resp.insert_header(http::header::CACHE_CONTROL, "private, no-store")?;
                resp.remove_header(&http::header::ETAG);
            }
        }
        Ok(())
    }

    /// Volume limits on what the agent sends: a chunk past the budget is not forwarded and the
    /// call is cut (see `policy::limits`).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        charge_body(&self.state, ctx, body, Direction::Request)
    }

    /// Volume limits on what the tool answers, chunk by chunk.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        charge_body(&self.state, ctx, body, Direction::Response)?;
        if ctx.mcp.as_ref().is_some_and(|c| c.filter.is_some()) {
            self.filter_list_answer(ctx, body, end_of_stream);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(why) = ctx.credential_error.take() {
            tracing::warn!(request_id = %ctx.request_id, upstream = ctx.upstream().map(|u| &*u.name), error = %why, "no upstream credential; call refused");
            let r = Refusal::UpstreamCredentialUnavailable(why);
            let status = r.render("", None).status;
            let code = if self.refuse(session, ctx, r).await.is_ok() {
                status
            } else {
                0
            };
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if let Some(refused) = ctx.cut.take() {
            // A volume budget cut the stream: a 429 if nothing was answered yet, else the
            // connection is cut mid-response.
            let route = ctx.route.expect("a charged call has a route");
            let agent = ctx.agent.clone().expect("a charged call has an agent");
            let d = Denial::Limited {
                agent,
                route,
                refused,
            };
            if session.response_written().is_none()
                && self.refuse(session, ctx, Refusal::Policy(d)).await.is_ok()
            {
                return FailToProxy {
                    error_code: 429,
                    can_reuse_downstream: false,
                };
            }
            ctx.outcome = Outcome::Error {
                code: "volume_exceeded",
            };
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let failure = upstream::classify(e);
        let refusal = match (failure, e.esource()) {
            (Some(f), _) => {
                upstream::record_failure(&self.state, ctx, f);
                tracing::warn!(request_id = %ctx.request_id, upstream = ctx.upstream().map(|u| &*u.name), error = %e, "upstream failure");
                Refusal::Upstream(f)
            }
            (None, ErrorSource::Downstream) => {
                // The agent went away or sent garbage: nobody to answer, or a plain 400. A more
                // precise ending set before (e.g. approval_abandoned) stays.
                if !matches!(ctx.outcome, Outcome::Error { .. }) {
                    ctx.outcome = Outcome::Error {
                        code: "client_error",
                    };
                }
                let code = match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                };
                if code > 0 && session.response_written().is_none() {
                    let _ = session.respond_error(code).await;
                }
                return FailToProxy {
                    error_code: code,
                    can_reuse_downstream: false,
                };
            }
            (None, _) => {
                tracing::error!(request_id = %ctx.request_id, error = %e, "internal failure");
                Refusal::Internal
            }
        };
        if session.response_written().is_some() {
            // Headers already went out: the best we can do is cut the connection. An ending
            // recorded where it happened (an upstream or volume cut) is the more precise one.
            if !matches!(
                ctx.outcome,
                Outcome::Error { .. } | Outcome::UpstreamError { .. }
            ) {
                ctx.outcome = refusal.outcome(refusal.render("", None).code);
            }
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let status = refusal.render("", None).status;
        if self.refuse(session, ctx, refusal).await.is_err() {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        let seen = Seen {
            method: req.method.as_str(),
            host: req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok()),
            raw_path: req.uri.path(),
            query: req.uri.query(),
            client: session.client_addr().map(|a| match a.as_inet() {
                Some(inet) => {
                    let mut s = String::with_capacity(21);
                    crate::util::push_socket_addr(&mut s, inet);
                    s
                }
                None => a.to_string(),
            }),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
        };
        ctx.record(&self.state, &seen);
    }
}

/// Rewrite the agent's request header into the upstream's for an allowed call (shared by the
/// streaming path and the approval executor).
fn prepare_upstream(
    session: &Session,
    ctx: &RequestCtx,
    req: &mut RequestHeader,
    credential: Option<&http::HeaderValue>,
) -> Result<()> {
    let up = ctx.upstream().expect("allowed call has an upstream");
    let agent = ctx.agent.as_ref().expect("allowed call has an agent");
    let scopes = match &ctx.token {
        Some(t) => effective_scopes(agent, t).join(" "),
        None => String::new(),
    };
    let forwarding = Forwarding {
        upstream: up,
        agent,
        route: ctx.route_name(),
        route_header: match (&ctx.snap, ctx.route) {
            (Some(s), Some(r)) => s.routes.routes[r].name_header.as_ref(),
            _ => None,
        },
        scopes: &scopes,
        request_id: &ctx.request_id,
        client_ip: client_ip(session),
        path: ctx.path.as_ref().expect("normalized in request_filter"),
        query: session.req_header().uri.query(),
        credential,
    };
    prepare_upstream_request(req, &forwarding)?;
    if let Some(t) = &ctx.trace {
        // The upstream's spans become children of the gateway's upstream span.
        let (traceparent, tracestate) = t.traceparent();
        req.insert_header(headers::TRACEPARENT.clone(), traceparent)?;
        match tracestate {
            Some(ts) => req.insert_header(headers::TRACESTATE.clone(), ts)?,
            None => {
                req.remove_header(&headers::TRACESTATE);
            }
        }
    }
    Ok(())
}

/// The upstream credential's value for an allowed call: the static secret at once; a minted
/// or exchanged token made here (boxed: that future is large and rare). `Err`: refuse.
async fn upstream_credential(
    state: &GatewayState,
    ctx: &RequestCtx,
) -> std::result::Result<Option<http::HeaderValue>, String> {
    let Some(up) = ctx.upstream() else {
        return Ok(None);
    };
    let Some(c) = &up.credential else {
        return Ok(None);
    };
    if let crate::policy::snapshot::CredentialSource::Static(s) = &c.source {
        return Ok(Some(s.0.clone()));
    }
    let (Some(snap), Some(agent), Some(token), Some(route)) =
        (&ctx.snap, &ctx.agent, &ctx.token, ctx.route)
    else {
        return Err("the call has no identity to put in a token".into());
    };
    let held = effective_scopes(agent, token);
    let route = &snap.routes.routes[route];
    let made = Box::pin(crate::token_service::upstream::value(
        c,
        snap.token_service.as_ref(),
        agent,
        token,
        route,
        &held,
    ))
    .await;
    state
        .metrics
        .upstream_tokens
        .with_label_values(&[&*up.name, if made.is_ok() { "made" } else { "failed" }])
        .inc();
    made.map(Some)
}

/// Charge a body chunk to the call's volume limits; past a budget the chunk is dropped and
/// the stream is cut with an error (the agent sees an incomplete response, never a shorter
/// one that looks whole).
fn charge_body(
    state: &GatewayState,
    ctx: &mut RequestCtx,
    body: &mut Option<Bytes>,
    flow: Direction,
) -> Result<()> {
    if ctx.charge.volumes.is_empty() {
        return Ok(());
    }
    let Some(chunk) = body.as_ref() else {
        return Ok(());
    };
    let n = chunk.len() as u64;
    if let (Some(agent), true) = (&ctx.agent, n > 0) {
        let dir = match flow {
            Direction::Request => "request",
            Direction::Response | Direction::Both => "response",
        };
        state
            .metrics
            .limit_volume_bytes
            .with_label_values(&[&agent.id, ctx.route_name(), dir])
            .inc_by(n);
    }
    match charge_chunk(&*state.limits, &ctx.charge, flow, n) {
        ChargeOutcome::Continue => Ok(()),
        ChargeOutcome::Cut(refused) => {
            *body = None;
            tracing::info!(request_id = %ctx.request_id, route = ctx.route_name(), limit = %refused.applied.limit.path, "volume budget crossed: stream cut");
            ctx.cut = Some(Box::new(refused));
            Error::e_explain(VOLUME_CUT, "volume budget crossed")
        }
    }
}

/// The error that cuts a stream at a volume budget (`fail_to_proxy` recognises it).
const VOLUME_CUT: ErrorType = ErrorType::Custom("volume_exceeded");

/// The `limit` label of `portcullis_limited_total` for a refusal code of a limit.
fn limit_kind(code: &str) -> Option<&'static str> {
    match code {
        "rate_limited" => Some("rate"),
        "volume_exceeded" => Some("volume"),
        _ => None,
    }
}

/// The agent's IP address.
fn client_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The client address conditions judge: the TCP peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` entry that is not itself a trusted proxy (entries
/// further left were written by whoever the untrusted client is, so they prove nothing).
/// Unparsable entries stop the walk at the last trusted hop, failing closed to a proxy's
/// address rather than believing a made-up one.
fn condition_client_ip(session: &Session, trusted: &[ipnet::IpNet]) -> Option<std::net::IpAddr> {
    let peer = client_ip(session)?;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let mut client = peer;
    let hops = session
        .req_header()
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// Milliseconds with microsecond precision (no float noise in the log).
fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Status as a static label (bounded: HTTP status codes only).
fn status_label(status: u16) -> &'static str {
    const LABELS: [&str; 6] = ["0", "1xx", "2xx", "3xx", "4xx", "5xx"];
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        100..=599 => LABELS[(status / 100) as usize],
        _ => LABELS[0],
    }
}
