//! `access_log.syslog` end to end: the real gateway binary sending its access log to a real
//! syslog receiver in the test, over TCP (octet-counted RFC 5424 frames), TLS (a private CA made
//! at test time, `ca_file`) and UDP (one datagram per message). The receiver parses every frame
//! and header field; a stopped and restarted receiver must still get every call's line, and a
//! receiver whose certificate is not trusted must get nothing (the lines go to stderr at
//! shutdown instead).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::tls::pki;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

const READ: &[&str] = &["tickets:read"];

// ---------------------------------------------------------------------------------------------
// RFC 5424 messages and a receiver

/// One RFC 5424 message, split into its fields.
#[derive(Debug, Clone)]
struct Message {
    pri: u16,
    version: String,
    timestamp: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    structured_data: String,
    /// MSG, parsed: it must be the JSON access-log line.
    json: Value,
}

impl Message {
    fn request_id(&self) -> Option<&str> {
        self.json["request_id"].as_str()
    }
}

/// `<PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`.
fn parse(message: &[u8]) -> Result<Message, String> {
    let text = std::str::from_utf8(message).map_err(|e| format!("not UTF-8: {e}"))?;
    let fields: Vec<&str> = text.splitn(8, ' ').collect();
    let [pri_version, timestamp, hostname, app_name, procid, msgid, sd, msg] = fields[..] else {
        return Err(format!("not 8 fields: {text}"));
    };
    let (pri, version) = pri_version
        .strip_prefix('<')
        .and_then(|p| p.split_once('>'))
        .ok_or_else(|| format!("no <PRI>: {text}"))?;
    Ok(Message {
        pri: pri.parse().map_err(|_| format!("bad PRI: {text}"))?,
        version: version.to_string(),
        timestamp: timestamp.to_string(),
        hostname: hostname.to_string(),
        app_name: app_name.to_string(),
        procid: procid.to_string(),
        msgid: msgid.to_string(),
        structured_data: sd.to_string(),
        json: serde_json::from_str(msg).map_err(|e| format!("MSG is not JSON ({e}): {msg}"))?,
    })
}

/// What a receiver got.
#[derive(Default)]
struct Got {
    messages: Mutex<Vec<Message>>,
    /// Frames or messages that did not parse (must stay empty).
    errors: Mutex<Vec<String>>,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// TLS handshakes that failed (the client refused the certificate).
    handshakes_failed: AtomicUsize,
    /// SNI of each completed TLS handshake.
    server_names: Mutex<Vec<Option<String>>>,
}

impl Got {
    fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    fn push(&self, message: &[u8]) {
        match parse(message) {
            Ok(m) => self.messages.lock().unwrap().push(m),
            Err(e) => self.errors.lock().unwrap().push(e),
        }
    }

    fn assert_no_errors(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "malformed frames or messages: {errors:#?}"
        );
    }

    /// Poll until the message of each request id has arrived; returns them in that order.
    async fn wait_for(&self, ids: &[&str]) -> Vec<Message> {
        let deadline = Instant::now() + POLL_TIMEOUT;
        loop {
            let all = self.messages();
            let found: Vec<Option<&Message>> = ids
                .iter()
                .map(|id| all.iter().find(|m| m.request_id() == Some(id)))
                .collect();
            if found.iter().all(Option::is_some) {
                return found.into_iter().flatten().cloned().collect();
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = ids
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| f.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                panic!(
                    "{} of {} lines never arrived: {missing:?}; got {} messages",
                    missing.len(),
                    ids.len(),
                    all.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Read octet-counted frames (RFC 6587: `LEN SP MSG`) until the connection ends.
async fn read_frames<R: AsyncRead + Unpin>(mut r: R, got: &Got) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some(sp) = buf[at..].iter().position(|&b| b == b' ') {
            let Some(len) = std::str::from_utf8(&buf[at..at + sp])
                .ok()
                .and_then(|l| l.parse::<usize>().ok())
            else {
                got.errors.lock().unwrap().push(format!(
                    "no octet count: {:?}",
                    String::from_utf8_lossy(&buf[at..(at + 40).min(buf.len())])
                ));
                return;
            };
            let start = at + sp + 1;
            if buf.len() < start + len {
                break;
            }
            got.push(&buf[start..start + len]);
            at = start + len;
        }
        buf.drain(..at);
    }
}

/// A socket on `addr` that other sockets of this test may bind too (SO_REUSEPORT): the
/// receiver's port is held by one while the receiver is down, so that nothing else takes it.
fn shared_socket(addr: SocketAddr) -> TcpSocket {
    let s = TcpSocket::new_v4().unwrap();
    s.set_reuseaddr(true).unwrap();
    s.set_reuseport(true).unwrap();
    s.bind(addr).unwrap();
    s
}

/// A syslog server over TCP, or TLS with `acceptor`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Got>,
    acceptor: Option<TlsAcceptor>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    async fn start(acceptor: Option<TlsAcceptor>) -> Receiver {
        let socket = shared_socket(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = socket.local_addr().unwrap();
        let mut r = Receiver {
            addr,
            got: Arc::new(Got::default()),
            acceptor,
            task: None,
        };
        r.serve(socket);
        r
    }

    fn serve(&mut self, socket: TcpSocket) {
        let listener = socket.listen(128).unwrap();
        let (got, acceptor) = (self.got.clone(), self.acceptor.clone());
        self.task = Some(tokio::spawn(async move {
            // Dropped with the accept loop: stopping the receiver closes every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                got.connections.fetch_add(1, Ordering::SeqCst);
                let (got, acceptor) = (got.clone(), acceptor.clone());
                connections.spawn(async move {
                    match acceptor {
                        None => read_frames(tcp, &got).await,
                        Some(a) => match a.accept(tcp).await {
                            Ok(tls) => {
                                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                                got.server_names.lock().unwrap().push(sni);
                                read_frames(tls, &got).await
                            }
                            Err(_) => {
                                got.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    }
                });
            }
        }));
    }

    /// Stop listening and close every connection at once, as a crashed server would; the port
    /// stays reserved (bound, not listening: connections are refused) until [`Receiver::resume`].
    async fn stop(&mut self) -> TcpSocket {
        let hold = shared_socket(self.addr);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        hold
    }

    /// Listen again on the same port.
    fn resume(&mut self, hold: TcpSocket) {
        self.serve(hold);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways, certificates, assertions

/// A gateway whose `access_log:` section is `section` (YAML lines under `access_log:`).
async fn gateway(up: &Upstream, section: &str) -> Gateway {
    let section = section.to_string();
    Gateway::start_edited(Setup::new(up), move |text| {
        let re = regex::Regex::new(r"access_log:\n  path: .*\n").unwrap();
        assert!(re.is_match(&text), "the template has an access_log path");
        re.replace(&text, format!("access_log:\n{section}").as_str())
            .into_owned()
    })
    .await
}

/// Poll `/metrics` until `name{labels}` is at least `min`.
async fn wait_metric_at_least(gw: &Gateway, name: &str, labels: &[(&str, &str)], min: f64) {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let text = gw.metrics().await;
        let got = metric(&text, name, labels);
        if got.is_some_and(|v| v >= min) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {got:?}, expected at least {min}; stderr:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An allowed and a refused call; their request ids.
async fn allowed_and_denied(gw: &Gateway) -> (String, String) {
    let bot = token("support-bot", READ);
    let allowed = get(gw, "/api/tickets/1", Some(&bot)).await;
    assert_eq!(allowed.status, 200);
    let denied = get(gw, "/api/nothing-here", Some(&bot)).await;
    denied.assert_refusal(403, "insufficient_scope");
    (
        allowed.request_id().to_string(),
        denied.request_id().to_string(),
    )
}

/// The header fields every message of `gw` must carry.
fn assert_header(m: &Message, gw: &Gateway, hostname: &str, app_name: &str) {
    assert_eq!(m.version, "1", "{m:?}");
    let t = chrono::DateTime::parse_from_rfc3339(&m.timestamp)
        .unwrap_or_else(|e| panic!("TIMESTAMP `{}`: {e}", m.timestamp));
    // UTC, microseconds.
    assert!(
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
            .unwrap()
            .is_match(&m.timestamp),
        "{}",
        m.timestamp
    );
    let age = chrono::Utc::now().signed_duration_since(t);
    assert!(
        age >= chrono::Duration::zero() - chrono::Duration::seconds(1)
            && age < chrono::Duration::seconds(30),
        "TIMESTAMP {} is not the time of sending",
        m.timestamp
    );
    assert_eq!(m.hostname, hostname);
    assert_eq!(m.app_name, app_name);
    assert_eq!(m.procid, gw.pid().to_string());
    assert_eq!(m.structured_data, "-");
}

// ---------------------------------------------------------------------------------------------
// Tests

/// TCP: one octet-counted frame per line; PRI from the facility and severity (6 for an allowed
/// call, 4 for a refusal), MSGID `call` or the audit event, MSG the JSON access line.
/// The syslog output is connected over `transport` and has counted no write error.
fn assert_connected_without_errors(metrics: &str, transport: &str) {
    assert_eq!(
        metric(
            metrics,
            "portcullis_access_log_syslog_connected",
            &[("transport", transport)]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(metrics, "portcullis_access_log_write_errors_total", &[]),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn tcp_frames_carry_rfc5424_headers_and_the_json_lines() {
    let receiver = Receiver::start(None).await;
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        &format!(
            "  syslog:\n    address: {}\n    facility: local3\n    app_name: pc-test\n    hostname: gw-test\n",
            receiver.addr
        ),
    )
    .await;
    let (allowed, denied) = allowed_and_denied(&gw).await;
    // An audit line: a reload through the admin API.
    assert_eq!(reload(&gw).await.status(), 200);

    let got = receiver.got.wait_for(&[&allowed, &denied]).await;
    let local3 = 19 * 8;
    assert_header(&got[0], &gw, "gw-test", "pc-test");
    assert_eq!(got[0].pri, local3 + 6, "allowed: informational");
    assert_eq!(got[0].msgid, "call");
    assert_eq!(got[0].json["decision"], "allow");
    assert_eq!(got[0].json["status"], 200);
    assert_eq!(got[0].json["route"], "tickets-read");
    assert_header(&got[1], &gw, "gw-test", "pc-test");
    assert_eq!(got[1].pri, local3 + 4, "refused: warning");
    assert_eq!(got[1].msgid, "call");
    assert_eq!(got[1].json["decision"], "deny");
    assert_eq!(got[1].json["reason"], "insufficient_scope");

    let deadline = Instant::now() + POLL_TIMEOUT;
    let audit = loop {
        if let Some(m) = receiver
            .got
            .messages()
            .into_iter()
            .find(|m| m.msgid == "config_reload")
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no config_reload message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_header(&audit, &gw, "gw-test", "pc-test");
    assert_eq!(audit.pri, local3 + 6);
    assert_eq!(audit.json["event"], "config_reload");
    assert_eq!(audit.json["outcome"], "reloaded");

    receiver.got.assert_no_errors();
    assert_eq!(
        receiver.got.connections.load(Ordering::SeqCst),
        1,
        "one connection carries everything"
    );
    let text = gw.metrics().await;
    assert_connected_without_errors(&text, "tcp");
    // Nothing went to stdout or a file instead.
    assert!(!gw.stdout().contains(&allowed));
    assert!(!gw.layout.access_log_path().exists());
}

/// TCP: the receiver goes away mid-traffic (every connection closed at once, the port refusing
/// connections), calls go on, the receiver comes back on the same port, and the line of every
/// call arrives: none is lost, though some may arrive twice.
#[tokio::test]
async fn a_receiver_that_goes_away_and_comes_back_loses_no_line() {
    let mut receiver = Receiver::start(None).await;
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        &format!(
            "  syslog:\n    address: {}\n    transport: tcp\n",
            receiver.addr
        ),
    )
    .await;
    let bot = token("support-bot", READ);
    let mut ids = Vec::new();
    let mut held = None;
    for i in 0..90 {
        if i == 30 {
            held = Some(receiver.stop().await);
        }
        if i == 60 {
            // The outage was noticed: no connection, failed attempts counted.
            wait_metric_at_least(&gw, "portcullis_access_log_write_errors_total", &[], 2.0).await;
            let text = gw.metrics().await;
            assert_eq!(
                metric(
                    &text,
                    "portcullis_access_log_syslog_connected",
                    &[("transport", "tcp")]
                ),
                Some(0.0),
                "{text}"
            );
            receiver.resume(held.take().unwrap());
        }
        // Allowed and refused calls alike; calls never wait for the log here.
        let path = if i % 3 == 0 {
            "/api/nothing-here"
        } else {
            "/api/tickets/1"
        };
        let started = Instant::now();
        let answer = get(&gw, path, Some(&bot)).await;
        assert!(
            answer.status == 200 || answer.status == 403,
            "{}",
            answer.status
        );
        assert!(started.elapsed() < Duration::from_secs(2), "a call waited");
        ids.push(answer.request_id().to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = receiver.got.wait_for(&id_refs).await;
    for (i, m) in got.iter().enumerate() {
        let want = if i % 3 == 0 {
            (16 * 8 + 4, "deny")
        } else {
            (16 * 8 + 6, "allow")
        };
        assert_eq!((m.pri, m.json["decision"].as_str().unwrap()), want, "{m:?}");
    }
    receiver.got.assert_no_errors();
    assert!(receiver.got.connections.load(Ordering::SeqCst) >= 2);
    wait_metric_at_least(
        &gw,
        "portcullis_access_log_syslog_reconnects_total",
        &[],
        1.0,
    )
    .await;
    gw.wait_metric(
        "portcullis_access_log_syslog_connected",
        &[("transport", "tcp")],
        1.0,
    )
    .await;
}

/// TLS with `ca_file` and `server_name`: the gateway checks the receiver's certificate (issued
/// by a private CA for `siem.test`) and sends the same frames inside TLS.
#[tokio::test]
async fn tls_to_a_receiver_trusted_through_ca_file() {
    let (ca_pem, acceptor) = pki("SIEM CA", &["siem.test"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("siem-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let receiver = Receiver::start(Some(acceptor)).await;
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        &format!(
            "  syslog:\n    address: {}\n    transport: tls\n    ca_file: {}\n    server_name: siem.test\n    hostname: gw-tls\n",
            receiver.addr,
            ca_file.display()
        ),
    )
    .await;
    let (allowed, denied) = allowed_and_denied(&gw).await;
    let got = receiver.got.wait_for(&[&allowed, &denied]).await;
    assert_header(&got[0], &gw, "gw-tls", "portcullis");
    assert_eq!(got[0].pri, 16 * 8 + 6, "local0 by default");
    assert_eq!(got[0].json["decision"], "allow");
    assert_header(&got[1], &gw, "gw-tls", "portcullis");
    assert_eq!(got[1].pri, 16 * 8 + 4);
    assert_eq!(got[1].json["decision"], "deny");
    receiver.got.assert_no_errors();
    assert_eq!(
        *receiver.got.server_names.lock().unwrap(),
        [Some("siem.test".to_string())],
        "one handshake, naming the server_name"
    );
    assert_eq!(receiver.got.handshakes_failed.load(Ordering::SeqCst), 0);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "portcullis_access_log_syslog_connected",
            &[("transport", "tls")]
        ),
        Some(1.0)
    );
}

/// TLS to a receiver whose certificate no trusted CA issued: the handshake fails, the receiver
/// gets nothing, the failures are counted and retried; at shutdown, after the 10 s the server
/// gets, the lines go to stderr with their prefix rather than being lost.
#[tokio::test]
async fn tls_to_an_untrusted_receiver_sends_nothing_and_spills_at_shutdown() {
    let (trusted_ca, _) = pki("SIEM CA", &["siem.test"]);
    let (_, untrusted) = pki("Somebody else's CA", &["siem.test"]);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("siem-ca.pem");
    std::fs::write(&ca_file, trusted_ca).unwrap();
    let receiver = Receiver::start(Some(untrusted)).await;
    let up = Upstream::start().await;
    let mut gw = gateway(
        &up,
        &format!(
            "  syslog:\n    address: {}\n    transport: tls\n    ca_file: {}\n    server_name: siem.test\n",
            receiver.addr,
            ca_file.display()
        ),
    )
    .await;
    let (allowed, denied) = allowed_and_denied(&gw).await;
    // Retried with backoff, each attempt refused by the gateway's certificate check.
    wait_metric_at_least(&gw, "portcullis_access_log_write_errors_total", &[], 3.0).await;
    assert!(receiver.got.handshakes_failed.load(Ordering::SeqCst) >= 3);
    assert!(receiver.got.messages().is_empty());
    assert!(receiver.got.server_names.lock().unwrap().is_empty());
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            "portcullis_access_log_syslog_connected",
            &[("transport", "tls")]
        ),
        Some(0.0)
    );
    assert!(
        gw.stderr()
            .contains("invalid peer certificate: UnknownIssuer"),
        "the reason is logged:\n{}",
        gw.stderr()
    );

    let stopping = Instant::now();
    assert!(gw.stop().await.success(), "stderr:\n{}", gw.stderr());
    let waited = stopping.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(19),
        "shutdown took {waited:?}"
    );
    let stderr = gw.stderr();
    let spilled: Vec<Value> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("portcullis-unsent-access-log: "))
        .map(|l| serde_json::from_str(l).expect("a spilled line is the JSON line"))
        .collect();
    for id in [&allowed, &denied] {
        assert!(
            spilled.iter().any(|l| l["request_id"] == id.as_str()),
            "{id} not on stderr:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("the lines not sent are on stderr"),
        "{stderr}"
    );
    assert!(receiver.got.messages().is_empty());
}

/// UDP: one datagram per message, no framing; the same header fields.
#[tokio::test]
async fn udp_sends_one_datagram_per_line() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        &format!(
            "  syslog:\n    address: {}\n    transport: udp\n    facility: user\n    hostname: gw-udp\n",
            socket.local_addr().unwrap()
        ),
    )
    .await;
    let (allowed, denied) = allowed_and_denied(&gw).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while !(got
        .iter()
        .any(|m: &Message| m.request_id() == Some(&allowed))
        && got.iter().any(|m| m.request_id() == Some(&denied)))
    {
        let n = tokio::time::timeout(POLL_TIMEOUT, socket.recv(&mut buf))
            .await
            .expect("a datagram in time")
            .unwrap();
        // The datagram is the message: no octet count in front.
        assert_eq!(buf[0], b'<', "{:?}", String::from_utf8_lossy(&buf[..n]));
        got.push(parse(&buf[..n]).unwrap());
    }
    let allowed = got
        .iter()
        .find(|m| m.request_id() == Some(&allowed))
        .unwrap();
    let denied = got
        .iter()
        .find(|m| m.request_id() == Some(&denied))
        .unwrap();
    assert_header(allowed, &gw, "gw-udp", "portcullis");
    assert_eq!(allowed.pri, 8 + 6, "user.info");
    assert_eq!(allowed.msgid, "call");
    assert_eq!(denied.pri, 8 + 4, "user.warning");
    assert_eq!(denied.json["reason"], "insufficient_scope");
    let text = gw.metrics().await;
    assert_connected_without_errors(&text, "udp");
}
