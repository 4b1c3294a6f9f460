//! Replicas sharing state (`state.backend: shared`): two real gateway processes in front of one
//! real upstream, sharing a real PostgreSQL and a real Redis (private servers started by the
//! test), enforce as one — approvals, the kill switch, rate limits — and behave as each route
//! says when a store goes away.

#[path = "support/mcp.rs"]
mod mcp_support;
mod support;

use mcp_support::{McpClient, McpServer, ResponseMode, Revision};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use support::stores::{PgServer, RedisServer, TlsRedisServer};
use support::*;

const READ: &[&str] = &["tickets:read"];
const WRITE: &[&str] = &["tickets:write"];
/// The approver's token (only its SHA-256 is in the config).
const ALICE: &str = "apv_replica_test_alice_4b1f0e93c2d7a865";

/// Routes of the replica tests.
///
/// - `refunds`  POST /api/refunds     hold for approval
/// - `payouts`  POST /api/payouts     async approval
/// - `limited`  GET /api/limited/{id} 10 a minute for all agents (fails closed)
/// - `browse`   GET /api/browse/{id}  10 a minute, `store_unavailable: fail_open`
const ROUTES: &str = r#"  - name: refunds
    methods: [POST]
    path: /api/refunds
    upstream: tickets-api
    scopes: [tickets:write]
    approval: {mode: hold, timeout: 60s}
  - name: payouts
    methods: [POST]
    path: /api/payouts
    upstream: tickets-api
    scopes: [tickets:write]
    approval: {mode: async, timeout: 10m}
  - name: limited
    methods: [GET]
    path: /api/limited/{id}
    upstream: tickets-api
    scopes: [tickets:read]
    limits:
      - rate: {requests: 10, per: 1m}
  - name: browse
    methods: [GET]
    path: /api/browse/{id}
    upstream: tickets-api
    scopes: [tickets:read]
    store_unavailable: fail_open
    limits:
      - rate: {requests: 10, per: 1m}
"#;

struct Replicas {
    up: Upstream,
    a: Gateway,
    b: Gateway,
    pg: PgServer,
    redis: RedisServer,
}

/// The shared sections every replica's file ends with (after `admin:`).
fn shared_sections(pg: &PgServer, redis: &RedisServer) -> String {
    format!(
        "state:\n  backend: shared\n  postgres:\n    url: {}\n    timeout: 1s\n  redis:\n    url: {}\n    timeout: 200ms\n    key_prefix: \"test:\"\napprovals:\n  approvers:\n    - name: alice\n      token_sha256: \"{}\"\n",
        pg.url(),
        redis.url(),
        hex::encode(Sha256::digest(ALICE.as_bytes()))
    )
}

/// Two gateways on one PostgreSQL and one Redis. Both read the same signing-key file, as
/// replicas mounting one Secret do: their policies are then identical.
async fn replicas() -> Replicas {
    replicas_with(|_| {}).await
}

/// [`replicas`], with the setup adjusted first.
async fn replicas_with(adjust: impl FnOnce(&mut Setup)) -> Replicas {
    let up = Upstream::start().await;
    let pg = PgServer::start();
    let redis = RedisServer::start();
    let mut setup = Setup::new(&up);
    setup.extra_routes = ROUTES.to_string();
    adjust(&mut setup);
    setup.admin = admin_section("") + &shared_sections(&pg, &redis);
    let a = Gateway::start(setup.clone()).await;
    let key = a.layout.signing_key_path();
    let b = Gateway::start_edited(setup, |text| {
        let own = regex::Regex::new(r"signing_key_file: .*").unwrap();
        own.replace(&text, format!("signing_key_file: {}", key.display()))
            .into_owned()
    })
    .await;
    Replicas {
        up,
        a,
        b,
        pg,
        redis,
    }
}

async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    scopes: &[&str],
    body: Value,
) -> Answer {
    let rb = client()
        .request(method, gw.url(path))
        .bearer_auth(token("support-bot", scopes))
        .json(&body);
    Answer::read(rb.send().await.unwrap()).await
}

async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    bearer: &str,
    body: Option<Value>,
) -> Answer {
    let mut rb = client()
        .request(method, gw.admin_url(path))
        .bearer_auth(bearer);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    Answer::read(rb.send().await.unwrap()).await
}

/// Poll `probe` every 25 ms until it returns true; the time it took.
async fn within(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if probe().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_granted_on_a_releases_the_call_held_on_b_exactly_once() {
    let r = replicas().await;
    // The call is held on B.
    let b_url = r.b.url("/api/refunds");
    let held = tokio::spawn(async move {
        let rb = client()
            .post(b_url)
            .bearer_auth(token("support-bot", WRITE))
            .json(&json!({"amount": 12}));
        Answer::read(rb.send().await.unwrap()).await
    });
    // A lists it (one store) and approves it.
    let mut id = String::new();
    within(
        Duration::from_secs(10),
        "the held approval is listed on A",
        async || {
            let l = admin(
                &r.a,
                reqwest::Method::GET,
                "/api/approvals?status=pending",
                ALICE,
                None,
            )
            .await;
            match l.body["approvals"].as_array().and_then(|a| a.first()) {
                Some(x) => {
                    id = x["id"].as_str().unwrap().to_string();
                    true
                }
                None => false,
            }
        },
    )
    .await;
    assert_eq!(
        r.up.hits(),
        0,
        "nothing reaches the tool before the approval"
    );
    let v = admin(
        &r.a,
        reqwest::Method::POST,
        &format!("/api/approvals/{id}/approve"),
        ALICE,
        Some(json!({"reason": "ok"})),
    )
    .await;
    assert_eq!(v.status, 200, "{}", v.body);
    // B is woken by A's decision (PostgreSQL NOTIFY), well before its 60 s hold timeout.
    let answer = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("B released the held call")
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(r.up.hits(), 1);
    assert_eq!(r.up.seen()[0].body, r#"{"amount":12}"#);
    // Used exactly once: both replicas say so, and the same call again needs a new approval.
    for gw in [&r.a, &r.b] {
        let got = admin(
            gw,
            reqwest::Method::GET,
            &format!("/api/approvals/{id}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(got.body["status"], "used", "{}", got.body);
    }
    let again = call(
        &r.a,
        reqwest::Method::POST,
        "/api/payouts",
        WRITE,
        json!({"n": 1}),
    )
    .await;
    again.assert_refusal(202, "approval_pending");
    let pid = again.body["approval_id"].as_str().unwrap().to_string();
    // An async approval given on B is honoured by A, once.
    let v = admin(
        &r.b,
        reqwest::Method::POST,
        &format!("/api/approvals/{pid}/approve"),
        ALICE,
        Some(json!({"reason": "ok"})),
    )
    .await;
    assert_eq!(v.status, 200, "{}", v.body);
    // A prompt-injected agent replays the approved call on both replicas at once, several
    // times: exactly one reaches the tool.
    let mut replays = Vec::new();
    for i in 0..6 {
        let url = if i % 2 == 0 {
            r.a.url("/api/payouts")
        } else {
            r.b.url("/api/payouts")
        };
        replays.push(tokio::spawn(async move {
            client()
                .post(url)
                .bearer_auth(token("support-bot", WRITE))
                .json(&json!({"n": 1}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in replays {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(r.up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_a_refuses_the_agent_on_b_within_a_second_even_without_redis() {
    let mut r = replicas().await;
    assert_eq!(
        call(
            &r.b,
            reqwest::Method::GET,
            "/api/tickets/1",
            READ,
            Value::Null
        )
        .await
        .status,
        200
    );
    let paused = admin(
        &r.a,
        reqwest::Method::POST,
        "/api/agents/support-bot/pause",
        ADMIN_TOKEN,
        Some(json!({"reason": "replica test"})),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let took = within(
        Duration::from_secs(1),
        "B refuses the paused agent",
        async || {
            call(
                &r.b,
                reqwest::Method::GET,
                "/api/tickets/1",
                READ,
                Value::Null,
            )
            .await
            .status
                == 403
        },
    )
    .await;
    eprintln!("pause on A refused on B after {took:?}");
    call(
        &r.b,
        reqwest::Method::GET,
        "/api/tickets/1",
        READ,
        Value::Null,
    )
    .await
    .assert_refusal(403, "agent_paused");

    // Resume through B; then, with Redis gone, a pause through B still reaches A (PostgreSQL
    // is polled once a second), and it is not lost when Redis comes back empty.
    let resumed = admin(
        &r.b,
        reqwest::Method::POST,
        "/api/agents/support-bot/resume",
        ADMIN_TOKEN,
        Some(json!({"reason": "done"})),
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    within(
        Duration::from_secs(2),
        "A serves the resumed agent",
        async || {
            call(
                &r.a,
                reqwest::Method::GET,
                "/api/tickets/1",
                READ,
                Value::Null,
            )
            .await
            .status
                == 200
        },
    )
    .await;
    r.redis.kill();
    let paused = admin(
        &r.b,
        reqwest::Method::POST,
        "/api/agents/support-bot/pause",
        ADMIN_TOKEN,
        Some(json!({"reason": "no redis"})),
    )
    .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let took = within(
        Duration::from_secs(3),
        "A refuses the agent paused on B without Redis",
        async || {
            call(
                &r.a,
                reqwest::Method::GET,
                "/api/tickets/1",
                READ,
                Value::Null,
            )
            .await
            .status
                == 403
        },
    )
    .await;
    eprintln!("pause on B without Redis refused on A after {took:?}");
    r.redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for gw in [&r.a, &r.b] {
        call(
            gw,
            reqwest::Method::GET,
            "/api/tickets/1",
            READ,
            Value::Null,
        )
        .await
        .assert_refusal(403, "agent_paused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_one_budget_across_replicas() {
    let r = replicas().await;
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &r.a } else { &r.b };
        let a = call(
            gw,
            reqwest::Method::GET,
            &format!("/api/limited/{i}"),
            READ,
            Value::Null,
        )
        .await;
        match a.status {
            200 => admitted += 1,
            429 => {
                a.assert_refusal(429, "rate_limited");
                limited += 1;
            }
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    // 10 a minute for the route, whichever replica a call reaches (Redis counts them
    // atomically, so the tolerance is zero here).
    assert_eq!((admitted, limited), (10, 20));
    assert_eq!(r.up.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_fails_each_route_its_own_way_and_recovers() {
    let mut r = replicas().await;
    for gw in [&r.a, &r.b] {
        assert_eq!(
            call(
                gw,
                reqwest::Method::GET,
                "/api/limited/1",
                READ,
                Value::Null
            )
            .await
            .status,
            200
        );
        assert_eq!(
            call(gw, reqwest::Method::GET, "/api/browse/1", READ, Value::Null)
                .await
                .status,
            200
        );
    }
    r.redis.kill();
    // fail_closed (the default): refused with a reason, nothing sent.
    let hits = r.up.hits();
    let a = call(
        &r.a,
        reqwest::Method::GET,
        "/api/limited/2",
        READ,
        Value::Null,
    )
    .await;
    a.assert_refusal(503, "state_store_unavailable");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(r.up.hits(), hits);
    // fail_open: this replica's own counter decides. 10 a minute is still the most one replica
    // admits alone (its local pre-check), so two replicas admit at most 20 in all.
    let mut open = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &r.a } else { &r.b };
        if call(
            gw,
            reqwest::Method::GET,
            &format!("/api/browse/{i}"),
            READ,
            Value::Null,
        )
        .await
        .status
            == 200
        {
            open += 1;
        }
    }
    assert!(
        (16..=18).contains(&open),
        "each replica admits its 10 minus the 1 it already took: {open}"
    );
    let m = r.a.metrics().await;
    assert!(
        m.contains("portcullis_state_store_fallbacks_total{mode=\"fail_open\",route=\"browse\"}"),
        "{m}"
    );
    assert!(
        m.contains(
            "portcullis_state_store_fallbacks_total{mode=\"fail_closed\",route=\"limited\"}"
        ),
        "{m}"
    );
    let ready = admin(&r.a, reqwest::Method::GET, "/readyz", ADMIN_TOKEN, None).await;
    assert_eq!(
        ready.body["state_store"]["redis"]["ok"], false,
        "{}",
        ready.body
    );
    assert_eq!(
        ready.body["state_store"]["postgres"]["ok"], true,
        "{}",
        ready.body
    );
    // Back: both routes count on Redis again (an empty one: the budget starts over).
    r.redis.restart();
    within(
        Duration::from_secs(10),
        "the fail-closed route works again",
        async || {
            call(
                &r.b,
                reqwest::Method::GET,
                "/api/limited/3",
                READ,
                Value::Null,
            )
            .await
            .status
                == 200
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_loses_no_approval_and_stale_state_fails_closed() {
    let mut r = replicas().await;
    let pending = call(
        &r.a,
        reqwest::Method::POST,
        "/api/payouts",
        WRITE,
        json!({"n": 7}),
    )
    .await;
    pending.assert_refusal(202, "approval_pending");
    let id = pending.body["approval_id"].as_str().unwrap().to_string();

    r.pg.stop();
    // Without PostgreSQL a replica cannot know of pauses made elsewhere: once its copy is
    // stale (3 s), fail-closed routes refuse and fail-open ones go on.
    within(
        Duration::from_secs(10),
        "the fail-closed route refuses on stale state",
        async || {
            call(
                &r.b,
                reqwest::Method::GET,
                "/api/tickets/1",
                READ,
                Value::Null,
            )
            .await
            .status
                == 503
        },
    )
    .await;
    call(
        &r.b,
        reqwest::Method::GET,
        "/api/tickets/1",
        READ,
        Value::Null,
    )
    .await
    .assert_refusal(503, "state_store_unavailable");
    assert_eq!(
        call(
            &r.b,
            reqwest::Method::GET,
            "/api/browse/1",
            READ,
            Value::Null
        )
        .await
        .status,
        200
    );
    // Approvals cannot be recorded: refused, never forwarded unapproved.
    let hits = r.up.hits();
    let refused = call(
        &r.a,
        reqwest::Method::POST,
        "/api/payouts",
        WRITE,
        json!({"n": 8}),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(r.up.hits(), hits);

    r.pg.restart();
    for gw in [&r.a, &r.b] {
        within(
            Duration::from_secs(15),
            "fresh again after PostgreSQL returns",
            async || {
                call(
                    gw,
                    reqwest::Method::GET,
                    "/api/tickets/1",
                    READ,
                    Value::Null,
                )
                .await
                .status
                    == 200
            },
        )
        .await;
    }
    let got = admin(
        &r.b,
        reqwest::Method::GET,
        &format!("/api/approvals/{id}"),
        ALICE,
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["status"], "pending");
    let v = admin(
        &r.b,
        reqwest::Method::POST,
        &format!("/api/approvals/{id}/approve"),
        ALICE,
        Some(json!({"reason": "after restart"})),
    )
    .await;
    assert_eq!(v.status, 200, "{}", v.body);
    let replay = call(
        &r.a,
        reqwest::Method::POST,
        "/api/payouts",
        WRITE,
        json!({"n": 7}),
    )
    .await;
    assert_eq!(replay.status, 200, "{}", replay.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_session_opened_through_a_works_on_b_for_its_agent_only() {
    let server = McpServer::start(ResponseMode::Json, Revision::Session).await;
    let addr = server.addr();
    let r = replicas_with(|s| {
        s.extra_upstreams =
            format!("  - name: tickets-mcp\n    url: http://{addr}\n    kind: mcp\n");
        s.extra_routes += "  - name: tickets-mcp
    methods: [POST, GET, DELETE]
    path: /mcp
    upstream: tickets-mcp
    scopes: [tickets:read]
    mcp:
      tools:
        - name: \"search_*\"
";
    })
    .await;
    // The agent's client opens its session through A.
    let bot = McpClient::connect(
        &r.a.url("/mcp"),
        &token("support-bot", READ),
        Revision::Session,
    )
    .await
    .unwrap_or_else(|e| panic!("connect through A: {e}\n{}", r.a.stderr()));
    bot.list_tools().await.unwrap();
    let sid = server.session_ids().pop().expect("a session was opened");
    let list = r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
    let post = async |gw: &Gateway, agent: &str| {
        let rb = client()
            .post(gw.url("/mcp"))
            .bearer_auth(token(agent, READ))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .body(list);
        Answer::read(rb.send().await.unwrap()).await
    };
    // Its next call reaches B (no sticky sessions): B learns the session's owner from Redis.
    let mut on_b = post(&r.b, "support-bot").await;
    for _ in 0..40 {
        if on_b.status == 200 {
            break;
        }
        // The binding is written to Redis right after A's answer; allow it to land.
        tokio::time::sleep(Duration::from_millis(25)).await;
        on_b = post(&r.b, "support-bot").await;
    }
    assert_eq!(on_b.status, 200, "{}", on_b.body);
    let text = on_b.body.to_string();
    assert!(text.contains("search_tickets"), "{text}");
    // Another agent presenting that session id on B is refused, as it would be on A.
    let stolen = post(&r.b, "reporting-bot").await;
    assert_eq!(stolen.status, 200, "{}", stolen.body);
    assert_eq!(
        stolen.body["error"]["data"]["error"], "mcp_session_not_yours",
        "{}",
        stolen.body
    );
    bot.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_is_used_only_with_a_trusted_certificate() {
    let up = Upstream::start().await;
    let pg = PgServer::start();
    let tls = tokio::task::block_in_place(TlsRedisServer::start);
    let setup_for = |trust: bool| {
        let mut s = Setup::new(&up);
        s.extra_routes = ROUTES.to_string();
        s.admin = admin_section("")
            + &format!(
                "state:\n  backend: shared\n  postgres: {{url: \"{}\"}}\n  redis: {{url: \"{}\"}}\napprovals:\n  approvers:\n    - name: alice\n      token_sha256: \"{}\"\n",
                pg.url(),
                tls.url(),
                hex::encode(Sha256::digest(ALICE.as_bytes()))
            );
        if trust {
            // A private CA, trusted the standard way (rustls-native-certs reads it).
            s.env
                .push(("SSL_CERT_FILE".into(), tls.ca_file().display().to_string()));
        }
        s
    };
    let trusting = Gateway::start(setup_for(true)).await;
    let a = call(
        &trusting,
        reqwest::Method::GET,
        "/api/limited/1",
        READ,
        Value::Null,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let ready = admin(
        &trusting,
        reqwest::Method::GET,
        "/readyz",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(
        ready.body["state_store"]["redis"]["ok"], true,
        "{}",
        ready.body
    );
    // A replica that cannot verify the server (a man in the middle looks the same) never
    // talks to it: its fail-closed routes refuse, and /readyz says why.
    let doubting = Gateway::start(setup_for(false)).await;
    call(
        &doubting,
        reqwest::Method::GET,
        "/api/limited/1",
        READ,
        Value::Null,
    )
    .await
    .assert_refusal(503, "state_store_unavailable");
    let ready = admin(
        &doubting,
        reqwest::Method::GET,
        "/readyz",
        ADMIN_TOKEN,
        None,
    )
    .await;
    let why = ready.body["state_store"]["redis"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(why.contains("certificate"), "{}", ready.body);
}
