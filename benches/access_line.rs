//! Cost of a call's access-log line and of the client address text, before and after issue 16:
//! the serde path (`encode_serde`, what audit events still use) against the hand-written
//! encoder every call now uses (`AccessRecord::encode_into`, byte-identical, see its tests),
//! and std's `Display` against `util::push_socket_addr`.
//!
//! `cargo bench --bench access_line`; the README (`## Benchmarks`) lists the figures.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::observe::access_log::encode_serde;
use portcullis::observe::{AccessRecord, LogTime};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::SystemTime;

fn benches(c: &mut Criterion) {
    let scopes = vec!["read:tickets".to_string()];
    let rec = AccessRecord {
        time: LogTime(SystemTime::now()),
        request_id: "019ae5c5d0f87a31b2c3d4e5f6a7b8c9",
        agent: Some("bench-agent"),
        owner: Some("bench@example.com"),
        on_behalf_of: None,
        prior_actors: &[],
        jti: Some("5b8f0c1e-7d2a-4c3b-9e8f-1a2b3c4d5e6f"),
        issuer: Some("bench-idp"),
        route: Some("tickets"),
        method: "GET",
        host: Some("127.0.0.1:9080"),
        token_scopes: &scopes,
        path: "/api/tickets",
        query: None,
        client: Some("127.0.0.1:51234".into()),
        status: 200,
        decision: "allow",
        reason: None,
        upstream: Some("up"),
        bytes_in: 0,
        bytes_out: 187,
        duration_ms: 0.412,
        upstream_ms: Some(0.198),
        config_version: 1,
        approval_id: None,
        would_deny: None,
        conditions: &[],
        mcp: None,
        trace_id: None,
    };
    let mut out = Vec::with_capacity(1024);
    let mut g = c.benchmark_group("access-log line");
    g.bench_function("serde (before)", |b| {
        b.iter(|| {
            out.clear();
            encode_serde(black_box(&rec), 1024, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("hand-written (after)", |b| {
        b.iter(|| {
            out.clear();
            black_box(&rec).encode_into(&mut out, 1024);
            black_box(out.len())
        })
    });
    g.finish();

    let addr: SocketAddr = "10.12.130.201:51234".parse().unwrap();
    let mut g = c.benchmark_group("client address text");
    g.bench_function("Display (before)", |b| {
        b.iter(|| black_box(black_box(&addr).to_string()))
    });
    g.bench_function("push_socket_addr (after)", |b| {
        b.iter(|| {
            let mut s = String::with_capacity(21);
            portcullis::util::push_socket_addr(&mut s, black_box(&addr));
            black_box(s)
        })
    });
    g.finish();
}

criterion_group!(group, benches);
criterion_main!(group);
