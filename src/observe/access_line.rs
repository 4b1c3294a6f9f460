//! The access-log line of a call, written straight into the line buffer.
//!
//! One line per call is the gateway's largest fixed cost after pingora itself: through serde,
//! every key went through JSON escaping and the capping formatter's callbacks, every value
//! through serde's generic machinery (about 9,000 instructions a line). Here keys are
//! constant bytes and a string that needs neither escaping nor capping (nearly all of them) is
//! copied as is; anything else (a string with a quote or a control character, a string past
//! `access_log.max_field_bytes`, the nested `conditions` and `mcp` values, numbers) is written
//! by the same serde_json code and [`CappingFormatter`] as before. The output is byte for byte
//! what `AccessRecord`'s `Serialize` derive writes, which the tests below check on generated
//! records.

use super::access_log::{AccessRecord, CappingFormatter};
use serde::Serialize;
use serde_json::ser::Formatter;

/// Writes one JSON object, field by field.
struct Line<'o> {
    out: &'o mut Vec<u8>,
    max: usize,
    first: bool,
}

impl Line<'_> {
    fn key(&mut self, key: &'static str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &'static str, v: &str) {
        self.key(key);
        self.str_value(v);
    }

    fn str_value(&mut self, v: &str) {
        let plain = v.len() <= self.max && !v.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\');
        if plain {
            self.out.push(b'"');
            self.out.extend_from_slice(v.as_bytes());
            self.out.push(b'"');
        } else {
            self.serde(&v);
        }
    }

    fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        match v {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    fn strs(&mut self, key: &'static str, v: &[String]) {
        self.key(key);
        self.out.push(b'[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            self.str_value(s);
        }
        self.out.push(b']');
    }

    fn u64(&mut self, key: &'static str, v: u64) {
        self.key(key);
        let _ = CappingFormatter::new(self.max).write_u64(self.out, v);
    }

    fn f64_value(&mut self, v: f64) {
        // As serde_json: a number that JSON cannot hold is null.
        if v.is_finite() {
            let _ = CappingFormatter::new(self.max).write_f64(self.out, v);
        } else {
            self.out.extend_from_slice(b"null");
        }
    }

    /// Anything else, through serde_json with the capping formatter.
    fn serde<T: Serialize + ?Sized>(&mut self, v: &T) {
        let mut ser =
            serde_json::Serializer::with_formatter(&mut *self.out, CappingFormatter::new(self.max));
        let _ = v.serialize(&mut ser);
    }
}

impl AccessRecord<'_> {
    /// Append this record as one JSON object (no newline), every string capped at `max` bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>, max: usize) {
        out.push(b'{');
        let mut l = Line {
            out,
            max,
            first: true,
        };
        self.time.with_text(|t| l.str("time", t));
        l.str("request_id", self.request_id);
        l.opt_str("agent", self.agent);
        l.opt_str("owner", self.owner);
        if let Some(v) = self.on_behalf_of {
            l.str("on_behalf_of", v);
        }
        if !self.prior_actors.is_empty() {
            l.strs("prior_actors", self.prior_actors);
        }
        l.opt_str("jti", self.jti);
        l.opt_str("issuer", self.issuer);
        l.opt_str("route", self.route);
        l.str("method", self.method);
        if let Some(v) = self.host {
            l.str("host", v);
        }
        if !self.token_scopes.is_empty() {
            l.strs("token_scopes", self.token_scopes);
        }
        l.str("path", self.path);
        l.opt_str("query", self.query);
        l.opt_str("client", self.client.as_deref());
        l.u64("status", u64::from(self.status));
        l.str("decision", self.decision);
        l.opt_str("reason", self.reason);
        l.opt_str("upstream", self.upstream);
        l.u64("bytes_in", self.bytes_in as u64);
        l.u64("bytes_out", self.bytes_out as u64);
        l.key("duration_ms");
        l.f64_value(self.duration_ms);
        l.key("upstream_ms");
        match self.upstream_ms {
            Some(v) => l.f64_value(v),
            None => l.out.extend_from_slice(b"null"),
        }
        l.u64("config_version", self.config_version);
        l.opt_str("approval_id", self.approval_id);
        if let Some(v) = self.would_deny {
            l.str("would_deny", v);
        }
        if !self.conditions.is_empty() {
            l.key("conditions");
            l.serde(self.conditions);
        }
        if let Some(m) = &self.mcp {
            l.key("mcp");
            l.serde(m);
        }
        if let Some(t) = &self.trace_id {
            l.str("trace_id", t);
        }
        l.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::access_log::{LogTime, McpFields};
    use crate::policy::decision::{ConditionOf, ConditionRan};
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// What serde writes for `rec` through the capping formatter: the reference.
    fn by_serde(rec: &AccessRecord<'_>, max: usize) -> String {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, CappingFormatter::new(max));
        rec.serialize(&mut ser).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn by_hand(rec: &AccessRecord<'_>, max: usize) -> String {
        let mut out = Vec::new();
        rec.encode_into(&mut out, max);
        String::from_utf8(out).unwrap()
    }

    /// Strings as an agent could make them: plain, with quotes, backslashes, control and
    /// non-ASCII characters, and long ones.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9/_.:-]{0,40}",
            "[ -~]{0,40}",
            "\\PC{0,30}",
            ".{0,20}[\"\\\\\u{1}\n\t\u{7f}é€😀]{1,3}.{0,20}",
            "[a-zé]{60,200}",
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn num() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0..10_000.0f64,
            Just(0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(1e-7),
            Just(123_456_789.125),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn the_hand_written_line_is_the_serde_line(
            strings in proptest::collection::vec(text(), 6),
            opts in proptest::collection::vec(opt_text(), 12),
            lists in proptest::collection::vec(proptest::collection::vec(text(), 0..3), 2),
            status in any::<u16>(),
            bytes in any::<(u32, u32)>(),
            version in any::<u64>(),
            dur in num(),
            up in proptest::option::of(num()),
            millis in 0u64..4_000_000_000_000,
            with_conditions in any::<bool>(),
            with_mcp in any::<bool>(),
            max in prop_oneof![Just(64usize), Just(1024usize), 64usize..300],
        ) {
            let conditions = if with_conditions {
                vec![ConditionRan {
                    condition: strings[5].as_str().into(),
                    of: ConditionOf::Route,
                    passed: true,
                }]
            } else {
                Vec::new()
            };
            let args = serde_json::json!({"q": strings[4]});
            let mcp = with_mcp.then(|| McpFields {
                method: opts[10].as_deref(),
                kind: Some("tool"),
                name: opts[11].as_deref(),
                args_sha256: None,
                rule: Some("tickets.*"),
                session: opts[9].as_deref(),
                arguments: Some(&args),
            });
            let rec = AccessRecord {
                time: LogTime(UNIX_EPOCH + Duration::from_millis(millis)),
                request_id: &strings[0],
                agent: opts[0].as_deref(),
                owner: opts[1].as_deref(),
                on_behalf_of: opts[2].as_deref(),
                prior_actors: &lists[0],
                jti: opts[3].as_deref(),
                issuer: opts[4].as_deref(),
                route: opts[5].as_deref(),
                method: &strings[1],
                host: opts[6].as_deref(),
                token_scopes: &lists[1],
                path: &strings[2],
                query: opts[7].as_deref(),
                client: opts[8].clone(),
                status,
                decision: "allow",
                reason: Some("insufficient_scope"),
                upstream: opts[9].as_deref(),
                bytes_in: bytes.0 as usize,
                bytes_out: bytes.1 as usize,
                duration_ms: dur,
                upstream_ms: up,
                config_version: version,
                approval_id: opts[10].as_deref(),
                would_deny: if with_conditions { Some("no_route") } else { None },
                conditions: &conditions,
                mcp,
                trace_id: opts[11].clone(),
            };
            prop_assert_eq!(by_hand(&rec, max), by_serde(&rec, max));
        }
    }

    #[test]
    fn a_minimal_line_is_the_serde_line() {
        let rec = AccessRecord {
            time: LogTime(UNIX_EPOCH + Duration::from_millis(1_764_000_000_123)),
            request_id: "r1",
            agent: None,
            owner: None,
            on_behalf_of: None,
            prior_actors: &[],
            jti: None,
            issuer: None,
            route: None,
            method: "GET",
            host: None,
            token_scopes: &[],
            path: "/",
            query: None,
            client: None,
            status: 0,
            decision: "deny",
            reason: None,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 0.25,
            upstream_ms: None,
            config_version: 1,
            approval_id: None,
            would_deny: None,
            conditions: &[],
            mcp: None,
            trace_id: None,
        };
        assert_eq!(by_hand(&rec, 1024), by_serde(&rec, 1024));
        assert!(by_hand(&rec, 1024).starts_with(r#"{"time":"2025-11-24T"#));
    }
}
