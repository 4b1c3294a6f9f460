//! Drafting routes from the OpenAPI fixtures in `tests/fixtures/openapi/`: the exact routes, read
//! back from the YAML text, and the gateway's own config loader accepting them.

use super::*;
use serde::Deserialize;

const TICKETS_30: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/openapi/tickets.yaml"
));
const TICKETS_31: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/openapi/tickets-3.1.json"
));

/// A drafted route as the config file has it; unknown fields fail the test.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    name: String,
    methods: Vec<String>,
    path: Option<String>,
    path_regex: Option<String>,
    upstream: String,
    scopes: Vec<String>,
    approval: Option<BTreeMap<String, String>>,
}

fn route(name: &str, method: &str, path: &str, scopes: &[&str]) -> Route {
    Route {
        name: name.into(),
        methods: vec![method.into()],
        path: Some(path.into()),
        path_regex: None,
        upstream: "tickets-api".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        approval: None,
    }
}

fn regex_route(name: &str, method: &str, regex: &str, scopes: &[&str]) -> Route {
    Route {
        path: None,
        path_regex: Some(regex.into()),
        ..route(name, method, "", scopes)
    }
}

fn held(r: Route) -> Route {
    Route {
        approval: Some(BTreeMap::from([("mode".into(), "async".into())])),
        ..r
    }
}

fn ops(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn draft(spec: &str, agent: &str, ids: &[&str]) -> Drafted {
    draft_from_openapi(spec, agent, "tickets-api", &ops(ids)).expect("drafts")
}

fn routes(d: &Drafted) -> Vec<Route> {
    serde_yaml::from_str(&d.routes_yaml).unwrap_or_else(|e| {
        panic!(
            "routes_yaml is not a list of routes: {e}\n{}",
            d.routes_yaml
        )
    })
}

const ALL_30: [&str; 6] = [
    "listTickets",
    "createTicket",
    "getTicket",
    "deleteTicket",
    "addComment",
    "downloadAttachment",
];

#[test]
fn drafts_one_exact_route_per_operation_from_openapi_3_0() {
    let d = draft(TICKETS_30, "support-bot", &ALL_30);
    assert_eq!(
        routes(&d),
        vec![
            regex_route(
                "support-bot-download-attachment",
                "GET",
                r"^/v1/files/[^/]+\.pdf$",
                &["files:read"]
            ),
            route(
                "support-bot-list-tickets",
                "GET",
                "/v1/tickets",
                &["tickets:read"]
            ),
            route(
                "support-bot-create-ticket",
                "POST",
                "/v1/tickets",
                &["tickets:write"]
            ),
            route(
                "support-bot-get-ticket",
                "GET",
                "/v1/tickets/{ticketId}",
                &["tickets:read"]
            ),
            held(route(
                "support-bot-delete-ticket",
                "DELETE",
                "/v1/tickets/{ticketId}",
                &["tickets:delete"]
            )),
            route(
                "support-bot-add-comment",
                "POST",
                "/v1/tickets/{ticketId}/comments",
                &["comments:write"]
            ),
        ]
    );
    assert_eq!(
        d.scopes,
        [
            "comments:write",
            "files:read",
            "tickets:delete",
            "tickets:read",
            "tickets:write"
        ]
    );
    // A comment line names each operation and its summary, right above its route.
    let lines: Vec<&str> = d.routes_yaml.lines().collect();
    for (comment, name) in [
        (
            "# downloadAttachment: Download an attachment as PDF",
            "support-bot-download-attachment",
        ),
        ("# listTickets: List tickets", "support-bot-list-tickets"),
        (
            "# deleteTicket: Delete a ticket",
            "support-bot-delete-ticket",
        ),
        (
            "# addComment: Comment on a ticket",
            "support-bot-add-comment",
        ),
    ] {
        let at = lines
            .iter()
            .position(|l| *l == comment)
            .unwrap_or_else(|| panic!("no `{comment}` in\n{}", d.routes_yaml));
        assert_eq!(lines[at + 1], format!("- name: {name}"));
    }
    assert_eq!(
        d.routes_yaml
            .lines()
            .filter(|l| l.starts_with("# "))
            .count(),
        6
    );
}

#[test]
fn the_3_0_fixture_needs_the_3_0_fallback() {
    // Documents why `openapiv3` is there: the 3.1 model refuses this valid 3.0 document.
    let value: Value = serde_yaml::from_str(TICKETS_30).unwrap();
    assert!(serde_json::from_value::<oas3::Spec>(value.clone()).is_err());
    assert!(serde_json::from_value::<openapiv3::OpenAPI>(value).is_ok());
}

#[test]
fn drafts_from_openapi_3_1_json() {
    let d = draft(
        TICKETS_31,
        "triage",
        &[
            "listTickets",
            "updateTicket",
            "archive_ticket",
            "exportReport",
        ],
    );
    assert_eq!(
        routes(&d),
        vec![
            // Its own security is an API key only: no OAuth2 scope, so one derived from the path.
            regex_route(
                "triage-export-report",
                "GET",
                r"^/v2/reports/[^/]+\.csv$",
                &["reports:read"]
            ),
            // No security of its own: the document's OAuth2 scopes.
            route(
                "triage-list-tickets",
                "GET",
                "/v2/tickets",
                &["tickets:read"]
            ),
            // Its own OAuth2 scopes, all of them, sorted.
            route(
                "triage-update-ticket",
                "PATCH",
                "/v2/tickets/{ticket_id}",
                &["tickets:read", "tickets:write"]
            ),
            held(route(
                "triage-archive-ticket",
                "DELETE",
                "/v2/tickets/{ticket_id}",
                &["tickets:write"]
            )),
        ]
    );
    assert_eq!(d.scopes, ["reports:read", "tickets:read", "tickets:write"]);
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("`ticket-id`") && n.contains("{ticket_id}")),
        "{:#?}",
        d.notes
    );
    // The 3.1 document is one the 3.0 model cannot read: it went through `oas3`.
    let value: Value = serde_json::from_str(TICKETS_31).unwrap();
    assert!(serde_json::from_value::<openapiv3::OpenAPI>(value).is_err());
}

#[test]
fn a_shared_path_with_different_methods_gives_separate_routes() {
    let d = draft(
        TICKETS_30,
        "bot",
        &["createTicket", "listTickets", "getTicket", "deleteTicket"],
    );
    let got = routes(&d);
    let on = |path: &str| -> Vec<(String, Vec<String>)> {
        got.iter()
            .filter(|r| r.path.as_deref() == Some(path))
            .map(|r| (r.name.clone(), r.methods.clone()))
            .collect()
    };
    assert_eq!(
        on("/v1/tickets"),
        [
            ("bot-list-tickets".to_string(), vec!["GET".to_string()]),
            ("bot-create-ticket".to_string(), vec!["POST".to_string()]),
        ]
    );
    assert_eq!(
        on("/v1/tickets/{ticketId}"),
        [
            ("bot-get-ticket".to_string(), vec!["GET".to_string()]),
            ("bot-delete-ticket".to_string(), vec!["DELETE".to_string()]),
        ]
    );
}

#[test]
fn path_parameters_are_kept_and_the_base_path_prefixed() {
    let d = draft(TICKETS_30, "bot", &["addComment", "getTicket"]);
    let paths: Vec<Option<String>> = routes(&d).into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            Some("/v1/tickets/{ticketId}".to_string()),
            Some("/v1/tickets/{ticketId}/comments".to_string())
        ]
    );
}

#[test]
fn base_paths_come_from_the_first_server_url() {
    let none = BTreeMap::new();
    assert_eq!(base_path("https://api.example.com/v1", &none), "/v1");
    assert_eq!(base_path("https://api.example.com/v1/", &none), "/v1");
    assert_eq!(base_path("https://api.example.com", &none), "");
    assert_eq!(base_path("https://api.example.com/", &none), "");
    assert_eq!(base_path("/api/v3", &none), "/api/v3");
    assert_eq!(base_path("v3", &none), "/v3");
    assert_eq!(base_path("//api.example.com/v1?x=1", &none), "/v1");
    let vars = BTreeMap::from([
        ("region".to_string(), "eu".to_string()),
        ("basePath".to_string(), "v2".to_string()),
    ]);
    assert_eq!(
        base_path("https://{region}.example.com/{basePath}", &vars),
        "/v2"
    );
}

#[test]
fn delete_operations_are_held_for_async_approval() {
    let d = draft(TICKETS_30, "bot", &["deleteTicket", "getTicket"]);
    let got = routes(&d);
    assert_eq!(got[0].approval, None, "GET is not held");
    assert_eq!(
        got[1],
        held(route(
            "bot-delete-ticket",
            "DELETE",
            "/v1/tickets/{ticketId}",
            &["tickets:delete"]
        ))
    );
    assert!(
        d.notes
            .iter()
            .any(|n| n.starts_with("`deleteTicket`: high-risk: held for human approval")),
        "{:#?}",
        d.notes
    );
}

#[test]
fn a_parameter_inside_a_segment_becomes_an_anchored_regex() {
    let d = draft(TICKETS_30, "bot", &["downloadAttachment"]);
    let got = routes(&d);
    assert_eq!(
        got,
        [regex_route(
            "bot-download-attachment",
            "GET",
            r"^/v1/files/[^/]+\.pdf$",
            &["files:read"]
        )]
    );
    let rx = regex::Regex::new(got[0].path_regex.as_deref().unwrap()).unwrap();
    assert!(rx.is_match("/v1/files/invoice-7.pdf"));
    for other in [
        "/v1/files/a/b.pdf",
        "/v1/files/.pdf",
        "/v1/files/x.pdfx",
        "/v1/files/xpdf",
        "/files/x.pdf",
    ] {
        assert!(!rx.is_match(other), "{other} must not match");
    }
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("`downloadAttachment`") && n.contains("path_regex")),
        "{:#?}",
        d.notes
    );
}

#[test]
fn oauth2_security_scopes_are_used_when_present() {
    let d = draft(TICKETS_30, "bot", &["addComment", "createTicket"]);
    let scopes: Vec<(String, Vec<String>)> =
        routes(&d).into_iter().map(|r| (r.name, r.scopes)).collect();
    assert_eq!(
        scopes,
        [
            // The global API key is no OAuth2 scope: derived from path and method.
            (
                "bot-create-ticket".to_string(),
                vec!["tickets:write".to_string()]
            ),
            // `security: [{oauth: [comments:write]}]`, not `tickets:write` from its path.
            (
                "bot-add-comment".to_string(),
                vec!["comments:write".to_string()]
            ),
        ]
    );
    let derived: Vec<&String> = d.notes.iter().filter(|n| n.contains("derived")).collect();
    assert_eq!(derived.len(), 1, "{:#?}", d.notes);
    assert!(derived[0].contains("createTicket") && !derived[0].contains("addComment"));
}

#[test]
fn an_unknown_operation_is_refused_with_close_matches() {
    let err = draft_from_openapi(
        TICKETS_30,
        "bot",
        "tickets-api",
        &ops(&["getTiket", "listTickets"]),
    )
    .expect_err("getTiket is not in the document");
    let mut lines = err.lines();
    assert_eq!(
        lines.next(),
        Some("unknown operationId `getTiket`; did you mean `getTicket`?")
    );
    assert_eq!(
        lines.next(),
        Some(
            "operationIds in the document: addComment, createTicket, deleteTicket, downloadAttachment, getTicket, listTickets"
        )
    );
    assert_eq!(lines.next(), None);

    // Nothing close: no suggestion, still the list.
    let err =
        draft_from_openapi(TICKETS_30, "bot", "tickets-api", &ops(&["refundOrder"])).unwrap_err();
    assert!(
        err.starts_with("unknown operationId `refundOrder`\n"),
        "{err}"
    );
}

#[test]
fn duplicated_operations_are_drafted_once_and_request_order_does_not_matter() {
    let once = draft(TICKETS_30, "bot", &ALL_30);
    let mut reversed = ALL_30;
    reversed.reverse();
    let twice: Vec<&str> = reversed
        .iter()
        .chain(ALL_30.iter())
        .copied()
        .chain([" getTicket "])
        .collect();
    assert_eq!(draft(TICKETS_30, "bot", &twice), once);
    assert_eq!(routes(&once).len(), 6);
}

#[test]
fn bad_requests_and_documents_are_clear_errors() {
    let err = |spec: &str, agent: &str, upstream: &str, ids: &[&str]| {
        draft_from_openapi(spec, agent, upstream, &ops(ids)).unwrap_err()
    };
    assert_eq!(
        err(TICKETS_30, " ", "tickets-api", &["getTicket"]),
        "the agent id is empty"
    );
    assert_eq!(
        err(TICKETS_30, "bot", "", &["getTicket"]),
        "the upstream name is empty"
    );
    assert!(
        err(TICKETS_30, "bot", "tickets-api", &[" ", ""]).starts_with("no operations requested")
    );
    assert!(err(
        "swagger: '2.0'\ninfo: {title: t, version: '1'}\npaths: {}\n",
        "bot",
        "u",
        &["x"]
    )
    .starts_with("this is a Swagger 2.0 document"));
    assert!(err("openapi: 4.0.0\n", "bot", "u", &["x"]).contains("only 3.0 and 3.1"));
    assert!(err("{\"openapi\": ", "bot", "u", &["x"])
        .starts_with("the OpenAPI document is not valid JSON"));
    assert!(
        err("a: [b\n", "bot", "u", &["x"]).starts_with("the OpenAPI document is not valid YAML")
    );
    let e = err(
        "openapi: 3.0.3\ninfo: {title: t}\npaths: {}\n",
        "bot",
        "u",
        &["x"],
    );
    assert!(
        e.starts_with("cannot read the OpenAPI 3.0.3 document: info"),
        "{e}"
    );
    let trace = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    trace: {operationId: traceA, responses: {}}\n";
    assert_eq!(
        err(trace, "bot", "u", &["traceA"]),
        "operation `traceA` uses TRACE, which the gateway never forwards"
    );
    let dup = "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /a:\n    get: {operationId: x}\n  /b:\n    get: {operationId: x}\n";
    assert!(err(dup, "bot", "u", &["x"]).contains("appears 2 times"));
}

#[test]
fn scopes_and_names_that_need_quoting_read_back_unchanged() {
    let spec = r##"{
      "openapi": "3.1.0",
      "info": {"title": "t", "version": "1"},
      "paths": {"/a": {"get": {
        "operationId": "yes",
        "summary": "multi\n  line   summary",
        "security": [{"o": ["https://api.example.com/auth/a", "no", "a,b", "#x", "7", "{x}", "x:"]}]
      }}},
      "components": {"securitySchemes": {"o": {"type": "openIdConnect", "openIdConnectUrl": "https://x/.well-known/openid-configuration"}}}
    }"##;
    let d = draft_from_openapi(spec, "1bot", "up stream", &ops(&["yes"])).unwrap();
    let got = routes(&d);
    let mut want = vec![
        "https://api.example.com/auth/a",
        "no",
        "a,b",
        "#x",
        "7",
        "{x}",
        "x:",
    ];
    want.sort();
    assert_eq!(got[0].scopes, want);
    assert_eq!(got[0].name, "1bot-yes");
    assert_eq!(got[0].upstream, "up stream");
    assert!(
        d.routes_yaml.starts_with("# yes: multi line summary\n"),
        "{}",
        d.routes_yaml
    );
}

#[test]
fn partial_segment_parsing() {
    let shape = |seg: &str| -> Option<Vec<String>> {
        split_params(seg).map(|ps| {
            ps.iter()
                .map(|p| match p {
                    Piece::Literal(l) => format!("L:{l}"),
                    Piece::Param(n) => format!("P:{n}"),
                })
                .collect()
        })
    };
    assert_eq!(shape("tickets").unwrap(), ["L:tickets"]);
    assert_eq!(shape("{id}").unwrap(), ["P:id"]);
    assert_eq!(shape("{name}.pdf").unwrap(), ["P:name", "L:.pdf"]);
    assert_eq!(
        shape("v{major}.{minor}").unwrap(),
        ["L:v", "P:major", "L:.", "P:minor"]
    );
    for bad in ["{id", "id}", "{}", "{a{b}}", "a}{b"] {
        assert!(shape(bad).is_none(), "{bad}");
    }
}

#[test]
fn drafted_routes_are_accepted_by_the_gateway_config_loader() {
    for (spec, agent, ids) in [
        (TICKETS_30, "support-bot", &ALL_30[..]),
        (
            TICKETS_31,
            "triage",
            &[
                "listTickets",
                "updateTicket",
                "archive_ticket",
                "exportReport",
            ][..],
        ),
    ] {
        let d = draft(spec, agent, ids);
        let dir = tempfile::tempdir().unwrap();
        let pem = crate::identity::generate_signing_key().unwrap();
        let jwk = crate::identity::signing_key_jwk(pem.as_bytes(), "k1").unwrap();
        let text = format!(
            "issuers:
  - name: idp
    issuer: https://idp.example.test
    audiences: [tools]
    algorithms: [ES256]
    keys:
      - jwk: {jwk}
agents:
  - id: {agent}
    owner: alice@example.com
    scopes: {scopes}
upstreams:
  - name: tickets-api
    url: http://127.0.0.1:9
approvals:
  store: approvals.db
  approvers:
    - name: alice
      token_sha256: \"{hash}\"
routes:
{routes}",
            jwk = serde_json::to_string(&jwk).unwrap(),
            scopes = serde_json::to_string(&d.scopes).unwrap(),
            hash = "ab".repeat(32),
            routes = d.routes_yaml,
        );
        let ctx = crate::config::LoadContext::new(
            crate::identity::KeyStore::new(std::sync::Arc::new(|_| {})),
            1,
        );
        let snap = crate::config::load_str(&text, dir.path(), "draft.yaml", &ctx)
            .unwrap_or_else(|e| panic!("the gateway refused the draft: {e}\n{text}"));
        assert_eq!(snap.agents[agent].scopes.len(), d.scopes.len());
    }
}
