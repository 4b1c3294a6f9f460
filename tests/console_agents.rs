//! End to end: the console's agents page (`/console/agents`) in a real headless Chromium
//! (chromedriver + fantoccini), against the real gateway binary, with real agent calls through
//! the proxy in front of a real upstream.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them the tests fail, never pass silently. The browser harness is
//! a trimmed copy of the one in `tests/console.rs`.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Every wait on the browser (the machine may be loaded).
const UI_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of a whole test, so that a wedged browser fails the test instead of hanging it.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
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

/// A real agent call through the proxy: support-bot reads a ticket.
async fn support_bot_call(gw: &Gateway) -> Answer {
    get(gw, "/api/tickets/1", Some(&token("support-bot", READ))).await
}

// ---------------------------------------------------------------------------------------------
// Browser

/// chromedriver (its own process group) driving a headless Chromium with a throwaway profile.
/// Everything is killed on drop, also when a test fails half-way.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
    log: PathBuf,
    downloads: PathBuf,
    // Last: removed after the processes are gone.
    _dir: tempfile::TempDir,
}

fn require_browser() {
    for (path, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).exists(),
            "{what} is missing ({path} does not exist): the console end-to-end tests need a real \
             headless browser. Install it with `apt-get install chromium chromium-driver`."
        );
    }
}

impl Browser {
    async fn start() -> Browser {
        require_browser();
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let log = dir.path().join("chromedriver.log");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut b = Browser {
            client: None,
            driver,
            profile,
            log,
            downloads,
            _dir: dir,
        };
        let url = format!("http://127.0.0.1:{port}");
        b.wait_driver(&url).await;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--window-size=1440,1000",
                    format!("--user-data-dir={}", b.profile.display()),
                ],
                "prefs": {
                    "download.default_directory": b.downloads.display().to_string(),
                    "download.prompt_for_download": false,
                },
            },
        });
        let caps = caps.as_object().unwrap().clone();
        // Several rustls crypto backends are linked in: pick one (as the gateway does).
        pingora::tls::install_default_crypto_provider();
        let mut builder = ClientBuilder::rustls().expect("rustls connector");
        builder.capabilities(caps);
        let client =
            match tokio::time::timeout(Duration::from_secs(90), builder.connect(&url)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => panic!(
                    "cannot start a Chromium session: {e}\nchromedriver log:\n{}",
                    b.driver_log()
                ),
                Err(_) => panic!(
                    "Chromium did not start within 90 s\nchromedriver log:\n{}",
                    b.driver_log()
                ),
            };
        b.client = Some(client);
        b
    }

    async fn wait_driver(&mut self, url: &str) {
        let c = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            if let Ok(r) = c.get(format!("{url}/status")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(st) = self.driver.try_wait().unwrap() {
                panic!("chromedriver exited ({st}); log:\n{}", self.driver_log());
            }
            if Instant::now() > deadline {
                panic!(
                    "chromedriver not ready within {POLL_TIMEOUT:?}; log:\n{}",
                    self.driver_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn driver_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    /// End the session (Chromium quits), then drop kills chromedriver.
    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), c.close()).await;
        }
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.c()
            .execute(script, args)
            .await
            .map_err(|e| e.to_string())
    }

    /// What the agents page shows, read in one go.
    async fn ui(&self) -> Result<Ui, String> {
        let v = self.js(UI_SCRIPT, vec![]).await?;
        serde_json::from_value(v.clone()).map_err(|e| format!("{e}: {v}"))
    }

    /// Poll the page until `check` accepts what it shows.
    async fn wait_ui<T>(&self, what: &str, mut check: impl FnMut(&Ui) -> Option<T>) -> T {
        let deadline = Instant::now() + UI_TIMEOUT;
        loop {
            let last = match self.ui().await {
                Ok(ui) => match check(&ui) {
                    Some(v) => return v,
                    None => format!("{ui:#?}"),
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!("{what}: not within {UI_TIMEOUT:?}; last seen:\n{last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let e = self
            .c()
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Open the agents page and sign in with `token`; wait until the inventory is shown.
    async fn sign_in(&self, gw: &Gateway, token: &str, whoami: &str) {
        self.c()
            .goto(&gw.admin_url("/console/agents"))
            .await
            .expect("open the agents page");
        self.c()
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css("#token"))
            .await
            .expect("sign-in form");
        self.type_into("#token", token).await;
        self.click("#sign-in").await;
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

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.driver.id() as i32;
        // SAFETY: signals to the process group we created (chromedriver's own pid as pgid) and
        // to processes found below by our unique profile directory; nothing else.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium may have left the group: find it by its unique --user-data-dir.
        let marker = format!("--user-data-dir={}", self.profile.display());
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
                    continue;
                };
                if cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == marker.as_bytes())
                {
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
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

const UI_SCRIPT: &str = r#"
const q = (s) => document.querySelector(s);
const shown = (s) => { const e = q(s); return !!e && !e.closest('[hidden]'); };
const text = (s) => shown(s) ? q(s).innerText : '';
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
    tokio::time::timeout(TEST_TIMEOUT, admin_flow())
        .await
        .expect("test took longer than TEST_TIMEOUT");
}

async fn admin_flow() {
    require_browser();
    let up = Upstream::start().await;
    let gw = start_gateway(&up, None).await;

    // Served like the approvals page: never cached, nothing but its own inline code.
    let page = client()
        .get(gw.admin_url("/console/agents"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |n: &str| {
        page.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert_eq!(header("cache-control"), "no-store");
    let csp = header("content-security-policy");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );

    assert_eq!(support_bot_call(&gw).await.status, 200);

    let b = Browser::start().await;
    b.sign_in(&gw, ADMIN_TOKEN, "Signed in with an admin token")
        .await;
    // The token lives in this tab's sessionStorage, under the approvals page's key.
    let stored = b
        .js(
            "return [sessionStorage.getItem('portcullis.approverToken'), localStorage.length, document.cookie]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([ADMIN_TOKEN, 0, ""]));

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
    let png = b.c().screenshot().await.expect("screenshot");
    std::fs::write(SCREENSHOT, png).expect("write the screenshot");
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
    tokio::time::timeout(TEST_TIMEOUT, approver_flow())
        .await
        .expect("test took longer than TEST_TIMEOUT");
}

async fn approver_flow() {
    require_browser();
    let up = Upstream::start().await;
    let approver = new_approver_token();
    let gw = start_gateway(&up, Some(&approver)).await;
    let b = Browser::start().await;

    // A wrong token is refused at sign-in with the server's words.
    b.c().goto(&gw.admin_url("/console/agents")).await.unwrap();
    b.c()
        .wait()
        .at_most(UI_TIMEOUT)
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    b.type_into("#token", "not-a-token").await;
    b.click("#sign-in").await;
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
    let stored = b
        .js(
            "return sessionStorage.getItem('portcullis.approverToken')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, Value::Null);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_page_shows_descriptions_and_reasons_as_text() {
    tokio::time::timeout(TEST_TIMEOUT, text_flow())
        .await
        .expect("test took longer than TEST_TIMEOUT");
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
    assert!(
        b.c().get_alert_text().await.is_err(),
        "a script alert opened"
    );
    // Reloading the page (signed in from session storage, the agent from the URL) too.
    b.c().refresh().await.unwrap();
    b.wait_ui("reloaded on the same agent", |ui| {
        (ui.signed_in && ui.detail_id == "support-bot" && ui.detail.contains(&shown)).then_some(())
    })
    .await;
    let ui = b.ui().await.unwrap();
    assert_eq!((ui.imgs, ui.injected), (0, 0));
    assert!(b.c().get_alert_text().await.is_err());
    b.close().await;
}
