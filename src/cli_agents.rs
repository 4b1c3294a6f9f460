//! `portcullis agents ...` and `portcullis tokens revoke`: the inventory and the kill switch,
//! through the admin API of a running gateway.

use super::{admin_session, api_refusal, field};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the admin listener is and the credential to use.
#[derive(Args)]
pub struct AdminConn {
    /// Admin base URL (default: `http://` + listen.admin of the config).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// Configuration file, to find the admin listener.
    #[arg(short, long, default_value = "gateway.yaml", global = true)]
    config: PathBuf,
    /// Admin token (`admin.tokens`); an approver token may list, pause and revoke
    /// (`PORTCULLIS_APPROVER_TOKEN` is used when neither is given).
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
}

impl AdminConn {
    /// The admin base URL, a runtime to talk to it on, and the token (`--token`,
    /// `PORTCULLIS_ADMIN_TOKEN`, else `PORTCULLIS_APPROVER_TOKEN`).
    pub fn session(self) -> Result<(String, tokio::runtime::Runtime, String), String> {
        let token = self.token.or_else(|| {
            std::env::var("PORTCULLIS_APPROVER_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        });
        let Some(token) = token else {
            return Err(
                "a token is needed: --token, PORTCULLIS_ADMIN_TOKEN or PORTCULLIS_APPROVER_TOKEN"
                    .into(),
            );
        };
        let (base, rt) = admin_session(self.admin, &self.config)?;
        Ok((base, rt, token))
    }
}

/// Inventory and kill-switch commands.
#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Every agent: owner, tier, state, scopes, reachable routes, activity.
    List {
        /// `table` (default), `json` or `csv`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// One agent, with its audit trail (JSON).
    Show {
        /// Agent id.
        id: String,
    },
    /// Refuse every call of the agent until resumed; cancels its open approvals.
    Pause {
        /// Agent id.
        id: String,
        /// Why (shown to the agent, kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Undo a pause (admin token only).
    Resume {
        /// Agent id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// End a step-up or throttle a playbook set (admin token only).
    Lift {
        /// Agent id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

enum Body {
    Json(Value),
    Text(String),
}

fn call(
    conn: AdminConn,
    what: &str,
    build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
) -> Result<Body, String> {
    let (base, rt, token) = conn.session().map_err(|e| format!("{what}: {e}"))?;
    let client = reqwest::Client::new();
    let req = build(&client, &base).bearer_auth(token);
    rt.block_on(async {
        let r = req
            .send()
            .await
            .map_err(|e| format!("{what}: cannot reach {base}: {e}"))?;
        let status = r.status();
        let csv = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/csv"));
        let text = r
            .text()
            .await
            .map_err(|e| format!("{what}: reading the answer: {e}"))?;
        if status.is_success() && csv {
            return Ok(Body::Text(text));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            Ok(Body::Json(body))
        } else {
            Err(format!("{what}: {}", api_refusal(status, &body)))
        }
    })
}

fn done(res: Result<Body, String>, print: impl FnOnce(Body)) -> ExitCode {
    match res {
        Ok(b) => {
            print(b);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis {e}");
            ExitCode::FAILURE
        }
    }
}

fn pretty(b: Body) {
    match b {
        Body::Json(v) => println!(
            "{}",
            portcullis::approval::display::escape_text(
                &serde_json::to_string_pretty(&v).unwrap_or_default()
            )
        ),
        Body::Text(t) => print!("{}", portcullis::approval::display::escape_text(&t)),
    }
}

/// A state change's answer, one line (and its warning, if any).
fn changed(b: Body) {
    let Body::Json(v) = b else { return };
    println!(
        "{} {}: by {} ({}){}",
        field(&v["action"]),
        field(&v["agent"]),
        field(&v["by"]),
        field(&v["reason"]),
        v["cancelled_approvals"]
            .as_u64()
            .map(|n| format!("; {n} open approval(s) cancelled"))
            .unwrap_or_default()
    );
    if let Some(w) = v["warning"].as_str() {
        eprintln!("warning: {}", field(&json!(w)));
    }
}

fn table(b: Body) {
    let Body::Json(v) = b else { return };
    println!(
        "{:<20} {:<24} {:<10} {:<9} {:>9} {:>11}  LAST SEEN",
        "AGENT", "OWNER", "TIER", "STATE", "CALLS 24H", "DENIALS 24H"
    );
    for a in v["agents"].as_array().into_iter().flatten() {
        let act = &a["activity"];
        let num = |x: &Value| x.as_u64().map(|n| n.to_string()).unwrap_or("-".into());
        println!(
            "{:<20} {:<24} {:<10} {:<9} {:>9} {:>11}  {}",
            field(&a["id"]),
            field(&a["owner"]),
            field(&a["tier"]),
            field(&a["state"]),
            num(&act["calls_24h"]),
            num(&act["denials_24h"]),
            act["last_seen"]
                .as_str()
                .map(|s| field(&json!(s)))
                .unwrap_or("-".into()),
        );
        if let Some(p) = a["runtime"]["paused"].as_object() {
            println!(
                "{:<20} paused by {} at {}: {}",
                "",
                field(&p["by"]),
                field(&p["at"]),
                field(&p["reason"])
            );
        }
    }
}

/// `portcullis agents ...`.
pub fn run(conn: AdminConn, command: AgentsCommand) -> ExitCode {
    match command {
        AgentsCommand::List { format } => {
            let fmt = match format.as_str() {
                "table" | "json" => "json",
                "csv" => "csv",
                other => {
                    eprintln!(
                        "portcullis agents list: `{other}` is not a format: table, json or csv"
                    );
                    return ExitCode::FAILURE;
                }
            };
            let res = call(conn, "agents list", |c, base| {
                c.get(format!("{base}/api/agents"))
                    .query(&[("format", fmt)])
            });
            if format == "table" {
                done(res, table)
            } else {
                done(res, pretty)
            }
        }
        AgentsCommand::Show { id } => done(
            call(conn, "agents show", |c, base| {
                c.get(format!("{base}/api/agents/{}", urlencode(&id)))
            }),
            pretty,
        ),
        AgentsCommand::Pause { id, reason } => state_change(conn, "pause", &id, reason),
        AgentsCommand::Resume { id, reason } => state_change(conn, "resume", &id, reason),
        AgentsCommand::Lift { id, reason } => state_change(conn, "lift", &id, reason),
    }
}

fn state_change(conn: AdminConn, action: &str, id: &str, reason: String) -> ExitCode {
    let what = format!("agents {action}");
    done(
        call(conn, &what, |c, base| {
            c.post(format!("{base}/api/agents/{}/{action}", urlencode(id)))
                .json(&json!({ "reason": reason }))
        }),
        changed,
    )
}

/// `portcullis tokens revoke`.
pub fn revoke(
    conn: AdminConn,
    jti: Option<String>,
    agent: Option<String>,
    reason: String,
) -> ExitCode {
    let mut body = json!({ "reason": reason });
    if let Some(j) = jti {
        body["jti"] = json!(j);
    }
    if let Some(a) = agent {
        body["agent"] = json!(a);
    }
    done(
        call(conn, "tokens revoke", |c, base| {
            c.post(format!("{base}/api/tokens/revoke")).json(&body)
        }),
        changed,
    )
}

/// MCP tool-definition pins (rug-pull detection).
#[derive(Subcommand)]
pub enum McpCommand {
    /// Every recorded tool definition, and which changed since (JSON).
    Tools,
    /// Accept the changed definition of a tool: it becomes the recorded one and calls of the
    /// tool are no longer held or refused for it (admin token).
    Accept {
        /// The upstream (MCP server) name in gateway.yaml.
        upstream: String,
        /// The tool.
        tool: String,
        /// Why (kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

/// `portcullis mcp ...`.
pub fn mcp(conn: AdminConn, command: McpCommand) -> ExitCode {
    match command {
        McpCommand::Tools => done(
            call(conn, "mcp tools", |c, base| {
                c.get(format!("{base}/api/mcp/tools"))
            }),
            pretty,
        ),
        McpCommand::Accept {
            upstream,
            tool,
            reason,
        } => done(
            call(conn, "mcp accept", |c, base| {
                c.post(format!("{base}/api/mcp/tools/accept"))
                    .json(&json!({ "upstream": upstream, "tool": tool, "reason": reason }))
            }),
            pretty,
        ),
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
