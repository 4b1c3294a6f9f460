//! The admin listener against what can reach it besides its operators: any local process, a web
//! page in a local browser posting forms or `fetch`es to it, and a page that rebinds its own DNS
//! name to the listener's address. The real binary, on loopback.

mod support;

use serde_json::Value;
use support::*;

const BOTH: &[&str] = &["tickets:read", "tickets:write"];

async fn config_version(gw: &Gateway) -> Value {
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["config_version"].clone()
}

/// `method path` on the admin listener, byte for byte, with `headers` (each `Name: value`).
async fn admin_raw(gw: &Gateway, method: &str, path: &str, headers: &[&str]) -> RawAnswer {
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    raw_request(gw.layout.admin, req.as_bytes()).await
}

/// An admin refusal: status, `error` code and a message.
fn refused(a: &Answer, status: u16, error: &str) {
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (status, Some(error)),
        "{}",
        a.body
    );
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
}

fn assert_json_refusal(r: &RawAnswer, status: u16, error: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.body["error"], error, "{r:?}");
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_an_operator_credential_and_the_audit_says_who() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let post = |token: Option<String>| {
        let mut rb = client().post(gw.admin_url("/reload"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        async move { Answer::read(rb.send().await.unwrap()).await }
    };

    // Any local process, or an agent that can run `curl`: nothing changes.
    refused(&post(None).await, 401, "admin_auth_required");
    refused(
        &post(Some("pca_guessed".into())).await,
        401,
        "invalid_admin_token",
    );
    // An agent's own valid token is no operator credential.
    refused(
        &post(Some(token("support-bot", BOTH))).await,
        401,
        "invalid_admin_token",
    );
    // Cookies are not credentials.
    let r = client()
        .post(gw.admin_url("/reload"))
        .header("cookie", format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    refused(&Answer::read(r).await, 401, "admin_auth_required");
    assert_eq!(config_version(&gw).await, 1);

    let r = reload(&gw).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["config_version"], 2, "{body}");
    let (audit, _) = gw
        .wait_log_line("the reload", |l| l["event"] == "config_reload")
        .await;
    assert_eq!(audit["by"], "ops", "{audit}");
    assert_eq!(audit["credential"], "admin", "{audit}");
    assert_eq!(audit["outcome"], "reloaded", "{audit}");
    assert_eq!(audit["config_version"], 2, "{audit}");
    assert!(
        audit["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_admin_credential_configured_reload_is_refused_but_sighup_still_works() {
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.admin = String::new();
    let gw = Gateway::start(setup).await;
    let r = client()
        .post(gw.admin_url("/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    refused(&a, 403, "admin_auth_not_configured");
    assert!(
        a.body["message"].as_str().unwrap().contains("admin.tokens"),
        "{}",
        a.body
    );
    assert_eq!(config_version(&gw).await, 1);
    gw.signal(libc::SIGHUP);
    gw.wait_metric("portcullis_config_version", &[], 2.0).await;
}

/// Approval routes with an async, approval-gated delete and approver `alice`.
fn approvals_yaml(alice_token: &str) -> String {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(alice_token.as_bytes()));
    format!(
        "  - name: tickets-delete
    methods: [DELETE]
    path: /api/tickets/{{id}}
    upstream: tickets-api
    scopes: [tickets:write]
    approval: {{mode: async, timeout: 5m}}
approvals:
  store: approvals.db
  approvers:
    - name: alice
      token_sha256: \"{hash}\"
"
    )
}

/// A page open in the operator's browser (another local port, or any site) sends state
/// changes to the admin listener: form posts, `fetch` with a simple content type, requests the
/// browser marks cross-site. Even carrying a valid credential (a page could only have one by
/// theft, but the rule must not depend on that), they are refused by the one layer in front of
/// every route: reload and the approvals API alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_a_web_page_could_send_are_refused_on_every_admin_route() {
    let up = Upstream::start().await;
    let alice = "pca_alice_test_token_55e0b1";
    let mut setup = Setup::new(&up);
    setup.extra_routes = approvals_yaml(alice);
    let gw = Gateway::start(setup).await;
    let host = format!("Host: {}", gw.layout.admin);
    let admin_auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let alice_auth = format!("Authorization: Bearer {alice}");

    // A held call to approve.
    let r = client()
        .delete(gw.url("/api/tickets/7"))
        .bearer_auth(token("support-bot", BOTH))
        .send()
        .await
        .unwrap();
    let held = Answer::read(r).await;
    held.assert_refusal(202, "approval_pending");
    let id = held.body["approval_id"].as_str().unwrap().to_string();
    let approve = format!("/api/approvals/{id}/approve");

    let forged: &[(&str, &str)] = &[
        ("Origin: http://127.0.0.1:8080", "cross_site_request"),
        ("Origin: http://evil.example", "cross_site_request"),
        ("Origin: null", "cross_site_request"),
        ("Sec-Fetch-Site: cross-site", "cross_site_request"),
        ("Sec-Fetch-Site: same-site", "cross_site_request"),
        (
            "Content-Type: application/x-www-form-urlencoded",
            "form_content_type_refused",
        ),
        (
            "Content-Type: multipart/form-data; boundary=x",
            "form_content_type_refused",
        ),
        (
            "Content-Type: text/plain;charset=UTF-8",
            "form_content_type_refused",
        ),
    ];
    for &(header, code) in forged {
        let r = admin_raw(&gw, "POST", "/reload", &[&host, &admin_auth, header]).await;
        assert_json_refusal(&r, 403, code);
        let r = admin_raw(&gw, "POST", &approve, &[&host, &alice_auth, header]).await;
        assert_json_refusal(&r, 403, code);
    }
    assert_eq!(config_version(&gw).await, 1);
    let r = client()
        .get(gw.admin_url(&format!("/api/approvals/{id}")))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["status"], "pending", "{a}");

    // What the CLI and the console send still works: JSON (or no body), same origin.
    let origin = format!("Origin: http://{}", gw.layout.admin);
    let r = admin_raw(
        &gw,
        "POST",
        "/reload",
        &[&host, &admin_auth, &origin, "Sec-Fetch-Site: same-origin"],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = client()
        .post(gw.admin_url(&approve))
        .bearer_auth(alice)
        .header("origin", format!("http://{}", gw.layout.admin))
        .header("sec-fetch-site", "same-origin")
        .json(&serde_json::json!({"reason": "checked"}))
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "approved", "{}", a.body);
    // An approver token reloads too, and the audit names the approver.
    let r = client()
        .post(gw.admin_url("/reload"))
        .bearer_auth(alice)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_log_line("alice's reload", |l| {
        l["event"] == "config_reload" && l["by"] == "alice"
    })
    .await;
}

/// DNS rebinding: a page on `evil.example` points its name at the admin listener and reads or
/// posts as same-origin. The browser still sends `Host: evil.example`; every route refuses it,
/// the open ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_do_not_name_the_admin_listener_are_refused_on_every_route() {
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.admin = admin_section("  hosts: [portcullis-admin.test]\n");
    let gw = Gateway::start(setup).await;
    let port = gw.layout.admin.port();
    let admin_auth = format!("Authorization: Bearer {ADMIN_TOKEN}");

    for host in [
        format!("Host: evil.example:{port}"),
        "Host: evil.example".to_string(),
        format!("Host: localhost.evil.example:{port}"),
        format!("Host: 127.0.0.2:{port}"),
        format!("Host: localhost:{}", port ^ 1),
    ] {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/console",
            "/api/approvals",
        ] {
            let r = admin_raw(&gw, "GET", path, &[&host]).await;
            assert_json_refusal(&r, 421, "host_not_allowed");
        }
        let r = admin_raw(&gw, "POST", "/reload", &[&host, &admin_auth]).await;
        assert_json_refusal(&r, 421, "host_not_allowed");
    }
    // No Host at all (HTTP/1.0).
    let r = raw_request(
        gw.layout.admin,
        b"GET /healthz HTTP/1.0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_json_refusal(&r, 421, "host_not_allowed");
    assert_eq!(config_version(&gw).await, 1);

    // The listener's own address, localhost (it is bound to loopback) and configured names.
    for host in [
        format!("Host: {}", gw.layout.admin),
        format!("Host: localhost:{port}"),
        format!("Host: LOCALHOST:{port}"),
        "Host: portcullis-admin.test".to_string(),
        format!("Host: portcullis-admin.test:{port}"),
    ] {
        let r = admin_raw(&gw, "GET", "/healthz", &[&host]).await;
        assert_eq!(r.status, 200, "{host}: {r:?}");
    }
    let r = admin_raw(
        &gw,
        "POST",
        "/reload",
        &["Host: portcullis-admin.test", &admin_auth],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    use sha2::Digest;
    let metrics_token = "pcm_scraper_token_93c1";
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.admin = admin_section(&format!(
        "  metrics: token\n  metrics_token_sha256: \"{}\"\n",
        hex::encode(sha2::Sha256::digest(metrics_token.as_bytes()))
    ));
    let gw = Gateway::start(setup).await;
    let scrape = |token: Option<&'static str>| {
        let mut rb = client().get(gw.admin_url("/metrics"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        async move { rb.send().await.unwrap() }
    };
    let r = scrape(None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "metrics_auth_required", "{body}");
    let body: Value = scrape(Some("nope")).await.json().await.unwrap();
    assert_eq!(body["error"], "invalid_metrics_token", "{body}");
    for t in [metrics_token, ADMIN_TOKEN] {
        let r = scrape(Some(t)).await;
        assert_eq!(r.status(), 200);
        assert!(r
            .text()
            .await
            .unwrap()
            .contains("portcullis_config_version"));
    }
    // The metrics token reads metrics and nothing else.
    let r = client()
        .post(gw.admin_url("/reload"))
        .bearer_auth(metrics_token)
        .send()
        .await
        .unwrap();
    refused(&Answer::read(r).await, 401, "invalid_admin_token");
    // Health checks stay open.
    let r = client().get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reload_sends_the_operator_token() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let config = gw.layout.config_path();
    let config = config.to_str().unwrap();
    let out = cli_env(&["reload", "-c", config], &gw.layout.dir, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PORTCULLIS_ADMIN_TOKEN"),
        "{out:?}"
    );
    let out = cli_env(
        &["reload", "-c", config],
        &gw.layout.dir,
        &[("PORTCULLIS_ADMIN_TOKEN", "wrong")],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_admin_token (401)"),
        "{out:?}"
    );
    let out = cli_env(
        &["reload", "-c", config],
        &gw.layout.dir,
        &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded: config version 2"),
        "{out:?}"
    );
    assert_eq!(config_version(&gw).await, 2);
}
