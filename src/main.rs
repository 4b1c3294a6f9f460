//! `portcullis`: run the gateway, check a config, issue tokens, make signing keys.

mod cli_agents;
mod cli_policy;

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::approval::display;
use portcullis::config::{load_file, LoadContext};
use portcullis::identity::{generate_signing_key, issue_token, KeyStore};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of glibc malloc: the proxy allocates and frees many small buffers per request,
/// and glibc's allocator showed up as ~10% of the proxy thread's samples under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Zero-trust enforcement gateway for AI agents"
)]
struct Cli {
    /// Diagnostic log format on stderr (the access log has its own destination).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = "gateway.yaml", env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem with its path and line.
    Check {
        /// Configuration file.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Local token service (signs with `token_service.issuer`'s signing key), and revocation
    /// on a running gateway (`tokens revoke`).
    #[command(alias = "tokens")]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The agent inventory and the kill switch: list, show, pause, resume, lift (talks to the
    /// admin listener).
    Agents {
        #[command(flatten)]
        conn: cli_agents::AdminConn,
        #[command(subcommand)]
        command: cli_agents::AgentsCommand,
    },
    /// MCP tool-definition pins: list them, accept a changed one (talks to the admin
    /// listener).
    Mcp {
        #[command(flatten)]
        conn: cli_agents::AdminConn,
        #[command(subcommand)]
        command: cli_agents::McpCommand,
    },
    /// Pending approvals: list, show, approve, deny (talks to the admin listener).
    Approvals {
        /// Admin base URL (default: `http://` + listen.admin of the config).
        #[arg(long, global = true)]
        admin: Option<String>,
        /// Configuration file, to find the admin listener.
        #[arg(short, long, default_value = "gateway.yaml", global = true)]
        config: PathBuf,
        /// Approver token.
        #[arg(
            long,
            env = "PORTCULLIS_APPROVER_TOKEN",
            hide_env_values = true,
            global = true
        )]
        token: Option<String>,
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Make an approver token: prints the token once, writes its SHA-256 for `token_sha256`.
    ApproverToken {
        /// Write `<out>.token` (mode 0600) and `<out>.sha256` instead of printing both.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make an agent's client secret for the token endpoint: prints it once, and its SHA-256
    /// for `agents[].client.secret_sha256`.
    ClientSecret {
        /// Write `<out>.secret` (mode 0600) and `<out>.sha256` instead of printing both.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The token service's signing keyring (`issuers[].signing_keyring`): create it, rotate
    /// its key, list its keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Draft, replay and review policy from evidence: `suggest` (from the access log),
    /// `replay` (a candidate config against the log), `review` (the access review).
    Policy {
        #[command(subcommand)]
        command: cli_policy::PolicyCommand,
    },
    /// Reload the configuration of a running gateway (`POST /reload` on its admin listener).
    Reload {
        #[command(flatten)]
        conn: cli_agents::AdminConn,
    },
    /// Write a new ES256 signing key (PKCS#8 PEM, mode 0600).
    Keygen {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a keyring with its first key.
    Init {
        /// The keyring directory (as `signing_keyring` names it).
        #[arg(long)]
        dir: PathBuf,
        /// `kid` prefix of its keys.
        #[arg(long, default_value = "portcullis")]
        prefix: String,
    },
    /// Make a new signing key; the old one keeps verifying until its tokens have expired
    /// (identity.max_token_ttl + clock_skew), and keys past that are deleted. Reload the
    /// gateway afterwards (SIGHUP, `portcullis reload` or POST /reload).
    Rotate {
        /// Configuration file naming the keyring (token_service.issuer's `signing_keyring`).
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// `kid` prefix of the new key.
        #[arg(long, default_value = "portcullis")]
        prefix: String,
    },
    /// List the keyring's keys.
    List {
        /// Configuration file naming the keyring.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// List approvals (default: pending).
    List {
        /// pending, approved, denied, timed_out, abandoned, expired, used, cancelled or all.
        #[arg(long, default_value = "pending")]
        status: String,
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
    },
    /// Everything about one approval (JSON; control, bidi and invisible characters written as
    /// `\uXXXX` escapes, so the output is the same JSON value and safe on a terminal).
    Show {
        /// Approval id.
        id: String,
    },
    /// Approve (one vote towards the quorum).
    Approve {
        /// Approval id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// Deny (one deny decides).
    Deny {
        /// Approval id.
        id: String,
        /// Why (recorded, and sent to the agent).
        #[arg(long)]
        reason: String,
    },
    /// The whole request body of one approval, as text with control, bidi and invisible
    /// characters shown as `\u{...}` escapes (newlines and tabs kept).
    Body {
        /// Approval id.
        id: String,
        /// Write the exact bytes instead (to redirect into a file, not to read on a terminal).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue a short-lived token for a registered agent.
    Issue {
        /// Configuration file.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Agent id (must be registered and enabled).
        #[arg(long)]
        agent: String,
        /// Scopes, space- or comma-separated; each must be in the agent's registry entry.
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. `10m` (default: token_service.default_ttl; at most identity.max_token_ttl).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Move iat/nbf/exp this far into the past (to test expiry handling).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        backdate: Duration,
    },
    /// Revoke one token (`--jti`) or every token of an agent issued until now (`--agent`) on
    /// a running gateway; effective on the next request, cached tokens included.
    Revoke {
        #[command(flatten)]
        conn: cli_agents::AdminConn,
        /// The token's `jti`.
        #[arg(long, required_unless_present = "agent")]
        jti: Option<String>,
        /// The agent (with `--jti`: recorded with it; alone: all its tokens).
        #[arg(long)]
        agent: Option<String>,
        /// Why (shown to the agent, kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run { config } => match portcullis::server::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => check(&config),
        Command::Token {
            command:
                TokenCommand::Issue {
                    config,
                    agent,
                    scopes,
                    ttl,
                    backdate,
                },
        } => token_issue(&config, &agent, &scopes, ttl, backdate),
        Command::Token {
            command:
                TokenCommand::Revoke {
                    conn,
                    jti,
                    agent,
                    reason,
                },
        } => cli_agents::revoke(conn, jti, agent, reason),
        Command::Agents { conn, command } => cli_agents::run(conn, command),
        Command::Mcp { conn, command } => cli_agents::mcp(conn, command),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Reload { conn } => reload_cli(conn),
        Command::ApproverToken { out } => new_secret("pca_", "token", out.as_deref()),
        Command::ClientSecret { out } => new_secret("pcs_", "secret", out.as_deref()),
        Command::Keys { command } => keys_cli(command),
        Command::Policy { command } => cli_policy::run(command, |p| load(p, false)),
        Command::Approvals {
            admin,
            config,
            token,
            command,
        } => approvals_cli(admin, &config, token, command),
    }
}

/// Load a config for a CLI command. `check` resolves upstream secrets (a missing one is an
/// error the deployment must fix); `token issue` does not need them.
fn load(config: &Path, upstream_secrets: bool) -> Result<portcullis::policy::Snapshot, String> {
    let mut ctx = LoadContext::new(KeyStore::new(Arc::new(|_| {})), 1);
    ctx.resolve_upstream_secrets = upstream_secrets;
    load_file(config, &ctx).map_err(|e| e.to_string())
}

fn check(config: &Path) -> ExitCode {
    match load(config, true) {
        Ok(s) => {
            println!(
                "{}: ok ({} routes, {} agents, {} upstreams; digest {})",
                config.display(),
                s.routes.routes.len(),
                s.agents.len(),
                s.upstreams.len(),
                s.digest
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn token_issue(
    config: &Path,
    agent: &str,
    scopes: &[String],
    ttl: Option<Duration>,
    backdate: Duration,
) -> ExitCode {
    let fail = |m: String| {
        eprintln!("portcullis token issue: {m}");
        ExitCode::FAILURE
    };
    let snap = match load(config, false) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let Some(ts) = &snap.token_service else {
        return fail("the config has no `token_service` section".into());
    };
    let Some(a) = snap.agents.get(agent) else {
        return fail(format!("`{agent}` is not a registered agent"));
    };
    if !a.enabled {
        return fail(format!("agent `{agent}` is disabled"));
    }
    let scopes: Vec<String> = scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(str::to_string)
        .collect();
    let beyond: Vec<&str> = scopes
        .iter()
        .filter(|s| !a.scopes.contains(s.as_str()))
        .map(String::as_str)
        .collect();
    if !beyond.is_empty() {
        return fail(format!(
            "agent `{agent}` may not hold {}; its registry scopes are: {}",
            beyond.join(", "),
            a.scopes.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let ttl = ttl.unwrap_or(ts.default_ttl);
    if ttl > ts.max_ttl {
        return fail(format!(
            "ttl {} exceeds identity.max_token_ttl {}",
            humantime::format_duration(ttl),
            humantime::format_duration(ts.max_ttl)
        ));
    }
    let pem = match std::fs::read(&ts.signing_key_file) {
        Ok(p) => p,
        Err(e) => {
            return fail(format!(
                "cannot read {}: {e}",
                ts.signing_key_file.display()
            ))
        }
    };
    match issue_token(
        &pem,
        &ts.kid,
        &ts.issuer,
        &ts.audience,
        agent,
        &scopes,
        ttl,
        backdate,
        None,
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.to_string()),
    }
}

fn keygen(out: &Path, force: bool) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = match generate_signing_key() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    match opts.open(out).and_then(|mut f| f.write_all(pem.as_bytes())) {
        Ok(()) => {
            println!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis keygen: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// A random 256-bit secret (`prefix` + hex) and its SHA-256: approver tokens and client
/// secrets. Only the hash goes into the config.
fn new_secret(prefix: &str, label: &str, out: Option<&Path>) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = format!(
        "{prefix}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let Some(out) = out else {
        let width = label.len() + "_sha256: ".len();
        println!("{:<width$}{token}", format!("{label}:"));
        println!("{label}_sha256: {hash}");
        return ExitCode::SUCCESS;
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let base = out.display().to_string();
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(format!("{base}.{label}"))
        .and_then(|mut f| f.write_all(token.as_bytes()))
        .and_then(|_| std::fs::write(format!("{base}.sha256"), format!("{hash}\n")));
    match written {
        Ok(()) => {
            println!("wrote {base}.{label} and {base}.sha256");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: cannot write {base}.{label}/.sha256: {e}");
            ExitCode::FAILURE
        }
    }
}

fn keys_cli(command: KeysCommand) -> ExitCode {
    use portcullis::identity::keyring::Keyring;
    let fail = |m: String| {
        eprintln!("portcullis keys: {m}");
        ExitCode::FAILURE
    };
    let keyring_of = |config: &Path| -> Result<(PathBuf, Duration), String> {
        let snap = load(config, false)?;
        let ts = snap
            .token_service
            .as_ref()
            .ok_or("the config has no `token_service` section")?;
        let dir = ts
            .keyring_dir
            .clone()
            .ok_or("token_service.issuer signs with `signing_key_file`, not a `signing_keyring`")?;
        let id = snap.verifier.settings();
        Ok((dir, id.max_token_ttl + id.clock_skew))
    };
    match command {
        KeysCommand::Init { dir, prefix } => match Keyring::init(&dir, &prefix) {
            Ok(ring) => {
                let k = ring.active().expect("a new keyring has a key");
                println!("created {} with key {}", dir.display(), k.kid);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        },
        KeysCommand::Rotate { config, prefix } => {
            let (dir, overlap) = match keyring_of(&config) {
                Ok(x) => x,
                Err(e) => return fail(e),
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match Keyring::rotate(&dir, &prefix, now, overlap) {
                Ok(r) => {
                    println!("new signing key: {}", r.new_kid);
                    if let Some(old) = r.retired_kid {
                        println!(
                            "retired: {old} (verifies for {} more)",
                            humantime::format_duration(overlap)
                        );
                    }
                    for p in r.pruned {
                        println!("deleted: {p} (its tokens have all expired)");
                    }
                    println!("reload the gateway to sign with the new key (SIGHUP, `portcullis reload`, POST /reload)");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
        KeysCommand::List { config } => {
            let (dir, _) = match keyring_of(&config) {
                Ok(x) => x,
                Err(e) => return fail(e),
            };
            match Keyring::load(&dir) {
                Ok(ring) => {
                    let active = ring.active().map(|k| k.kid.clone());
                    for k in ring.keys() {
                        let state = match (k.retired, Some(&k.kid) == active.as_ref()) {
                            (_, true) => "signing".to_string(),
                            (Some(r), _) => format!("retired at {r}"),
                            (None, false) => "unused".to_string(),
                        };
                        println!("{}\tcreated {}\t{state}", k.kid, k.created);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.to_string()),
            }
        }
    }
}

/// The admin listener's base URL: `--admin`, else from the config file.
fn admin_base(admin: Option<String>, config: &Path) -> Result<String, String> {
    match admin {
        Some(a) => Ok(a.trim_end_matches('/').to_string()),
        None => match load(config, false) {
            Ok(s) => Ok(format!("http://{}", s.settings.admin_listen)),
            Err(e) => Err(format!(
                "cannot find the admin listener ({e}); pass --admin URL"
            )),
        },
    }
}

/// An admin API refusal as one line: its code, status and message (escaped: the terminal
/// shows control and bidi characters, never obeys them).
fn api_refusal(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    format!(
        "{} ({}): {}",
        body["error"].as_str().unwrap_or("error"),
        status.as_u16(),
        display::escape_line(body["message"].as_str().unwrap_or(""))
    )
}

/// The admin listener's base URL and a runtime to talk to it on (the CLI commands that call
/// the admin API).
fn admin_session(
    admin: Option<String>,
    config: &Path,
) -> Result<(String, tokio::runtime::Runtime), String> {
    let base = admin_base(admin, config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok((base, rt))
}

fn reload_cli(conn: cli_agents::AdminConn) -> ExitCode {
    let fail = |m: String| {
        eprintln!("portcullis reload: {m}");
        ExitCode::FAILURE
    };
    let (base, rt, token) = match conn.session() {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let res = rt.block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{base}/reload"))
            .bearer_auth(&token)
            .send()
            .await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        Ok::<_, reqwest::Error>((status, body))
    });
    match res {
        Ok((status, body)) if status.is_success() => {
            println!(
                "reloaded: config version {} (digest {})",
                body["config_version"],
                body["config_digest"].as_str().unwrap_or("")
            );
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            for issue in body["issues"].as_array().into_iter().flatten() {
                eprintln!(
                    "  {}{}: {}",
                    issue["line"]
                        .as_u64()
                        .map(|l| format!("line {l}: "))
                        .unwrap_or_default(),
                    issue["path"].as_str().unwrap_or(""),
                    issue["message"].as_str().unwrap_or("")
                );
            }
            fail(api_refusal(status, &body))
        }
        Err(e) => fail(format!("cannot reach {base}: {e}")),
    }
}

fn approvals_cli(
    admin: Option<String>,
    config: &Path,
    token: Option<String>,
    command: ApprovalsCommand,
) -> ExitCode {
    let fail = |m: String| {
        eprintln!("portcullis approvals: {m}");
        ExitCode::FAILURE
    };
    let Some(token) = token else {
        return fail("an approver token is needed: --token or PORTCULLIS_APPROVER_TOKEN".into());
    };
    let (base, rt) = match admin_session(admin, config) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let client = reqwest::Client::new();
    if let ApprovalsCommand::Body { id, raw } = &command {
        let req = client
            .get(format!("{base}/api/approvals/{id}/body"))
            .bearer_auth(&token);
        let res = rt.block_on(async {
            let r = req.send().await?;
            let status = r.status();
            let bytes = r.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        });
        return match res {
            Ok((status, bytes)) if status.is_success() => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let written = if *raw {
                    out.write_all(&bytes)
                } else {
                    let text = String::from_utf8_lossy(&bytes);
                    writeln!(out, "{}", display::escape_text(&text))
                };
                match written.and_then(|()| out.flush()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(format!("cannot write the body: {e}")),
                }
            }
            Ok((status, bytes)) => {
                let body: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                fail(api_refusal(status, &body))
            }
            Err(e) => fail(format!("cannot reach {base}: {e}")),
        };
    }
    let (req, printer): (reqwest::RequestBuilder, fn(&serde_json::Value)) = match &command {
        ApprovalsCommand::List {
            status,
            agent,
            route,
        } => {
            let mut q = vec![("status", status.clone())];
            if let Some(a) = agent {
                q.push(("agent", a.clone()));
            }
            if let Some(r) = route {
                q.push(("route", r.clone()));
            }
            (
                client.get(format!("{base}/api/approvals")).query(&q),
                print_list,
            )
        }
        ApprovalsCommand::Show { id } => {
            (client.get(format!("{base}/api/approvals/{id}")), print_json)
        }
        ApprovalsCommand::Approve { id, reason } => (
            client
                .post(format!("{base}/api/approvals/{id}/approve"))
                .json(&serde_json::json!({"reason": reason})),
            print_decision,
        ),
        ApprovalsCommand::Deny { id, reason } => (
            client
                .post(format!("{base}/api/approvals/{id}/deny"))
                .json(&serde_json::json!({"reason": reason})),
            print_decision,
        ),
        ApprovalsCommand::Body { .. } => unreachable!("answered above"),
    };
    let res = rt.block_on(async {
        let r = req.bearer_auth(&token).send().await?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        Ok::<_, reqwest::Error>((status, body))
    });
    match res {
        Ok((status, body)) if status.is_success() => {
            printer(&body);
            ExitCode::SUCCESS
        }
        Ok((status, body)) => fail(api_refusal(status, &body)),
        Err(e) => fail(format!("cannot reach {base}: {e}")),
    }
}

/// Agent-supplied text of a JSON field, safe for one terminal line.
fn field(v: &serde_json::Value) -> String {
    display::escape_line(v.as_str().unwrap_or("")).into_owned()
}

fn print_json(v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{}", display::json_ascii_safe(&text));
}

fn print_list(v: &serde_json::Value) {
    let items = v["approvals"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no approvals");
        return;
    }
    println!(
        "{:<34} {:<10} {:<16} {:<18} {:<6} {:<6} REQUEST",
        "ID", "STATUS", "AGENT", "ROUTE", "VOTES", "MODE"
    );
    for a in items {
        println!(
            "{:<34} {:<10} {:<16} {:<18} {:<6} {:<6} {} {}",
            field(&a["id"]),
            field(&a["status"]),
            field(&a["agent"]),
            field(&a["route"]),
            format!("{}/{}", a["approving_votes"], a["quorum"]),
            field(&a["mode"]),
            field(&a["method"]),
            match a["query"].as_str() {
                Some(q) =>
                    display::escape_line(&format!("{}?{q}", a["path"].as_str().unwrap_or("")))
                        .into_owned(),
                None => field(&a["path"]),
            },
        );
    }
}

fn print_decision(v: &serde_json::Value) {
    println!(
        "approval {} is now {} ({}/{} approvals)",
        v["id"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["approving_votes"],
        v["quorum"]
    );
}
