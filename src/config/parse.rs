//! YAML text → [`RawConfig`], collecting every shape error instead of stopping at the first.
//!
//! Each top-level section, and each item of the list sections, is deserialized on its own, so one
//! bad route does not hide an unknown field in the next one.

use super::error::{Issue, IssueKind};
use super::locate::LineIndex;
use super::raw::RawConfig;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

const SECTIONS: &[&str] = &[
    "listen",
    "server",
    "identity",
    "issuers",
    "token_service",
    "agents",
    "upstreams",
    "routes",
    "access_log",
    "approvals",
    "admin",
    "enforcement",
    "limits",
    "tiers",
    "state",
    "monitoring",
    "tracing",
];

/// Parse `text`; `Err` holds every problem found (syntax errors stop at the first, shape
/// errors are all reported).
pub fn parse(text: &str, index: &LineIndex) -> (RawConfig, Vec<Issue>) {
    let mut issues = Vec::new();
    let mut raw = RawConfig::default();
    let doc: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            issues.push(Issue {
                path: String::new(),
                line: e.location().map(|l| l.line()),
                kind: IssueKind::Shape(format!("YAML syntax: {e}")),
            });
            return (raw, issues);
        }
    };
    let map = match doc {
        Value::Mapping(m) => m,
        Value::Null => {
            issues.push(Issue {
                path: String::new(),
                line: None,
                kind: IssueKind::Shape("the file is empty".into()),
            });
            return (raw, issues);
        }
        _ => {
            issues.push(Issue {
                path: String::new(),
                line: Some(1),
                kind: IssueKind::Shape("the file must be a mapping of sections".into()),
            });
            return (raw, issues);
        }
    };
    let mut ctx = Ctx {
        index,
        issues: &mut issues,
    };
    for (k, v) in map {
        let key = match k.as_str() {
            Some(s) => s.to_string(),
            None => {
                ctx.push("", IssueKind::Shape(format!("non-string key {k:?}")));
                continue;
            }
        };
        match key.as_str() {
            "listen" => ctx.one(&key, v, &mut raw.listen),
            "server" => ctx.one(&key, v, &mut raw.server),
            "identity" => ctx.one(&key, v, &mut raw.identity),
            "access_log" => ctx.one(&key, v, &mut raw.access_log),
            "token_service" => {
                let mut ts = None;
                ctx.one(&key, v, &mut ts);
                raw.token_service = ts;
            }
            "approvals" => {
                let mut a = None;
                ctx.one(&key, v, &mut a);
                raw.approvals = a;
            }
            "admin" => ctx.one(&key, v, &mut raw.admin),
            "enforcement" => ctx.one(&key, v, &mut raw.enforcement),
            "limits" => raw.limits = ctx.list(&key, v),
            "tiers" => ctx.one(&key, v, &mut raw.tiers),
            "state" => ctx.one(&key, v, &mut raw.state),
            "monitoring" => {
                let mut m = None;
                ctx.one(&key, v, &mut m);
                raw.monitoring = m;
            }
            "tracing" => {
                let mut t = None;
                ctx.one(&key, v, &mut t);
                raw.tracing = t;
            }
            "issuers" => raw.issuers = ctx.list(&key, v),
            "agents" => raw.agents = ctx.list(&key, v),
            "upstreams" => raw.upstreams = ctx.list(&key, v),
            "routes" => raw.routes = ctx.list(&key, v),
            other => ctx.push(
                other,
                IssueKind::Shape(format!(
                    "unknown section `{other}`, expected one of: {}",
                    SECTIONS.join(", ")
                )),
            ),
        }
    }
    (raw, issues)
}

struct Ctx<'a> {
    index: &'a LineIndex,
    issues: &'a mut Vec<Issue>,
}

impl Ctx<'_> {
    fn push(&mut self, path: &str, kind: IssueKind) {
        self.issues.push(Issue {
            path: path.to_string(),
            line: self.index.line_of(path),
            kind,
        });
    }

    /// Deserialize `v` into `out`; on error record it with the precise field path.
    fn one<T: DeserializeOwned>(&mut self, base: &str, v: Value, out: &mut T) {
        if v.is_null() {
            return; // an empty section means defaults
        }
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => *out = t,
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}.{inner}")
                };
                let msg = e.into_inner().to_string();
                self.push(&path, IssueKind::Shape(msg));
            }
        }
    }

    /// Deserialize each list item alone, keeping its index.
    fn list<T: DeserializeOwned>(&mut self, base: &str, v: Value) -> Vec<(usize, T)> {
        let items = match v {
            Value::Null => return Vec::new(),
            Value::Sequence(s) => s,
            _ => {
                self.push(base, IssueKind::Shape(format!("`{base}` must be a list")));
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let mut slot: Option<T> = None;
            let path = format!("{base}[{i}]");
            match serde_path_to_error::deserialize::<_, T>(item) {
                Ok(t) => slot = Some(t),
                Err(e) => {
                    let inner = e.path().to_string();
                    let p = if inner == "." || inner.is_empty() {
                        path.clone()
                    } else {
                        format!("{path}.{inner}")
                    };
                    self.push(&p, IssueKind::Shape(e.into_inner().to_string()));
                }
            }
            if let Some(t) = slot {
                out.push((i, t));
            }
        }
        out
    }
}
