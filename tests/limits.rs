//! Rate and data-volume limits against the real binary over loopback: refusals with
//! Retry-After, concurrency from many connections, streams cut at a volume budget, a reload
//! that changes a limit mid-traffic, and limits in shadow mode.

mod support;

use std::time::Duration;
use support::*;

const READ: &[&str] = &["tickets:read"];

fn with_routes(up: &Upstream, routes: &str) -> Setup {
    let mut s = Setup::new(up);
    s.extra_routes = routes.to_string();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_refuses_with_retry_after_and_never_over_admits_in_parallel() {
    let up = Upstream::start().await;
    let gw = Gateway::start(with_routes(
        &up,
        "  - name: search\n    methods: [GET]\n    path: /search/**\n    upstream: tickets-api\n    scopes: [tickets:read]\n    limits:\n      - rate: {requests: 5, per: 1h, scope: agent_route}\n",
    ))
    .await;
    let t = token("support-bot", READ);
    // 20 calls at once over separate connections: exactly 5 pass.
    let calls = (0..20).map(|i| {
        let url = gw.url(&format!("/search/{i}"));
        let t = t.clone();
        tokio::spawn(async move {
            // A client per call: one connection each.
            let c = reqwest::Client::builder().no_proxy().build().unwrap();
            Answer::read(c.get(url).bearer_auth(t).send().await.unwrap()).await
        })
    });
    let answers: Vec<Answer> = futures_join(calls).await;
    let passed = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        passed,
        5,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    let refused = answers
        .iter()
        .find(|a| a.status == 429)
        .expect("some refused");
    refused.assert_refusal(429, "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(
        refused.body["message"].as_str().unwrap().contains("search"),
        "{}",
        refused.body
    );
    assert_eq!(up.hits(), 5);
    // agent_route scope: another agent has its own budget.
    let other = token("reporting-bot", READ);
    assert_eq!(get(&gw, "/search/x", Some(&other)).await.status, 200);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "portcullis_limited_total",
            &[
                ("agent", "support-bot"),
                ("route", "search"),
                ("limit", "rate")
            ]
        ),
        Some(15.0),
        "{m}"
    );
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_crossing_a_volume_budget_is_cut_and_later_calls_are_refused() {
    let up = Upstream::start().await;
    let gw = Gateway::start(with_routes(
        &up,
        "  - name: export\n    methods: [GET, POST]\n    path: /export/**\n    upstream: tickets-api\n    scopes: [tickets:read]\n    limits:\n      - volume: {bytes: 100, per: 1h, direction: response}\n      - volume: {bytes: 1000, per: 1h, direction: request}\n",
    ))
    .await;
    let t = token("support-bot", READ);
    // The echo answer is several hundred bytes: more than the 100-byte budget. The agent must
    // never receive it as if it were complete: either a 429 that says the call was cut (when
    // the cut comes before the status line went out) or a broken stream.
    let r = client()
        .get(gw.url("/export/all"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    match r.bytes().await {
        Err(_) => {}
        Ok(b) => {
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(
                (status, v["error"].as_str()),
                (429, Some("volume_exceeded")),
                "{v}"
            );
            assert!(
                v["message"].as_str().unwrap().contains("cut off part-way"),
                "{v}"
            );
            assert!(v.get("path").is_none(), "the tool's answer leaked: {v}");
        }
    }
    // Now the budget is spent: refused before reaching the tool.
    let hits = up.hits();
    let a = get(&gw, "/export/more", Some(&t)).await;
    a.assert_refusal(429, "volume_exceeded");
    assert!(a.header("retry-after").is_some());
    assert_eq!(up.hits(), hits, "a refused call reached the tool");
    let line = gw.access_log_line(a.request_id()).await;
    assert_eq!(line["reason"], "volume_exceeded", "{line}");

    // A declared request body above what is left of the request budget: refused up front.
    let a = Answer::read(
        client()
            .post(gw.url("/export/upload"))
            .bearer_auth(&t)
            .body(vec![b'x'; 5000])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(up.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_a_limit_applies_to_the_next_calls() {
    let up = Upstream::start().await;
    let route = |n: u32| {
        format!("  - name: search\n    methods: [GET]\n    path: /search/**\n    upstream: tickets-api\n    scopes: [tickets:read]\n    limits:\n      - rate: {{requests: {n}, per: 1h}}\n")
    };
    let gw = Gateway::start(with_routes(&up, &route(2))).await;
    let t = token("support-bot", READ);
    for _ in 0..2 {
        assert_eq!(get(&gw, "/search/a", Some(&t)).await.status, 200);
    }
    get(&gw, "/search/a", Some(&t))
        .await
        .assert_refusal(429, "rate_limited");
    // Raise the limit: the new numbers take effect for the next call.
    let mut setup = gw.setup.clone();
    setup.extra_routes = route(10);
    write_atomically(&gw.layout.config_path(), &render(&setup, &gw.layout));
    let r = reload(&gw).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(get(&gw, "/search/a", Some(&t)).await.status, 200);
    // An unchanged limit keeps its counter across a reload (no reset by reloading).
    let r = reload(&gw).await;
    assert_eq!(r.status(), 200);
    let mut passed = 1;
    while get(&gw, "/search/a", Some(&t)).await.status == 200 {
        passed += 1;
        assert!(passed <= 10, "the counter was reset by a reload");
    }
    assert_eq!(passed, 10);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Traffic keeps flowing from several connections while the limit is lowered: no call fails for
/// any reason but the limit, and calls sent after the reload answered meet the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_lowered_mid_traffic_takes_over_without_failing_calls() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let up = Upstream::start().await;
    let route = |n: u32| {
        format!("  - name: search\n    methods: [GET]\n    path: /search/**\n    upstream: tickets-api\n    scopes: [tickets:read]\n    limits:\n      - rate: {{requests: {n}, per: 1h}}\n")
    };
    let gw = Gateway::start(with_routes(&up, &route(100_000))).await;
    let t = token("support-bot", READ);
    let stop = Arc::new(AtomicBool::new(false));
    // (sent after the reload answered?, status, error code)
    let seen: Arc<Mutex<Vec<(bool, u16, String)>>> = Arc::default();
    let reloaded = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (url, t, stop, seen, reloaded) = (
                gw.url(&format!("/search/{w}")),
                t.clone(),
                stop.clone(),
                seen.clone(),
                reloaded.clone(),
            );
            tokio::spawn(async move {
                let c = reqwest::Client::builder().no_proxy().build().unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let after = reloaded.load(Ordering::SeqCst);
                    let a = Answer::read(c.get(&url).bearer_auth(&t).send().await.unwrap()).await;
                    let code = a.body["error"].as_str().unwrap_or_default().to_string();
                    seen.lock().unwrap().push((after, a.status, code));
                }
            })
        })
        .collect();
    while seen.lock().unwrap().len() < 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut setup = gw.setup.clone();
    setup.extra_routes = route(5);
    write_atomically(&gw.layout.config_path(), &render(&setup, &gw.layout));
    let r = reload(&gw).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    reloaded.store(true, Ordering::SeqCst);
    let at_reload = seen.lock().unwrap().len();
    while seen.lock().unwrap().len() < at_reload + 40 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    for (_, status, code) in seen.iter() {
        assert!(
            *status == 200 || (*status == 429 && code == "rate_limited"),
            "a call failed for another reason: {status} {code}"
        );
    }
    let after: Vec<u16> = seen.iter().filter(|s| s.0).map(|s| s.1).collect();
    let passed_after = after.iter().filter(|s| **s == 200).count();
    assert!(
        passed_after <= 5,
        "the new limit of 5 was exceeded: {after:?}"
    );
    assert!(
        after.iter().filter(|s| **s == 429).count() >= 35,
        "{after:?}"
    );
    assert!(seen.iter().filter(|s| !s.0).take(40).all(|s| s.1 == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowed_limit_only_records_what_it_would_refuse() {
    let up = Upstream::start().await;
    let gw = Gateway::start(with_routes(
        &up,
        "  - name: search\n    methods: [GET]\n    path: /search/**\n    upstream: tickets-api\n    scopes: [tickets:read]\n    shadow: [limits]\n    limits:\n      - rate: {requests: 1, per: 1h}\n      - volume: {bytes: 10, per: 1h, direction: response}\n",
    ))
    .await;
    let t = token("support-bot", READ);
    for i in 0..3 {
        let a = get(&gw, &format!("/search/{i}"), Some(&t)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.body["path"].is_string(),
            "the whole answer arrived: {}",
            a.body
        );
    }
    // Nothing was charged, so nothing is over: shadowed limits watch only what they would
    // refuse at the start of a call.
    assert_eq!(up.hits(), 3);
}
