//! End to end: the console's agents page (`/console/agents`) in a real headless Chromium
//! (chromedriver + fantoccini), against the real gateway binary, with real agent calls through
//! the proxy in front of a real upstream.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them the tests fail, never pass silently. The browser harness is
//! `tests/support/browser.rs`, shared with `tests/console.rs`.

mod support;

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::browser::*;
use support::*;

const READ: &[&str] = &["tickets:read"];
/// The agents page with support-bot paused, for people reviewing a change to it.
const SCREENSHOT: &str = "/tmp/console-agents.png";

// ---------------------------------------------------------------------------------------------
// Gateway

/// The default test gateway (operator `ops` with [`ADMIN_TOKEN`]), plus, with
/// `approver_token`, an `approvals:` section whose only approver, alice, holds it.
async fn start_gateway(up: &Upstream, approver_token: Option<&str>) -> Gateway {
    let mut setup = Setup::new(up);
    if let Some(t) = approver_token {
        let hash = hex::encode(Sha256::digest(t.as_bytes()));
        // As in tests/console.rs: the section follows the extra routes as a top-level key.
        setup.extra_routes = format!(
            "approvals:\n  store: approvals.db\n  approvers:\n    - name: alice\n      token_sha256: \"{hash}\"\n"
        );
    }
    Gateway::start(setup).await
}

fn new_approver_token() -> String {
    format!(
        "apv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `GET /api/agents/{id}` with the admin token.
async fn agent_api(gw: &Gateway, id: &str) -> Value {
    let r = client()
        .get(gw.admin_url(&format!("/api/agents/{id}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let a = Answer::read(r).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// A header of an answer, `""` when absent.
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A real agent call through the proxy: support-bot reads a ticket.
async fn support_bot_call(gw: &Gateway) -> Answer {
    get(gw, "/api/tickets/1", Some(&token("support-bot", READ))).await
}

// ---------------------------------------------------------------------------------------------
// Browser

/// What the tests do with the agents page (the harness: `support::browser`).
impl Browser {
    /// What the agents page shows, read in one go.
    async fn ui(&self) -> Result<Ui, String> {
        self.read(UI_SCRIPT).await
    }

    /// Poll the page until `check` accepts what it shows.
    async fn wait_ui<T>(&self, what: &str, check: impl FnMut(&Ui) -> Option<T>) -> T {
        self.wait_read(UI_SCRIPT, what, UI_TIMEOUT, check).await
    }

    /// Open the agents page and sign in with `token`; wait until the inventory is shown.
    async fn sign_in(&self, gw: &Gateway, token: &str, whoami: &str) {
        self.open(&gw.admin_url("/console/agents")).await;
        self.submit_token(token).await;
        self.wait_ui("signed in, the inventory listed", |ui| {
            (ui.signed_in && ui.whoami == whoami && ui.rows.len() == 3).then_some(())
        })
        .await;
    }

    /// Select an agent by clicking its row; wait until its details (with the audit trail) show.
    async fn select(&self, id: &str) {
        self.click(&format!("#agent-rows tr[data-agent-id=\"{id}\"] td.owner"))
            .await;
        self.wait_ui("the agent's details", |ui| {
            (ui.detail_id == id && ui.audit_loaded).then_some(())
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the page

#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    text: String,
    state: String,
    current: Option<String>,
    hidden: bool,
}

#[derive(Debug, Deserialize)]
struct Ui {
    signed_in: bool,
    whoami: String,
    sign_in_error: String,
    rows: Vec<Row>,
    count: String,
    detail_id: String,
    detail: String,
    audit_loaded: bool,
    action_status: String,
    pause_shown: bool,
    resume_shown: bool,
    reason: String,
    imgs: usize,
    injected: usize,
    page_text: String,
}

impl Ui {
    fn row(&self, id: &str) -> &Row {
        self.rows
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no row {id}: {self:#?}"))
    }
}

/// Run with `support::browser`'s page helpers (`q`, `shown`, `text`).
const UI_SCRIPT: &str = r#"
return {
  signed_in: shown('#app-view'),
  whoami: text('#whoami'),
  sign_in_error: text('#sign-in-error'),
  rows: Array.from(document.querySelectorAll('#agent-rows tr')).map((r) => ({
    id: r.getAttribute('data-agent-id'),
    text: r.innerText,
    state: r.querySelector('.state').innerText,
    current: r.getAttribute('aria-current'),
    hidden: r.hidden,
  })),
  count: text('#agent-count'),
  detail_id: text('#d-id'),
  detail: text('#detail'),
  audit_loaded: shown('#d-audit') && !text('#d-no-audit').startsWith('Loading'),
  action_status: text('#action-status'),
  pause_shown: shown('#pause'),
  resume_shown: shown('#resume'),
  reason: q('#reason').value,
  imgs: document.querySelectorAll('img').length,
  injected: document.querySelectorAll('#injected').length,
  page_text: document.body.innerText,
};
"#;

/// Count the page's requests (its code calls the global `fetch` at each use).
const COUNT_FETCHES: &str = r#"
if (!window.__fetches) {
  window.__fetches = 0;
  const f = window.fetch;
  window.fetch = (...args) => { window.__fetches++; return f(...args); };
}
return window.__fetches;
"#;

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_page_lists_pauses_resumes_and_exports() {
    bounded(admin_flow()).await;
}

async fn admin_flow() {
    require_browser();
    let up = Upstream::start().await;
    let gw = start_gateway(&up, None).await;

    // Served like the approvals page: never cached, nothing but its own inline code and the
    // console's shared script from this listener.
    let page = client()
        .get(gw.admin_url("/console/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(header(&page, "content-type").starts_with("text/html"));
    assert_eq!(header(&page, "cache-control"), "no-store");
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<script src="/console/common.js"></script>"#),
        "the page does not load the shared script"
    );
    let common = client()
        .get(gw.admin_url("/console/common.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(common.status(), 200);
    assert_eq!(
        header(&common, "content-type"),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&common, "x-content-type-options"), "nosniff");
    assert_eq!(header(&common, "cache-control"), "no-store");
    assert!(common.text().await.unwrap().contains("window.Portcullis"));

    assert_eq!(support_bot_call(&gw).await.status, 200);

    let b = Browser::start().await;
    b.sign_in(&gw, ADMIN_TOKEN, "Signed in with an admin token")
        .await;
    // The token lives in this tab's sessionStorage, under the approvals page's key.
    assert_eq!(b.stored_credentials().await, json!([ADMIN_TOKEN, 0, ""]));
    // Still no external resources: what the page loaded (its shared script, the API calls)
    // all comes from this listener.
    let loaded = b
        .js(
            "return [location.origin, performance.getEntriesByType('resource').map((e) => e.name), Array.from(document.scripts).map((s) => s.getAttribute('src')).filter((s) => s !== null), document.querySelectorAll('link, img, iframe, object, embed').length]",
            vec![],
        )
        .await
        .unwrap();
    let origin = loaded[0].as_str().unwrap();
    let resources: Vec<&str> = loaded[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        resources.contains(&format!("{origin}/console/common.js").as_str()),
        "{loaded}"
    );
    assert!(
        resources
            .iter()
            .all(|r| r.starts_with(&format!("{origin}/"))),
        "{loaded}"
    );
    assert_eq!(loaded[2], json!(["/console/common.js"]), "{loaded}");
    assert_eq!(loaded[3], json!(0), "{loaded}");

    // The inventory: every agent of the config, with owner, tier and state.
    let ui = b.ui().await.unwrap();
    let ids: Vec<&str> = ui.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["reporting-bot", "retired-bot", "support-bot"]);
    for (id, owner, st) in [
        ("support-bot", "alice@example.com", "enabled"),
        ("reporting-bot", "bob@example.com", "enabled"),
        ("retired-bot", "carol@example.com", "disabled"),
    ] {
        let row = ui.row(id);
        assert_eq!(row.state, st, "{row:?}");
        assert!(row.text.contains(owner), "{row:?}");
        assert!(row.text.contains("standard"), "{row:?}");
        // No monitoring configured: no activity figures.
        assert!(row.text.contains('—'), "{row:?}");
    }
    assert_eq!(ui.count, "3");

    // The filter narrows the table.
    b.type_into("#filter", "retired").await;
    let ui = b
        .wait_ui("the filter applied", |ui| {
            (ui.count == "1 of 3").then(|| {
                ui.rows
                    .iter()
                    .filter(|r| !r.hidden)
                    .map(|r| r.id.clone())
                    .collect::<Vec<_>>()
            })
        })
        .await;
    assert_eq!(ui, ["retired-bot"]);
    b.c()
        .find(Locator::Css("#filter"))
        .await
        .unwrap()
        .send_keys("\u{E00C}") // Escape
        .await
        .unwrap();
    b.wait_ui("the filter cleared", |ui| (ui.count == "3").then_some(()))
        .await;

    // Details of support-bot.
    b.select("support-bot").await;
    let ui = b.ui().await.unwrap();
    for want in [
        "support-bot",
        "Answers and files customer tickets",
        "alice@example.com",
        "tickets:read",
        "tickets:write",
        "tickets-read",
        "tickets-create",
        "No intervention",
        "No kill-switch action recorded",
        "monitoring is not configured",
    ] {
        assert!(
            ui.detail.contains(want),
            "detail lacks {want:?}:\n{}",
            ui.detail
        );
    }
    assert!(!ui.detail.contains("api-admin"), "{}", ui.detail);
    assert!(ui.pause_shown && !ui.resume_shown, "{ui:#?}");
    assert_eq!(ui.row("support-bot").current.as_deref(), Some("true"));
    assert_eq!(
        b.js("return location.hash", vec![]).await.unwrap(),
        json!("#/agents/support-bot")
    );

    // Pausing needs a reason.
    b.click("#pause").await;
    b.wait_ui("reason required", |ui| {
        ui.action_status.contains("Give a reason").then_some(())
    })
    .await;
    assert_eq!(agent_api(&gw, "support-bot").await["state"], "enabled");

    // Polls neither lose the selection nor the text being typed: mark the row, type, and
    // let two polls go by.
    b.js(
        "document.querySelector('#agent-rows tr[data-agent-id=\"support-bot\"]').dataset.probe = 'kept'",
        vec![],
    )
    .await
    .unwrap();
    let reason = "Deleting tickets in a loop, see INC-4711";
    b.type_into("#reason", reason).await;
    let start = b.js(COUNT_FETCHES, vec![]).await.unwrap().as_u64().unwrap();
    let deadline = Instant::now() + UI_TIMEOUT;
    // Each poll reads the list and the selected agent: two polls, four requests.
    while b.js(COUNT_FETCHES, vec![]).await.unwrap().as_u64().unwrap() < start + 4 {
        assert!(Instant::now() < deadline, "the page stopped polling");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = b
        .js(
            "const r = document.querySelector('#agent-rows tr[data-agent-id=\"support-bot\"]'); return [r.dataset.probe || null, r.getAttribute('aria-current'), document.activeElement.id]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!(["kept", "true", "reason"]));
    assert_eq!(b.ui().await.unwrap().reason, reason);

    // Pause through the page.
    b.click("#pause").await;
    b.wait_ui("paused, shown in the table and the details", |ui| {
        (ui.row("support-bot").state == "paused"
            && ui.resume_shown
            && ui.detail.contains("Paused")
            && ui.detail.contains(reason))
        .then_some(())
    })
    .await;
    b.screenshot(SCREENSHOT).await;
    let ui = b.ui().await.unwrap();
    assert!(
        ui.action_status.contains("Paused support-bot (by ops)"),
        "{ui:#?}"
    );
    assert!(ui.detail.contains("by ops"), "{}", ui.detail);
    assert_eq!(ui.reason, "", "the reason is cleared once used");
    assert!(!ui.pause_shown);
    // The audit trail has it.
    b.wait_ui("the pause in the audit trail", |ui| {
        (ui.detail.contains("pause by ops") && !ui.detail.contains("No kill-switch action"))
            .then_some(())
    })
    .await;
    let api = agent_api(&gw, "support-bot").await;
    assert_eq!(api["state"], "paused", "{api}");
    assert_eq!(api["runtime"]["paused"]["by"], "ops", "{api}");
    assert_eq!(api["runtime"]["paused"]["reason"], reason, "{api}");
    let r = support_bot_call(&gw).await;
    r.assert_refusal(403, "agent_paused");
    assert_eq!(r.body["paused_reason"], reason);
    // Another agent is unaffected.
    assert_eq!(
        get(&gw, "/api/tickets/1", Some(&token("reporting-bot", READ)))
            .await
            .status,
        200
    );

    // The CSV export: fetched with the token, saved through a Blob URL. The blob is captured
    // as the page hands it to the browser; the file must land in the download directory too.
    b.js(
        "window.__csv = null; const make = URL.createObjectURL; URL.createObjectURL = (blob) => { window.__csv = blob; return make(blob); };",
        vec![],
    )
    .await
    .unwrap();
    b.click("#export-csv").await;
    let csv = b
        .c()
        .execute_async(
            "const done = arguments[arguments.length - 1]; const t0 = Date.now(); (function wait() { if (window.__csv) window.__csv.text().then(done); else if (Date.now() - t0 > 20000) done(null); else setTimeout(wait, 50); })();",
            vec![],
        )
        .await
        .expect("read the exported blob");
    let csv = csv.as_str().expect("the page exported a blob").to_string();
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("id,owner,tier,state,")),
        "{csv}"
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), 3, "{csv}");
    assert!(
        body[2].starts_with("support-bot,alice@example.com,standard,paused,")
            && body[2].contains(reason)
            && body[2].contains("ops"),
        "{csv}"
    );
    assert!(
        body[1].starts_with("retired-bot,carol@example.com,standard,disabled,"),
        "{csv}"
    );
    let file = b.downloads.join("portcullis-agents.csv");
    let deadline = Instant::now() + UI_TIMEOUT;
    while !file.exists() {
        assert!(
            Instant::now() < deadline,
            "no download in {}: {:?}",
            b.downloads.display(),
            std::fs::read_dir(&b.downloads)
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Chromium writes to a temporary name and renames: the file is whole once it exists.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), csv);
    b.wait_ui("the export reported", |ui| {
        ui.page_text.contains("Exported 3 agents").then_some(())
    })
    .await;

    // Resume through the page: calls pass again.
    let why = "Loop fixed in release 2.3.1";
    b.type_into("#reason", why).await;
    b.click("#resume").await;
    b.wait_ui("resumed", |ui| {
        (ui.row("support-bot").state == "enabled"
            && ui.pause_shown
            && !ui.resume_shown
            && ui.detail.contains("No intervention")
            && ui.detail.contains("resume by ops")
            && ui.action_status.contains("Resumed support-bot"))
        .then_some(())
    })
    .await;
    let api = agent_api(&gw, "support-bot").await;
    assert_eq!(api["state"], "enabled", "{api}");
    assert_eq!(api["audit"][0]["action"], "resume", "{api}");
    assert_eq!(api["audit"][0]["reason"], why, "{api}");
    assert_eq!(support_bot_call(&gw).await.status, 200);

    // Keyboard: arrows move the selection along the table.
    b.js(
        "document.querySelector('#agent-rows tr[data-agent-id=\"support-bot\"] button').focus()",
        vec![],
    )
    .await
    .unwrap();
    b.c()
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E013}") // ArrowUp
        .await
        .unwrap();
    b.wait_ui("the previous agent selected", |ui| {
        (ui.detail_id == "retired-bot" && ui.row("retired-bot").current.as_deref() == Some("true"))
            .then_some(())
    })
    .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_may_pause_but_not_resume() {
    bounded(approver_flow()).await;
}

async fn approver_flow() {
    require_browser();
    let up = Upstream::start().await;
    let approver = new_approver_token();
    let gw = start_gateway(&up, Some(&approver)).await;
    let b = Browser::start().await;

    // A wrong token is refused at sign-in with the server's words.
    b.open(&gw.admin_url("/console/agents")).await;
    b.submit_token("not-a-token").await;
    b.wait_ui("unknown token refused", |ui| {
        (!ui.signed_in && ui.sign_in_error.contains("unknown token")).then_some(())
    })
    .await;

    b.sign_in(&gw, &approver, "Signed in as alice (approver)")
        .await;
    b.select("support-bot").await;
    let reason = "Possible prompt injection in ticket 88";
    b.type_into("#reason", reason).await;
    b.click("#pause").await;
    b.wait_ui("paused by alice", |ui| {
        (ui.row("support-bot").state == "paused"
            && ui.detail.contains("by alice")
            && ui.action_status.contains("Paused support-bot (by alice)"))
        .then_some(())
    })
    .await;
    let api = agent_api(&gw, "support-bot").await;
    assert_eq!(api["runtime"]["paused"]["by"], "alice", "{api}");
    support_bot_call(&gw)
        .await
        .assert_refusal(403, "agent_paused");

    // Resuming loosens: the server refuses an approver, and the page says why.
    let ui = b.ui().await.unwrap();
    assert!(
        ui.detail
            .contains("Resuming and lifting need an admin token"),
        "{}",
        ui.detail
    );
    b.type_into("#reason", "false alarm").await;
    b.click("#resume").await;
    let ui = b
        .wait_ui("the refusal shown", |ui| {
            ui.action_status
                .contains("admin_token_required")
                .then(|| ui.action_status.clone())
        })
        .await;
    assert!(
        ui.starts_with("Resume refused: resuming an agent loosens what an agent may do: it needs an admin token"),
        "{ui}"
    );
    let ui = b.ui().await.unwrap();
    assert!(ui.signed_in, "a refused action is no reason to sign out");
    assert_eq!(ui.row("support-bot").state, "paused");
    assert!(ui.resume_shown);
    assert_eq!(ui.reason, "false alarm", "a refused action keeps the text");
    let api = agent_api(&gw, "support-bot").await;
    assert_eq!(api["state"], "paused", "{api}");
    support_bot_call(&gw)
        .await
        .assert_refusal(403, "agent_paused");

    // One sign-in serves both pages: the nav link leads to the approvals page, signed in.
    b.click("nav a[href=\"/console\"]").await;
    let deadline = Instant::now() + UI_TIMEOUT;
    loop {
        let who = b
            .js(
                "const w = document.getElementById('whoami'); return location.pathname + ' ' + (w && !w.closest('[hidden]') ? w.innerText : '')",
                vec![],
            )
            .await
            .unwrap_or(Value::Null);
        if who == json!("/console Signed in as alice") {
            break;
        }
        assert!(Instant::now() < deadline, "approvals page: {who}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.click("nav a[href=\"/console/agents\"]").await;
    b.wait_ui("back on the agents page, still signed in", |ui| {
        (ui.signed_in && ui.whoami == "Signed in as alice (approver)" && ui.rows.len() == 3)
            .then_some(())
    })
    .await;

    // Signing out forgets the token.
    b.click("#sign-out").await;
    b.wait_ui("signed out", |ui| {
        (!ui.signed_in && ui.rows.is_empty()).then_some(())
    })
    .await;
    assert_eq!(b.stored_token().await, Value::Null);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_page_shows_descriptions_and_reasons_as_text() {
    bounded(text_flow()).await;
}

async fn text_flow() {
    require_browser();
    let up = Upstream::start().await;
    let description = r#"<img src=x onerror=alert(1)><b id="injected">bold</b>"#;
    let gw = Gateway::start_edited(Setup::new(&up), |text| {
        let old = "description: Answers and files customer tickets";
        assert!(text.contains(old));
        text.replace(old, &format!("description: '{description}'"))
    })
    .await;
    let b = Browser::start().await;
    b.sign_in(&gw, ADMIN_TOKEN, "Signed in with an admin token")
        .await;
    b.select("support-bot").await;
    let ui = b.ui().await.unwrap();
    assert!(ui.detail.contains(description), "{}", ui.detail);

    // A reason with markup, and a bidi override that would make it read differently.
    let reason = "<img src=y onerror=alert(2)> pay to \u{202e}1234 NABI";
    let shown = reason.replace('\u{202e}', "\\u{202e}");
    b.type_into("#reason", reason).await;
    b.click("#pause").await;
    b.wait_ui("the reason shown as text", |ui| {
        (ui.row("support-bot").state == "paused" && ui.detail.matches(&shown).count() >= 2)
            .then_some(())
    })
    .await;
    let api = agent_api(&gw, "support-bot").await;
    assert_eq!(api["runtime"]["paused"]["reason"], reason, "{api}");
    let ui = b.ui().await.unwrap();
    assert!(ui.detail.contains(description), "{}", ui.detail);
    assert!(
        !ui.page_text.contains('\u{202e}'),
        "a bidi control reached the page"
    );
    assert_eq!(ui.imgs, 0, "agent text became markup");
    assert_eq!(ui.injected, 0, "agent text became markup");
    b.assert_no_alert().await;
    // Reloading the page (signed in from session storage, the agent from the URL) too.
    b.c().refresh().await.unwrap();
    b.wait_ui("reloaded on the same agent", |ui| {
        (ui.signed_in && ui.detail_id == "support-bot" && ui.detail.contains(&shown)).then_some(())
    })
    .await;
    let ui = b.ui().await.unwrap();
    assert_eq!((ui.imgs, ui.injected), (0, 0));
    b.assert_no_alert().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_page_shows_what_monitoring_saw() {
    bounded(monitoring_flow()).await;
}

/// With monitoring on, a burst of refused deletes is an anomaly: the page shows the agent's
/// activity and the anomaly with its summary.
async fn monitoring_flow() {
    require_browser();
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.extra_routes = "  - name: tickets-delete\n    methods: [DELETE]\n    path: /api/tickets/{id}\n    upstream: tickets-api\n    scopes: [tickets:delete]\n".into();
    setup.admin = admin_section("")
        + "monitoring:\n  detectors:\n    denial_burst: {denials: 3, window: 1m}\n  playbooks:\n    - name: notice\n      steps:\n        - [alert]\n";
    let gw = Gateway::start(setup).await;
    let t = token("support-bot", READ);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&t)).await.status, 200);
    for i in 0..3 {
        let a = Answer::read(
            client()
                .delete(gw.url(&format!("/api/tickets/{i}")))
                .bearer_auth(&t)
                .send()
                .await
                .unwrap(),
        )
        .await;
        a.assert_refusal(403, "insufficient_scope");
    }
    // The API has it before the page is opened.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let api = agent_api(&gw, "support-bot").await;
        if api["activity"]["anomalies_24h"] == 1 {
            assert_eq!(api["activity"]["denials_24h"], 3, "{api}");
            break;
        }
        assert!(Instant::now() < deadline, "no anomaly in {api}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = Browser::start().await;
    b.sign_in(&gw, ADMIN_TOKEN, "Signed in with an admin token")
        .await;
    b.select("support-bot").await;
    let ui = b.ui().await.unwrap();
    assert!(ui.detail.contains("denial_burst"), "{}", ui.detail);
    assert!(
        ui.detail.contains("refus"),
        "the summary is shown: {}",
        ui.detail
    );
    let row = &ui.row("support-bot").text;
    assert!(!row.contains('—'), "activity columns are filled: {row}");
    b.close().await;
}
