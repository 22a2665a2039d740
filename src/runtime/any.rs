//! The source for whatever answered on the socket discovery chose.

use futures_util::stream::BoxStream;

use super::docker::DockerSource;
use super::podman::PodmanSource;
use super::{ContainerFilter, RuntimeInfo, Source, SourceError};
use crate::event::snapshot::ContainerSnapshot;
use crate::event::{RuntimeKind, SourceEvent};

/// The source for whatever answered on a socket: Docker through its Engine API, Podman
/// through libpod. Chosen by what the daemon says it is, not by what the user expected, so
/// `--runtime docker` pointed at a Podman socket still gets Podman's own vocabulary.
pub enum AnySource {
    Docker(DockerSource),
    Podman(PodmanSource),
}

impl AnySource {
    pub fn for_runtime(runtime: RuntimeKind, endpoint: &str, filter: ContainerFilter) -> AnySource {
        match runtime {
            RuntimeKind::Docker => AnySource::Docker(DockerSource::new(endpoint, filter)),
            RuntimeKind::Podman => AnySource::Podman(PodmanSource::new(endpoint, filter)),
        }
    }
}

impl Source for AnySource {
    fn endpoint(&self) -> &str {
        match self {
            AnySource::Docker(s) => s.endpoint(),
            AnySource::Podman(s) => s.endpoint(),
        }
    }

    async fn connect(&mut self) -> Result<RuntimeInfo, SourceError> {
        match self {
            AnySource::Docker(s) => s.connect().await,
            AnySource::Podman(s) => s.connect().await,
        }
    }

    fn events(
        &self,
        since: Option<i64>,
        until: Option<i64>,
    ) -> BoxStream<'static, Result<Option<SourceEvent>, SourceError>> {
        match self {
            AnySource::Docker(s) => s.events(since, until),
            AnySource::Podman(s) => s.events(since, until),
        }
    }

    async fn snapshot(&self) -> Result<Vec<ContainerSnapshot>, SourceError> {
        match self {
            AnySource::Docker(s) => s.snapshot().await,
            AnySource::Podman(s) => s.snapshot().await,
        }
    }

    async fn inspect(&self, container_id: &str) -> Result<Option<ContainerSnapshot>, SourceError> {
        match self {
            AnySource::Docker(s) => s.inspect(container_id).await,
            AnySource::Podman(s) => s.inspect(container_id).await,
        }
    }

    async fn ping(&self) -> Result<(), SourceError> {
        match self {
            AnySource::Docker(s) => s.ping().await,
            AnySource::Podman(s) => s.ping().await,
        }
    }
}
