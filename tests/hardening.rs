//! Attacks on request meaning and on the gateway's resources, against the real binary in front
//! of a real upstream: a prompt-injected agent with a read-only token tries to make a tool do
//! more than the gateway checked (method and URL overrides, upgrades, odd methods, matrix
//! parameters, case, Host), and a client tries to exhaust connections.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const READ: &[&str] = &["tickets:read"];

/// Upstreams and routes for the request-meaning attacks. Every upstream is the same echo
/// server; what differs is how the gateway is told the upstream reads requests.
fn meaning_setup(up: &Upstream) -> Setup {
    let mut s = Setup::new(up);
    s.extra_upstreams = format!(
        r#"  - name: legacy-api
    url: http://{a}
    refuse_headers: [X-Action]
    strip_headers: [x-tenant]
  - name: matrix-api
    url: http://{a}
    path_parameters: allow
  - name: iis-api
    url: http://{a}
    case_insensitive: true
"#,
        a = up.addr
    );
    s.extra_routes = r#"  - name: legacy
    methods: [GET]
    path: /legacy/{id}
    upstream: legacy-api
    scopes: [tickets:read]
  - name: files
    path: /files/**
    upstream: tickets-api
    scopes: [tickets:read]
  - name: files-admin
    path: /files/admin/**
    upstream: tickets-api
    scopes: [admin:read]
  - name: matrix
    methods: [GET]
    path: /m/**
    upstream: matrix-api
    scopes: [tickets:read]
  - name: matrix-admin
    methods: [GET]
    path: /m/admin/**
    upstream: matrix-api
    scopes: [admin:read]
  - name: iis
    methods: [GET]
    path: /w/**
    upstream: iis-api
    scopes: [tickets:read]
  - name: iis-admin
    methods: [GET]
    path: /w/admin/**
    upstream: iis-api
    scopes: [admin:read]
  - name: hosted
    methods: [GET]
    path: /h/**
    upstream: tickets-api
    scopes: [tickets:read]
  - name: hosted-admin
    methods: [GET]
    host: admin.internal
    path: /h/admin/**
    upstream: tickets-api
    scopes: [admin:read]
"#
    .to_string();
    s
}

/// Send `method target` with `headers` byte for byte on a fresh connection.
async fn raw(
    gw: &Gateway,
    method: &str,
    target: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> RawAnswer {
    let addr = gw.layout.proxy;
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw_request(addr, req.as_bytes()).await
}

fn refusal(a: &RawAnswer) -> (u16, Option<&str>) {
    (a.status, a.body["error"].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_target_overrides_never_reach_a_tool() {
    let up = Upstream::start().await;
    let gw = Gateway::start(meaning_setup(&up)).await;
    let t = token("support-bot", READ);

    // A read-scoped token tries to act as a write (or on another URL) through each override.
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "PUT"),
        ("X-Original-URL", "/api/admin/users"),
        ("X-Rewrite-URL", "/api/admin/users"),
        ("X-Original-URI", "/api/admin/users"),
    ];
    for (name, value) in overrides {
        let a = raw(&gw, "GET", "/api/tickets/1", &t, &[(name, value)]).await;
        assert_eq!(
            refusal(&a),
            (400, Some("forbidden_header")),
            "{name}: {a:?}"
        );
        assert_eq!(a.body["header"], name.to_ascii_lowercase(), "{a:?}");
    }
    // `_method` in the query, in the spellings frameworks decode.
    for q in [
        "_method=DELETE",
        "a=1&_METHOD=delete",
        "%5Fmethod=PUT",
        "_method",
    ] {
        let a = raw(&gw, "GET", &format!("/api/tickets/1?{q}"), &t, &[]).await;
        assert_eq!(
            refusal(&a),
            (400, Some("forbidden_parameter")),
            "{q}: {a:?}"
        );
    }
    // An upstream's own additions.
    let a = raw(&gw, "GET", "/legacy/1", &t, &[("x-action", "purge")]).await;
    assert_eq!(refusal(&a), (400, Some("forbidden_header")), "{a:?}");
    assert_eq!(a.body["header"], "x-action");
    assert_eq!(up.hits(), 0, "an override reached the tool");

    // Forwarding headers are the gateway's to assert: the agent's copies are removed.
    let spoofed = [
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "443"),
        ("X-Real-IP", "10.0.0.1"),
        ("X-Client-IP", "10.0.0.1"),
        ("True-Client-IP", "10.0.0.1"),
        ("X-Original-Host", "admin.internal"),
        ("x-tenant", "someone-else"),
    ];
    let a = raw(&gw, "GET", "/legacy/7", &t, &spoofed).await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen_with_request_id(a.header("x-request-id").unwrap());
    for (name, _) in spoofed {
        assert_eq!(
            seen.header(&name.to_ascii_lowercase()),
            None,
            "{name} reached the tool"
        );
    }
    // `x-tenant` is stripped only for the upstream that lists it.
    let a = raw(&gw, "GET", "/api/tickets/7", &t, &[("x-tenant", "mine")]).await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen_with_request_id(a.header("x-request-id").unwrap());
    assert_eq!(seen.header("x-tenant"), Some("mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_methods_never_allow_trace_connect_or_unknown_methods() {
    let up = Upstream::start().await;
    let gw = Gateway::start(meaning_setup(&up)).await;
    let t = token("support-bot", READ);
    for m in ["TRACE", "PROPFIND", "PURGE", "FOO"] {
        let a = raw(&gw, m, "/files/x", &t, &[]).await;
        assert_eq!(refusal(&a), (403, Some("no_route")), "{m}: {a:?}");
    }
    // CONNECT never becomes a tunnel (pingora refuses it before any route).
    let a = raw(&gw, "CONNECT", "127.0.0.1:22", &t, &[]).await;
    assert!(a.status >= 400, "{a:?}");
    assert_eq!(up.hits(), 0);
    let a = raw(&gw, "DELETE", "/files/x", &t, &[]).await;
    assert_eq!(a.status, 200, "ordinary methods still pass: {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_parameters_cannot_reach_a_narrower_resource() {
    let up = Upstream::start().await;
    let gw = Gateway::start(meaning_setup(&up)).await;
    let t = token("support-bot", READ);
    // A parameter-stripping upstream reads these as /files/admin/users: refused by default.
    for target in [
        "/files/admin;x=1/users",
        "/files/admin%3Bx=1/users",
        "/files/admin%3bx=1/users",
        "/files/;/admin/users",
        "/nothing;x",
    ] {
        let a = raw(&gw, "GET", target, &t, &[]).await;
        assert_eq!(
            (
                a.status,
                a.body["error"].as_str(),
                a.body["reason"].as_str()
            ),
            (400, Some("invalid_path"), Some("path_parameter")),
            "{target}: {a:?}"
        );
    }
    assert_eq!(up.hits(), 0);
    // Opted in: the route is chosen on the path without parameters.
    let a = raw(&gw, "GET", "/m/admin;x=1/users", &t, &[]).await;
    assert_eq!(refusal(&a), (403, Some("insufficient_scope")), "{a:?}");
    assert_eq!(a.body["route"], "matrix-admin");
    let a = raw(&gw, "GET", "/m/items;v=2", &t, &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    let seen = up.seen_with_request_id(a.header("x-request-id").unwrap());
    assert_eq!(seen.path, "/m/items;v=2");
    assert_eq!(seen.header("x-portcullis-route"), Some("matrix"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_insensitive_upstreams_are_routed_case_insensitively() {
    let up = Upstream::start().await;
    let gw = Gateway::start(meaning_setup(&up)).await;
    let t = token("support-bot", READ);
    for target in ["/W/ADMIN/users", "/w/Admin", "/w/aDmIn/x/y"] {
        let a = raw(&gw, "GET", target, &t, &[]).await;
        assert_eq!(
            refusal(&a),
            (403, Some("insufficient_scope")),
            "{target}: {a:?}"
        );
        assert_eq!(a.body["route"], "iis-admin", "{target}");
    }
    assert_eq!(up.hits(), 0);
    let a = raw(&gw, "GET", "/W/reports", &t, &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    // A case-sensitive upstream: `/FILES/...` is another path, which no route allows.
    let a = raw(&gw, "GET", "/FILES/admin/x", &t, &[]).await;
    assert_eq!(refusal(&a), (403, Some("no_route")), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_cannot_reach_a_host_scoped_path_through_a_broader_route() {
    let up = Upstream::start().await;
    let gw = Gateway::start(meaning_setup(&up)).await;
    let t = token("support-bot", READ);
    for host in ["evil.example", "127.0.0.1", "ADMIN.internal.evil"] {
        let req = format!(
            "GET /h/admin/users HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
        );
        let a = raw_request(gw.layout.proxy, req.as_bytes()).await;
        assert_eq!(refusal(&a), (403, Some("no_route")), "{host}: {a:?}");
        assert_eq!(a.body["reason"], "host_scoped", "{host}");
        assert_eq!(a.body["required_host"], "admin.internal", "{host}");
    }
    // Through its own host, the host-scoped route decides (and needs admin:read).
    let req = format!(
        "GET /h/admin/users HTTP/1.1\r\nHost: admin.internal\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
    );
    let a = raw_request(gw.layout.proxy, req.as_bytes()).await;
    assert_eq!(refusal(&a), (403, Some("insufficient_scope")), "{a:?}");
    assert_eq!(up.hits(), 0);
    // Paths the host-scoped route does not cover stay open to every host.
    let a = raw(&gw, "GET", "/h/public", &t, &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
}

/// A WebSocket-speaking upstream: answers the upgrade with 101, then echoes bytes.
async fn websocket_upstream() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let upgrade = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket");
                if !upgrade {
                    let _ = s
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_only_where_a_route_allows_websocket() {
    let up = Upstream::start().await;
    let ws = websocket_upstream().await;
    let mut s = Setup::new(&up);
    s.extra_upstreams = format!("  - name: ws-api\n    url: http://{ws}\n");
    s.extra_routes = "  - name: socket\n    methods: [GET]\n    path: /ws\n    upstream: ws-api\n    scopes: [tickets:read]\n    websocket: true\n".into();
    let gw = Gateway::start(s).await;
    let t = token("support-bot", READ);

    // No route but `socket` says websocket: an upgrade is refused, never tunnelled.
    for (upgrade, connection) in [
        ("websocket", "Upgrade"),
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("", "upgrade"),
    ] {
        let mut headers = vec![("Connection", connection)];
        if !upgrade.is_empty() {
            headers.push(("Upgrade", upgrade));
        }
        let addr = gw.layout.proxy;
        let mut req =
            format!("GET /api/tickets/1 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {t}\r\n");
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(req.as_bytes()).await.unwrap();
        // Read the whole refusal (the connection may stay open for the next request).
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.ends_with(b"}") {
            match tokio::time::timeout(Duration::from_secs(5), c.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 403"), "{upgrade:?}: {text}");
        assert!(text.contains("upgrade_not_allowed"), "{upgrade:?}: {text}");
    }
    // The websocket route refuses other protocols too.
    let a = raw(&gw, "GET", "/ws", &t, &[("Upgrade", "h2c")]).await;
    assert_eq!(refusal(&a), (403, Some("upgrade_not_allowed")), "{a:?}");
    assert_eq!(up.hits(), 0);

    // And lets a WebSocket through: 101, then bytes both ways.
    let mut c = TcpStream::connect(gw.layout.proxy).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {t}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
            .await
            .expect("101 in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"ping-frame").await.unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echo, b"ping-frame");
}

/// `server:` limits for the connection tests.
fn limited(up: &Upstream, extra: &str) -> Setup {
    let mut s = Setup::new(up);
    s.extra_server = extra.to_string();
    s
}

/// Connect from a chosen loopback address (all of 127.0.0.0/8 reaches the gateway).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

/// Whether the peer has closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A 408/400 answer before the close is fine: keep reading to the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_trickled_a_byte_at_a_time_is_cut_at_the_total_deadline() {
    let up = Upstream::start().await;
    let gw = Gateway::start(limited(&up, "  request_header_timeout: 2s\n")).await;
    let mut c = TcpStream::connect(gw.layout.proxy).await.unwrap();
    let started = Instant::now();
    // One byte every 300 ms: every single read is quick, the header never ends.
    let header = b"GET /api/tickets/1 HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = false;
    for b in header.iter() {
        if c.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), c.read(&mut probe)).await {
            if matches!(r, Ok(0) | Err(_)) {
                cut = true;
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(cut, "the gateway kept a trickling header open for {took:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "cut after {took:?}, expected about 2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_and_half_sent_connections_are_closed_in_time_while_calls_pass() {
    let up = Upstream::start().await;
    let gw = Gateway::start(limited(
        &up,
        "  request_header_timeout: 2s\n  keepalive_timeout: 3s\n  max_connections: 5000\n  max_connections_per_client: 5000\n",
    ))
    .await;
    let t = token("support-bot", READ);
    let addr = gw.layout.proxy;
    let started = Instant::now();
    let mut idle = Vec::new();
    let mut half = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
        let mut h = TcpStream::connect(addr).await.unwrap();
        h.write_all(b"GET /api/tickets/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            .await
            .unwrap();
        half.push(h);
    }
    let opened = started.elapsed();
    // Legitimate calls keep passing while 2,000 connections sit there.
    for _ in 0..20 {
        let a = get(&gw, "/api/tickets/1", Some(&t)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // Half-sent headers: closed at the 2 s header deadline (well before pingora's 60 s).
    for (i, h) in half.iter_mut().enumerate() {
        let left = Duration::from_secs(2) + Duration::from_secs(3)
            - started.elapsed().min(Duration::from_secs(4));
        assert!(
            closed_within(h, left.max(Duration::from_secs(1))).await,
            "half-sent connection {i} still open {:?} after opening (opening took {opened:?})",
            started.elapsed()
        );
    }
    // Idle connections: closed at the 3 s keep-alive timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(3) + Duration::from_secs(3)
            - started.elapsed().min(Duration::from_secs(5));
        assert!(
            closed_within(s, left.max(Duration::from_secs(1))).await,
            "idle connection {i} still open {:?} after opening",
            started.elapsed()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let a = get(&gw, "/api/tickets/1", Some(&t)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let metrics = gw.metrics().await;
    let timed_out = |phase: &str| {
        metric(
            &metrics,
            "portcullis_connections_timed_out_total",
            &[("phase", phase)],
        )
        .unwrap_or(0.0)
    };
    assert!(timed_out("headers") >= 1000.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_per_client_and_in_all() {
    let up = Upstream::start().await;
    let gw = Gateway::start(limited(
        &up,
        "  max_connections: 8\n  max_connections_per_client: 5\n",
    ))
    .await;
    let t = token("support-bot", READ);
    let addr = gw.layout.proxy;
    // The readiness probe's connection may still be counted for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    // The sixth from the same address gets a JSON answer, then the connection closes.
    let mut sixth = connect_from("127.0.0.1", addr).await;
    sixth
        .write_all(b"GET /api/tickets/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sixth.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("\"error\":\"too_many_connections\""),
        "{text}"
    );
    assert!(text.contains("\"limit\":5"), "{text}");

    // Another client address still gets in, until the total cap.
    let mut other = connect_from("127.0.0.2", addr).await;
    let req =
        format!("GET /api/tickets/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n");
    other.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    other.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    held.push(other);
    held.push(connect_from("127.0.0.3", addr).await);
    held.push(connect_from("127.0.0.4", addr).await);
    let mut over = connect_from("127.0.0.5", addr).await;
    over.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_end(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("\"limit\":8"), "{text}");

    // Places are given back when connections close.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = get(&gw, "/api/tickets/1", Some(&t)).await;
    assert_eq!(a.status, 200, "{}", a.body);
}
