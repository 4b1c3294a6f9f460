//! MCP runtime state: which agent opened each upstream session, and the recorded definition of
//! every tool each MCP server listed (pins, for rug-pull detection).
//!
//! Sessions live in memory only: after a restart an unknown session id is answered 404, which
//! tells an MCP client to initialize a new session (the transport's own rule). Pins are kept in
//! the state store, so a definition changed while the gateway was down is still caught.

use super::agent_state::{AgentStateStore, StateError};
use crate::policy::mcp::ChangedTools;
use crate::util::lock;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The state-store document holding the pins.
pub const PINS_KEY: &str = "mcp_tool_pins";

/// Sessions kept at most (an idle one is forgotten after [`SESSION_IDLE`]).
const MAX_SESSIONS: u64 = 100_000;
/// A session unused this long is forgotten (its next call gets 404 and re-initializes).
const SESSION_IDLE: Duration = Duration::from_secs(24 * 3600);

/// The recorded definition of one tool of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// SHA-256 of the accepted definition.
    pub sha256: String,
    /// When it was first recorded (or last accepted), Unix ms.
    pub accepted_at_ms: i64,
    /// Who accepted it (`first_seen` for trust on first use).
    pub accepted_by: String,
    /// A different definition seen since, not accepted yet.
    pub changed: Option<ChangedDefinition>,
}

/// A definition that differs from the pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedDefinition {
    /// Its SHA-256.
    pub sha256: String,
    /// When it was first seen, Unix ms.
    pub seen_at_ms: i64,
}

/// What a listed tool's definition is, against its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// First time this tool of this server is seen: recorded (trust on first use).
    New,
    /// As recorded (or as already reported changed).
    Same,
    /// Different from the pin, seen for the first time now: report it.
    Changed {
        /// The pinned SHA-256.
        pinned: String,
        /// The new one.
        now: String,
    },
}

/// Pins by upstream name, then tool name.
type Pins = BTreeMap<String, BTreeMap<String, Pin>>;

/// Sessions and pins.
pub struct McpState {
    sessions: moka::sync::Cache<(Arc<str>, String), Arc<str>>,
    pins: Mutex<Pins>,
    changed: ArcSwap<ChangedTools>,
    store: Arc<dyn AgentStateStore>,
}

impl McpState {
    /// State whose pins are read from (and saved to) `store`.
    pub fn load(store: Arc<dyn AgentStateStore>) -> McpState {
        let pins: Pins = match store.load_blob(PINS_KEY) {
            Ok(Some(v)) => serde_json::from_value(v).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "MCP tool pins could not be read; starting from scratch");
                Pins::new()
            }),
            Ok(None) => Pins::new(),
            Err(e) => {
                tracing::warn!(error = %e, "MCP tool pins could not be read; starting from scratch");
                Pins::new()
            }
        };
        McpState {
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS)
                .time_to_idle(SESSION_IDLE)
                .build(),
            changed: ArcSwap::from_pointee(changed_of(&pins)),
            pins: Mutex::new(pins),
            store,
        }
    }

    /// `agent` opened session `id` on `upstream`.
    pub fn bind_session(&self, upstream: &Arc<str>, id: &str, agent: &Arc<str>) {
        self.sessions
            .insert((upstream.clone(), id.to_string()), agent.clone());
    }

    /// The agent that opened session `id` on `upstream`, if the gateway knows it.
    pub fn session_owner(&self, upstream: &Arc<str>, id: &str) -> Option<Arc<str>> {
        self.sessions.get(&(upstream.clone(), id.to_string()))
    }

    /// The session ended (`DELETE`).
    pub fn end_session(&self, upstream: &Arc<str>, id: &str) {
        self.sessions
            .invalidate(&(upstream.clone(), id.to_string()));
    }

    /// Tools changed and not accepted (cheap: an `Arc` clone).
    pub fn changed(&self) -> Arc<ChangedTools> {
        self.changed.load_full()
    }

    /// Compare the definitions a server just listed with their pins; new tools are pinned,
    /// changes recorded. Saved once per call when anything was new. The store write happens
    /// only the first time a tool or a change is seen.
    pub fn observe(
        &self,
        upstream: &str,
        tools: &[(String, String)],
        now_ms: i64,
    ) -> Vec<(String, Observation)> {
        let mut pins = lock(&self.pins);
        let server = pins.entry(upstream.to_string()).or_default();
        let mut out = Vec::new();
        let mut dirty = false;
        for (tool, sha) in tools {
            let seen = match server.get_mut(tool) {
                None => {
                    server.insert(
                        tool.clone(),
                        Pin {
                            sha256: sha.clone(),
                            accepted_at_ms: now_ms,
                            accepted_by: "first_seen".into(),
                            changed: None,
                        },
                    );
                    Observation::New
                }
                Some(p) if p.sha256 == *sha => {
                    // Changed back to what was accepted: nothing to hold any more.
                    if p.changed.take().is_some() {
                        dirty = true;
                    }
                    Observation::Same
                }
                Some(p) if p.changed.as_ref().is_some_and(|c| c.sha256 == *sha) => {
                    Observation::Same
                }
                Some(p) => {
                    p.changed = Some(ChangedDefinition {
                        sha256: sha.clone(),
                        seen_at_ms: now_ms,
                    });
                    Observation::Changed {
                        pinned: p.sha256.clone(),
                        now: sha.clone(),
                    }
                }
            };
            if seen != Observation::Same {
                dirty = true;
            }
            out.push((tool.clone(), seen));
        }
        if dirty {
            self.save(&pins, now_ms);
        }
        out
    }

    /// An operator accepts the changed definition of `tool` on `upstream`: it becomes the pin.
    /// `Ok(None)` when there is no such tool, or nothing changed to accept.
    pub fn accept(
        &self,
        upstream: &str,
        tool: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<Pin>, StateError> {
        let mut pins = lock(&self.pins);
        // Changed on a copy and kept only once saved: an acceptance that would not survive a
        // restart is refused rather than loosening this process alone.
        let mut next = pins.clone();
        let Some(p) = next.get_mut(upstream).and_then(|s| s.get_mut(tool)) else {
            return Ok(None);
        };
        let Some(c) = p.changed.take() else {
            return Ok(None);
        };
        p.sha256 = c.sha256;
        p.accepted_at_ms = now_ms;
        p.accepted_by = by.to_string();
        let accepted = p.clone();
        let doc = serde_json::to_value(&next).expect("pins serialize");
        self.store.save_blob(PINS_KEY, &doc, now_ms)?;
        *pins = next;
        self.changed.store(Arc::new(changed_of(&pins)));
        Ok(Some(accepted))
    }

    /// Every pin: (upstream, tool, pin), sorted.
    pub fn pins(&self) -> Vec<(String, String, Pin)> {
        lock(&self.pins)
            .iter()
            .flat_map(|(u, tools)| {
                tools
                    .iter()
                    .map(move |(t, p)| (u.clone(), t.clone(), p.clone()))
            })
            .collect()
    }

    fn save(&self, pins: &Pins, now_ms: i64) {
        self.changed.store(Arc::new(changed_of(pins)));
        let doc = serde_json::to_value(pins).expect("pins serialize");
        if let Err(e) = self.store.save_blob(PINS_KEY, &doc, now_ms) {
            // The in-memory pins still hold for this process; a restart re-pins on first use.
            tracing::error!(error = %e, "MCP tool pins could not be saved");
        }
    }
}

fn changed_of(pins: &Pins) -> ChangedTools {
    ChangedTools::new(pins.iter().flat_map(|(u, tools)| {
        tools
            .iter()
            .filter(|(_, p)| p.changed.is_some())
            .map(move |(t, _)| (u.clone(), t.clone()))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::agent_state::SqliteAgentState;

    #[test]
    fn pins_record_first_use_catch_a_change_once_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store: Arc<dyn AgentStateStore> = Arc::new(SqliteAgentState::open(&path).unwrap());
        let s = McpState::load(store);
        let t = |sha: &str| vec![("deploy".to_string(), sha.to_string())];
        assert_eq!(
            s.observe("mcp", &t("a"), 1),
            [("deploy".into(), Observation::New)]
        );
        assert_eq!(
            s.observe("mcp", &t("a"), 2),
            [("deploy".into(), Observation::Same)]
        );
        assert!(!s.changed().contains("mcp", "deploy"));
        assert_eq!(
            s.observe("mcp", &t("b"), 3),
            [(
                "deploy".into(),
                Observation::Changed {
                    pinned: "a".into(),
                    now: "b".into()
                }
            )]
        );
        // Reported once, still changed.
        assert_eq!(
            s.observe("mcp", &t("b"), 4),
            [("deploy".into(), Observation::Same)]
        );
        assert!(s.changed().contains("mcp", "deploy"));
        drop(s);
        let s = McpState::load(Arc::new(SqliteAgentState::open(&path).unwrap()));
        assert!(s.changed().contains("mcp", "deploy"), "survives a restart");
        assert_eq!(s.accept("mcp", "nothing", "ops", 5).unwrap(), None);
        let p = s.accept("mcp", "deploy", "ops", 5).unwrap().unwrap();
        assert_eq!((p.sha256.as_str(), p.accepted_by.as_str()), ("b", "ops"));
        assert!(!s.changed().contains("mcp", "deploy"));
        assert_eq!(
            s.observe("mcp", &t("b"), 6),
            [("deploy".into(), Observation::Same)]
        );
    }

    #[test]
    fn sessions_belong_to_the_agent_that_opened_them() {
        let s = McpState::load(Arc::new(SqliteAgentState::in_memory()));
        let (up, a): (Arc<str>, Arc<str>) = ("mcp".into(), "bot".into());
        s.bind_session(&up, "s1", &a);
        assert_eq!(s.session_owner(&up, "s1").as_deref(), Some("bot"));
        assert_eq!(s.session_owner(&"other".into(), "s1"), None);
        s.end_session(&up, "s1");
        assert_eq!(s.session_owner(&up, "s1"), None);
    }
}
