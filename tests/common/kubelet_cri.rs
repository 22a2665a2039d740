//! What a kubelet sends over CRI for a pod and its containers: the sandbox config (host
//! network, so no CNI) and a container config with the kubelet's labels and annotations,
//! the attempt ordinal among them. Shared by the tests' private containerd
//! (`containerd.rs`) and the benchmarks' load generator (`examples/cri_load.rs`, which
//! includes this file), so both drive containerd the same way.

use std::collections::HashMap;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ImageSpec, LinuxContainerConfig, LinuxContainerResources,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};

/// The sandbox of pod `namespace/name` with `uid`, on the node's network.
pub fn sandbox_config(
    namespace: &str,
    name: &str,
    uid: &str,
    log_directory: &str,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        log_directory: log_directory.into(),
        labels: HashMap::from([
            ("io.kubernetes.pod.name".into(), name.into()),
            ("io.kubernetes.pod.namespace".into(), namespace.into()),
            ("io.kubernetes.pod.uid".into(), uid.into()),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..NamespaceOption::default()
                }),
                ..LinuxSandboxSecurityContext::default()
            }),
            ..LinuxPodSandboxConfig::default()
        }),
        ..PodSandboxConfig::default()
    }
}

/// Container `name` of the pod `sandbox` describes, at `attempt`, running `script` under
/// `/bin/sh -c` on `image`, with a memory limit if given and `extra` labels beside the
/// kubelet's.
pub fn container_config(
    sandbox: &PodSandboxConfig,
    name: &str,
    attempt: u32,
    image: &str,
    script: &str,
    memory: Option<i64>,
    extra: &[(String, String)],
) -> ContainerConfig {
    let pod = sandbox.metadata.clone().unwrap_or_default();
    let mut labels: HashMap<String, String> = extra.iter().cloned().collect();
    labels.extend([
        ("io.kubernetes.pod.name".into(), pod.name),
        ("io.kubernetes.pod.namespace".into(), pod.namespace),
        ("io.kubernetes.pod.uid".into(), pod.uid),
        ("io.kubernetes.container.name".into(), name.into()),
    ]);
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..ImageSpec::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        labels,
        annotations: HashMap::from([
            (
                "io.kubernetes.container.restartCount".into(),
                attempt.to_string(),
            ),
            (
                "io.kubernetes.container.terminationMessagePath".into(),
                "/dev/termination-log".into(),
            ),
        ]),
        log_path: format!("{name}/{attempt}.log"),
        linux: Some(LinuxContainerConfig {
            resources: memory.map(|m| LinuxContainerResources {
                memory_limit_in_bytes: m,
                ..LinuxContainerResources::default()
            }),
            ..LinuxContainerConfig::default()
        }),
        ..ContainerConfig::default()
    }
}
