//! Logging: structured `tracing` output as text or JSON on stderr.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

#[derive(Debug, thiserror::Error)]
#[error(
    "log level {level:?} is not a level or filter (info, debug, lifecycle_agent=debug): {reason}"
)]
pub struct BadLogLevel {
    pub level: String,
    pub reason: String,
}

pub fn init(format: LogFormat, level: &str) -> Result<(), BadLogLevel> {
    let mut filter = EnvFilter::try_new(level).map_err(|e| BadLogLevel {
        level: level.to_string(),
        reason: e.to_string(),
    })?;
    // kube's watcher warns on every retry of a forbidden list or watch; the agent reports a
    // 403 once itself (kube::watch), so kube's own warnings stay off unless asked for.
    if !level.contains("kube") {
        if let Ok(d) = "kube_runtime=error".parse() {
            filter = filter.add_directive(d);
        }
    }
    // Colours only for a terminal: in a file, a pipe or the container log they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let r = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A subscriber already set (tests) is not an error worth stopping for.
    let _ = r;
    Ok(())
}
