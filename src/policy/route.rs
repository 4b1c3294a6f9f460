//! Compiled routes and the table that finds the one route a request falls under.
//!
//! # Which route wins
//!
//! Routes are ranked once, at load time, from most to least specific; the first route in that
//! order whose method, host and path all match is *the* route of the request. Later routes are
//! never consulted, even when the winner refuses the call for lack of scope: a broad route must
//! not grant what a narrower one withholds. The ranking, compared key by key:
//!
//! 1. host: an exact `host` beats a `*.suffix` wildcard (longer suffix first), which beats no host;
//! 2. path: templates beat `path_regex` routes; between templates, segments are compared left to
//!    right, a literal beating a `{param}` beating a trailing `/**`, and at the end an exact end
//!    beats a `/**` (so `/a/b` > `/a/{id}` > `/a/**`, and `/a` > `/a/**` for the path `/a`);
//! 3. methods: a route listing methods beats one allowing any method;
//! 4. file order: the earlier route wins a complete tie.
//!
//! # Host-scoped routes claim their paths on their upstream
//!
//! The upstream never sees the agent's `Host` (the gateway sends the upstream's own), so a
//! route with a `host` would be pointless if a broader route (no host, or a wider wildcard) to
//! the *same upstream* also matched the same method and path for any other host. Such a call is
//! refused ([`Lookup::HostScoped`]): a host-scoped route decides its method and path on its
//! upstream for every host, never a broader route beside it.

use super::path::NormalizedPath;
use http::Method;
use regex::Regex;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal the request segment exactly.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// How a route matches paths.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// `/api/tickets/{id}` or `/api/**` (`rest` = trailing `/**`, zero or more segments).
    Template {
        /// The fixed segments.
        segments: Vec<Segment>,
        /// Ends in `/**`.
        rest: bool,
    },
    /// Anchored regex over the whole normalized path.
    Regex(Regex),
}

impl std::fmt::Display for PathPattern {
    /// The template as written in the config (`/api/tickets/{id}`, `/api/**`), or the regex.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathPattern::Template { segments, rest } => {
                for s in segments {
                    match s {
                        Segment::Literal(l) => write!(f, "/{l}")?,
                        Segment::Param(p) => write!(f, "/{{{p}}}")?,
                    }
                }
                if *rest {
                    write!(f, "/**")
                } else if segments.is_empty() {
                    write!(f, "/")
                } else {
                    Ok(())
                }
            }
            PathPattern::Regex(r) => write!(f, "{}", r.as_str()),
        }
    }
}

/// Why a path template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Must start with `/`.
    #[error("a path template must start with `/`")]
    NotAbsolute,
    /// `**` anywhere but at the end.
    #[error("`**` is only allowed as the last segment (`/prefix/**`)")]
    MisplacedRest,
    /// `{` without a whole-segment `{name}`.
    #[error("segment `{0}`: a parameter must be a whole segment such as `{{id}}`")]
    BadParam(String),
    /// A character that normalized request paths never contain.
    #[error("segment `{0}` contains `{1}`, which a normalized request path never has; write the decoded character")]
    BadChar(String, char),
    /// Empty segment (`//`) or a dot segment.
    #[error("segment `{0}` is empty or a dot segment; request paths are normalized, so it would never match")]
    EmptyOrDot(String),
}

impl PathPattern {
    /// Parse a template such as `/api/tickets/{id}` or `/api/**`.
    pub fn template(t: &str) -> Result<PathPattern, TemplateError> {
        let body = t.strip_prefix('/').ok_or(TemplateError::NotAbsolute)?;
        let mut segments = Vec::new();
        let mut rest = false;
        let parts: Vec<&str> = if body.is_empty() {
            Vec::new()
        } else {
            body.trim_end_matches('/').split('/').collect()
        };
        for (i, seg) in parts.iter().enumerate() {
            if *seg == "**" {
                if i + 1 != parts.len() {
                    return Err(TemplateError::MisplacedRest);
                }
                rest = true;
                continue;
            }
            if seg.is_empty() || *seg == "." || *seg == ".." {
                return Err(TemplateError::EmptyOrDot(seg.to_string()));
            }
            if seg.starts_with('{') || seg.ends_with('}') {
                let name = seg
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_'))
                    .ok_or_else(|| TemplateError::BadParam(seg.to_string()))?;
                segments.push(Segment::Param(name.to_string()));
                continue;
            }
            if let Some(c) = seg
                .chars()
                .find(|c| matches!(c, '{' | '}' | '*' | '%' | '?' | '#' | '\\') || c.is_control())
            {
                return Err(TemplateError::BadChar(seg.to_string(), c));
            }
            segments.push(Segment::Literal(seg.to_string()));
        }
        Ok(PathPattern::Template { segments, rest })
    }

    /// Compile `path_regex`, anchored at both ends so it always covers the whole path.
    pub fn regex(r: &str) -> Result<PathPattern, regex::Error> {
        Regex::new(&format!("^(?:{r})$")).map(PathPattern::Regex)
    }

    /// Compile `path_regex` case-insensitively (routes to `case_insensitive` upstreams).
    pub fn regex_case_insensitive(r: &str) -> Result<PathPattern, regex::Error> {
        Regex::new(&format!("(?i)^(?:{r})$")).map(PathPattern::Regex)
    }

    /// Does `path` match? `ignore_case` compares literal segments ignoring ASCII case (for
    /// upstreams that serve `/Admin` and `/admin` alike; regexes carry their own flag).
    pub fn matches(&self, path: &NormalizedPath, ignore_case: bool) -> bool {
        match self {
            PathPattern::Regex(r) => r.is_match(path.as_str()),
            PathPattern::Template { segments, rest } => {
                let mut it = path.segments();
                for seg in segments {
                    match (seg, it.next()) {
                        (_, None) => return false,
                        (Segment::Literal(l), Some(s))
                            if !(l == s || (ignore_case && l.eq_ignore_ascii_case(s))) =>
                        {
                            return false
                        }
                        _ => {}
                    }
                }
                *rest || it.next().is_none()
            }
        }
    }

    /// The literal first segment, used to index the table.
    fn first_literal(&self) -> Option<&str> {
        match self {
            PathPattern::Template { segments, .. } => match segments.first() {
                Some(Segment::Literal(l)) => Some(l),
                _ => None,
            },
            PathPattern::Regex(_) => None,
        }
    }

    /// Specificity key (bigger = more specific), see the module docs.
    fn rank_key(&self) -> Vec<u8> {
        match self {
            PathPattern::Regex(_) => vec![0],
            PathPattern::Template { segments, rest } => {
                let mut k: Vec<u8> = vec![1];
                k.extend(segments.iter().map(|s| match s {
                    Segment::Literal(_) => 4,
                    Segment::Param(_) => 3,
                }));
                k.push(if *rest { 1 } else { 2 });
                k
            }
        }
    }
}

/// How a route matches the Host header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host (or none).
    Any,
    /// Exactly this host (lowercase, no port).
    Exact(String),
    /// `*.example.com`: stored as `.example.com`, one or more labels before it.
    Suffix(String),
}

impl HostPattern {
    /// Parse `tools.internal`, `*.internal`, or nothing.
    pub fn parse(h: Option<&str>) -> Result<HostPattern, String> {
        let Some(h) = h else {
            return Ok(HostPattern::Any);
        };
        let h = h.trim().to_ascii_lowercase();
        let valid = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if let Some(suffix) = h.strip_prefix("*.") {
            if valid(suffix) {
                return Ok(HostPattern::Suffix(format!(".{suffix}")));
            }
        } else if valid(&h) {
            return Ok(HostPattern::Exact(h));
        }
        Err(format!(
            "`{h}` is not a host name or `*.domain` wildcard (no port, no scheme)"
        ))
    }

    /// Does the request host (already lowercased, port stripped) match?
    pub fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(e) => host == Some(e.as_str()),
            HostPattern::Suffix(s) => {
                host.is_some_and(|h| h.len() > s.len() && h.ends_with(s.as_str()))
            }
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Any => (0, 0),
            HostPattern::Suffix(s) => (1, s.len()),
            HostPattern::Exact(_) => (2, 0),
        }
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name from the config.
    pub name: Arc<str>,
    /// `name` as a header value (`x-portcullis-route`), made once per load.
    pub name_header: Option<http::HeaderValue>,
    /// Position in the file (tie-breaker).
    pub file_index: usize,
    /// Allowed methods; empty = any.
    pub methods: Vec<Method>,
    /// Host condition.
    pub host: HostPattern,
    /// Path condition.
    pub path: PathPattern,
    /// Index into [`super::Snapshot::upstreams`].
    pub upstream: usize,
    /// Every one of these scopes is required.
    pub scopes_all: Vec<String>,
    /// If non-empty, at least one of these is required too.
    pub scopes_any: Vec<String>,
    /// Calls need human approval first.
    pub approval: Option<Arc<super::snapshot::ApprovalPolicy>>,
    /// Literal segments match ignoring ASCII case (the upstream is `case_insensitive`).
    pub case_insensitive: bool,
    /// `websocket: true`: a WebSocket upgrade may pass; any other `Upgrade` never does.
    pub websocket: bool,
    /// Policies that only record what they would refuse on this route (the route's own
    /// `mode`/`shadow` and the global `enforcement:` section, merged at load time).
    pub shadow: Shadow,
    /// Rate and data-volume limits declared on this route.
    pub limits: super::limits::Limits,
    /// Contextual conditions of the route (empty: none).
    pub conditions: super::conditions::Conditions,
    /// Monitoring labels (`tags:`), shared by every call event of the route.
    pub tags: Arc<[Arc<str>]>,
    /// `kind: mcp`: the route carries JSON-RPC (Model Context Protocol) and these rules name
    /// its tools, prompts and resources.
    pub mcp: Option<Arc<super::mcp::McpPolicy>>,
    /// `store_unavailable: fail_open`: when the shared state store cannot be reached, decide
    /// limits on this replica's own counters instead of refusing.
    pub fail_open: bool,
}

/// Which shadowable policies of a route record `would_deny` instead of refusing. Identity,
/// routing and request-meaning checks are never shadowed: a bad token, an unrouted call or an
/// override header is always refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shadow {
    /// Scope checks.
    pub scopes: bool,
    /// Contextual conditions.
    pub conditions: bool,
    /// Rate and volume limits.
    pub limits: bool,
}

impl Shadow {
    /// Every shadowable policy.
    pub const ALL: Shadow = Shadow {
        scopes: true,
        conditions: true,
        limits: true,
    };

    /// Names accepted in `shadow:` lists.
    pub const NAMES: [&'static str; 3] = ["scopes", "conditions", "limits"];

    /// Add the policy named `name`; false for an unknown name.
    pub fn add(&mut self, name: &str) -> bool {
        match name {
            "scopes" => self.scopes = true,
            "conditions" => self.conditions = true,
            "limits" => self.limits = true,
            _ => return false,
        }
        true
    }

    /// Both sets.
    pub fn union(self, other: Shadow) -> Shadow {
        Shadow {
            scopes: self.scopes || other.scopes,
            conditions: self.conditions || other.conditions,
            limits: self.limits || other.limits,
        }
    }
}

/// What a route with no `methods:` allows: the ordinary methods, never `TRACE`, `CONNECT` or a
/// method nobody configured (an upstream may give those a meaning the gateway never checked).
pub const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

impl Route {
    fn allows_method(&self, m: &Method) -> bool {
        if self.methods.is_empty() {
            STANDARD_METHODS.contains(m)
        } else {
            self.methods.contains(m)
        }
    }

    fn matches_path(&self, path: &NormalizedPath) -> bool {
        self.path.matches(path, self.case_insensitive)
    }

    fn precedence(&self, other: &Route) -> Ordering {
        // Descending specificity, then ascending file order.
        other
            .host
            .rank()
            .cmp(&self.host.rank())
            .then_with(|| other.path.rank_key().cmp(&self.path.rank_key()))
            .then_with(|| (!other.methods.is_empty()).cmp(&!self.methods.is_empty()))
            .then_with(|| self.file_index.cmp(&other.file_index))
    }
}

/// What looking a request up in the table found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The route at this index (into [`RouteTable::routes`]) governs the request.
    Found(usize),
    /// The route at index `route` matched, but the host-scoped route `claimed_by` sends the
    /// same method and path to the same upstream for another host (see the module docs).
    HostScoped {
        /// The broader route that matched.
        route: usize,
        /// The host-scoped route that claims the call.
        claimed_by: usize,
    },
    /// No route matched. `methods_on_path` lists methods that routes allow for this host and
    /// path, so the refusal can say what would have been accepted.
    NotFound {
        /// Methods some route allows on this path (empty: the path is not routed at all).
        methods_on_path: Vec<Method>,
    },
}

/// All routes, ranked, with an index on the first path segment.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes in precedence order (most specific first).
    pub routes: Vec<Route>,
    /// First literal segment → indices (ascending = precedence order).
    by_first: HashMap<String, Vec<usize>>,
    /// Routes whose first segment is not a literal (params, `/**`, `/`, regexes), and
    /// case-insensitive routes (their first segment has many spellings).
    generic: Vec<usize>,
    /// Per route: the host-scoped routes to the same upstream with a narrower host, which
    /// claim their method and path for every host. Empty for almost every configuration.
    host_claims: Vec<Vec<usize>>,
}

impl RouteTable {
    /// Rank `routes` and build the index.
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by(|a, b| a.precedence(b));
        let mut by_first: HashMap<String, Vec<usize>> = HashMap::new();
        let mut generic = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            match r.path.first_literal() {
                Some(l) if !r.case_insensitive => {
                    by_first.entry(l.to_string()).or_default().push(i)
                }
                _ => generic.push(i),
            }
        }
        let host_claims = routes
            .iter()
            .map(|broad| {
                (0..routes.len())
                    .filter(|&h| {
                        routes[h].upstream == broad.upstream
                            && routes[h].host.rank() > broad.host.rank()
                    })
                    .collect()
            })
            .collect();
        RouteTable {
            routes,
            by_first,
            generic,
            host_claims,
        }
    }

    /// Find the route governing `method host path`.
    pub fn lookup(&self, method: &Method, host: Option<&str>, path: &NormalizedPath) -> Lookup {
        let first = path.segments().next();
        let bucket: &[usize] = first
            .and_then(|f| self.by_first.get(f))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut methods_on_path = Vec::new();
        // Merge the two ascending index lists so routes are visited in precedence order.
        let (mut a, mut b) = (bucket.iter().peekable(), self.generic.iter().peekable());
        loop {
            let i = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            let Some(&i) = i else { break };
            let r = &self.routes[i];
            if !r.host.matches(host) || !r.matches_path(path) {
                continue;
            }
            if r.allows_method(method) {
                // A narrower host's route to the same upstream that would take this method and
                // path did not match only because of the Host header: it claims the call.
                let claim = self.host_claims[i].iter().copied().find(|&h| {
                    let c = &self.routes[h];
                    c.allows_method(method) && c.matches_path(path)
                });
                return match claim {
                    Some(h) => Lookup::HostScoped {
                        route: i,
                        claimed_by: h,
                    },
                    None => Lookup::Found(i),
                };
            }
            for m in &r.methods {
                if !methods_on_path.contains(m) {
                    methods_on_path.push(m.clone());
                }
            }
        }
        Lookup::NotFound { methods_on_path }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::normalize;

    fn route(name: &str, methods: &[&str], host: Option<&str>, path: &str) -> Route {
        let path = if let Some(rx) = path.strip_prefix("re:") {
            PathPattern::regex(rx).unwrap()
        } else {
            PathPattern::template(path).unwrap()
        };
        Route {
            name: name.into(),
            name_header: None,
            file_index: 0,
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            host: HostPattern::parse(host).unwrap(),
            path,
            upstream: 0,
            scopes_all: vec!["s".into()],
            scopes_any: vec![],
            approval: None,
            case_insensitive: false,
            websocket: false,
            shadow: Shadow::default(),
            limits: Default::default(),
            conditions: Default::default(),
            tags: Arc::from([]),
            mcp: None,
            fail_open: false,
        }
    }

    fn on_upstream(upstream: usize, mut r: Route) -> Route {
        r.upstream = upstream;
        r
    }

    fn table(routes: Vec<Route>) -> RouteTable {
        let routes = routes
            .into_iter()
            .enumerate()
            .map(|(i, mut r)| {
                r.file_index = i;
                r
            })
            .collect();
        RouteTable::new(routes)
    }

    fn winner(t: &RouteTable, method: &str, host: Option<&str>, path: &str) -> String {
        let p = normalize(path, 4096).unwrap();
        match t.lookup(&method.parse().unwrap(), host, &p) {
            Lookup::Found(i) => t.routes[i].name.to_string(),
            Lookup::HostScoped { claimed_by, .. } => {
                format!("claimed by {}", t.routes[claimed_by].name)
            }
            Lookup::NotFound { methods_on_path } => format!(
                "none{}",
                methods_on_path
                    .iter()
                    .map(|m| format!(" {m}"))
                    .collect::<String>()
            ),
        }
    }

    #[test]
    fn precedence_table() {
        // File order is deliberately "wrong" (broad first) to show ranking does not depend on it.
        let t = table(vec![
            route("any", &[], None, "/**"),
            route("api-wide", &[], None, "/api/**"),
            route("regex", &["GET"], None, "re:/api/v[0-9]+/.*"),
            route("ticket-param", &["GET"], None, "/api/tickets/{id}"),
            route("ticket-export", &["GET"], None, "/api/tickets/export"),
            route("ticket-any-method", &[], None, "/api/tickets/{id}"),
            route("tickets-exact", &["GET", "POST"], None, "/api/tickets"),
            // Virtual hosts on their own upstreams (see the host-claim test for one upstream).
            on_upstream(
                1,
                route(
                    "host-wild",
                    &["GET"],
                    Some("*.internal"),
                    "/api/tickets/{id}",
                ),
            ),
            on_upstream(
                2,
                route(
                    "host-exact",
                    &["GET"],
                    Some("tools.internal"),
                    "/api/tickets/{id}",
                ),
            ),
            route("dup-first", &["PUT"], None, "/dup/{x}"),
            route("dup-second", &["PUT"], None, "/dup/{y}"),
        ]);
        let cases = [
            // (method, host, path, expected winner) and why
            ("GET", None, "/api/tickets/export", "ticket-export"), // literal beats {param}
            ("GET", None, "/api/tickets/7", "ticket-param"), // methods listed beats any method
            ("DELETE", None, "/api/tickets/7", "ticket-any-method"), // GET-only routes don't match
            ("GET", None, "/api/tickets", "tickets-exact"),  // exact end beats /api/**
            ("GET", None, "/api/tickets/7/comments", "api-wide"), // longer than any template
            ("GET", None, "/api/v2/x", "api-wide"),          // templates beat regexes
            ("GET", None, "/other", "any"),
            ("GET", None, "/", "any"), // /** matches zero segments
            (
                "GET",
                Some("tools.internal"),
                "/api/tickets/7",
                "host-exact",
            ), // exact host first
            ("GET", Some("db.internal"), "/api/tickets/7", "host-wild"), // then wildcard
            ("GET", Some("internal"), "/api/tickets/7", "ticket-param"), // *.x needs a label
            ("PUT", None, "/dup/1", "dup-first"), // full tie: file order
        ];
        for (m, h, p, want) in cases {
            assert_eq!(winner(&t, m, h, p), want, "{m} {h:?} {p}");
        }
    }

    #[test]
    fn no_match_reports_methods_allowed_on_the_path() {
        let t = table(vec![
            route("read", &["GET"], None, "/api/tickets/{id}"),
            route("write", &["PATCH", "GET"], None, "/api/tickets/{id}"),
        ]);
        assert_eq!(
            winner(&t, "DELETE", None, "/api/tickets/1"),
            "none GET PATCH"
        );
        assert_eq!(winner(&t, "GET", None, "/api/nothing"), "none");
    }

    #[test]
    fn the_index_finds_routes_in_every_bucket() {
        // Regex and param-first routes live outside the first-segment index; they must still
        // be merged in rank order with indexed ones.
        let t = table(vec![
            route("param-first", &["GET"], None, "/{tenant}/items"),
            route("literal", &["GET"], None, "/acme/items"),
            route("regex", &["GET"], None, "re:/acme/.*"),
        ]);
        assert_eq!(winner(&t, "GET", None, "/acme/items"), "literal");
        assert_eq!(winner(&t, "GET", None, "/other/items"), "param-first");
        assert_eq!(winner(&t, "GET", None, "/acme/other"), "regex");
    }

    #[test]
    fn template_errors() {
        let bad = [
            ("api", TemplateError::NotAbsolute),
            ("/a/**/b", TemplateError::MisplacedRest),
            ("/a/{id", TemplateError::BadParam("{id".into())),
            ("/a/x{id}", TemplateError::BadParam("x{id}".into())),
            ("/a/{}", TemplateError::BadParam("{}".into())),
            ("/a/%2F", TemplateError::BadChar("%2F".into(), '%')),
            ("/a//b", TemplateError::EmptyOrDot("".into())),
            ("/a/../b", TemplateError::EmptyOrDot("..".into())),
        ];
        for (t, e) in bad {
            assert_eq!(PathPattern::template(t).unwrap_err(), e, "{t}");
        }
        assert!(PathPattern::template("/").is_ok());
        assert!(PathPattern::template("/a/b/").is_ok());
    }

    #[test]
    fn regexes_are_anchored() {
        let r = PathPattern::regex("/api/[a-z]+").unwrap();
        assert!(r.matches(&normalize("/api/abc", 99).unwrap(), false));
        assert!(!r.matches(&normalize("/x/api/abc", 99).unwrap(), false));
        assert!(!r.matches(&normalize("/api/abc/def", 99).unwrap(), false));
    }

    #[test]
    fn routes_without_methods_never_allow_trace_connect_or_unknown_methods() {
        let t = table(vec![route("any", &[], None, "/**")]);
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(winner(&t, m, None, "/x"), "any", "{m}");
        }
        for m in ["TRACE", "CONNECT", "PROPFIND", "PURGE", "FOO"] {
            assert_eq!(winner(&t, m, None, "/x"), "none", "{m}");
        }
    }

    #[test]
    fn case_insensitive_routes_match_every_spelling_and_keep_their_rank() {
        let mut admin = route("admin", &[], None, "/api/admin/**");
        let mut broad = route("broad", &[], None, "/**");
        admin.case_insensitive = true;
        broad.case_insensitive = true;
        let t = table(vec![broad, admin, route("exact", &[], None, "/Exact")]);
        assert_eq!(winner(&t, "GET", None, "/API/Admin/users"), "admin");
        assert_eq!(winner(&t, "GET", None, "/api/ADMIN"), "admin");
        // Case-sensitive routes stay exact.
        assert_eq!(winner(&t, "GET", None, "/Exact"), "exact");
        assert_eq!(winner(&t, "GET", None, "/exact"), "broad");

        let mut rx = route("rx", &["GET"], None, "re:/x");
        rx.path = PathPattern::regex_case_insensitive("/reports/[a-z0-9]+").unwrap();
        rx.case_insensitive = true;
        let t = table(vec![rx]);
        assert_eq!(winner(&t, "GET", None, "/Reports/Q1"), "rx");
        assert_eq!(winner(&t, "GET", None, "/REPORTS/q1/x"), "none");
    }

    #[test]
    fn a_host_scoped_route_claims_its_paths_on_its_upstream_for_every_host() {
        let mut other = route("other-upstream", &[], None, "/admin/other/**");
        other.upstream = 1;
        let t = table(vec![
            route("broad", &[], None, "/**"),
            route(
                "admin-host",
                &["GET", "DELETE"],
                Some("admin.internal"),
                "/admin/**",
            ),
            route("wild-host", &["GET"], Some("*.tools.internal"), "/tools/**"),
            other,
        ]);
        // Through its own host, the host-scoped route decides.
        assert_eq!(
            winner(&t, "DELETE", Some("admin.internal"), "/admin/users"),
            "admin-host"
        );
        // Another host (or none) cannot reach the same upstream path through the broad route.
        assert_eq!(
            winner(&t, "DELETE", Some("evil.example"), "/admin/users"),
            "claimed by admin-host"
        );
        assert_eq!(winner(&t, "GET", None, "/admin"), "claimed by admin-host");
        assert_eq!(
            winner(&t, "GET", Some("x.internal"), "/tools/a"),
            "claimed by wild-host"
        );
        // Methods the host route does not take, and paths it does not cover, stay broad.
        assert_eq!(
            winner(&t, "POST", Some("evil.example"), "/admin/users"),
            "broad"
        );
        assert_eq!(winner(&t, "GET", None, "/public"), "broad");
        // A route to another upstream is not claimed: that upstream is a different server.
        assert_eq!(
            winner(&t, "GET", Some("evil.example"), "/admin/other/x"),
            "other-upstream"
        );
    }
}
