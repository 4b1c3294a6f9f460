//! The proxy side of tiered trust: a call whose route (or agent tier) needs approval is
//! buffered, bound to a digest, and either held (`hold`) or answered 202 (`async`); only an
//! approved call reaches the upstream, through the executor, exactly as approved, once.

use super::headers::{strip_client_assertions, REQUEST_ID};
use super::refusal::{Refusal, UpstreamFailure};
use super::{upstream, Gateway, RequestCtx};
use crate::approval::digest::{
    body_preview, body_sha256, headers_sha256, redacted_headers, request_digest, Binding,
};
use crate::approval::executor::is_hop_by_hop;
use crate::approval::store::{Approval, Mode, NewApproval, Status, StoreError};
use crate::approval::{now_ms, rfc3339_ms, HoldOutcome};
use crate::observe::Outcome;
use crate::policy::limits::Direction;
use crate::policy::{ApprovalMode, ApprovalPolicy, ApprovalSettings, Denial};
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;
use std::time::Instant;

/// A buffered call and what binds an approval to it.
struct Bound {
    body: Bytes,
    body_hash: String,
    digest: String,
    query: Option<String>,
    /// The forwardable headers, as the agent sent them (see [`forwardable_headers`]).
    headers: Vec<(String, Vec<u8>)>,
}

/// The request headers that reach the upstream as the agent sent them: everything except what
/// the gateway strips ([`strip_client_assertions`], the same function the forwarding path
/// uses, so the two cannot drift), `Host` (the gateway sets the upstream's), and hop-by-hop
/// headers and `Content-Length` (never forwarded as sent). These are bound into the request
/// digest and shown to approvers.
fn forwardable_headers(session: &Session, ctx: &RequestCtx) -> Vec<(String, Vec<u8>)> {
    let mut req = session.req_header().clone();
    let up = ctx.upstream().expect("allowed call has an upstream");
    strip_client_assertions(
        &mut req,
        up.credential.as_ref().map(|c| &c.header),
        &up.stripped_headers,
    );
    req.remove_header(&http::header::HOST);
    req.headers
        .iter()
        .filter(|(k, _)| !is_hop_by_hop(k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Over `approvals.max_headers` / `max_header_bytes`: an approver could not be shown them all,
/// so the call is refused rather than stored cut short.
fn headers_over_cap(headers: &[(String, Vec<u8>)], settings: &ApprovalSettings) -> Option<Refusal> {
    let count = headers.len();
    let bytes: u64 = headers
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
    let l = &settings.limits;
    (count > l.max_headers as usize || bytes > l.max_header_bytes).then_some(
        Refusal::HeadersTooLarge {
            count,
            bytes,
            max_count: l.max_headers,
            max_bytes: l.max_header_bytes,
        },
    )
}

/// Read the whole request body, refusing (without reading on) once it passes `cap`.
pub(super) async fn read_body_capped(session: &mut Session, cap: u64) -> Result<Option<Bytes>> {
    let declared = crate::policy::limits::declared_length(&session.req_header().headers);
    if declared.is_some_and(|n| n > cap) {
        return Ok(None);
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = session.read_request_body().await? {
        if (buf.len() + chunk.len()) as u64 > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

impl Gateway {
    /// Handle an allowed call that needs approval. Always answers the agent itself (returns
    /// `Ok(true)`), or fails with the downstream error when the agent hung up while held.
    pub(super) async fn approval_gate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: Arc<ApprovalPolicy>,
        buffered: Option<Bytes>,
    ) -> Result<bool> {
        let snap = ctx.snap.clone().expect("snapshot loaded");
        let (Some(settings), Some(svc)) = (snap.approvals.as_ref(), self.approval_service(ctx))
        else {
            return self
                .refuse(session, ctx, Refusal::ApprovalUnavailable)
                .await;
        };
        let agent = ctx.agent.clone().expect("allowed call has an agent");
        // Cheap bounds first, before the body is read: an approver must be able to see every
        // forwarded header, and one agent may hold only so many connections.
        let headers = forwardable_headers(session, ctx);
        if let Some(r) = headers_over_cap(&headers, settings) {
            return self.refuse(session, ctx, r).await;
        }
        let _held_slot = match policy.mode {
            ApprovalMode::Async => None,
            ApprovalMode::Hold => {
                let limit = settings.limits.max_held_per_agent;
                match svc.try_hold(&agent.id, limit) {
                    Some(slot) => Some(slot),
                    None => {
                        let r = Refusal::TooManyPending {
                            agent: agent.id.to_string(),
                            count: u64::from(limit),
                            limit,
                            held: true,
                        };
                        return self.refuse(session, ctx, r).await;
                    }
                }
            }
        };
        // The body must be complete before anything is decided: the approval is bound to it.
        let read = match buffered {
            // Already read for a condition (and under its cap): the approval's cap still holds.
            Some(b) if b.len() as u64 <= settings.max_body_bytes => Some(b),
            Some(_) => None,
            None => read_body_capped(session, settings.max_body_bytes).await?,
        };
        let body = match read {
            Some(b) => b,
            None => {
                session.set_keepalive(None);
                return self
                    .refuse(
                        session,
                        ctx,
                        Refusal::BodyTooLarge {
                            limit: settings.max_body_bytes,
                        },
                    )
                    .await;
            }
        };
        let route = ctx.route_name().to_string();
        let path = ctx.path.clone().expect("normalized");
        let query = session.req_header().uri.query().map(str::to_string);
        let method = session.req_header().method.as_str().to_string();
        let body_hash = body_sha256(&body);
        let headers_hash = headers_sha256(&headers);
        let digest = request_digest(&Binding {
            agent: &agent.id,
            route: &route,
            method: &method,
            path: path.as_str(),
            query: query.as_deref(),
            body_sha256: &body_hash,
            policy_digest: &snap.policy_digest,
            headers_sha256: &headers_hash,
        });
        let bound = Bound {
            body,
            body_hash,
            digest,
            query,
            headers,
        };
        let pending_cap = settings.limits.max_pending_per_agent;

        let approval = match policy.mode {
            ApprovalMode::Async => match svc.find_open(&agent.id, &bound.digest).await {
                Err(e) => {
                    return self.store_down(session, ctx, e).await;
                }
                Ok(Some(a)) if a.status == Status::Approved => a,
                Ok(Some(a)) => return self.pending(session, ctx, &a).await,
                Ok(None) => {
                    // A retry of a call a person denied is told so, not queued for them again.
                    match svc.find_denied(&agent.id, &bound.digest).await {
                        Ok(Some(a)) => return self.denied(session, ctx, a).await,
                        Ok(None) => {}
                        Err(e) => return self.store_down(session, ctx, e).await,
                    }
                    let new =
                        self.new_approval(session, ctx, &policy, &bound, Mode::Async, pending_cap);
                    match svc.create(new, false).await {
                        Ok((a, _)) => return self.pending(session, ctx, &a).await,
                        Err(e) => {
                            return self.create_failed(session, ctx, e).await;
                        }
                    }
                }
            },
            ApprovalMode::Hold => {
                let new = self.new_approval(session, ctx, &policy, &bound, Mode::Hold, pending_cap);
                let (a, rx) = match svc.create(new, true).await {
                    Ok((a, Some(rx))) => (a, rx),
                    Ok((_, None)) => unreachable!("create(wait=true) returns a receiver"),
                    Err(e) => {
                        return self.create_failed(session, ctx, e).await;
                    }
                };
                ctx.approval_id = Some(a.id.clone());
                tracing::info!(request_id = %ctx.request_id, approval_id = %a.id, agent = %agent.id, route = %route, "call held for approval");
                if let Some(t) = ctx.trace.as_mut() {
                    t.approval_wait_started(&a.id);
                }
                let outcome = tokio::select! {
                    o = svc.wait(&a.id, rx, policy.timeout) => o,
                    // Completes only if the agent closes the connection while we wait.
                    _ = session.read_body_or_idle(true) => {
                        svc.abandon(&a.id).await;
                        ctx.outcome = Outcome::Error {
                            code: "approval_abandoned",
                        };
                        // The agent's side ended the call: a downstream error, nothing to answer.
                        return Err(Error::explain(ErrorType::ConnectionClosed, "agent disconnected while its call was held for approval").into_down());
                    }
                };
                if let Some(t) = ctx.trace.as_mut() {
                    t.approval_wait_ended(match &outcome {
                        Err(_) => "store_error",
                        Ok(HoldOutcome::TimedOut(_)) => "timed_out",
                        Ok(HoldOutcome::Decided(a)) => a.status.as_str(),
                    });
                }
                match outcome {
                    Err(e) => {
                        return self.store_down(session, ctx, e).await;
                    }
                    Ok(HoldOutcome::TimedOut(a)) => {
                        return self
                            .refuse(session, ctx, Refusal::ApprovalTimeout { id: a.id })
                            .await
                    }
                    Ok(HoldOutcome::Decided(a)) => match a.status {
                        Status::Approved => a,
                        Status::Denied => return self.denied(session, ctx, a).await,
                        Status::Cancelled => return self.cancelled(session, ctx, a).await,
                        Status::Pending
                        | Status::TimedOut
                        | Status::Abandoned
                        | Status::Expired
                        | Status::Used => {
                            return self
                                .refuse(session, ctx, Refusal::ApprovalTimeout { id: a.id })
                                .await
                        }
                    },
                }
            }
        };
        ctx.approval_id = Some(approval.id.clone());
        self.use_approval(session, ctx, &svc, approval, bound.body)
            .await
    }

    /// Forward a call under an approved approval: unless its agent was paused meanwhile (the
    /// kill switch wins over an approval given before it), and only once (two identical
    /// retries racing for one approval cannot both pass).
    async fn use_approval(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        svc: &crate::approval::ApprovalService,
        approval: Approval,
        body: Bytes,
    ) -> Result<bool> {
        if self.paused(ctx).is_some() {
            return self.cancelled(session, ctx, approval).await;
        }
        match svc.consume(&approval).await {
            Ok(true) => {}
            Ok(false) => {
                // Lost the race to an identical call, or expired in the meantime.
                let fresh = svc.get(&approval.id).await.unwrap_or(approval);
                let r = if fresh.status == Status::Used {
                    Refusal::ApprovalUsed { id: fresh.id }
                } else {
                    Refusal::ApprovalTimeout { id: fresh.id }
                };
                return self.refuse(session, ctx, r).await;
            }
            Err(e) => {
                return self.store_down(session, ctx, e).await;
            }
        }
        self.execute(session, ctx, body).await
    }

    /// An MCP `tools/call` that needs approval. Bound to the agent, the route (the server),
    /// the tool, the canonical digest of its arguments and the forwardable headers (less the
    /// session id): not to the JSON-RPC `id`, which every retry changes. The call waits up to
    /// `mcp.approval_wait` for a decision (`hold` rules; `async` rules answer at once), then
    /// answers a "pending" tool result; the approval stays open, and the same call with the
    /// same arguments runs once approved.
    pub(super) async fn mcp_approval_gate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: Arc<ApprovalPolicy>,
        body: Bytes,
    ) -> Result<bool> {
        let snap = ctx.snap.clone().expect("snapshot loaded");
        let (Some(settings), Some(svc)) = (snap.approvals.as_ref(), self.approval_service(ctx))
        else {
            return self
                .refuse(session, ctx, Refusal::ApprovalUnavailable)
                .await;
        };
        let agent = ctx.agent.clone().expect("allowed call has an agent");
        let call = ctx.mcp.as_ref().expect("an MCP call");
        let wait = match policy.mode {
            ApprovalMode::Hold => call.policy.approval_wait,
            ApprovalMode::Async => std::time::Duration::ZERO,
        };
        let msg = call.msg.as_ref().expect("a tools/call has a message");
        let tool = msg.target.as_ref().map(|(_, t)| t.clone());
        let params = crate::policy::conditions::parse_json_body(&body)
            .ok()
            .and_then(|v| v.get("params").map(crate::policy::mcp::binding_sha256));
        let (Some(tool), Some(args)) = (tool, params) else {
            tracing::error!(request_id = %ctx.request_id, "an MCP call needing approval names no tool");
            return self.refuse(session, ctx, Refusal::Internal).await;
        };
        // Only the protocol's own headers are bound (`Mcp-Protocol-Version`, `Mcp-Method`,
        // `Mcp-Name`, `Mcp-Param-*`): an MCP server acts on the message, and clients send a
        // fresh `traceparent`, `baggage` or request id with every retry.
        let mut headers = forwardable_headers(session, ctx);
        headers.retain(|(k, _)| k.starts_with("mcp-") && k != super::mcp::SESSION_HEADER);
        if let Some(r) = headers_over_cap(&headers, settings) {
            return self.refuse(session, ctx, r).await;
        }
        if body.len() as u64 > settings.max_body_bytes {
            session.set_keepalive(None);
            let limit = settings.max_body_bytes;
            return self
                .refuse(session, ctx, Refusal::BodyTooLarge { limit })
                .await;
        }
        let route = ctx.route_name().to_string();
        let digest = request_digest(&Binding {
            agent: &agent.id,
            route: &route,
            method: "tools/call",
            path: &tool,
            query: None,
            body_sha256: &args,
            policy_digest: &snap.policy_digest,
            headers_sha256: &headers_sha256(&headers),
        });
        let bound = Bound {
            body_hash: body_sha256(&body),
            body,
            digest,
            query: None,
            headers,
        };
        let pending_cap = settings.limits.max_pending_per_agent;
        let (approval, rx) = match svc.find_open(&agent.id, &bound.digest).await {
            Err(e) => return self.store_down(session, ctx, e).await,
            Ok(Some(a)) if a.status == Status::Approved => (a, None),
            Ok(Some(a)) if wait.is_zero() => return self.pending(session, ctx, &a).await,
            Ok(Some(a)) => {
                let rx = svc.watch(&a.id);
                (a, Some(rx))
            }
            Ok(None) => {
                match svc.find_denied(&agent.id, &bound.digest).await {
                    Ok(Some(a)) => return self.denied(session, ctx, a).await,
                    Ok(None) => {}
                    Err(e) => return self.store_down(session, ctx, e).await,
                }
                let new =
                    self.new_approval(session, ctx, &policy, &bound, Mode::Async, pending_cap);
                match svc.create(new, !wait.is_zero()).await {
                    Ok((a, _)) if wait.is_zero() => return self.pending(session, ctx, &a).await,
                    Ok((a, rx)) => (a, rx),
                    Err(e) => return self.create_failed(session, ctx, e).await,
                }
            }
        };
        ctx.approval_id = Some(approval.id.clone());
        let approval = match rx {
            None => approval,
            Some(rx) => {
                // Waiting holds the agent's connection: bounded per agent like held calls.
                let limit = settings.limits.max_held_per_agent;
                let Some(_slot) = svc.try_hold(&agent.id, limit) else {
                    svc.unwatch(&approval.id);
                    return self.pending(session, ctx, &approval).await;
                };
                // A decision that landed before the watch was set is not missed.
                let fresh = match svc.get(&approval.id).await {
                    Ok(a) => a,
                    Err(e) => return self.store_down(session, ctx, e).await,
                };
                let decided = if fresh.status != Status::Pending {
                    svc.unwatch(&fresh.id);
                    Some(fresh)
                } else {
                    if let Some(t) = ctx.trace.as_mut() {
                        t.approval_wait_started(&approval.id);
                    }
                    tokio::select! {
                        r = tokio::time::timeout(wait, rx) => match r {
                            Ok(Ok(a)) => Some(a),
                            _ => None,
                        },
                        _ = session.read_body_or_idle(true) => {
                            svc.unwatch(&approval.id);
                            ctx.outcome = Outcome::Error { code: "approval_abandoned" };
                            return Err(Error::explain(ErrorType::ConnectionClosed, "agent disconnected while its MCP call waited for approval").into_down());
                        }
                    }
                };
                if let Some(t) = ctx.trace.as_mut() {
                    t.approval_wait_ended(
                        decided.as_ref().map_or("timed_out", |a| a.status.as_str()),
                    );
                }
                match decided {
                    None => {
                        svc.unwatch(&approval.id);
                        let latest = svc.get(&approval.id).await.unwrap_or(approval);
                        if latest.status == Status::Pending {
                            return self.pending(session, ctx, &latest).await;
                        }
                        latest
                    }
                    Some(a) => a,
                }
            }
        };
        match approval.status {
            Status::Approved => {}
            Status::Denied => return self.denied(session, ctx, approval).await,
            Status::Cancelled => return self.cancelled(session, ctx, approval).await,
            Status::Pending => return self.pending(session, ctx, &approval).await,
            Status::Used => {
                let id = approval.id;
                return self
                    .refuse(session, ctx, Refusal::ApprovalUsed { id })
                    .await;
            }
            Status::TimedOut | Status::Abandoned | Status::Expired => {
                let id = approval.id;
                return self
                    .refuse(session, ctx, Refusal::ApprovalTimeout { id })
                    .await;
            }
        }
        self.use_approval(session, ctx, &svc, approval, bound.body)
            .await
    }

    /// The running approval service. Missing only if the config has no `approvals:` section,
    /// which a validated config with an approval rule cannot be, and start-up opened the store;
    /// if it happens anyway, the caller fails closed.
    fn approval_service(&self, ctx: &RequestCtx) -> Option<Arc<crate::approval::ApprovalService>> {
        let svc = self.state.approvals.load_full();
        if svc.is_none() || ctx.snap.as_ref().is_none_or(|s| s.approvals.is_none()) {
            tracing::error!(request_id = %ctx.request_id, "a call needs approval but no approval service is running");
        }
        svc
    }

    /// The store failed: log why (it names files), refuse without forwarding (fail closed).
    async fn store_down(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: crate::approval::store::StoreError,
    ) -> Result<bool> {
        tracing::error!(request_id = %ctx.request_id, error = %e, "approval store unavailable; refusing the call");
        self.refuse(session, ctx, Refusal::ApprovalUnavailable)
            .await
    }

    /// Creating the approval failed: the agent's pending cap (429, its own doing), or the
    /// store (503, fail closed).
    async fn create_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        e: StoreError,
    ) -> Result<bool> {
        match e {
            StoreError::TooManyPending { pending, limit } => {
                let agent = ctx.agent.as_ref().map(|a| a.id.to_string());
                let r = Refusal::TooManyPending {
                    agent: agent.unwrap_or_default(),
                    count: pending,
                    limit,
                    held: false,
                };
                self.refuse(session, ctx, r).await
            }
            StoreError::NotFound
            | StoreError::AlreadyDecided { .. }
            | StoreError::Expired
            | StoreError::NotAnApprover { .. }
            | StoreError::AlreadyVoted { .. }
            | StoreError::Unavailable(_) => self.store_down(session, ctx, e).await,
        }
    }

    fn new_approval(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        policy: &ApprovalPolicy,
        bound: &Bound,
        mode: Mode,
        pending_cap: u32,
    ) -> NewApproval {
        let agent = ctx.agent.as_ref().expect("agent");
        let snap = ctx.snap.as_ref().expect("snapshot");
        let credential = ctx
            .upstream()
            .and_then(|u| u.credential.as_ref())
            .map(|c| c.header.as_str().to_string());
        let now = now_ms();
        NewApproval {
            id: uuid::Uuid::now_v7().simple().to_string(),
            mode,
            agent: agent.id.to_string(),
            owner: agent.owner.to_string(),
            route: ctx.route_name().to_string(),
            method: session.req_header().method.as_str().to_string(),
            path: ctx.path.as_ref().expect("path").as_str().to_string(),
            query: bound.query.clone(),
            body_sha256: bound.body_hash.clone(),
            body_bytes: bound.body.len() as u64,
            body_preview: body_preview(&bound.body),
            // Exactly the headers bound into the digest: what the approver sees is what is
            // forwarded (secret-looking values redacted here, yet bound).
            headers: redacted_headers(
                bound
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
                credential.as_deref(),
            ),
            request_digest: bound.digest.clone(),
            config_version: snap.version,
            approvers: policy.approvers.clone(),
            quorum: policy.quorum,
            created_at_ms: now,
            expires_at_ms: now + policy.timeout.as_millis() as i64,
            body: bound.body.to_vec(),
            max_pending_for_agent: Some(pending_cap),
        }
    }

    async fn pending(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        a: &Approval,
    ) -> Result<bool> {
        ctx.approval_id = Some(a.id.clone());
        let approving = a.votes.iter().filter(|v| v.approve).count();
        let r = Refusal::ApprovalPending {
            id: a.id.clone(),
            expires_at: rfc3339_ms(a.expires_at_ms),
            retry_after: 5,
            votes: approving,
            quorum: a.quorum,
        };
        // Not a refusal: the call is parked (`Refusal::outcome` makes it `Held`).
        self.refuse(session, ctx, r).await
    }

    async fn denied(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        a: Approval,
    ) -> Result<bool> {
        let r = Refusal::ApprovalDenied {
            id: a.id.clone(),
            by: a.decided_by.clone(),
            reason: a.decision_reason.clone().unwrap_or_default(),
        };
        self.refuse(session, ctx, r).await
    }

    /// Who paused the call's agent, if it is paused now.
    fn paused(&self, ctx: &RequestCtx) -> Option<crate::policy::agent_state::Stamp> {
        let agent = ctx.agent.as_ref()?;
        let states = self.state.agent_state.current();
        states.agent(&agent.id).and_then(|rt| rt.paused.clone())
    }

    /// The approval was cancelled: because the agent is paused (403 `agent_paused`, as any of
    /// its calls), or otherwise 403 `approval_cancelled`.
    async fn cancelled(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        a: Approval,
    ) -> Result<bool> {
        let r = match (self.paused(ctx), ctx.agent.clone()) {
            (Some(pause), Some(agent)) => Refusal::Policy(crate::policy::Denial::AgentPaused {
                agent,
                pause: Box::new(pause),
            }),
            _ => Refusal::ApprovalCancelled {
                id: a.id.clone(),
                reason: a.decision_reason.clone().unwrap_or_default(),
            },
        };
        self.refuse(session, ctx, r).await
    }

    /// Send the approved (or buffered) call upstream and stream the answer back.
    pub(super) async fn execute(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        body: Bytes,
    ) -> Result<bool> {
        let up = ctx
            .upstream()
            .expect("allowed call has an upstream")
            .clone();
        // The buffered body counts against request volume limits like a streamed one would.
        let mut whole = Some(body);
        if super::charge_body(&self.state, ctx, &mut whole, Direction::Request).is_err() {
            let refused = ctx.cut.take().expect("set by charge_body");
            let d = Denial::Limited {
                agent: ctx.agent.clone().expect("allowed call has an agent"),
                route: ctx.route.expect("allowed call has a route"),
                refused,
            };
            return self.refuse(session, ctx, Refusal::Policy(d)).await;
        }
        let body = whole.unwrap_or_default();
        let mut req = session.req_header().clone();
        let credential = match super::upstream_credential(&self.state, ctx).await {
            Ok(c) => c,
            Err(why) => {
                return self
                    .refuse(session, ctx, Refusal::UpstreamCredentialUnavailable(why))
                    .await
            }
        };
        if let Some(t) = ctx.trace.as_mut() {
            t.upstream_started(&up.name, &up.authority);
        }
        super::prepare_upstream(session, ctx, &mut req, credential.as_ref())?;
        let target = req
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        ctx.upstream_started = Some(Instant::now());
        let sent = self
            .state
            .executor
            .send(&up, req.method.clone(), &target, &req.headers, body)
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let f = UpstreamFailure::from(e);
                upstream::record_failure(&self.state, ctx, f);
                return self.refuse(session, ctx, Refusal::Upstream(f)).await;
            }
        };
        let mut h = ResponseHeader::build(resp.status().as_u16(), Some(resp.headers().len() + 2))?;
        for (k, v) in resp.headers() {
            if !is_hop_by_hop(k.as_str()) {
                h.append_header(k.clone(), v.clone())?;
            }
        }
        upstream::sanitize_response(&mut h, &up);
        if let Some(len) = resp.content_length() {
            h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        }
        h.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        ctx.outcome = ctx.forwarded();
        session.write_response_header(Box::new(h), false).await?;
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    let mut chunk = Some(c);
                    if super::charge_body(&self.state, ctx, &mut chunk, Direction::Response)
                        .is_err()
                    {
                        // Past a response volume budget: cut, as on the streaming path.
                        ctx.cut = None;
                        ctx.outcome = Outcome::Error {
                            code: "volume_exceeded",
                        };
                        return Error::e_explain(
                            ErrorType::Custom("volume_exceeded"),
                            "volume budget crossed by an approved call's response",
                        );
                    }
                    if let Some(c) = chunk {
                        session.write_response_body(Some(c), false).await?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // Headers are out: all we can do is cut the connection.
                    upstream::record_failure(&self.state, ctx, UpstreamFailure::Protocol);
                    return Error::e_because(
                        ErrorType::ReadError,
                        "upstream body of an approved call",
                        e,
                    );
                }
            }
        }
        session.write_response_body(None, true).await?;
        Ok(true)
    }
}
