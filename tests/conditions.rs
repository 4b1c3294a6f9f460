//! Contextual conditions against the real binary over loopback: each kind passes and fails,
//! a JSON body condition buffers the body and forwards it intact, the refusal names the
//! condition, and conditions can be shadowed.

mod support;

use serde_json::json;
use support::*;

const READ: &[&str] = &["tickets:read"];

fn token_claims(extra: serde_json::Value) -> String {
    let mut c = claims_for(FIXTURE_ISS, "support-bot", READ);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    token_with(c)
}

fn route(name: &str, path: &str, methods: &str, conditions: &str) -> String {
    format!(
        "  - name: {name}\n    methods: [{methods}]\n    path: {path}\n    upstream: tickets-api\n    scopes: [tickets:read]\n    conditions:\n{conditions}"
    )
}

async fn post_json(gw: &Gateway, path: &str, t: &str, body: &str) -> Answer {
    Answer::read(
        client()
            .post(gw.url(path))
            .bearer_auth(t)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_condition_kind_passes_and_fails_and_the_refusal_names_it() {
    let up = Upstream::start().await;
    let hour = (now() / 3600 + 3) % 24; // a one-hour window that is not now
    let mut s = Setup::new(&up);
    s.extra_routes = [
        route("prod-only", "/prod/**", "GET", "      - name: prod-env\n        claim: {name: env, equals: prod}\n"),
        route("internal", "/internal/**", "GET", "      - network: {from: [127.0.0.0/8]}\n"),
        route("external", "/external/**", "GET", "      - network: {not_from: [127.0.0.0/8]}\n"),
        route("nightly", "/nightly/**", "GET", &format!("      - name: night-window\n        time: {{days: [mon, tue, wed, thu, fri, sat, sun], hours: \"{hour:02}:00-{:02}:00\", zone: UTC}}\n", (hour + 1) % 24)),
        route("refunds", "/refunds", "POST", "      - name: small-refunds\n        json: {field: amount, lte: 100}\n"),
        route("reads", "/reads/**", "GET, POST", "      - name: read-only\n        cel: 'request.method == \"GET\"'\n"),
    ]
    .concat();
    let gw = Gateway::start(s).await;

    let prod = token_claims(json!({"env": "prod"}));
    let dev = token_claims(json!({"env": "dev"}));
    let a = get(&gw, "/prod/x", Some(&prod)).await;
    assert_eq!(a.status, 200);
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(
        line["conditions"],
        json!([{"condition": "prod-env", "of": "route", "passed": true}]),
        "{line}"
    );
    let a = get(&gw, "/prod/x", Some(&dev)).await;
    a.assert_refusal(403, "condition_failed");
    assert_eq!(a.body["condition"], "prod-env", "{}", a.body);
    assert!(
        a.body["reason"].as_str().unwrap().contains("dev"),
        "{}",
        a.body
    );
    // A token without the claim fails closed.
    get(&gw, "/prod/x", Some(&token("support-bot", READ)))
        .await
        .assert_refusal(403, "condition_failed");

    // Network: the test client is on loopback.
    assert_eq!(get(&gw, "/internal/x", Some(&prod)).await.status, 200);
    get(&gw, "/external/x", Some(&prod))
        .await
        .assert_refusal(403, "condition_failed");

    // Time window that excludes now.
    let a = get(&gw, "/nightly/x", Some(&prod)).await;
    a.assert_refusal(403, "condition_failed");
    assert_eq!(a.body["condition"], "night-window");

    // CEL.
    assert_eq!(get(&gw, "/reads/x", Some(&prod)).await.status, 200);
    post_json(&gw, "/reads/x", &prod, "{}")
        .await
        .assert_refusal(403, "condition_failed");

    // JSON body: the body is read to decide, then forwarded byte for byte.
    let hits = up.hits();
    let body = r#"{"amount": 50, "note": "ok"}"#;
    let a = post_json(&gw, "/refunds", &prod, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("x-portcullis-route"), Some("refunds"));
    for bad in [
        r#"{"amount": 250}"#,
        r#"{"amount": "50"}"#,
        r#"{"amount": 50, "amount": 5000}"#,
        "amount=50",
        "",
    ] {
        let a = post_json(&gw, "/refunds", &prod, bad).await;
        a.assert_refusal(403, "condition_failed");
        assert_eq!(a.body["condition"], "small-refunds", "{bad}: {}", a.body);
    }
    assert_eq!(up.hits(), hits + 1, "a refused refund reached the tool");
    let refused = post_json(&gw, "/refunds", &prod, r#"{"amount": 101}"#).await;
    let line = gw.access_log_line(refused.request_id()).await;
    assert_eq!(line["reason"], "condition_failed", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadowed_conditions_forward_and_record() {
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = route(
        "prod-only",
        "/prod/**",
        "GET",
        "      - claim: {name: env, equals: prod}\n",
    ) + "    shadow: [conditions]\n";
    let gw = Gateway::start(s).await;
    let a = get(&gw, "/prod/x", Some(&token_claims(json!({"env": "dev"})))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(line["would_deny"], "condition_failed", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_names_the_client_only_behind_trusted_proxies() {
    let call = |gw: &Gateway, xff: &str| {
        let req = client()
            .get(gw.url("/office/x"))
            .bearer_auth(token("support-bot", READ))
            .header("x-forwarded-for", xff);
        async move { Answer::read(req.send().await.unwrap()).await }
    };
    let routes = route(
        "office",
        "/office/**",
        "GET",
        "      - name: office-network\n        network: {from: [10.0.0.0/8]}\n",
    );
    // The gateway sits behind a proxy on loopback.
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_server = "  trusted_proxies: [127.0.0.0/8]\n".into();
    s.extra_routes = routes.clone();
    let gw = Gateway::start(s).await;
    assert_eq!(call(&gw, "10.1.2.3").await.status, 200);
    // The right-most untrusted entry is the client; whatever stands left of it is its claim.
    call(&gw, "10.1.2.3, 203.0.113.9")
        .await
        .assert_refusal(403, "condition_failed");
    call(&gw, "not-an-ip")
        .await
        .assert_refusal(403, "condition_failed");

    // Without trusted proxies the header is never believed: the client is the TCP peer.
    let up2 = Upstream::start().await;
    let mut s2 = Setup::new(&up2);
    s2.extra_routes = routes;
    let gw2 = Gateway::start(s2).await;
    call(&gw2, "10.1.2.3")
        .await
        .assert_refusal(403, "condition_failed");
    assert_eq!(up2.hits(), 0);
}

/// A tier's conditions bind every agent of the tier on every route, run before the agent's and
/// the route's, and the refusal says whose condition failed (names repeat across the lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_conditions_bind_every_agent_of_the_tier() {
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = route(
        "prod-only",
        "/prod/**",
        "GET",
        "      - name: posture\n        claim: {name: env, equals: prod}\n",
    );
    s.admin = admin_section("")
        + "tiers:\n  standard:\n    conditions:\n      - name: posture\n        claim: {name: device_trust, gte: 3}\n";
    let gw = Gateway::start(s).await;

    let trusted_prod = token_claims(json!({"env": "prod", "device_trust": 4}));
    let a = get(&gw, "/prod/x", Some(&trusted_prod)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(
        line["conditions"],
        json!([
            {"condition": "posture", "of": "tier:standard", "passed": true},
            {"condition": "posture", "of": "route", "passed": true}
        ]),
        "{line}"
    );

    // The tier binds routes that have no conditions of their own, and every standard agent.
    for agent in ["support-bot", "reporting-bot"] {
        let mut c = claims_for(FIXTURE_ISS, agent, READ);
        c["device_trust"] = json!(1);
        let a = get(&gw, "/api/tickets/7", Some(&token_with(c))).await;
        a.assert_refusal(403, "condition_failed");
        assert_eq!(a.body["condition"], "posture", "{}", a.body);
        assert_eq!(a.body["condition_of"], "tier:standard", "{}", a.body);
        let msg = a.body["message"].as_str().unwrap();
        assert!(msg.contains("`standard` tier"), "{msg}");
    }
    // A missing posture claim fails closed.
    get(&gw, "/api/tickets/7", Some(&token("support-bot", READ)))
        .await
        .assert_refusal(403, "condition_failed");
    // Passing the tier does not skip the route's own condition of the same name.
    let a = get(
        &gw,
        "/prod/x",
        Some(&token_claims(json!({"env": "dev", "device_trust": 5}))),
    )
    .await;
    a.assert_refusal(403, "condition_failed");
    assert_eq!(a.body["condition_of"], "route", "{}", a.body);
    assert_eq!(up.hits(), 1, "only the first call reached the tool");
}
