//! Calls as the access log recorded them: the evidence `policy suggest`, `replay` and `review`
//! work from. Only call lines are read (lines with an `event` field are audit events); a line
//! that is not JSON is counted and skipped, never fatal (a log cut mid-line still reads).

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// One call from the access log.
#[derive(Debug, Clone, Deserialize)]
pub struct Call {
    /// When it started (RFC 3339).
    #[serde(deserialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The agent (absent before authentication: such lines are skipped).
    pub agent: Option<String>,
    /// The `Host` header as sent.
    #[serde(default)]
    pub host: Option<String>,
    /// Method.
    pub method: String,
    /// Normalized path.
    pub path: String,
    /// Query string.
    #[serde(default)]
    pub query: Option<String>,
    /// Client address (`ip:port`).
    #[serde(default)]
    pub client: Option<String>,
    /// The route that decided it.
    #[serde(default)]
    pub route: Option<String>,
    /// The upstream it reached.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `allow`, `deny`, `held` or `error`.
    pub decision: String,
    /// Refusal or failure code.
    #[serde(default)]
    pub reason: Option<String>,
    /// Shadow mode: what a shadowed policy would have refused.
    #[serde(default)]
    pub would_deny: Option<String>,
    /// The scopes the token carried.
    #[serde(default)]
    pub token_scopes: Vec<String>,
    /// Status sent.
    pub status: u16,
}

fn rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).map_err(serde::de::Error::custom)
}

impl Call {
    /// Whether the call went through (or would have, in shadow mode): allowed, or held and
    /// then approved. Refused calls are not evidence of need.
    pub fn passed(&self) -> bool {
        self.decision == "allow"
    }
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct Evidence {
    /// The calls, in file order.
    pub calls: Vec<Call>,
    /// Lines that were not JSON call lines (cut lines, other formats).
    pub unreadable: usize,
}

/// Read call lines from `path`, keeping those of `agent` (if given) at or after `since`
/// (if given).
pub fn read(path: &Path, agent: Option<&str>, since: Option<Duration>) -> Result<Evidence, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let cutoff = since.and_then(|d| SystemTime::now().checked_sub(d));
    let mut out = Evidence::default();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            out.unreadable += 1;
            continue;
        };
        if v.get("event").is_some() {
            continue;
        }
        let Ok(call) = serde_json::from_value::<Call>(v) else {
            out.unreadable += 1;
            continue;
        };
        let Some(who) = call.agent.as_deref() else {
            continue;
        };
        if agent.is_some_and(|a| a != who) || cutoff.is_some_and(|c| call.time < c) {
            continue;
        }
        out.calls.push(call);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_call_lines_and_skips_events_cut_lines_and_other_agents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("access.log");
        std::fs::write(
            &p,
            concat!(
                r#"{"time":"2026-12-03T10:00:00.123Z","agent":"bot","method":"GET","path":"/a/1","decision":"allow","status":200,"route":"r","token_scopes":["x:read"]}"#, "\n",
                r#"{"time":"2026-12-03T10:00:01Z","event":"token","outcome":"issued"}"#, "\n",
                r#"{"time":"2026-12-03T10:00:02Z","agent":"other","method":"GET","path":"/b","decision":"deny","status":403}"#, "\n",
                r#"{"time":"2026-12-03T10:00:03Z","agent":"bot","meth"#, "\n",
            ),
        )
        .unwrap();
        let e = read(&p, Some("bot"), None).unwrap();
        assert_eq!(e.calls.len(), 1);
        assert_eq!(e.unreadable, 1);
        assert_eq!(e.calls[0].token_scopes, ["x:read"]);
        assert!(e.calls[0].passed());
        let old = read(&p, None, Some(Duration::from_secs(60))).unwrap();
        assert!(old.calls.is_empty(), "all older than a minute");
    }
}
