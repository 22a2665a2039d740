//! A private Prometheus server for the end-to-end tests (its own data directory and port,
//! stopped with the test process), and the chart's alert rules rendered for it by Helm's SDK.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{
    free_port, get, in_ci, repo_root, require, spawn_watchdog, unique, wait_for, wait_for_result,
};

/// The Python of the chart tests' virtualenv (helm-python-sdk), which `scripts/test` sets up:
/// `LIFECYCLE_CHART_PYTHON`, else `target/chart-venv/bin/python`. Panics in CI without it.
pub fn chart_python() -> Option<PathBuf> {
    let p = std::env::var_os("LIFECYCLE_CHART_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/chart-venv/bin/python"));
    if p.is_file() {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "no chart Python at {} (scripts/test creates it)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: no chart Python at {} (scripts/test creates it)",
        p.display()
    );
    None
}

/// Renders the chart with `values` (a file under the repo) and writes the PrometheusRule's
/// groups as a Prometheus rule file to `out`.
pub fn render_chart_rules(python: &Path, values: &Path, out: &Path) {
    let o = Command::new(python)
        .arg(repo_root().join("tests/chart/render_rules.py"))
        .arg(values)
        .arg(out)
        .output()
        .expect("run render_rules.py");
    assert!(
        o.status.success(),
        "rendering the chart's rules: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A private Prometheus server on 127.0.0.1 with its own data directory, stopped when dropped
/// and, through a watchdog, when the test process goes away.
pub struct Prometheus {
    pub port: u16,
    pub dir: PathBuf,
    watchdog: Child,
}

/// A Prometheus configuration scraping each agent port every second, honouring its labels
/// (as the chart's ServiceMonitor does).
pub fn scrape_config(ports: &[u16]) -> String {
    let targets: Vec<String> = ports.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n- job_name: agent\n  honor_labels: true\n  static_configs:\n  - targets: [{}]\n",
        targets.join(", ")
    )
}

impl Prometheus {
    /// The label sets of every series matching a selector (`/api/v1/series`).
    pub fn series(&self, selector: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
        let q = serde_urlencoded::to_string([("match[]", selector)]).expect("encode");
        self.api(&format!("/api/v1/series?{q}"))
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_object().cloned())
            .collect()
    }

    /// Health of the scrape of every target, as Prometheus saw it (`up` and the last error).
    pub fn targets(&self) -> Vec<(String, String)> {
        self.api("/api/v1/targets")["activeTargets"]
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

    /// Starts Prometheus with `config` (YAML; `rule_files` relative to its directory) and the
    /// given extra files written beside it.
    pub fn start(config: &str, files: &[(&str, &str)]) -> Option<Prometheus> {
        if !require("prometheus") {
            return None;
        }
        let dir = std::env::temp_dir().join(unique("prometheus"));
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("prometheus file");
        }
        let port = free_port();
        let d = dir.display();
        let script = format!(
            r#"cd {d} && prometheus --config.file={d}/prometheus.yml --storage.tsdb.path={d}/data \
 --web.listen-address=127.0.0.1:{port} --log.level=warn >>{d}/prometheus.log 2>&1 &
ppid=$!
echo $ppid > {d}/prometheus.pid
while kill -0 {parent} 2>/dev/null && kill -0 $ppid 2>/dev/null; do sleep 1; done
if kill -0 $ppid 2>/dev/null; then
  kill -TERM $ppid; i=0
  while kill -0 $ppid 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i+1)); done
  kill -KILL $ppid 2>/dev/null
  rm -rf {d}
fi"#,
            parent = std::process::id()
        );
        let watchdog = spawn_watchdog(&script, "prometheus", &dir);
        let p = Prometheus {
            port,
            dir,
            watchdog,
        };
        wait_for(
            &format!("prometheus /-/ready (log: {})", p.log().display()),
            Duration::from_secs(60),
            || (get(p.port, "/-/ready").0 == 200).then_some(()),
        );
        Some(p)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// GET an API path; the parsed `data` of a successful answer.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.port, path);
        assert_eq!(status, 200, "prometheus {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus {path}: {e}: {body}"));
        assert_eq!(v["status"], "success", "prometheus {path}: {body}");
        v["data"].clone()
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let q = serde_urlencoded::to_string([("query", expr)]).expect("encode query");
        let data = self.api(&format!("/api/v1/query?{q}"));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `expr` returns exactly one sample and `check` accepts its labels and value.
    pub fn wait_sample(
        &self,
        expr: &str,
        mut check: impl FnMut(&serde_json::Map<String, serde_json::Value>, f64) -> bool,
    ) -> serde_json::Value {
        let mut last = Vec::new();
        let ok = wait_for_result(Duration::from_secs(60), || {
            last = self.query(expr);
            one_sample_passes(&last, &mut check)
        });
        assert!(ok, "PromQL {expr}: last answer {last:?}");
        last.remove(0)
    }

    /// Waits until Prometheus has scraped every target of `job` at least once after `after`
    /// (Unix seconds): what it answers then includes everything the targets knew at `after`.
    pub fn wait_scraped_after(&self, job: &str, after: f64) {
        let expr = format!(r#"min(timestamp(up{{job="{job}"}}))"#);
        let mut last = Vec::new();
        let ok = wait_for_result(Duration::from_secs(30), || {
            last = self.query(&expr);
            last.first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|t| t > after)
        });
        assert!(ok, "no scrape of {job} after {after}: {last:?}");
    }

    /// `expr` returns exactly one sample now, and `check` accepts its labels and value (after
    /// [`Prometheus::wait_scraped_after`]: no waiting for a value to come right).
    pub fn assert_sample(
        &self,
        expr: &str,
        check: impl FnOnce(&serde_json::Map<String, serde_json::Value>, f64) -> bool,
    ) {
        let got = self.query(expr);
        let ok = one_sample_passes(&got, check);
        assert!(ok, "PromQL {expr}: {got:?}");
    }

    /// Waits for an alert named `name` whose labels include `labels`, in one of `states`.
    pub fn wait_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        states: &[&str],
        timeout: Duration,
    ) -> serde_json::Value {
        let mut seen = Vec::new();
        let mut found = None;
        let ok = wait_for_result(timeout, || {
            seen = self.api("/api/v1/alerts")["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            found = seen
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == name
                        && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
                        && states.iter().any(|s| a["state"] == *s)
                })
                .cloned();
            found.is_some()
        });
        assert!(
            ok,
            "alert {name}{labels:?} in {states:?} within {timeout:?}; alerts seen: {seen:?}"
        );
        found.expect("found")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("prometheus.pid")) {
            let _ = Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.watchdog.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        // Kept for a failing test, whose message names its log.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A query answer is exactly one sample, and `check` accepts its labels and value.
fn one_sample_passes(
    got: &[serde_json::Value],
    check: impl FnOnce(&serde_json::Map<String, serde_json::Value>, f64) -> bool,
) -> bool {
    let [s] = got else { return false };
    let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
    match (s["metric"].as_object(), v) {
        (Some(m), Some(v)) => check(m, v),
        _ => false,
    }
}
