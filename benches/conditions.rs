//! Cost of contextual conditions: three typed conditions (time window, network, claim) checked
//! together, one JSON body field, and one CEL expression alone.
//!
//! `cargo bench --bench conditions`; the README (`## Conditions`) lists the figures.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method};
use portcullis::config::compile_conditions::compile_conditions;
use portcullis::config::raw_conditions::RawCondition;
use portcullis::policy::conditions::{BodyFact, ConditionFacts, ConditionOutcome, Conditions};
use serde_json::{json, Map, Value};
use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

fn compile(yaml: &str) -> Conditions {
    let raw: Vec<RawCondition> = serde_yaml::from_str(yaml).expect("yaml");
    let mut errors = Vec::new();
    let c = compile_conditions("conditions", &raw, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

fn benches(c: &mut Criterion) {
    let typed = compile(
        r#"
- time: {days: [mon-fri], hours: "09:00-18:00", zone: Europe/Paris}
- network: {from: [10.0.0.0/8, 192.168.0.0/16], not_from: [10.6.0.0/16]}
- claim: {name: env, equals: prod}
"#,
    );
    let json_field = compile("[{json: {field: amount, lte: 100}}]");
    let cel = compile(r#"[{cel: 'request.method == "GET" || token.claims.env == "prod"'}]"#);
    let cel_claims =
        compile(r#"[{cel: 'token.claims.env == "prod" && token.claims.device_trust >= 3'}]"#);

    let claims: Map<String, Value> = json!({
        "iss": "https://idp.example.test", "sub": "bench-agent", "aud": "tools",
        "exp": 1_800_000_000u64, "iat": 1_799_999_000u64, "scope": "tickets:read tickets:write",
        "env": "prod", "device_trust": 4, "act": {"sub": "user:alice"}
    })
    .as_object()
    .unwrap()
    .clone();
    let body = json!({"amount": 42, "currency": "EUR", "note": "bench"});
    let headers = HeaderMap::new();
    let method = Method::POST;
    let facts = ConditionFacts {
        // Monday 2026-11-30 10:00 UTC = 11:00 in Paris.
        now: UNIX_EPOCH + Duration::from_secs(1_796_032_800),
        client_ip: Some("10.1.2.3".parse().unwrap()),
        method: &method,
        path: "/api/tickets/42",
        query: Some("limit=10"),
        headers: &headers,
        body_len: Some(48),
        claims: &claims,
        agent: "bench-agent",
        body: BodyFact::Json(&body),
    };
    for c in [&typed, &json_field, &cel, &cel_claims] {
        assert_eq!(c.check(&facts).outcome, ConditionOutcome::Pass);
    }

    c.bench_function("conditions/3 typed (time, network, claim)", |b| {
        b.iter(|| black_box(typed.check(black_box(&facts))))
    });
    c.bench_function("conditions/json body field", |b| {
        b.iter(|| black_box(json_field.check(black_box(&facts))))
    });
    c.bench_function("conditions/1 CEL (method or claim)", |b| {
        b.iter(|| black_box(cel.check(black_box(&facts))))
    });
    c.bench_function("conditions/1 CEL (two claims)", |b| {
        b.iter(|| black_box(cel_claims.check(black_box(&facts))))
    });
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
