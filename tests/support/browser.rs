//! A real headless Chromium for the console's end-to-end tests (`tests/console.rs`,
//! `tests/console_agents.rs`): chromedriver in its own process group driving Chromium with a
//! throwaway profile over WebDriver (fantoccini), and what those tests do with it (wait, click,
//! type, read the page). What a test reads of its own page stays in its file (its `impl Browser`
//! with a `ui()` over [`Browser::read`]).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`). Without them the tests fail, never pass silently.
//!
//! Compiled into every integration-test binary with `support`; only the console tests use it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{free_port, POLL_TIMEOUT};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Every wait on the browser (the machine may be loaded).
pub const UI_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of a whole test, so that a wedged browser fails the test instead of hanging it.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the console keeps the signed-in token (both pages).
const TOKEN_KEY: &str = "portcullis.approverToken";

/// What every script given to [`Browser::read`] may use: `q(css)`, the first match;
/// `shown(css)`, present and not inside anything `[hidden]`; `text(css)`, its text when shown,
/// else `''`.
const PAGE_HELPERS: &str = r#"
const q = (s) => document.querySelector(s);
const shown = (s) => { const e = q(s); return !!e && !e.closest('[hidden]'); };
const text = (s) => shown(s) ? q(s).innerText : '';
"#;

/// Fail unless Chromium and chromedriver are installed.
pub fn require_browser() {
    for (path, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).exists(),
            "{what} is missing ({path} does not exist): the console end-to-end tests need a real \
             headless browser. Install it with `apt-get install chromium chromium-driver` \
             (CI installs them)."
        );
    }
}

/// Run a whole browser test within [`TEST_TIMEOUT`].
pub async fn bounded(flow: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, flow)
        .await
        .expect("test took longer than TEST_TIMEOUT");
}

/// chromedriver (its own process group) driving a headless Chromium with a throwaway profile.
/// Everything is killed on drop, also when a test fails half-way.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: PathBuf,
    log: PathBuf,
    /// Where Chromium saves downloads (without asking).
    pub downloads: PathBuf,
    // Last: removed after the processes are gone.
    _dir: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
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
        // Several rustls crypto backends are linked in: pick one (as the gateway does), or
        // fantoccini's rustls connector cannot choose.
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

    /// The WebDriver session.
    pub fn c(&self) -> &Client {
        self.client.as_ref().expect("session")
    }

    /// End the session (Chromium quits), then drop kills chromedriver.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), c.close()).await;
        }
    }

    pub async fn js(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.c()
            .execute(script, args)
            .await
            .map_err(|e| e.to_string())
    }

    /// Run `script` in the page (with [`PAGE_HELPERS`] defined) and read what it returns.
    pub async fn read<T: DeserializeOwned>(&self, script: &str) -> Result<T, String> {
        let v = self.js(&format!("{PAGE_HELPERS}{script}"), vec![]).await?;
        serde_json::from_value(v.clone()).map_err(|e| format!("{e}: {v}"))
    }

    /// Poll what `script` reads (see [`Browser::read`]) until `check` accepts it.
    pub async fn wait_read<T: DeserializeOwned + Debug, R>(
        &self,
        script: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&T) -> Option<R>,
    ) -> R {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.read::<T>(script).await {
                Ok(ui) => match check(&ui) {
                    Some(v) => return v,
                    None => format!("{ui:#?}"),
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!("{what}: not within {timeout:?}; last seen:\n{last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, css: &str) {
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

    pub async fn type_into(&self, css: &str, text: &str) {
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

    /// Open a console page at `url` and wait for its sign-in form.
    pub async fn open(&self, url: &str) {
        self.c()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        self.c()
            .wait()
            .at_most(UI_TIMEOUT)
            .for_element(Locator::Css("#token"))
            .await
            .expect("sign-in form");
    }

    /// Type `token` into the sign-in form and send it.
    pub async fn submit_token(&self, token: &str) {
        self.type_into("#token", token).await;
        self.click("#sign-in").await;
    }

    /// The token in this tab's session storage, how many items local storage holds, and the
    /// page's cookies: `[token, 0, ""]` when the token is kept where it should be only.
    pub async fn stored_credentials(&self) -> Value {
        self.js(
            &format!(
                "return [sessionStorage.getItem('{TOKEN_KEY}'), localStorage.length, document.cookie]"
            ),
            vec![],
        )
        .await
        .unwrap()
    }

    /// The token in this tab's session storage (`null` once signed out).
    pub async fn stored_token(&self) -> Value {
        self.js(
            &format!("return sessionStorage.getItem('{TOKEN_KEY}')"),
            vec![],
        )
        .await
        .unwrap()
    }

    /// Save a screenshot of the page, for people reviewing a change to it.
    pub async fn screenshot(&self, path: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// No script opened an alert (agent text that became markup would).
    pub async fn assert_no_alert(&self) {
        assert!(
            self.c().get_alert_text().await.is_err(),
            "a script alert opened"
        );
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
