//! A synthetic Docker Engine API on a unix socket, for benchmarks: it answers the calls the
//! agent makes (`/_ping`, `/version`, container list and inspect, `/events`) for N synthetic
//! pod containers, and streams E lifecycle events to each live event subscriber. The agent
//! runs against it unchanged, through its Docker source.
//!
//! ```sh
//! cargo run --release --example synthetic_docker -- --socket /tmp/synth.sock --containers 10000 --events 100000
//! ```

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser, Clone)]
struct Args {
    #[arg(long)]
    socket: std::path::PathBuf,
    #[arg(long, default_value_t = 1000)]
    containers: usize,
    /// Lifecycle events streamed to each live subscriber.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per second (0: as fast as the subscriber reads).
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

const T0: i64 = 1_700_000_000_000_000_000;

fn id(i: usize) -> String {
    format!("{i:064x}")
}

fn labels(i: usize) -> serde_json::Value {
    json!({
        "io.kubernetes.pod.namespace": format!("team-{}", i % 50),
        "io.kubernetes.pod.name": format!("shop-{i}-7d9f8b6c5d-x2x4z"),
        "io.kubernetes.pod.uid": format!("0b6f4c2e-1d3a-4b5c-9e7f-{i:012}"),
        "io.kubernetes.container.name": "web",
        "annotation.io.kubernetes.container.restartCount": "0",
    })
}

fn name(i: usize) -> String {
    format!(
        "k8s_web_shop-{i}-7d9f8b6c5d-x2x4z_team-{}_0b6f4c2e_0",
        i % 50
    )
}

fn inspect(i: usize) -> serde_json::Value {
    json!({
        "Id": id(i),
        "Name": format!("/{}", name(i)),
        "Created": "2026-11-01T00:00:00.000000000Z",
        "Image": "sha256:5f7d0c3e",
        "RestartCount": 0,
        "State": {
            "Status": "running", "Running": true, "Paused": false, "Restarting": false,
            "OOMKilled": false, "Dead": false, "Pid": 1000 + i, "ExitCode": 0,
            "StartedAt": "2026-11-01T00:00:01.000000000Z", "FinishedAt": "0001-01-01T00:00:00Z"
        },
        "Config": { "Image": "registry.example.com/shop/web:1.2.3", "Labels": labels(i) }
    })
}

/// The k-th streamed event: containers cycle die, start, pause, unpause.
fn event(k: usize, n: usize) -> serde_json::Value {
    let i = k % n;
    let action = ["die", "start", "pause", "unpause"][(k / n) % 4];
    let mut attrs = labels(i);
    attrs["name"] = json!(name(i));
    attrs["image"] = json!("registry.example.com/shop/web:1.2.3");
    if action == "die" {
        attrs["exitCode"] = json!("1");
    }
    let t = T0 + 3_600_000_000_000 + k as i64 * 1_000;
    json!({
        "Type": "container", "Action": action, "scope": "local",
        "Actor": { "ID": id(i), "Attributes": attrs },
        "time": t / 1_000_000_000, "timeNano": t
    })
}

async fn handle(State(a): State<Arc<Args>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path.ends_with("/_ping") {
        return "OK".into_response();
    }
    if path.ends_with("/version") {
        return axum::Json(json!({"Version": "synthetic-20.10", "ApiVersion": "1.41", "MinAPIVersion": "1.12", "Components": [{"Name": "Engine", "Version": "synthetic"}]})).into_response();
    }
    if path.ends_with("/containers/json") {
        let list: Vec<_> = (0..a.containers)
            .map(|i| json!({"Id": id(i), "Names": [format!("/{}", name(i))], "Image": "registry.example.com/shop/web:1.2.3", "State": "running", "Labels": labels(i)}))
            .collect();
        return axum::Json(list).into_response();
    }
    if let Some(rest) = path.strip_suffix("/json") {
        if let Some(cid) = rest.rsplit('/').next() {
            if let Ok(i) = usize::from_str_radix(cid, 16) {
                if i < a.containers {
                    return axum::Json(inspect(i)).into_response();
                }
            }
        }
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "no such container"})),
        )
            .into_response();
    }
    if path.ends_with("/events") {
        // Replays (bounded by `until`) have nothing: the synthetic daemon has no past.
        if query.contains("until=") {
            return Body::empty().into_response();
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(1024);
        let (n, total, rate) = (a.containers, a.events, a.rate);
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            for k in 0..total {
                if let Some(ns) = (k as u64 * 1_000_000_000).checked_div(rate) {
                    let due = std::time::Duration::from_nanos(ns);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                if tx.send(Ok(format!("{}\n", event(k, n)))).await.is_err() {
                    return;
                }
            }
            eprintln!(
                "synthetic_docker: streamed {total} events in {:?}",
                start.elapsed()
            );
            // Keep the stream open, idle, like a quiet daemon.
            tx.closed().await;
        });
        let stream = tokio_stream_from(rx);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default();
    }
    (
        StatusCode::NOT_FOUND,
        format!("synthetic_docker: {path} is not implemented"),
    )
        .into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<String, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let _ = std::fs::remove_file(&a.socket);
    let listener = tokio::net::UnixListener::bind(&a.socket)?;
    eprintln!(
        "synthetic_docker: {} containers, {} events on {}",
        a.containers,
        a.events,
        a.socket.display()
    );
    let app = Router::new().fallback(handle).with_state(Arc::new(a));
    axum::serve(listener, app).await
}
