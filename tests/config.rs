//! Config files → compiled result, and bad files → the exact list of errors.

use portcullis::config::{load_file, load_str, LoadContext};
use portcullis::identity::KeyStore;
use portcullis::policy::{HostPattern, PathPattern, Segment};
use std::path::Path;
use std::sync::Arc;

fn ctx() -> LoadContext {
    LoadContext::new(KeyStore::new(Arc::new(|_| {})), 7)
}

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys"))
}

#[test]
fn bad_file_reports_every_error_with_path_and_line() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/configs/bad.yaml"
    ));
    let err = load_file(path, &ctx()).expect_err("bad config must be refused");
    let got: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
    let expected = [
        "line 3: listen.admin: `not-an-address` is not an `ip:port` address (e.g. `127.0.0.1:8080`)",
        "line 5: identity.clock_skew: `soon` is not a duration (expected number at 0); write e.g. `30s`, `5m`, `1h`",
        "line 7: issuers[0]: no keys: set `keys`, `jwks_file`, `jwks_url`, `signing_key_file` or `signing_keyring`",
        "line 10: issuers[0].algorithms[1]: unsigned tokens (`none`) are never accepted",
        "line 10: issuers[0].algorithms[2]: HS256 uses a shared secret; set `allow_hmac: true` on this issuer to accept it",
        "line 10: issuers[0].algorithms: HS algorithms need `hmac_secret`",
        "line 12: issuers[0].keys[0].pem_file: cannot read `missing.pem`: No such file or directory (os error 2)",
        "line 13: issuers[1].name: duplicate issuer `idp` (first defined at issuers[0].name)",
        "line 15: issuers[1].audiences: list at least one audience",
        "line 17: issuers[1].jwks_url: `ftp://nope` is not an http(s) URL",
        "line 20: agents[0].owner: every agent needs a named human owner",
        "line 21: agents[0].scopes[1]: scope `tickets:raed` is not required by any route (a typo?); known scopes: tickets:read",
        "line 24: agents[1].colour: unknown field `colour`, expected one of `id`, `owner`, `description`, `scopes`, `enabled`, `tier`, `limits`, `conditions`, `client`, `delegation`",
        "line 28: upstreams[0].read_timeout: `5 parsecs` is not a duration (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. `30s`, `5m`, `1h`",
        "line 31: upstreams[0].credential.value: environment variable `PORTCULLIS_TEST_UNSET_SECRET` is not set",
        "line 34: routes[0].methods[1]: `FETCH` is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS",
        "line 35: routes[0].path: invalid template `/api/tickets/{id`: segment `{id`: a parameter must be a whole segment such as `{id}`",
        "line 38: routes[1].name: duplicate route `r1` (first defined at routes[0].name)",
        "line 39: routes[1].path: invalid template `/a/**/b`: `**` is only allowed as the last segment (`/prefix/**`)",
        "line 40: routes[1].upstream: unknown upstream `ticket`; defined: tickets",
        "line 43: routes[2].path_regex: invalid regex: regex parse error:\n    ^(?:/api/([)$\n              ^\nerror: unclosed character class",
        "line 46: routes[3]: a route must require at least one scope (`scopes` or `any_of`): deny by default",
        "line 53: routes[4].timeout: unknown field `timeout`, expected one of `name`, `methods`, `path`, `path_regex`, `host`, `upstream`, `scopes`, `any_of`, `approval`, `websocket`, `mode`, `shadow`, `limits`, `conditions`, `tags`, `kind`, `mcp`, `store_unavailable`",
        "line 54: metrics: unknown section `metrics`, expected one of: listen, server, identity, issuers, token_service, agents, upstreams, routes, access_log, approvals, admin, enforcement, limits, tiers, state, monitoring, tracing",
    ];
    for (i, (g, e)) in got.iter().zip(expected.iter()).enumerate() {
        assert_eq!(g, e, "issue #{i} differs");
    }
    assert_eq!(got.len(), expected.len(), "all issues: {got:#?}");
}

fn good_yaml() -> String {
    format!(
        r#"
listen:
  proxy: ["127.0.0.1:18080"]
  admin: 127.0.0.1:19901
  threads: 3
issuers:
  - name: idp
    issuer: https://idp.example.test
    audiences: [tools]
    algorithms: [ES256, RS256]
    jwks_file: {dir}/jwks.json
agents:
  - id: bot
    owner: alice@example.com
    scopes: [tickets:read, tickets:write]
  - id: off
    owner: bob@example.com
    enabled: false
upstreams:
  - name: tickets
    url: http://127.0.0.1:9/base/
    credential: {{header: x-api-key, value: "k-${{file:{dir}/../../configs/secret.txt}}"}}
routes:
  - name: wide
    path: /api/**
    upstream: tickets
    scopes: [tickets:read]
  - name: one
    methods: [GET]
    host: "*.internal"
    path: /api/tickets/{{id}}
    upstream: tickets
    scopes: [tickets:read]
    any_of: [tickets:write]
"#,
        dir = fixtures().display()
    )
}

#[test]
fn good_file_compiles_to_the_expected_snapshot() {
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/configs/secret.txt"),
        "s3cret\n",
    )
    .unwrap();
    let snap = load_str(&good_yaml(), Path::new("."), "<test>", &ctx()).expect("valid config");
    assert_eq!(snap.version, 7);
    assert_eq!(snap.digest.len(), 12);
    assert_eq!(snap.settings.threads, 3);
    assert_eq!(snap.settings.admin_listen, "127.0.0.1:19901");
    assert_eq!(snap.agents.len(), 2);
    assert!(!snap.agents["off"].enabled);
    let up = &snap.upstreams[0];
    assert_eq!(up.base_path, "/base");
    assert_eq!(up.authority, "127.0.0.1:9");
    let cred = up.credential.as_ref().unwrap();
    assert_eq!(cred.header.as_str(), "x-api-key");
    match &cred.source {
        portcullis::policy::snapshot::CredentialSource::Static(v) => {
            assert_eq!(v.0.to_str().unwrap(), "k-s3cret")
        }
        other => panic!("a static credential, not {other:?}"),
    }
    // The secret never prints.
    assert!(!format!("{up:?}").contains("s3cret"));
    // Ranked: the host-specific template comes before the wide one.
    let names: Vec<&str> = snap.routes.routes.iter().map(|r| &*r.name).collect();
    assert_eq!(names, ["one", "wide"]);
    let one = &snap.routes.routes[0];
    assert_eq!(one.host, HostPattern::Suffix(".internal".into()));
    assert_eq!(one.scopes_any, vec!["tickets:write".to_string()]);
    match &one.path {
        PathPattern::Template { segments, rest } => {
            assert_eq!(
                segments,
                &vec![
                    Segment::Literal("api".into()),
                    Segment::Literal("tickets".into()),
                    Segment::Param("id".into())
                ]
            );
            assert!(!rest);
        }
        PathPattern::Regex(_) => panic!("expected a template"),
    }
    assert!(
        snap.verifier.is_ready(),
        "keys from jwks_file are loaded at once"
    );
}

#[test]
fn work_stealing_defaults_to_on_only_with_more_than_one_thread() {
    let with = |threads: &str, extra: &str| {
        let yaml = good_yaml().replace("  threads: 3\n", &format!("  threads: {threads}\n{extra}"));
        load_str(&yaml, Path::new("."), "<test>", &ctx())
            .expect("valid config")
            .settings
    };
    let one = with("1", "");
    assert_eq!((one.threads, one.work_stealing), (1, false));
    let three = with("3", "");
    assert_eq!((three.threads, three.work_stealing), (3, true));
    let forced = with("1", "server:\n  work_stealing: true\n");
    assert!(
        forced.work_stealing,
        "an explicit setting wins over the default"
    );
}

#[test]
fn bundled_gateway_yaml_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let key = portcullis::identity::generate_signing_key().unwrap();
    std::fs::create_dir_all(dir.path().join(".portcullis")).unwrap();
    std::fs::write(dir.path().join(".portcullis/signing-key.pem"), key).unwrap();
    for name in ["approver-alice", "ops", "support-bot"] {
        std::fs::write(
            dir.path().join(format!(".portcullis/{name}.sha256")),
            format!("{}\n", "ab".repeat(32)),
        )
        .unwrap();
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap();
    std::env::set_var("TICKETS_API_KEY", "test-key");
    let snap =
        load_str(&text, dir.path(), "gateway.yaml", &ctx()).expect("bundled config is valid");
    assert!(snap.token_service.is_some());
    assert!(snap.routes.routes.len() >= 5);
    let delete = snap
        .routes
        .routes
        .iter()
        .find(|r| &*r.name == "tickets-delete")
        .expect("the bundled config has an approval-gated delete");
    assert!(delete.approval.is_some());
    assert_eq!(snap.approvals.as_ref().unwrap().approvers[0].name, "alice");
}

#[test]
fn syntax_error_has_a_line() {
    let err = load_str(
        "routes:\n  - name: [unclosed\n",
        Path::new("."),
        "<t>",
        &ctx(),
    )
    .unwrap_err();
    let i = &err.issues()[0];
    assert!(i.line.is_some(), "{i}");
    assert!(i.to_string().contains("YAML syntax"), "{i}");
}

#[test]
fn request_meaning_and_connection_settings_compile_with_their_defaults() {
    let yaml = good_yaml()
        .replace(
            "    url: http://127.0.0.1:9/base/\n",
            "    url: http://127.0.0.1:9/base/\n    refuse_headers: [X-Action]\n    strip_headers: [x-tenant, x-real-ip]\n    path_parameters: allow\n    case_insensitive: true\n",
        )
        .replace(
            "  threads: 3\n",
            "  threads: 3\nserver:\n  request_header_timeout: 5s\n  max_connections_per_client: 50\n",
        );
    let snap = load_str(&yaml, Path::new("."), "<test>", &ctx()).expect("valid config");
    let up = &snap.upstreams[0];
    let names = |v: &[http::HeaderName]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
    let refused = names(&up.refused_headers);
    assert!(refused.contains(&"x-http-method-override".to_string()));
    assert_eq!(refused.last().map(String::as_str), Some("x-action"));
    let stripped = names(&up.stripped_headers);
    assert!(stripped.contains(&"x-forwarded-host".to_string()));
    assert_eq!(
        stripped.iter().filter(|h| *h == "x-real-ip").count(),
        1,
        "a default listed again is kept once: {stripped:?}"
    );
    assert!(stripped.contains(&"x-tenant".to_string()));
    assert!(up.path_parameters && up.case_insensitive);
    assert!(snap.routes.routes.iter().all(|r| r.case_insensitive));
    let c = snap.settings.connections;
    assert_eq!(c.request_header_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.keepalive_timeout, std::time::Duration::from_secs(60));
    assert_eq!(
        (c.max_connections, c.max_connections_per_client),
        (10_000, 50)
    );

    // And the defaults: parameters refused, case-sensitive, only the default header lists.
    let snap = load_str(&good_yaml(), Path::new("."), "<test>", &ctx()).expect("valid config");
    let up = &snap.upstreams[0];
    assert!(!up.path_parameters && !up.case_insensitive);
    assert_eq!(up.refused_headers.len(), 6);
}

#[test]
fn bad_request_meaning_and_connection_settings_are_each_reported() {
    let yaml = good_yaml()
        .replace(
            "    url: http://127.0.0.1:9/base/\n",
            "    url: http://127.0.0.1:9/base/\n    refuse_headers: [authorization, \"bad header\"]\n    strip_headers: [Host]\n    path_parameters: strip\n",
        )
        .replace(
            "  threads: 3\n",
            "  threads: 3\nserver:\n  keepalive_timeout: 2m\n  request_header_timeout: 0s\n  max_connections: 0\n",
        )
        .replace(
            "    any_of: [tickets:write]\n",
            "    any_of: [tickets:write]\n    websocket: true\n    approval: {mode: hold}\n",
        );
    let err = load_str(&yaml, Path::new("."), "<test>", &ctx()).expect_err("must be refused");
    let got: Vec<String> = err
        .issues()
        .iter()
        .map(|i| format!("{}: {}", i.path, i.kind))
        .collect();
    for want in [
        "server.request_header_timeout: duration must be greater than zero",
        "server.keepalive_timeout: must be at most 60s (pingora closes idle connections after 60s)",
        "server.max_connections: must be at least 1",
        "upstreams[0].refuse_headers[0]: `authorization` is needed by every call and cannot be listed here",
        "upstreams[0].refuse_headers[1]: `bad header` is not a header name",
        "upstreams[0].strip_headers[0]: `host` is needed by every call and cannot be listed here",
        "upstreams[0].path_parameters: `strip` is not `refuse` or `allow`",
        "routes[1].websocket: a WebSocket route cannot need approval: an upgraded connection cannot be held or replayed",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
    }
}

/// `good_yaml()` plus an approval route and `approvals:` section text.
fn with_approvals(section: &str) -> String {
    format!(
        "{}  - name: gated\n    methods: [POST]\n    path: /api/gated\n    upstream: tickets\n    scopes: [tickets:write]\n    approval: {{mode: async, quorum: 2}}\n{section}",
        good_yaml()
    )
}

const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn approval_limits_have_defaults_and_can_be_set() {
    let section = format!(
        "approvals:\n  store: a.db\n  approvers:\n    - {{name: alice, token_sha256: \"{HASH}\"}}\n    - {{name: bob, token_sha256: \"{HASH}\"}}\n"
    );
    let snap = load_str(&with_approvals(&section), Path::new("."), "<t>", &ctx()).unwrap();
    let l = snap.approvals.as_ref().unwrap().limits;
    assert_eq!(
        (
            l.max_pending_per_agent,
            l.max_held_per_agent,
            l.max_headers,
            l.max_header_bytes,
            l.retention.as_secs()
        ),
        (20, 5, 64, 16384, 7 * 24 * 3600)
    );
    let set = format!("{section}  max_pending_per_agent: 3\n  max_held_per_agent: 1\n  max_headers: 10\n  max_header_bytes: 2000\n  retention: 1h\n");
    let snap = load_str(&with_approvals(&set), Path::new("."), "<t>", &ctx()).unwrap();
    let l = snap.approvals.as_ref().unwrap().limits;
    assert_eq!(
        (
            l.max_pending_per_agent,
            l.max_held_per_agent,
            l.max_headers,
            l.max_header_bytes,
            l.retention.as_secs()
        ),
        (3, 1, 10, 2000, 3600)
    );
}

#[test]
fn idp_approvers_must_map_onto_configured_people() {
    // With `jwt_approvers`, a route may no longer name people who are not configured, a
    // quorum must be reachable by configured people, and one IdP name leads to one person.
    let section = format!(
        r#"approvals:
  store: a.db
  max_pending_per_agent: 0
  approvers:
    - {{name: alice, token_sha256: "{HASH}", idp_names: [alice@example.com]}}
    - {{name: bob, idp_names: [alice@example.com]}}
  jwt_approvers: {{issuer: idp, claim: approver}}
"#
    );
    let yaml = with_approvals(&section).replace(
        "approval: {mode: async, quorum: 2}",
        "approval: {mode: async, quorum: 3, approvers: [alice, dana]}",
    );
    let err = load_str(&yaml, Path::new("."), "<t>", &ctx()).unwrap_err();
    let got: Vec<String> = err
        .issues()
        .iter()
        .map(|i| {
            let s = i.to_string();
            s.split_once(": ")
                .map_or(s.clone(), |(_, rest)| rest.to_string())
        })
        .collect();
    for want in [
        "approvals.approvers[1].idp_names[0]: duplicate approver `alice@example.com` (first defined at approvals.approvers[0].idp_names[0])",
        "approvals.max_pending_per_agent: must be at least 1",
        "routes[2].approval.approvers[1]: unknown approver `dana`; defined: alice, bob",
        "routes[2].approval.quorum: 3 distinct approvals can never be reached: only 2 approver(s) may decide",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
    }
}

#[test]
fn approvers_without_a_token_need_jwt_approvers() {
    let section = "approvals:\n  store: a.db\n  approvers:\n    - {name: alice}\n    - {name: bob, token_sha256: \"".to_string()
        + HASH
        + "\", idp_names: [bob@example.com]}\n";
    let err = load_str(&with_approvals(&section), Path::new("."), "<t>", &ctx()).unwrap_err();
    let got: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
    assert!(
        got.iter().any(|g| g.contains(
            "approvals.approvers[0].token_sha256: required unless `jwt_approvers` is set"
        )),
        "{got:#?}"
    );
    assert!(
        got.iter().any(|g| g.contains(
            "approvals.approvers[1].idp_names: only means something with `approvals.jwt_approvers`"
        )),
        "{got:#?}"
    );
}

#[test]
fn access_log_max_field_bytes_defaults_to_1024_and_has_a_floor() {
    let with = |extra: &str| {
        load_str(
            &format!("{}{extra}", good_yaml()),
            Path::new("."),
            "<test>",
            &ctx(),
        )
    };
    let cap = |r: Result<portcullis::policy::Snapshot, _>| {
        r.expect("valid config").settings.access_log_max_field_bytes
    };
    assert_eq!(cap(with("")), 1024);
    assert_eq!(cap(with("access_log:\n  max_field_bytes: 300\n")), 300);
    let err = with("access_log:\n  max_field_bytes: 10\n").expect_err("below the floor");
    let got: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
    assert_eq!(
        got,
        ["line 36: access_log.max_field_bytes: must be at least 64"]
    );
}

#[test]
fn admin_section_compiles() {
    use portcullis::policy::MetricsAccess;
    let defaults = load_str(&good_yaml(), Path::new("."), "<test>", &ctx()).expect("valid config");
    assert!(defaults.admin.tokens.is_empty());
    assert!(defaults.admin.hosts.is_empty());
    assert_eq!(defaults.admin.metrics, MetricsAccess::Open);

    let yaml = format!(
        "{}admin:\n  tokens:\n    - {{name: ops, token_sha256: \"{}\"}}\n  hosts: [Portcullis-Admin.internal, \"gw.example:8443\"]\n  metrics: token\n  metrics_token_sha256: \"{}\"\n",
        good_yaml(),
        "ab".repeat(32),
        "cd".repeat(32)
    );
    let snap = load_str(&yaml, Path::new("."), "<test>", &ctx()).expect("valid config");
    assert_eq!(snap.admin.tokens.len(), 1);
    assert_eq!(snap.admin.tokens[0].name, "ops");
    assert_eq!(snap.admin.tokens[0].token_sha256, [0xab; 32]);
    assert_eq!(
        snap.admin.hosts,
        ["portcullis-admin.internal", "gw.example:8443"]
    );
    assert_eq!(snap.admin.metrics, MetricsAccess::Token);
    assert_eq!(snap.admin.metrics_token_sha256, Some([0xcd; 32]));
}

#[test]
fn admin_mistakes_are_all_reported() {
    let issues = |extra: &str| -> Vec<String> {
        let yaml = format!("{}{extra}", good_yaml());
        load_str(&yaml, Path::new("."), "<test>", &ctx())
            .expect_err("must be refused")
            .issues()
            .iter()
            .map(|i| i.to_string())
            .collect()
    };
    let got = issues(
        "admin:
  tokens:
    - {name: ops, token_sha256: nothex}
    - {name: ops, token_sha256: \"${env:PORTCULLIS_TEST_UNSET_ADMIN}\"}
  hosts: [\"http://evil.example/\", \"*.internal\", \"\"]
  metrics: closed
  metrics_token_sha256: \"ab\"
",
    );
    let want = [
        "line 37: admin.tokens[0].token_sha256: must be 64 hex digits (the SHA-256 of the token; `portcullis approver-token` prints a token and its hash)",
        "line 38: admin.tokens[1].name: duplicate admin token `ops` (first defined at admin.tokens[0].name)",
        "line 38: admin.tokens[1].token_sha256: environment variable `PORTCULLIS_TEST_UNSET_ADMIN` is not set",
        "line 39: admin.hosts[0]: `http://evil.example/` is not a host name or `host:port` (no scheme, path or wildcard), e.g. `portcullis-admin.internal`",
        "line 39: admin.hosts[1]: `*.internal` is not a host name or `host:port` (no scheme, path or wildcard), e.g. `portcullis-admin.internal`",
        "line 39: admin.hosts[2]: `` is not a host name or `host:port` (no scheme, path or wildcard), e.g. `portcullis-admin.internal`",
        "line 40: admin.metrics: `closed` is not `open` or `token`",
        "line 41: admin.metrics_token_sha256: must be 64 hex digits (the SHA-256 of the token; `portcullis approver-token` prints a token and its hash)",
        "line 41: admin.metrics_token_sha256: only used with `metrics: token`; set it, or remove this token",
    ];
    assert_eq!(got, want, "{got:#?}");

    let got = issues("admin:\n  metrics: token\n  hosts: [ok.example]\n  colour: red\n");
    assert_eq!(
        got,
        ["line 38: admin.colour: unknown field `colour`, expected one of `tokens`, `hosts`, `metrics`, `metrics_token_sha256`"],
        "{got:#?}"
    );
    let got = issues("admin:\n  metrics: token\n");
    assert_eq!(
        got,
        ["line 36: admin.metrics: `token` needs `admin.tokens` or `admin.metrics_token_sha256`: nobody could read /metrics"],
        "{got:#?}"
    );
}

#[test]
fn shadow_modes_compile_and_merge_and_bad_names_are_reported() {
    use portcullis::policy::Shadow;
    let yaml = good_yaml().replace(
        "    any_of: [tickets:write]\n",
        "    any_of: [tickets:write]\n    shadow: [limits]\n",
    ) + "enforcement:\n  shadow: [scopes]\n";
    let snap = load_str(&yaml, Path::new("."), "<test>", &ctx()).expect("valid config");
    let by_name = |n: &str| {
        snap.routes
            .routes
            .iter()
            .find(|r| &*r.name == n)
            .unwrap()
            .shadow
    };
    assert_eq!(
        by_name("one"),
        Shadow {
            scopes: true,
            conditions: false,
            limits: true
        }
    );
    assert_eq!(
        by_name("wide"),
        Shadow {
            scopes: true,
            ..Shadow::default()
        }
    );
    let plain = load_str(&good_yaml(), Path::new("."), "<test>", &ctx()).unwrap();
    assert!(plain
        .routes
        .routes
        .iter()
        .all(|r| r.shadow == Shadow::default()));

    let bad = good_yaml().replace(
        "    any_of: [tickets:write]\n",
        "    any_of: [tickets:write]\n    mode: audit\n    shadow: [identity]\n",
    ) + "enforcement:\n  mode: dry-run\n";
    let err = load_str(&bad, Path::new("."), "<test>", &ctx()).unwrap_err();
    let got: Vec<String> = err
        .issues()
        .iter()
        .map(|i| format!("{}: {}", i.path, i.kind))
        .collect();
    for want in [
        "enforcement.mode: `dry-run` is not `enforce` or `shadow`",
        "routes[1].mode: `audit` is not `enforce` or `shadow`",
        "routes[1].shadow[0]: `identity` is not a policy that can be shadowed; use scopes, conditions, limits (identity, routing and request-meaning checks always enforce)",
    ] {
        assert!(got.iter().any(|g| g == want), "missing {want:?} in {got:#?}");
    }
}

/// `issues` of `good_yaml()` plus `extra`, or the snapshot.
fn compile_with(extra: &str) -> Result<portcullis::policy::Snapshot, Vec<String>> {
    let yaml = format!("{}{extra}", good_yaml());
    load_str(&yaml, Path::new("."), "<test>", &ctx())
        .map_err(|e| e.issues().iter().map(|i| i.to_string()).collect())
}

#[test]
fn shared_state_compiles_with_secrets_resolved_and_credentials_kept_out_of_debug() {
    std::env::set_var("PORTCULLIS_TEST_PG_PASSWORD", "pgs3cret");
    let snap = compile_with(
        "state:
  backend: shared
  postgres:
    url: \"postgres://gw:${env:PORTCULLIS_TEST_PG_PASSWORD}@db.internal:5432/portcullis?sslmode=verify-full\"
    max_connections: 4
  redis:
    url: rediss://:rs3cret@redis.internal:6380/0
    timeout: 100ms
",
    )
    .expect("valid");
    let s = snap.settings.shared_state.as_ref().expect("shared");
    assert_eq!(
        s.postgres_url,
        "postgres://gw:pgs3cret@db.internal:5432/portcullis?sslmode=verify-full"
    );
    assert_eq!(s.postgres_max_connections, 4);
    assert_eq!(s.postgres_timeout, std::time::Duration::from_secs(2));
    assert_eq!(s.redis_timeout, std::time::Duration::from_millis(100));
    assert_eq!(s.redis_key_prefix, "portcullis:");
    let debug = format!("{:?}", snap.settings);
    assert!(
        !debug.contains("pgs3cret") && !debug.contains("rs3cret"),
        "{debug}"
    );
    assert!(debug.contains("db.internal:5432"), "{debug}");
    // The default stays embedded.
    assert!(compile_with("").unwrap().settings.shared_state.is_none());
}

#[test]
fn shared_state_mistakes_are_all_reported() {
    let got = compile_with(
        "state:
  backend: shared
  store: state.db
  postgres: {url: \"mysql://db\"}
",
    )
    .unwrap_err();
    let want = [
        "line 35: state: `backend: shared` needs both `postgres` (approvals, durable agent state) and `redis` (shared limits, kill-switch propagation)",
        "line 37: state.store: a SQLite file is not shared: with `backend: shared` agent state lives in `state.postgres`; remove `store`",
    ];
    assert_eq!(got, want, "{got:#?}");
    let got = compile_with(
        "state:
  redis: {url: \"redis://r\"}
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        ["line 36: state.redis: only used with `backend: shared` (the embedded backend keeps everything in this process and its SQLite files)"],
        "{got:#?}"
    );
    // TLS without certificate checks is refused, not silently accepted.
    let got = compile_with(
        "state:
  backend: shared
  postgres: {url: \"postgres://db/p\"}
  redis: {url: \"rediss://:pw@r:6380/0#insecure\"}
",
    )
    .unwrap_err();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].starts_with("line 38: state.redis.url: `rediss://r:6380/0`: URL fragments are not supported; `#insecure`"), "{got:#?}");
    assert!(!got[0].contains("pw"), "{got:#?}");
    let got = compile_with(
        "state:
  backend: cluster
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        ["line 36: state.backend: `cluster` is not `embedded` or `shared`"]
    );
    let got = compile_with(
        "state:
  backend: shared
  postgres: {url: \"http://db\", max_connections: 0}
  redis: {url: \"redis://r\"}
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        [
            "line 37: state.postgres.url: `http://db` must start with postgres:// or postgresql://",
            "line 37: state.postgres.max_connections: must be at least 1",
        ],
        "{got:#?}"
    );
}

#[test]
fn fail_open_is_only_for_low_risk_reads() {
    let route = |extra: &str| {
        format!(
            "  - name: r2
    path: /r2/{{id}}
    upstream: tickets
    scopes: [tickets:read]
    store_unavailable: fail_open
{extra}"
        )
    };
    let yaml = |routes: &str| good_yaml().replace("routes:\n", &format!("routes:\n{routes}"));
    let load = |y: String| load_str(&y, Path::new("."), "<test>", &ctx());
    let snap =
        load(yaml(&route("    methods: [GET, HEAD]\n"))).expect("a read-only route may fail open");
    let r = snap
        .routes
        .routes
        .iter()
        .find(|r| &*r.name == "r2")
        .unwrap();
    assert!(r.fail_open);
    assert!(snap
        .routes
        .routes
        .iter()
        .filter(|r| &*r.name != "r2")
        .all(|r| !r.fail_open));
    for (extra, why) in [
        (
            "",
            "the route allows writes (list only GET, HEAD, OPTIONS in `methods`)",
        ),
        (
            "    methods: [GET, POST]\n",
            "the route allows writes (list only GET, HEAD, OPTIONS in `methods`)",
        ),
    ] {
        let err = load(yaml(&route(extra))).expect_err("refused");
        let issues: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
        assert_eq!(
            issues,
            [format!("line 28: routes[0].store_unavailable: `fail_open` is only for low-risk reads: {why}")],
            "{issues:#?}"
        );
    }
    let err = load(yaml(
        &route("    methods: [GET]\n").replace("fail_open", "maybe"),
    ))
    .expect_err("refused");
    let issues: Vec<String> = err.issues().iter().map(|i| i.to_string()).collect();
    assert_eq!(
        issues,
        ["line 28: routes[0].store_unavailable: `maybe` is not `fail_closed` or `fail_open`"]
    );
}

#[test]
fn tracing_is_off_by_default_and_compiles_with_defaults_and_secret_headers() {
    assert!(compile_with("").unwrap().settings.tracing.is_none());
    std::env::set_var("PORTCULLIS_TEST_OTLP_KEY", "otlp-s3cret");
    let snap = compile_with(
        "tracing:
  endpoint: http://otel-collector:4318/
  headers:
    x-api-key: \"${env:PORTCULLIS_TEST_OTLP_KEY}\"
",
    )
    .expect("valid");
    let t = snap.settings.tracing.as_ref().expect("on");
    // A base URL gets the signal path, as OTEL_EXPORTER_OTLP_ENDPOINT does.
    assert_eq!(t.endpoint, "http://otel-collector:4318/v1/traces");
    assert_eq!(
        t.protocol,
        portcullis::observe::trace::OtlpProtocol::HttpProtobuf
    );
    assert_eq!(t.sample_ratio, 0.01);
    assert!(!t.respect_parent_sampling);
    assert_eq!((t.queue_size, t.batch_size), (2048, 512));
    assert_eq!(t.export_interval, std::time::Duration::from_secs(5));
    assert_eq!(t.headers, vec![("x-api-key".into(), "otlp-s3cret".into())]);
    let debug = format!("{:?}", snap.settings);
    assert!(!debug.contains("otlp-s3cret"), "{debug}");
    // gRPC endpoints are used as given.
    let snap = compile_with("tracing: {endpoint: \"https://collector:4317\", protocol: grpc}\n")
        .expect("valid");
    assert_eq!(
        snap.settings.tracing.unwrap().endpoint,
        "https://collector:4317"
    );
}

#[test]
fn tracing_mistakes_are_all_reported() {
    let got = compile_with(
        "tracing:
  endpoint: collector:4318
  protocol: thrift
  sample_ratio: 2
  queue_size: 10
  batch_size: 20
  export_interval: soon
",
    )
    .unwrap_err();
    let want = [
        "line 36: tracing.endpoint: `collector:4318` is not an http:// or https:// URL of an OTLP collector (e.g. `http://otel-collector:4318`)",
        "line 37: tracing.protocol: `thrift` is not an OTLP protocol: `http/protobuf` or `grpc`",
        "line 38: tracing.sample_ratio: 2 is not between 0 and 1 (0.01 traces one call in a hundred)",
        "line 40: tracing.batch_size: must be between 1 and queue_size (10)",
        "line 41: tracing.export_interval: `soon` is not a duration (expected number at 0); write e.g. `30s`, `5m`, `1h`",
    ];
    assert_eq!(got, want);
}

/// A CA certificate (PEM) made for the test, in a file of `dir`.
fn ca_pem_file(dir: &Path) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join("siem-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

#[test]
fn access_log_syslog_compiles_with_its_defaults() {
    use portcullis::observe::syslog::SyslogTransport;
    use portcullis::policy::AccessLogTarget;
    let target = |extra: &str| match compile_with(extra).expect("valid").settings.access_log {
        AccessLogTarget::Syslog(t) => t,
        other => panic!("not syslog: {other:?}"),
    };
    let t = target("access_log:\n  syslog:\n    address: siem.example.com:514\n");
    assert_eq!((t.host.as_str(), t.port), ("siem.example.com", 514));
    assert_eq!(t.transport, SyslogTransport::Tcp);
    assert_eq!(t.facility, 16, "local0");
    assert_eq!(t.app_name, "portcullis");
    assert_eq!(t.hostname, None, "the machine's, at start");
    assert!(t.ca_certs.is_empty() && t.server_name.is_none());

    let dir = tempfile::tempdir().unwrap();
    let ca = ca_pem_file(dir.path());
    let t = target(&format!(
        "access_log:\n  schema: ecs\n  syslog:\n    address: \"[2001:db8::5]:6514\"\n    transport: tls\n    facility: audit\n    app_name: gw\n    hostname: gw-1.example\n    ca_file: {}\n    server_name: siem.example.com\n",
        ca.display()
    ));
    assert_eq!((t.host.as_str(), t.port), ("2001:db8::5", 6514));
    assert_eq!(t.transport, SyslogTransport::Tls);
    assert_eq!(t.facility, 13);
    assert_eq!(t.app_name, "gw");
    assert_eq!(t.hostname.as_deref(), Some("gw-1.example"));
    assert_eq!(t.ca_certs.len(), 1);
    assert_eq!(t.server_name.as_deref(), Some("siem.example.com"));
    let t = target("access_log:\n  syslog: {address: 10.0.0.5:514, transport: udp}\n");
    assert_eq!(t.transport, SyslogTransport::Udp);
    // `path: stdout` is not a destination besides syslog, only the default written out.
    assert!(compile_with("access_log:\n  path: stdout\n").is_ok());
}

#[test]
fn access_log_syslog_mistakes_are_all_reported() {
    let got = compile_with(
        "access_log:
  path: /var/log/portcullis.log
  syslog:
    address: siem
    transport: quic
    facility: local9
    app_name: port cullis
    server_name: siem.example.com
",
    )
    .unwrap_err();
    let want = [
        "line 37: access_log.syslog: `access_log.path` and `access_log.syslog` are both set: the log goes to one of them; remove one",
        "line 38: access_log.syslog.address: `siem` is not a `host:port` address (e.g. `siem.example.com:6514`, `10.0.0.5:514`, `[2001:db8::5]:514`)",
        "line 39: access_log.syslog.transport: `quic` is not a syslog transport: udp, tcp, tls",
        "line 40: access_log.syslog.facility: `local9` is not a syslog facility: kern, user, mail, daemon, auth, syslog, lpr, news, uucp, cron, authpriv, ftp, ntp, audit, alert, clock, local0, local1, local2, local3, local4, local5, local6, local7",
        "line 41: access_log.syslog.app_name: `port cullis` must be 1 to 48 printable ASCII characters without spaces (RFC 5424 APP-NAME)",
        "line 42: access_log.syslog.server_name: only used with `transport: tls` (the transport is `tcp`)",
    ];
    assert_eq!(got, want, "{got:#?}");

    // TLS settings on another transport; a CA file that is missing or holds no certificate.
    let got = compile_with(
        "access_log:
  syslog:
    address: 10.0.0.5:514
    transport: udp
    ca_file: /nonexistent/ca.pem
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        ["line 39: access_log.syslog.ca_file: only used with `transport: tls` (the transport is `udp`)"]
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let got = compile_with(&format!(
        "access_log:
  syslog:
    address: siem.example.com:6514
    transport: tls
    ca_file: {}
    hostname: \"\"
",
        empty.display()
    ))
    .unwrap_err();
    assert_eq!(
        got,
        [
            format!("line 39: access_log.syslog.ca_file: `{}` contains no PEM certificate", empty.display()),
            "line 40: access_log.syslog.hostname: `` must be 1 to 255 printable ASCII characters without spaces (RFC 5424 HOSTNAME)".to_string(),
        ]
    );
    let got = compile_with(
        "access_log:
  syslog:
    address: siem.example.com:6514
    transport: tls
    ca_file: missing-ca.pem
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        ["line 39: access_log.syslog.ca_file: cannot read `missing-ca.pem`: No such file or directory (os error 2)"]
    );
    // A name no certificate can carry.
    let got = compile_with(
        "access_log:
  syslog: {address: \"bad_name!:6514\", transport: tls}
",
    )
    .unwrap_err();
    assert_eq!(
        got,
        ["line 36: access_log.syslog.address: `bad_name!` is not a DNS name or IP address a certificate can be checked against; set `server_name`"]
    );
    // Unknown fields name the known ones.
    let got = compile_with(
        "access_log:
  syslog:
    address: siem.example.com:514
    port: 514
",
    )
    .unwrap_err();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].contains("unknown field `port`, expected one of `address`, `transport`, `facility`, `app_name`, `hostname`, `ca_file`, `server_name`"),
        "{got:#?}"
    );
    let got = compile_with("access_log:\n  sislog: {}\n").unwrap_err();
    assert!(
        got[0].contains(
            "unknown field `sislog`, expected one of `path`, `max_field_bytes`, `schema`, `syslog`"
        ),
        "{got:#?}"
    );
}
