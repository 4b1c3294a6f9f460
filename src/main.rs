//! `portcullis`: run the gateway, check a config, issue tokens, make signing keys.

use clap::{Parser, Subcommand, ValueEnum};
use portcullis::config::{load_file, LoadContext};
use portcullis::identity::{generate_signing_key, issue_token, KeyStore};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Local token service (signs with `token_service.issuer`'s signing key).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
        Command::Keygen { out, force } => keygen(&out, force),
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
