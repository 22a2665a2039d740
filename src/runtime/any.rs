//! The source for whatever answered on the socket discovery chose.

use futures_util::stream::BoxStream;

use super::containerd::ContainerdSource;
use super::cri::CriSource;
use super::docker::DockerSource;
use super::podman::PodmanSource;
use super::{ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::snapshot::ContainerSnapshot;
use crate::event::{RuntimeKind, SourceEvent};
use crate::time::UnixNanos;

/// The source for whatever answered on a socket: Docker through its Engine API, Podman
/// through libpod, containerd through its events service and CRI, CRI-O through CRI. Chosen
/// by what the daemon says it is, not by what the user expected, so `--runtime docker`
/// pointed at a Podman socket still gets Podman's own vocabulary.
/// Podman's source (a pooled HTTP client) is boxed: it is several times the size of the others.
pub enum AnySource {
    Docker(DockerSource),
    Podman(Box<PodmanSource>),
    Containerd(ContainerdSource),
    Cri(CriSource),
}

/// What a source is told besides its socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceOptions {
    pub filter: ContainerFilter,
    /// containerd namespaces to follow (`--containerd-namespaces`).
    pub containerd_namespaces: Vec<String>,
    /// The generic CRI path was asked for (`--runtime crio`): it is used whatever CRI
    /// runtime answers, containerd included.
    pub generic_cri: bool,
}

impl AnySource {
    pub fn for_runtime(runtime: RuntimeKind, endpoint: &str, options: SourceOptions) -> AnySource {
        let SourceOptions {
            filter,
            containerd_namespaces,
            generic_cri,
        } = options;
        match runtime {
            RuntimeKind::Docker => AnySource::Docker(DockerSource::new(endpoint, filter)),
            RuntimeKind::Podman => AnySource::Podman(Box::new(PodmanSource::new(endpoint, filter))),
            RuntimeKind::Containerd if !generic_cri => AnySource::Containerd(
                ContainerdSource::new(endpoint, filter, containerd_namespaces),
            ),
            RuntimeKind::Containerd | RuntimeKind::Crio => {
                AnySource::Cri(CriSource::new(endpoint, filter))
            }
        }
    }
}

/// Calls the same method on whichever source it is.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            AnySource::Docker($s) => $e,
            AnySource::Podman($s) => $e,
            AnySource::Containerd($s) => $e,
            AnySource::Cri($s) => $e,
        }
    };
}

impl Source for AnySource {
    fn endpoint(&self) -> &str {
        each!(self, s => s.endpoint())
    }

    fn replays(&self) -> bool {
        each!(self, s => s.replays())
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        each!(self, s => s.connect().await)
    }

    fn events(
        &self,
        since: Option<UnixNanos>,
        until: Option<UnixNanos>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>> {
        each!(self, s => s.events(since, until))
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        each!(self, s => s.snapshot().await)
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        each!(self, s => s.inspect(container_id).await)
    }

    async fn ping(&self) -> Result<(), SourceError> {
        each!(self, s => s.ping().await)
    }
}
