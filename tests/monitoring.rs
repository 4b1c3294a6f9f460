//! Continuous monitoring against the real binary: an agent builds a baseline with normal
//! traffic, then behaves like a prompt-injected helpdesk agent; the playbook alerts its owner
//! and pauses it, and nothing after the pause reaches the tool. Another agent with the same
//! amount of normal traffic triggers nothing.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

const RW: &[&str] = &["tickets:read", "tickets:write"];

/// The access log once a line matching `pred` is in it.
async fn wait_log(gw: &Gateway, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    gw.wait_log_line("the awaited event", pred).await.1
}

const ROUTES: &str = "  - name: tickets-delete
    methods: [DELETE]
    path: /api/tickets/{id}
    upstream: tickets-api
    scopes: [tickets:delete]
  - name: customers
    methods: [GET]
    path: /api/customers/**
    upstream: tickets-api
    scopes: [tickets:read]
    tags: [private_data]
  - name: outbound
    methods: [POST]
    path: /api/outbound/**
    upstream: tickets-api
    scopes: [tickets:write]
    tags: [egress]
";

fn monitoring(owner_hook: &str, soc_hook: &str) -> String {
    format!(
        "monitoring:
  detectors:
    first_seen: {{warmup: 1s, min_calls: 20}}
    denial_burst: {{denials: 5, window: 1m}}
    volume: {{window: 1m, max_bytes: 100KB}}
    sensitive_sequence: {{from: private_data, to: egress, within: 10m}}
  playbooks:
    - name: watch                  # something new: tell people
      detectors: [first_seen]
      steps:
        - [alert]
    - name: contain                # probing or exfiltration: stop the agent
      detectors: [denial_burst, volume, sensitive_sequence]
      window: 1h
      cooldown: 1m
      steps:
        - [alert, pause]
  alerts:
    webhook: {{url: \"{soc_hook}\"}}
    owners:
      alice@example.com: {{url: \"{owner_hook}\"}}
"
    )
}

async fn send(gw: &Gateway, method: reqwest::Method, path: &str, t: &str, body: &str) -> Answer {
    Answer::read(
        client()
            .request(method, gw.url(path))
            .bearer_auth(t)
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_injected_agent_is_paused_and_a_normal_one_is_left_alone() {
    let up = Upstream::start().await;
    let (owner, owner_url) = Hook::start().await;
    let (soc, soc_url) = Hook::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = ROUTES.into();
    s.admin = admin_section("") + &monitoring(&owner_url, &soc_url);
    let gw = Gateway::start(s).await;
    let bot = token("support-bot", RW);
    let other = token("reporting-bot", &["tickets:read"]);

    // Normal traffic builds both baselines: reads of single tickets.
    for i in 0..30 {
        for t in [&bot, &other] {
            let a = get(&gw, &format!("/api/tickets/{i}"), Some(t)).await;
            assert_eq!(a.status, 200, "{}", a.body);
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the warm-up
                                                           // The same amount of the same kind of traffic again: nothing is unusual.
    for i in 30..60 {
        let a = get(&gw, &format!("/api/tickets/{i}"), Some(&other)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    // The helpdesk agent is prompt-injected: it reads customer data (a route it never used)...
    let a = get(&gw, "/api/customers/export", Some(&bot)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let first = owner
        .wait_for(|v| v["agent"] == "support-bot" && v["detector"] == "first_seen")
        .await;
    assert_eq!(first["owner"], "alice@example.com");
    assert_eq!(first["severity"], "warning");
    assert!(
        first["text"].as_str().unwrap().contains("support-bot"),
        "{first}"
    );
    // ...then tries to delete tickets it has no scope for, in a burst. Five refusals trip the
    // detector; the monitor runs off the request path (a batch every millisecond), so how many
    // more refused calls slip in before the pause lands depends on how loaded the machine is,
    // not on the gateway: the bound is time (5 s after the fifth refusal), the floor exact.
    let mut sent = 0;
    let mut fifth = None;
    let paused_at = loop {
        sent += 1;
        if let Some(t) = fifth {
            assert!(
                Instant::now().duration_since(t) < Duration::from_secs(5),
                "not paused 5 s after the fifth refusal ({sent} deletes)"
            );
        }
        let a = send(
            &gw,
            reqwest::Method::DELETE,
            &format!("/api/tickets/{sent}"),
            &bot,
            "",
        )
        .await;
        match a.body["error"].as_str() {
            Some("insufficient_scope") => {}
            Some("agent_paused") => break sent,
            other => panic!("unexpected answer {other:?}: {}", a.body),
        }
        if sent == 5 {
            fifth = Some(Instant::now());
        }
    };
    assert!(paused_at >= 6, "paused after only {paused_at} deletes");
    let hits = up.hits();
    // Nothing after the pause reaches the tool: not the egress call with the data...
    let big = "x".repeat(200_000);
    let a = send(&gw, reqwest::Method::POST, "/api/outbound/mail", &bot, &big).await;
    a.assert_refusal(403, "agent_paused");
    assert_eq!(a.body["paused_by"], "playbook:contain");
    assert!(
        a.body["paused_reason"]
            .as_str()
            .unwrap()
            .contains("denial_burst"),
        "{}",
        a.body
    );
    // ...nor a fresh token.
    get(&gw, "/api/tickets/1", Some(&token("support-bot", RW)))
        .await
        .assert_refusal(403, "agent_paused");
    assert_eq!(
        up.hits(),
        hits,
        "a call of the paused agent reached the tool"
    );

    // The owner and the security team were told, with what was done.
    let burst = owner.wait_for(|v| v["detector"] == "denial_burst").await;
    assert_eq!(burst["severity"], "critical");
    assert_eq!(burst["actions"], serde_json::json!(["alert", "pause"]));
    assert!(burst["override_hint"]
        .as_str()
        .unwrap()
        .contains("portcullis agents resume support-bot"));
    soc.wait_for(|v| v["detector"] == "denial_burst").await;

    // Audit lines and metrics; nothing at all for the other agent.
    let log = wait_log(&gw, |l| {
        l["event"] == "agent_state" && l["action"] == "pause"
    })
    .await;
    let anomalies: Vec<&Value> = log.iter().filter(|l| l["event"] == "anomaly").collect();
    assert!(
        anomalies.iter().all(|l| l["agent"] == "support-bot"),
        "{anomalies:#?}"
    );
    assert!(anomalies.iter().any(|l| l["detector"] == "denial_burst"
        && l["actions"] == serde_json::json!(["log", "alert", "pause"])));
    let pause = log
        .iter()
        .find(|l| l["event"] == "agent_state" && l["action"] == "pause")
        .expect("the pause is audited");
    assert_eq!(pause["credential"], "playbook");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "portcullis_anomalies_total",
            &[
                ("agent", "support-bot"),
                ("detector", "denial_burst"),
                ("mode", "enforce")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_playbook_actions_total",
            &[("agent", "support-bot"), ("action", "pause")]
        ),
        Some(1.0)
    );
    assert!(
        !m.contains("agent=\"reporting-bot\",detector"),
        "false positive: {m}"
    );
    assert!(owner.all().iter().all(|v| v["agent"] == "support-bot"));
    assert!(soc.all().iter().all(|v| v["agent"] == "support-bot"));

    // The inventory shows what monitoring saw.
    let inv: Value = client()
        .get(gw.admin_url("/api/agents/support-bot"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(inv["state"], "paused");
    let act = &inv["activity"];
    assert!(act["calls_24h"].as_u64().unwrap() >= 36, "{inv:#}");
    assert!(act["denials_24h"].as_u64().unwrap() >= 5, "{inv:#}");
    let detectors: Vec<&str> = act["recent_anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["detector"].as_str().unwrap())
        .collect();
    assert!(
        detectors.contains(&"first_seen") && detectors.contains(&"denial_burst"),
        "{detectors:?}"
    );
}

/// Baselines survive a restart: after one, the agent is still past its warm-up (a fresh
/// monitor would learn silently for `min_calls` calls), so a new route is reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baselines_survive_a_restart() {
    let up = Upstream::start().await;
    let (owner, owner_url) = Hook::start().await;
    let (_soc, soc_url) = Hook::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = ROUTES.into();
    s.admin = admin_section("") + &monitoring(&owner_url, &soc_url);
    let mut gw = Gateway::start(s).await;
    let bot = token("support-bot", RW);
    for i in 0..25 {
        assert_eq!(
            get(&gw, &format!("/api/tickets/{i}"), Some(&bot))
                .await
                .status,
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(15)).await.expect("exited");
    gw.restart().await;
    assert_eq!(get(&gw, "/api/customers/x", Some(&bot)).await.status, 200);
    let v = owner.wait_for(|v| v["detector"] == "first_seen").await;
    assert_eq!(v["details"]["history_calls"], 25, "{v}");

    // An operator accepts the new behaviour: the agent warms up anew, so the next new route
    // is learnt silently.
    let r = client()
        .post(gw.admin_url("/api/agents/support-bot/relearn"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"reason": "customer exports are its new job"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["had_baselines"], true, "{body}");
    let before = owner.all().len();
    let a = send(&gw, reqwest::Method::POST, "/api/outbound/x", &bot, "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(owner.all().len(), before, "{:#?}", owner.all());
}

/// The two time-boxed interventions: a step-up sends the agent's writes to a person (reads
/// still pass), a throttle caps its calls; an admin lifts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playbook_step_up_and_throttle_restrict_until_lifted() {
    use sha2::Digest;
    let up = Upstream::start().await;
    let mut s = Setup::new(&up);
    s.extra_routes = ROUTES.into();
    let approver_hash = hex::encode(sha2::Sha256::digest(
        b"apv_monitoring_test_token_0123456789abcdef",
    ));
    s.admin = admin_section("")
        + &format!(
            "approvals:
  store: approvals.db
  approvers:
    - name: alice
      token_sha256: \"{approver_hash}\"
monitoring:
  detectors:
    denial_burst: {{denials: 3, window: 1s}}
  playbooks:
    - name: tighten
      cooldown: 0s
      steps:
        - [{{step_up: 10m}}]
        - [{{throttle: {{requests: 2, per: 1m, for: 10m}}}}]
"
        );
    let gw = Gateway::start(s).await;
    let bot = token("support-bot", RW);
    let probe = |n: u32| {
        let (gw, bot) = (&gw, bot.clone());
        async move {
            for i in 0..n {
                let a = send(
                    gw,
                    reqwest::Method::DELETE,
                    &format!("/api/tickets/{i}"),
                    &bot,
                    "",
                )
                .await;
                a.assert_refusal(403, "insufficient_scope");
            }
        }
    };
    let until = |pred: fn(&Answer) -> bool, path: &'static str, method: reqwest::Method| {
        let (gw, bot) = (&gw, bot.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let a = send(gw, method.clone(), path, &bot, "{}").await;
                if pred(&a) {
                    return a;
                }
                assert!(Instant::now() < deadline, "still {}: {}", a.status, a.body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    probe(3).await;
    // Step-up (it lands within a few calls): a write is held for approval, nothing reaches
    // the tool; reads pass.
    until(|a| a.status == 202, "/api/tickets", reqwest::Method::POST).await;
    let hits = up.hits();
    let a = send(&gw, reqwest::Method::POST, "/api/tickets", &bot, "{}").await;
    a.assert_refusal(202, "approval_pending");
    assert_eq!(up.hits(), hits);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&bot)).await.status, 200);

    // Next burst (the detector re-arms after its window): throttled to 2 calls a minute.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    probe(3).await;
    let a = until(|a| a.status == 429, "/api/tickets/2", reqwest::Method::GET).await;
    a.assert_refusal(429, "rate_limited");
    assert!(
        a.body["limit_path"]
            .as_str()
            .unwrap()
            .contains("playbook:tighten"),
        "{}",
        a.body
    );
    assert!(
        a.body["message"].as_str().unwrap().contains("throttled"),
        "{}",
        a.body
    );
    assert!(a.header("retry-after").is_some());

    // An approver may not lift; an admin may, and both restrictions end at once.
    let lift = |t: &'static str| {
        let gw = &gw;
        async move {
            client()
                .post(gw.admin_url("/api/agents/support-bot/lift"))
                .bearer_auth(t)
                .json(&serde_json::json!({"reason": "reviewed with the owner"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        lift("apv_monitoring_test_token_0123456789abcdef").await,
        403
    );
    assert_eq!(lift(ADMIN_TOKEN).await, 200);
    assert_eq!(get(&gw, "/api/tickets/3", Some(&bot)).await.status, 200);
    let a = send(&gw, reqwest::Method::POST, "/api/tickets", &bot, "{}").await;
    assert_eq!(a.status, 200, "{}", a.body);
}
