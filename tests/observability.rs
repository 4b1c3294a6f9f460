//! The shipped observability files: the Prometheus alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`, synthetic series for each alert), and the Grafana
//! dashboard and the rules reference only metrics a running gateway exports on `/metrics`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("observability")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir().join("prometheus"))
        .output()
        .expect("promtool runs (scripts/test.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_are_valid_and_their_tests_pass() {
    let checked = promtool(&["check", "rules", "portcullis-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "portcullis-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every `portcullis_*` metric named in `text`, histogram series suffixes folded into their
/// family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"portcullis_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect()
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_rules_reference_only_metrics_the_gateway_exports() {
    let up = Upstream::start().await;
    let gw = Gateway::start(Setup::new(&up)).await;
    let metrics = gw.metrics().await;
    // Families with no sample yet are listed too (HELP/TYPE only): what the gateway *can*
    // export, not what this run happened to touch.
    let exported: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    for family in [
        "portcullis_anomalies_total",
        "portcullis_state_store_up",
        "portcullis_token_requests_total",
        // Labelled by transport, so without a sample when the log goes to a file.
        "portcullis_access_log_syslog_connected",
    ] {
        assert!(exported.contains(family), "{family} not listed:\n{metrics}");
    }

    let text = std::fs::read_to_string(dir().join("grafana/portcullis-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "portcullis");
    let panels = dash["panels"].as_array().unwrap();
    let mut found = Vec::new();
    exprs(&dash, &mut found);
    assert!(found.len() >= 20, "{found:?}");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(!p["targets"].as_array().unwrap().is_empty(), "{p}");
    }
    let used = metric_names(&found.join("\n"));
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard names metrics the gateway does not export: {unknown:?}"
    );
    // The panels the issue asks for are there.
    for family in [
        "portcullis_requests_total",
        "portcullis_denials_total",
        "portcullis_approvals_pending",
        "portcullis_approval_time_to_decision_seconds",
        "portcullis_anomalies_total",
        "portcullis_playbook_actions_total",
        "portcullis_upstream_duration_seconds",
        "portcullis_token_failures_total",
    ] {
        assert!(used.contains(family), "no panel for {family}");
    }

    let rules = std::fs::read_to_string(dir().join("prometheus/portcullis-alerts.yml")).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    let exprs: Vec<String> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    let used = metric_names(&exprs.join("\n"));
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "alert rules name metrics the gateway does not export: {unknown:?}"
    );
}

/// `access_log.schema: ecs`: a SIEM reads Elastic Common Schema fields; Portcullis's own fields
/// are kept under `portcullis`; no line is lost or left native.
#[tokio::test]
async fn ecs_access_log_lines_carry_ecs_fields_and_the_native_ones() {
    let up = Upstream::start().await;
    let gw = Gateway::start_edited(Setup::new(&up), |text| {
        text.replace("access_log:\n", "access_log:\n  schema: ecs\n")
    })
    .await;
    let bot = token("support-bot", &["tickets:read"]);
    assert_eq!(get(&gw, "/api/tickets/1", Some(&bot)).await.status, 200);
    assert_eq!(get(&gw, "/api/nothing-here", Some(&bot)).await.status, 403);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let text = std::fs::read_to_string(gw.layout.access_log_path()).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert!(l["@timestamp"].is_string(), "{l}");
        assert_eq!(l["ecs"]["version"], "8.11.0");
        assert_eq!(l["user"]["name"], "support-bot");
        assert_eq!(
            l["portcullis"]["agent"], "support-bot",
            "native fields kept"
        );
        assert!(
            l.get("decision").is_none(),
            "no native field at the top: {l}"
        );
    }
    assert_eq!(lines[0]["event"]["outcome"], "success");
    assert_eq!(lines[0]["http"]["response"]["status_code"], 200);
    assert_eq!(lines[0]["url"]["path"], "/api/tickets/1");
    assert_eq!(lines[0]["rule"]["name"], "tickets-read");
    assert_eq!(lines[1]["event"]["outcome"], "failure");
    assert_eq!(lines[1]["event"]["reason"], "insufficient_scope");
    assert_eq!(lines[1]["source"]["ip"], "127.0.0.1");
}
