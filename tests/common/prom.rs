//! A private Prometheus server scraping agents every second: its own config, data dir and
//! loopback port, stopped when dropped and, by a shell watchdog, when the test process goes
//! away. Self-contained on purpose (other harness helpers may grow beside it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, http, require, unique, wait_for};

pub struct PromServer {
    pub port: u16,
    dir: PathBuf,
    watchdog: Child,
}

impl PromServer {
    /// Starts Prometheus scraping `127.0.0.1:<port>/metrics` of each target every second;
    /// `None` (skipped loudly, a failure in CI) when it is not installed.
    pub fn start(targets: &[u16]) -> Option<PromServer> {
        if !require("prometheus") {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("prom"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: agent\n  honor_labels: true\n  static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        let port = free_port();
        let d = dir.display();
        let script = format!(
            r#"prometheus --config.file={d}/prometheus.yml --storage.tsdb.path={d}/data \
 --web.listen-address=127.0.0.1:{port} --log.level=warn >>{d}/prometheus.log 2>&1 &
ppid=$!
echo $ppid > {d}/pid
while kill -0 {parent} 2>/dev/null && kill -0 $ppid 2>/dev/null; do sleep 1; done
kill -TERM $ppid 2>/dev/null
i=0; while kill -0 $ppid 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
kill -KILL $ppid 2>/dev/null
rm -rf {d}"#,
            parent = std::process::id()
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the prometheus watchdog");
        let log = format!("{d}/prometheus.log");
        let server = PromServer {
            port,
            dir,
            watchdog,
        };
        wait_for(
            &format!("prometheus to be ready (log: {log})"),
            Duration::from_secs(60),
            || (http(port, "GET", "/-/ready", &[]).ok()?.0 == 200).then_some(()),
        );
        Some(server)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = http(self.port, "GET", path, &[]).expect("query prometheus");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The label sets of every series matching a selector (`/api/v1/series`).
    pub fn series(&self, selector: &str) -> Vec<serde_json::Map<String, Value>> {
        let q = serde_urlencoded::to_string([("match[]", selector)]).expect("encode");
        self.get(&format!("/api/v1/series?{q}"))["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect()
    }

    /// Health of the scrape of every target, as Prometheus saw it (`up` and the last error).
    pub fn targets(&self) -> Vec<(String, String)> {
        self.get("/api/v1/targets")["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        // The watchdog ends within a second of Prometheus and removes its files.
        let _ = self.watchdog.wait();
    }
}
