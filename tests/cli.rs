//! The command line's contract: configuration errors exit 2 naming the key, and a missing
//! runtime gets a message a user can act on.

mod common;

use std::io::Write;
use std::process::{Command, Output};
use std::time::Duration;

fn agent(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::agent_bin());
    cmd.args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("CONTAINER_HOST")
        .env("XDG_RUNTIME_DIR", "/nonexistent-xdg");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run the agent binary")
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let f = config_file("listen: 127.0.0.1:0\nmax_histroy: 10\n");
    let out = agent(&["run", "--config", f.path().to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_histroy") && err.contains(f.path().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn bad_config_value_exits_2_naming_the_key() {
    for (text, key) in [
        ("max_history: -5\n", "max_history"),
        ("history_retention: forever\n", "history_retention"),
        ("runtime: lxc\n", "runtime"),
        ("listen: [1, 2]\n", "listen"),
    ] {
        let f = config_file(text);
        let out = agent(&["check", "--config", f.path().to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn env_and_flags_are_validated_too() {
    let out = agent(&["run", "--max-history", "0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_history"));
    let out = agent(&["run"], &[("LIFECYCLE_HISTORY_RETENTION", "a while")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("history_retention"));
    let out = agent(&["run", "--runtime", "lxc"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects unknown values with 2"
    );
}

#[test]
fn check_against_a_missing_socket_fails_with_guidance() {
    let out = agent(
        &[
            "check",
            "--runtime",
            "docker",
            "--socket",
            "/nonexistent/docker.sock",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("/nonexistent/docker.sock") && text.contains("--socket"),
        "{text}"
    );
}

#[test]
fn run_without_a_runtime_says_what_it_tried_and_how_to_point_it() {
    let port = common::free_port();
    let log = std::env::temp_dir().join(common::unique("noruntime"));
    let f = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(common::agent_bin())
        .args([
            "run",
            "--ephemeral",
            "--runtime",
            "docker",
            "--socket",
            "/nonexistent/docker.sock",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(f)
        .spawn()
        .unwrap();
    let body = common::wait_for("/readyz to explain", Duration::from_secs(20), || {
        let (status, body) = common::http(port, "GET", "/readyz", &[]).ok()?;
        (status == 503 && body.contains("no container runtime reachable")).then_some(body)
    });
    assert!(body.contains("--socket"), "{body}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("/nonexistent/docker.sock") && text.contains("Point the agent at a socket"),
        "{text}"
    );
    let _ = std::fs::remove_file(log);
}

#[test]
fn events_cli_rejects_unknown_types_before_asking() {
    let out = agent(
        &[
            "events",
            "--type",
            "exploded",
            "--url",
            "http://127.0.0.1:9",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exploded"));
}

/// Runs `run` and returns its stderr, asserting the configuration exit status 2.
fn config_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["run", "--ephemeral"];
    all.extend_from_slice(args);
    let out = agent(&all, env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
    err
}

#[test]
fn every_configuration_error_names_where_the_value_came_from() {
    const BAD_LEVEL: &str = "lifecycle_agent=verbose";
    // The file: its path and the key.
    let f = config_file(&format!("log_level: {BAD_LEVEL}\n"));
    let path = f.path().to_str().unwrap();
    let err = config_error(&["--config", path], &[]);
    assert!(
        err.contains(&format!("config file {path}: key `log_level`")),
        "{err}"
    );
    // An environment variable: the variable, for values the agent checks ...
    let err = config_error(&[], &[("LIFECYCLE_LOG_LEVEL", BAD_LEVEL)]);
    assert!(
        err.contains("environment variable LIFECYCLE_LOG_LEVEL"),
        "{err}"
    );
    let err = config_error(&[], &[("LIFECYCLE_LISTEN", "nowhere")]);
    assert!(
        err.contains("environment variable LIFECYCLE_LISTEN"),
        "{err}"
    );
    // ... and for values the command line parser refuses.
    let err = config_error(&[], &[("LIFECYCLE_MAX_HISTORY", "lots")]);
    assert!(
        err.contains("environment variable LIFECYCLE_MAX_HISTORY") && err.contains("lots"),
        "{err}"
    );
    let err = config_error(&[], &[("LIFECYCLE_RUNTIME", "lxc")]);
    assert!(
        err.contains("environment variable LIFECYCLE_RUNTIME"),
        "{err}"
    );
    // A flag: the flag, even when its variable is set too (the flag wins).
    let err = config_error(
        &["--log-level", BAD_LEVEL],
        &[("LIFECYCLE_LOG_LEVEL", "info")],
    );
    assert!(err.contains("flag --log-level"), "{err}");
    let err = config_error(&["--listen", "nowhere"], &[]);
    assert!(err.contains("flag --listen"), "{err}");
    let err = config_error(
        &["--max-history", "lots"],
        &[("LIFECYCLE_MAX_HISTORY", "5")],
    );
    assert!(
        err.contains("--max-history") && !err.contains("LIFECYCLE_MAX_HISTORY"),
        "{err}"
    );
}
