//! Shared limits on a real, local Redis (a private `redis-server` on a free loopback port, as in
//! the tests): the cost of one shared rate check (one `EVALSHA` round trip), of a call the local
//! pre-check refuses (no round trip), of charging a body chunk (local only) and of one
//! background flush of 100 volume counters.
//!
//! `cargo bench --bench redis_limits`. Needs `redis-server` on the PATH. Loopback figures: a
//! remote Redis adds its network round trip to the shared check and the flush.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::observe::Metrics;
use portcullis::policy::limits::{
    applicable, Applied, Charge, Direction, Limit, LimitDef, Limits, RateLimit, Scope, VolumeLimit,
};
use portcullis::state::limits::LimitStore;
use portcullis::state::redis_limits::{RedisLimits, RedisOptions, SharedOutcome};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

#[path = "../tests/support/stores.rs"]
mod stores;

fn applied(route: &str, def: LimitDef) -> Applied {
    let limits = Limits {
        items: vec![Limit {
            def,
            scope: Scope::Route,
            path: "routes[0].limits[0]".into(),
        }]
        .into(),
    };
    applicable(&"bench".into(), &Limits::default(), &route.into(), &limits).remove(0)
}

fn rates(routes: &[&str], r: RateLimit) -> Charge {
    Charge {
        rates: routes
            .iter()
            .map(|route| (applied(route, LimitDef::Rate(r)), r))
            .collect(),
        volumes: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let srv = stores::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let opts = RedisOptions {
        url: srv.url(),
        key_prefix: "bench:".into(),
        ..RedisOptions::default()
    };
    let limits = rt
        .block_on(RedisLimits::connect(opts, Arc::new(Metrics::new())))
        .expect("connect");
    assert!(limits.available(), "redis-server answers");

    // Never refuses during the run: measures the round trip.
    let open = RateLimit {
        requests: 1_000_000,
        per: Duration::from_secs(1),
        burst: 1_000_000,
    };
    let one = rates(&["open"], open);
    let three = rates(&["open", "open2", "open3"], open);
    c.bench_function("redis_limits/acquire_admitted", |b| {
        b.iter(|| {
            let out = rt.block_on(limits.acquire(black_box(&one)));
            assert_eq!(out, SharedOutcome::Admitted);
        })
    });
    c.bench_function("redis_limits/acquire_admitted_3_limits", |b| {
        b.iter(|| {
            let out = rt.block_on(limits.acquire(black_box(&three)));
            assert_eq!(out, SharedOutcome::Admitted);
        })
    });

    // One call per hour, used up: every later call is refused by the local pre-check.
    let closed = rates(
        &["closed"],
        RateLimit {
            requests: 1,
            per: Duration::from_secs(3600),
            burst: 1,
        },
    );
    let _ = rt.block_on(limits.acquire(&closed));
    c.bench_function("redis_limits/acquire_refused_locally", |b| {
        b.iter(|| {
            let out = rt.block_on(limits.acquire(black_box(&closed)));
            assert!(matches!(out, SharedOutcome::Refused(_)));
        })
    });

    let v = VolumeLimit {
        bytes: u64::MAX / 2,
        per: Duration::from_secs(3600),
        direction: Direction::Both,
    };
    let key = applied("volume", LimitDef::Volume(v)).key;
    c.bench_function("redis_limits/charge_volume_16k_chunk", |b| {
        b.iter(|| limits.charge_volume(black_box(&key), &v, 16 * 1024))
    });

    for i in 0..100 {
        let k = applied(&format!("volume{i}"), LimitDef::Volume(v)).key;
        let _ = limits.charge_volume(&k, &v, 1);
    }
    c.bench_function("redis_limits/flush_100_keys", |b| {
        b.iter(|| {
            limits.charge_volume(&key, &v, 1).expect("within budget");
            rt.block_on(limits.flush());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
