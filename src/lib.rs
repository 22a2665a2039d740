//! lifecycle-agent: follows a node's container runtime and turns its lifecycle events into
//! restart counts, uptime, an event history, Prometheus metrics and a JSON API.
//!
//! Data flow, one module each: `runtime` (Docker/Podman streams, reconnect and replay)
//! -> `event` (the normalized event) -> `tracker` (restart and uptime rules) -> `history`
//! (the searchable event log) -> `metrics` / `api` / `stats`. Beside them, `kube` follows the
//! pods of the node so metrics and the API can carry their allowlisted annotations and labels.
#![forbid(unsafe_code)]

pub mod agent;
pub mod answers;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod event;
pub mod history;
pub mod kube;
pub mod metrics;
pub mod process;
pub mod runtime;
pub mod server;
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
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A configuration problem (exit status 2, like the other configuration errors).
    #[error("`kube`: {0}")]
    Kube(#[from] kube::KubeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
