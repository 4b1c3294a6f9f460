//! `access_log.schema: ecs`: each line in Elastic Common Schema shape, with Portcullis's own
//! fields kept whole under `portcullis` (ECS's place for custom fields).
//!
//! ECS rather than OCSF: ECS is plain nested JSON that Elastic, OpenSearch and most log
//! shippers map without a per-source parser, and each of our fields has an obvious home in it
//! (`user.name`, `source.ip`, `url.path`, `http.response.status_code`, `event.outcome`). OCSF
//! needs numeric class, category and activity ids per event and a mapping layer SIEMs apply on
//! ingest; it can be derived from the ECS lines later if a team needs it.
//!
//! The conversion runs on the access-log writer thread, never on a request: a line is encoded
//! once by the request task as today, and re-shaped here in a batch.

use serde_json::{json, Map, Value};

/// The ECS version the lines follow.
pub const ECS_VERSION: &str = "8.11.0";

/// Re-shape one native line (JSON) into an ECS line. A line that is not a JSON object is kept
/// as it is: the audit trail never loses a line to a conversion.
pub fn convert(line: &[u8]) -> Vec<u8> {
    let Ok(Value::Object(native)) = serde_json::from_slice::<Value>(line) else {
        return line.to_vec();
    };
    let mut ecs = Map::new();
    if let Some(t) = native.get("time") {
        ecs.insert("@timestamp".into(), t.clone());
    }
    ecs.insert("ecs".into(), json!({"version": ECS_VERSION}));
    ecs.insert(
        "observer".into(),
        json!({"vendor": "Portcullis", "product": "portcullis", "type": "gateway"}),
    );
    let s = |k: &str| native.get(k).and_then(Value::as_str);
    let mut event = Map::new();
    event.insert("kind".into(), json!("event"));
    match s("event") {
        // A call line.
        None => {
            let decision = s("decision").unwrap_or("");
            event.insert("category".into(), json!(["web"]));
            let kind = match decision {
                "allow" => "allowed",
                "deny" => "denied",
                _ => "info",
            };
            event.insert("type".into(), json!(["access", kind]));
            event.insert("action".into(), json!(format!("call-{decision}")));
            event.insert(
                "outcome".into(),
                json!(match decision {
                    "allow" => "success",
                    "deny" | "error" => "failure",
                    _ => "unknown",
                }),
            );
            event.insert("dataset".into(), json!("portcullis.access"));
            if let Some(id) = s("request_id") {
                event.insert("id".into(), json!(id));
            }
            if let Some(ms) = native.get("duration_ms").and_then(Value::as_f64) {
                event.insert("duration".into(), json!((ms * 1e6) as u64));
            }
            if let Some(r) = s("reason") {
                event.insert("reason".into(), json!(r));
            }
            let mut http = Map::new();
            let mut req = Map::new();
            if let Some(m) = s("method") {
                req.insert("method".into(), json!(m));
            }
            if let Some(b) = native.get("bytes_in") {
                req.insert("body".into(), json!({"bytes": b}));
            }
            http.insert("request".into(), Value::Object(req));
            let mut resp = Map::new();
            if let Some(st) = native.get("status") {
                resp.insert("status_code".into(), st.clone());
            }
            if let Some(b) = native.get("bytes_out") {
                resp.insert("body".into(), json!({"bytes": b}));
            }
            http.insert("response".into(), Value::Object(resp));
            ecs.insert("http".into(), Value::Object(http));
            let mut url = Map::new();
            if let Some(p) = s("path") {
                url.insert("path".into(), json!(p));
            }
            if let Some(q) = s("query") {
                url.insert("query".into(), json!(q));
            }
            if let Some(h) = s("host") {
                url.insert("domain".into(), json!(h));
            }
            ecs.insert("url".into(), Value::Object(url));
            if let Some(c) = s("client").and_then(|c| c.parse::<std::net::SocketAddr>().ok()) {
                ecs.insert(
                    "source".into(),
                    json!({"ip": c.ip().to_string(), "port": c.port()}),
                );
            }
            if let Some(r) = s("route") {
                ecs.insert("rule".into(), json!({"name": r}));
            }
            if let Some(u) = s("upstream") {
                ecs.insert("service".into(), json!({"target": {"name": u}}));
            }
            if let Some(t) = s("trace_id") {
                ecs.insert("trace".into(), json!({"id": t}));
            }
        }
        // An audit event: approvals, kill switch, token service, reloads, MCP pins.
        Some(action) => {
            let category = match action {
                "config_reload" | "mcp_tool_changed" | "mcp_tool_accepted" => "configuration",
                _ => "iam",
            };
            event.insert("category".into(), json!([category]));
            event.insert("type".into(), json!(["change"]));
            event.insert("action".into(), json!(action));
            event.insert("dataset".into(), json!("portcullis.audit"));
            let outcome = match s("outcome") {
                Some("refused") | Some("ignored") => "failure",
                Some(o) if o.starts_with("invalid") || o.starts_with("unauthorized") => "failure",
                Some(_) => "success",
                None => "unknown",
            };
            event.insert("outcome".into(), json!(outcome));
            if let Some(r) = s("reason") {
                event.insert("reason".into(), json!(r));
            }
        }
    }
    ecs.insert("event".into(), Value::Object(event));
    // Who acted: the agent (or, on audit lines, the person or service named `by`/`client`).
    let mut user = Map::new();
    if let Some(who) = s("agent").or(s("client").filter(|_| s("event").is_some())) {
        user.insert("name".into(), json!(who));
    }
    if let Some(p) = s("on_behalf_of") {
        // ECS: the user the action is performed for.
        user.insert("target".into(), json!({"name": p}));
    }
    if let Some(by) = s("by") {
        user.insert("changes".into(), json!({"name": by}));
    }
    if !user.is_empty() {
        ecs.insert("user".into(), Value::Object(user));
    }
    ecs.insert("portcullis".into(), Value::Object(native));
    let mut out = serde_json::to_vec(&Value::Object(ecs)).unwrap_or_else(|_| line.to_vec());
    out.push(b'\n');
    out
}

/// Convert every line of a batch (newline-separated) into `out`.
pub fn convert_batch(batch: &[u8], out: &mut Vec<u8>) {
    for line in batch.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        out.extend_from_slice(&convert(line));
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_line_gets_ecs_fields_and_keeps_its_own() {
        let line = br#"{"time":"2026-12-03T10:00:00.000Z","request_id":"r1","agent":"bot","owner":"a@x","on_behalf_of":"alice@x","method":"DELETE","path":"/t/1","query":"q=1","host":"tools","client":"10.0.0.7:5000","status":403,"decision":"deny","reason":"insufficient_scope","route":"t","upstream":null,"bytes_in":0,"bytes_out":120,"duration_ms":0.25}"#;
        let v: Value = serde_json::from_slice(&convert(line)).unwrap();
        assert_eq!(v["@timestamp"], "2026-12-03T10:00:00.000Z");
        assert_eq!(v["ecs"]["version"], ECS_VERSION);
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["type"], json!(["access", "denied"]));
        assert_eq!(v["event"]["reason"], "insufficient_scope");
        assert_eq!(v["event"]["duration"], 250_000);
        assert_eq!(v["user"]["name"], "bot");
        assert_eq!(v["user"]["target"]["name"], "alice@x");
        assert_eq!(v["source"], json!({"ip": "10.0.0.7", "port": 5000}));
        assert_eq!(v["http"]["request"]["method"], "DELETE");
        assert_eq!(v["http"]["response"]["status_code"], 403);
        assert_eq!(
            v["url"],
            json!({"path": "/t/1", "query": "q=1", "domain": "tools"})
        );
        assert_eq!(v["rule"]["name"], "t");
        assert_eq!(v["portcullis"]["owner"], "a@x", "native fields kept whole");
    }

    #[test]
    fn audit_lines_and_garbage() {
        let line = br#"{"time":"t","event":"agent_state","action":"pause","agent":"bot","by":"alice","credential":"admin","reason":"odd"}"#;
        let v: Value = serde_json::from_slice(&convert(line)).unwrap();
        assert_eq!(v["event"]["action"], "agent_state");
        assert_eq!(v["event"]["category"], json!(["iam"]));
        assert_eq!(v["user"]["changes"]["name"], "alice");
        assert_eq!(v["portcullis"]["action"], "pause");
        // Not JSON: kept as is, never dropped.
        assert_eq!(convert(b"not json"), b"not json".to_vec());
        let mut out = Vec::new();
        convert_batch(
            b"{\"time\":\"t\",\"decision\":\"allow\"}\nnot json\n",
            &mut out,
        );
        assert_eq!(
            out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
            2
        );
    }
}
