//! Drives a CRI runtime as a kubelet would, for `bench/bench.py`'s containerd rows (no
//! `crictl` on these machines). Pods use host networking, so no CNI is needed.
//!
//! ```text
//! cri_load SOCKET IMAGE pods N M [run|create]   N pods of M containers each, running or created
//! cri_load SOCKET IMAGE crashloop N             one pod whose container fails through attempts 0..N
//! cri_load SOCKET IMAGE cleanup                 stops and removes every pod sandbox
//! ```

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

#[path = "../tests/common/kubelet_cri.rs"]
mod kubelet_cri;

use kubelet_cri::{container_config, sandbox_config};

type Cri = RuntimeServiceClient<Channel>;
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A pod sandbox; its containers' logs go under `logs` (beside the runtime's socket, so
/// they go with the private runtime's folder).
async fn pod(cri: &mut Cri, logs: &Path, name: &str) -> Result<(String, PodSandboxConfig)> {
    let uid = format!("uid-{name}");
    let dir = logs.join(&uid).display().to_string();
    let config = sandbox_config("bench", name, &uid, &dir);
    let id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    Ok((id, config))
}

async fn container(
    cri: &mut Cri,
    image: &str,
    (sandbox, sandbox_config): &(String, PodSandboxConfig),
    name: &str,
    attempt: u32,
    script: &str,
) -> Result<String> {
    let config = container_config(sandbox_config, name, attempt, image, script, None, &[]);
    Ok(cri
        .create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(cri: &mut Cri, id: &str) -> Result<()> {
    cri.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await?;
    Ok(())
}

async fn wait_exited(cri: &mut Cri, id: &str) -> Result<()> {
    for _ in 0..600 {
        let st = cri
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status;
        if st.is_some_and(|s| s.state == ContainerState::ContainerExited as i32) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("container {id} did not exit within 6 s").into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: cri_load SOCKET IMAGE (pods N M [run|create] | crashloop N | cleanup)";
    let (Some(socket), Some(image), Some(cmd)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(usage.into());
    };
    let num = |i: usize| -> Result<u32> { Ok(args.get(i).ok_or(usage)?.parse::<u32>()?) };
    let mut cri = RuntimeServiceClient::new(containerd_client::connect(socket).await?);
    let logs = Path::new(socket)
        .parent()
        .unwrap_or(Path::new("/tmp"))
        .join("logs");
    match cmd.as_str() {
        "pods" => {
            let (n, m) = (num(4)?, num(5)?);
            let run = args.get(6).is_none_or(|m| m == "run");
            for p in 0..n {
                let sandbox = pod(&mut cri, &logs, &format!("pod-{p}")).await?;
                for c in 0..m {
                    let id = container(
                        &mut cri,
                        image,
                        &sandbox,
                        &format!("c{c}"),
                        0,
                        "trap 'exit 0' TERM; while true; do sleep 1; done",
                    )
                    .await?;
                    if run {
                        start(&mut cri, &id).await?;
                    }
                }
            }
        }
        "crashloop" => {
            let n = num(4)?;
            let sandbox = pod(&mut cri, &logs, "crashloop").await?;
            for attempt in 0..n {
                let id = container(&mut cri, image, &sandbox, "app", attempt, "exit 1").await?;
                start(&mut cri, &id).await?;
                wait_exited(&mut cri, &id).await?;
            }
        }
        "cleanup" => {
            let pods = cri
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await?
                .into_inner()
                .items;
            for p in pods {
                cri.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await?;
                cri.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: p.id,
                })
                .await?;
            }
        }
        _ => return Err(usage.into()),
    }
    Ok(())
}
