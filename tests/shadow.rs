//! Shadow mode against the real binary: a shadowed policy lets the call through and records
//! what it would have refused; identity and routing are never shadowed.

mod support;

use support::*;

const READ: &[&str] = &["tickets:read"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_route_forwards_and_records_what_it_would_refuse() {
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = r#"  - name: new-reports
    methods: [GET]
    path: /reports/**
    upstream: tickets-api
    scopes: [reports:read]
    mode: shadow
  - name: new-exports
    methods: [GET]
    path: /exports/**
    upstream: tickets-api
    scopes: [reports:read]
    shadow: [scopes]
"#
    .into();
    let gw = Gateway::start(s).await;
    let t = token("support-bot", READ);

    for path in ["/reports/q1", "/exports/q1"] {
        let a = get(&gw, path, Some(&t)).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let line = gw.access_log_line(a.request_id()).await;
        assert_eq!(line["decision"], "allow", "{line}");
        assert_eq!(line["would_deny"], "insufficient_scope", "{line}");
        assert_eq!(line["upstream"], "tickets-api", "{line}");
    }
    assert_eq!(up.hits(), 2);

    // An allowed call in an enforcing route has no `would_deny` at all.
    let a = get(&gw, "/api/tickets/1", Some(&t)).await;
    assert_eq!(a.status, 200);
    let line = gw.access_log_line(a.request_id()).await;
    assert!(line.get("would_deny").is_none(), "{line}");

    // Identity is never shadowed: no token, a bad token, an unknown agent are refused.
    assert_eq!(get(&gw, "/reports/q1", None).await.status, 401);
    assert_eq!(get(&gw, "/reports/q1", Some("not-a-jwt")).await.status, 401);
    assert_eq!(
        get(&gw, "/reports/q1", Some(&token("stranger", READ)))
            .await
            .status,
        401
    );
    // Routing and request meaning are never shadowed either.
    let a = get(&gw, "/unrouted", Some(&t)).await;
    a.assert_refusal(403, "no_route");
    let a = Answer::read(
        client()
            .get(gw.url("/reports/q1"))
            .bearer_auth(&t)
            .header("x-http-method-override", "DELETE")
            .send()
            .await
            .unwrap(),
    )
    .await;
    a.assert_refusal(400, "forbidden_header");
    assert_eq!(up.hits(), 3);

    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "portcullis_shadow_denials_total",
            &[("route", "new-reports"), ("reason", "insufficient_scope")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_shadow_mode_applies_to_every_route_and_enforce_is_the_default() {
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = "enforcement:\n  mode: shadow\n".into();
    let gw = Gateway::start(s).await;
    // reporting-bot lacks tickets:write; globally shadowed, the create goes through.
    let t = token("reporting-bot", READ);
    let a = Answer::read(
        client()
            .post(gw.url("/api/tickets"))
            .bearer_auth(&t)
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(line["would_deny"], "insufficient_scope", "{line}");

    // Without the section, the same call is refused.
    let up2 = Upstream::start().await;
    let gw2 = Gateway::start(Setup::new(&up2)).await;
    let a = Answer::read(
        client()
            .post(gw2.url("/api/tickets"))
            .bearer_auth(&t)
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    a.assert_refusal(403, "insufficient_scope");
    assert_eq!(up2.hits(), 0);
}
