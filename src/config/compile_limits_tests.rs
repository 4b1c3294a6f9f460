use super::*;
use crate::config::{load_str, LoadContext};
use crate::observe::Metrics;
use crate::state::new_key_store;
use std::path::Path;
use std::sync::Arc;

/// Compile a `limits:` list written as YAML; returns the limits and every (path, message).
fn compile(yaml: &str, origin: Origin) -> (Limits, Vec<(String, String)>) {
    let raw: Vec<RawLimit> = serde_yaml::from_str(yaml).expect("shape");
    let mut errors = Vec::new();
    let limits = compile_limits(
        "routes[0].limits",
        raw.iter().enumerate(),
        origin,
        &mut |p, m| errors.push((p, m)),
    );
    (limits, errors)
}

#[test]
fn the_documented_shapes_compile() {
    let (l, errors) = compile(
        "- rate: {requests: 100, per: 1m, burst: 20}\n\
         - rate: {requests: 10, per: 1s, scope: agent_route}\n\
         - volume: {bytes: 50MB, per: 1h, direction: response}\n\
         - volume: {bytes: 1GiB, per: 1d, direction: request, scope: agent_route}\n\
         - volume: {bytes: 4096, per: 10m}\n",
        Origin::Route,
    );
    assert_eq!(errors, vec![]);
    let defs: Vec<(LimitDef, Scope)> = l.items.iter().map(|l| (l.def, l.scope)).collect();
    assert_eq!(
        defs,
        vec![
            (
                LimitDef::Rate(RateLimit {
                    requests: 100,
                    per: Duration::from_secs(60),
                    burst: 20
                }),
                Scope::Route
            ),
            (
                LimitDef::Rate(RateLimit {
                    requests: 10,
                    per: Duration::from_secs(1),
                    burst: 10
                }),
                Scope::AgentRoute
            ),
            (
                LimitDef::Volume(VolumeLimit {
                    bytes: 50_000_000,
                    per: Duration::from_secs(3600),
                    direction: Direction::Response
                }),
                Scope::Route
            ),
            (
                LimitDef::Volume(VolumeLimit {
                    bytes: 1 << 30,
                    per: Duration::from_secs(86_400),
                    direction: Direction::Request
                }),
                Scope::AgentRoute
            ),
            (
                LimitDef::Volume(VolumeLimit {
                    bytes: 4096,
                    per: Duration::from_secs(600),
                    direction: Direction::Both
                }),
                Scope::Route
            ),
        ]
    );
    assert_eq!(&*l.items[2].path, "routes[0].limits[2]");
    let (agent, errors) = compile("- rate: {requests: 5, per: 1s}\n", Origin::Agent);
    assert_eq!(errors, vec![]);
    assert_eq!(agent.items[0].scope, Scope::Agent);
}

#[test]
fn each_bad_value_is_reported_with_its_path() {
    let (_, errors) = compile(
        "- rate: {requests: 0, per: 1s}\n\
         - rate: {requests: 5, per: soon, burst: 0}\n\
         - rate: {requests: 5, per: 0s, scope: agent}\n\
         - volume: {bytes: lots, per: 1h, direction: upload}\n\
         - volume: {bytes: 0, per: 1h}\n\
         - {}\n\
         - rate: {requests: 1, per: 1s}\n  volume: {bytes: 1, per: 1s}\n\
         - rate: {requests: 5000000000, per: 1s}\n\
         - rate: {requests: 2000, per: 1us}\n\
         - rate: {requests: 5, per: 1s}\n\
         - rate: {requests: 5, per: 1s}\n\
         - volume: {bytes: 1, per: 1000y}\n\
         - rate: {requests: 1, per: 1d, burst: 400}\n",
        Origin::Route,
    );
    let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "routes[0].limits[0].rate.requests",
            "routes[0].limits[1].rate.per",
            "routes[0].limits[1].rate.burst",
            "routes[0].limits[2].rate.per",
            "routes[0].limits[2].rate.scope",
            "routes[0].limits[3].volume.bytes",
            "routes[0].limits[3].volume.direction",
            "routes[0].limits[4].volume.bytes",
            "routes[0].limits[5]",
            "routes[0].limits[6]",
            "routes[0].limits[7].rate.requests",
            "routes[0].limits[8].rate.requests",
            "routes[0].limits[10]",
            "routes[0].limits[11].volume.per",
            "routes[0].limits[12].rate.burst",
        ],
        "{errors:#?}"
    );
    let msg = |p: &str| &errors.iter().find(|(q, _)| q == p).unwrap().1;
    assert!(msg("routes[0].limits[2].rate.scope").contains("`route`"));
    assert!(msg("routes[0].limits[3].volume.bytes").contains("`lots` is not a size"));
    assert!(msg("routes[0].limits[10]").contains("routes[0].limits[9]"));
    // An agent's limit cannot be scoped to a route alone.
    let (_, errors) = compile(
        "- rate: {requests: 5, per: 1s, scope: route}\n",
        Origin::Agent,
    );
    assert_eq!(errors[0].0, "routes[0].limits[0].rate.scope");
}

fn config(route_limits: &str, agent_limits: &str) -> String {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    format!(
        "issuers:\n  - name: idp\n    issuer: https://idp.example.test\n    audiences: [tools]\n    algorithms: [ES256]\n    jwks_file: {keys}\n\
         agents:\n  - id: bot\n    owner: alice@example.com\n    scopes: [t:read]\n    limits:\n{agent_limits}\
         upstreams:\n  - name: up\n    url: http://127.0.0.1:9/\n\
         routes:\n  - name: all\n    path: /**\n    upstream: up\n    scopes: [t:read]\n    limits:\n{route_limits}"
    )
}

fn load(yaml: &str) -> Result<crate::policy::Snapshot, crate::config::ConfigError> {
    let metrics = Arc::new(Metrics::new());
    let ctx = LoadContext::new(new_key_store(&metrics), 1);
    load_str(yaml, Path::new("."), "<test>", &ctx)
}

#[test]
fn limits_of_agents_and_routes_reach_the_snapshot() {
    let snap = load(&config(
        "      - rate: {requests: 10, per: 1s, scope: agent_route}\n",
        "      - volume: {bytes: 50MB, per: 1h, direction: response}\n",
    ))
    .expect("valid");
    let route = &snap.routes.routes[0];
    assert_eq!(route.limits.items.len(), 1);
    assert_eq!(route.limits.items[0].scope, Scope::AgentRoute);
    let agent = &snap.agents["bot"];
    assert_eq!(&*agent.limits.items[0].path, "agents[0].limits[0]");
}

#[test]
fn bad_limits_in_a_file_are_reported_with_path_and_line() {
    let err = load(&config(
        "      - rate: {requests: 10, per: often}\n",
        "      - volume: {bytes: 5XB, per: 1h}\n      - speed: 3\n",
    ))
    .unwrap_err();
    let found: Vec<(String, Option<usize>)> = err
        .issues()
        .iter()
        .map(|i| (i.path.clone(), i.line))
        .collect();
    assert!(
        found.contains(&("routes[0].limits[0].rate.per".into(), Some(23))),
        "{err}"
    );
    // An unknown field fails the agent's whole item at parse time, with its path.
    assert!(
        found.contains(&("agents[0].limits[1].speed".into(), Some(13))),
        "{err}"
    );
    let err = load(&config(
        "      - rate: {requests: 10, per: 1s}\n",
        "      - volume: {bytes: 5XB, per: 1h}\n",
    ))
    .unwrap_err();
    assert_eq!(
        err.issues()[0].path,
        "agents[0].limits[0].volume.bytes",
        "{err}"
    );
}

#[test]
fn top_level_limits_are_the_default_of_agents_without_their_own() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let yaml = |default: &str| {
        format!(
            "issuers:\n  - name: idp\n    issuer: https://idp.example.test\n    audiences: [tools]\n    algorithms: [ES256]\n    jwks_file: {keys}\n\
             limits:\n{default}\
             agents:\n  - id: plain\n    owner: alice@example.com\n    scopes: [t:read]\n\
             \x20 - id: opted-out\n    owner: alice@example.com\n    scopes: [t:read]\n    limits: []\n\
             \x20 - id: own\n    owner: alice@example.com\n    scopes: [t:read]\n    limits:\n      - rate: {{requests: 1, per: 1s}}\n\
             upstreams:\n  - name: up\n    url: http://127.0.0.1:9/\n\
             routes:\n  - name: all\n    path: /**\n    upstream: up\n    scopes: [t:read]\n"
        )
    };
    let snap = load(&yaml("  - rate: {requests: 100, per: 1m}\n")).expect("valid");
    let plain = &snap.agents["plain"].limits;
    assert_eq!(plain.items.len(), 1);
    assert_eq!(&*plain.items[0].path, "limits[0]");
    assert_eq!(plain.items[0].scope, Scope::Agent);
    assert!(snap.agents["opted-out"].limits.is_empty());
    assert_eq!(
        snap.agents["own"].limits.items[0].def,
        LimitDef::Rate(RateLimit {
            requests: 1,
            per: Duration::from_secs(1),
            burst: 1
        })
    );
    let err = load(&yaml(
        "  - rate: {requests: 100, per: 1m, scope: route}\n  - nonsense: 1\n",
    ))
    .unwrap_err();
    let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
    assert!(paths.contains(&"limits[0].rate.scope"), "{err}");
    assert!(paths.contains(&"limits[1].nonsense"), "{err}");
}
