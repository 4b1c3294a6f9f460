//! The digest approvals are bound to: the *policy* in the file, not the whole file.
//!
//! Replicas of one deployment run files that differ where each one listens, logs and keeps its
//! state. An approval granted through one replica must be honoured by the others, and a change
//! of policy must still invalidate every open approval. So the digest covers the file minus
//! the sections that only say how this process runs:
//!
//! - `listen`, `server`, `access_log`, `state`, `admin` (where it listens, its limits, where it
//!   logs and keeps state, who may operate it);
//! - `monitoring` and `token_service` (what is watched and issued, not what a call may do);
//! - `approvals.store`, `approvals.console_url`, `approvals.webhook` (where approvals are kept
//!   and announced).
//!
//! Everything else — agents, routes and their scopes, conditions, limits, tiers, enforcement,
//! identity and issuers, upstreams, the rest of `approvals` — is policy. A section added later
//! counts as policy until it is listed here: when in doubt an approval is invalidated, never
//! kept.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level sections that are not policy.
const NOT_POLICY: &[&str] = &[
    "listen",
    "server",
    "access_log",
    "state",
    "admin",
    "monitoring",
    "token_service",
];

/// Keys of `approvals:` that are not policy.
const APPROVALS_NOT_POLICY: &[&str] = &["store", "console_url", "webhook"];

/// First 12 hex digits of the SHA-256 of the policy sections of `text` (a YAML document), in a
/// canonical form: key order, comments and formatting do not change it. `None` when `text` is
/// not YAML (the caller has already refused such a file).
pub fn policy_digest(text: &str) -> Option<String> {
    let mut doc: Value = serde_yaml::from_str(text).ok()?;
    if let Value::Object(top) = &mut doc {
        for k in NOT_POLICY {
            top.remove(*k);
        }
        if let Some(Value::Object(a)) = top.get_mut("approvals") {
            for k in APPROVALS_NOT_POLICY {
                a.remove(*k);
            }
        }
    }
    let mut canonical = String::new();
    write_canonical(&doc, &mut canonical);
    Some(hex::encode(Sha256::digest(canonical.as_bytes()))[..12].to_string())
}

/// JSON with object keys sorted, whatever map order serde_json was built with.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::policy_digest;

    const BASE: &str = "
listen: {proxy: ['127.0.0.1:8080']}
state: {store: a.db}
approvals: {store: a.db, console_url: 'http://a/', approvers: [{name: ops}]}
agents: [{id: bot, owner: ann, scopes: [read]}]
routes: [{name: r, path: /x, scopes: [read]}]
";

    #[test]
    fn deployment_sections_do_not_change_it() {
        let other = BASE
            .replace("127.0.0.1:8080", "0.0.0.0:9090")
            .replace("state: {store: a.db}", "state: {backend: shared}")
            .replace(
                "approvals: {store: a.db, console_url: 'http://a/',",
                "approvals: {console_url: 'http://b/',",
            )
            + "access_log: {path: /var/log/x}\nadmin: {hosts: [gw]}\n";
        assert_eq!(policy_digest(BASE), policy_digest(&other));
        let reordered = "routes: [{scopes: [read], path: /x, name: r}]\n# a comment\n".to_string()
            + &BASE.replace("routes: [{name: r, path: /x, scopes: [read]}]", "");
        assert_eq!(policy_digest(BASE), policy_digest(&reordered));
    }

    #[test]
    fn policy_changes_change_it() {
        let d = policy_digest(BASE).unwrap();
        for changed in [
            BASE.replace(
                "scopes: [read]}]\nroutes",
                "scopes: [read, write]}]\nroutes",
            ),
            BASE.replace("path: /x", "path: /y"),
            BASE.replace(
                "approvers: [{name: ops}]",
                "approvers: [{name: ops}, {name: sec}]",
            ),
            BASE.to_string() + "tiers: {supervised: {conditions: []}}\n",
            BASE.to_string() + "new_section: {x: 1}\n",
        ] {
            assert_ne!(Some(d.clone()), policy_digest(&changed), "{changed}");
        }
    }
}
