//! Which runtime socket to use (`--runtime auto|docker|podman|containerd|crio`, `--socket`),
//! and the probe behind `lifecycle-agent check` (README "Configuration").

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::containerd::ContainerdSource;
use super::cri::CriSource;
use super::docker::DockerSource;
use super::podman::PodmanSource;
use super::{ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::RuntimeKind;

/// The runtime the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Docker,
    Podman,
    Containerd,
    /// CRI-O, or the generic CRI path on any CRI runtime.
    Crio,
}

/// A socket worth trying, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The runtime this socket is expected to belong to (`/version` has the last word).
    pub expected: &'static str,
    pub endpoint: String,
    /// Where the path came from: `--socket`, `DOCKER_HOST`, `CONTAINER_HOST`, or a usual path.
    pub origin: &'static str,
}

/// Bare paths become `unix://` endpoints; `unix://`, `tcp://` and `http://` stay as they are.
pub fn normalize_endpoint(s: &str) -> String {
    let s = s.trim();
    if s.starts_with("unix://") || s.starts_with("tcp://") || s.starts_with("http://") {
        s.to_string()
    } else {
        format!("unix://{s}")
    }
}

/// The sockets to try, in order, for a choice. `env` reads environment variables.
pub fn candidates(
    choice: RuntimeChoice,
    socket: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<Candidate> {
    if let Some(s) = socket {
        let expected = match choice {
            RuntimeChoice::Podman => "podman",
            RuntimeChoice::Docker => "docker",
            RuntimeChoice::Containerd => "containerd",
            RuntimeChoice::Crio => "crio",
            RuntimeChoice::Auto => ANY,
        };
        return vec![Candidate {
            expected,
            endpoint: normalize_endpoint(s),
            origin: "--socket",
        }];
    }
    let docker = matches!(choice, RuntimeChoice::Auto | RuntimeChoice::Docker);
    let podman = matches!(choice, RuntimeChoice::Auto | RuntimeChoice::Podman);
    let containerd = matches!(choice, RuntimeChoice::Auto | RuntimeChoice::Containerd);
    let crio = matches!(choice, RuntimeChoice::Auto | RuntimeChoice::Crio);
    let docker_host = env("DOCKER_HOST").filter(|v| !v.is_empty());
    let container_host = env("CONTAINER_HOST").filter(|v| !v.is_empty());
    // What the environment names first (README "Configuration": DOCKER_HOST /
    // CONTAINER_HOST, then the usual paths): someone who set CONTAINER_HOST on a host that also has a Docker socket means Podman.
    let mut out = Vec::new();
    if let (true, Some(h)) = (docker, &docker_host) {
        out.push(Candidate {
            expected: "docker",
            endpoint: normalize_endpoint(h),
            origin: "DOCKER_HOST",
        });
    }
    if let (true, Some(h)) = (podman, &container_host) {
        out.push(Candidate {
            expected: "podman",
            endpoint: normalize_endpoint(h),
            origin: "CONTAINER_HOST",
        });
    }
    if docker && docker_host.is_none() {
        out.push(Candidate {
            expected: "docker",
            endpoint: "unix:///var/run/docker.sock".into(),
            origin: "default Docker socket",
        });
    }
    if podman && container_host.is_none() {
        out.push(Candidate {
            expected: "podman",
            endpoint: "unix:///run/podman/podman.sock".into(),
            origin: "rootful Podman socket",
        });
        if let Some(xdg) = env("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
            out.push(Candidate {
                expected: "podman",
                endpoint: format!("unix://{xdg}/podman/podman.sock"),
                origin: "rootless Podman socket ($XDG_RUNTIME_DIR)",
            });
        }
    }
    // After Docker and Podman: a node that has one of them besides containerd (Docker runs
    // on containerd) means it, and containerd's `k8s.io` namespace is the kubelet's.
    if containerd {
        out.push(Candidate {
            expected: "containerd",
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            origin: "default containerd socket",
        });
        out.push(Candidate {
            expected: "containerd",
            endpoint: "unix:///run/k3s/containerd/containerd.sock".into(),
            origin: "k3s/RKE2 containerd socket",
        });
    }
    if crio {
        out.push(Candidate {
            expected: "crio",
            endpoint: "unix:///var/run/crio/crio.sock".into(),
            origin: "default CRI-O socket",
        });
    }
    out
}

/// What `--socket` is expected to be under `--runtime auto`.
const ANY: &str = "any runtime";

/// The result of probing one candidate.
#[derive(Debug)]
pub struct Probe {
    pub candidate: Candidate,
    pub result: Result<RuntimeInfo, String>,
}

/// Seconds one candidate may take to say what it is.
const PROBE_TIMEOUT_SECS: u64 = 10;

pub async fn probe(candidate: &Candidate) -> Probe {
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(PROBE_TIMEOUT_SECS),
        identify_as(candidate.expected, &candidate.endpoint),
    )
    .await
    .map_err(|_| format!("no answer within {PROBE_TIMEOUT_SECS}s"))
    .and_then(|r| r.map_err(|e| e.to_string()));
    Probe {
        candidate: candidate.clone(),
        result,
    }
}

/// Asks a socket what answers there, as what it is expected to be: a containerd or CRI-O
/// socket speaks gRPC, the others HTTP; a socket of unknown kind is asked both ways.
pub async fn identify_as(expected: &str, endpoint: &str) -> Result<RuntimeInfo, SourceError> {
    match expected {
        "containerd" => {
            ContainerdSource::new(endpoint, ContainerFilter::default(), Vec::new())
                .connect()
                .await
        }
        "crio" => {
            CriSource::new(endpoint, ContainerFilter::default())
                .connect()
                .await
        }
        ANY => match identify(endpoint).await {
            Ok(info) => Ok(info),
            Err(e @ SourceError::Unreachable { .. }) if !endpoint.starts_with("unix://") => Err(e),
            Err(http) => {
                match ContainerdSource::new(endpoint, ContainerFilter::default(), Vec::new())
                    .connect()
                    .await
                {
                    Ok(info) => Ok(info),
                    Err(_) => Err(http),
                }
            }
        },
        _ => identify(endpoint).await,
    }
}

/// Asks an HTTP socket what answers there. libpod first: only Podman has it, and its version is
/// the one the Podman source speaks; a Docker daemon refuses the path and is then asked
/// through the Engine API (which would also answer for Podman, naming it in `/version`).
pub async fn identify(endpoint: &str) -> Result<RuntimeInfo, SourceError> {
    let podman = PodmanSource::new(endpoint, ContainerFilter::default())
        .connect()
        .await;
    match podman {
        Ok(info) => return Ok(info),
        // Nothing listens there: asking again through another API will not help.
        Err(e @ SourceError::Unreachable { .. }) => return Err(e),
        Err(_) => {}
    }
    DockerSource::new(endpoint, ContainerFilter::default())
        .connect()
        .await
}

/// Whether the runtime found is the one an explicit `--runtime` asked for.
pub fn matches_choice(choice: RuntimeChoice, found: RuntimeKind) -> bool {
    match choice {
        RuntimeChoice::Auto => true,
        RuntimeChoice::Docker => found == RuntimeKind::Docker,
        RuntimeChoice::Podman => found == RuntimeKind::Podman,
        RuntimeChoice::Containerd => found == RuntimeKind::Containerd,
        // The generic CRI path follows any CRI runtime, containerd included.
        RuntimeChoice::Crio => matches!(found, RuntimeKind::Crio | RuntimeKind::Containerd),
    }
}

/// Probes candidates in order; the first that answers wins.
pub async fn select(cands: &[Candidate]) -> Result<(Candidate, RuntimeInfo), Vec<Probe>> {
    let mut failures = Vec::new();
    for c in cands {
        let p = probe(c).await;
        match p.result {
            Ok(info) => return Ok((p.candidate, info)),
            Err(_) => failures.push(p),
        }
    }
    Err(failures)
}

/// The message a user gets when nothing answered: what was tried and how to point the agent
/// at a socket.
pub fn explain_none_reachable(failures: &[Probe]) -> String {
    let mut s = String::from("no container runtime reachable. Tried:\n");
    for p in failures {
        let reason = p.result.as_ref().err().map(String::as_str).unwrap_or("ok");
        let _ = writeln!(
            s,
            "  - {} ({}, {}): {}",
            p.candidate.endpoint, p.candidate.expected, p.candidate.origin, reason
        );
    }
    s.push_str(
        "Point the agent at a socket with --socket PATH (or LIFECYCLE_SOCKET, DOCKER_HOST, CONTAINER_HOST), \
         e.g. --socket /var/run/docker.sock, --runtime podman --socket $XDG_RUNTIME_DIR/podman/podman.sock \
         or --runtime containerd --socket /run/containerd/containerd.sock; \
         make sure this user may read it (root, or the socket's group).",
    );
    s
}

#[cfg(test)]
mod test {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_tries_docker_then_podman_rootful_and_rootless() {
        let c = candidates(
            RuntimeChoice::Auto,
            None,
            env(&[("XDG_RUNTIME_DIR", "/run/user/1000")]),
        );
        let eps: Vec<_> = c.iter().map(|c| c.endpoint.as_str()).collect();
        assert_eq!(
            eps,
            vec![
                "unix:///var/run/docker.sock",
                "unix:///run/podman/podman.sock",
                "unix:///run/user/1000/podman/podman.sock",
                "unix:///run/containerd/containerd.sock",
                "unix:///run/k3s/containerd/containerd.sock",
                "unix:///var/run/crio/crio.sock",
            ]
        );
        let c = candidates(RuntimeChoice::Containerd, None, env(&[]));
        assert!(c.iter().all(|c| c.expected == "containerd"), "{c:?}");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn environment_and_flag_override_the_usual_paths() {
        let c = candidates(
            RuntimeChoice::Auto,
            None,
            env(&[
                ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
                ("CONTAINER_HOST", "/x/p.sock"),
            ]),
        );
        assert_eq!(c[0].endpoint, "tcp://127.0.0.1:2375");
        assert_eq!(c[1].endpoint, "unix:///x/p.sock");
        let c = candidates(
            RuntimeChoice::Auto,
            None,
            env(&[("CONTAINER_HOST", "/x/p.sock")]),
        );
        let eps: Vec<_> = c.iter().map(|c| c.endpoint.as_str()).take(2).collect();
        assert_eq!(
            eps,
            vec!["unix:///x/p.sock", "unix:///var/run/docker.sock"],
            "what the environment names comes before the usual paths"
        );
        let c = candidates(RuntimeChoice::Podman, Some("/tmp/s.sock"), env(&[]));
        assert_eq!(c.len(), 1);
        assert_eq!(
            (c[0].endpoint.as_str(), c[0].origin),
            ("unix:///tmp/s.sock", "--socket")
        );
    }
}
