//! The command line: `run`, `check`, `stats`, `events` (README "Commands"), and how the client
//! subcommands print what a running agent answers.

use std::fmt::Write as _;

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;

use crate::client::{get_json, ClientError};
use crate::config::{Config, RunArgs, SETTINGS};
use crate::history::query::{parse_types, RawEventQuery};
use crate::history::HistoryEvent;
use crate::runtime::discovery::{self, Probe};
use crate::stats::{RestartStats, UptimeStats};

pub const DEFAULT_URL: &str = "http://127.0.0.1:9977";

#[derive(Debug, Parser)]
#[command(
    name = "lifecycle-agent",
    version,
    about = "Container lifecycle metrics for every node: restarts, uptime and event history from Docker or Podman."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch one runtime and serve metrics and the API.
    Run(RunArgs),
    /// Show which runtimes (and the Kubernetes API) are reachable, with versions; exit 0 if
    /// the selected runtime is.
    Check(RunArgs),
    /// Restart and uptime statistics of a running agent.
    Stats(StatsArgs),
    /// Search a running agent's event history.
    Events(EventsArgs),
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The agent's base URL.
    #[arg(long, env = "LIFECYCLE_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[arg(long, env = "LIFECYCLE_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Runtime name, container id prefix or Kubernetes container name.
    #[arg(long)]
    pub container: Option<String>,
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub namespace: Option<String>,
    /// Event types, comma-separated (started,died,...).
    #[arg(long = "type")]
    pub types: Option<String>,
    /// RFC 3339 time or a duration meaning "ago" (15m, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

/// What is wrong with the command line.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// clap's own answer (a usage error, `--help`, `--version`): printed and exited as clap does.
    #[error(transparent)]
    Clap(clap::Error),
    /// A value clap could not parse that an environment variable set, not a flag: clap names
    /// only the flag (README "Configuration").
    #[error("environment variable {var}: {}", first_line(.error))]
    Env { var: String, error: clap::Error },
}

fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Parses the command line and the environment variables clap reads, and records which
/// settings of `run` and `check` an environment variable gave, so that a configuration error
/// names the variable rather than a flag nobody passed.
pub fn parse<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| blame_env(e, &argv, &cmd))?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    if let (Command::Run(args) | Command::Check(args), Some((name, sub))) =
        (&mut cli.command, matches.subcommand())
    {
        let defs = cmd.find_subcommand(name);
        for key in SETTINGS {
            if sub.value_source(key) == Some(ValueSource::EnvVariable) {
                let var = defs
                    .and_then(|c| c.get_arguments().find(|a| a.get_id() == *key))
                    .and_then(|a| a.get_env())
                    .map(|v| v.to_string_lossy().into_owned())
                    .unwrap_or_default();
                args.from_env.push((key, var));
            }
        }
    }
    Ok(cli)
}

/// A value clap refused for a flag that is not on the command line came from the flag's
/// environment variable: say which.
fn blame_env(e: clap::Error, argv: &[OsString], cmd: &clap::Command) -> ParseError {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return ParseError::Clap(e);
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return ParseError::Clap(e);
    };
    let Some(long) = arg
        .strip_prefix("--")
        .and_then(|a| a.split([' ', '=']).next())
    else {
        return ParseError::Clap(e);
    };
    let flag = format!("--{long}");
    let on_command_line = argv.iter().any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&format!("{flag}="))
    });
    let var = cmd
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    match var {
        Some(var) if !on_command_line && std::env::var_os(&var).is_some() => {
            ParseError::Env { var, error: e }
        }
        _ => ParseError::Clap(e),
    }
}

/// Which runtimes `check` found, and which one `run` would use.
pub async fn check(config: &Config) -> (String, bool) {
    let cands = discovery::candidates(config.runtime, config.socket.as_deref(), |k| {
        std::env::var(k).ok()
    });
    let mut probes: Vec<Probe> = Vec::with_capacity(cands.len());
    for c in &cands {
        probes.push(discovery::probe(c).await);
    }
    let mut out = String::new();
    for p in &probes {
        let c = &p.candidate;
        match &p.result {
            Ok(i) => {
                let _ = writeln!(
                    out,
                    "ok    {:<7} {} (API {}) at {} [{}]",
                    i.runtime, i.version, i.api_version, c.endpoint, c.origin
                );
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "fail  {:<7} {} [{}]: {e}",
                    c.expected, c.endpoint, c.origin
                );
            }
        }
    }
    // The Kubernetes API is reported, not required: the agent runs without it.
    if crate::kube::enabled_because(
        config.kube,
        |k| std::env::var(k).ok(),
        crate::kube::home_kubeconfig_exists,
    )
    .is_some()
    {
        let (line, _) = crate::kube::watch::probe(&config.node_name).await;
        let _ = writeln!(out, "{line}");
    }
    match probes
        .iter()
        .find_map(|p| p.result.as_ref().ok().map(|i| (p, i)))
    {
        Some((p, info)) => {
            let _ = writeln!(
                out,
                "would use: {} {} at {} [{}]",
                info.runtime, info.version, p.candidate.endpoint, p.candidate.origin
            );
            if !discovery::matches_choice(config.runtime, info.runtime) {
                let _ = writeln!(
                    out,
                    "note: {} answers there, not the runtime asked for; run follows what answers",
                    info.runtime
                );
            }
            (out, true)
        }
        None => {
            out.push_str(&discovery::explain_none_reachable(&probes));
            out.push('\n');
            (out, false)
        }
    }
}

fn base(url: &str) -> &str {
    url.trim_end_matches('/')
}

pub async fn stats(args: &StatsArgs) -> Result<String, ClientError> {
    let restarts: RestartStats =
        get_json(&format!("{}/api/v1/stats/restarts", base(&args.url))).await?;
    let uptime: UptimeStats = get_json(&format!("{}/api/v1/stats/uptime", base(&args.url))).await?;
    if args.json {
        let v = serde_json::json!({ "restarts": restarts, "uptime": uptime });
        return Ok(format!("{v:#}\n"));
    }
    Ok(format_stats(&restarts, &uptime))
}

pub fn format_stats(r: &RestartStats, u: &UptimeStats) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "node {} ({})", r.node, r.runtime);
    let _ = writeln!(
        s,
        "containers          {} ({} running, {} paused, {} stopped)",
        u.total_containers, u.running_containers, u.paused_containers, u.stopped_containers
    );
    let _ = writeln!(
        s,
        "restarts            {} total, {} containers restarted, {:.2} per container",
        r.total_restarts, r.containers_with_restarts, r.average_restarts_per_container
    );
    let _ = writeln!(
        s,
        "restarts on node    {} since tracking began, {} in the last hour, {} in the last 24h",
        r.node_restarts_total, r.restarts_last_1h, r.restarts_last_24h
    );
    let _ = writeln!(
        s,
        "uptime              {:.0}s total, {:.0}s average",
        u.total_uptime_seconds, u.average_uptime_seconds
    );
    if !r.top_restarting.is_empty() {
        let _ = writeln!(s, "\nmost restarts:");
        let _ = writeln!(
            s,
            "{:>8}  {:<20} {:<30} CONTAINER",
            "RESTARTS", "NAMESPACE", "POD"
        );
        for t in &r.top_restarting {
            let _ = writeln!(
                s,
                "{:>8}  {:<20} {:<30} {}",
                t.restarts,
                dash(&t.namespace),
                dash(&t.pod),
                t.container
            );
        }
    }
    s
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

#[derive(Deserialize)]
struct EventsAnswer {
    events: Vec<HistoryEvent>,
    truncated: bool,
}

/// Builds the query string; values are checked here too so typos fail before any request.
pub fn events_query(a: &EventsArgs) -> Result<String, String> {
    if let Some(t) = &a.types {
        parse_types(t).map_err(|e| e.to_string())?;
    }
    let raw = RawEventQuery {
        container: a.container.clone(),
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        types: a.types.clone(),
        since: a.since.clone(),
        until: a.until.clone(),
        limit: a.limit.map(|l| l.to_string()),
    };
    let pairs: Vec<(&str, &String)> = [
        ("container", &raw.container),
        ("namespace", &raw.namespace),
        ("pod", &raw.pod),
        ("type", &raw.types),
        ("since", &raw.since),
        ("until", &raw.until),
        ("limit", &raw.limit),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    serde_urlencoded::to_string(pairs).map_err(|e| e.to_string())
}

pub async fn events(a: &EventsArgs) -> Result<String, ClientError> {
    let q = events_query(a).map_err(|reason| ClientError::BadUrl {
        url: a.url.clone(),
        reason,
    })?;
    let url = format!("{}/api/v1/events?{q}", base(&a.url));
    if a.json {
        let v: serde_json::Value = get_json(&url).await?;
        return Ok(format!("{v:#}\n"));
    }
    let ans: EventsAnswer = get_json(&url).await?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<31} {:<14} {:<30} {:<30} EXIT",
        "TIME", "TYPE", "CONTAINER", "NAMESPACE/POD"
    );
    for e in &ans.events {
        let pod = if e.subject.pod.is_empty() {
            "-".to_string()
        } else {
            format!("{}/{}", e.subject.namespace, e.subject.pod)
        };
        let detail = match (e.exit_code, e.health) {
            (Some(c), _) => c.to_string(),
            (None, Some(h)) => h.as_str().to_string(),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<31} {:<14} {:<30} {:<30} {}",
            e.time_nanos.to_rfc3339(),
            e.kind.as_str(),
            e.subject.container,
            pod,
            detail
        );
    }
    if ans.truncated {
        let _ = writeln!(s, "(more events match; raise --limit or narrow the search)");
    }
    Ok(s)
}
