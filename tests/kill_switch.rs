//! The kill switch against the real binary: pause and resume, token revocation (one `jti`, or
//! every token of an agent), cached tokens, a reload and a restart, the audit trail, the
//! inventory (JSON and CSV) and the CLI.

mod support;

use serde_json::{json, Value};
use support::*;

const READ: &[&str] = &["tickets:read"];

async fn admin_post(gw: &Gateway, path: &str, token: &str, body: Value) -> Answer {
    Answer::read(
        client()
            .post(gw.admin_url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// An admin API refusal: status and machine code (admin answers carry no request id).
fn refused(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"], code, "{}", a.body);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.body
    );
}

async fn admin_get(gw: &Gateway, path: &str) -> reqwest::Response {
    client()
        .get(gw.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_is_refused_at_once_across_reloads_and_restarts() {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(Setup::new(&up)).await;
    // A token the verifier has already cached.
    let t = token("support-bot", READ);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);
    let hits = up.hits();

    // Refusals that change nothing.
    let a = admin_post(&gw, "/api/agents/support-bot/pause", ADMIN_TOKEN, json!({})).await;
    refused(&a, 400, "invalid_body");
    let a = admin_post(
        &gw,
        "/api/agents/support-bot/pause",
        ADMIN_TOKEN,
        json!({"reason": "  "}),
    )
    .await;
    refused(&a, 400, "reason_required");
    let a = admin_post(
        &gw,
        "/api/agents/ghost/pause",
        ADMIN_TOKEN,
        json!({"reason": "x"}),
    )
    .await;
    refused(&a, 404, "unknown_agent");
    let a = admin_post(
        &gw,
        "/api/agents/support-bot/pause",
        &t,
        json!({"reason": "x"}),
    )
    .await;
    assert!(
        matches!(a.status, 401 | 403),
        "an agent token paused an agent: {}",
        a.body
    );
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);
    let hits = hits + 1;

    let a = admin_post(
        &gw,
        "/api/agents/support-bot/pause",
        ADMIN_TOKEN,
        json!({"reason": "deleting tickets in a loop"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["persisted"], true);
    let r = get(&gw, "/api/tickets/1", Some(&t)).await;
    r.assert_refusal(403, "agent_paused");
    assert_eq!(r.body["paused_by"], "ops");
    assert_eq!(r.body["paused_reason"], "deleting tickets in a loop");
    let msg = r.body["message"].as_str().unwrap();
    assert!(
        msg.contains("alice@example.com") && msg.contains("Do not retry"),
        "{msg}"
    );
    // A fresh token does not help; another agent is unaffected.
    get(&gw, "/api/tickets/1", Some(&token("support-bot", READ)))
        .await
        .assert_refusal(403, "agent_paused");
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token("reporting-bot", READ)))
            .await
            .status,
        200
    );
    let line = gw.access_log_line(r.request_id()).await;
    assert_eq!(line["reason"], "agent_paused", "{line}");

    // A reload (the YAML knows nothing of pauses) keeps it paused.
    assert_eq!(reload(&gw).await.status(), 200);
    get(&gw, "/api/tickets/1", Some(&t))
        .await
        .assert_refusal(403, "agent_paused");
    // So does a restart.
    gw.signal(libc::SIGTERM);
    gw.wait_exit(std::time::Duration::from_secs(15))
        .await
        .expect("exited");
    gw.restart().await;
    get(&gw, "/api/tickets/1", Some(&t))
        .await
        .assert_refusal(403, "agent_paused");
    assert_eq!(up.hits(), hits + 1, "only reporting-bot's call went out");

    // Resume: the audit trail has both, with who and why.
    let a = admin_post(
        &gw,
        "/api/agents/support-bot/resume",
        ADMIN_TOKEN,
        json!({"reason": "owner fixed the prompt"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);
    let a = admin_post(
        &gw,
        "/api/agents/support-bot/resume",
        ADMIN_TOKEN,
        json!({"reason": "again"}),
    )
    .await;
    refused(&a, 409, "nothing_to_undo");
    let audit: Value = admin_get(&gw, "/api/audit?agent=support-bot")
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("resume", "owner fixed the prompt"),
            ("pause", "deleting tickets in a loop")
        ]
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "portcullis_agent_state_changes_total",
            &[("action", "resume"), ("credential", "admin")]
        ),
        Some(1.0),
        "{m}"
    );
    let (_, log) = gw
        .wait_log_line("the resume", |l| {
            l["event"] == "agent_state" && l["action"] == "resume"
        })
        .await;
    let events: Vec<Value> = log
        .into_iter()
        .filter(|l| l["event"] == "agent_state")
        .collect();
    let actions: Vec<&Value> = events.iter().map(|e| &e["action"]).collect();
    assert_eq!(actions, [&json!("pause"), &json!("resume")], "{events:?}");
    assert_eq!(events[0]["by"], "ops");
    assert_eq!(events[0]["persisted"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refused_even_when_cached() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let mut c = claims_for(FIXTURE_ISS, "support-bot", READ);
    c["jti"] = json!("leaked-1");
    let leaked = token_with(c);
    let other = token("support-bot", READ);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&leaked)).await.status, 200);

    let a = admin_post(
        &gw,
        "/api/tokens/revoke",
        ADMIN_TOKEN,
        json!({"jti": "leaked-1", "reason": "pasted in a ticket"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let r = get(&gw, "/api/tickets/1", Some(&leaked)).await;
    r.assert_refusal(401, "token_revoked");
    assert_eq!(r.body["jti"], "leaked-1");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("request a new token"));
    assert_eq!(get(&gw, "/api/tickets/1", Some(&other)).await.status, 200);

    // Every token of the agent issued until now; one issued later passes.
    let a = admin_post(
        &gw,
        "/api/tokens/revoke",
        ADMIN_TOKEN,
        json!({"agent": "support-bot", "reason": "key rotation"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    get(&gw, "/api/tickets/1", Some(&other))
        .await
        .assert_refusal(401, "token_revoked");
    let mut later = claims_for(FIXTURE_ISS, "support-bot", READ);
    later["iat"] = json!(now() + 2);
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token_with(later)))
            .await
            .status,
        200
    );
    // Another agent's tokens are untouched.
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token("reporting-bot", READ)))
            .await
            .status,
        200
    );
    let a = admin_post(
        &gw,
        "/api/tokens/revoke",
        ADMIN_TOKEN,
        json!({"reason": "nothing named"}),
    )
    .await;
    refused(&a, 400, "invalid_body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_lists_every_agent_as_json_csv_and_through_the_cli() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let a = admin_post(
        &gw,
        "/api/agents/reporting-bot/pause",
        ADMIN_TOKEN,
        json!({"reason": "=HYPERLINK(\"x\")"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let inv: Value = admin_get(&gw, "/api/agents").await.json().await.unwrap();
    let rows = inv["agents"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["reporting-bot", "retired-bot", "support-bot"]);
    let by = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(by("retired-bot")["state"], "disabled");
    assert_eq!(by("reporting-bot")["state"], "paused");
    assert_eq!(by("reporting-bot")["runtime"]["paused"]["by"], "ops");
    let support = by("support-bot");
    assert_eq!(support["state"], "enabled");
    assert_eq!(support["owner"], "alice@example.com");
    assert_eq!(support["tier"], "standard");
    let routes: Vec<&str> = support["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        routes.contains(&"tickets-create") && !routes.contains(&"api-admin"),
        "{routes:?}"
    );

    let r = client()
        .get(gw.admin_url("/api/agents?format=csv"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("id,owner,tier,state,scopes,routes"));
    let reporting = lines.next().unwrap();
    assert!(
        reporting.starts_with("reporting-bot,bob@example.com,standard,paused,tickets:read,"),
        "{reporting}"
    );
    // A reason that a spreadsheet would run as a formula is defused.
    assert!(reporting.contains("'=HYPERLINK"), "{reporting}");
    // Unauthenticated: refused.
    let anon = client()
        .get(gw.admin_url("/api/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    // The CLI, as an operator would run it.
    let admin = format!("http://{}", gw.layout.admin);
    let dir = gw.layout.dir.clone();
    let out = cli_env(
        &["agents", "--admin", &admin, "list"],
        &dir,
        &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reporting-bot") && text.contains("paused by ops"),
        "{text}"
    );
    let out = cli_env(
        &[
            "agents",
            "--admin",
            &admin,
            "pause",
            "support-bot",
            "--reason",
            "cli test",
        ],
        &dir,
        &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pause support-bot: by ops (cli test)"));
    get(&gw, "/api/tickets/1", Some(&token("support-bot", READ)))
        .await
        .assert_refusal(403, "agent_paused");
    let out = cli_env(
        &[
            "tokens", "revoke", "--admin", &admin, "--jti", "abc", "--reason", "cli",
        ],
        &dir,
        &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli_env(
        &[
            "agents", "--admin", &admin, "resume", "ghost", "--reason", "x",
        ],
        &dir,
        &[("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing_to_undo (409)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
