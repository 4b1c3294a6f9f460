//! Hot-path benchmarks: route match + scope check over 1,000 routes, ES256 verification cold and
//! cached, and the whole cached decision path (normalize + cached verify + evaluate).
//!
//! `cargo bench --bench decision`; the README lists the figures measured on the CI machine.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Method;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis::config::{load_str, LoadContext};
use portcullis::identity::{
    IdentitySettings, IssuerConfig, KeySource, KeyStore, VerifiedToken, Verifier,
};
use portcullis::policy::{evaluate, normalize, Decision, RequestFacts, Snapshot};
use portcullis::state::limits::InProcessLimitStore;
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

const ROUTES: usize = 1_000;
const ISS: &str = "https://idp.bench.test";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

/// 1,000 routes over 100 services, with templates, methods and scopes, like a large deployment.
fn config() -> String {
    let mut y = format!(
        "issuers:\n  - name: idp\n    issuer: {ISS}\n    audiences: [tools]\n    algorithms: [ES256]\n    jwks_file: {KEYS}/jwks.json\n\
         agents:\n  - id: bench-agent\n    owner: bench@example.com\n    scopes: [{}]\n\
         upstreams:\n  - name: up\n    url: http://127.0.0.1:9\nroutes:\n",
        (0..50).map(|s| format!("s{s}")).collect::<Vec<_>>().join(", ")
    );
    for i in 0..ROUTES {
        let (svc, kind) = (i % 100, i / 100);
        let (method, path) = match kind % 4 {
            0 => ("GET", format!("/svc{svc}/res{kind}")),
            1 => ("GET", format!("/svc{svc}/res{kind}/{{id}}")),
            2 => ("POST", format!("/svc{svc}/res{kind}/{{id}}/actions")),
            _ => ("GET", format!("/svc{svc}/res{kind}/**")),
        };
        y.push_str(&format!(
            "  - name: r{i}\n    methods: [{method}]\n    path: {path}\n    upstream: up\n    scopes: [s{}]\n",
            i % 50
        ));
    }
    y
}

/// The same 1,000 routes; `r1` (`GET /svc1/res0`) carries three typed conditions: a time
/// window, a network and a claim (the "3 typed conditions on the matched route").
fn config_with_conditions() -> String {
    let r1 = "  - name: r1\n    methods: [GET]\n    path: /svc1/res0\n    upstream: up\n    scopes: [s1]\n";
    assert!(config().contains(r1));
    config().replacen(
        r1,
        &format!(
            "{r1}    conditions:\n      - time: {{days: [mon, tue, wed, thu, fri, sat, sun], hours: \"00:00-23:59\", zone: Europe/Paris}}\n      - network: {{from: [127.0.0.0/8, 10.0.0.0/8]}}\n      - claim: {{name: aud, equals: tools}}\n"
        ),
        1,
    )
}

fn snapshot() -> Snapshot {
    snapshot_of(&config())
}

fn snapshot_of(text: &str) -> Snapshot {
    load_str(
        text,
        Path::new("."),
        "<bench>",
        &LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1),
    )
    .expect("bench config is valid")
}

fn token(jti: u64) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({
        "iss": ISS, "aud": "tools", "sub": "bench-agent", "iat": now, "exp": now + 3000,
        "jti": format!("j{jti}"), "scope": (0..50).map(|s| format!("s{s}")).collect::<Vec<_>>().join(" "),
    });
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("es256-test".into());
    let pem = std::fs::read(format!("{KEYS}/es256.key.pem")).unwrap();
    encode(&h, &claims, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
}

fn fresh_verifier() -> Verifier {
    let issuer = IssuerConfig {
        name: "idp".into(),
        issuer: ISS.into(),
        audiences: vec!["tools".into()],
        algorithms: vec![Algorithm::ES256],
        keys: vec![KeySource::JwksFile(format!("{KEYS}/jwks.json").into())],
    };
    Verifier::new(
        vec![issuer],
        IdentitySettings::default(),
        KeyStore::new(Arc::new(|_| {})),
    )
    .expect("fixture keys load")
}

/// Poll a future that completes without waiting (cache hits, file keys) on this thread.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("bench future would block"),
    }
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    let tok = token(0);
    let verified: Arc<VerifiedToken> = now(snap.verifier.verify(&tok)).expect("token verifies");
    let get = Method::GET;
    // Paths hitting early, late and no routes, so the index is exercised, not one bucket.
    let paths: Vec<_> = [
        "/svc7/res1/12345",
        "/svc99/res9/a/b/c",
        "/svc42/res4",
        "/svc3/res6/77/actions",
        "/nothing/here",
    ]
    .iter()
    .map(|p| normalize(p, 4096).unwrap())
    .collect();

    // What the proxy passes: the request's headers and the limit counters (no limits here).
    let (no_headers, no_volumes) = (http::HeaderMap::new(), InProcessLimitStore::new());
    c.bench_function("route_match_and_scope_check_1000_routes", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % paths.len();
            let facts = RequestFacts::plain(&get, &paths[i], &verified, &no_headers, &no_volumes);
            black_box(evaluate(&snap, black_box(&facts)))
        })
    });

    let with_conditions = snapshot_of(&config_with_conditions());
    let matched = normalize("/svc1/res0", 4096).unwrap();
    let loopback = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    c.bench_function("pipeline_1000_routes_3_conditions_on_matched_route", |b| {
        b.iter(|| {
            let facts = RequestFacts {
                client_ip: loopback,
                ..RequestFacts::plain(&get, &matched, &verified, &no_headers, &no_volumes)
            };
            let d = evaluate(&with_conditions, black_box(&facts));
            assert!(matches!(&d, Decision::Allow(a) if a.conditions.len() == 3));
            black_box(d)
        })
    });

    c.bench_function("es256_verify_cold", |b| {
        // A fresh verifier (empty cache) per iteration: every call checks the signature.
        b.iter_batched(
            || (fresh_verifier(), tok.clone()),
            |(v, t)| black_box(now(v.verify(&t)).unwrap()),
            BatchSize::SmallInput,
        )
    });

    c.bench_function("es256_verify_cached", |b| {
        b.iter(|| black_box(now(snap.verifier.verify(black_box(&tok))).unwrap()))
    });

    c.bench_function("decision_path_cached", |b| {
        // What request_filter does for an allowed call once the token is cached.
        b.iter(|| {
            let path = normalize(black_box("/svc7/res1/12345"), 4096).unwrap();
            let v = now(snap.verifier.verify(black_box(&tok))).unwrap();
            let facts = RequestFacts::plain(&get, &path, &v, &no_headers, &no_volumes);
            let d = evaluate(&snap, &facts);
            assert!(matches!(d, Decision::Allow(_)));
            black_box(d)
        })
    });
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
