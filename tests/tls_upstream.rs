//! HTTPS upstreams end to end: the real gateway binary in front of a real TLS upstream whose
//! certificate a private CA, made at test time, issued for `localhost` and its address.
//! `upstreams[].tls_ca_file` must make both the proxy path (pingora) and the approval executor
//! (reqwest) trust exactly that CA, with certificate and host name checks on.

mod support;

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const READ: &[&str] = &["tickets:read"];
const WRITE: &[&str] = &["tickets:write"];

// ---------------------------------------------------------------------------------------------
// A private CA and an HTTPS upstream

/// The address `localhost` resolves to first: the one the gateway pins when it loads a
/// `https://localhost:...` URL, so the upstream listens there.
fn localhost_ip() -> IpAddr {
    ("localhost", 0)
        .to_socket_addrs()
        .expect("resolve localhost")
        .next()
        .expect("localhost has an address")
        .ip()
}

/// A fresh CA (PEM) and a TLS acceptor whose certificate it issued for `localhost` and
/// [`localhost_ip`].
fn pki() -> (String, TlsAcceptor) {
    support::tls::pki(
        "Portcullis test CA",
        &["localhost", &localhost_ip().to_string()],
    )
}

/// What the TLS layer of the upstream saw.
#[derive(Default)]
struct Handshakes {
    /// SNI of each completed handshake (`None`: the client sent none, as for an IP address).
    names: Mutex<Vec<Option<String>>>,
    /// Handshakes the client broke off (it did not accept the certificate).
    failed: AtomicUsize,
}

/// Accepts TCP connections and completes the TLS handshake before handing them to axum.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: Arc<Handshakes>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // One handshake at a time keeps this simple; the timeout keeps a stuck client from
            // stalling the listener.
            let tls = tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp));
            match tls.await {
                Ok(Ok(tls)) => {
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    self.handshakes.names.lock().unwrap().push(sni);
                    return (tls, addr);
                }
                _ => {
                    self.handshakes.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The echo upstream of the harness, behind TLS.
struct TlsUpstream {
    up: Upstream,
    handshakes: Arc<Handshakes>,
}

impl TlsUpstream {
    async fn start(acceptor: TlsAcceptor) -> TlsUpstream {
        let tcp = TcpListener::bind((localhost_ip(), 0)).await.unwrap();
        let handshakes = Arc::new(Handshakes::default());
        let up = Upstream::start_on(TlsListener {
            tcp,
            acceptor,
            handshakes: handshakes.clone(),
        })
        .await;
        TlsUpstream { up, handshakes }
    }

    /// `https://localhost:<port>`
    fn url(&self) -> String {
        format!("https://localhost:{}", self.up.addr.port())
    }

    /// `https://<ip>:<port>`
    fn ip_url(&self) -> String {
        format!("https://{}", self.up.addr)
    }

    fn names(&self) -> Vec<Option<String>> {
        self.handshakes.names.lock().unwrap().clone()
    }

    fn failed(&self) -> usize {
        self.handshakes.failed.load(Ordering::SeqCst)
    }

    /// Wait until more than `before` handshakes were broken off (the client's alert may
    /// arrive after the gateway has answered).
    async fn wait_failed(&self, before: usize, what: &str) {
        let deadline = Instant::now() + POLL_TIMEOUT;
        while self.failed() <= before {
            assert!(
                Instant::now() < deadline,
                "{what}: no TLS handshake was broken off"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Write the CA certificate into `dir`; returns its absolute path.
fn write_ca(dir: &Path, ca_pem: &str) -> String {
    let p = dir.join("test-ca.pem");
    std::fs::write(&p, ca_pem).unwrap();
    p.display().to_string()
}

/// An `upstreams:` item with the test credential and `extra` fields.
fn upstream_yaml(name: &str, url: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!("  - name: {name}\n    url: {url}\n    connect_timeout: 2s\n");
    for (k, v) in extra {
        s.push_str(&format!("    {k}: \"{v}\"\n"));
    }
    s.push_str(
        "    credential:\n      header: x-api-key\n      value: \"${env:TEST_UPSTREAM_KEY}\"\n",
    );
    s
}

/// A `routes:` item: `GET /<name>/**` to `upstream`.
fn route_yaml(name: &str, upstream: &str) -> String {
    format!(
        "  - name: {name}\n    methods: [GET]\n    path: /{name}/**\n    upstream: {upstream}\n    scopes: [tickets:read]\n"
    )
}

/// The rendered template with `items` as the first upstreams.
fn with_upstreams(text: String, items: &str) -> String {
    assert_eq!(text.matches("upstreams:\n").count(), 1, "{text}");
    text.replacen("upstreams:\n", &format!("upstreams:\n{items}"), 1)
}

/// A gateway in front of `tls` with the given extra upstreams and routes.
async fn gateway(tls: &TlsUpstream, upstreams: String, routes: String) -> Gateway {
    let mut setup = Setup::new(&tls.up);
    setup.extra_routes = routes;
    Gateway::start_edited(setup, move |text| with_upstreams(text, &upstreams)).await
}

// ---------------------------------------------------------------------------------------------
// Proxy path

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_from_the_configured_ca_is_trusted() {
    let (ca_pem, acceptor) = pki();
    let tls = TlsUpstream::start(acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    // A bundle, as `openssl` writes them: another CA first, text between the blocks.
    let (other_ca, _) = pki();
    let bundle =
        format!("subject=CN=Other CA\n{other_ca}\nsubject=CN=Portcullis test CA\n{ca_pem}");
    let ca = write_ca(dir.path(), &bundle);
    let gw = gateway(
        &tls,
        upstream_yaml("secure-api", &tls.url(), &[("tls_ca_file", &ca)])
            + &upstream_yaml("secure-ip-api", &tls.ip_url(), &[("tls_ca_file", &ca)]),
        route_yaml("secure", "secure-api") + &route_yaml("secure-ip", "secure-ip-api"),
    )
    .await;
    let t = token("support-bot", READ);

    let a = get(&gw, "/secure/tickets/7?full=1", Some(&t)).await;
    assert_eq!(a.status, 200, "{}\nstderr:\n{}", a.body, gw.stderr());
    assert_eq!(a.body["path"], "/secure/tickets/7?full=1");
    assert!(a.header("x-api-key").is_none());
    let seen = tls.up.seen_with_request_id(a.request_id());
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(seen.header("authorization"), None, "agent token forwarded");
    let host = format!("localhost:{}", tls.up.addr.port());
    assert_eq!(seen.header("host"), Some(host.as_str()));
    let names = tls.names();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.as_deref() == Some("localhost")),
        "SNI sent: {names:?}"
    );

    // By address: checked against the certificate's IP entry; TLS sends no SNI for an IP.
    let a = get(&gw, "/secure-ip/tickets/8", Some(&t)).await;
    assert_eq!(a.status, 200, "{}\nstderr:\n{}", a.body, gw.stderr());
    let seen = tls.up.seen_with_request_id(a.request_id());
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    assert_eq!(tls.names().last(), Some(&None));
    assert_eq!(tls.failed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_from_the_trusted_roots_or_for_another_name_is_502() {
    let (ca_pem, acceptor) = pki();
    let tls = TlsUpstream::start(acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &ca_pem);
    let gw = gateway(
        &tls,
        upstream_yaml("secure-api", &tls.url(), &[("tls_ca_file", &ca)])
            // Same address and name, system roots.
            + &upstream_yaml("untrusted-api", &tls.url(), &[])
            // The right CA, a name the certificate does not carry.
            + &upstream_yaml(
                "misnamed-api",
                &tls.url(),
                &[("tls_ca_file", &ca), ("tls_server_name", "other.test")],
            ),
        route_yaml("secure", "secure-api")
            + &route_yaml("untrusted", "untrusted-api")
            + &route_yaml("misnamed", "misnamed-api"),
    )
    .await;
    let t = token("support-bot", READ);

    // First a verified connection to the same address and name goes into the pool: the
    // upstreams below must not reuse it.
    let a = get(&gw, "/secure/1", Some(&t)).await;
    assert_eq!(a.status, 200, "{}\nstderr:\n{}", a.body, gw.stderr());
    let hits = tls.up.hits();

    for (route, cause) in [
        ("untrusted", "UnknownIssuer"),
        ("misnamed", "not valid for name"),
    ] {
        let failed = tls.failed();
        let a = get(&gw, &format!("/{route}/1"), Some(&t)).await;
        a.assert_refusal(502, "upstream_unavailable");
        assert_eq!(
            tls.up.hits(),
            hits,
            "{route}: the upstream handler was reached"
        );
        tls.wait_failed(failed, route).await;
        let stderr = gw.stderr();
        assert!(stderr.contains(cause), "{route}: no {cause} in:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Approved calls (the executor)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_call_to_a_private_ca_upstream_goes_out_through_the_executor() {
    let (ca_pem, acceptor) = pki();
    let tls = TlsUpstream::start(acceptor).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), &ca_pem);
    let alice = "apv_tls-upstream-test-approver-token";
    let hold = |name: &str, upstream: &str| {
        format!(
            "  - name: {name}\n    methods: [POST]\n    path: /{name}/**\n    upstream: {upstream}\n    scopes: [tickets:write]\n    approval:\n      mode: hold\n      timeout: 120s\n"
        )
    };
    let routes = hold("secure", "secure-api")
        + &hold("untrusted", "untrusted-api")
        + &format!(
            "approvals:\n  store: approvals.db\n  approvers:\n    - name: alice\n      token_sha256: \"{}\"\n",
            hex::encode(Sha256::digest(alice))
        );
    let gw = gateway(
        &tls,
        upstream_yaml("secure-api", &tls.url(), &[("tls_ca_file", &ca)])
            + &upstream_yaml("untrusted-api", &tls.url(), &[]),
        routes,
    )
    .await;
    let agent = token("support-bot", WRITE);

    // Send a held POST, approve it as alice, return the agent's answer.
    let approved_call = |route: &'static str, body: &'static str| {
        let post = client()
            .post(gw.url(&format!("/{route}/refunds")))
            .bearer_auth(&agent)
            .header("content-type", "application/json")
            .body(body);
        let admin = gw.admin_url("");
        async move {
            let call = tokio::spawn(async move { Answer::read(post.send().await.unwrap()).await });
            let deadline = Instant::now() + POLL_TIMEOUT;
            let id = loop {
                let r = client()
                    .get(format!(
                        "{admin}/api/approvals?status=pending&route={route}"
                    ))
                    .bearer_auth(alice)
                    .send()
                    .await
                    .unwrap();
                let v = Answer::read(r).await.body;
                if let Some(id) = v["approvals"][0]["id"].as_str() {
                    break id.to_string();
                }
                assert!(
                    Instant::now() < deadline,
                    "no pending approval on {route}: {v}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let r = client()
                .post(format!("{admin}/api/approvals/{id}/approve"))
                .bearer_auth(alice)
                .json(&json!({ "reason": "checked" }))
                .send()
                .await
                .unwrap();
            let decided = Answer::read(r).await;
            assert_eq!(decided.status, 200, "approve {id}: {}", decided.body);
            tokio::time::timeout(POLL_TIMEOUT, call)
                .await
                .expect("the held call did not complete")
                .unwrap()
        }
    };

    let body = r#"{"order":42,"amount":"12.50"}"#;
    let a = approved_call("secure", body).await;
    assert_eq!(a.status, 200, "{}\nstderr:\n{}", a.body, gw.stderr());
    let seen = tls.up.seen_with_request_id(a.request_id());
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/secure/refunds");
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("x-api-key"), Some(SECRET));
    let names = tls.names();
    assert!(
        !names.is_empty() && names.iter().all(|n| n.as_deref() == Some("localhost")),
        "SNI sent: {names:?}"
    );
    let hits = tls.up.hits();

    // The executor, too, trusts the CA only where it is configured.
    let failed = tls.failed();
    let a = approved_call("untrusted", body).await;
    a.assert_refusal(502, "upstream_unavailable");
    assert_eq!(tls.up.hits(), hits, "the upstream handler was reached");
    tls.wait_failed(failed, "untrusted").await;
}

// ---------------------------------------------------------------------------------------------
// Configuration errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ca_file_problems_are_config_errors_naming_the_field() {
    let up = Upstream::start().await;
    let (ca_pem, _) = pki();
    // The config and its CA files in `conf/`, `check` run from the parent: relative paths are
    // the config file's, not the working directory's.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let files = [
        ("ca.pem", ca_pem.as_str()),
        ("empty.pem", ""),
        ("not-pem.txt", "just some text, no certificate\n"),
        (
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(conf.join(name), text).unwrap();
    }
    let layout = Layout::with_free_ports(conf.clone());
    let key = portcullis::identity::generate_signing_key().unwrap();
    std::fs::write(layout.signing_key_path(), key).unwrap();
    let base = render(&Setup::new(&up), &layout);
    let config = layout.config_path();
    let check = |item: String| {
        std::fs::write(&config, with_upstreams(base.clone(), &item)).unwrap();
        let out = cli(&["check", "-c", config.to_str().unwrap()], dir.path());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };

    let https = "https://localhost:8443";
    let (code, text) = check(upstream_yaml(
        "secure-api",
        https,
        &[("tls_ca_file", "ca.pem")],
    ));
    assert_eq!(code, Some(0), "{text}");

    let cases = [
        (
            upstream_yaml("secure-api", https, &[("tls_ca_file", "missing.pem")]),
            "upstreams[0].tls_ca_file: cannot read `missing.pem`",
        ),
        (
            upstream_yaml("secure-api", https, &[("tls_ca_file", "empty.pem")]),
            "upstreams[0].tls_ca_file: `empty.pem` contains no PEM certificate",
        ),
        (
            upstream_yaml("secure-api", https, &[("tls_ca_file", "not-pem.txt")]),
            "upstreams[0].tls_ca_file: `not-pem.txt` contains no PEM certificate",
        ),
        (
            upstream_yaml("secure-api", https, &[("tls_ca_file", "bad.pem")]),
            "upstreams[0].tls_ca_file: certificate 1 in `bad.pem` is not usable",
        ),
        (
            upstream_yaml(
                "secure-api",
                "http://localhost:8080",
                &[("tls_ca_file", "ca.pem")],
            ),
            "upstreams[0].tls_ca_file: only valid with an https:// URL",
        ),
        (
            upstream_yaml("secure-api", https, &[("tls_server_name", "")]),
            "upstreams[0].tls_server_name: must not be empty",
        ),
    ];
    for (item, want) in cases {
        let (code, text) = check(item);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
