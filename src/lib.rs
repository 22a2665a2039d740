//! lifecycle-agent: follows a node's container runtime and turns its lifecycle events into
//! restart counts, uptime, an event history, Prometheus metrics and a JSON API.
//!
//! Data flow, one module each: `runtime` (Docker/Podman streams, reconnect and replay)
//! -> `event` (the normalized event and snapshot) -> `tracker` (restart and uptime rules)
//! -> `history` / `store` -> `state` (the one writer, with verbs) -> `metrics` / `api` /
//! `stats`, wired together and supervised by `agent`. Beside them, `kube` follows the pods
//! of the node so metrics and the API can carry their allowlisted annotations and labels.
//! No file imports one that imports it back (`tests/layering.rs`); `docs/design.md` draws
//! the flow.
#![forbid(unsafe_code)]

pub mod agent;
pub mod answers;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod event;
#[cfg(test)]
mod fixtures;
pub mod history;
pub mod kube;
pub mod labels;
pub mod metrics;
pub mod process;
pub mod runtime;
pub mod self_metrics;
pub mod server;
pub mod state;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod time;
pub mod tracker;

/// Errors that end the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error("cannot write the ready file {0}: {1}")]
    ReadyFile(std::path::PathBuf, std::io::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A configuration problem (exit status 2, like the other configuration errors).
    #[error("`kube`: {0}")]
    Kube(#[from] kube::watch::KubeError),
    /// A task ended (or panicked) while the agent was meant to run: exit and be restarted.
    #[error("the {task} task ended unexpectedly: {reason}")]
    TaskEnded { task: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
