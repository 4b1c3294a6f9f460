//! Cost of a per-call upstream credential (`credential: {mint: ...}`): building the claims and
//! signing an ES256 token for the call, against handing out a static secret. Runs the real
//! function the proxy calls (`token_service::upstream::value`) on a loaded configuration.
//!
//! `cargo bench --bench upstream_token`; the README (`## Benchmarks`) lists the figures.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::config::{load_str, LoadContext};
use portcullis::identity::{generate_signing_key, KeyStore, VerifiedToken};
use portcullis::token_service::upstream::value;
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

const CONFIG: &str = r#"
issuers:
  - name: local
    issuer: https://portcullis.local
    audiences: [portcullis]
    algorithms: [ES256]
    signing_key_file: key.pem
token_service: {issuer: local}
agents:
  - {id: bot, owner: alice@example.com, scopes: [t:read]}
upstreams:
  - name: minted
    url: http://127.0.0.1:9
    credential: {mint: {audience: tools}}
  - name: static
    url: http://127.0.0.1:9
    credential: {header: x-api-key, value: secret}
routes:
  - {name: m, methods: [GET], path: /m, upstream: minted, scopes: [t:read]}
  - {name: s, methods: [GET], path: /s, upstream: static, scopes: [t:read]}
"#;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key.pem"), generate_signing_key().unwrap()).unwrap();
    let ctx = LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1);
    let snap = load_str(CONFIG, dir.path(), "bench.yaml", &ctx).expect("config");
    let agent = snap.agents["bot"].clone();
    let ts = snap.token_service.as_ref();
    let token = VerifiedToken {
        issuer: "local".into(),
        subject: "bot".into(),
        on_behalf_of: Some("alice@example.com".into()),
        prior_actors: Vec::new(),
        scopes: vec!["t:read".into()],
        jti: None,
        iat: 0,
        exp: u64::MAX,
        approver: None,
        claims: Arc::new(
            json!({"sub": "alice@example.com", "act": {"sub": "bot"}})
                .as_object()
                .unwrap()
                .clone(),
        ),
    };
    let held = vec!["t:read".to_string()];
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (name, route) in [("static secret", "s"), ("minted ES256 token", "m")] {
        let route = snap
            .routes
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .unwrap();
        let cred = snap.upstreams[route.upstream].credential.as_ref().unwrap();
        c.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(value(black_box(cred), ts, &agent, &token, route, &held))
                    .unwrap()
            })
        });
    }
}

criterion_group!(group, benches);
criterion_main!(group);
