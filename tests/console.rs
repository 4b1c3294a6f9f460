//! End to end: the approvals console in a real headless Chromium (driven over WebDriver by
//! chromedriver + fantoccini), against the real gateway binary holding a real agent call in
//! front of a real upstream.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them the tests fail, never pass silently. The browser harness is
//! `tests/support/browser.rs`, shared with `tests/console_agents.rs`.

mod support;

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::browser::*;
use support::*;

/// How long a held call may take to show up in the console.
const ROW_TIMEOUT: Duration = Duration::from_secs(15);
const SCREENSHOT: &str = "/tmp/console.png";

// ---------------------------------------------------------------------------------------------
// Gateway with approvals

struct Env {
    upstream: Upstream,
    gw: Gateway,
    /// alice's approver token.
    approver_token: String,
}

/// The real gateway with an `approvals:` section (alice is the only approver) and a `refunds`
/// route whose calls are held until a decision.
async fn start_env() -> Env {
    let upstream = Upstream::start().await;
    let approver_token = format!(
        "apv_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let hash = hex::encode(Sha256::digest(approver_token.as_bytes()));
    let mut setup = Setup::new(&upstream);
    // The harness has no setting for `approvals:`: the section follows the extra routes, as a
    // top-level key of its own. `store` is relative to the config file, in the test's temp dir.
    setup.extra_routes = format!(
        r#"  - name: refunds
    methods: [POST]
    path: /api/refunds
    upstream: tickets-api
    scopes: [tickets:write]
    approval:
      mode: hold
      timeout: 60s
approvals:
  store: approvals.db
  approvers:
    - name: alice
      token_sha256: "{hash}"
"#
    );
    let gw = Gateway::start(setup).await;
    Env {
        upstream,
        gw,
        approver_token,
    }
}

impl Env {
    /// Send an agent call to the held route in the background; resolves when the gateway
    /// answers (after the decision).
    fn held_call(
        &self,
        path_and_query: &str,
        body: &str,
        extra_header: Option<(&'static str, &'static str)>,
    ) -> tokio::task::JoinHandle<Answer> {
        let url = self.gw.url(path_and_query);
        let agent = token("support-bot", &["tickets:write"]);
        let body = body.to_string();
        tokio::spawn(async move {
            // The call waits for a human: far longer than the harness client's 30 s.
            let c = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(180))
                .build()
                .unwrap();
            let mut rb = c
                .post(url)
                .bearer_auth(agent)
                .header("content-type", "application/json")
                .body(body);
            if let Some((k, v)) = extra_header {
                rb = rb.header(k, v);
            }
            Answer::read(rb.send().await.expect("held agent call failed")).await
        })
    }

    /// GET an approvals API path as alice.
    async fn api(&self, path: &str) -> Value {
        let r = client()
            .get(self.gw.admin_url(path))
            .bearer_auth(&self.approver_token)
            .send()
            .await
            .unwrap();
        let a = Answer::read(r).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        a.body
    }

    /// Requests the upstream received on the held route.
    fn refunds_seen(&self) -> Vec<Seen> {
        self.upstream
            .seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/api/refunds"))
            .collect()
    }
}

/// Wait for the held call's answer.
async fn answer_of(call: tokio::task::JoinHandle<Answer>) -> Answer {
    tokio::time::timeout(POLL_TIMEOUT, call)
        .await
        .expect("the held call did not complete after the decision")
        .expect("held call task panicked")
}

// ---------------------------------------------------------------------------------------------
// Browser

/// What the tests do with the approvals page (the harness: `support::browser`).
impl Browser {
    /// What the console shows, read in one go.
    async fn ui(&self) -> Result<Ui, String> {
        self.read(UI_SCRIPT).await
    }

    /// Poll the console until `check` accepts what it shows.
    async fn wait_ui<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut(&Ui) -> Option<T>,
    ) -> T {
        self.wait_read(UI_SCRIPT, what, timeout, check).await
    }

    async fn open_console(&self, env: &Env) {
        self.open(&env.gw.admin_url("/console")).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the page

#[derive(Debug, Deserialize)]
struct Row {
    id: String,
    text: String,
    selected: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Ui {
    signed_in: bool,
    whoami: String,
    sign_in_error: String,
    pending: Vec<Row>,
    recent: Vec<Row>,
    detail: String,
    decision_error: String,
    decision_form_shown: bool,
    imgs: usize,
    detail_imgs: usize,
    injected: usize,
    hash: String,
    page_text: String,
}

impl Ui {
    fn pending_row(&self, id: &str) -> Option<&Row> {
        self.pending.iter().find(|r| r.id == id)
    }
    fn recent_row(&self, id: &str) -> Option<&Row> {
        self.recent.iter().find(|r| r.id == id)
    }
}

/// Run with `support::browser`'s page helpers (`q`, `shown`, `text`).
const UI_SCRIPT: &str = r#"
const rows = (s) => Array.from(document.querySelectorAll(s + ' [data-approval-id]')).map((r) => ({
  id: r.getAttribute('data-approval-id'),
  text: r.innerText,
  selected: r.getAttribute('aria-selected'),
}));
return {
  signed_in: shown('#app-view'),
  whoami: text('#whoami'),
  sign_in_error: text('#sign-in-error'),
  pending: rows('#pending-list'),
  recent: rows('#recent-list'),
  detail: text('#detail'),
  decision_error: text('#decision-error'),
  decision_form_shown: shown('#decision-form'),
  imgs: document.querySelectorAll('img').length,
  detail_imgs: q('#detail').querySelectorAll('img').length,
  injected: document.querySelectorAll('#injected').length,
  hash: location.hash,
  page_text: document.body.innerText,
};
"#;

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_approves_a_held_call_end_to_end() {
    bounded(approve_flow()).await;
}

async fn approve_flow() {
    require_browser();
    let env = start_env().await;

    // The page is served with the strict CSP it was written for.
    let page = client()
        .get(env.gw.admin_url("/console"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .expect("CSP header")
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'self'"), "{csp}");

    let b = Browser::start().await;
    b.open_console(&env).await;
    b.submit_token(&env.approver_token).await;
    b.wait_ui("signed in", UI_TIMEOUT, |ui| {
        (ui.signed_in && ui.whoami == "Signed in as alice").then_some(())
    })
    .await;
    // The token lives in this tab's sessionStorage and nowhere else.
    assert_eq!(
        b.stored_credentials().await,
        json!([env.approver_token, 0, ""])
    );

    // An agent call arrives while the console is open: it shows up by itself.
    let body = r#"{"order":1042,"amount_cents":129900,"currency":"EUR","note":"customer asked for a full refund"}"#;
    // A secret-looking header is forwarded (and bound), but shown redacted.
    let call = env.held_call(
        "/api/refunds?order=1042",
        body,
        Some(("x-session-token", "s3cret-session")),
    );
    let id = b
        .wait_ui("the held call listed", ROW_TIMEOUT, |ui| {
            (ui.pending.len() == 1).then(|| ui.pending[0].id.clone())
        })
        .await;
    let listed = env.api("/api/approvals?status=pending").await;
    assert_eq!(listed["approvals"][0]["id"], json!(id), "{listed}");
    let ui = b.ui().await.unwrap();
    let row = &ui.pending[0].text;
    for want in [
        "support-bot",
        "alice@example.com",
        "POST",
        "/api/refunds?order=1042",
        "route refunds",
        "hold",
        "votes 0/1",
        "expires in",
        "waiting",
    ] {
        assert!(row.contains(want), "row lacks {want:?}: {row:?}");
    }
    assert_eq!(ui.pending[0].selected.as_deref(), Some("false"));

    // Select it: the detail pane shows exactly what the agent wants to do.
    b.click(&format!("#pending-list [data-approval-id=\"{id}\"]"))
        .await;
    let body_len = format!("{} bytes", body.len());
    let body_sha = sha256_hex(body);
    b.wait_ui("details of the selected call", UI_TIMEOUT, |ui| {
        (ui.detail.contains(body) && ui.decision_form_shown).then_some(())
    })
    .await;
    let ui = b.ui().await.unwrap();
    for want in [
        "POST",
        "/api/refunds?order=1042",
        "support-bot",
        "alice@example.com",
        "refunds",
        body,
        &body_len,
        &body_sha,
        "content-type",
        "application/json",
        "<redacted>",
        "No votes yet.",
        "0 of 1 approval needed",
        "expires in",
    ] {
        assert!(
            ui.detail.contains(want),
            "detail lacks {want:?}:\n{}",
            ui.detail
        );
    }
    assert_eq!(ui.hash, format!("#/approvals/{id}"));
    assert_eq!(ui.pending[0].selected.as_deref(), Some("true"));
    // Secrets never reach the page: the agent's bearer token is not shown (it is not
    // forwarded), a secret-looking header is redacted.
    assert!(!ui.page_text.contains("eyJ"), "{}", ui.page_text);
    assert!(!ui.page_text.contains("s3cret-session"), "{}", ui.page_text);

    // Live updates re-use the row (no re-render, no lost selection): mark the element, wait
    // for the next polls to change its age, and find the mark still there.
    b.js(
        "document.querySelector('#pending-list [data-approval-id]').dataset.probe = 'kept'",
        vec![],
    )
    .await
    .unwrap();
    let age = |ui: &Ui| {
        ui.pending
            .first()
            .and_then(|r| r.text.lines().find(|l| l.contains("waiting")))
            .map(str::to_string)
    };
    let first_age = age(&b.ui().await.unwrap());
    b.wait_ui("the row's age to tick", UI_TIMEOUT, |ui| {
        (age(ui) != first_age).then_some(())
    })
    .await;
    let kept = b
        .js(
            "const r = document.querySelector('#pending-list [data-approval-id]'); return [r.dataset.probe || null, r.getAttribute('aria-selected')]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, json!(["kept", "true"]));

    let reason = "Order 1042 was returned, refund checked with finance";
    b.type_into("#reason", reason).await;

    b.screenshot(SCREENSHOT).await;

    // Nothing reached the tool before the decision.
    assert!(env.refunds_seen().is_empty());
    b.click("#approve").await;

    // The held call goes through, exactly as approved, once.
    let answer = answer_of(call).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["body"], json!(body), "{}", answer.body);
    let seen = env.refunds_seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/api/refunds?order=1042");
    assert_eq!(seen[0].body, body);

    // The console moves it from pending to recent decisions, with who and why.
    b.wait_ui("the decision in recent decisions", UI_TIMEOUT, |ui| {
        let recent = ui.recent_row(&id)?;
        (ui.pending_row(&id).is_none()
            && recent.text.contains("alice")
            && recent.text.contains(reason))
        .then_some(())
    })
    .await;
    let ui = b.ui().await.unwrap();
    assert!(ui.pending.is_empty(), "{ui:#?}");
    assert_eq!(ui.decision_error, "", "{ui:#?}");
    assert!(!ui.decision_form_shown, "decided: no more buttons");
    assert!(ui.detail.contains("alice"), "{}", ui.detail);
    let stored = env.api(&format!("/api/approvals/{id}")).await;
    assert_eq!(stored["status"], "used", "{stored}");
    assert_eq!(stored["decided_by"], json!(["alice"]), "{stored}");
    assert_eq!(stored["votes"][0]["reason"], json!(reason), "{stored}");
    assert_eq!(stored["votes"][0]["approve"], json!(true), "{stored}");

    // Still exactly one upstream call after the dust settles.
    assert_eq!(env.refunds_seen().len(), 1);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_denies_and_shows_agent_text_as_text() {
    bounded(deny_flow()).await;
}

async fn deny_flow() {
    require_browser();
    let env = start_env().await;
    let b = Browser::start().await;
    b.open_console(&env).await;

    // A wrong token is refused inline; an agent's JWT too.
    b.submit_token("not-an-approver-token").await;
    b.wait_ui("unknown token refused", UI_TIMEOUT, |ui| {
        (!ui.signed_in && ui.sign_in_error.contains("unknown approver token")).then_some(())
    })
    .await;
    b.submit_token(&token("support-bot", &["tickets:write"]))
        .await;
    b.wait_ui("agent token refused", UI_TIMEOUT, |ui| {
        (!ui.signed_in && ui.sign_in_error.contains("agent")).then_some(())
    })
    .await;
    b.submit_token(&env.approver_token).await;
    b.wait_ui("signed in", UI_TIMEOUT, |ui| {
        (ui.signed_in && ui.whoami == "Signed in as alice" && ui.sign_in_error.is_empty())
            .then_some(())
    })
    .await;

    // Agent-controlled text that would run script if it were ever parsed as HTML.
    // Also text that would read differently from what it is (a bidi override, deep in a body
    // far longer than the old 4 KiB preview, and an isolate in a header): it must be shown as
    // visible escapes, all of it.
    let xss = "<img src=x onerror=alert(1)>";
    let pad = "p".repeat(6000);
    let body = format!("{{\"order\":7,\"note\":\"{xss}\",\"pad\":\"{pad}\",\"tail\":\"pay to \u{202e}1234 NABI\"}}");
    let shown_body = body.replace('\u{202e}', "\\u{202e}");
    let header_value = "<b id=\"injected\">bold</b><img src=y onerror=alert(2)>\u{2067}x";
    let shown_header = header_value.replace('\u{2067}', "\\u{2067}");
    let call = env.held_call("/api/refunds", &body, Some(("x-note", header_value)));
    let id = b
        .wait_ui("the held call listed", ROW_TIMEOUT, |ui| {
            (ui.pending.len() == 1).then(|| ui.pending[0].id.clone())
        })
        .await;

    // Open it through its link (what notifications carry), not by clicking.
    let view = env.api(&format!("/api/approvals/{id}")).await;
    let link = view["link"].as_str().expect("link").to_string();
    assert!(
        link.ends_with(&format!("/console#/approvals/{id}")),
        "{link}"
    );
    b.c().goto(&link).await.expect("open the link");
    b.wait_ui(
        "details opened by link, the whole body loaded",
        UI_TIMEOUT,
        |ui| (ui.detail.contains(&shown_body) && ui.decision_form_shown).then_some(()),
    )
    .await;
    let ui = b.ui().await.unwrap();
    assert!(ui.signed_in, "the session survives navigation");
    assert!(ui.detail.contains(xss), "{}", ui.detail);
    assert!(ui.detail.contains(&shown_header), "{}", ui.detail);
    assert!(
        !ui.page_text.contains('\u{202e}') && !ui.page_text.contains('\u{2067}'),
        "a bidi control reached the page unescaped"
    );
    assert_eq!(ui.detail_imgs, 0, "agent text became markup");
    assert_eq!(ui.imgs, 0, "agent text became markup");
    assert_eq!(ui.injected, 0, "agent text became markup");
    assert_eq!(
        ui.pending_row(&id).and_then(|r| r.selected.as_deref()),
        Some("true")
    );
    b.assert_no_alert().await;

    // No reason, no decision.
    b.click("#deny").await;
    b.wait_ui("reason required", UI_TIMEOUT, |ui| {
        ui.decision_error.contains("reason").then_some(())
    })
    .await;
    assert!(b.ui().await.unwrap().pending_row(&id).is_some());

    let reason = "Refunds need a ticket number; <script>alert(3)</script> is not one";
    b.type_into("#reason", reason).await;
    b.click("#deny").await;

    // The held call is refused with the approver's reason; nothing reached the tool.
    let answer = answer_of(call).await;
    answer.assert_refusal(403, "approval_denied");
    assert_eq!(answer.body["reason"], json!(reason), "{}", answer.body);
    assert_eq!(
        answer.body["denied_by"],
        json!(["alice"]),
        "{}",
        answer.body
    );
    assert!(env.refunds_seen().is_empty(), "{:#?}", env.refunds_seen());

    b.wait_ui("the denial in recent decisions", UI_TIMEOUT, |ui| {
        let recent = ui.recent_row(&id)?;
        (ui.pending_row(&id).is_none()
            && recent.text.contains("alice")
            && recent.text.contains(reason)
            && recent.text.contains("Denied"))
        .then_some(())
    })
    .await;
    let ui = b.ui().await.unwrap();
    assert_eq!(ui.decision_error, "", "{ui:#?}");
    assert!(!ui.decision_form_shown);
    assert!(ui.detail.contains(reason), "{}", ui.detail);
    assert_eq!(ui.imgs, 0);
    b.assert_no_alert().await;
    let stored = env.api(&format!("/api/approvals/{id}")).await;
    assert_eq!(stored["status"], "denied", "{stored}");
    assert_eq!(stored["decision_reason"], json!(reason), "{stored}");

    // Signing out forgets the token.
    b.click("#sign-out").await;
    b.wait_ui("signed out", UI_TIMEOUT, |ui| {
        (!ui.signed_in && ui.pending.is_empty() && ui.recent.is_empty()).then_some(())
    })
    .await;
    assert_eq!(b.stored_token().await, Value::Null);
    b.close().await;
}
