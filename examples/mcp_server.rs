//! A small MCP server to put behind Portcullis: a toy ticket system on the official Rust SDK
//! (rmcp), over Streamable HTTP at `http://<listen>/mcp`.
//!
//! ```sh
//! cargo run --example mcp_server -- --listen 127.0.0.1:8931           # stateless, JSON answers
//! cargo run --example mcp_server -- --listen 127.0.0.1:8931 --sse     # answers as event streams
//! cargo run --example mcp_server -- --listen 127.0.0.1:8931 --session # 2025-06-18 sessions
//! ```
//!
//! Tools `search_tickets {query}`, `get_ticket {id}`, `delete_ticket {id}` and `admin_reset {}`,
//! the prompt `summarize_ticket` and the resource `tickets://open/1`. Nothing is stored: every
//! tool only says what it would have done. Each tool call is printed on stderr (`--quiet`: not),
//! so you can see which calls the gateway let through. `scripts/mcp-demo.sh` puts it behind the
//! gateway with `examples/mcp/gateway.yaml`; `scripts/bench-mcp.sh` measures it.
//!
//! By default it serves the stateless 2026-07-28 revision only: no `initialize`, no sessions;
//! every request stands alone and carries its protocol version (the `MCP-Protocol-Version`
//! header and `_meta`). `--session` also serves older clients, which `initialize` and then
//! send `Mcp-Session-Id` on every request.

use clap::Parser;
use rmcp::{
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        wrapper::Parameters,
    },
    model::{
        CacheScope, Implementation, ListResourcesResult, PaginatedRequestParams, PromptMessage,
        ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
        Resource, ResourceContents, Role, ServerCapabilities, ServerConfig,
    },
    prompt, prompt_handler, prompt_router,
    service::RequestContext,
    tool, tool_handler, tool_router,
    transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    },
    ErrorData, RoleServer, ServerHandler,
};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Parser)]
#[command(about = "A toy MCP ticket server (Streamable HTTP at /mcp)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8931")]
    listen: String,
    /// Answer POSTs as `text/event-stream` instead of `application/json`.
    #[arg(long)]
    sse: bool,
    /// Also serve the session revision (2025-06-18: `initialize`, then `Mcp-Session-Id`).
    #[arg(long)]
    session: bool,
    /// Do not print each tool call on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct Search {
    /// Free-text search.
    query: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
struct TicketId {
    /// Ticket number.
    id: i64,
}

/// Prompt arguments are strings in MCP.
#[derive(Deserialize, schemars::JsonSchema)]
struct TicketRef {
    /// Ticket number.
    id: String,
}

#[derive(Clone)]
struct Tickets {
    quiet: bool,
    tool_router: ToolRouter<Tickets>,
    prompt_router: PromptRouter<Tickets>,
}

impl Tickets {
    fn log(&self, call: String) {
        if !self.quiet {
            eprintln!("mcp_server: tools/call {call}");
        }
    }
}

#[tool_router]
impl Tickets {
    #[tool(description = "Search support tickets by free text.")]
    async fn search_tickets(&self, Parameters(Search { query }): Parameters<Search>) -> String {
        self.log(format!("search_tickets {query:?}"));
        format!("3 tickets match {query:?}: #5, #7, #9")
    }

    #[tool(description = "Read one support ticket.")]
    async fn get_ticket(&self, Parameters(TicketId { id }): Parameters<TicketId>) -> String {
        self.log(format!("get_ticket {id}"));
        format!("ticket #{id}: \"printer on fire\", open, reported by bob@example.com")
    }

    #[tool(description = "Delete a support ticket, for good.")]
    async fn delete_ticket(&self, Parameters(TicketId { id }): Parameters<TicketId>) -> String {
        self.log(format!("delete_ticket {id}"));
        format!("deleted ticket #{id}")
    }

    #[tool(description = "Delete every ticket and reset the ticket system.")]
    async fn admin_reset(&self) -> String {
        self.log("admin_reset".into());
        "all tickets deleted".into()
    }
}

#[prompt_router]
impl Tickets {
    #[prompt(description = "Summarize a support ticket in three sentences.")]
    async fn summarize_ticket(
        &self,
        Parameters(TicketRef { id }): Parameters<TicketRef>,
    ) -> Vec<PromptMessage> {
        vec![PromptMessage::new_text(
            Role::User,
            format!("Read ticket #{id} with get_ticket and summarize it in three sentences."),
        )]
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for Tickets {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_prompts()
            .enable_resources()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("portcullis-example-tickets", "1.0.0"))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let open = Resource::new("tickets://open/1", "open ticket 1");
        let mut list = ListResourcesResult::with_all_items(vec![open]);
        // The 2026-07-28 revision wants cache hints on lists: 0 = never fresh, list again.
        if context
            .protocol_version()
            .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28)
        {
            list = list.with_ttl_ms(0).with_cache_scope(CacheScope::Public);
        }
        Ok(list)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != "tickets://open/1" {
            let message = format!("no resource {}", request.uri);
            return Err(ErrorData::resource_not_found(message, None));
        }
        let text = "ticket #1: \"VPN drops every hour\", open";
        Ok(ReadResourceResult::new(vec![ResourceContents::text(text, request.uri)]).into())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(args.session)
        // rmcp answers as `application/json` on its stateless path only; sessions always stream.
        .with_json_response(!args.sse)
        // DNS-rebinding guard: loopback names, any port (a gateway in front forwards its own
        // `Host: 127.0.0.1:PORT`).
        .with_allowed_hosts(["127.0.0.1", "localhost", "::1"]);
    // rmcp asks for a handler per session, or per request when stateless: build the routers
    // (and their JSON schemas) once and hand out clones.
    let tickets = Tickets {
        quiet: args.quiet,
        tool_router: Tickets::tool_router(),
        prompt_router: Tickets::prompt_router(),
    };
    let service: StreamableHttpService<Tickets, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(tickets.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let mode = match (args.session, args.sse) {
        (false, false) => "stateless, JSON answers",
        (false, true) => "stateless, event-stream answers",
        (true, _) => "sessions (2025-06-18) and stateless; session answers always stream",
    };
    eprintln!("mcp_server: http://{}/mcp ({mode})", listener.local_addr()?);
    axum::serve(listener, app).await
}
