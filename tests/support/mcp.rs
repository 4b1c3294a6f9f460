//! A real MCP server and client for tests, built on the official Rust SDK (`rmcp`), talking
//! Streamable HTTP over loopback.
//!
//! Include it from a test file with
//! `#[path = "support/mcp.rs"] mod mcp_support;` — it is self-contained on purpose.
//!
//! - [`McpServer::start`] binds `127.0.0.1:0` and serves `/mcp` with rmcp's
//!   `StreamableHttpService`: 12 tools (paginated 5 per page), 2 prompts, 2 resources and 2
//!   resource templates. It records every `tools/call` it executes ([`McpServer::calls`]), every
//!   HTTP exchange it saw ([`McpServer::exchanges`]) and every `Mcp-Session-Id` it issued.
//! - [`McpClient::connect`] is rmcp's client over its reqwest transport, aimed at any base URL
//!   (the server directly, or a gateway in front of it) with `Authorization: Bearer <token>`.
//!
//! [`Revision::Session`] is the 2025-06-18 revision: `initialize`, then `Mcp-Session-Id` on every
//! request (rmcp `legacy_session_mode = true`). [`Revision::Stateless`] is the 2026-07-28 revision:
//! `server/discover`, no sessions, per-request `_meta` and `Mcp-Method`/`Mcp-Name` headers.
//!
//! [`ResponseMode::Sse`] answers POSTs as `text/event-stream` (rmcp's default). rmcp answers as
//! `application/json` only on its stateless path (`json_response`); in session mode it always
//! streams, so for [`ResponseMode::Json`] + [`Revision::Session`] a small layer in front of the
//! rmcp service reads the SSE reply and sends its one JSON-RPC message as `application/json`.
//! Either way, what goes over the wire is what the mode says.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use base64::Engine as _;
use futures::StreamExt as _;
use rmcp::{
    handler::server::{
        router::tool::{ToolRoute, ToolRouter},
        tool::ToolCallContext,
        wrapper::Parameters,
    },
    model::{
        CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ClientCapabilities,
        ClientConfig, ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
        Implementation, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult,
        ListToolsResult, MetaObject, PaginatedRequestParams, Prompt, PromptMessage,
        ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        Resource, ResourceContents, ResourceTemplate, Role, ServerCapabilities, ServerConfig, Tool,
    },
    service::{RequestContext, RunningService},
    tool, tool_router,
    transport::{
        streamable_http_client::StreamableHttpClientTransportConfig,
        streamable_http_server::{
            session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
        },
        StreamableHttpClientTransport,
    },
    ClientCacheConfig, ClientLifecycleMode, ClientServiceExt as _, ErrorData, RoleClient,
    RoleServer, ServerHandler, ServiceError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How the server answers a POSTed JSON-RPC request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMode {
    /// `Content-Type: application/json`, the reply as one JSON-RPC message.
    Json,
    /// `Content-Type: text/event-stream`, the reply as an SSE event.
    Sse,
}

/// Which MCP revision the server serves and the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revision {
    /// 2025-06-18: `initialize` handshake, `Mcp-Session-Id` (rmcp `legacy_session_mode = true`).
    Session,
    /// 2026-07-28: `server/discover`, no sessions, `Mcp-Method`/`Mcp-Name` headers.
    Stateless,
}

/// Tools in the order `tools/list` returns them.
pub const TOOL_NAMES: [&str; 12] = [
    "search_tickets",
    "get_ticket",
    "delete_ticket",
    "refund",
    "admin_reset",
    "tool_01",
    "tool_02",
    "tool_03",
    "tool_04",
    "tool_05",
    "tool_06",
    "tool_07",
];
/// Tools per `tools/list` page.
pub const TOOLS_PAGE_SIZE: usize = 5;
pub const PROMPT_NAMES: [&str; 2] = ["summarize_ticket", "admin_prompt"];
pub const RESOURCE_URIS: [&str; 2] = ["tickets://open/1", "secrets://db/password"];
pub const RESOURCE_TEMPLATES: [&str; 2] = ["tickets://{id}", "secrets://{name}"];

const MCP_PATH: &str = "/mcp";
const CURSOR_PREFIX: &str = "fixture-offset:";
/// How long the JSON adapter waits for the SSE reply of a session request.
const SSE_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP request the server received and the head of the response it sent.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// HTTP method (`POST`, `GET`, `DELETE`).
    pub method: String,
    /// Request headers, names lower-case, in arrival order.
    pub request_headers: Vec<(String, String)>,
    /// The request body parsed as JSON (`Null` when empty or not JSON).
    pub body: Value,
    pub status: u16,
    /// Response headers, names lower-case.
    pub response_headers: Vec<(String, String)>,
}

impl Exchange {
    pub fn request_header(&self, name: &str) -> Option<&str> {
        find_header(&self.request_headers, name)
    }
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response_headers, name)
    }
    /// The JSON-RPC `method` of the body, when the body is a request or notification.
    pub fn rpc_method(&self) -> Option<&str> {
        self.body.get("method").and_then(Value::as_str)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// State shared by the HTTP layer and every handler instance (rmcp builds a handler per session,
/// or per request when stateless).
struct Shared {
    mode: ResponseMode,
    calls: Mutex<Vec<(String, Value)>>,
    descriptions: Mutex<HashMap<String, String>>,
    session_ids: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<Exchange>>,
}

/// A running MCP server on `127.0.0.1:<port>/mcp`; stops when dropped.
pub struct McpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl McpServer {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start(mode: ResponseMode, rev: Revision) -> McpServer {
        let shared = Arc::new(Shared {
            mode,
            calls: Mutex::default(),
            descriptions: Mutex::default(),
            session_ids: Mutex::default(),
            exchanges: Mutex::default(),
        });
        let cancel = CancellationToken::new();
        let config = StreamableHttpServerConfig::default()
            .with_legacy_session_mode(rev == Revision::Session)
            .with_json_response(mode == ResponseMode::Json)
            // Host validation (DNS-rebinding guard): loopback names, any port, so a gateway
            // forwarding `Host: 127.0.0.1:PORT` or `localhost:PORT` is accepted.
            .with_allowed_hosts(["127.0.0.1", "localhost", "::1"])
            .with_cancellation_token(cancel.child_token());
        let for_handlers = shared.clone();
        let service: StreamableHttpService<FixtureServer, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(FixtureServer::new(for_handlers.clone())),
                Arc::new(LocalSessionManager::default()),
                config,
            );
        let router = axum::Router::new().route_service(MCP_PATH, service).layer(
            axum::middleware::from_fn_with_state(shared.clone(), observe),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind MCP fixture server");
        let addr = listener.local_addr().expect("MCP fixture server address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        McpServer {
            addr,
            shared,
            cancel,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/mcp`
    pub fn url(&self) -> String {
        format!("http://{}{}", self.addr, MCP_PATH)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `/mcp`
    pub fn path(&self) -> &'static str {
        MCP_PATH
    }

    /// Every `tools/call` the server executed, in order: (tool name, arguments). A call
    /// without arguments is recorded with `{}`. Calls to unknown tools are refused (JSON-RPC
    /// -32602) and not recorded.
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Changes a tool's description from now on (rug-pull simulation): later `tools/list`
    /// pages show the new text.
    pub fn set_description(&self, tool: &str, description: &str) {
        self.shared
            .descriptions
            .lock()
            .unwrap()
            .insert(tool.to_string(), description.to_string());
    }

    /// `Mcp-Session-Id` values the server issued, in order, without repeats (empty for
    /// [`Revision::Stateless`]). Captured from the response headers by the HTTP layer.
    pub fn session_ids(&self) -> Vec<String> {
        self.shared.session_ids.lock().unwrap().clone()
    }

    /// Every HTTP request the server received, with the head of its response.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.exchanges.lock().unwrap().clone()
    }

    /// The exchanges whose JSON-RPC method is `method` (e.g. `"tools/call"`).
    pub fn exchanges_for(&self, method: &str) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.rpc_method() == Some(method))
            .collect()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
    }
}

/// HTTP layer in front of the rmcp service: records the exchange and the issued session id, and
/// in [`ResponseMode::Json`] turns a session-mode SSE reply into `application/json`.
async fn observe(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let method = parts.method.to_string();
    let request_headers = header_pairs(&parts.headers);
    let body_json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let request = Request::from_parts(parts, Body::from(bytes));

    let mut response = next.run(request).await;
    if shared.mode == ResponseMode::Json && method == "POST" && is_event_stream(&response) {
        response = sse_reply_as_json(response).await;
    }
    if let Some(id) = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
    {
        let mut ids = shared.session_ids.lock().unwrap();
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_string());
        }
    }
    shared.exchanges.lock().unwrap().push(Exchange {
        method,
        request_headers,
        body: body_json,
        status: response.status().as_u16(),
        response_headers: header_pairs(response.headers()),
    });
    response
}

fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Reads SSE events until one carries a JSON-RPC response or error, and answers with that
/// message as `application/json` (same status and other headers, `Mcp-Session-Id` included).
async fn sse_reply_as_json(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let reply = tokio::time::timeout(SSE_REPLY_TIMEOUT, async {
        let mut buffer = String::new();
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                if let Some(message) = jsonrpc_reply_in_event(&event) {
                    return Some(message);
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => {
                    buffer.push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""))
                }
                _ => return None,
            }
        }
    })
    .await;
    match reply {
        Ok(Some(message)) => {
            parts.headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            parts.headers.remove(http::header::CONTENT_LENGTH);
            parts.headers.remove(http::header::CACHE_CONTROL);
            Response::from_parts(parts, Body::from(message.to_string()))
        }
        _ => Response::builder()
            .status(http::StatusCode::BAD_GATEWAY)
            .body(Body::from(
                "MCP fixture: the SSE reply ended without a JSON-RPC response",
            ))
            .expect("valid response"),
    }
}

/// The JSON-RPC response or error carried by one SSE event (its `data:` lines), if any.
pub fn jsonrpc_reply_in_event(event: &str) -> Option<Value> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    let message: Value = serde_json::from_str(&data.join("\n")).ok()?;
    let is_reply = message.get("id").is_some()
        && (message.get("result").is_some() || message.get("error").is_some());
    is_reply.then_some(message)
}

// ---------------------------------------------------------------------------------------------
// Server handler
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, schemars::JsonSchema)]
struct SearchTickets {
    /// Free-text search.
    query: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct TicketId {
    /// Ticket number.
    id: i64,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Refund {
    /// Order reference.
    order: String,
    /// Amount to refund.
    amount: f64,
}

#[derive(Clone)]
struct FixtureServer {
    shared: Arc<Shared>,
    tool_router: ToolRouter<FixtureServer>,
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

#[tool_router]
impl FixtureServer {
    #[tool(description = "Search support tickets by free text.")]
    async fn search_tickets(
        &self,
        Parameters(SearchTickets { query }): Parameters<SearchTickets>,
    ) -> CallToolResult {
        text_result(format!("found tickets for {query}"))
    }

    /// Also returns `_meta: {"fixture/ticket": id}`.
    #[tool(description = "Read one support ticket.")]
    async fn get_ticket(
        &self,
        Parameters(TicketId { id }): Parameters<TicketId>,
    ) -> CallToolResult {
        let mut meta = MetaObject::default();
        meta.0.insert("fixture/ticket".into(), json!(id));
        text_result(format!("ticket {id}")).with_meta(Some(meta))
    }

    #[tool(description = "Delete a support ticket.")]
    async fn delete_ticket(
        &self,
        Parameters(TicketId { id }): Parameters<TicketId>,
    ) -> CallToolResult {
        text_result(format!("deleted ticket {id}"))
    }

    #[tool(description = "Refund an amount on an order.")]
    async fn refund(
        &self,
        Parameters(Refund { order, amount }): Parameters<Refund>,
    ) -> CallToolResult {
        text_result(format!("refunded {amount} on {order}"))
    }

    #[tool(description = "Reset the ticket system.")]
    async fn admin_reset(&self) -> CallToolResult {
        text_result("reset")
    }
}

/// `tool_01` .. `tool_07`: no arguments, the text is the tool's name.
fn numbered_tool(
    context: ToolCallContext<'_, FixtureServer>,
) -> Pin<Box<dyn Future<Output = Result<CallToolResponse, ErrorData>> + Send + '_>> {
    let name = context.name.to_string();
    Box::pin(async move { Ok(text_result(name).into()) })
}

impl FixtureServer {
    fn new(shared: Arc<Shared>) -> Self {
        let mut tool_router = Self::tool_router();
        for n in 1..=7 {
            let mut schema = serde_json::Map::new();
            schema.insert("type".into(), json!("object"));
            let tool = Tool::new(
                format!("tool_{n:02}"),
                format!("Filler tool {n:02}."),
                schema,
            );
            tool_router.add_route(ToolRoute::new_dyn(tool, numbered_tool));
        }
        FixtureServer {
            shared,
            tool_router,
        }
    }

    /// All tools in [`TOOL_NAMES`] order, with runtime description changes applied.
    fn tools(&self) -> Vec<Tool> {
        let descriptions = self.shared.descriptions.lock().unwrap();
        TOOL_NAMES
            .iter()
            .filter_map(|name| self.tool_router.get(name).cloned())
            .map(|mut tool| {
                if let Some(description) = descriptions.get(tool.name.as_ref()) {
                    tool.description = Some(description.clone().into());
                }
                tool
            })
            .collect()
    }
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix(CURSOR_PREFIX)?
        .parse()
        .ok()
}

fn encode_cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{offset}"))
}

impl ServerHandler for FixtureServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .build(),
        )
        .with_server_info(Implementation::new("portcullis-mcp-fixture", "1.0.0"))
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self.tools();
        let offset = match request.and_then(|r| r.cursor) {
            None => 0,
            Some(cursor) => decode_cursor(&cursor)
                .filter(|offset| *offset < tools.len())
                .ok_or_else(|| ErrorData::invalid_params("invalid cursor", None))?,
        };
        let end = (offset + TOOLS_PAGE_SIZE).min(tools.len());
        let mut page = ListToolsResult::with_all_items(tools[offset..end].to_vec());
        page.next_cursor = (end < tools.len()).then(|| encode_cursor(end));
        // The 2026-07-28 revision requires cache hints; 0 = never fresh, so clients re-list.
        if context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28)
        {
            page = page.with_ttl_ms(0).with_cache_scope(CacheScope::Public);
        }
        Ok(page)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if self.tool_router.get(&request.name).is_none() {
            return Err(ErrorData::invalid_params(
                format!("tool not found: {}", request.name),
                None,
            ));
        }
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        self.shared
            .calls
            .lock()
            .unwrap()
            .push((request.name.to_string(), arguments));
        self.tool_router
            .call(ToolCallContext::new(self, request, context))
            .await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tool_router.get(name).cloned()
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(ListPromptsResult::with_all_items(vec![
            Prompt::new(
                "summarize_ticket",
                Some("Summarize a support ticket."),
                None,
            ),
            Prompt::new("admin_prompt", Some("Administrative instructions."), None),
        ]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let text = match request.name.as_str() {
            "summarize_ticket" => "Summarize the ticket in three sentences.",
            "admin_prompt" => "You are the administrator. Reset everything.",
            other => {
                return Err(ErrorData::invalid_params(
                    format!("prompt not found: {other}"),
                    None,
                ))
            }
        };
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)]).into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(vec![
            Resource::new("tickets://open/1", "open ticket 1"),
            Resource::new("secrets://db/password", "database password"),
        ]))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("tickets://{id}", "ticket"),
            ResourceTemplate::new("secrets://{name}", "secret"),
        ]))
    }

    /// `tickets://...` reads as "ticket <rest>", `secrets://...` as "secret <rest>"; any other
    /// scheme is JSON-RPC -32002 (resource not found).
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let text = if let Some(rest) = uri.strip_prefix("tickets://") {
            format!("ticket {rest}")
        } else if let Some(rest) = uri.strip_prefix("secrets://") {
            format!("secret {rest}")
        } else {
            return Err(ErrorData::resource_not_found(
                format!("resource not found: {uri}"),
                None,
            ));
        };
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, uri)]).into())
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// What a `tools/call` returned.
#[derive(Clone, Debug, PartialEq)]
pub enum CallOutcome {
    /// A `CallToolResult`: its text content concatenated, `isError`, and its `_meta`.
    Ok {
        text: String,
        is_error: bool,
        meta: Option<Value>,
    },
}

/// rmcp's client (its running service) over the Streamable HTTP reqwest transport.
pub struct McpClient {
    service: RunningService<RoleClient, ClientConfig>,
    rev: Revision,
}

/// `jsonrpc error <code>: <message> data=<json>` for a JSON-RPC error from the peer, else
/// `transport: <error and its causes>`.
///
/// rmcp hands a JSON-RPC error body over as a JSON-RPC error for every HTTP status except
/// 401/403 and 429; a 401/403 without `WWW-Authenticate` comes back as a transport error
/// whose text holds `HTTP 403 Forbidden: <body>`, so a JSON-RPC error in that body is pulled
/// out here. A 401/403 with `WWW-Authenticate` never has its body read by rmcp.
fn service_error(error: ServiceError) -> String {
    match error {
        ServiceError::McpError(e) => jsonrpc_error(&e),
        other => transport_error(&other),
    }
}

fn transport_error(error: &dyn std::error::Error) -> String {
    let text = error_chain(error);
    embedded_jsonrpc_error(&text).unwrap_or_else(|| format!("transport: {text}"))
}

/// A JSON-RPC error object quoted in an `HTTP <status>: <body>` transport error.
fn embedded_jsonrpc_error(text: &str) -> Option<String> {
    let body = &text[text.find("HTTP 40")?..];
    let body = &body[body.find('{')?..];
    let value: Value = serde_json::Deserializer::from_str(body)
        .into_iter()
        .next()?
        .ok()?;
    let error: ErrorData = serde_json::from_value(value.get("error")?.clone()).ok()?;
    Some(jsonrpc_error(&error))
}

fn jsonrpc_error(e: &ErrorData) -> String {
    format!(
        "jsonrpc error {}: {} data={}",
        e.code.0,
        e.message,
        e.data.clone().unwrap_or(Value::Null)
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl McpClient {
    /// Connects to `url`, sending `Authorization: Bearer <token>` on every request (none when
    /// `token` is empty). [`Revision::Session`] runs `initialize` asking for 2025-06-18;
    /// [`Revision::Stateless`] runs `server/discover` for 2026-07-28. rmcp's response cache is
    /// off and an expired session is not silently re-created, so every call reaches the wire
    /// and failures surface.
    pub async fn connect(url: &str, token: &str, rev: Revision) -> Result<McpClient, String> {
        let mut config =
            StreamableHttpClientTransportConfig::with_uri(url).reinit_on_expired_session(false);
        if !token.is_empty() {
            // rmcp sends this as `Authorization: Bearer <token>`.
            config = config.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("portcullis-mcp-fixture-client", "1.0.0"),
        );
        let (info, lifecycle) = match rev {
            Revision::Session => (
                info.with_protocol_version(ProtocolVersion::V_2025_06_18),
                ClientLifecycleMode::Initialize,
            ),
            Revision::Stateless => (
                info,
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            ),
        };
        let service = info
            .serve_with_lifecycle(transport, lifecycle)
            .await
            .map_err(|e| match e {
                rmcp::service::ClientInitializeError::JsonRpcError(e) => jsonrpc_error(&e),
                other => transport_error(&other),
            })?;
        service
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        Ok(McpClient { service, rev })
    }

    pub fn revision(&self) -> Revision {
        self.rev
    }

    /// The protocol version agreed with the server.
    pub fn protocol_version(&self) -> Option<String> {
        self.service
            .peer_info()
            .map(|info| info.protocol_version.to_string())
    }

    /// Every tool name, following `nextCursor` over all pages.
    pub async fn list_tools(&self) -> Result<Vec<String>, String> {
        Ok(self
            .list_tools_full()
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Every tool as (name, description), following `nextCursor` over all pages.
    pub async fn list_tools_full(&self) -> Result<Vec<(String, String)>, String> {
        let mut tools = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let page = self
                .service
                .list_tools(Some(PaginatedRequestParams::default().with_cursor(cursor)))
                .await
                .map_err(service_error)?;
            tools.extend(page.tools.into_iter().map(|t| {
                (
                    t.name.to_string(),
                    t.description.map(|d| d.to_string()).unwrap_or_default(),
                )
            }));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(tools),
            }
        }
        Err("transport: tools/list did not end after 100 pages".into())
    }

    /// One `tools/list` page: its tool names and `nextCursor`.
    pub async fn list_tools_page(
        &self,
        cursor: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), String> {
        let page = self
            .service
            .list_tools(Some(PaginatedRequestParams::default().with_cursor(cursor)))
            .await
            .map_err(service_error)?;
        Ok((
            page.tools.into_iter().map(|t| t.name.to_string()).collect(),
            page.next_cursor,
        ))
    }

    /// `args` must be a JSON object, or `null` for no arguments.
    pub async fn call_tool(&self, name: &str, args: Value) -> Result<CallOutcome, String> {
        let mut params = CallToolRequestParams::new(name.to_string());
        match args {
            Value::Object(map) => params = params.with_arguments(map),
            Value::Null => {}
            other => {
                return Err(format!(
                    "fixture: tool arguments must be an object, got {other}"
                ))
            }
        }
        let result = self
            .service
            .call_tool(params)
            .await
            .map_err(service_error)?;
        let text = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .concat();
        Ok(CallOutcome::Ok {
            text,
            is_error: result.is_error.unwrap_or(false),
            meta: result.meta.map(|m| Value::Object(m.0)),
        })
    }

    pub async fn list_prompts(&self) -> Result<Vec<String>, String> {
        let prompts = self
            .service
            .list_all_prompts()
            .await
            .map_err(service_error)?;
        Ok(prompts.into_iter().map(|p| p.name).collect())
    }

    /// The text of the prompt's first message.
    pub async fn get_prompt(&self, name: &str) -> Result<String, String> {
        let result = self
            .service
            .get_prompt(GetPromptRequestParams::new(name))
            .await
            .map_err(service_error)?;
        let first = result
            .messages
            .first()
            .ok_or_else(|| "fixture: prompt has no messages".to_string())?;
        Ok(first
            .content
            .as_text()
            .map(|t| t.text.clone())
            .unwrap_or_default())
    }

    /// Resource URIs.
    pub async fn list_resources(&self) -> Result<Vec<String>, String> {
        let resources = self
            .service
            .list_all_resources()
            .await
            .map_err(service_error)?;
        Ok(resources.into_iter().map(|r| r.uri).collect())
    }

    /// Resource `uriTemplate`s.
    pub async fn list_resource_templates(&self) -> Result<Vec<String>, String> {
        let templates = self
            .service
            .list_all_resource_templates()
            .await
            .map_err(service_error)?;
        Ok(templates.into_iter().map(|t| t.uri_template).collect())
    }

    /// The text of the resource's contents, concatenated.
    pub async fn read_resource(&self, uri: &str) -> Result<String, String> {
        let result = self
            .service
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .map_err(service_error)?;
        Ok(result
            .contents
            .iter()
            .filter_map(|c| match c {
                ResourceContents::TextResourceContents { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .concat())
    }

    /// Stops the client (a session client also ends its session with a DELETE).
    pub async fn close(self) {
        let _ = self.service.cancel().await;
    }
}
