//! Policy lifecycle tools on real evidence: traffic goes through the gateway, its access log
//! is what `policy suggest`, `replay` and `review` read, and the suggested policy is run by a
//! second gateway.

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

const READ: &[&str] = &["tickets:read"];
const READ_WRITE: &[&str] = &["tickets:read", "tickets:write"];

fn run(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = cli(args, cwd);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Traffic through a gateway: support-bot reads five tickets (numeric ids and one UUID-shaped
/// id under comments) and creates two; reporting-bot reads one; one call nothing allows.
async fn traffic() -> (Gateway, Upstream) {
    let up = Upstream::start().await;
    let mut setup = Setup::new(&up);
    setup.extra_routes = "  - name: comments\n    methods: [GET]\n    path: /api/tickets/{id}/comments/{cid}\n    upstream: tickets-api\n    scopes: [tickets:read]\n".into();
    let gw = Gateway::start(setup).await;
    let bot = token("support-bot", READ_WRITE);
    for id in [1, 2, 3, 42, 1001] {
        assert_eq!(
            get(&gw, &format!("/api/tickets/{id}"), Some(&bot))
                .await
                .status,
            200
        );
    }
    let comment = "/api/tickets/7/comments/3f2b8c1d-4e5a-4b6c-9d7e-112233445566";
    assert_eq!(get(&gw, comment, Some(&bot)).await.status, 200);
    for _ in 0..2 {
        let r = client()
            .post(gw.url("/api/tickets"))
            .bearer_auth(&bot)
            .json(&serde_json::json!({"title": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let reporter = token("reporting-bot", READ);
    assert_eq!(
        get(&gw, "/api/tickets/9", Some(&reporter)).await.status,
        200
    );
    // Probing: refused, so not evidence of need.
    assert_eq!(get(&gw, "/api/users", Some(&bot)).await.status, 403);
    gw.wait_access_log(10).await;
    (gw, up)
}

/// `portcullis policy replay --config CANDIDATE --log LOG EXTRA...`.
fn replay_cli(dir: &Path, candidate: &Path, log: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "policy",
        "replay",
        "--config",
        candidate.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args, dir)
}

/// The config file with its `routes:` section replaced by `routes_yaml`.
fn with_routes(config: &str, routes_yaml: &str) -> String {
    let start = config.find("\nroutes:\n").expect("routes section") + 1;
    let end = config.find("\naccess_log:").expect("access_log section") + 1;
    format!("{}{}{}", &config[..start], routes_yaml, &config[end..])
}

#[tokio::test]
async fn suggest_then_check_then_replay_then_enforce() {
    let (gw, up) = traffic().await;
    let dir = gw.layout.dir.clone();
    let log = gw.layout.access_log_path();
    let config = gw.layout.config_path();
    let (ok, yaml, err) = run(
        &[
            "policy",
            "suggest",
            "--from",
            log.to_str().unwrap(),
            "-c",
            config.to_str().unwrap(),
        ],
        &dir,
    );
    assert!(ok, "{err}");
    let routes_yaml = yaml.split("# agents[].scopes:").next().unwrap().to_string();
    let doc: Value = serde_yaml::from_str(&routes_yaml).unwrap();
    let mut got: Vec<(String, String, String)> = doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["methods"][0].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["scopes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect();
    got.sort();
    // Ids (numbers, a UUID) become parameters; nested resources keep their shape; nothing
    // broader than the evidence (no `/**`, nothing for the refused /api/users).
    assert_eq!(
        got,
        vec![
            (
                "GET".into(),
                "/api/tickets/{ticket_id}".into(),
                "tickets:read".into()
            ),
            (
                "GET".into(),
                "/api/tickets/{ticket_id}/comments/{comment_id}".into(),
                "tickets:read".into()
            ),
            ("POST".into(), "/api/tickets".into(), "tickets:write".into()),
        ],
        "{yaml}"
    );
    assert!(yaml.contains("1 refused call(s) left out"), "{yaml}");
    assert!(
        yaml.contains("- route slow GET /slow: no observed call needed it"),
        "{yaml}"
    );

    // The suggestion is a valid configuration ...
    let original = std::fs::read_to_string(&config).unwrap();
    let candidate = dir.join("candidate.yaml");
    std::fs::write(&candidate, with_routes(&original, &routes_yaml)).unwrap();
    let (ok, out, err) = run(&["check", "-c", candidate.to_str().unwrap()], &dir);
    assert!(
        ok,
        "{out}{err}{}",
        std::fs::read_to_string(&candidate).unwrap()
    );
    // ... under which every logged call is decided as it was.
    let (ok, out, err) = replay_cli(&dir, &candidate, &log, &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("0 changed"), "{out}");

    // A gateway running it allows what was observed and denies what was not.
    drop(gw);
    let mut setup = Setup::new(&up);
    setup.extra_routes = String::new();
    let enforcing = Gateway::start_edited(setup, |text| with_routes(&text, &routes_yaml)).await;
    let bot = token("support-bot", READ_WRITE);
    assert_eq!(
        get(&enforcing, "/api/tickets/77", Some(&bot)).await.status,
        200
    );
    let outside = get(&enforcing, "/slow", Some(&bot)).await;
    assert_eq!(outside.status, 403);
    assert_eq!(outside.body["error"], "no_route");
}

#[tokio::test]
async fn replay_of_a_candidate_without_a_scope_names_the_affected_calls() {
    let (gw, _up) = traffic().await;
    let dir = gw.layout.dir.clone();
    let log = gw.layout.access_log_path();
    let original = std::fs::read_to_string(gw.layout.config_path()).unwrap();
    // support-bot loses tickets:write.
    let narrowed = original.replacen(
        "    scopes: [tickets:read, tickets:write]\n",
        "    scopes: [tickets:read]\n",
        1,
    );
    assert_ne!(narrowed, original);
    let candidate = dir.join("narrowed.yaml");
    std::fs::write(&candidate, narrowed).unwrap();
    let (ok, out, _) = replay_cli(&dir, &candidate, &log, &["--json"]);
    assert!(!ok, "changes beyond --max-changes 0 fail the gate");
    let report: Value = serde_json::from_str(&out).unwrap();
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{out}");
    for c in changes {
        assert_eq!(c["agent"], "support-bot");
        assert_eq!(c["call"], "POST /api/tickets");
        assert_eq!(c["before"][0], "allow");
        assert_eq!(c["after"]["decision"], "deny");
        assert_eq!(c["after"]["reason"], "insufficient_scope");
        assert_eq!(c["after"]["route"], "tickets-create");
    }
    assert_eq!(
        report["unchanged"],
        report["replayed"].as_u64().unwrap() - 2
    );
    // With a tolerance of two, the same change passes.
    let (ok, _, _) = replay_cli(&dir, &candidate, &log, &["--max-changes", "2"]);
    assert!(ok);
}

#[tokio::test]
async fn review_lists_unused_routes_idle_agents_and_unknown_owners() {
    let (gw, _up) = traffic().await;
    let dir = gw.layout.dir.clone();
    let log = gw.layout.access_log_path();
    let config = gw.layout.config_path();
    let owners = dir.join("people.txt");
    std::fs::write(&owners, "alice@example.com\n# bob left in March\n").unwrap();
    let (ok, out, err) = run(
        &[
            "policy",
            "review",
            "-c",
            config.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--owners",
            owners.to_str().unwrap(),
            "--format",
            "json",
        ],
        &dir,
    );
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let has = |kind: &str, agent: Option<&str>, subject: &str| {
        r["findings"].as_array().unwrap().iter().any(|f| {
            f["kind"] == kind && f["subject"] == subject && agent.is_none_or(|a| f["agent"] == a)
        })
    };
    assert!(has("unused_route", None, "slow"), "{out}");
    assert!(has("unused_route", None, "api-admin"), "{out}");
    assert!(!has("unused_route", None, "tickets-read"), "{out}");
    assert!(
        has("owner_unknown", Some("reporting-bot"), "bob@example.com"),
        "{out}"
    );
    assert!(
        !has("owner_unknown", Some("support-bot"), "alice@example.com"),
        "{out}"
    );
    assert!(
        has("disabled_agent", Some("retired-bot"), "retired-bot"),
        "{out}"
    );
    assert!(
        !has("unused_scope", Some("support-bot"), "tickets:write"),
        "{out}"
    );
    assert_eq!(r["agents"]["support-bot"][0], 8, "{out}");
    assert_eq!(r["agents"]["support-bot"][1], 1, "the refused probe");
    // CSV for the spreadsheet of a quarterly review.
    let (ok, csv, _) = run(
        &[
            "policy",
            "review",
            "-c",
            config.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
            "--format",
            "csv",
        ],
        &dir,
    );
    assert!(ok);
    assert!(csv.starts_with("kind,agent,subject,detail\n"), "{csv}");
    assert!(csv.contains("unused_route,,slow,"), "{csv}");
}

#[test]
fn from_openapi_drafts_the_named_operations_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let spec = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/tickets.yaml"
    );
    let (ok, out, err) = run(
        &[
            "policy",
            "from-openapi",
            spec,
            "--agent",
            "support-bot",
            "--operations",
            "getTicket,addComment",
            "--upstream",
            "tickets-api",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let doc: Value = serde_yaml::from_str(&out).unwrap();
    let routes = doc["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 2, "{out}");
    assert!(
        out.contains("# agents[].scopes of support-bot: [comments:write, tickets:read]"),
        "{out}"
    );
    let (ok, _, err) = run(
        &[
            "policy",
            "from-openapi",
            spec,
            "--agent",
            "support-bot",
            "--operations",
            "getTiket",
            "--upstream",
            "tickets-api",
        ],
        dir.path(),
    );
    assert!(!ok);
    assert!(err.contains("did you mean `getTicket`"), "{err}");
}
