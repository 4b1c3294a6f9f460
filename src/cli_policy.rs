//! `portcullis policy …`: draft, replay and review policy from evidence (the access log and
//! API descriptions). The work is in `portcullis::policy_tools`; this file is the command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use portcullis::policy_tools::{calls, openapi, replay, review, suggest};

/// Output formats of `policy review`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned text.
    Table,
    /// One JSON document.
    Json,
    /// `kind,agent,subject,detail`.
    Csv,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Suggest the smallest routes and per-agent scopes that would have allowed the calls in
    /// an access log (shadow-mode traffic included), and the diff against the current config.
    Suggest {
        /// The gateway's access log (JSON lines).
        #[arg(long = "from")]
        from: PathBuf,
        /// Only this agent's calls.
        #[arg(long)]
        agent: Option<String>,
        /// Only calls this recent, e.g. `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// The current configuration, to reuse its scopes and upstreams and diff against.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// Distinct literal children of one parent that make `parent/**`.
        #[arg(long, default_value_t = 20)]
        collapse_after: usize,
        /// Print JSON instead of YAML and the diff.
        #[arg(long)]
        json: bool,
    },
    /// Re-decide every logged call under a candidate config and report what changes; exits 1
    /// when more calls change than `--max-changes` (a CI gate for config changes).
    Replay {
        /// The candidate configuration.
        #[arg(short, long)]
        config: PathBuf,
        /// The access log to replay.
        #[arg(long)]
        log: PathBuf,
        /// Only this agent's calls.
        #[arg(long)]
        agent: Option<String>,
        /// Only calls this recent, e.g. `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// Changed decisions tolerated before exiting 1.
        #[arg(long, default_value_t = 0)]
        max_changes: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Draft least-privilege routes and scopes for the OpenAPI operations an agent needs.
    FromOpenapi {
        /// The OpenAPI 3.0 or 3.1 document (YAML or JSON).
        spec: PathBuf,
        /// The agent the routes are for.
        #[arg(long)]
        agent: String,
        /// The operations it needs: `operationId`s, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        operations: Vec<String>,
        /// The upstream (in `upstreams:`) that serves the API.
        #[arg(long)]
        upstream: String,
    },
    /// The access review: unused scopes and routes, idle agents, unaccountable owners.
    Review {
        /// The configuration under review.
        #[arg(short, long, default_value = "gateway.yaml")]
        config: PathBuf,
        /// The access log covering the review window.
        #[arg(long)]
        log: PathBuf,
        /// The review window, e.g. `90d`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "90d")]
        since: Duration,
        /// A file of known people (one address per line): owners not in it are flagged.
        #[arg(long)]
        owners: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

fn fail(what: &str, m: impl std::fmt::Display) -> ExitCode {
    eprintln!("portcullis policy {what}: {m}");
    ExitCode::FAILURE
}

/// Run a `policy` subcommand. `load` reads a config without resolving upstream secrets.
pub fn run(
    command: PolicyCommand,
    load: impl Fn(&Path) -> Result<portcullis::policy::Snapshot, String>,
) -> ExitCode {
    match command {
        PolicyCommand::FromOpenapi {
            spec,
            agent,
            operations,
            upstream,
        } => {
            let text = match std::fs::read_to_string(&spec) {
                Ok(t) => t,
                Err(e) => {
                    return fail(
                        "from-openapi",
                        format!("cannot read {}: {e}", spec.display()),
                    )
                }
            };
            match openapi::draft_from_openapi(&text, &agent, &upstream, &operations) {
                Ok(d) => {
                    println!(
                        "# Drafted by `portcullis policy from-openapi` from {}.",
                        spec.display()
                    );
                    println!("routes:");
                    print!("{}", d.routes_yaml);
                    println!("# agents[].scopes of {agent}: [{}]", d.scopes.join(", "));
                    for n in &d.notes {
                        println!("# note: {n}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail("from-openapi", e),
            }
        }
        PolicyCommand::Suggest {
            from,
            agent,
            since,
            config,
            collapse_after,
            json,
        } => {
            let snap = match load(&config) {
                Ok(s) => s,
                Err(e) => return fail("suggest", e),
            };
            let ev = match calls::read(&from, agent.as_deref(), since) {
                Ok(e) => e,
                Err(e) => return fail("suggest", e),
            };
            let s = suggest::suggest(&snap, &ev.calls, &suggest::Options { collapse_after });
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", suggest::to_yaml(&s));
                println!(
                    "\n# diff against {} ({} call(s) as evidence, {} refused call(s) left out, {} unreadable line(s)):",
                    config.display(),
                    s.evidence.0,
                    s.evidence.1,
                    ev.unreadable
                );
                for d in &s.diff {
                    println!("# {d}");
                }
            }
            ExitCode::SUCCESS
        }
        PolicyCommand::Replay {
            config,
            log,
            agent,
            since,
            max_changes,
            json,
        } => {
            let snap = match load(&config) {
                Ok(s) => s,
                Err(e) => return fail("replay", e),
            };
            let ev = match calls::read(&log, agent.as_deref(), since) {
                Ok(e) => e,
                Err(e) => return fail("replay", e),
            };
            let r = replay::replay(&snap, &ev.calls);
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!(
                    "replayed {} call(s) under {}: {} unchanged, {} changed, {} not replayable",
                    r.replayed,
                    config.display(),
                    r.unchanged,
                    r.changes.len(),
                    r.undecidable.len()
                );
                for ((agent, change, route), n) in r.summary() {
                    println!("  {agent:<20} {change:<16} {route:<24} {n} call(s)");
                }
                for c in r.changes.iter().take(20) {
                    println!(
                        "  e.g. {} {} {}: {} → {}{}",
                        c.time,
                        c.agent,
                        c.call,
                        c.before.0,
                        c.after.decision,
                        c.after
                            .reason
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    );
                }
                for (call, why) in r.undecidable.iter().take(5) {
                    println!("  not replayable: {call}: {why}");
                }
            }
            if r.changes.len() > max_changes {
                eprintln!(
                    "portcullis policy replay: {} decision(s) change, more than --max-changes {max_changes}",
                    r.changes.len()
                );
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        PolicyCommand::Review {
            config,
            log,
            since,
            owners,
            format,
        } => {
            let snap = match load(&config) {
                Ok(s) => s,
                Err(e) => return fail("review", e),
            };
            let ev = match calls::read(&log, None, Some(since)) {
                Ok(e) => e,
                Err(e) => return fail("review", e),
            };
            let known = match owners {
                None => Vec::new(),
                Some(p) => match std::fs::read_to_string(&p) {
                    Ok(t) => t
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(String::from)
                        .collect(),
                    Err(e) => return fail("review", format!("cannot read {}: {e}", p.display())),
                },
            };
            // `90d` reads as "90 days", not humantime's "2months 29days 2h 52m 48s".
            let secs = since.as_secs();
            let window = if secs >= 86_400 && secs % 86_400 == 0 {
                format!("{} days", secs / 86_400)
            } else {
                humantime::format_duration(since).to_string()
            };
            let r = review::review(&snap, &ev.calls, &window, &known);
            match format {
                Format::Table => print!("{}", review::to_table(&r)),
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default())
                }
                Format::Csv => print!("{}", review::to_csv(&r)),
            }
            ExitCode::SUCCESS
        }
    }
}
