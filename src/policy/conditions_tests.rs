//! Table-driven tests of every condition kind, passing and failing, with the ways an agent
//! (or a prompt injected into one) would try to get around them.

use super::*;
use crate::config::compile_conditions::compile_conditions;
use crate::config::raw_conditions::RawCondition;
use http::HeaderValue;
use serde_json::json;

fn compile(yaml: &str) -> Conditions {
    let raw: Vec<RawCondition> = serde_yaml::from_str(yaml).expect("yaml");
    let mut errors = Vec::new();
    let c = compile_conditions("conditions", &raw, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

fn at(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("time")
        .with_timezone(&Utc)
        .into()
}

/// An owned request the facts borrow from.
struct Req {
    now: SystemTime,
    ip: Option<IpAddr>,
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body_len: Option<u64>,
    claims: Map<String, Value>,
    body: Option<Value>,
    body_state: Option<&'static str>,
}

impl Req {
    fn new() -> Req {
        Req {
            now: at("2026-11-30T10:00:00Z"),
            ip: Some("10.1.2.3".parse().unwrap()),
            method: Method::GET,
            path: "/api/x".into(),
            query: None,
            headers: HeaderMap::new(),
            body_len: Some(0),
            claims: Map::new(),
            body: None,
            body_state: None,
        }
    }
    fn claims(mut self, v: Value) -> Req {
        self.claims = v.as_object().unwrap().clone();
        self
    }
    fn body(mut self, v: Value) -> Req {
        self.body = Some(v);
        self
    }
    fn query(mut self, q: &str) -> Req {
        self.query = Some(q.into());
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Req {
        self.headers
            .append(k, HeaderValue::from_bytes(v.as_bytes()).unwrap());
        self
    }
    fn facts(&self) -> ConditionFacts<'_> {
        ConditionFacts {
            now: self.now,
            client_ip: self.ip,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            body_len: self.body_len,
            claims: &self.claims,
            agent: "bot",
            body: match (&self.body, self.body_state) {
                (Some(v), _) => BodyFact::Json(v),
                (None, Some("large")) => BodyFact::TooLarge,
                (None, Some(why)) => BodyFact::NotJson(why),
                (None, None) => BodyFact::NotRead,
            },
        }
    }
}

/// Check one compiled list; `Ok` on pass, else the reason of the deciding condition.
fn run(c: &Conditions, r: &Req) -> Result<(), String> {
    match c.check(&r.facts()).outcome {
        ConditionOutcome::Pass => Ok(()),
        ConditionOutcome::Deny { reason, .. }
        | ConditionOutcome::RequireApproval { reason, .. } => Err(reason),
    }
}

fn expect(c: &Conditions, r: &Req, pass: bool, case: &str) {
    let got = run(c, r);
    assert_eq!(got.is_ok(), pass, "{case}: {got:?}");
}

#[test]
fn conditions_time_window_in_a_named_zone() {
    let c = compile(r#"[{time: {days: [mon-fri], hours: "09:00-18:00", zone: Europe/Paris}}]"#);
    // 2026-11-30 is a Monday; Paris is UTC+1 in winter.
    let table = [
        ("2026-11-30T08:30:00Z", true, "Mon 09:30 Paris"),
        ("2026-11-30T07:59:59Z", false, "Mon 08:59 Paris"),
        (
            "2026-11-30T08:00:00Z",
            true,
            "Mon 09:00 Paris, start is inclusive",
        ),
        ("2026-11-30T16:59:59Z", true, "Mon 17:59 Paris"),
        (
            "2026-11-30T17:00:00Z",
            false,
            "Mon 18:00 Paris, end is exclusive",
        ),
        ("2026-12-05T10:00:00Z", false, "Saturday"),
        ("2026-12-04T16:30:00Z", true, "Friday 17:30"),
        // Summer time: UTC+2. 07:30Z is 09:30 CEST (a fixed +1 would say 08:30 and refuse).
        ("2026-03-30T07:30:00Z", true, "Mon after the spring change"),
        ("2026-03-30T16:30:00Z", false, "Mon 18:30 CEST"),
    ];
    for (t, pass, case) in table {
        let mut r = Req::new();
        r.now = at(t);
        expect(&c, &r, pass, case);
    }
    let mut r = Req::new();
    r.now = at("2026-11-30T07:30:00Z");
    assert_eq!(
        run(&c, &r).unwrap_err(),
        "outside the allowed hours Mon-Fri 09:00-18:00 Europe/Paris (now Mon 08:30)"
    );
}

#[test]
fn conditions_time_window_crossing_midnight_and_dst_edges() {
    // The early hours belong to the day the window began on.
    let night = compile(r#"[{time: {days: [fri], hours: "22:00-06:00", zone: UTC}}]"#);
    for (t, pass, case) in [
        ("2026-12-04T23:00:00Z", true, "Fri 23:00"),
        (
            "2026-12-05T05:59:00Z",
            true,
            "Sat 05:59 belongs to Friday night",
        ),
        ("2026-12-05T06:00:00Z", false, "Sat 06:00"),
        ("2026-12-05T23:00:00Z", false, "Sat 23:00"),
        (
            "2026-12-04T05:00:00Z",
            false,
            "Fri 05:00 belongs to Thursday night",
        ),
    ] {
        let mut r = Req::new();
        r.now = at(t);
        expect(&night, &r, pass, case);
    }
    // Spring forward in Paris, 2026-03-29 01:00Z: local 02:00-03:00 does not exist.
    let gap = compile(r#"[{time: {hours: "02:00-03:00", zone: Europe/Paris}}]"#);
    for (t, pass, case) in [
        ("2026-03-29T00:59:59Z", false, "01:59 CET"),
        (
            "2026-03-29T01:00:00Z",
            false,
            "03:00 CEST, right after the gap",
        ),
        // Fall back, 2026-10-25 01:00Z: 02:00-03:00 happens twice, both are inside.
        ("2026-10-25T00:30:00Z", true, "02:30 CEST"),
        ("2026-10-25T01:30:00Z", true, "02:30 CET, the second time"),
        ("2026-10-25T02:00:00Z", false, "03:00 CET"),
    ] {
        let mut r = Req::new();
        r.now = at(t);
        expect(&gap, &r, pass, case);
    }
    let all_day = compile(r#"[{time: {days: [sat, sunday], zone: America/New_York}}]"#);
    for (t, pass, case) in [
        // Sat 00:30 UTC is still Friday evening in New York.
        ("2026-12-05T00:30:00Z", false, "Fri 19:30 EST"),
        ("2026-12-05T05:00:00Z", true, "Sat 00:00 EST"),
        ("2026-12-07T04:59:00Z", true, "Sun 23:59 EST"),
    ] {
        let mut r = Req::new();
        r.now = at(t);
        expect(&all_day, &r, pass, case);
    }
    let mut r = Req::new();
    r.now = UNIX_EPOCH - std::time::Duration::from_secs(1);
    expect(&all_day, &r, false, "a time before 1970 fails closed");
}

#[test]
fn conditions_network_allow_and_deny_lists() {
    let c = compile("[{network: {from: [10.0.0.0/8, 2001:db8::/32], not_from: [10.6.0.0/16]}}]");
    for (ip, pass, case) in [
        (Some("10.1.2.3"), true, "allowed"),
        (Some("10.6.0.1"), false, "in the denied subnet"),
        (Some("192.168.1.1"), false, "outside"),
        (Some("2001:db8::1"), true, "IPv6 allowed"),
        (Some("2001:db9::1"), false, "IPv6 outside"),
        // Dual-stack sockets report IPv4 clients as IPv4-mapped IPv6.
        (Some("::ffff:10.1.2.3"), true, "mapped IPv4 allowed"),
        (Some("::ffff:10.6.0.1"), false, "mapped IPv4 still denied"),
        (Some("::ffff:192.168.1.1"), false, "mapped IPv4 outside"),
        (None, false, "unknown address fails closed"),
    ] {
        let mut r = Req::new();
        r.ip = ip.map(|s| s.parse().unwrap());
        expect(&c, &r, pass, case);
    }
    let mut r = Req::new();
    r.ip = Some("::ffff:10.6.0.1".parse().unwrap());
    assert_eq!(
        run(&c, &r).unwrap_err(),
        "client 10.6.0.1 is in the denied network 10.6.0.0/16"
    );
    // A mapped network in the config means the IPv4 network.
    let mapped = compile("[{network: {not_from: ['::ffff:10.0.0.0/104']}}]");
    let mut r = Req::new();
    r.ip = Some("10.9.9.9".parse().unwrap());
    expect(&mapped, &r, false, "IPv4 client against a mapped deny-list");
    r.ip = Some("11.0.0.1".parse().unwrap());
    expect(&mapped, &r, true, "outside the mapped deny-list");
}

#[test]
fn conditions_claims_equality_membership_numbers_presence() {
    let env = compile("[{claim: {name: env, equals: prod}}]");
    let trust = compile("[{claim: {name: device_trust, gte: 3}}]");
    let tier = compile("[{claim: {name: env, in: [prod, staging]}}]");
    let act = compile("[{claim: {name: act.sub, equals: 'user:alice'}}]");
    let no_act = compile("[{claim: {name: act, present: false}}]");
    let roles = compile("[{claim: {name: roles, contains: admin}}]");
    let big = compile("[{claim: {name: n, gt: 9007199254740992}}]");
    let table: Vec<(&Conditions, Value, bool, &str)> = vec![
        (&env, json!({"env": "prod"}), true, "equal"),
        (&env, json!({"env": "dev"}), false, "different"),
        (
            &env,
            json!({"env": ["prod"]}),
            false,
            "a list never equals a scalar",
        ),
        (
            &env,
            json!({"env": ["dev", "prod"]}),
            false,
            "nor does a longer list",
        ),
        (&env, json!({}), false, "missing"),
        (&env, json!({"env": null}), false, "null is missing"),
        (&env, json!({"env": "Prod"}), false, "case matters"),
        (&trust, json!({"device_trust": 3}), true, "equal bound"),
        (
            &trust,
            json!({"device_trust": 3.0}),
            true,
            "float equal bound",
        ),
        (&trust, json!({"device_trust": 2}), false, "below"),
        (
            &trust,
            json!({"device_trust": "3"}),
            false,
            "a string is not a number",
        ),
        (
            &trust,
            json!({"device_trust": true}),
            false,
            "a boolean is not a number",
        ),
        (
            &trust,
            json!({"device_trust": [5]}),
            false,
            "a list is not a number",
        ),
        (&trust, json!({"device_trust": -1}), false, "negative"),
        (&tier, json!({"env": "staging"}), true, "member"),
        (&tier, json!({"env": "dev"}), false, "not a member"),
        (
            &tier,
            json!({"env": ["staging"]}),
            false,
            "a list is not a member",
        ),
        (&act, json!({"act": {"sub": "user:alice"}}), true, "nested"),
        (
            &act,
            json!({"act": {"sub": "user:mallory"}}),
            false,
            "nested differs",
        ),
        (&act, json!({"act": "user:alice"}), false, "not an object"),
        (
            &act,
            json!({"act.sub": "user:alice"}),
            false,
            "a dotted key is not a path",
        ),
        (&no_act, json!({}), true, "absent"),
        (&no_act, json!({"act": {"sub": "x"}}), false, "present"),
        (
            &roles,
            json!({"roles": ["reader", "admin"]}),
            true,
            "contained",
        ),
        (&roles, json!({"roles": ["reader"]}), false, "not contained"),
        (
            &roles,
            json!({"roles": "admin"}),
            false,
            "a string is not a list",
        ),
        (
            &big,
            json!({"n": 9007199254740993u64}),
            true,
            "exact above 2^53",
        ),
        (
            &big,
            json!({"n": 9007199254740992u64}),
            false,
            "equal is not greater",
        ),
        (&big, json!({"n": 9007199254740992.0}), false, "float equal"),
    ];
    for (c, claims, pass, case) in table {
        expect(c, &Req::new().claims(claims), pass, case);
    }
    let r = Req::new().claims(json!({"env": "dev"}));
    assert_eq!(
        run(&env, &r).unwrap_err(),
        "claim env is `dev`, needs `prod`"
    );
    let r = Req::new().claims(json!({"device_trust": "9"}));
    assert_eq!(
        run(&trust, &r).unwrap_err(),
        "claim device_trust is `9`, needs a number >= 3"
    );
    let r = Req::new().claims(json!({"env": "x\n`y".repeat(40)}));
    let reason = run(&tier, &r).unwrap_err();
    assert!(!reason.contains('\n') && reason.contains('…'), "{reason}");
}

#[test]
fn conditions_json_body_fields_fail_closed() {
    let c = compile("[{json: {field: amount, lte: 100}}]");
    let nested = compile("[{json: {field: payment.amount, lt: 100, gt: 0}}]");
    let body = |v: Value| Req::new().body(v);
    let table: Vec<(&Conditions, Req, bool, &str)> = vec![
        (&c, body(json!({"amount": 100})), true, "at the bound"),
        (&c, body(json!({"amount": 99.5})), true, "float below"),
        (&c, body(json!({"amount": 250})), false, "above"),
        (
            &c,
            body(json!({"amount": "100"})),
            false,
            "a string is not a number",
        ),
        (&c, body(json!({"amount": "5"})), false, "even a small one"),
        (&c, body(json!({})), false, "missing"),
        (&c, body(json!({"amount": null})), false, "null"),
        (&c, body(json!([{"amount": 1}])), false, "top-level list"),
        (&c, Req::new(), false, "body not read"),
        (
            &nested,
            body(json!({"payment": {"amount": 50}})),
            true,
            "nested",
        ),
        (
            &nested,
            body(json!({"payment": {"amount": 0}})),
            false,
            "nested at the exclusive bound",
        ),
        (
            &nested,
            body(json!({"payment": {"amount": 100}})),
            false,
            "nested above",
        ),
    ];
    for (c, r, pass, case) in table {
        expect(c, &r, pass, case);
    }
    let r = body(json!({"amount": 250}));
    assert_eq!(run(&c, &r).unwrap_err(), "amount 250 > 100");
    let mut r = Req::new();
    r.body_state = Some("large");
    assert_eq!(
        run(&c, &r).unwrap_err(),
        "body field amount cannot be checked: the body is larger than 65536 bytes"
    );
    r.body_state = Some("expected value at line 1 column 1");
    assert!(run(&c, &r).unwrap_err().contains("not valid JSON"));
    assert_eq!(c.needs_body(), Some(DEFAULT_MAX_BODY_BYTES));
}

#[test]
fn conditions_json_body_parser_refuses_duplicate_keys() {
    assert_eq!(
        parse_json_body(br#"{"amount": 5, "b": [1, {"c": true}]}"#).unwrap(),
        json!({"amount": 5, "b": [1, {"c": true}]})
    );
    for (body, case) in [
        (&br#"{"amount": 5, "amount": 5000}"#[..], "top level"),
        (br#"{"p": {"amount": 5, "amount": 5000}}"#, "nested"),
        (br#"[{"a": 1, "a": 1}]"#, "in a list"),
        (br#"{"amount": 5} {"amount": 5000}"#, "two documents"),
        (br#"{"amount": 5"#, "truncated"),
        (b"\xff", "not UTF-8"),
    ] {
        assert!(parse_json_body(body).is_err(), "{case}");
    }
    let e = parse_json_body(br#"{"amount": 5, "amount": 5000}"#).unwrap_err();
    assert!(e.contains("`amount` appears more than once"), "{e}");
    // Nesting is bounded (serde_json's recursion limit), so a deep body cannot exhaust the stack.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_json_body(deep.as_bytes()).is_err());
    // Escaped key spellings are the same key once decoded.
    assert!(parse_json_body(br#"{"amount": 5, "\u0061mount": 5000}"#).is_err());
}

#[test]
fn conditions_query_and_header_matchers() {
    let mode = compile("[{query: {name: mode, equals: read}}]");
    let limit = compile("[{query: {name: limit, regex: '[0-9]{1,3}'}}]");
    let no_debug = compile("[{query: {name: debug, present: false}}]");
    let env = compile("[{header: {name: X-Env, in: [prod, staging]}}]");
    let no_override = compile("[{header: {name: x-sudo, present: false}}]");
    let q = |s: &str| Req::new().query(s);
    let table: Vec<(&Conditions, Req, bool, &str)> = vec![
        (&mode, q("mode=read"), true, "equal"),
        (&mode, q("a=1&mode=read&b=2"), true, "among others"),
        (&mode, q("mode=write"), false, "different"),
        (
            &mode,
            q("mode=read&mode=write"),
            false,
            "repeated: parameter pollution",
        ),
        (
            &mode,
            q("%6Dode=write&mode=read"),
            false,
            "repeated under an encoded name",
        ),
        (&mode, q("mode=re%61d"), true, "encoded value is decoded"),
        (&mode, q("mode"), false, "empty value"),
        (&mode, Req::new(), false, "no query"),
        (&limit, q("limit=50"), true, "regex"),
        (
            &limit,
            q("limit=50;drop"),
            false,
            "regex is anchored at the end",
        ),
        (
            &limit,
            q("limit=x50"),
            false,
            "regex is anchored at the start",
        ),
        (&limit, q("limit=5000"), false, "too long"),
        (&no_debug, q("a=1"), true, "absent"),
        (&no_debug, q("debug="), false, "present, even empty"),
        (&env, Req::new().header("x-env", "prod"), true, "member"),
        (
            &env,
            Req::new().header("x-env", "dev"),
            false,
            "not a member",
        ),
        (
            &env,
            Req::new().header("x-env", "prod").header("x-env", "dev"),
            false,
            "sent twice",
        ),
        (
            &env,
            Req::new().header("x-env", "prod").header("x-env", "prod"),
            false,
            "sent twice, same",
        ),
        (&env, Req::new(), false, "missing"),
        (
            &env,
            Req::new().header("x-env", "pr\u{f6}d"),
            false,
            "not text",
        ),
        (&no_override, Req::new(), true, "absent"),
        (
            &no_override,
            Req::new().header("x-sudo", ""),
            false,
            "present empty",
        ),
    ];
    for (c, r, pass, case) in table {
        expect(c, &r, pass, case);
    }
    let r = Req::new().header("x-env", "prod").header("x-env", "dev");
    assert_eq!(
        run(&env, &r).unwrap_err(),
        "header x-env is sent 2 times, must be sent once"
    );
}

#[test]
fn conditions_max_body_bytes() {
    let c = compile("[{max_body_bytes: 10}]");
    for (len, pass, case) in [
        (Some(0), true, "empty"),
        (Some(10), true, "at the limit"),
        (Some(11), false, "above"),
        (None, false, "unknown length fails closed"),
    ] {
        let mut r = Req::new();
        r.body_len = len;
        expect(&c, &r, pass, case);
    }
    assert_eq!(c.needs_body(), None);
}

#[test]
fn conditions_cel_expressions() {
    let either = compile(r#"[{cel: 'request.method == "GET" || token.claims.env == "prod"'}]"#);
    let mut post = Req::new().claims(json!({"env": "dev"}));
    post.method = Method::POST;
    expect(&either, &Req::new(), true, "GET");
    expect(&either, &post, false, "POST from dev");
    post.claims = json!({"env": "prod"}).as_object().unwrap().clone();
    expect(&either, &post, true, "POST from prod");

    let table: Vec<(&str, Req, bool, &str)> = vec![
        (
            r#"token.claims.env == "prod""#,
            Req::new(),
            false,
            "missing claim errors: fails closed",
        ),
        (
            r#"token.claims.env != "prod""#,
            Req::new(),
            false,
            "even when negated",
        ),
        (
            r#"has(token.claims.env) && token.claims.env == "prod""#,
            Req::new(),
            false,
            "has() is the guard",
        ),
        ("1 + 1", Req::new(), false, "not a boolean"),
        ("1 / 0 == 1", Req::new(), false, "division by zero"),
        (r#"agent == "bot""#, Req::new(), true, "agent"),
        (
            r#"request.path.startsWith("/api/")"#,
            Req::new(),
            true,
            "path",
        ),
        (r#"client.ip == "10.1.2.3""#, Req::new(), true, "client"),
        (
            r#"now > timestamp("2026-01-01T00:00:00Z")"#,
            Req::new(),
            true,
            "now",
        ),
        (
            r#"now.getDayOfWeek() == 1"#,
            Req::new(),
            true,
            "Monday in UTC",
        ),
        (
            r#"request.query.limit == "10""#,
            Req::new().query("limit=10"),
            true,
            "query",
        ),
        (
            r#"request.query.mode != "delete""#,
            Req::new().query("mode=delete&mode=x"),
            false,
            "repeated parameter it names",
        ),
        (
            r#"request.query.a == "1""#,
            Req::new().query("a=1&b=1&b=2"),
            true,
            "repeated parameter it does not name",
        ),
        (
            r#"request.headers["x-env"] == "prod""#,
            Req::new().header("x-env", "prod"),
            true,
            "header",
        ),
        (
            r#"request.headers["x-mode"] != "dangerous""#,
            Req::new()
                .header("x-mode", "dangerous")
                .header("x-mode", "safe"),
            false,
            "repeated header it names",
        ),
        (
            r#"!("authorization" in request.headers) && !("cookie" in request.headers)"#,
            Req::new()
                .header("authorization", "Bearer x")
                .header("cookie", "a=b"),
            true,
            "the credential is hidden",
        ),
        (
            r#"request.body.amount <= 100"#,
            Req::new().body(json!({"amount": 50})),
            true,
            "body",
        ),
        (
            r#"request.body.amount <= 100"#,
            Req::new().body(json!({"amount": "50"})),
            false,
            "string vs int errors",
        ),
        (
            r#"request.body.amount <= 100"#,
            Req::new(),
            false,
            "body not read fails closed",
        ),
        (
            r#"token.claims.roles.exists(r, r == "admin")"#,
            Req::new().claims(json!({"roles": ["admin"]})),
            true,
            "macro",
        ),
    ];
    for (expr, r, pass, case) in table {
        let c = CelCondition::compile(expr, DEFAULT_MAX_BODY_BYTES)
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        let c = Conditions::new(vec![Condition {
            name: "cel".into(),
            on_fail: OnFail::Deny,
            kind: ConditionKind::Cel(c),
        }]);
        expect(&c, &r, pass, case);
    }
    let body = compile(r#"[{cel: {expr: 'request.body.amount <= 100', max_body_bytes: 1024}}]"#);
    assert_eq!(body.needs_body(), Some(1024));
    let reason = run(&body, &Req::new()).unwrap_err();
    assert!(reason.contains("the request has no JSON body"), "{reason}");
    assert_eq!(either.needs_body(), None);

    for (expr, want) in [
        ("request.method ==", "invalid"),
        ("reqest.method == \"GET\"", "unknown variable `reqest`"),
    ] {
        let e = CelCondition::compile(expr, 1).unwrap_err();
        assert!(e.contains(want) || !e.is_empty(), "{expr}: {e}");
        if want.starts_with("unknown") {
            assert!(e.contains(want), "{e}");
        }
    }
}

#[test]
fn conditions_outcome_deny_wins_over_approve() {
    let c = compile(
        r#"
- name: expensive
  json: {field: amount, lte: 100}
  on_fail: approve
- name: prod-only
  cel: 'token.claims.env == "prod"'
- name: office
  network: {from: [10.0.0.0/8]}
"#,
    );
    // Typed conditions run first, CEL last.
    let order: Vec<&str> = c.iter().map(|c| &**c.name()).collect();
    assert_eq!(order, ["expensive", "office", "prod-only"]);

    let r = Req::new()
        .body(json!({"amount": 500}))
        .claims(json!({"env": "prod"}));
    let report = c.check(&r.facts());
    assert_eq!(
        report.outcome,
        ConditionOutcome::RequireApproval {
            condition: "expensive".into(),
            reason: "amount 500 > 100".into()
        }
    );
    assert_eq!(report.trace.len(), 3);
    assert!(!report.trace[0].passed && report.trace[1].passed && report.trace[2].passed);

    // A deny after a failed approve still denies.
    let r = Req::new()
        .body(json!({"amount": 500}))
        .claims(json!({"env": "dev"}));
    let report = c.check(&r.facts());
    assert!(
        matches!(&report.outcome, ConditionOutcome::Deny { condition, .. } if &**condition == "prod-only"),
        "{report:?}"
    );

    // A deny stops the check: the CEL condition after it never runs.
    let mut r = Req::new().body(json!({"amount": 5}));
    r.ip = Some("192.0.2.1".parse().unwrap());
    let report = c.check(&r.facts());
    assert!(
        matches!(&report.outcome, ConditionOutcome::Deny { condition, .. } if &**condition == "office")
    );
    assert_eq!(report.trace.len(), 2);
    assert_eq!(
        report.trace[1].reason.as_deref(),
        Some("client 192.0.2.1 is not in the allowed networks 10.0.0.0/8")
    );

    let r = Req::new()
        .body(json!({"amount": 5}))
        .claims(json!({"env": "prod"}));
    let report = c.check(&r.facts());
    assert_eq!(report.outcome, ConditionOutcome::Pass);
    assert!(report.trace.iter().all(|t| t.passed && t.reason.is_none()));

    assert_eq!(
        Conditions::default().check(&r.facts()).outcome,
        ConditionOutcome::Pass
    );
}
