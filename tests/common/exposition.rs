//! Reading the Prometheus text exposition the agent serves: samples by name and labels
//! (label values unescaped as the format says), and promtool's lint of a whole scrape.

use std::io::Write;
use std::process::{Command, Stdio};

use super::require;

/// Finds the value of the first sample of `name` whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name)
        .into_iter()
        .find(|(ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|(_, v)| v)
}

/// Every sample of `name`: its labels (unescaped) and value.
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let (ls, end) = parse_labels(r);
            (ls, r[end..].trim())
        } else if rest.starts_with(' ') {
            (Vec::new(), rest.trim())
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// Parses `k="v",...}` with the exposition format's escapes; returns the labels and the
/// index just past the closing brace.
fn parse_labels(s: &str) -> (Vec<(String, String)>, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() && b[i] != b'}' {
        let k0 = i;
        while b[i] != b'=' {
            i += 1;
        }
        let key = s[k0..i].to_string();
        i += 2; // ="
        let mut val = Vec::new();
        while b[i] != b'"' {
            if b[i] == b'\\' {
                i += 1;
                val.push(match b[i] {
                    b'n' => b'\n',
                    c => c,
                });
            } else {
                val.push(b[i]);
            }
            i += 1;
        }
        i += 1;
        if i < b.len() && b[i] == b',' {
            i += 1;
        }
        out.push((key, String::from_utf8_lossy(&val).into_owned()));
    }
    (out, i + 1)
}

/// Lints an exposition with promtool (installed by the test command; required in CI).
pub fn promtool_check(text: &str) {
    if !require("promtool") {
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
