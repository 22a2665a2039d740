//! An in-process CRI runtime standing in for CRI-O (which cannot be installed on these
//! machines): a real gRPC server (tonic) on a unix socket speaking `runtime.v1.RuntimeService`
//! as CRI-O does, with the calls the agent makes (`Version`, `ListContainers`,
//! `ContainerStatus`, `GetContainerEvents`) and a test-side API that plays the kubelet and
//! the kernel (create, start, exit with a code or an OOM kill, remove).
//!
//! `GetContainerEvents` is served only when made `with_events`; without, it answers
//! UNIMPLEMENTED as containerd 1.6 does, and the agent relists.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use k8s_cri::v1::*;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::unique;

type Events = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send + 'static>,
>;

#[derive(Default)]
struct Inner {
    containers: HashMap<String, ContainerStatus>,
    subscribers: Vec<mpsc::UnboundedSender<Result<ContainerEventResponse, Status>>>,
    next: u64,
}

#[derive(Clone)]
struct Fake {
    inner: Arc<Mutex<Inner>>,
    events: bool,
}

/// The fake runtime, served until dropped.
pub struct FakeCri {
    pub socket: PathBuf,
    dir: PathBuf,
    fake: Fake,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

impl FakeCri {
    /// Serves a fresh runtime; `with_events` decides whether `GetContainerEvents` works.
    pub fn start(with_events: bool) -> FakeCri {
        let dir = std::env::temp_dir().join(unique("fake-cri"));
        std::fs::create_dir_all(&dir).expect("fake CRI dir");
        let socket = dir.join("crio.sock");
        let fake = Fake {
            inner: Arc::default(),
            events: with_events,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake CRI server");
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&socket).expect("bind the fake CRI socket")
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = RuntimeServiceServer::new(fake.clone());
        rt.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                )
                .await;
        });
        FakeCri {
            socket,
            dir,
            fake,
            rt: Some(rt),
            shutdown: Some(tx),
        }
    }

    fn publish(inner: &mut Inner, id: &str, kind: ContainerEventType) {
        let Some(st) = inner.containers.get(id).cloned() else {
            return;
        };
        let ev = ContainerEventResponse {
            container_id: id.to_string(),
            container_event_type: kind as i32,
            created_at: now(),
            pod_sandbox_status: None,
            containers_statuses: vec![st],
        };
        inner.subscribers.retain(|s| s.send(Ok(ev.clone())).is_ok());
    }

    /// CreateContainer as the kubelet asks for attempt `attempt` of `name` in a pod.
    pub fn create(&self, ns: &str, pod: &str, name: &str, attempt: u32) -> String {
        let mut inner = self.fake.inner.lock().unwrap();
        inner.next += 1;
        let id = format!(
            "{:064x}",
            (u128::from(std::process::id()) << 64) | u128::from(inner.next)
        );
        let uid = format!("uid-{pod}");
        let st = ContainerStatus {
            id: id.clone(),
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            state: ContainerState::ContainerCreated as i32,
            created_at: now(),
            image: Some(ImageSpec {
                image: "quay.io/example/app:1".into(),
                ..ImageSpec::default()
            }),
            image_ref: "sha256:0123456789abcdef".into(),
            labels: HashMap::from([
                ("io.kubernetes.pod.namespace".into(), ns.into()),
                ("io.kubernetes.pod.name".into(), pod.into()),
                ("io.kubernetes.pod.uid".into(), uid),
                ("io.kubernetes.container.name".into(), name.into()),
            ]),
            annotations: HashMap::from([(
                "io.kubernetes.container.restartCount".into(),
                attempt.to_string(),
            )]),
            ..ContainerStatus::default()
        };
        inner.containers.insert(id.clone(), st);
        Self::publish(&mut inner, &id, ContainerEventType::ContainerCreatedEvent);
        id
    }

    pub fn start_container(&self, id: &str) {
        let mut inner = self.fake.inner.lock().unwrap();
        let st = inner.containers.get_mut(id).expect("a created container");
        st.state = ContainerState::ContainerRunning as i32;
        st.started_at = now();
        Self::publish(&mut inner, id, ContainerEventType::ContainerStartedEvent);
    }

    /// Creates and starts attempt `attempt`.
    pub fn run(&self, ns: &str, pod: &str, name: &str, attempt: u32) -> String {
        let id = self.create(ns, pod, name, attempt);
        self.start_container(&id);
        id
    }

    /// The process ends with `code`; an OOM kill is 137 with reason OOMKilled, as CRI-O says.
    pub fn exit(&self, id: &str, code: i32, oom: bool) {
        let mut inner = self.fake.inner.lock().unwrap();
        let st = inner.containers.get_mut(id).expect("a running container");
        st.state = ContainerState::ContainerExited as i32;
        st.finished_at = now();
        st.exit_code = if oom { 137 } else { code };
        st.reason = match (oom, code) {
            (true, _) => "OOMKilled",
            (false, 0) => "Completed",
            _ => "Error",
        }
        .into();
        Self::publish(&mut inner, id, ContainerEventType::ContainerStoppedEvent);
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.fake.inner.lock().unwrap();
        Self::publish(&mut inner, id, ContainerEventType::ContainerDeletedEvent);
        inner.containers.remove(id);
    }
}

impl Drop for FakeCri {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.fake.inner.lock().unwrap().subscribers.clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The calls CRI-O answers that the agent never makes, in the shape `async_trait` gives
/// the trait's methods (it does not see into a macro's expansion).
macro_rules! unimplemented_calls {
    ($($name:ident($req:ident) -> $resp:ident;)*) => {$(
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            _: Request<$req>,
        ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<$resp>, Status>> + Send + 'async_trait>>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async { Err(Status::unimplemented(stringify!($name))) })
        }
    )*};
}

#[tonic::async_trait]
impl RuntimeService for Fake {
    async fn version(
        &self,
        _: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "cri-o".into(),
            runtime_version: "1.31.0".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn list_containers(
        &self,
        _: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let inner = self.inner.lock().unwrap();
        let containers = inner
            .containers
            .values()
            .map(|st| Container {
                id: st.id.clone(),
                pod_sandbox_id: String::new(),
                metadata: st.metadata.clone(),
                image: st.image.clone(),
                image_ref: st.image_ref.clone(),
                state: st.state,
                created_at: st.created_at,
                labels: st.labels.clone(),
                annotations: st.annotations.clone(),
                ..Container::default()
            })
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let id = req.into_inner().container_id;
        let inner = self.inner.lock().unwrap();
        match inner.containers.get(&id) {
            Some(st) => Ok(Response::new(ContainerStatusResponse {
                status: Some(st.clone()),
                ..ContainerStatusResponse::default()
            })),
            None => Err(Status::not_found(format!("container {id} not found"))),
        }
    }

    type GetContainerEventsStream = Events;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Events>, Status> {
        if !self.events {
            return Err(Status::unimplemented(
                "method GetContainerEvents not implemented",
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner.lock().unwrap().subscribers.push(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    unimplemented_calls! {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        status(StatusRequest) -> StatusResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
        runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
    }
}
