//! Tiered trust end to end: the real gateway binary holding agent calls for human approval in
//! front of a real upstream that records what it received; approvers decide through the REST
//! API on the admin listener (and the CLI); the store is a real SQLite file in the test's temp
//! dir; notifications go to a real webhook receiver.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

/// Scopes for the write routes.
const WRITE: &[&str] = &["tickets:write"];
/// Scopes for the async route (reporting-bot has them too: "another agent" tests).
const READ: &[&str] = &["tickets:read"];

// ---------------------------------------------------------------------------------------------
// Gateway with approvals

/// What varies between the approval setups.
#[derive(Clone)]
struct Opts {
    /// `timeout` of the `refunds` hold route.
    hold_timeout: &'static str,
    /// `approvals.max_body_bytes`.
    max_body_bytes: u64,
    /// `approvals.webhook.url`.
    webhook: Option<String>,
    /// Add `intern-bot`, a `tier: supervised` agent.
    supervised_agent: bool,
    /// `server.grace_period`.
    grace: &'static str,
    /// Accept fixture-IdP tokens carrying `portcullis_approver` as approvers.
    jwt_approvers: bool,
    /// Extra lines at the end of the `approvals:` section (limits, retention).
    approvals_extra: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            hold_timeout: "120s",
            max_body_bytes: 1024 * 1024,
            webhook: None,
            supervised_agent: false,
            grace: "5s",
            jwt_approvers: false,
            approvals_extra: "",
        }
    }
}

struct Env {
    up: Upstream,
    gw: Gateway,
    /// Approver tokens (only their SHA-256 is in the config).
    alice: String,
    bob: String,
    carol: String,
}

fn new_approver_token() -> String {
    format!(
        "apv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn sha256_hex(b: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(b.as_ref()))
}

/// Routes needing approval, and the `approvals:` section (a top-level key after the routes).
///
/// - `refunds`   POST /api/refunds        hold,  any approver, quorum 1
/// - `payouts`   POST /api/payouts/{id}   async, any approver, quorum 1 (tickets:read)
/// - `wires`     POST /api/wires          hold,  alice and bob, quorum 2
/// - `vault`     POST /api/vault          async, bob only
/// - `ephemeral` POST /api/ephemeral      async, expires after 1 s
/// - `brief`     POST /api/brief          async, expires after 4 s
fn approval_yaml(opts: &Opts, alice: &str, bob: &str, carol: &str) -> String {
    let webhook = match &opts.webhook {
        None => String::new(),
        Some(url) => format!("  webhook:\n    url: {url}\n    timeout: 2s\n    max_attempts: 3\n"),
    };
    format!(
        r#"  - name: refunds
    methods: [POST]
    path: /api/refunds
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: hold
      timeout: {hold_timeout}
  - name: payouts
    methods: [POST]
    path: /api/payouts/{{id}}
    upstream: tickets-api
    scopes: [tickets:read]
    approval:
      mode: async
      timeout: 10m
  - name: wires
    methods: [POST]
    path: /api/wires
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: hold
      timeout: 120s
      approvers: [alice, bob]
      quorum: 2
  - name: vault
    methods: [POST]
    path: /api/vault
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: async
      timeout: 10m
      approvers: [bob]
  - name: ephemeral
    methods: [POST]
    path: /api/ephemeral
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: async
      timeout: 1s
  - name: brief
    methods: [POST]
    path: /api/brief
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: async
      timeout: 4s
  - name: dual
    methods: [POST]
    path: /api/dual
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: async
      timeout: 10m
      quorum: 2
approvals:
  store: approvals.db
  max_body_bytes: {max_body}
  approvers:
    - name: alice
      token_sha256: "{a}"
{alice_idp}    - name: bob
      token_sha256: "{b}"
    - name: carol
      token_sha256: "{c}"
{jwt}{webhook}{extra}"#,
        // IdP names map onto configured people: alice also signs in through the IdP, and
        // dana only through it.
        alice_idp = if opts.jwt_approvers {
            "      idp_names: [alice@example.com]\n"
        } else {
            ""
        },
        jwt = if opts.jwt_approvers {
            "    - name: dana
      idp_names: [dana@example.com, Dana Ops]
  jwt_approvers: {issuer: fixture-idp, claim: portcullis_approver}\n"
        } else {
            ""
        },
        extra = opts.approvals_extra,
        hold_timeout = opts.hold_timeout,
        max_body = opts.max_body_bytes,
        a = sha256_hex(alice),
        b = sha256_hex(bob),
        c = sha256_hex(carol),
    )
}

const SUPERVISED_AGENT: &str = "agents:
  - id: intern-bot
    owner: dave@example.com
    tier: supervised
    scopes: [tickets:read, tickets:write]
";

async fn start(opts: Opts) -> Env {
    let up = Upstream::start().await;
    let (alice, bob, carol) = (
        new_approver_token(),
        new_approver_token(),
        new_approver_token(),
    );
    let mut setup = Setup::new(&up);
    setup.grace_period = opts.grace;
    setup.extra_routes = approval_yaml(&opts, &alice, &bob, &carol);
    let supervised = opts.supervised_agent;
    let gw = Gateway::start_edited(setup, move |text| {
        if !supervised {
            return text;
        }
        assert_eq!(text.matches("agents:\n").count(), 1, "{text}");
        text.replace("agents:\n", SUPERVISED_AGENT)
    })
    .await;
    Env {
        up,
        gw,
        alice,
        bob,
        carol,
    }
}

/// A client for calls that wait for a human: far longer than the harness client's 30 s.
fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(180))
        .build()
        .unwrap()
}

impl Env {
    /// POST `body` (JSON text) to the proxy as the holder of `agent_token`; waits for the answer.
    async fn post(&self, path: &str, agent_token: &str, body: &str) -> Answer {
        let r = patient_client()
            .post(self.gw.url(path))
            .bearer_auth(agent_token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        Answer::read(r).await
    }

    /// The same POST in the background (a held call); `Err` if the connection failed.
    fn spawn_post(
        &self,
        path: &str,
        agent_token: &str,
        body: &str,
    ) -> tokio::task::JoinHandle<Result<Answer, String>> {
        self.spawn_post_with(path, agent_token, body, &[])
    }

    /// [`Env::spawn_post`] with extra request headers.
    fn spawn_post_with(
        &self,
        path: &str,
        agent_token: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<Result<Answer, String>> {
        let mut rb = patient_client()
            .post(self.gw.url(path))
            .bearer_auth(agent_token)
            .header("content-type", "application/json");
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let rb = rb.body(body.to_string());
        tokio::spawn(async move {
            match rb.send().await {
                Ok(r) => Ok(Answer::read(r).await),
                Err(e) => Err(format!("{e:?}")),
            }
        })
    }

    /// A request to the admin listener with an optional bearer token.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut rb = client().request(method, self.gw.admin_url(path));
        if let Some(t) = bearer {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Answer::read(rb.send().await.unwrap()).await
    }

    /// GET an approvals API path as alice; must answer 200.
    async fn api(&self, path: &str) -> Value {
        let a = self
            .admin(reqwest::Method::GET, path, Some(&self.alice), None)
            .await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.body
    }

    /// One approval, as alice sees it.
    async fn approval(&self, id: &str) -> Value {
        self.api(&format!("/api/approvals/{id}")).await
    }

    /// Vote `approve`/`deny` on `id` with an approver token and a reason.
    async fn vote(&self, id: &str, approver: &str, verb: &str, reason: &str) -> Answer {
        self.admin(
            reqwest::Method::POST,
            &format!("/api/approvals/{id}/{verb}"),
            Some(approver),
            Some(json!({ "reason": reason })),
        )
        .await
    }

    /// Like [`Env::vote`], asserting 200; returns the updated approval.
    async fn vote_ok(&self, id: &str, approver: &str, verb: &str, reason: &str) -> Value {
        let a = self.vote(id, approver, verb, reason).await;
        assert_eq!(a.status, 200, "{verb} {id}: {}", a.body);
        a.body
    }

    /// Poll `GET /api/approvals?<query>` until it lists exactly `n` approvals.
    async fn wait_list(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let v = self.api(&format!("/api/approvals?{query}")).await;
            let items = v["approvals"].as_array().cloned().unwrap_or_default();
            if items.len() == n {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "/api/approvals?{query} lists {} approvals, expected {n}: {v:#}\nstderr:\n{}",
                items.len(),
                self.gw.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The one pending approval of `route` (waits for it to be recorded).
    async fn pending_on(&self, route: &str) -> Value {
        self.wait_list(&format!("status=pending&route={route}"), 1)
            .await
            .remove(0)
    }

    /// Poll an approval until its status is `status`.
    async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let v = self.approval(id).await;
            if v["status"] == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "approval {id} is still {} after {POLL_TIMEOUT:?}, expected {status}: {v:#}",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Poll the access log until `pred` holds for some line.
    async fn wait_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.gw.wait_log_line(what, pred).await.0
    }

    /// The audit line of `event` for approval `id`.
    async fn audit(&self, event: &str, id: &str) -> Value {
        self.wait_log(&format!("{event} of {id}"), |l| {
            l["event"] == event && l["approval_id"] == id
        })
        .await
    }
}

/// The answer of a background call, within [`POLL_TIMEOUT`].
async fn finished(call: tokio::task::JoinHandle<Result<Answer, String>>) -> Result<Answer, String> {
    tokio::time::timeout(POLL_TIMEOUT, call)
        .await
        .expect("the held call did not complete")
        .expect("held call task panicked")
}

/// The answer of a background call that must have succeeded at the HTTP level.
async fn answer_of(call: tokio::task::JoinHandle<Result<Answer, String>>) -> Answer {
    finished(call).await.expect("held call failed")
}

/// A 202 `approval_pending` answer; returns the approval id.
fn assert_pending(a: &Answer) -> String {
    a.assert_refusal(202, "approval_pending");
    let id = a.body["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no approval_id: {}", a.body))
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    let expires = a.body["expires_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no expires_at: {}", a.body));
    assert!(
        chrono::DateTime::parse_from_rfc3339(expires).is_ok(),
        "expires_at {expires:?} is not RFC 3339"
    );
    let retry: u64 = a
        .header("retry-after")
        .unwrap_or_else(|| panic!("202 without Retry-After: {:?}", a.headers))
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert!(
        a.body["message"].as_str().unwrap().contains(&id),
        "{}",
        a.body
    );
    id
}

/// A JSON body an approver has to read: nested, with escapes and non-ASCII text.
fn refund_body(order: u32) -> String {
    serde_json::to_string(&json!({
        "order": order,
        "amount": {"value": "1299.95", "currency": "EUR"},
        "customer": {"name": "Zoë O'Brien", "note": "line1\nline2 \"quoted\" ✓"},
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        "refund_to_original_payment": true,
        "tags": null
    }))
    .unwrap()
}

/// A JSON body well above pingora's 64 KiB replay buffer.
fn large_body() -> String {
    let items: Vec<Value> = (0..3000)
        .map(|i| {
            json!({
                "sku": format!("SKU-{i:05}"),
                "qty": i % 7 + 1,
                "note": format!("item {i}: crème brûlée ✓ \"{}\"", "x".repeat(i % 40)),
            })
        })
        .collect();
    let body = serde_json::to_string(&json!({"order": 99, "items": items})).unwrap();
    assert!(body.len() > 200 * 1024, "{}", body.len());
    body
}

/// Every request the upstream received on `path_prefix`.
fn seen_on(up: &Upstream, path_prefix: &str) -> Vec<Seen> {
    up.seen()
        .into_iter()
        .filter(|s| s.path.starts_with(path_prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. hold → approve

/// The held call, approved, reaches the upstream exactly as sent, once, with the gateway's
/// headers; the agent gets the upstream's answer.
async fn hold_approve_roundtrip(env: &Env, body: &str) {
    let hits_before = env.up.hits();
    let agent = token("support-bot", WRITE);
    // Spoofed gateway headers and a credential of the agent's own: the executor path must
    // replace them just like pingora's path does.
    let call = env.spawn_post_with(
        "/api/refunds?order=42&dry_run=false",
        &agent,
        body,
        &[
            ("x-portcullis-agent", "admin"),
            ("x-portcullis-route", "anything"),
            ("x-api-key", "agent-supplied"),
        ],
    );
    let pending = env.pending_on("refunds").await;
    let id = pending["id"].as_str().unwrap().to_string();
    assert_eq!(pending["mode"], "hold");
    assert_eq!(pending["agent"], "support-bot");
    assert_eq!(pending["owner"], "alice@example.com");
    assert_eq!(pending["method"], "POST");
    assert_eq!(pending["path"], "/api/refunds");
    assert_eq!(pending["query"], "order=42&dry_run=false");
    assert_eq!(pending["body_bytes"], body.len());
    assert_eq!(pending["body_sha256"], sha256_hex(body));
    assert_eq!(pending["quorum"], 1);
    // The approver sees the headers, never the agent's token.
    let headers = pending["headers"].to_string();
    assert!(!headers.contains(&agent), "agent token in {headers}");
    assert!(!headers.contains("agent-supplied"), "api key in {headers}");
    // Nothing went out while the call waited.
    assert_eq!(env.up.hits(), hits_before);
    assert!(
        !call.is_finished(),
        "the held call answered before a decision"
    );

    let decided = env
        .vote_ok(&id, &env.alice, "approve", "refund verified")
        .await;
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], json!(["alice"]));

    let a = answer_of(call).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        env.up.hits(),
        hits_before + 1,
        "sent upstream more than once"
    );
    let seen = env.up.seen_with_request_id(a.request_id());
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/refunds?order=42&dry_run=false");
    assert_eq!(seen.body.len(), body.len());
    assert!(seen.body == body, "the upstream got a different body");
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("x-portcullis-agent"), Some("support-bot"));
    assert_eq!(seen.header("x-portcullis-route"), Some("refunds"));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("authorization"), None, "agent token forwarded");
    // The agent got the upstream's own answer (the echo of what it received).
    assert_eq!(a.body["path"], "/api/refunds?order=42&dry_run=false");
    assert!(a.body["body"] == body);
    assert!(a.header("x-api-key").is_none());
    // Used: it authorised exactly this one call.
    let used = env.wait_status(&id, "used").await;
    assert!(used["used_at_ms"].is_i64(), "{used:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_approved_call_reaches_the_upstream_once_exactly_as_sent() {
    let env = start(Opts::default()).await;
    hold_approve_roundtrip(&env, &refund_body(42)).await;
    // > 64 KiB: pingora could not replay this body, the executor sends it whole.
    hold_approve_roundtrip(&env, &large_body()).await;
    assert_eq!(seen_on(&env.up, "/api/refunds").len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. hold → deny

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_denied_call_gets_403_with_the_reason_and_never_reaches_the_upstream() {
    let env = start(Opts::default()).await;
    let call = env.spawn_post(
        "/api/refunds",
        &token("support-bot", WRITE),
        &refund_body(7),
    );
    let id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let decided = env
        .vote_ok(&id, &env.bob, "deny", "customer already refunded twice")
        .await;
    assert_eq!(decided["status"], "denied");
    assert_eq!(decided["decided_by"], json!(["bob"]));
    assert_eq!(
        decided["decision_reason"],
        "customer already refunded twice"
    );

    let a = answer_of(call).await;
    a.assert_refusal(403, "approval_denied");
    assert_eq!(a.body["approval_id"], id);
    assert_eq!(a.body["reason"], "customer already refunded twice");
    assert_eq!(a.body["denied_by"], json!(["bob"]));
    let msg = a.body["message"].as_str().unwrap();
    assert!(
        msg.contains("customer already refunded twice") && msg.contains("bob"),
        "{msg}"
    );
    assert_eq!(env.up.hits(), 0);
    assert_eq!(env.approval(&id).await["status"], "denied");
}

// ---------------------------------------------------------------------------------------------
// 3. hold → timeout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_without_decision_times_out_with_403_and_status_timed_out() {
    let env = start(Opts {
        hold_timeout: "1s",
        ..Opts::default()
    })
    .await;
    let started = Instant::now();
    let a = env
        .post(
            "/api/refunds",
            &token("support-bot", WRITE),
            &refund_body(1),
        )
        .await;
    let waited = started.elapsed();
    a.assert_refusal(403, "approval_timeout");
    assert!(
        waited >= Duration::from_millis(950),
        "answered after {waited:?}"
    );
    let id = a.body["approval_id"].as_str().unwrap().to_string();
    let v = env.approval(&id).await;
    assert_eq!(v["status"], "timed_out", "{v:#}");
    assert_eq!(v["mode"], "hold");
    // Too late to decide now.
    let late = env
        .vote(&id, &env.alice, "approve", "sorry, was away")
        .await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(late.body["error"], "already_decided");
    assert_eq!(env.up.hits(), 0);
    env.gw
        .wait_metric(
            "portcullis_approval_decisions_total",
            &[("outcome", "timeout")],
            1.0,
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// 4. hold, agent disconnects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_disconnecting_while_held_abandons_the_approval() {
    use tokio::io::AsyncWriteExt;
    let env = start(Opts::default()).await;
    let body = refund_body(3);
    let req = format!(
        "POST /api/refunds HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        env.gw.layout.proxy,
        token("support-bot", WRITE),
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(env.gw.layout.proxy)
        .await
        .unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 1.0)
        .await;
    drop(conn);

    let v = env.wait_status(&id, "abandoned").await;
    assert!(v["decided_at_ms"].is_i64(), "{v:#}");
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 0.0)
        .await;
    env.gw
        .wait_metric(
            "portcullis_approval_decisions_total",
            &[("outcome", "abandoned")],
            1.0,
        )
        .await;
    env.audit("approval_abandoned", &id).await;
    // Nobody waits for it any more: it cannot be approved into a call.
    let late = env.vote(&id, &env.alice, "approve", "looks fine").await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(late.body["error"], "already_decided");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.up.hits(), 0);
    // The call's own access-log line says what became of it.
    let line = env
        .wait_log("the abandoned call", |l| {
            l.get("event").is_none() && l["approval_id"] == id.as_str()
        })
        .await;
    assert_eq!(line["agent"], "support-bot");
    assert_eq!(line["route"], "refunds");
    assert_eq!(line["decision"], "error", "{line}");
    // Not an internal failure: nobody was there to answer.
    assert_eq!(line["reason"], "approval_abandoned", "{line}");
    assert_ne!(line["status"], 500, "{line}");
}

// ---------------------------------------------------------------------------------------------
// 5. async: 202, same id on retry, passes once after approval

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_approval_lets_the_identical_retry_pass_exactly_once() {
    let env = start(Opts::default()).await;
    let path = "/api/payouts/7?currency=EUR";
    let body = refund_body(700);
    let agent = token("support-bot", READ);

    let first = env.post(path, &agent, &body).await;
    let id = assert_pending(&first);
    assert_eq!(first.body["quorum"], 1);
    assert_eq!(first.body["approvals"], 0);
    // Before the decision the retry is parked on the same approval, not a second one.
    let again = env.post(path, &agent, &body).await;
    assert_eq!(assert_pending(&again), id);
    let listed = env.wait_list("status=all&route=payouts", 1).await;
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["mode"], "async");
    assert_eq!(listed[0]["query"], "currency=EUR");
    assert_eq!(env.up.hits(), 0);

    env.vote_ok(&id, &env.alice, "approve", "payout checked")
        .await;
    // With a fresh token (a new jti): the approval binds the call, not the token.
    let passed = env.post(path, &token("support-bot", READ), &body).await;
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(env.up.hits(), 1);
    let seen = env.up.seen_with_request_id(passed.request_id());
    assert_eq!(seen.path, "/api/payouts/7?currency=EUR");
    assert!(seen.body == body);
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(env.approval(&id).await["status"], "used");

    // Single use: the next identical call opens a new approval.
    let replay = env.post(path, &agent, &body).await;
    let second = assert_pending(&replay);
    assert_ne!(second, id, "a used approval was reused");
    assert_eq!(env.approval(&second).await["status"], "pending");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.up.hits(), 1);
    assert_eq!(env.wait_list("status=all&route=payouts", 2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_identical_retries_use_one_approval_only_once() {
    let env = start(Opts::default()).await;
    let path = "/api/payouts/21?currency=EUR";
    let body = refund_body(2100);
    let id = assert_pending(&env.post(path, &token("support-bot", READ), &body).await);
    env.vote_ok(&id, &env.alice, "approve", "ok").await;
    let agent = token("support-bot", READ);
    let calls: Vec<_> = (0..6)
        .map(|_| env.spawn_post(path, &agent, &body))
        .collect();
    let mut passed = 0;
    for c in calls {
        let a = answer_of(c).await;
        match a.status {
            200 => passed += 1,
            // Looked after the approval was used: a new approval is opened.
            202 => assert_eq!(a.body["error"], "approval_pending", "{}", a.body),
            // Found it approved but lost the race to mark it used.
            409 => {
                assert_eq!(a.body["error"], "approval_used", "{}", a.body);
                assert_eq!(a.body["approval_id"], id.as_str(), "{}", a.body);
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert_eq!(passed, 1, "one approval let {passed} calls through");
    assert_eq!(env.up.hits(), 1);
    assert_eq!(env.approval(&id).await["status"], "used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_retry_of_a_denied_call_is_told_the_denial() {
    let env = start(Opts::default()).await;
    let path = "/api/payouts/31?currency=EUR";
    let body = refund_body(3100);
    let agent = token("support-bot", READ);
    let id = assert_pending(&env.post(path, &agent, &body).await);
    env.vote_ok(&id, &env.alice, "deny", "customer already refunded")
        .await;
    // The identical retry is told the decision instead of queueing a new approval.
    let retry = env.post(path, &agent, &body).await;
    assert_eq!(retry.status, 403, "{}", retry.body);
    assert_eq!(retry.body["error"], "approval_denied");
    assert_eq!(retry.body["approval_id"], id.as_str());
    assert_eq!(retry.body["reason"], "customer already refunded");
    assert_eq!(retry.body["denied_by"], json!(["alice"]));
    // A different request is a new question for the humans.
    let changed = env.post(path, &agent, &refund_body(3000)).await;
    assert_ne!(assert_pending(&changed), id);
    assert_eq!(env.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_tokens_with_the_approver_claim_approve_and_agents_never_do() {
    let env = start(Opts {
        jwt_approvers: true,
        ..Opts::default()
    })
    .await;
    let path = "/api/payouts/41?currency=EUR";
    let body = refund_body(4100);
    let agent = token("support-bot", READ);
    let id = assert_pending(&env.post(path, &agent, &body).await);

    let with_claim = |sub: &str, scopes: &[&str], claim: Value| {
        let mut c = claims_for(FIXTURE_ISS, sub, scopes);
        c["portcullis_approver"] = claim;
        token_with(c)
    };
    // A registered agent's token is refused even when it carries the claim.
    let sneaky = with_claim("support-bot", READ, json!(true));
    let r = env.vote(&id, &sneaky, "approve", "self-approval").await;
    assert_eq!(
        (r.status, r.body["error"].clone()),
        (403, json!("agent_token_refused"))
    );
    // A person's token without the claim, or with `false`, is refused.
    let plain = token_with(claims_for(FIXTURE_ISS, "erin@example.com", &[]));
    let r = env.vote(&id, &plain, "approve", "no claim").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let falsy = with_claim("erin@example.com", &[], json!(false));
    assert_eq!(env.vote(&id, &falsy, "approve", "false").await.status, 403);
    assert_eq!(env.approval(&id).await["status"], "pending");

    // The claim may name the approver; `true` means the subject.
    let dana = with_claim("dana@example.com", &[], json!(true));
    let v = env
        .vote_ok(&id, &dana, "approve", "checked the payout")
        .await;
    assert_eq!(v["status"], "approved");
    // Recorded under the configured person the IdP name maps onto.
    assert_eq!(v["decided_by"], json!(["dana"]));
    let named = with_claim("u-123", &[], json!("Dana Ops"));
    let who = env
        .admin(reqwest::Method::GET, "/api/whoami", Some(&named), None)
        .await;
    assert_eq!(who.body["approver"], "dana", "{}", who.body);

    let done = env.post(path, &agent, &body).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(env.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_but_unused_async_approval_expires() {
    let env = start(Opts::default()).await;
    let body = r#"{"purge":"all"}"#;
    let agent = token("support-bot", WRITE);
    let id = assert_pending(&env.post("/api/brief", &agent, body).await);
    env.vote_ok(&id, &env.alice, "approve", "quickly").await;
    // Not used within its 4 s: the sweeper expires it.
    let v = env.wait_status(&id, "expired").await;
    assert_eq!(v["decided_by"], json!(["alice"]));
    let late = env.post("/api/brief", &agent, body).await;
    let new = assert_pending(&late);
    assert_ne!(new, id);
    assert_eq!(env.up.hits(), 0);
    env.gw
        .wait_metric(
            "portcullis_approval_decisions_total",
            &[("outcome", "expired")],
            1.0,
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// 6. async tamper

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_approval_does_not_cover_a_changed_request_or_another_agent() {
    let env = start(Opts::default()).await;
    let path = "/api/payouts/7?currency=EUR";
    let body = refund_body(700);
    let support = token("support-bot", READ);
    let id = assert_pending(&env.post(path, &support, &body).await);
    env.vote_ok(&id, &env.alice, "approve", "payout checked")
        .await;

    let mut ids = vec![id.clone()];
    let mut tampered = |a: Answer, what: &str| {
        let new = assert_pending(&a);
        assert!(!ids.contains(&new), "{what}: reused approval {new}");
        ids.push(new);
    };
    // A changed body (one digit of the amount).
    let changed_body = body.replace("1299.95", "9299.95");
    assert_ne!(changed_body, body);
    tampered(
        env.post(path, &support, &changed_body).await,
        "changed body",
    );
    // A changed path (same route).
    tampered(
        env.post("/api/payouts/8?currency=EUR", &support, &body)
            .await,
        "changed path",
    );
    // A changed query.
    tampered(
        env.post("/api/payouts/7?currency=USD", &support, &body)
            .await,
        "changed query",
    );
    tampered(
        env.post("/api/payouts/7?currency=EUR&currency=USD", &support, &body)
            .await,
        "extra query parameter",
    );
    tampered(
        env.post("/api/payouts/7", &support, &body).await,
        "no query",
    );
    // Another agent, the identical request.
    tampered(
        env.post(path, &token("reporting-bot", READ), &body).await,
        "another agent",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(env.up.hits(), 0, "a tampered request reached the upstream");
    // None of them used the approval up: the exact call still passes, once.
    assert_eq!(env.approval(&id).await["status"], "approved");
    let ok = env.post(path, &support, &body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(env.up.hits(), 1);
    let seen = env.up.seen_with_request_id(ok.request_id());
    assert_eq!(seen.header("x-portcullis-agent"), Some("support-bot"));
    assert!(seen.body == body);
}

// ---------------------------------------------------------------------------------------------
// 7. durability

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_survive_a_restart_and_held_ones_become_abandoned() {
    let mut env = start(Opts {
        grace: "2s",
        ..Opts::default()
    })
    .await;
    let path = "/api/payouts/11?currency=EUR";
    let body = refund_body(1100);
    let approved = assert_pending(&env.post(path, &token("support-bot", READ), &body).await);
    env.vote_ok(&approved, &env.alice, "approve", "before the restart")
        .await;
    let pending_async = assert_pending(
        &env.post("/api/payouts/12", &token("support-bot", READ), "{}")
            .await,
    );
    let held = env.spawn_post(
        "/api/refunds",
        &token("support-bot", WRITE),
        &refund_body(5),
    );
    let held_id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let st = env.gw.stop().await;
    assert!(
        st.success(),
        "exit status {st}; stderr:\n{}",
        env.gw.stderr()
    );
    // The held agent did not get the upstream's answer: its call never went out.
    if let Ok(a) = finished(held).await {
        assert_ne!(a.status, 200, "{}", a.body);
    }
    assert_eq!(env.up.hits(), 0);
    // What the stopped gateway left in the store: the hold could not be answered any more.
    let db = rusqlite::Connection::open(env.gw.layout.dir.join("approvals.db")).unwrap();
    let stored = |id: &str| -> String {
        db.query_row("SELECT status FROM approvals WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    };
    // Either the drain abandoned it or it is left pending for the next start to settle.
    let held_at_stop = stored(&held_id);
    assert!(
        held_at_stop == "pending" || held_at_stop == "abandoned",
        "{held_at_stop}"
    );
    assert_eq!(stored(&approved), "approved");
    assert_eq!(stored(&pending_async), "pending");
    drop(db);

    env.gw.restart().await;
    let v = env.wait_status(&held_id, "abandoned").await;
    assert_eq!(v["mode"], "hold");
    if held_at_stop == "pending" {
        // Settled by the new process at start, and counted there.
        env.gw
            .wait_metric(
                "portcullis_approval_decisions_total",
                &[("outcome", "abandoned")],
                1.0,
            )
            .await;
    }
    assert_eq!(env.approval(&pending_async).await["status"], "pending");
    assert_eq!(env.approval(&approved).await["status"], "approved");
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 1.0)
        .await;

    let ok = env.post(path, &token("support-bot", READ), &body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(env.up.hits(), 1);
    assert!(env.up.seen_with_request_id(ok.request_id()).body == body);
    assert_eq!(env.approval(&approved).await["status"], "used");
    let again = env.post(path, &token("support-bot", READ), &body).await;
    assert_ne!(assert_pending(&again), approved);
    assert_eq!(env.up.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// 8. admin API auth and errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_api_refuses_non_approvers_and_answers_exact_errors() {
    use reqwest::Method;
    let env = start(Opts::default()).await;
    let id = assert_pending(
        &env.post("/api/payouts/1", &token("support-bot", READ), "{\"n\":1}")
            .await,
    );
    let approve = format!("/api/approvals/{id}/approve");
    let reason = Some(json!({"reason": "ok"}));
    let agent_jwt = token("support-bot", &["tickets:read", "tickets:write"]);

    for (method, path, body) in [
        (Method::GET, "/api/approvals".to_string(), None),
        (Method::GET, format!("/api/approvals/{id}"), None),
        (Method::POST, approve.clone(), reason.clone()),
        (
            Method::POST,
            format!("/api/approvals/{id}/deny"),
            reason.clone(),
        ),
    ] {
        // No token.
        let a = env.admin(method.clone(), &path, None, body.clone()).await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("approver_auth_required")),
            "{method} {path}: {}",
            a.body
        );
        // A validly signed agent token.
        let a = env
            .admin(method.clone(), &path, Some(&agent_jwt), body.clone())
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (403, Some("agent_token_refused")),
            "{method} {path}: {}",
            a.body
        );
        // A wrong approver token (alice's with one character changed).
        let wrong = format!("{}x", &env.alice[..env.alice.len() - 1]);
        let a = env
            .admin(method.clone(), &path, Some(&wrong), body.clone())
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("invalid_approver_token")),
            "{method} {path}: {}",
            a.body
        );
        // Its hash instead of the token.
        let a = env
            .admin(method.clone(), &path, Some(&sha256_hex(&env.alice)), body)
            .await;
        assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
    }
    let a = env
        .admin(
            Method::GET,
            "/api/approvals?status=bogus",
            Some(&env.alice),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("bad_status"))
    );
    // None of that voted.
    let v = env.approval(&id).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["votes"], json!([]));

    // Unknown id.
    let unknown = "0000000000000000000000000000dead";
    let a = env
        .admin(
            Method::GET,
            &format!("/api/approvals/{unknown}"),
            Some(&env.alice),
            None,
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("not_found"))
    );
    let a = env.vote(unknown, &env.alice, "approve", "ok").await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("not_found"))
    );

    // A reason is required.
    for body in [
        None,
        Some(json!({})),
        Some(json!({"reason": ""})),
        Some(json!({"reason": "   "})),
    ] {
        let a = env
            .admin(Method::POST, &approve, Some(&env.alice), body.clone())
            .await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("reason_required")),
            "{body:?}: {}",
            a.body
        );
    }
    assert_eq!(env.approval(&id).await["votes"], json!([]));

    // An approver who is not on the route's list (vault: bob only).
    let vault = assert_pending(
        &env.post(
            "/api/vault",
            &token("support-bot", WRITE),
            "{\"open\":true}",
        )
        .await,
    );
    for who in [&env.alice, &env.carol] {
        for verb in ["approve", "deny"] {
            let a = env.vote(&vault, who, verb, "I can").await;
            assert_eq!(
                (a.status, a.body["error"].as_str()),
                (403, Some("not_an_approver")),
                "{verb}: {}",
                a.body
            );
        }
    }
    assert_eq!(env.approval(&vault).await["status"], "pending");
    env.vote_ok(&vault, &env.bob, "approve", "bob may").await;

    // Already decided.
    env.vote_ok(&id, &env.alice, "approve", "fine").await;
    for (who, verb) in [
        (&env.alice, "approve"),
        (&env.bob, "approve"),
        (&env.bob, "deny"),
    ] {
        let a = env.vote(&id, who, verb, "again").await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (409, Some("already_decided")),
            "{verb}: {}",
            a.body
        );
    }
    let v = env.approval(&id).await;
    assert_eq!(v["status"], "approved");
    assert_eq!(v["votes"].as_array().unwrap().len(), 1);
    // The API never let anything through to the upstream.
    assert_eq!(env.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voting_on_an_expired_approval_is_410_gone() {
    let env = start(Opts::default()).await;
    let a = env
        .post("/api/ephemeral", &token("support-bot", WRITE), "{\"x\":1}")
        .await;
    let id = assert_pending(&a);
    // The expiry sweeper (once a second) marks it expired.
    env.wait_status(&id, "expired").await;
    for (who, verb) in [(&env.alice, "approve"), (&env.bob, "deny")] {
        let a = env.vote(&id, who, verb, "late").await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (410, Some("expired")),
            "{verb} of an expired approval: {}",
            a.body
        );
    }
    assert_eq!(env.up.hits(), 0);
}

// ---------------------------------------------------------------------------------------------
// 9. quorum

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_of_two_needs_two_distinct_approvers() {
    let env = start(Opts::default()).await;
    let body = refund_body(2000);
    let call = env.spawn_post("/api/wires", &token("support-bot", WRITE), &body);
    let id = env.pending_on("wires").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let v = env
        .vote_ok(&id, &env.alice, "approve", "first look ok")
        .await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["approving_votes"], 1);
    assert_eq!(v["quorum"], 2);
    // Still held: give a wrongly woken call time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!call.is_finished(), "the call left after one of two votes");
    assert_eq!(env.up.hits(), 0);

    let again = env.vote(&id, &env.alice, "approve", "really ok").await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (409, Some("already_voted")),
        "{}",
        again.body
    );
    // carol is an approver, but not for this route.
    let carol = env.vote(&id, &env.carol, "approve", "me too").await;
    assert_eq!(
        (carol.status, carol.body["error"].as_str()),
        (403, Some("not_an_approver")),
        "{}",
        carol.body
    );
    let v = env.approval(&id).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["votes"].as_array().unwrap().len(), 1);
    assert!(!call.is_finished());

    let v = env
        .vote_ok(&id, &env.bob, "approve", "second look ok")
        .await;
    assert_eq!(v["status"], "approved");
    assert_eq!(v["decided_by"], json!(["alice", "bob"]));
    let a = answer_of(call).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.up.hits(), 1);
    assert!(env.up.seen_with_request_id(a.request_id()).body == body);
}

// ---------------------------------------------------------------------------------------------
// 10. webhook

#[derive(Clone, Default)]
struct Hook {
    got: Arc<Mutex<Vec<Value>>>,
}

async fn hook_handler(State(h): State<Hook>, Json(v): Json<Value>) -> &'static str {
    h.got.lock().unwrap().push(v);
    "ok"
}

impl Hook {
    /// A receiver on 127.0.0.1:0; returns it and its URL.
    async fn start() -> (Hook, String) {
        let hook = Hook::default();
        let app = Router::new()
            .route("/hooks/approvals", post(hook_handler))
            .with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (hook, url)
    }

    fn all(&self) -> Vec<Value> {
        self.got.lock().unwrap().clone()
    }

    async fn wait(&self, event: &str, id: &str) -> Value {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            if let Some(v) = self
                .all()
                .into_iter()
                .find(|v| v["event"] == event && v["approval_id"] == id)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} notice for {id}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_told_of_the_request_and_of_the_decision() {
    let (hook, url) = Hook::start().await;
    let env = start(Opts {
        webhook: Some(url),
        ..Opts::default()
    })
    .await;
    let call = env.spawn_post(
        "/api/refunds?order=77",
        &token("support-bot", WRITE),
        &refund_body(77),
    );
    let id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let n = hook.wait("approval_requested", &id).await;
    assert_eq!(n["agent"], "support-bot");
    assert_eq!(n["owner"], "alice@example.com");
    assert_eq!(n["route"], "refunds");
    assert_eq!(n["method"], "POST");
    assert_eq!(n["path"], "/api/refunds");
    assert_eq!(n["status"], "pending");
    let link = n["link"].as_str().unwrap();
    assert!(link.contains(&id), "{link}");
    assert!(
        link.starts_with(&format!("http://{}/console", env.gw.layout.admin)),
        "{link}"
    );
    let text = n["text"].as_str().unwrap();
    for part in [
        "support-bot",
        "alice@example.com",
        "POST",
        "/api/refunds",
        "refunds",
        link,
    ] {
        assert!(text.contains(part), "{part:?} missing from {text:?}");
    }
    let summary = n["summary"].as_str().unwrap();
    assert!(summary.contains("order=77"), "{summary}");

    env.vote_ok(&id, &env.alice, "approve", "fine").await;
    assert_eq!(answer_of(call).await.status, 200);
    let d = hook.wait("approval_decided", &id).await;
    assert_eq!(d["status"], "approved");
    assert_eq!(d["agent"], "support-bot");
    let text = d["text"].as_str().unwrap();
    assert!(text.contains("approved") && text.contains(&id), "{text}");
    env.gw
        .wait_metric("portcullis_approval_notifications_sent_total", &[], 2.0)
        .await;
    // Exactly one notice per event, and no secret in any of them.
    let all = hook.all();
    assert_eq!(all.len(), 2, "{all:#?}");
    let dump = serde_json::to_string(&all).unwrap();
    assert!(!dump.contains(SECRET) && !dump.contains(&env.alice));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_told_when_an_approval_expires_undecided() {
    let (hook, url) = Hook::start().await;
    let env = start(Opts {
        webhook: Some(url),
        ..Opts::default()
    })
    .await;
    let id = assert_pending(
        &env.post("/api/ephemeral", &token("support-bot", WRITE), "{}")
            .await,
    );
    hook.wait("approval_requested", &id).await;
    env.wait_status(&id, "expired").await;
    // The humans were asked to decide before a deadline; they are told it passed
    // (src/approval/notify.rs: EVENT_DECIDED is sent "when a held call was approved, denied
    // or expired").
    let d = hook.wait("approval_decided", &id).await;
    assert_eq!(d["status"], "expired");
}

// ---------------------------------------------------------------------------------------------
// 11. body limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_approval_limit_is_413_and_never_held_or_forwarded() {
    let env = start(Opts {
        max_body_bytes: 1024,
        ..Opts::default()
    })
    .await;
    let agent = token("support-bot", WRITE);
    let big = format!("{{\"pad\":\"{}\"}}", "p".repeat(2000));

    // Declared by Content-Length.
    let a = env.post("/api/refunds", &agent, &big).await;
    a.assert_refusal(413, "body_too_large");
    assert_eq!(a.body["limit_bytes"], 1024);
    // Chunked, so only counting tells.
    let mut req = format!(
        "POST /api/payouts/1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        env.gw.layout.proxy,
        token("support-bot", READ)
    );
    for part in [&big[..1000], &big[1000..]] {
        req.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
    }
    req.push_str("0\r\n\r\n");
    let a = raw_request(env.gw.layout.proxy, req.as_bytes()).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (413, Some("body_too_large")),
        "{a:?}"
    );

    // Exactly at the limit is fine (held for a decision, then denied).
    let exact = format!("{{\"pad\":\"{}\"}}", "q".repeat(1024 - 10));
    assert_eq!(exact.len(), 1024);
    let call = env.spawn_post("/api/refunds", &agent, &exact);
    let id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.vote_ok(&id, &env.alice, "deny", "test").await;
    answer_of(call).await.assert_refusal(403, "approval_denied");

    assert_eq!(env.up.hits(), 0);
    // Only the call within the limit became an approval.
    assert_eq!(env.wait_list("status=all", 1).await[0]["id"], id);
}

// ---------------------------------------------------------------------------------------------
// 12. fail closed

/// From this process, take the store's write lock and keep it (until dropped) for longer than
/// the gateway's 5 s busy timeout: every write of the gateway fails, reads still work (WAL).
fn lock_store(env: &Env) -> rusqlite::Connection {
    let path = env.gw.layout.dir.join("approvals.db");
    assert!(path.exists(), "{} missing", path.display());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("BEGIN EXCLUSIVE").unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_that_cannot_be_written_refuses_with_503_and_forwards_nothing() {
    let env = start(Opts::default()).await;
    // An async approval, approved while the store still works.
    let path = "/api/payouts/3";
    let body = refund_body(300);
    let approved = assert_pending(&env.post(path, &token("support-bot", READ), &body).await);
    env.vote_ok(&approved, &env.alice, "approve", "ok").await;

    let lock = lock_store(&env);
    let started = Instant::now();
    // All at once: the gateway's store calls queue behind its one connection, each failing
    // after the 5 s busy timeout.
    let (support_w, support_r) = (token("support-bot", WRITE), token("support-bot", READ));
    let other_body = refund_body(1);
    let vote = patient_client()
        .post(env.gw.admin_url(&format!("/api/approvals/{approved}/deny")))
        .bearer_auth(&env.bob)
        .json(&json!({"reason": "changed my mind"}))
        .send();
    let (new_hold, new_async, approved_retry, vote) = tokio::join!(
        // A new hold cannot be recorded.
        env.post("/api/refunds", &support_w, &other_body),
        // A new async approval cannot be recorded.
        env.post("/api/payouts/4", &support_r, &body),
        // The approved call cannot be marked used: refused, not forwarded unrecorded.
        env.post(path, &support_r, &body),
        // Votes cannot be recorded either.
        async { Answer::read(vote.await.unwrap()).await },
    );
    let elapsed = started.elapsed();
    for a in [&new_hold, &new_async, &approved_retry] {
        a.assert_refusal(503, "approval_unavailable");
        assert!(a.header("retry-after").is_some(), "{:?}", a.headers);
    }
    assert_eq!(
        (vote.status, vote.body["error"].as_str()),
        (503, Some("store_unavailable")),
        "{}",
        vote.body
    );
    assert!(elapsed >= Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(env.up.hits(), 0, "forwarded while the store was unusable");
    drop(lock);

    // Nothing of the above was recorded; the approved call still passes, once.
    let all = env.wait_list("status=all", 1).await;
    assert_eq!(all[0]["id"], approved);
    assert_eq!(all[0]["status"], "approved");
    let ok = env.post(path, &token("support-bot", READ), &body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(env.up.hits(), 1);
    assert_pending(&env.post(path, &token("support-bot", READ), &body).await);
    assert_eq!(env.up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_refusal_does_not_tell_the_agent_the_store_path() {
    let env = start(Opts::default()).await;
    let lock = lock_store(&env);
    let a = env
        .post("/api/payouts/5", &token("support-bot", READ), "{}")
        .await;
    drop(lock);
    a.assert_refusal(503, "approval_unavailable");
    // StoreError::Unavailable names the database file "so it belongs in logs, not in
    // responses to agents" (src/approval/store.rs).
    let text = a.body.to_string();
    let dir = env.gw.layout.dir.display().to_string();
    assert!(
        !text.contains("approvals.db") && !text.contains(&dir),
        "the agent was told where the approval store lives: {text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 13. supervised tier

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervised_agent_writes_need_approval_and_its_reads_pass() {
    let env = start(Opts {
        supervised_agent: true,
        ..Opts::default()
    })
    .await;
    let intern = token("intern-bot", &["tickets:read", "tickets:write"]);
    let body = r#"{"title":"printer on fire","priority":"high"}"#;

    // A write on a route without `approval:`.
    let a = env.post("/api/tickets", &intern, body).await;
    let id = assert_pending(&a);
    let v = env.approval(&id).await;
    assert_eq!(v["agent"], "intern-bot");
    assert_eq!(v["owner"], "dave@example.com");
    assert_eq!(v["route"], "tickets-create");
    assert_eq!(v["mode"], "async");
    assert_eq!(env.up.hits(), 0);

    // Its reads pass directly.
    let r = get(&env.gw, "/api/tickets/5", Some(&intern)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.up.hits(), 1);
    assert_eq!(
        env.up
            .seen_with_request_id(r.request_id())
            .header("x-portcullis-agent"),
        Some("intern-bot")
    );

    // A standard agent's identical write is not held.
    let s = env
        .post("/api/tickets", &token("support-bot", WRITE), body)
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(env.up.hits(), 2);

    // Approved, the supervised write passes once.
    env.vote_ok(&id, &env.carol, "approve", "intern may file it")
        .await;
    let ok = env.post("/api/tickets", &intern, body).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(env.up.hits(), 3);
    assert!(env.up.seen_with_request_id(ok.request_id()).body == body);
    assert_pending(&env.post("/api/tickets", &intern, body).await);
    assert_eq!(env.up.hits(), 3);
    // Only the supervised agent's writes were ever approvals.
    for a in env.wait_list("status=all", 2).await {
        assert_eq!(a["agent"], "intern-bot");
    }
}

// ---------------------------------------------------------------------------------------------
// 14. CLI

/// `portcullis approvals <args>` with `PORTCULLIS_APPROVER_TOKEN=token` (off the runtime).
async fn approvals_cli(env: &Env, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut all: Vec<String> = vec!["approvals".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    let dir = env.gw.layout.dir.clone();
    let token = token.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let envs: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| vec![("PORTCULLIS_APPROVER_TOKEN", t)])
            .unwrap_or_default();
        cli_env(&args, &dir, &envs)
    })
    .await
    .unwrap()
}

fn out(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_approves_and_reports_conflicts() {
    let env = start(Opts::default()).await;
    let admin = format!("http://{}", env.gw.layout.admin);
    let body = refund_body(14);
    let call = env.spawn_post("/api/refunds", &token("support-bot", WRITE), &body);
    let id = env.pending_on("refunds").await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // list, with --admin.
    let o = approvals_cli(&env, &["list", "--admin", &admin], Some(&env.alice)).await;
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{stdout}"));
    for part in [
        "pending",
        "support-bot",
        "refunds",
        "0/1",
        "hold",
        "POST",
        "/api/refunds",
    ] {
        assert!(row.contains(part), "{part:?} missing from {row:?}");
    }
    // list, finding the admin listener from the config file.
    let o = approvals_cli(&env, &["list", "-c", "gateway.yaml"], Some(&env.alice)).await;
    let (stdout, stderr) = out(&o);
    assert!(
        o.status.success() && stdout.contains(&id),
        "{stdout}\n{stderr}"
    );
    // show.
    let o = approvals_cli(&env, &["show", &id, "--admin", &admin], Some(&env.bob)).await;
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["id"], id);
    assert_eq!(shown["body_sha256"], sha256_hex(&body));

    // No token, or a wrong one: refused, nothing decided.
    let o = approvals_cli(
        &env,
        &["approve", &id, "--reason", "x", "--admin", &admin],
        None,
    )
    .await;
    let (_, stderr) = out(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("approver token"), "{stderr}");
    let o = approvals_cli(
        &env,
        &["approve", &id, "--reason", "x", "--admin", &admin],
        Some("apv_not-a-real-token"),
    )
    .await;
    let (_, stderr) = out(&o);
    assert!(!o.status.success());
    assert!(stderr.contains("invalid_approver_token (401)"), "{stderr}");
    assert!(!call.is_finished());
    assert_eq!(env.approval(&id).await["status"], "pending");

    // approve.
    let o = approvals_cli(
        &env,
        &["approve", &id, "--reason", "x", "--admin", &admin],
        Some(&env.alice),
    )
    .await;
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("approval {id} is now approved (1/1 approvals)")),
        "{stdout}"
    );
    let a = answer_of(call).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(env.up.hits(), 1);
    let v = env.approval(&id).await;
    assert_eq!(v["votes"][0]["approver"], "alice");
    assert_eq!(v["votes"][0]["reason"], "x");

    // deny on a decided one: non-zero exit with the 409.
    let o = approvals_cli(
        &env,
        &["deny", &id, "--reason", "too late", "--admin", &admin],
        Some(&env.bob),
    )
    .await;
    let (stdout, stderr) = out(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("already_decided (409)"), "{stderr}");
    assert!(stderr.contains("already"), "{stderr}");
    assert_eq!(env.approval(&id).await["status"], "used");
}

// ---------------------------------------------------------------------------------------------
// 15. metrics and the audit trail

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_record_every_approval_event() {
    let env = start(Opts::default()).await;
    let agent = token("support-bot", WRITE);
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 0.0)
        .await;
    let first = env.spawn_post("/api/refunds?n=1", &agent, &refund_body(1));
    let second = env.spawn_post("/api/refunds?n=2", &agent, &refund_body(2));
    let held = env.wait_list("status=pending&route=refunds", 2).await;
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 2.0)
        .await;
    let id_of = |q: &str| {
        held.iter()
            .find(|a| a["query"] == q)
            .unwrap_or_else(|| panic!("no approval with query {q}: {held:#?}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (one, two) = (id_of("n=1"), id_of("n=2"));

    env.vote_ok(&one, &env.alice, "approve", "refund ok").await;
    let a1 = answer_of(first).await;
    assert_eq!(a1.status, 200, "{}", a1.body);
    env.gw
        .wait_metric("portcullis_approvals_pending", &[], 1.0)
        .await;
    env.vote_ok(&two, &env.bob, "deny", "not today").await;
    let a2 = answer_of(second).await;
    a2.assert_refusal(403, "approval_denied");
    let text = env
        .gw
        .wait_metric("portcullis_approvals_pending", &[], 0.0)
        .await;
    for (outcome, n) in [("approved", 1.0), ("denied", 1.0), ("used", 1.0)] {
        assert_eq!(
            metric(
                &text,
                "portcullis_approval_decisions_total",
                &[("outcome", outcome)]
            ),
            Some(n),
            "{outcome}:\n{text}"
        );
    }
    for outcome in ["timeout", "abandoned", "expired"] {
        assert_eq!(
            metric(
                &text,
                "portcullis_approval_decisions_total",
                &[("outcome", outcome)]
            )
            .unwrap_or(0.0),
            0.0,
            "{outcome}:\n{text}"
        );
    }
    assert_eq!(
        metric(
            &text,
            "portcullis_approval_time_to_decision_seconds_count",
            &[]
        ),
        Some(2.0),
        "{text}"
    );
    // An async 202 counts as held.
    assert_pending(
        &env.post("/api/payouts/9", &token("support-bot", READ), "{}")
            .await,
    );
    env.gw
        .wait_metric(
            "portcullis_requests_total",
            &[
                ("route", "payouts"),
                ("decision", "held"),
                ("status", "202"),
            ],
            1.0,
        )
        .await;

    // The audit trail.
    for id in [&one, &two] {
        let l = env.audit("approval_requested", id).await;
        assert_eq!(l["agent"], "support-bot");
        assert_eq!(l["owner"], "alice@example.com");
        assert_eq!(l["route"], "refunds");
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/api/refunds");
        assert_eq!(l["status"], "pending");
        assert_eq!(l["approver"], Value::Null);
    }
    let l = env.audit("approval_vote_approve", &one).await;
    assert_eq!(
        (l["approver"].as_str(), l["reason"].as_str()),
        (Some("alice"), Some("refund ok"))
    );
    let l = env.audit("approval_approved", &one).await;
    assert_eq!(l["status"], "approved");
    assert_eq!(l["approver"], "alice");
    let l = env.audit("approval_used", &one).await;
    assert_eq!(l["status"], "used");
    let l = env.audit("approval_vote_deny", &two).await;
    assert_eq!(
        (l["approver"].as_str(), l["reason"].as_str()),
        (Some("bob"), Some("not today"))
    );
    let l = env.audit("approval_denied", &two).await;
    assert_eq!(l["status"], "denied");
    assert_eq!(
        (l["approver"].as_str(), l["reason"].as_str()),
        (Some("bob"), Some("not today"))
    );
    // Only one decision and one use each.
    let log = env.gw.access_log();
    let count = |event: &str, id: &str| {
        log.iter()
            .filter(|l| l["event"] == event && l["approval_id"] == id)
            .count()
    };
    assert_eq!(count("approval_approved", &one), 1);
    assert_eq!(count("approval_used", &one), 1);
    assert_eq!(count("approval_used", &two), 0);
    assert_eq!(count("approval_denied", &two), 1);

    // The held calls' own access-log lines name their approval.
    let l = env.gw.access_log_line(a1.request_id()).await;
    assert_eq!(l["approval_id"], one.as_str());
    assert_eq!(l["status"], 200);
    assert_eq!(l["decision"], "allow");
    assert_eq!(l["route"], "refunds");
    let l = env.gw.access_log_line(a2.request_id()).await;
    assert_eq!(l["approval_id"], two.as_str());
    assert_eq!(l["status"], 403);
    assert_eq!(l["reason"], "approval_denied");

    // No token or credential in any line.
    let raw = std::fs::read_to_string(env.gw.layout.access_log_path()).unwrap();
    for secret in [SECRET, &agent, &env.alice, &env.bob] {
        assert!(!raw.contains(secret), "secret in the access log");
    }
}

// ---------------------------------------------------------------------------------------------
// Hardening: an approval releases exactly what the approver saw; nobody exhausts approvals.

/// The attack: get a harmless-looking call approved, then retry it with a header that changes
/// what the tool does (a method override, another tenant, a changed secret-looking header).
/// Each such retry must be a new question for the humans, never ride on the approval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_retry_with_an_added_or_changed_header_does_not_ride_on_the_approval() {
    let env = start(Opts::default()).await;
    let path = "/api/payouts/51?currency=EUR";
    let body = refund_body(5100);
    let agent = token("support-bot", READ);
    let approved_headers = [("x-tenant", "acme"), ("x-session-token", "s3cret-session")];
    let first = answer_of(env.spawn_post_with(path, &agent, &body, &approved_headers)).await;
    let id = assert_pending(&first);

    // The approver sees every forwarded header, the secret-looking one redacted, and never
    // the agent's own credential (it is not forwarded).
    let shown = env.approval(&id).await;
    let headers: Vec<(String, String)> = serde_json::from_value(shown["headers"].clone()).unwrap();
    assert!(
        headers.contains(&("x-tenant".into(), "acme".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-session-token".into(), "<redacted>".into())),
        "{headers:?}"
    );
    assert!(
        headers
            .iter()
            .all(|(k, _)| k != "authorization" && k != "host"),
        "{headers:?}"
    );
    env.vote_ok(&id, &env.alice, "approve", "payout checked")
        .await;

    let mut ids = vec![id.clone()];
    for (what, extra) in [
        // (A method-override header is refused before any approval: tests/hardening.rs.)
        (
            "header added",
            vec![
                ("x-tenant", "acme"),
                ("x-session-token", "s3cret-session"),
                ("x-dry-run", "false"),
            ],
        ),
        (
            "tenant changed",
            vec![
                ("x-tenant", "globex"),
                ("x-session-token", "s3cret-session"),
            ],
        ),
        (
            "redacted header changed",
            vec![("x-tenant", "acme"), ("x-session-token", "someone-elses")],
        ),
        ("header dropped", vec![("x-tenant", "acme")]),
    ] {
        let a = answer_of(env.spawn_post_with(path, &agent, &body, &extra)).await;
        assert_eq!(a.status, 202, "{what}: {}", a.body);
        let new = assert_pending(&a);
        assert!(!ids.contains(&new), "{what}: rode on approval {new}");
        ids.push(new);
    }
    assert_eq!(env.up.hits(), 0, "a changed retry reached the upstream");
    assert_eq!(env.approval(&id).await["status"], "approved");

    // The exact call passes, once, with exactly the approved headers.
    let ok = answer_of(env.spawn_post_with(path, &agent, &body, &approved_headers)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(env.up.hits(), 1);
    let seen = env.up.seen_with_request_id(ok.request_id());
    assert_eq!(seen.header("x-tenant"), Some("acme"));
    assert_eq!(seen.header("x-session-token"), Some("s3cret-session"));
    assert_eq!(seen.header("x-http-method-override"), None);
}

/// A body long past the old 4 KiB preview, with a bidi override hiding in the middle, and a
/// header carrying one: approvers get all of the body through the API, and the CLI shows the
/// invisible characters as escapes instead of obeying them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvers_read_the_whole_body_with_unsafe_characters_escaped() {
    let env = start(Opts::default()).await;
    let mut body = "{\"note\":\"".to_string();
    body.push_str(&"a".repeat(20_000));
    body.push_str("refund to \u{202e}1234 NABI\u{202c} and \u{200b}\u{1b}[2Kdone\"}\n");
    let agent = token("support-bot", READ);
    let first = answer_of(env.spawn_post_with(
        "/api/payouts/61",
        &agent,
        &body,
        &[("x-memo", "pay \u{2067}evil\u{2069} now")],
    ))
    .await;
    let id = assert_pending(&first);

    // The whole body, byte for byte, for approvers only.
    let r = client()
        .get(env.gw.admin_url(&format!("/api/approvals/{id}/body")))
        .bearer_auth(&env.alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-content-type-options"].to_str().unwrap(),
        "nosniff"
    );
    assert!(r.bytes().await.unwrap() == body.as_bytes(), "body differs");
    let anon = client()
        .get(env.gw.admin_url(&format!("/api/approvals/{id}/body")))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let agent_tries = client()
        .get(env.gw.admin_url(&format!("/api/approvals/{id}/body")))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(agent_tries.status(), 403);

    // CLI: the whole body as text, invisible characters escaped, newlines kept.
    let admin = format!("http://{}", env.gw.layout.admin);
    let o = approvals_cli(&env, &["body", &id, "--admin", &admin], Some(&env.alice)).await;
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("refund to \\u{202e}1234 NABI\\u{202c} and \\u{200b}\\u{1b}[2Kdone"),
        "{}",
        &stdout[stdout.len().saturating_sub(200)..]
    );
    assert!(stdout.contains(&"a".repeat(20_000)), "body cut short");
    for raw in ['\u{202e}', '\u{202c}', '\u{200b}', '\u{1b}'] {
        assert!(!stdout.contains(raw), "raw {raw:?} printed");
    }
    // `--raw` is for files: the exact bytes.
    let o = approvals_cli(
        &env,
        &["body", &id, "--raw", "--admin", &admin],
        Some(&env.alice),
    )
    .await;
    assert!(o.stdout == body.as_bytes());
    // `show` is the same JSON value, written so a terminal cannot be fooled by it.
    let o = approvals_cli(&env, &["show", &id, "--admin", &admin], Some(&env.alice)).await;
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains('\u{2067}') && !stdout.contains('\u{202e}'),
        "{stdout}"
    );
    assert!(stdout.contains("pay \\u2067evil\\u2069 now"), "{stdout}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    let memo = shown["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "x-memo")
        .unwrap_or_else(|| panic!("{shown:#}"));
    assert_eq!(memo[1], "pay \u{2067}evil\u{2069} now");
}

/// One person is one vote: alice approving with her approver token and again with her IdP
/// token must not reach a quorum of two; an IdP name nobody configured is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_person_signing_in_two_ways_votes_once() {
    let env = start(Opts {
        jwt_approvers: true,
        ..Opts::default()
    })
    .await;
    let agent = token("support-bot", WRITE);
    let body = r#"{"transfer":"everything"}"#;
    let id = assert_pending(&env.post("/api/dual", &agent, body).await);
    let idp = |sub: &str, claim: Value| {
        let mut c = claims_for(FIXTURE_ISS, sub, &[]);
        c["portcullis_approver"] = claim;
        token_with(c)
    };

    let v = env.vote_ok(&id, &env.alice, "approve", "looks fine").await;
    assert_eq!(v["approving_votes"], 1);
    // The same person through the IdP, by subject and by a claim naming her.
    for alice_again in [
        idp("alice@example.com", json!(true)),
        idp("u-1", json!("alice")),
    ] {
        let r = env.vote(&id, &alice_again, "approve", "me again").await;
        assert_eq!(
            (r.status, r.body["error"].clone()),
            (409, json!("already_voted")),
            "{}",
            r.body
        );
    }
    // Someone the config does not know is refused with a clear error, whatever the claim.
    let stranger = idp("mallory@example.com", json!(true));
    let r = env.vote(&id, &stranger, "approve", "trust me").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.body["error"], "unknown_approver", "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("mallory@example.com"),
        "{}",
        r.body
    );
    assert_eq!(env.approval(&id).await["status"], "pending");
    assert_eq!(env.up.hits(), 0);

    // A second person completes the quorum.
    let dana = idp("dana@example.com", json!(true));
    let v = env
        .vote_ok(&id, &dana, "approve", "second pair of eyes")
        .await;
    assert_eq!(v["status"], "approved");
    assert_eq!(v["decided_by"], json!(["alice", "dana"]));
}

/// The attack: a prompt-injected agent floods the approval queue (held connections and async
/// approvals) to bury or slow down other agents' calls. It is capped with a 429 that says
/// which limit and what to do; another agent's approval is still created, listed, decided and
/// passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_flooding_approvals_is_capped_and_other_agents_are_unaffected() {
    let env = start(Opts {
        approvals_extra: "  max_pending_per_agent: 4\n  max_held_per_agent: 2\n",
        ..Opts::default()
    })
    .await;
    let flood = token("support-bot", &["tickets:read", "tickets:write"]);

    // Held connections: two wait, the third is refused at once.
    let held: Vec<_> = (0..2)
        .map(|i| env.spawn_post("/api/refunds", &flood, &refund_body(9000 + i)))
        .collect();
    env.wait_list("status=pending&agent=support-bot", 2).await;
    let third = env.post("/api/refunds", &flood, &refund_body(9002)).await;
    third.assert_refusal(429, "too_many_pending");
    assert_eq!(third.body["setting"], "approvals.max_held_per_agent");
    assert_eq!(third.body["limit"], 2);
    let msg = third.body["message"].as_str().unwrap();
    assert!(
        msg.contains("support-bot") && msg.contains("max_held_per_agent"),
        "{msg}"
    );
    assert!(third.header("retry-after").is_some(), "{:?}", third.headers);

    // Async approvals: up to the pending cap (the two held ones count), then 429.
    let mut refused = None;
    for i in 0..10u32 {
        let a = env
            .post(&format!("/api/payouts/{i}"), &flood, &refund_body(i))
            .await;
        if a.status == 429 {
            refused = Some((i, a));
            break;
        }
        assert_pending(&a);
    }
    let (at, a) = refused.expect("the flood was never refused");
    assert_eq!(
        at, 2,
        "refused after {at} async approvals, expected 2 (+2 held = 4)"
    );
    a.assert_refusal(429, "too_many_pending");
    assert_eq!(a.body["setting"], "approvals.max_pending_per_agent");
    assert_eq!(a.body["limit"], 4);
    let msg = a.body["message"].as_str().unwrap();
    assert!(msg.contains("4 approvals pending"), "{msg}");
    assert_eq!(
        env.wait_list("status=pending&agent=support-bot", 4)
            .await
            .len(),
        4
    );

    // The flooding agent keeps going in the background, refused each time ...
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let (stop, flood, url) = (stop.clone(), flood.clone(), env.gw.url("/api/payouts/"));
        tokio::spawn(async move {
            let mut refused = 0u32;
            let mut i = 100u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client()
                    .post(format!("{url}{i}"))
                    .bearer_auth(&flood)
                    .header("content-type", "application/json")
                    .body(refund_body(i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 429, "the flood got through");
                refused += 1;
                i += 1;
            }
            refused
        })
    };
    // ... while another agent is not affected: created at once, listed, approvable, and it
    // passes.
    let other = token("reporting-bot", READ);
    let started = Instant::now();
    let b = env.post("/api/payouts/77", &other, &refund_body(77)).await;
    let b_id = assert_pending(&b);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let listed = env.wait_list("status=pending", 5).await;
    assert!(
        listed.iter().any(|a| a["id"] == b_id.as_str()),
        "{listed:#?}"
    );
    env.vote_ok(&b_id, &env.bob, "approve", "reporting is fine")
        .await;
    let passed = env.post("/api/payouts/77", &other, &refund_body(77)).await;
    assert_eq!(passed.status, 200, "{}", passed.body);
    assert_eq!(env.up.hits(), 1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = flooder.await.unwrap();
    assert!(refused > 0, "the background flood never ran");
    assert_eq!(
        env.wait_list("status=pending&agent=support-bot", 4)
            .await
            .len(),
        4,
        "the flood grew past the cap"
    );

    // Deciding frees a slot: the capped agent may ask again.
    let first_held = env.wait_list("status=pending&route=refunds", 2).await;
    let hid = first_held[0]["id"].as_str().unwrap();
    env.vote_ok(hid, &env.alice, "deny", "no").await;
    let again = env.post("/api/payouts/99", &flood, &refund_body(99)).await;
    assert_pending(&again);
    for h in held {
        // One was denied; the other is still held (the process ends with the test).
        if h.is_finished() {
            let a = answer_of(h).await;
            assert_eq!(a.status, 403, "{}", a.body);
        }
    }
}

/// A call needing approval with more headers than an approver can be shown is refused, not
/// stored cut short (the approver would not see what is forwarded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_call_with_too_many_headers_is_refused_and_not_held() {
    let env = start(Opts {
        approvals_extra: "  max_headers: 6\n",
        ..Opts::default()
    })
    .await;
    let agent = token("support-bot", READ);
    let many: Vec<(String, String)> = (0..8).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = answer_of(env.spawn_post_with("/api/payouts/81", &agent, "{}", &refs)).await;
    a.assert_refusal(431, "headers_too_large");
    assert_eq!(a.body["limit_headers"], 6);
    assert!(env.api("/api/approvals?status=all").await["approvals"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(env.up.hits(), 0);
}

/// Decided approvals are deleted from SQLite after `approvals.retention` (and not before they
/// expire); their audit lines stay in the access log. Pending ones are kept however old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decided_approvals_are_pruned_after_the_retention_period() {
    let env = start(Opts {
        approvals_extra: "  retention: 2s\n",
        ..Opts::default()
    })
    .await;
    // `brief` approvals expire after 4 s: a denial is kept at least until then (an identical
    // retry is told the denial), and deleted once both its expiry and the retention passed.
    let denied = assert_pending(
        &env.post("/api/brief", &token("support-bot", WRITE), "{\"a\":1}")
            .await,
    );
    let agent = token("support-bot", READ);
    let pending = assert_pending(&env.post("/api/payouts/92", &agent, "{\"a\":2}").await);
    env.vote_ok(&denied, &env.alice, "deny", "no").await;
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let r = env
            .admin(
                reqwest::Method::GET,
                &format!("/api/approvals/{denied}"),
                Some(&env.alice),
                None,
            )
            .await;
        if r.status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "never pruned: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let db = rusqlite::Connection::open(env.gw.layout.dir.join("approvals.db")).unwrap();
    let rows: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM approvals WHERE id = ?1",
            [&denied],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(env.approval(&pending).await["status"], "pending");
    env.audit("approval_denied", &denied).await;
}

/// The kill switch beats a pending approval: pausing the agent cancels its held call (which is
/// answered 403 `agent_paused`) and its async approvals (even approved, unused ones), and
/// nothing reaches the tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_an_agent_cancels_its_held_and_async_approvals() {
    let env = start(Opts::default()).await;
    let hits = env.up.hits();
    let agent = token("support-bot", WRITE);
    let held = env.spawn_post("/api/refunds", &agent, &refund_body(7));
    let pending = env.pending_on("refunds").await;
    let held_id = pending["id"].as_str().unwrap().to_string();
    // An async approval, approved but not yet used by the agent's retry.
    let reader = token("support-bot", &["tickets:read"]);
    let first = env.post("/api/payouts/9", &reader, "{}").await;
    first.assert_refusal(202, "approval_pending");
    let async_id = first.body["approval_id"].as_str().unwrap().to_string();
    env.vote_ok(&async_id, &env.alice, "approve", "fine").await;

    // An approver may pull the brake.
    let paused = env
        .admin(
            reqwest::Method::POST,
            "/api/agents/support-bot/pause",
            Some(&env.alice),
            Some(json!({"reason": "exfiltration suspected"})),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.body["cancelled_approvals"], 2, "{}", paused.body);

    let a = answer_of(held).await;
    a.assert_refusal(403, "agent_paused");
    assert_eq!(a.body["paused_by"], "alice", "{}", a.body);
    assert_eq!(a.body["paused_reason"], "exfiltration suspected");
    let v = env.wait_status(&held_id, "cancelled").await;
    assert!(
        v["decision_reason"]
            .as_str()
            .unwrap()
            .contains("exfiltration suspected"),
        "{v:#}"
    );
    env.wait_status(&async_id, "cancelled").await;
    // The approved retry is refused too, and stays refused after an admin resumes the agent:
    // its approval was withdrawn, so a person must look again.
    env.post("/api/payouts/9", &reader, "{}")
        .await
        .assert_refusal(403, "agent_paused");
    let resumed = env
        .admin(
            reqwest::Method::POST,
            "/api/agents/support-bot/resume",
            Some(ADMIN_TOKEN),
            Some(json!({"reason": "false alarm"})),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let again = env.post("/api/payouts/9", &reader, "{}").await;
    again.assert_refusal(202, "approval_pending");
    assert_ne!(again.body["approval_id"], async_id.as_str());
    assert_eq!(env.up.hits(), hits, "a cancelled call reached the tool");
}
