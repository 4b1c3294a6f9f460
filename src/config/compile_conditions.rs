//! Compile raw `conditions:` lists into [`Conditions`], reporting every problem with its field
//! path (`routes[2].conditions[1].time.zone`) so the compiler can attach the line.

use super::raw_conditions::{
    RawCel, RawCondition, RawHours, RawNetworkCondition, RawParamTest, RawTimeCondition,
    RawValueTest,
};
use crate::policy::conditions::{
    canonical_net, AnchoredRegex, CelCondition, Cmp, Condition, ConditionKind, Conditions,
    JsonTest, NetworkRule, OnFail, ParamTest, TimeWindow, ValueTest, DEFAULT_MAX_BODY_BYTES,
};
use chrono_tz::Tz;
use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;
use std::net::IpAddr;

/// Compile the list found at `base` (e.g. `routes[2].conditions`). Problems are pushed to
/// `errors` as `(field path, message)`; a condition with a problem is left out, and the caller
/// must not use the result when `errors` grew.
pub fn compile_conditions(
    base: &str,
    raw: &[RawCondition],
    errors: &mut Vec<(String, String)>,
) -> Conditions {
    let mut out = Vec::with_capacity(raw.len());
    let mut names: Vec<(String, String)> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let mut local = Vec::new();
        let c = entry(&format!("{base}[{i}]"), i, r, &mut names, &mut |p, m| {
            local.push((p, m))
        });
        // An entry with any problem is left out, even if it produced a condition.
        match c {
            Some(c) if local.is_empty() => out.push(c),
            _ => errors.append(&mut local),
        }
    }
    Conditions::new(out)
}

/// One entry at path `p`; `names` holds the names seen so far (path, name).
fn entry(
    p: &str,
    i: usize,
    r: &RawCondition,
    names: &mut Vec<(String, String)>,
    err: &mut Err<'_>,
) -> Option<Condition> {
    let on_fail = match r.on_fail.as_deref() {
        None | Some("deny") => OnFail::Deny,
        Some("approve") => OnFail::Approve,
        Some(other) => {
            err(
                format!("{p}.on_fail"),
                format!("`{other}` is not `deny` or `approve`"),
            );
            OnFail::Deny
        }
    };
    let mut kinds: Vec<(&'static str, Option<ConditionKind>)> = Vec::new();
    if let Some(t) = &r.time {
        kinds.push(("time", time(&format!("{p}.time"), t, err)));
    }
    if let Some(n) = &r.network {
        kinds.push(("network", network(&format!("{p}.network"), n, err)));
    }
    if let Some(c) = &r.claim {
        let t = value_test(&format!("{p}.claim"), c, "name", err);
        kinds.push(("claim", t.map(ConditionKind::Claim)));
    }
    if let Some(j) = &r.json {
        let jp = format!("{p}.json");
        let t = value_test(&jp, j, "field", err);
        let max = positive(&format!("{jp}.max_body_bytes"), j.max_body_bytes, err);
        kinds.push((
            "json",
            t.map(|test| {
                ConditionKind::Json(JsonTest {
                    test,
                    max_body_bytes: max,
                })
            }),
        ));
    }
    if let Some(q) = &r.query {
        let t = param_test(&format!("{p}.query"), q, false, err);
        kinds.push(("query", t.map(ConditionKind::Query)));
    }
    if let Some(h) = &r.header {
        let t = param_test(&format!("{p}.header"), h, true, err);
        kinds.push(("header", t.map(ConditionKind::Header)));
    }
    if let Some(n) = r.max_body_bytes {
        kinds.push(("max_body_bytes", Some(ConditionKind::MaxBodyBytes(n))));
    }
    if let Some(c) = &r.cel {
        let (expr, max, ep) = match c {
            RawCel::Expr(e) => (e, None, format!("{p}.cel")),
            RawCel::Detailed(d) => (&d.expr, d.max_body_bytes, format!("{p}.cel.expr")),
        };
        let max = positive(&format!("{p}.cel.max_body_bytes"), max, err);
        let kind = match CelCondition::compile(expr, max) {
            Ok(c) => Some(ConditionKind::Cel(c)),
            Err(e) => {
                err(ep, format!("invalid CEL expression: {e}"));
                None
            }
        };
        kinds.push(("cel", kind));
    }
    let kind_name = match kinds.as_slice() {
        [] => {
            err(
                p.into(),
                "set one of time, network, claim, json, query, header, max_body_bytes, cel".into(),
            );
            return None;
        }
        [(k, _)] => *k,
        more => {
            let set: Vec<&str> = more.iter().map(|(k, _)| *k).collect();
            err(
                p.into(),
                format!(
                    "one condition per entry, this one sets {}; split it into several entries",
                    set.join(" and ")
                ),
            );
            return None;
        }
    };
    let name = match &r.name {
        Some(n) if n.trim().is_empty() || n.chars().any(char::is_control) => {
            err(
                format!("{p}.name"),
                "must not be empty or contain control characters".into(),
            );
            return None;
        }
        Some(n) => n.clone(),
        None => format!("{kind_name}[{i}]"),
    };
    if let Some((first, _)) = names.iter().find(|(_, n)| *n == name) {
        err(
            format!("{p}.name"),
            format!("duplicate condition name `{name}` (first at {first})"),
        );
    }
    names.push((p.to_string(), name.clone()));
    let kind = kinds.pop().and_then(|(_, k)| k)?;
    Some(Condition {
        name: name.into(),
        on_fail,
        kind,
    })
}

type Err<'e> = dyn FnMut(String, String) + 'e;

fn positive(path: &str, v: Option<u64>, err: &mut Err<'_>) -> u64 {
    match v {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(0) => {
            err(path.into(), "must be at least 1".into());
            DEFAULT_MAX_BODY_BYTES
        }
        Some(n) => n,
    }
}

fn time(p: &str, t: &RawTimeCondition, err: &mut Err<'_>) -> Option<ConditionKind> {
    let mut ok = true;
    let zone: Option<Tz> = match t.zone.parse::<Tz>() {
        Ok(z) => Some(z),
        Err(_) => {
            err(
                format!("{p}.zone"),
                format!(
                    "`{}` is not an IANA time zone (such as `Europe/Paris` or `UTC`)",
                    t.zone
                ),
            );
            None
        }
    };
    let mut days = 0u8;
    for (j, d) in t.days.iter().enumerate() {
        match day_set(d) {
            Some(bits) => days |= bits,
            None => {
                err(
                    format!("{p}.days[{j}]"),
                    format!("`{d}` is not a day (`mon`..`sun`) or a range such as `mon-fri`"),
                );
                ok = false;
            }
        }
    }
    if t.days.is_empty() {
        days = 0x7f;
    }
    let hours: Vec<(String, &String)> = match &t.hours {
        None => Vec::new(),
        Some(RawHours::One(h)) => vec![(format!("{p}.hours"), h)],
        Some(RawHours::Many(hs)) => hs
            .iter()
            .enumerate()
            .map(|(j, h)| (format!("{p}.hours[{j}]"), h))
            .collect(),
    };
    if matches!(&t.hours, Some(RawHours::Many(v)) if v.is_empty()) {
        err(format!("{p}.hours"), "list at least one range".into());
        ok = false;
    }
    let mut ranges = Vec::new();
    for (hp, h) in &hours {
        match hour_range(h) {
            Ok(r) => ranges.push(r),
            Err(e) => {
                err(hp.clone(), e);
                ok = false;
            }
        }
    }
    if t.days.is_empty() && t.hours.is_none() {
        err(
            p.into(),
            "set `days`, `hours` or both (otherwise it always holds)".into(),
        );
        ok = false;
    }
    let zone = zone?;
    if !ok {
        return None;
    }
    let hours_text: Vec<&str> = hours.iter().map(|(_, h)| h.trim()).collect();
    if ranges.is_empty() {
        ranges.push((0, 1440));
    }
    let text = [
        days_text(days),
        hours_text.join(", "),
        zone.name().to_string(),
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    Some(ConditionKind::Time(TimeWindow {
        days,
        ranges,
        zone,
        text,
    }))
}

const DAYS: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn day_index(s: &str) -> Option<u8> {
    let s = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|(short, long)| s == *short || s == *long)
        .map(|i| i as u8)
}

/// `mon` or `mon-fri` (a range may wrap: `fri-mon`) as day bits.
fn day_set(s: &str) -> Option<u8> {
    match s.split_once('-') {
        None => day_index(s).map(|d| 1 << d),
        Some((a, b)) => {
            let (a, b) = (day_index(a)?, day_index(b)?);
            let mut bits = 0u8;
            let mut d = a;
            loop {
                bits |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
            Some(bits)
        }
    }
}

/// `Mon-Fri`, `Mon, Wed, Sat-Sun`; empty for every day.
fn days_text(days: u8) -> String {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    if days == 0x7f {
        return String::new();
    }
    let mut parts = Vec::new();
    let mut d = 0;
    while d < 7 {
        if days & (1 << d) == 0 {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 7 && days & (1 << (d + 1)) != 0 {
            d += 1;
        }
        parts.push(if start == d {
            NAMES[d].to_string()
        } else {
            format!("{}-{}", NAMES[start], NAMES[d])
        });
        d += 1;
    }
    parts.join(", ")
}

/// `HH:MM-HH:MM` → minutes; the end may be `24:00`; equal ends are refused (all day or never?).
fn hour_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{s}` is not a range `HH:MM-HH:MM` such as `09:00-18:00`");
    let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
    let minute = |t: &str, end: bool| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        match (h, m) {
            (24, 0) if end => Some(1440),
            (0..=23, 0..=59) => Some(h * 60 + m),
            _ => None,
        }
    };
    let (a, b) = (
        minute(a, false).ok_or_else(bad)?,
        minute(b, true).ok_or_else(bad)?,
    );
    if a == b % 1440 {
        return Err(format!(
            "`{s}` starts where it ends; write `00:00-24:00` for the whole day"
        ));
    }
    Ok((a, b))
}

fn network(p: &str, n: &RawNetworkCondition, err: &mut Err<'_>) -> Option<ConditionKind> {
    if n.from.is_empty() && n.not_from.is_empty() {
        err(
            p.into(),
            "list networks in `from`, `not_from` or both".into(),
        );
        return None;
    }
    let mut ok = true;
    let mut parse = |field: &str, list: &[String]| -> Vec<IpNet> {
        let mut out = Vec::new();
        for (j, s) in list.iter().enumerate() {
            match cidr(s) {
                Ok(net) => out.push(canonical_net(net)),
                Err(e) => {
                    err(format!("{p}.{field}[{j}]"), e);
                    ok = false;
                }
            }
        }
        out
    };
    let from = parse("from", &n.from);
    let not_from = parse("not_from", &n.not_from);
    ok.then_some(ConditionKind::Network(NetworkRule { from, not_from }))
}

/// A CIDR or one address; host bits must be zero (`10.1.0.0/8` is probably a typo).
fn cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = s
        .parse()
        .map_err(|_| format!("`{s}` is not a network such as `10.0.0.0/8` or an address"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{s}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn scalar(path: String, v: &Value, err: &mut Err<'_>) -> bool {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
        _ => {
            err(path, "must be a string, number or boolean".into());
            false
        }
    }
}

/// `field_key` is `name` (claims) or `field` (JSON body).
fn value_test(p: &str, r: &RawValueTest, field_key: &str, err: &mut Err<'_>) -> Option<ValueTest> {
    let mut ok = true;
    let (path, other) = if field_key == "name" {
        (&r.name, (&r.field, "field"))
    } else {
        (&r.field, (&r.name, "name"))
    };
    if other.0.is_some() {
        err(
            format!("{p}.{}", other.1),
            format!("use `{field_key}` here"),
        );
        ok = false;
    }
    if field_key == "name" && r.max_body_bytes.is_some() {
        err(
            format!("{p}.max_body_bytes"),
            "only `json` conditions read the body".into(),
        );
        ok = false;
    }
    let label = match path {
        Some(s) if !s.is_empty() && s.split('.').all(|seg| !seg.is_empty()) => s.clone(),
        Some(s) => {
            err(
                format!("{p}.{field_key}"),
                format!("`{s}` is not a dotted path such as `act.sub`"),
            );
            return None;
        }
        None => {
            err(p.into(), format!("`{field_key}` is required"));
            return None;
        }
    };
    if let Some(v) = &r.equals {
        ok &= scalar(format!("{p}.equals"), v, err);
    }
    if let Some(v) = &r.contains {
        ok &= scalar(format!("{p}.contains"), v, err);
    }
    if let Some(list) = &r.any_of {
        if list.is_empty() {
            err(format!("{p}.in"), "list at least one value".into());
            ok = false;
        }
        for (j, v) in list.iter().enumerate() {
            ok &= scalar(format!("{p}.in[{j}]"), v, err);
        }
    }
    let cmp: Vec<(Cmp, serde_json::Number)> = [
        (Cmp::Gt, &r.gt),
        (Cmp::Gte, &r.gte),
        (Cmp::Lt, &r.lt),
        (Cmp::Lte, &r.lte),
    ]
    .into_iter()
    .filter_map(|(c, n)| n.clone().map(|n| (c, n)))
    .collect();
    let lower = r.gt.as_ref().or(r.gte.as_ref()).and_then(|n| n.as_f64());
    let upper = r.lt.as_ref().or(r.lte.as_ref()).and_then(|n| n.as_f64());
    if let (Some(lo), Some(hi)) = (lower, upper) {
        if lo > hi {
            err(
                p.into(),
                format!("the lower bound {lo} is above the upper bound {hi}: it never holds"),
            );
            ok = false;
        }
    }
    let tests = r.equals.is_some() as usize
        + r.any_of.is_some() as usize
        + r.contains.is_some() as usize
        + cmp.len()
        + r.present.is_some() as usize;
    if tests == 0 {
        err(
            p.into(),
            "set a test: equals, in, contains, gt, gte, lt, lte or present".into(),
        );
        ok = false;
    }
    if r.present == Some(false) && tests > 1 {
        err(
            format!("{p}.present"),
            "`present: false` cannot be combined with other tests".into(),
        );
        ok = false;
    }
    ok.then(|| ValueTest {
        path: label.split('.').map(str::to_string).collect(),
        label,
        equals: r.equals.clone(),
        any_of: r.any_of.clone().unwrap_or_default(),
        contains: r.contains.clone(),
        cmp,
        present: r.present,
    })
}

fn param_test(p: &str, r: &RawParamTest, header: bool, err: &mut Err<'_>) -> Option<ParamTest> {
    let mut ok = true;
    let (name, header_name) = if header {
        match HeaderName::from_bytes(r.name.trim().as_bytes()) {
            Ok(h) => (h.as_str().to_string(), Some(h)),
            Err(_) => {
                err(
                    format!("{p}.name"),
                    format!("`{}` is not a header name", r.name),
                );
                return None;
            }
        }
    } else if r.name.is_empty() {
        err(format!("{p}.name"), "must not be empty".into());
        return None;
    } else {
        (r.name.clone(), None)
    };
    let regex = match &r.regex {
        None => None,
        Some(rx) => match Regex::new(&format!("^(?:{rx})$")) {
            Ok(re) => Some(AnchoredRegex(re)),
            Err(e) => {
                err(format!("{p}.regex"), format!("invalid regex: {e}"));
                ok = false;
                None
            }
        },
    };
    if matches!(&r.any_of, Some(l) if l.is_empty()) {
        err(format!("{p}.in"), "list at least one value".into());
        ok = false;
    }
    let tests = r.equals.is_some() as usize
        + r.any_of.is_some() as usize
        + r.present.is_some() as usize
        + r.regex.is_some() as usize;
    if tests == 0 {
        err(p.into(), "set a test: equals, in, present or regex".into());
        ok = false;
    }
    if r.present == Some(false) && tests > 1 {
        err(
            format!("{p}.present"),
            "`present: false` cannot be combined with other tests".into(),
        );
        ok = false;
    }
    ok.then(|| ParamTest {
        name,
        header: header_name,
        equals: r.equals.clone(),
        any_of: r.any_of.clone().unwrap_or_default(),
        present: r.present,
        regex,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, LoadContext};
    use crate::identity::KeyStore;
    use crate::policy::conditions::ConditionKind;
    use std::path::Path;
    use std::sync::Arc;

    fn ctx() -> LoadContext {
        LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1)
    }

    /// A valid gateway file whose first route and agent carry `route` and `agent` conditions.
    fn config(route: &str, agent: &str) -> String {
        config_with(route, agent, "")
    }

    /// [`config`] with `extra` top-level sections.
    fn config_with(route: &str, agent: &str, extra: &str) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
        format!(
            r#"issuers:
  - name: idp
    issuer: https://idp.example.test
    audiences: [tools]
    algorithms: [ES256]
    jwks_file: {dir}/jwks.json
agents:
  - id: bot
    owner: alice@example.com
    scopes: [tickets:read]
    conditions:
{agent}
upstreams:
  - name: tickets
    url: http://127.0.0.1:9/
routes:
  - name: tickets
    path: /api/**
    upstream: tickets
    scopes: [tickets:read]
    conditions:
{route}
{extra}"#
        )
    }

    #[test]
    fn conditions_config_compiles_into_routes_and_agents() {
        let route = r#"      - name: business-hours
        time: {days: [mon, tue, wed, thu, fri], hours: "09:00-18:00", zone: Europe/Paris}
      - network: {from: [10.0.0.0/8, 192.168.0.0/16], not_from: [10.6.0.0/16]}
      - claim: {name: env, equals: prod}
      - claim: {name: device_trust, gte: 3}
      - json: {field: amount, lte: 100, max_body_bytes: 4096}
        on_fail: approve
      - query: {name: limit, regex: "[0-9]{1,3}"}
      - header: {name: X-Env, in: [prod, staging]}
      - max_body_bytes: 1048576
      - cel: 'request.method == "GET" || token.claims.env == "prod"'"#;
        let agent = "      - time: {hours: [\"08:00-12:00\", \"22:00-02:00\"], zone: UTC}";
        let approvals = format!(
            "approvals:\n  store: a.db\n  approvers:\n    - {{name: alice, token_sha256: \"{}\"}}\n",
            "ab".repeat(32)
        );
        let snap = load_str(
            &config_with(route, agent, &approvals),
            Path::new("."),
            "<test>",
            &ctx(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = &snap.routes.routes[0];
        assert_eq!(r.conditions.len(), 9);
        assert_eq!(r.conditions.needs_body(), Some(4096));
        let names: Vec<&str> = r.conditions.iter().map(|c| &**c.name()).collect();
        assert_eq!(
            names,
            [
                "business-hours",
                "network[1]",
                "claim[2]",
                "claim[3]",
                "json[4]",
                "query[5]",
                "header[6]",
                "max_body_bytes[7]",
                "cel[8]"
            ]
        );
        match r.conditions.iter().next().unwrap().kind() {
            ConditionKind::Time(t) => assert_eq!(t.text, "Mon-Fri 09:00-18:00 Europe/Paris"),
            other => panic!("{other:?}"),
        }
        let a = &snap.agents["bot"];
        assert_eq!(a.conditions.len(), 1);
        assert_eq!(a.conditions.needs_body(), None);
    }

    #[test]
    fn conditions_config_reports_each_bad_value_with_its_path_and_line() {
        let route = r#"      - time: {days: [mon, funday], hours: "9-18", zone: Europe/Pariss}
      - network: {from: [10.0.0.300/8, 10.1.0.0/8]}
      - claim: {name: env, equals: [prod]}
      - claim: {name: device_trust, gte: 3.5, lte: 2}
      - json: {field: amount}
      - query: {name: limit, regex: "[0-9"}
      - header: {name: "bad header", equals: x}
      - cel: 'request.method =='
      - cel: 'reqest.method == "GET"'
      - claim: {name: env, equals: prod}
        network: {from: [10.0.0.0/8]}
        on_fail: maybe
      - name: twice
        max_body_bytes: 1
      - name: twice
        max_body_bytes: 2
      - {}
      - max_body_bytes: 3
        on_fail: approve"#;
        let agent = "      - network: {not_from: ['::ffff:10.0.0.1/200']}";
        let err = load_str(&config(route, agent), Path::new("."), "<test>", &ctx())
            .expect_err("must be refused");
        let got: Vec<(String, Option<usize>, String)> = err
            .issues()
            .iter()
            .map(|i| (i.path.clone(), i.line, i.kind.to_string()))
            .collect();
        let has = |path: &str, text: &str| {
            assert!(
                got.iter()
                    .any(|(p, line, m)| p == path && line.is_some() && m.contains(text)),
                "no `{text}` at {path} in {got:#?}"
            )
        };
        let c = "routes[0].conditions";
        has(&format!("{c}[0].time.days[1]"), "`funday` is not a day");
        has(&format!("{c}[0].time.hours"), "`9-18` is not a range");
        has(
            &format!("{c}[0].time.zone"),
            "`Europe/Pariss` is not an IANA time zone",
        );
        has(
            &format!("{c}[1].network.from[0]"),
            "`10.0.0.300/8` is not a network",
        );
        has(
            &format!("{c}[1].network.from[1]"),
            "did you mean `10.0.0.0/8`?",
        );
        has(
            &format!("{c}[2].claim.equals"),
            "must be a string, number or boolean",
        );
        has(&format!("{c}[3].claim"), "never holds");
        has(&format!("{c}[4].json"), "set a test");
        has(&format!("{c}[5].query.regex"), "invalid regex");
        has(&format!("{c}[6].header.name"), "is not a header name");
        has(
            &format!("{c}[7].cel"),
            "invalid CEL expression: expression line 1 column",
        );
        has(&format!("{c}[8].cel"), "unknown variable `reqest`");
        has(&format!("{c}[9]"), "one condition per entry");
        has(
            &format!("{c}[9].on_fail"),
            "`maybe` is not `deny` or `approve`",
        );
        has(&format!("{c}[11].name"), "duplicate condition name `twice`");
        has(&format!("{c}[12]"), "set one of time, network");
        has(
            "agents[0].conditions[0].network.not_from[0]",
            "is not a network",
        );
        has(
            &format!("{c}[13].on_fail"),
            "`approve` needs an `approvals:` section",
        );
    }

    #[test]
    fn tier_conditions_attach_to_every_agent_of_the_tier() {
        let approvals = format!(
            "approvals:\n  store: a.db\n  approvers:\n    - {{name: alice, token_sha256: \"{}\"}}\n",
            "ab".repeat(32)
        );
        let tiers = r#"tiers:
  standard:
    conditions:
      - name: prod-only
        claim: {name: env, equals: prod}
  supervised:
    conditions:
      - name: office-hours
        time: {hours: "09:00-18:00", zone: UTC}
      - network: {from: [10.0.0.0/8]}
"#;
        let mut text = config_with(
            "      - max_body_bytes: 10",
            "      - max_body_bytes: 20",
            &format!("{approvals}{tiers}"),
        );
        text = text.replace(
            "agents:\n",
            "agents:\n  - id: intern\n    owner: bob@example.com\n    tier: supervised\n    scopes: [tickets:read]\n",
        );
        let snap =
            load_str(&text, Path::new("."), "<test>", &ctx()).unwrap_or_else(|e| panic!("{e}"));
        let names = |c: &crate::policy::conditions::Conditions| -> Vec<String> {
            c.iter().map(|c| c.name().to_string()).collect()
        };
        assert_eq!(names(&snap.agents["bot"].tier_conditions), ["prod-only"]);
        assert_eq!(names(&snap.agents["bot"].conditions), ["max_body_bytes[0]"]);
        assert_eq!(
            names(&snap.agents["intern"].tier_conditions),
            ["office-hours", "network[1]"]
        );
        assert!(snap.agents["intern"].conditions.is_empty());

        // Problems are reported at the tier's path; an unknown tier is a shape error.
        let bad = config_with(
            "      - max_body_bytes: 10",
            "      - max_body_bytes: 20",
            "tiers:\n  standard:\n    conditions:\n      - network: {from: [10.0.0.300/8]}\n      - max_body_bytes: 1\n        on_fail: approve\n",
        );
        let err = load_str(&bad, Path::new("."), "<test>", &ctx()).expect_err("must be refused");
        let msgs: Vec<String> = err
            .issues()
            .iter()
            .map(|i| format!("{} {:?} {}", i.path, i.line, i.kind))
            .collect();
        assert!(
            msgs.iter().any(|m| m
                .starts_with("tiers.standard.conditions[0].network.from[0] Some(")
                && m.contains("is not a network")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("tiers.standard.conditions[1].on_fail")
                    && m.contains("needs an `approvals:` section")),
            "{msgs:#?}"
        );
        let unknown = config_with(
            "      - max_body_bytes: 10",
            "      - max_body_bytes: 20",
            "tiers:\n  trusted:\n    conditions: []\n",
        );
        let err =
            load_str(&unknown, Path::new("."), "<test>", &ctx()).expect_err("must be refused");
        assert!(err.to_string().contains("unknown field `trusted`"), "{err}");
    }

    /// Shape errors come from the YAML parser (the route is then left out as a whole), with
    /// their path and line too.
    #[test]
    fn conditions_config_shape_errors_name_their_field() {
        for (cond, path, text) in [
            (
                "      - claim: {name: device_trust, gte: \"3\"}",
                "routes[0].conditions[0].claim.gte",
                "expected a JSON number",
            ),
            (
                "      - clam: {name: env, equals: prod}",
                "routes[0].conditions[0]",
                "unknown field `clam`",
            ),
            (
                "      - time: {zone: UTC, hour: \"09:00-10:00\"}",
                "routes[0].conditions[0].time",
                "unknown field `hour`",
            ),
        ] {
            let agent = "      - max_body_bytes: 10";
            let err = load_str(&config(cond, agent), Path::new("."), "<test>", &ctx())
                .expect_err("must be refused");
            assert!(
                err.issues().iter().any(|i| i.path.starts_with(path)
                    && i.line.is_some()
                    && i.kind.to_string().contains(text)),
                "{cond}: {err}"
            );
        }
    }
}
