//! `portcullis policy from-openapi`: least-privilege routes drafted from an OpenAPI document.
//!
//! An agent's function needs a handful of an API's operations, not the whole API. Given the
//! `operationId`s it needs, [`draft_from_openapi`] drafts one route per operation (its exact
//! method, its exact path, its own scope), so the policy grants precisely those calls and nothing
//! next to them: never a wider method list because two operations share a path, never a `/**`.
//! The draft is text for a person to review and paste, never applied by itself; [`Drafted::notes`]
//! say what the reviewer should look at.
//!
//! Reading the document: OpenAPI 3.1 through `oas3`. Some valid 3.0 documents are not valid 3.1
//! (a boolean `exclusiveMinimum`, for one) and `oas3` refuses them, so a document `oas3` cannot
//! read is read again through `openapiv3`, the 3.0 model. Both are reduced to the same short list
//! of `SpecOp`s, so drafting never depends on which crate read the document.

use std::collections::{BTreeMap, BTreeSet};

use heck::ToKebabCase;
use serde_json::Value;

use crate::policy::PathPattern;

/// Routes and scopes drafted for one agent from an OpenAPI document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drafted {
    /// A YAML sequence of routes, ready to paste under `routes:`; a comment line above each route
    /// names the operation it was drafted from and that operation's summary.
    pub routes_yaml: String,
    /// Every scope the drafted routes require, sorted and without duplicates: the agent's
    /// `agents[].scopes`.
    pub scopes: Vec<String>,
    /// What a reviewer should check: regexes used where a template cannot express the path,
    /// operations held for approval, scopes invented from paths, renamed parameters.
    pub notes: Vec<String>,
}

/// Draft least-privilege gateway routes for the operations `operations` of the OpenAPI 3.0 or
/// 3.1 document `spec_text` (YAML or JSON), for agent `agent` calling upstream `upstream`.
///
/// One route per operation, named `<agent>-<operationId in kebab-case>`, with its one method and
/// the server's base path (the path of the first `servers[].url`) before the operation's path.
/// Path parameters that are whole segments stay `{param}` template segments; a parameter inside a
/// segment (`/files/{name}.pdf`) makes the route an anchored `path_regex`. Each route requires
/// the operation's OAuth2 (or OpenID Connect) scopes from its `security`, or the document's, when
/// there are any; otherwise one scope `<first literal path segment>:<read|write|delete>`. DELETE
/// operations are held for asynchronous human approval. Routes are ordered by path, then method
/// (in the order GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS), so the same request always drafts
/// the same text.
///
/// Errors: a document that is not OpenAPI 3.x or cannot be read, an empty agent, upstream or
/// operation list, an `operationId` the document does not have (the error names close matches and
/// lists the ones it has), and an operation the gateway cannot route (TRACE, or a path that no
/// template or regex can express).
pub fn draft_from_openapi(
    spec_text: &str,
    agent: &str,
    upstream: &str,
    operations: &[String],
) -> Result<Drafted, String> {
    let agent = agent.trim();
    if agent.is_empty() {
        return Err("the agent id is empty".into());
    }
    let upstream = upstream.trim();
    if upstream.is_empty() {
        return Err("the upstream name is empty".into());
    }
    // A set: an operation asked for twice is still one route, and the request order must not
    // change the output.
    let wanted: BTreeSet<&str> = operations
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if wanted.is_empty() {
        return Err("no operations requested: name the operationIds the agent needs".into());
    }

    let spec_ops = read_spec(spec_text)?;
    let mut by_id: BTreeMap<&str, Vec<&SpecOp>> = BTreeMap::new();
    for op in &spec_ops {
        by_id.entry(op.id.as_str()).or_default().push(op);
    }
    let unknown: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !by_id.contains_key(w))
        .collect();
    if !unknown.is_empty() {
        return Err(unknown_operations(&unknown, &by_id));
    }

    let mut drafts = Vec::with_capacity(wanted.len());
    for id in &wanted {
        let found = &by_id[id];
        if found.len() > 1 {
            // operationIds are unique by the specification; drafting either one could grant the
            // wrong call, so the document has to be fixed first.
            let places: Vec<String> = found
                .iter()
                .map(|o| format!("{} {}", o.method, o.path))
                .collect();
            return Err(format!(
                "operationId `{id}` appears {} times in the document ({}); operationIds must be unique",
                found.len(),
                places.join(", ")
            ));
        }
        drafts.push(draft_route(found[0], agent)?);
    }
    drafts.sort_by(|a, b| {
        (a.full_path.as_str(), method_rank(&a.method))
            .cmp(&(b.full_path.as_str(), method_rank(&b.method)))
    });

    let mut notes = Vec::new();
    let mut used_names = BTreeSet::new();
    for d in &mut drafts {
        if !used_names.insert(d.name.clone()) {
            // Two operationIds with the same kebab-case spelling (`getTicket`, `get_ticket`): the
            // config loader refuses duplicate route names, so the later one gets a number.
            let base = d.name.clone();
            let mut n = 2;
            while !used_names.insert(format!("{base}-{n}")) {
                n += 1;
            }
            d.name = format!("{base}-{n}");
            notes.push(format!(
                "`{}`: route name `{base}` was already taken; named `{}`",
                d.op_id, d.name
            ));
        }
        notes.append(&mut d.notes);
    }

    let derived: Vec<&RouteDraft> = drafts.iter().filter(|d| d.derived_scope).collect();
    if !derived.is_empty() {
        let ids: Vec<&str> = derived.iter().map(|d| d.op_id.as_str()).collect();
        let scopes: BTreeSet<&str> = derived
            .iter()
            .flat_map(|d| d.scopes.iter().map(String::as_str))
            .collect();
        notes.push(format!(
            "no OAuth2 scopes in the document for {}: scopes derived from path and method ({}); the agent's tokens must carry them",
            ids.join(", "),
            scopes.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    let scopes: BTreeSet<String> = drafts.iter().flat_map(|d| d.scopes.clone()).collect();
    Ok(Drafted {
        routes_yaml: render(&drafts, upstream),
        scopes: scopes.into_iter().collect(),
        notes,
    })
}

/// One operation of the document, reduced to what drafting needs; both parsers produce it.
#[derive(Debug, Clone)]
struct SpecOp {
    /// `operationId`.
    id: String,
    /// Upper-case method.
    method: String,
    /// The path as the document writes it, e.g. `/tickets/{ticketId}`.
    path: String,
    /// Path of the operation's effective server URL, without a trailing `/` (`""` or `/v1`).
    base_path: String,
    /// `summary`, if any.
    summary: Option<String>,
    /// The OAuth2/OpenID Connect scopes of each alternative of the effective `security`
    /// (alternatives without such scopes left out).
    scope_sets: Vec<BTreeSet<String>>,
}

/// Parse the document and list its operations that have an `operationId`.
fn read_spec(text: &str) -> Result<Vec<SpecOp>, String> {
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| format!("the OpenAPI document is not valid JSON: {e}"))?
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| format!("the OpenAPI document is not valid YAML: {e}"))?
    };
    let version = match value.get("openapi") {
        Some(Value::String(v)) => v.clone(),
        _ if value.get("swagger").is_some() => {
            return Err(
                "this is a Swagger 2.0 document; convert it to OpenAPI 3 first (e.g. with swagger2openapi)".into(),
            )
        }
        _ => return Err("not an OpenAPI document: no `openapi` version field".into()),
    };
    if !version.starts_with("3.") {
        return Err(format!(
            "OpenAPI {version} is not supported; only 3.0 and 3.1 documents are"
        ));
    }
    // The 3.1 model first (the current version); a 3.0 document it refuses goes to the 3.0 model.
    let v31 = serde_path_to_error::deserialize::<_, oas3::Spec>(&value);
    let err31 = match v31 {
        Ok(spec) => return Ok(ops_from_oas3(&spec)),
        Err(e) => e,
    };
    match serde_path_to_error::deserialize::<_, openapiv3::OpenAPI>(&value) {
        Ok(spec) => Ok(ops_from_openapiv3(&spec)),
        // Report the error of the model the document claims to follow.
        Err(err30) if version.starts_with("3.0") => Err(format!(
            "cannot read the OpenAPI {version} document: {err30}"
        )),
        Err(_) => Err(format!(
            "cannot read the OpenAPI {version} document: {err31}"
        )),
    }
}

fn ops_from_oas3(spec: &oas3::Spec) -> Vec<SpecOp> {
    use oas3::spec::SecurityScheme;
    let oauth: BTreeSet<String> = spec
        .components
        .iter()
        .flat_map(|c| c.security_schemes.iter())
        .filter(|(_, s)| {
            matches!(
                s.resolve(spec),
                Ok(SecurityScheme::OAuth2 { .. } | SecurityScheme::OpenIdConnect { .. })
            )
        })
        .map(|(name, _)| name.clone())
        .collect();
    let requirements =
        |reqs: &[oas3::spec::SecurityRequirement]| -> Vec<BTreeMap<String, Vec<String>>> {
            reqs.iter()
                .map(|r| r.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .collect()
        };
    let global = requirements(&spec.security);
    let server = |servers: &[oas3::spec::Server]| {
        servers.first().map(|s| {
            let vars = s
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.default.clone()))
                .collect();
            (s.url.clone(), vars)
        })
    };
    let top_server = server(&spec.servers);
    let mut out = Vec::new();
    for (path, item) in spec.paths.iter().flat_map(|p| p.iter()) {
        let path_server = server(&item.servers);
        for (method, op) in item.methods() {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            // `oas3` reads an absent `security` and `security: []` alike, as empty: both fall back
            // to the document's requirements (at worst a scope more than needed, never one less).
            let own = requirements(&op.security);
            let security = if own.is_empty() { &global } else { &own };
            let srv = server(&op.servers)
                .or_else(|| path_server.clone())
                .or_else(|| top_server.clone());
            out.push(SpecOp {
                id,
                method: method.as_str().to_ascii_uppercase(),
                path: path.clone(),
                base_path: srv.map(|(u, v)| base_path(&u, &v)).unwrap_or_default(),
                summary: op.summary.clone(),
                scope_sets: scope_sets(security, &oauth),
            });
        }
    }
    out
}

fn ops_from_openapiv3(spec: &openapiv3::OpenAPI) -> Vec<SpecOp> {
    use openapiv3::{ReferenceOr, SecurityScheme};
    let schemes = spec.components.as_ref().map(|c| &c.security_schemes);
    let is_oauth = |s: &SecurityScheme| {
        matches!(
            s,
            SecurityScheme::OAuth2 { .. } | SecurityScheme::OpenIDConnect { .. }
        )
    };
    let oauth: BTreeSet<String> = schemes
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(_, s)| match s {
            ReferenceOr::Item(s) => is_oauth(s),
            // One level of `$ref` to another scheme of the same document.
            ReferenceOr::Reference { reference } => reference
                .strip_prefix("#/components/securitySchemes/")
                .and_then(|n| schemes.and_then(|m| m.get(n)))
                .is_some_and(|t| matches!(t, ReferenceOr::Item(t) if is_oauth(t))),
        })
        .map(|(name, _)| name.clone())
        .collect();
    let requirements =
        |reqs: &[openapiv3::SecurityRequirement]| -> Vec<BTreeMap<String, Vec<String>>> {
            reqs.iter()
                .map(|r| r.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .collect()
        };
    let global = requirements(spec.security.as_deref().unwrap_or_default());
    let server = |servers: &[openapiv3::Server]| {
        servers.first().map(|s| {
            let vars = s
                .variables
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.default.clone()))
                .collect();
            (s.url.clone(), vars)
        })
    };
    let top_server = server(&spec.servers);
    let mut out = Vec::new();
    for (path, item) in spec.paths.iter() {
        // A `$ref` path item lives elsewhere (often another file); its operations are not seen.
        let ReferenceOr::Item(item) = item else {
            continue;
        };
        let path_server = server(&item.servers);
        for (method, op) in item.iter() {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            // Here `security: []` (explicitly none) is told apart from an absent one.
            let security = match &op.security {
                Some(own) => requirements(own),
                None => global.clone(),
            };
            let srv = server(&op.servers)
                .or_else(|| path_server.clone())
                .or_else(|| top_server.clone());
            out.push(SpecOp {
                id,
                method: method.to_ascii_uppercase(),
                path: path.clone(),
                base_path: srv.map(|(u, v)| base_path(&u, &v)).unwrap_or_default(),
                summary: op.summary.clone(),
                scope_sets: scope_sets(&security, &oauth),
            });
        }
    }
    out
}

/// The scopes of each security alternative, counting only OAuth2/OpenID Connect schemes: an API
/// key's or HTTP scheme's list (3.1 "roles") is not something a token carries as a scope.
fn scope_sets(
    requirements: &[BTreeMap<String, Vec<String>>],
    oauth: &BTreeSet<String>,
) -> Vec<BTreeSet<String>> {
    requirements
        .iter()
        .map(|req| {
            req.iter()
                .filter(|(scheme, _)| oauth.contains(*scheme))
                .flat_map(|(_, scopes)| scopes.iter().cloned())
                .collect::<BTreeSet<String>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The path part of a server URL (`https://{region}.api.example.com/v1/` → `/v1`), with the
/// server variables replaced by their defaults; `""` for a URL without a path.
fn base_path(url: &str, vars: &BTreeMap<String, String>) -> String {
    let mut url = url.to_string();
    for (name, default) in vars {
        url = url.replace(&format!("{{{name}}}"), default);
    }
    let after_authority = |rest: &str| rest.find('/').map(|i| rest[i..].to_string());
    let path = if let Some(i) = url.find("://") {
        after_authority(&url[i + 3..]).unwrap_or_default()
    } else if let Some(rest) = url.strip_prefix("//") {
        after_authority(rest).unwrap_or_default()
    } else {
        url.clone()
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_end_matches('/');
    if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        // A relative server URL such as `v1` is relative to where the document is served; the
        // gateway only knows absolute paths, so read it from the root.
        format!("/{path}")
    }
}

/// A route being drafted.
#[derive(Debug)]
struct RouteDraft {
    op_id: String,
    summary: Option<String>,
    name: String,
    method: String,
    /// Base path + document path, the sort key.
    full_path: String,
    path: GatewayPath,
    scopes: Vec<String>,
    /// The scope was made up from the path (the document had no OAuth2 scopes).
    derived_scope: bool,
    approval: bool,
    notes: Vec<String>,
}

/// How the route matches paths.
#[derive(Debug, PartialEq, Eq)]
enum GatewayPath {
    /// `path:` template.
    Template(String),
    /// `path_regex:`.
    Regex(String),
}

fn draft_route(op: &SpecOp, agent: &str) -> Result<RouteDraft, String> {
    let id = &op.id;
    if !matches!(
        op.method.as_str(),
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    ) {
        return Err(format!(
            "operation `{id}` uses {}, which the gateway never forwards",
            op.method
        ));
    }
    let full_path = format!("{}{}", op.base_path, op.path);
    let mut notes = Vec::new();
    let path = gateway_path(&full_path, id, &mut notes)?;

    let mut scope_sets = op.scope_sets.iter();
    let (scopes, derived_scope) = match scope_sets.next() {
        Some(first) => {
            if op.scope_sets.len() > 1 {
                // Alternatives (any one suffices) cannot be written as one `scopes` list without
                // either requiring all of them or picking one; requiring all never grants a call
                // the document did not, so that is the draft, and the reviewer decides.
                notes.push(format!(
                    "`{id}`: the document accepts any of {} security alternatives; the route requires the scopes of all of them (consider `any_of`)",
                    op.scope_sets.len()
                ));
            }
            let all: BTreeSet<String> = scope_sets.fold(first.clone(), |mut acc, s| {
                acc.extend(s.iter().cloned());
                acc
            });
            (all.into_iter().collect(), false)
        }
        None => (vec![derived(&op.path, &op.method)], true),
    };
    let approval = op.method == "DELETE";
    if approval {
        notes.push(format!(
            "`{id}`: high-risk: held for human approval (`approval: {{mode: async}}`; the config needs an `approvals:` section)"
        ));
    }
    Ok(RouteDraft {
        op_id: id.clone(),
        summary: op.summary.clone(),
        name: format!("{agent}-{}", id.to_kebab_case()),
        method: op.method.clone(),
        full_path,
        path,
        scopes,
        derived_scope,
        approval,
        notes,
    })
}

/// `<first literal segment of the document's path>:<read|write|delete>`, e.g. `tickets:read`.
/// The base path is left out: `/v1` names a version, not a resource.
fn derived(path: &str, method: &str) -> String {
    let resource = path
        .split('/')
        .find(|s| !s.is_empty() && !s.contains(['{', '}']))
        .unwrap_or("api");
    let action = match method {
        "GET" | "HEAD" | "OPTIONS" => "read",
        "DELETE" => "delete",
        _ => "write",
    };
    format!("{resource}:{action}")
}

/// The gateway's form of an OpenAPI path: a template when every parameter is a whole segment,
/// else an anchored regex. Either is checked with the gateway's own parser, so a draft that would
/// not load is an error here rather than in the reviewer's config.
fn gateway_path(full: &str, id: &str, notes: &mut Vec<String>) -> Result<GatewayPath, String> {
    let cannot =
        |why: String| format!("operation `{id}`: path `{full}` cannot be a gateway route: {why}");
    let mut template = Vec::new();
    let mut regex = Vec::new();
    let mut partial = false;
    for seg in full.split('/') {
        let pieces = split_params(seg).ok_or_else(|| cannot("unbalanced `{` or `}`".into()))?;
        regex.push(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Literal(l) => regex::escape(l),
                    Piece::Param(_) => "[^/]+".to_string(),
                })
                .collect::<String>(),
        );
        match pieces.as_slice() {
            [Piece::Param(name)] => {
                // Template parameter names are letters, digits and `_`; the name only labels the
                // segment, so a `ticket-id` is renamed rather than refused.
                let clean: String = name
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if clean != *name {
                    notes.push(format!(
                        "`{id}`: path parameter `{name}` written `{{{clean}}}` (template parameter names are letters, digits and `_`)"
                    ));
                }
                template.push(format!("{{{clean}}}"));
            }
            pieces => {
                partial |= pieces.iter().any(|p| matches!(p, Piece::Param(_)));
                template.push(seg.to_string());
            }
        }
    }
    if partial {
        let rx = format!("^{}$", regex.join("/"));
        PathPattern::regex(&rx).map_err(|e| cannot(e.to_string()))?;
        notes.push(format!(
            "`{id}`: `{full}` has a parameter inside a segment, which a path template cannot express; drafted as path_regex `{rx}`"
        ));
        Ok(GatewayPath::Regex(rx))
    } else {
        let t = template.join("/");
        PathPattern::template(&t).map_err(|e| cannot(e.to_string()))?;
        Ok(GatewayPath::Template(t))
    }
}

/// A piece of one path segment.
enum Piece<'a> {
    Literal(&'a str),
    Param(&'a str),
}

/// `{name}.pdf` → `[Param(name), Literal(.pdf)]`; `None` for unbalanced braces.
fn split_params(seg: &str) -> Option<Vec<Piece<'_>>> {
    let mut out = Vec::new();
    let mut rest = seg;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return None;
        }
        let close = open + rest[open..].find('}')?;
        let name = &rest[open + 1..close];
        if name.is_empty() || name.contains('{') {
            return None;
        }
        if open > 0 {
            out.push(Piece::Literal(&rest[..open]));
        }
        out.push(Piece::Param(name));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(Piece::Literal(rest));
    }
    Some(out)
}

/// Rank of a method in the order routes are listed.
fn method_rank(m: &str) -> usize {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .iter()
        .position(|x| *x == m)
        .unwrap_or(usize::MAX)
}

/// The routes as YAML text. Written by hand, not serialized, for the comment lines and the
/// compact flow lists a person would write (`methods: [GET]`); the tests read it back.
fn render(drafts: &[RouteDraft], upstream: &str) -> String {
    let mut out = String::new();
    for d in drafts {
        let summary = d
            .summary
            .as_deref()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty());
        match summary {
            Some(s) => out.push_str(&format!("# {}: {s}\n", d.op_id)),
            None => out.push_str(&format!("# {}\n", d.op_id)),
        }
        out.push_str(&format!("- name: {}\n", scalar(&d.name)));
        out.push_str(&format!("  methods: [{}]\n", d.method));
        match &d.path {
            GatewayPath::Template(t) => out.push_str(&format!("  path: {}\n", scalar(t))),
            GatewayPath::Regex(r) => {
                out.push_str(&format!("  path_regex: '{}'\n", r.replace('\'', "''")))
            }
        }
        out.push_str(&format!("  upstream: {}\n", scalar(upstream)));
        let scopes: Vec<String> = d.scopes.iter().map(|s| scalar(s)).collect();
        out.push_str(&format!("  scopes: [{}]\n", scopes.join(", ")));
        if d.approval {
            out.push_str("  approval: {mode: async}\n");
        }
    }
    out
}

/// `s` as a YAML scalar that reads back as the same string both as a mapping value and inside a
/// flow list: plain when that is unambiguous, else double-quoted (a JSON string is a valid YAML
/// double-quoted scalar).
fn scalar(s: &str) -> String {
    let plain_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':'));
    // `{`/`}` end a flow list, so only a template path (a mapping value) keeps them plain, and
    // only after a leading `/` (a leading `{` would open a flow mapping).
    let template = s.starts_with('/')
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '{' | '}')
        });
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/');
    // Words YAML 1.1 (libyaml, serde_yaml) reads as booleans or null.
    let keyword = matches!(
        s.to_ascii_lowercase().as_str(),
        "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null"
    );
    if (plain_chars || template) && first_ok && !keyword && !s.ends_with(':') && !s.contains("::") {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// The error for operationIds the document does not have: close matches first, then every
/// operationId it has.
fn unknown_operations(unknown: &[&str], by_id: &BTreeMap<&str, Vec<&SpecOp>>) -> String {
    let mut lines = Vec::new();
    for u in unknown {
        let mut close: Vec<(usize, &str)> = by_id
            .keys()
            .map(|k| {
                (
                    strsim::levenshtein(&u.to_lowercase(), &k.to_lowercase()),
                    *k,
                )
            })
            .filter(|(d, k)| *d <= (k.chars().count().max(u.chars().count()) / 3).max(2))
            .collect();
        close.sort();
        let hint = match close.as_slice() {
            [] => String::new(),
            c => format!(
                "; did you mean {}?",
                c.iter()
                    .take(3)
                    .map(|(_, k)| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        };
        lines.push(format!("unknown operationId `{u}`{hint}"));
    }
    let available = if by_id.is_empty() {
        "the document has no operations with an operationId".to_string()
    } else {
        format!(
            "operationIds in the document: {}",
            by_id.keys().copied().collect::<Vec<_>>().join(", ")
        )
    };
    format!("{}\n{available}", lines.join("\n"))
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
