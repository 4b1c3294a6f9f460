//! The real gateway in front of a real upstream on loopback: what gets through, what is
//! refused and how, path attacks on the wire, credential hygiene, upstream failures, the
//! access log, metrics, draining on SIGTERM and the CLI.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

const BOTH: &[&str] = &["tickets:read", "tickets:write"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_call_reaches_the_upstream_with_only_gateway_asserted_headers() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);

    let r = client()
        .get(gw.url("/api/tickets/%34%32?expand=comments"))
        .bearer_auth(&t)
        .header("x-portcullis-agent", "admin")
        .header("X-Portcullis-Owner", "ceo@example.com")
        .header("x-portcullis-scopes", "admin:read")
        .header("x-request-id", "spoof")
        .header("x-api-key", "agent-supplied")
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let rid = a.request_id().to_string();
    assert_ne!(rid, "spoof");
    assert_eq!(up.hits(), 1);

    let seen = up.seen_with_request_id(&rid);
    assert_eq!(seen.method, "GET");
    // `%34%32` is `42` spelled with encoded unreserved characters: the upstream gets the
    // canonical path the route matched, and the query unchanged.
    assert_eq!(seen.path, "/api/tickets/42?expand=comments");
    assert_eq!(seen.header("x-portcullis-agent"), Some("support-bot"));
    assert_eq!(seen.header("x-portcullis-owner"), Some("alice@example.com"));
    assert_eq!(seen.header("x-portcullis-route"), Some("tickets-read"));
    assert_eq!(
        seen.header("x-portcullis-scopes"),
        Some("tickets:read tickets:write")
    );
    assert_eq!(seen.header("x-request-id"), Some(rid.as_str()));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the agent's token leaked"
    );
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("accept"), Some("application/json"));
    // The upstream's answer comes back unchanged.
    assert_eq!(a.body["path"], "/api/tickets/42?expand=comments");

    // A write, with a token narrowed to one scope: body and method pass, scopes are narrowed,
    // and without a client X-Forwarded-For the gateway starts one.
    let narrow = token("support-bot", &["tickets:write"]);
    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(&narrow)
        .json(&json!({"title": "printer on fire"}))
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/tickets");
    assert_eq!(seen.body, r#"{"title":"printer on fire"}"#);
    assert_eq!(seen.header("x-portcullis-route"), Some("tickets-create"));
    assert_eq!(seen.header("x-portcullis-scopes"), Some("tickets:write"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_exact_status_code_and_details_and_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let path = "/api/tickets/1";

    // No token at all.
    let a = get(&gw, path, None).await;
    a.assert_refusal(401, "missing_token");
    let www = a.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.starts_with("Bearer"), "{www}");
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{}",
        a.body
    );

    // Another scheme.
    let r = client()
        .get(gw.url(path))
        .header("authorization", "Basic c3VwcG9ydDpib3Q=")
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(401, "missing_token");
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));

    // Two tokens: refused rather than guessing which one counts.
    let r = client()
        .get(gw.url(path))
        .header(
            "authorization",
            format!("Bearer {}", token("support-bot", BOTH)),
        )
        .header(
            "authorization",
            format!("Bearer {}", token("reporting-bot", BOTH)),
        )
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(401, "invalid_request");
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));

    // Not a JWT, and a JWT above max_token_bytes (8192 by default).
    let a = get(&gw, path, Some("not-a-jwt")).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "malformed", "{}", a.body);
    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    c["padding"] = json!("x".repeat(9000));
    let a = get(&gw, path, Some(&token_with(c))).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "too_large", "{}", a.body);

    // Expired (beyond the 30s clock skew).
    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    let now = now();
    c["iat"] = json!(now - 1000);
    c["nbf"] = json!(now - 1000);
    c["exp"] = json!(now - 100);
    let a = get(&gw, path, Some(&token_with(c))).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "expired", "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("expired"));
    let www = a.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer") && www.contains("error=\"invalid_token\""),
        "{www}"
    );

    // Unsigned.
    let a = get(
        &gw,
        path,
        Some(&unsigned_token(&claims_for(
            FIXTURE_ISS,
            "support-bot",
            BOTH,
        ))),
    )
    .await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "alg_none", "{}", a.body);

    // Signed with a real key, but by an issuer the gateway does not trust.
    let a = get(
        &gw,
        path,
        Some(&token_with(claims_for(
            "https://evil.example",
            "support-bot",
            BOTH,
        ))),
    )
    .await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "wrong_issuer", "{}", a.body);
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .contains("https://evil.example"));

    // The right kid, someone else's key.
    let forged = sign(
        jsonwebtoken::Algorithm::ES256,
        "es256-rotated.key.pem",
        Some("es256-test"),
        &claims_for(FIXTURE_ISS, "support-bot", BOTH),
    );
    let a = get(&gw, path, Some(&forged)).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "bad_signature", "{}", a.body);

    // Another audience.
    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    c["aud"] = json!("some-other-gateway");
    let a = get(&gw, path, Some(&token_with(c))).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "wrong_audience", "{}", a.body);

    // Lifetime above max_token_ttl (1h).
    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    c["exp"] = json!(now + 7200);
    c["iat"] = json!(now);
    let a = get(&gw, path, Some(&token_with(c))).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "lifetime_too_long", "{}", a.body);
    let msg = a.body["message"].as_str().unwrap();
    assert!(msg.contains("7200s") && msg.contains("3600s"), "{msg}");

    // A valid token for a subject nobody registered.
    let a = get(&gw, path, Some(&token("ghost-bot", BOTH))).await;
    a.assert_refusal(401, "unknown_agent");
    assert!(a.body["message"].as_str().unwrap().contains("`ghost-bot`"));
    assert!(a.header("www-authenticate").unwrap().starts_with("Bearer"));

    // A disabled agent.
    let a = get(&gw, path, Some(&token("retired-bot", &["tickets:read"]))).await;
    a.assert_refusal(403, "agent_disabled");
    assert_eq!(a.body["agent"], "retired-bot");
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .contains("carol@example.com"));

    let support = token("support-bot", BOTH);

    // No route at all.
    let a = get(&gw, "/nothing/here", Some(&support)).await;
    a.assert_refusal(403, "no_route");
    assert_eq!(a.body["agent"], "support-bot");
    assert!(a.body.get("allowed_methods").is_none(), "{}", a.body);

    // Routed path, wrong method.
    let r = client()
        .delete(gw.url("/api/tickets/7"))
        .bearer_auth(&support)
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(403, "no_route");
    assert_eq!(a.body["allowed_methods"], json!(["GET"]), "{}", a.body);
    assert!(a.body["message"].as_str().unwrap().contains("GET"));

    let r = client()
        .put(gw.url("/api/tickets"))
        .bearer_auth(&support)
        .body("{}")
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(403, "no_route");
    let methods: BTreeSet<&str> = a.body["allowed_methods"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", a.body))
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(methods, BTreeSet::from(["GET", "POST"]), "{}", a.body);

    // Missing scope the agent is not even registered for (the token asks for more than the
    // registry grants: a token can only narrow).
    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(token("reporting-bot", BOTH))
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(403, "insufficient_scope");
    assert_eq!(a.body["agent"], "reporting-bot");
    assert_eq!(a.body["route"], "tickets-create");
    assert_eq!(a.body["required_scopes"], json!(["tickets:write"]));
    assert_eq!(a.body["missing_scopes"], json!(["tickets:write"]));
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("not registered for them"),
        "{}",
        a.body
    );
    let www = a.header("www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer") && www.contains("insufficient_scope"),
        "{www}"
    );

    // Missing scope the agent could get: a narrower token than the registry allows.
    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(token("support-bot", &["tickets:read"]))
        .json(&json!({"title": "x"}))
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(403, "insufficient_scope");
    assert_eq!(a.body["missing_scopes"], json!(["tickets:write"]));
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("request a token that includes them"),
        "{}",
        a.body
    );

    // The catch-all `/api/**` route needs another scope.
    let a = get(&gw, "/api/reports", Some(&support)).await;
    a.assert_refusal(403, "insufficient_scope");
    assert_eq!(a.body["route"], "api-admin");
    assert_eq!(a.body["required_scopes"], json!(["admin:read"]));
    assert_eq!(a.body["missing_scopes"], json!(["admin:read"]));

    assert_eq!(up.hits(), 0, "a refused call reached the upstream");
    // The same token is fine where it is allowed: the refusals above were about the call.
    assert_eq!(get(&gw, path, Some(&support)).await.status, 200);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_attacks_on_the_wire_are_refused_or_resolved_before_routing() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);

    // Ambiguous spellings: 400 invalid_path with the reason, before any authentication.
    let refused = [
        ("/api/../../admin", "escapes_root"),
        ("/api/%2e%2e/%2E%2E/admin", "escapes_root"),
        ("/api/tickets/1%2F..", "encoded_slash"),
        ("/api/tickets/1%2f..%2f..%2fadmin", "encoded_slash"),
        ("/api/tickets\\1", "backslash"),
        ("/api/tickets/..;/x", "dot_segment_parameter"),
        ("/api/tickets/1%5C..", "encoded_backslash"),
        ("/api/tickets/1%00", "nul"),
        ("/api/tickets/%C0%AF", "invalid_percent_encoding"),
        ("/api/tickets/%zz", "invalid_percent_encoding"),
    ];
    for (target, reason) in refused {
        for tok in [Some(t.as_str()), None] {
            let a = raw_get(gw.layout.proxy, target, tok).await;
            assert_eq!(
                (
                    a.status,
                    a.body["error"].as_str(),
                    a.body["reason"].as_str()
                ),
                (400, Some("invalid_path"), Some(reason)),
                "{target} (token: {}): {a:?}",
                tok.is_some()
            );
            assert_eq!(
                a.body["request_id"].as_str(),
                a.header("x-request-id"),
                "{a:?}"
            );
            assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    // Longer than server.max_path_length (4096 by default).
    let long = format!("/api/tickets/{}", "a".repeat(5000));
    let a = raw_get(gw.layout.proxy, &long, Some(&t)).await;
    assert_eq!(
        (
            a.status,
            a.body["error"].as_str(),
            a.body["reason"].as_str()
        ),
        (400, Some("invalid_path"), Some("too_long")),
        "{:?}",
        a.body
    );

    // Spellings that resolve to `/admin`: routed as `/admin`, which no route allows.
    for target in ["/api/tickets/../../admin", "/api/%2e%2e/admin", "//admin"] {
        let a = raw_get(gw.layout.proxy, target, Some(&t)).await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (403, Some("no_route")),
            "{target}: {a:?}"
        );
        let line = gw.access_log_line(a.header("x-request-id").unwrap()).await;
        assert_eq!(line["path"], "/admin", "{target}: {line}");
    }
    assert_eq!(up.hits(), 0);

    // Redundant slashes and dot segments are resolved; the upstream gets the canonical path.
    let a = raw_get(gw.layout.proxy, "/api//tickets/./7", Some(&t)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen_with_request_id(a.header("x-request-id").unwrap());
    assert_eq!(seen.path, "/api/tickets/7");
    assert_eq!(seen.header("x-portcullis-route"), Some("tickets-read"));
    assert_eq!(a.body["path"], "/api/tickets/7");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_credential_never_flows_back() {
    let up = Upstream::start().await;
    // Default (info) logging, as operators run it. (At debug, pingora itself dumps upstream
    // response headers and bodies, which include whatever the upstream sends back.)
    let gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);

    let a = get(&gw, "/leak", Some(&t)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // The upstream did send the header back (its other header arrived) ...
    assert_eq!(a.header("x-leak-probe"), Some("1"));
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    // ... but the gateway removed it.
    assert_eq!(
        a.header("x-api-key"),
        None,
        "credential leaked to the agent"
    );

    // The same over a raw socket, in case a client merged or hid something.
    let raw = raw_get(gw.layout.proxy, "/leak", Some(&t)).await;
    assert_eq!(raw.status, 200);
    assert!(
        raw.headers.iter().all(|(k, _)| k != "x-api-key"),
        "{:?}",
        raw.headers
    );

    // Some refusals and an upstream failure, so every kind of log line is written.
    let _ = get(&gw, "/api/tickets/1", None).await;
    let _ = get(&gw, "/nothing", Some(&t)).await;
    let _ = get(&gw, "/down", Some(&t)).await;
    let lines = gw.wait_access_log(5).await;
    let log = std::fs::read_to_string(gw.layout.access_log_path()).unwrap();
    assert!(!log.contains(SECRET), "secret in the access log:\n{log}");
    assert!(lines.iter().all(|l| l.get("x-api-key").is_none()));
    let stderr = gw.stderr();
    assert!(
        stderr.contains("upstream failure"),
        "the 502 was not logged:\n{stderr}"
    );
    assert!(!stderr.contains(SECRET), "secret in stderr:\n{stderr}");
    assert!(!gw.stdout().contains(SECRET), "secret in stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_upstream_too_slow_is_504() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);

    let a = get(&gw, "/down", Some(&t)).await;
    a.assert_refusal(502, "upstream_unavailable");
    assert_eq!(a.header("retry-after"), Some("1"));
    let down_id = a.request_id().to_string();

    let started = Instant::now();
    let a = get(&gw, "/timeout/slow", Some(&t)).await;
    let took = started.elapsed();
    a.assert_refusal(504, "upstream_timeout");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(
        took < SLOW,
        "504 after {took:?}: the gateway waited for the upstream instead of its 1s read_timeout"
    );
    let slow_id = a.request_id().to_string();
    assert_eq!(up.hits(), 1, "the slow upstream got the call once");

    let lines = gw.wait_access_log(2).await;
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap()
            .clone()
    };
    let l = line(&down_id);
    assert_eq!(
        (
            &l["status"],
            &l["decision"],
            &l["reason"],
            &l["upstream"],
            &l["route"]
        ),
        (
            &json!(502),
            &json!("error"),
            &json!("upstream_unavailable"),
            &json!("down-api"),
            &json!("down")
        ),
        "{l}"
    );
    let l = line(&slow_id);
    assert_eq!(
        (
            &l["status"],
            &l["decision"],
            &l["reason"],
            &l["upstream"],
            &l["route"]
        ),
        (
            &json!(504),
            &json!("error"),
            &json!("upstream_timeout"),
            &json!("impatient-api"),
            &json!("slow-timeout")
        ),
        "{l}"
    );

    let m = gw.metrics().await;
    let val = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    assert_eq!(
        val(
            "portcullis_upstream_errors_total",
            &[("upstream", "down-api"), ("kind", "connect")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val(
            "portcullis_upstream_errors_total",
            &[("upstream", "impatient-api"), ("kind", "timeout")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val(
            "portcullis_requests_total",
            &[("route", "down"), ("decision", "error"), ("status", "502")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val(
            "portcullis_requests_total",
            &[
                ("route", "slow-timeout"),
                ("decision", "error"),
                ("status", "504")
            ]
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_exact_line_per_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let support_claims = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    let support_jti = support_claims["jti"].as_str().unwrap().to_string();
    let support = token_with(support_claims);

    // (request id, status, decision, reason, agent, route, method, path)
    type Expect = (
        String,
        u16,
        &'static str,
        Value,
        Value,
        Value,
        &'static str,
        &'static str,
    );
    let mut expected: Vec<Expect> = Vec::new();

    let a = get(&gw, "/api/tickets/5?x=1", Some(&support)).await;
    assert_eq!(a.status, 200);
    let allowed_id = a.request_id().to_string();
    expected.push((
        allowed_id.clone(),
        200,
        "allow",
        Value::Null,
        json!("support-bot"),
        json!("tickets-read"),
        "GET",
        "/api/tickets/5",
    ));

    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(&support)
        .body("hello")
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    assert_eq!(a.status, 200);
    let post_id = a.request_id().to_string();
    expected.push((
        post_id.clone(),
        200,
        "allow",
        Value::Null,
        json!("support-bot"),
        json!("tickets-create"),
        "POST",
        "/api/tickets",
    ));

    let a = get(&gw, "/api/tickets/5", None).await;
    a.assert_refusal(401, "missing_token");
    expected.push((
        a.request_id().into(),
        401,
        "deny",
        json!("missing_token"),
        Value::Null,
        Value::Null,
        "GET",
        "/api/tickets/5",
    ));

    let a = get(&gw, "/nowhere", Some(&support)).await;
    a.assert_refusal(403, "no_route");
    expected.push((
        a.request_id().into(),
        403,
        "deny",
        json!("no_route"),
        json!("support-bot"),
        Value::Null,
        "GET",
        "/nowhere",
    ));

    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(token("reporting-bot", &["tickets:read"]))
        .body("x")
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    a.assert_refusal(403, "insufficient_scope");
    expected.push((
        a.request_id().into(),
        403,
        "deny",
        json!("insufficient_scope"),
        json!("reporting-bot"),
        json!("tickets-create"),
        "POST",
        "/api/tickets",
    ));

    let a = get(&gw, "/api/tickets/5", Some(&token("ghost-bot", BOTH))).await;
    a.assert_refusal(401, "unknown_agent");
    expected.push((
        a.request_id().into(),
        401,
        "deny",
        json!("unknown_agent"),
        json!("ghost-bot"),
        Value::Null,
        "GET",
        "/api/tickets/5",
    ));

    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    c["iat"] = json!(now() - 1000);
    c["nbf"] = json!(now() - 1000);
    c["exp"] = json!(now() - 100);
    let a = get(&gw, "/api/tickets/5", Some(&token_with(c))).await;
    a.assert_refusal(401, "invalid_token");
    expected.push((
        a.request_id().into(),
        401,
        "deny",
        json!("invalid_token"),
        Value::Null,
        Value::Null,
        "GET",
        "/api/tickets/5",
    ));

    let a = get(&gw, "/api/tickets/5", Some(&token("retired-bot", BOTH))).await;
    a.assert_refusal(403, "agent_disabled");
    expected.push((
        a.request_id().into(),
        403,
        "deny",
        json!("agent_disabled"),
        json!("retired-bot"),
        Value::Null,
        "GET",
        "/api/tickets/5",
    ));

    let a = raw_get(gw.layout.proxy, "/api/tickets/..;/x", Some(&support)).await;
    assert_eq!(a.status, 400, "{a:?}");
    expected.push((
        a.header("x-request-id").unwrap().into(),
        400,
        "deny",
        json!("invalid_path"),
        Value::Null,
        Value::Null,
        "GET",
        "/api/tickets/..;/x",
    ));

    let lines = gw.wait_access_log(expected.len()).await;
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        expected.len(),
        "duplicate request ids: {lines:#?}"
    );
    for (id, status, decision, reason, agent, route, method, path) in &expected {
        let l = lines
            .iter()
            .find(|l| l["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line for {id} ({path}): {lines:#?}"));
        assert_eq!(
            (
                &l["status"],
                &l["decision"],
                &l["reason"],
                &l["agent"],
                &l["route"],
                &l["method"],
                &l["path"],
            ),
            (
                &json!(status),
                &json!(decision),
                reason,
                agent,
                route,
                &json!(method),
                &json!(path),
            ),
            "line {l}"
        );
        assert_eq!(l["config_version"], 1, "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(
            l["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{l}"
        );
    }
    let allowed = lines
        .iter()
        .find(|l| l["request_id"] == allowed_id.as_str())
        .unwrap();
    assert_eq!(allowed["owner"], "alice@example.com");
    assert_eq!(allowed["issuer"], "fixture-idp");
    assert_eq!(allowed["jti"], support_jti.as_str());
    assert_eq!(allowed["upstream"], "tickets-api");
    assert_eq!(allowed["query"], "x=1");
    assert!(allowed["upstream_ms"].as_f64().is_some(), "{allowed}");
    assert!(allowed["bytes_out"].as_u64().unwrap() > 0, "{allowed}");
    let post = lines
        .iter()
        .find(|l| l["request_id"] == post_id.as_str())
        .unwrap();
    assert_eq!(post["bytes_in"], 5, "{post}");
    for l in lines.iter().filter(|l| l["decision"] == "deny") {
        assert_eq!(l["upstream"], Value::Null, "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;

    let h = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.json::<Value>().await.unwrap()["status"], "ok");
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["config_version"], 1);

    let support = token("support-bot", BOTH);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&support)).await.status, 200);
    assert_eq!(get(&gw, "/api/tickets/2", Some(&support)).await.status, 200);
    assert_eq!(get(&gw, "/nowhere", Some(&support)).await.status, 403);
    let mut c = claims_for(FIXTURE_ISS, "support-bot", BOTH);
    c["iat"] = json!(now() - 1000);
    c["exp"] = json!(now() - 100);
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token_with(c)))
            .await
            .status,
        401
    );
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token("ghost-bot", BOTH)))
            .await
            .status,
        401
    );

    let m = gw
        .wait_metric(
            "portcullis_requests_total",
            &[
                ("agent", "support-bot"),
                ("route", "tickets-read"),
                ("decision", "allow"),
                ("status", "200"),
            ],
            2.0,
        )
        .await;
    // The last two requests are logged after their answers: poll for them too.
    let m = if metric(
        &m,
        "portcullis_requests_total",
        &[("agent", "unknown"), ("status", "401")],
    ) == Some(2.0)
    {
        m
    } else {
        gw.wait_metric(
            "portcullis_requests_total",
            &[
                ("agent", "unknown"),
                ("route", "none"),
                ("decision", "deny"),
                ("status", "401"),
            ],
            2.0,
        )
        .await
    };
    let val = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    assert_eq!(
        val(
            "portcullis_requests_total",
            &[
                ("agent", "support-bot"),
                ("route", "none"),
                ("decision", "deny"),
                ("status", "403")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val(
            "portcullis_requests_total",
            &[
                ("agent", "unknown"),
                ("route", "none"),
                ("decision", "deny"),
                ("status", "401")
            ]
        ),
        Some(2.0),
        "expired token and unregistered subject are both agent=\"unknown\": {m}"
    );
    assert_eq!(
        val("portcullis_token_failures_total", &[("reason", "expired")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val("portcullis_denials_total", &[("reason", "unknown_agent")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        val("portcullis_denials_total", &[("reason", "no_route")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(val("portcullis_config_version", &[]), Some(1.0), "{m}");
    assert_eq!(
        val("portcullis_config_last_reload_success", &[]),
        Some(1.0),
        "{m}"
    );
    // Label values come only from the configuration: the unregistered subject never appears.
    assert!(!m.contains("ghost-bot"), "{m}");
    let agents: BTreeSet<String> = parse_metrics(&m)
        .into_iter()
        .filter(|s| s.name == "portcullis_requests_total")
        .map(|s| s.labels["agent"].clone())
        .collect();
    assert_eq!(
        agents,
        BTreeSet::from(["support-bot".to_string(), "unknown".to_string()]),
        "{m}"
    );
    assert!(
        m.contains("portcullis_request_duration_seconds_bucket{"),
        "{m}"
    );
    assert_eq!(val("portcullis_in_flight_requests", &[]), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);

    let url = gw.url("/slow");
    let slow = tokio::spawn(async move {
        let r = client().get(url).bearer_auth(t).send().await.unwrap();
        Answer::read(r).await
    });
    // SIGTERM only once the call is at the upstream, i.e. truly in flight.
    let deadline = Instant::now() + POLL_TIMEOUT;
    while up.hits() == 0 {
        assert!(Instant::now() < deadline, "the slow call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.wait_metric("portcullis_in_flight_requests", &[], 1.0)
        .await;
    let sent = Instant::now();
    gw.signal(libc::SIGTERM);

    // Draining: not ready any more, but the in-flight call continues.
    let r = gw.poll_admin("/readyz", 503).await;
    let body: Value = r.json().await.unwrap();
    assert!(
        body["reason"].as_str().unwrap().contains("draining"),
        "{body}"
    );
    // A call arriving meanwhile is still served, but told not to reuse the connection.
    let t2 = token("support-bot", BOTH);
    let late = raw_get(gw.layout.proxy, "/api/tickets/1", Some(&t2)).await;
    assert_eq!(late.status, 200, "{late:?}");
    assert_eq!(late.header("connection"), Some("close"), "{late:?}");
    assert!(
        !slow.is_finished(),
        "the slow call ended before the drain was observed"
    );

    let a = slow.await.unwrap();
    assert_eq!(a.status, 200, "the in-flight call was cut: {}", a.body);
    assert_eq!(a.body["path"], "/slow");
    let rid = a.request_id().to_string();

    let status = gw
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("still running 30s after SIGTERM; stderr:\n{}", gw.stderr()));
    let took = sent.elapsed();
    assert!(status.success(), "exit {status}; stderr:\n{}", gw.stderr());
    // grace_period is 5s; the call needed about 3s of it. A little slack for a loaded machine.
    assert!(
        took < Duration::from_secs(5) + Duration::from_secs(2),
        "exited {took:?} after SIGTERM; grace period is 5s"
    );

    let lines = gw.access_log();
    let line = lines
        .iter()
        .find(|l| l["request_id"] == rid.as_str())
        .unwrap_or_else(|| panic!("the drained call is not in the access log: {lines:#?}"));
    assert_eq!(line["status"], 200);
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["route"], "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_check_and_token_issue() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let cfg = gw.layout.config_path();
    let cfg = cfg.to_str().unwrap();
    let dir = gw.layout.dir.clone();

    // check: a good file.
    let out = cli(&["check", "-c", cfg], &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": ok (7 routes, 3 agents, 3 upstreams"),
        "{stdout}"
    );

    // check: a bad file lists its problems with lines.
    let bad = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/configs/bad.yaml");
    let out = cli(&["check", "-c", bad], &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "line 3: listen.admin: `not-an-address` is not an `ip:port` address",
        "line 40: routes[1].upstream: unknown upstream `ticket`; defined: tickets",
        "line 54: metrics: unknown section `metrics`",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    let out = cli(&["check", "-c", "/nonexistent/gateway.yaml"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.yaml"));

    // token issue: refusals.
    let issue = |args: &[&str]| {
        let mut all = vec!["token", "issue", "-c", cfg];
        all.extend_from_slice(args);
        cli(&all, &dir)
    };
    let refused = [
        (
            vec![
                "--agent",
                "reporting-bot",
                "--scopes",
                "tickets:read,tickets:write",
            ],
            "agent `reporting-bot` may not hold tickets:write; its registry scopes are: tickets:read",
        ),
        (
            vec!["--agent", "support-bot", "--scopes", "admin:read"],
            "may not hold admin:read",
        ),
        (
            vec![
                "--agent",
                "support-bot",
                "--scopes",
                "tickets:read",
                "--ttl",
                "2h",
            ],
            "ttl 2h exceeds identity.max_token_ttl 1h",
        ),
        (
            vec!["--agent", "retired-bot", "--scopes", "tickets:read"],
            "agent `retired-bot` is disabled",
        ),
        (
            vec!["--agent", "ghost-bot", "--scopes", "tickets:read"],
            "`ghost-bot` is not a registered agent",
        ),
    ];
    for (args, msg) in refused {
        let out = issue(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
        assert!(stderr.contains(msg), "{args:?}: {stderr}");
    }

    // token issue: a token the running gateway accepts.
    let out = issue(&[
        "--agent",
        "support-bot",
        "--scopes",
        "tickets:read",
        "--ttl",
        "5m",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let issued = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(issued.split('.').count(), 3, "{issued}");
    let a = get(&gw, "/api/tickets/3", Some(&issued)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.header("x-portcullis-agent"), Some("support-bot"));
    assert_eq!(seen.header("x-portcullis-scopes"), Some("tickets:read"));
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(line["issuer"], "local");
    // Only the scopes it was issued with.
    let r = client()
        .post(gw.url("/api/tickets"))
        .bearer_auth(&issued)
        .body("x")
        .send()
        .await
        .unwrap();
    Answer::read(r)
        .await
        .assert_refusal(403, "insufficient_scope");

    // The library's issue_token with the same signing key works too; with another key it does not.
    let pem = std::fs::read(gw.layout.signing_key_path()).unwrap();
    let scopes = vec!["tickets:read".to_string()];
    let lib = portcullis::identity::issue_token(
        &pem,
        "local-1",
        LOCAL_ISS,
        LOCAL_AUD,
        "reporting-bot",
        &scopes,
        Duration::from_secs(300),
        Duration::ZERO,
        None,
    )
    .unwrap();
    assert_eq!(get(&gw, "/api/tickets/4", Some(&lib)).await.status, 200);
    let other = portcullis::identity::generate_signing_key().unwrap();
    let forged = portcullis::identity::issue_token(
        other.as_bytes(),
        "local-1",
        LOCAL_ISS,
        LOCAL_AUD,
        "reporting-bot",
        &scopes,
        Duration::from_secs(300),
        Duration::ZERO,
        None,
    )
    .unwrap();
    let a = get(&gw, "/api/tickets/4", Some(&forged)).await;
    a.assert_refusal(401, "invalid_token");
    assert_eq!(a.body["reason"], "bad_signature");
}

/// A `/slow` call (3s) in flight, SIGTERM with a 1s grace period, the process gone.
/// Returns the exited gateway, how long after SIGTERM it exited, and what the agent got.
async fn sigterm_with_a_call_longer_than_the_grace_period() -> (
    Gateway,
    std::process::ExitStatus,
    Duration,
    reqwest::Result<reqwest::Response>,
) {
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.grace_period = "1s";
    let mut gw = Gateway::start(setup).await;
    let t = token("support-bot", BOTH);
    let url = gw.url("/slow");
    let slow = tokio::spawn(async move { client().get(url).bearer_auth(t).send().await });
    let deadline = Instant::now() + POLL_TIMEOUT;
    while up.hits() == 0 {
        assert!(Instant::now() < deadline, "the slow call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent = Instant::now();
    gw.signal(libc::SIGTERM);
    let status = gw
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("still running 30s after SIGTERM; stderr:\n{}", gw.stderr()));
    let took = sent.elapsed();
    let answer = slow.await.unwrap();
    (gw, status, took, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_waiting_after_the_grace_period() {
    let (gw, status, took, answer) = sigterm_with_a_call_longer_than_the_grace_period().await;
    // The call needs 3s, the grace period is 1s: the gateway must not wait for the call.
    assert!(
        took < SLOW,
        "exited {took:?} after SIGTERM with a 1s grace period"
    );
    assert!(status.success(), "exit {status}; stderr:\n{}", gw.stderr());
    assert!(gw.stderr().contains("grace period over"), "{}", gw.stderr());
    // The agent's call did not complete.
    if let Ok(r) = answer {
        assert_ne!(r.status(), 200, "the call completed after the grace period");
    }
}

/// The call cut when the grace period ran out had reached the upstream (which may have acted
/// on it, e.g. a write), so the audit trail must record it, with status 0 and an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_at_the_end_of_the_grace_period_is_in_the_access_log() {
    let (gw, _, _, _) = sigterm_with_a_call_longer_than_the_grace_period().await;
    let lines = gw.access_log();
    let line = lines.iter().find(|l| l["path"] == "/slow").unwrap_or_else(|| {
        panic!(
            "the call cut at the end of the grace period has no access-log line: {lines:#?}\nstderr:\n{}",
            gw.stderr()
        )
    });
    assert_eq!(line["route"], "slow", "{line}");
    assert_eq!(line["agent"], "support-bot", "{line}");
    assert_ne!(line["status"], 200, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_body_is_never_read_as_another_request() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let t = token("support-bot", BOTH);
    // The body of a refused POST is itself a complete, authorized request: if the gateway kept
    // the connection and read on, it would forward it.
    let inner =
        format!("GET /api/tickets/666 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n");
    let req = format!(
        "POST /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.layout.proxy)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(POLL_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .expect("the gateway kept the connection open after a refusal with an unread body")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "more than one response on the connection:\n{text}"
    );
    gw.wait_access_log(1).await;
    assert_eq!(up.hits(), 0, "the body was forwarded as a request");

    // A chunked body of an allowed call reaches the upstream intact.
    let req = format!(
        "POST /api/tickets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let a = raw_request(gw.layout.proxy, req.as_bytes()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen_with_request_id(a.header("x-request-id").unwrap());
    assert_eq!(seen.body, "hello world");
    assert_eq!(up.hits(), 1);
}

/// An anonymous caller chooses the method, path and query of its request, and a trusted issuer's
/// token may name any subject: none of it may make the gateway write a line as long as the
/// request. Each string field is cut at `access_log.max_field_bytes` (default 1024) with a
/// marker saying how much was left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_chosen_access_log_fields_are_cut_at_the_cap_with_a_marker() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let cut =
        |text: &str, kept: usize| format!("{}…[cut {} bytes]", &text[..kept], text.len() - kept);

    // A 60 KB query string, no token.
    let query = format!("q={}", "a".repeat(60_000));
    let a = raw_get(gw.layout.proxy, &format!("/api/tickets/1?{query}"), None).await;
    assert_eq!(a.status, 401, "{a:?}");
    // A 20 KB path (refused as too long, logged as sent) under a 3 KB method.
    let path = format!("/{}", "p".repeat(20_000));
    let method = "M".repeat(3_000);
    let b = raw_request(
        gw.layout.proxy,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.layout.proxy
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(b.status, 400, "{b:?}");
    // A validly signed token whose subject is no registered agent.
    let subject = "s".repeat(5_000);
    let c = get(
        &gw,
        "/api/tickets/1",
        Some(&token_with(claims_for(FIXTURE_ISS, &subject, BOTH))),
    )
    .await;
    c.assert_refusal(401, "unknown_agent");

    let lines = gw.wait_access_log(3).await;
    let raw = std::fs::read_to_string(gw.layout.access_log_path()).unwrap();
    for line in raw.lines() {
        assert!(
            line.len() < 4 * 1024,
            "a {}-byte access-log line",
            line.len()
        );
    }
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
            .clone()
    };
    let line = by_id(a.header("x-request-id").unwrap());
    assert_eq!(line["reason"], "missing_token");
    assert_eq!(line["query"], cut(&query, 1024));
    assert_eq!(line["path"], "/api/tickets/1");
    let line = by_id(b.header("x-request-id").unwrap());
    assert_eq!(line["reason"], "invalid_path");
    assert_eq!(line["path"], cut(&path, 1024));
    assert_eq!(line["method"], cut(&method, 1024));
    let line = by_id(c.request_id());
    assert_eq!(line["agent"], cut(&subject, 1024));
    assert_eq!(line["issuer"], "fixture-idp");
}
