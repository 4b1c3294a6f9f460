//! Configuration reloads on a running gateway: file change, POST /reload, SIGHUP; a refused
//! file never replaces the configuration in force.

mod support;
use serde_json::json;

use serde_json::Value;
use support::*;

const REPORTS_ROUTE: &str = "  - name: reports
    methods: [GET]
    path: /reports/{id}
    upstream: tickets-api
    scopes: [tickets:read]
";

const BROKEN_ROUTE: &str = "  - name: broken
    methods: [GET]
    path: /broken
    upstream: nope
    scopes: [tickets:read]
";

async fn readyz_version(gw: &Gateway) -> Value {
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["config_version"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_without_restart() {
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.watch_config = true;
    let mut gw = Gateway::start(setup.clone()).await;
    let pid = gw.pid();
    let t = token("reporting-bot", &["tickets:read"]);

    get(&gw, "/reports/1", Some(&t))
        .await
        .assert_refusal(403, "no_route");

    let mut with_reports = setup.clone();
    with_reports.extra_routes = REPORTS_ROUTE.into();
    gw.write_config(&gw.render(&with_reports));
    let m = gw.wait_metric("portcullis_config_version", &[], 2.0).await;
    assert_eq!(
        metric(&m, "portcullis_config_last_reload_success", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_config_reloads_total",
            &[("outcome", "success")]
        ),
        Some(1.0),
        "{m}"
    );

    let a = get(&gw, "/reports/1", Some(&t)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seen = up.seen_with_request_id(a.request_id());
    assert_eq!(seen.path, "/reports/1");
    assert_eq!(seen.header("x-portcullis-route"), Some("reports"));
    assert_eq!(
        gw.access_log_line(a.request_id()).await["config_version"],
        2
    );
    assert_eq!(readyz_version(&gw).await, 2);
    assert!(gw.is_running());
    assert_eq!(gw.pid(), pid);
    // The SIEM sees it: an audit line names the file watcher as the trigger.
    let (audit, _) = gw
        .wait_log_line("the reload's audit line", |l| l["event"] == "config_reload")
        .await;
    assert_eq!(
        (
            &audit["outcome"],
            &audit["by"],
            &audit["credential"],
            &audit["config_version"]
        ),
        (
            &json!("reloaded"),
            &json!("file_watch"),
            &json!("file_watch"),
            &json!(2)
        )
    );

    // A broken edit is refused: the last good configuration keeps serving. (Written in place
    // this time, as some editors do, rather than replaced by a rename.)
    let mut broken = with_reports.clone();
    broken.extra_routes.push_str(BROKEN_ROUTE);
    std::fs::write(gw.layout.config_path(), gw.render(&broken)).unwrap();
    let m = gw
        .wait_metric("portcullis_config_last_reload_success", &[], 0.0)
        .await;
    assert_eq!(metric(&m, "portcullis_config_version", &[]), Some(2.0));
    assert_eq!(get(&gw, "/reports/2", Some(&t)).await.status, 200);
    assert!(gw.stderr().contains("unknown upstream `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_keeps_the_old_config_then_sighup_applies_the_fix() {
    let up = Upstream::start().await;
    let setup = Setup::new(&up); // watch_config: false: only explicit reloads
    let gw = Gateway::start(setup.clone()).await;
    let t = token("reporting-bot", &["tickets:read"]);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);

    // A route naming an upstream that does not exist.
    let mut broken = setup.clone();
    broken.extra_routes = BROKEN_ROUTE.into();
    let text = gw.render(&broken);
    gw.write_config(&text);
    let r = reload(&gw).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "config_invalid", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("version 1 keeps serving"),
        "{body}"
    );
    let issues = body["issues"].as_array().expect("issues");
    assert_eq!(issues.len(), 1, "{body}");
    assert_eq!(issues[0]["path"], "routes[7].upstream", "{body}");
    let line = text
        .lines()
        .position(|l| l.contains("upstream: nope"))
        .unwrap()
        + 1;
    assert_eq!(issues[0]["line"], line, "{body}");
    assert!(
        issues[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown upstream `nope`; defined: "),
        "{body}"
    );

    // The old configuration keeps serving.
    assert_eq!(get(&gw, "/api/tickets/2", Some(&t)).await.status, 200);
    get(&gw, "/broken", Some(&t))
        .await
        .assert_refusal(403, "no_route");
    assert_eq!(readyz_version(&gw).await, 1);
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "portcullis_config_last_reload_success", &[]),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "portcullis_config_version", &[]), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "portcullis_config_reloads_total",
            &[("outcome", "failure")]
        ),
        Some(1.0),
        "{m}"
    );

    // Not even YAML.
    gw.write_config("routes: [\n  - name: x\n    path: {{\n");
    let r = reload(&gw).await;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "config_invalid", "{body}");
    assert!(
        !body["issues"].as_array().unwrap().is_empty(),
        "a syntax error must name where it is: {body}"
    );
    assert_eq!(get(&gw, "/api/tickets/3", Some(&t)).await.status, 200);

    // Fixed, with a new route, and applied with SIGHUP.
    let mut fixed = setup.clone();
    fixed.extra_routes = REPORTS_ROUTE.into();
    gw.write_config(&gw.render(&fixed));
    gw.signal(libc::SIGHUP);
    let m = gw.wait_metric("portcullis_config_version", &[], 2.0).await;
    assert_eq!(
        metric(&m, "portcullis_config_last_reload_success", &[]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_config_reloads_total",
            &[("outcome", "success")]
        ),
        Some(1.0),
        "{m}"
    );
    let a = get(&gw, "/reports/9", Some(&t)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(up.seen_with_request_id(a.request_id()).path, "/reports/9");

    // POST /reload of a good file answers with the new version.
    let r = reload(&gw).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "reloaded", "{body}");
    assert_eq!(body["config_version"], 3, "{body}");
    assert_eq!(readyz_version(&gw).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_disables_an_agent_applies_to_tokens_already_verified() {
    let up = Upstream::start().await;
    let setup = Setup::new(&up);
    let gw = Gateway::start(setup.clone()).await;
    let t = token("support-bot", &["tickets:read"]);
    // Verified once, so the token sits in the verified-token cache.
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);

    let text = gw.render(&setup).replace(
        "    description: Answers and files customer tickets\n",
        "    description: Answers and files customer tickets\n    enabled: false\n",
    );
    assert!(text.contains("enabled: false\n    scopes: [tickets:read, tickets:write]"));
    gw.write_config(&text);
    let r = reload(&gw).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let a = get(&gw, "/api/tickets/1", Some(&t)).await;
    a.assert_refusal(403, "agent_disabled");
    assert_eq!(up.hits(), 2);
}
