//! The one configuration: flags, environment variables and the YAML file (README
//! "Configuration"), all read into one struct, [`RunArgs`]. Precedence is flag, then env,
//! then file, then default: clap merges the first two, `RunArgs::over` lays them over the
//! file, and [`Config::resolve`] fills the defaults and validates, naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::kube::pods::{Allowlist, Allowlists};
use crate::kube::KubeMode;
use crate::runtime::discovery::RuntimeChoice;
use crate::runtime::ContainerFilter;
use crate::time::{parse_duration, Nanos};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:9977";
pub const DEFAULT_MAX_HISTORY: usize = 10_000;
/// Enough for a node's busy week; beyond it the history is a database's job.
pub const MAX_MAX_HISTORY: usize = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The settings of `run` and `check`, from flags and env (clap) or from the YAML file
/// (serde; its keys are the fields' names, an unknown key is an error). Every field is
/// optional so that an absent flag lets the file or the default speak.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// Container runtime: auto (first reachable of docker, podman, containerd, crio), docker,
    /// podman, containerd or crio (the generic CRI path).
    #[arg(long, env = "LIFECYCLE_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeChoice>,
    /// Runtime API socket: PATH, unix://PATH or tcp://HOST:PORT.
    #[arg(long, env = "LIFECYCLE_SOCKET")]
    pub socket: Option<String>,
    /// Address of the metrics and API server.
    #[arg(long, env = "LIFECYCLE_LISTEN")]
    pub listen: Option<String>,
    /// Node name put on every series (the downward API's spec.nodeName in a cluster).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Directory of the embedded store (default /var/lib/lifecycle-agent as root, else
    /// $XDG_STATE_HOME/lifecycle-agent).
    #[arg(long, env = "LIFECYCLE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Keep everything in memory and write nothing (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
    #[arg(
        long,
        env = "LIFECYCLE_EPHEMERAL",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub ephemeral: Option<bool>,
    /// YAML configuration file; its keys are the flags' names in snake_case.
    #[arg(long, env = "LIFECYCLE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Kubernetes pod metadata: auto (on in a cluster or with a kubeconfig), on or off.
    #[arg(long, env = "LIFECYCLE_KUBE", value_enum)]
    pub kube: Option<KubeMode>,
    /// Pod annotations copied to metric labels as annotation_<key> ('*' = all).
    #[arg(
        long,
        env = "LIFECYCLE_POD_ANNOTATIONS_ALLOWLIST",
        value_delimiter = ','
    )]
    pub pod_annotations_allowlist: Option<Vec<String>>,
    /// Pod labels copied to metric labels as label_<key> ('*' = all).
    #[arg(long, env = "LIFECYCLE_POD_LABELS_ALLOWLIST", value_delimiter = ',')]
    pub pod_labels_allowlist: Option<Vec<String>>,
    /// Track only containers with these labels (KEY or KEY=VALUE, all must match).
    #[arg(long, env = "LIFECYCLE_CONTAINER_FILTER", value_delimiter = ',')]
    pub container_filter: Option<Vec<String>>,
    /// containerd namespaces to follow (default k8s.io, the kubelet's; Docker's is moby).
    #[arg(long, env = "LIFECYCLE_CONTAINERD_NAMESPACES", value_delimiter = ',')]
    pub containerd_namespaces: Option<Vec<String>>,
    /// Events kept in the history.
    #[arg(long, env = "LIFECYCLE_MAX_HISTORY")]
    pub max_history: Option<usize>,
    /// Events older than this are dropped from the history (e.g. 7d, 12h).
    #[arg(long, env = "LIFECYCLE_HISTORY_RETENTION")]
    pub history_retention: Option<String>,
    /// File holding the bearer token that enables DELETE /api/v1/events.
    #[arg(long, env = "LIFECYCLE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "LIFECYCLE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or filter (info, debug, lifecycle_agent=debug,warn).
    #[arg(long, env = "LIFECYCLE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Once listening, write the bound address (e.g. 127.0.0.1:40123) to this file, for
    /// scripts and supervisors that start the agent with `--listen 127.0.0.1:0`.
    #[arg(long, env = "LIFECYCLE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// The settings above that came from an environment variable rather than a flag (key,
    /// variable), so an error names the variable (filled by `cli::parse`).
    #[arg(skip)]
    #[serde(skip)]
    pub from_env: Vec<(&'static str, String)>,
}

/// Lists every setting once, for the layering of flags over the file and for knowing which
/// keys the flags gave.
macro_rules! settings {
    ($m:ident) => {
        $m!(
            runtime,
            socket,
            listen,
            node_name,
            state_dir,
            ephemeral,
            kube,
            pod_annotations_allowlist,
            pod_labels_allowlist,
            container_filter,
            containerd_namespaces,
            max_history,
            history_retention,
            admin_token_file,
            log_format,
            log_level,
            ready_file
        )
    };
}

/// Every setting's key (its field, clap's argument id), in the order of [`RunArgs`].
pub const SETTINGS: &[&str] = {
    macro_rules! keys {
        ($($f:ident),*) => { &[$(stringify!($f)),*] };
    }
    settings!(keys)
};

impl RunArgs {
    /// These settings (flags and env) laid over `file`'s, with the keys the flags gave.
    fn over(self, file: RunArgs) -> (RunArgs, Vec<&'static str>) {
        let mut given = Vec::new();
        macro_rules! note {
            ($($f:ident),*) => {
                $(if self.$f.is_some() { given.push(stringify!($f)); })*
            };
        }
        settings!(note);
        macro_rules! layer {
            ($($f:ident),*) => {
                RunArgs {
                    $($f: self.$f.or(file.$f),)*
                    config: self.config,
                    from_env: self.from_env,
                }
            };
        }
        (settings!(layer), given)
    }
}

/// The resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: RuntimeChoice,
    pub socket: Option<String>,
    pub listen: SocketAddr,
    pub node_name: String,
    /// The node name came from the host name, not from `--node-name`/`NODE_NAME`: in a pod
    /// that is the pod's name, which would select no pods of the node.
    pub node_name_defaulted: bool,
    /// `None` when ephemeral: nothing is written.
    pub state_dir: Option<PathBuf>,
    pub container_filter: ContainerFilter,
    /// containerd namespaces the containerd source follows.
    pub containerd_namespaces: Vec<String>,
    pub kube: KubeMode,
    /// Which pod annotations and labels become metric labels (default none).
    pub pod_metadata: Allowlists,
    pub max_history: usize,
    /// History events older than this are dropped.
    pub history_retention: Option<Nanos>,
    pub admin_token: Option<String>,
    /// The admin token file can be read by its group or by everyone: logged at start (the
    /// logger does not exist yet when the configuration is read).
    pub admin_token_exposed: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Where to write the bound address once listening (README "Configuration").
    pub ready_file: Option<PathBuf>,
}

/// A configuration problem, naming where it is and which key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: key `{key}`: {message}")]
    File {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("flag --{flag} (`{key}`): {message}")]
    Flag {
        flag: String,
        key: &'static str,
        message: String,
    },
    #[error("environment variable {var} (`{key}`): {message}")]
    Env {
        var: String,
        key: &'static str,
        message: String,
    },
}

/// Reads and parses the YAML file, naming the offending key on error.
pub fn load_file(path: &Path) -> Result<RunArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(RunArgs::default());
    }
    let de = serde_norway::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names an unknown key in the message itself; the path then points at its parent.
        let key = match unknown_field(&inner) {
            Some(k) => k,
            None if key == "." => "(top level)".to_string(),
            None => key,
        };
        ConfigError::File {
            path: path.to_path_buf(),
            key,
            message: inner,
        }
    })
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

impl Config {
    /// Merges flags/env over the file over defaults, then validates.
    pub fn resolve(args: RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => RunArgs::default(),
        };
        let path = args.config.clone().unwrap_or_default();
        let (s, given) = args.over(file);
        let from_env = s.from_env.clone();
        // Blames the environment variable or the flag when one was given, else the file's key.
        let err = |key: &'static str, message: String| {
            if given.contains(&key) {
                match from_env.iter().find(|(k, _)| *k == key) {
                    Some((_, var)) => ConfigError::Env {
                        var: var.clone(),
                        key,
                        message,
                    },
                    None => ConfigError::Flag {
                        flag: key.replace('_', "-"),
                        key,
                        message,
                    },
                }
            } else {
                ConfigError::File {
                    path: path.clone(),
                    key: key.to_string(),
                    message,
                }
            }
        };

        let listen_s = s.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = listen_s.parse().map_err(|e| {
            err(
                "listen",
                format!("{listen_s:?} is not an address like 0.0.0.0:9977 ({e})"),
            )
        })?;

        let max_history = s.max_history.unwrap_or(DEFAULT_MAX_HISTORY);
        if max_history == 0 || max_history > MAX_MAX_HISTORY {
            return Err(err(
                "max_history",
                format!("{max_history} is out of range 1..={MAX_MAX_HISTORY}"),
            ));
        }

        let history_retention = s
            .history_retention
            .map(|r| parse_duration(&r).map_err(|e| err("history_retention", e.to_string())))
            .transpose()?;

        let container_filter = ContainerFilter::parse(&s.container_filter.unwrap_or_default())
            .map_err(|m| err("container_filter", m))?;

        let containerd_namespaces = parse_namespaces(
            s.containerd_namespaces
                .unwrap_or_else(|| vec![crate::runtime::containerd::CRI_NAMESPACE.to_string()]),
        )
        .map_err(|m| err("containerd_namespaces", m))?;

        let allowlist = |items: Option<Vec<String>>, key: &'static str| {
            Allowlist::parse(&items.unwrap_or_default()).map_err(|m| err(key, m))
        };
        let pod_metadata = Allowlists {
            annotations: allowlist(s.pod_annotations_allowlist, "pod_annotations_allowlist")?,
            labels: allowlist(s.pod_labels_allowlist, "pod_labels_allowlist")?,
        };

        let token_file = s.admin_token_file;
        let admin_token = token_file
            .as_deref()
            .map(|p| read_token(p).map_err(|m| err("admin_token_file", m)))
            .transpose()?;
        let admin_token_exposed = token_file.filter(|p| readable_by_others(p));

        let node_name_defaulted = s.node_name.is_none();
        let node_name = s.node_name.unwrap_or_else(default_node_name);
        if node_name.trim().is_empty() {
            return Err(err("node_name", "must not be empty".into()));
        }

        // Checked here, not when logging starts, so the error names where the value came from.
        let log_level = s.log_level.unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| {
            err(
                "log_level",
                format!("{log_level:?} is not a level or filter (info, debug, lifecycle_agent=debug): {e}"),
            )
        })?;

        let ephemeral = s.ephemeral.unwrap_or(false);
        let state_dir = match s.state_dir {
            _ if ephemeral => None,
            Some(d) if d.as_os_str().is_empty() => {
                return Err(err(
                    "state_dir",
                    "must not be empty (use ephemeral to write nothing)".into(),
                ))
            }
            Some(d) => Some(d),
            None => Some(default_state_dir()),
        };

        Ok(Config {
            runtime: s.runtime.unwrap_or_default(),
            state_dir,
            socket: s.socket.filter(|s| !s.trim().is_empty()),
            listen,
            node_name,
            node_name_defaulted,
            container_filter,
            containerd_namespaces,
            kube: s.kube.unwrap_or_default(),
            pod_metadata,
            max_history,
            history_retention,
            admin_token,
            admin_token_exposed,
            log_format: s.log_format.unwrap_or_default(),
            log_level,
            ready_file: s.ready_file.filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

/// containerd namespace names: letters, digits, `.`, `_` and `-`, starting with a letter or
/// digit (containerd's own rule), at least one, no repeats.
fn parse_namespaces(items: Vec<String>) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let ns = item.trim().to_string();
        let valid = ns.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && ns.len() <= 76
            && ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(format!("{ns:?} is not a containerd namespace name"));
        }
        if !out.contains(&ns) {
            out.push(ns);
        }
    }
    if out.is_empty() {
        return Err("at least one namespace is needed (the kubelet's is k8s.io)".into());
    }
    Ok(out)
}

/// Root keeps state under /var/lib (the chart's hostPath); a user under XDG_STATE_HOME.
fn default_state_dir() -> PathBuf {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/lifecycle-agent");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lifecycle-agent")
}

/// Whether the file's group or everyone may read it (a secret should be the owner's only;
/// a Kubernetes Secret volume's default mode 0644 is one such).
fn readable_by_others(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o044 != 0)
}

fn read_token(p: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let t = t.trim().to_string();
    if t.len() < 8 {
        return Err(format!(
            "the token in {} is shorter than 8 characters",
            p.display()
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod test {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn with_file(f: &tempfile::NamedTempFile) -> RunArgs {
        RunArgs {
            config: Some(f.path().to_path_buf()),
            ..Default::default()
        }
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let f = file("max_history: 50\nlisten: 127.0.0.1:1234\ncontainer_filter: [app=web]\nhistory_retention: 7d\n");
        let c = Config::resolve(with_file(&f)).unwrap();
        assert_eq!(c.max_history, 50);
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.container_filter.labels, vec!["app=web".to_string()]);
        assert_eq!(
            c.containerd_namespaces,
            vec!["k8s.io".to_string()],
            "the default"
        );
        assert_eq!(c.history_retention, Some(Nanos::from_secs(7 * 86_400)));
        let c = Config::resolve(RunArgs {
            max_history: Some(9),
            ..with_file(&f)
        })
        .unwrap();
        assert_eq!(c.max_history, 9);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let f = file("max_histroy: 5\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("max_histroy"), "{e}");
        let f = file("max_history: lots\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("max_history"), "{e}");
        let f = file("history_retention: soon\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("history_retention"), "{e}");
        let f = file("containerd_namespaces: [k8s.io, moby, k8s.io]\n");
        let c = Config::resolve(with_file(&f)).unwrap();
        assert_eq!(
            c.containerd_namespaces,
            vec!["k8s.io".to_string(), "moby".to_string()]
        );
        let f = file("runtime: rkt\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("runtime"), "{e}");
        let f = file("containerd_namespaces: [\"k8s io\"]\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("containerd_namespaces"), "{e}");
        let e = Config::resolve(RunArgs {
            listen: Some("nowhere".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn ephemeral_takes_the_usual_spellings_of_a_boolean() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        use clap::Parser as _;
        for (arg, want) in [
            ("--ephemeral", Some(true)),
            ("--ephemeral=1", Some(true)),
            ("--ephemeral=yes", Some(true)),
            ("--ephemeral=off", Some(false)),
            ("--ephemeral=0", Some(false)),
        ] {
            let cli = Cli::try_parse_from(["agent", arg]).expect(arg);
            assert_eq!(cli.run.ephemeral, want, "{arg}");
        }
        assert!(Cli::try_parse_from(["agent", "--ephemeral=maybe"]).is_err());
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = Config::resolve(RunArgs {
            config: Some("/nonexistent/agent.yaml".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/agent.yaml"), "{e}");
    }

    #[test]
    fn kube_mode_and_allowlists_from_file_and_flags() {
        let c = Config::resolve(RunArgs::default()).unwrap();
        assert_eq!(c.kube, KubeMode::Auto);
        assert!(c.pod_metadata.is_none());
        let f = file("kube: on\npod_annotations_allowlist: [team, example.com/owner]\npod_labels_allowlist: ['*']\n");
        let c = Config::resolve(with_file(&f)).unwrap();
        assert_eq!(c.kube, KubeMode::On);
        assert!(c.pod_metadata.annotations.allows("example.com/owner"));
        assert!(!c.pod_metadata.annotations.allows("secret"));
        assert_eq!(c.pod_metadata.labels, Allowlist::All);
        let c = Config::resolve(RunArgs {
            kube: Some(KubeMode::Off),
            pod_annotations_allowlist: Some(vec!["team".into()]),
            ..with_file(&f)
        })
        .unwrap();
        assert_eq!(c.kube, KubeMode::Off);
        assert!(!c.pod_metadata.annotations.allows("example.com/owner"));
    }

    #[test]
    fn bad_kube_values_name_the_key() {
        let f = file("kube: maybe\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(e.contains("`kube`"), "{e}");
        let f = file("pod_annotations_allowlist: [team=shop]\n");
        let e = Config::resolve(with_file(&f)).unwrap_err().to_string();
        assert!(
            e.contains("pod_annotations_allowlist") && e.contains("team=shop"),
            "{e}"
        );
        let e = Config::resolve(RunArgs {
            pod_labels_allowlist: Some(vec!["*".into(), "app".into()]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("pod_labels_allowlist"), "{e}");
    }

    #[test]
    fn one_struct_reads_every_key_from_the_file_but_the_file_itself() {
        let f = file(
            "runtime: podman\nsocket: /run/p.sock\nlisten: 127.0.0.1:1\nnode_name: n\nstate_dir: /tmp/x\nephemeral: true\nkube: off\npod_annotations_allowlist: [a]\npod_labels_allowlist: [b]\ncontainer_filter: [c]\nmax_history: 3\nhistory_retention: 1h\nlog_format: json\nlog_level: debug\n",
        );
        let c = Config::resolve(with_file(&f)).unwrap();
        assert_eq!(c.runtime, RuntimeChoice::Podman);
        assert_eq!(c.socket.as_deref(), Some("/run/p.sock"));
        assert_eq!((c.node_name.as_str(), c.max_history), ("n", 3));
        assert!(c.state_dir.is_none(), "ephemeral wins over state_dir");
        assert_eq!(c.log_format, LogFormat::Json);
        // The settings the flags gave are blamed on the flags, the rest on the file.
        let (merged, given) = RunArgs {
            max_history: Some(0),
            ..Default::default()
        }
        .over(load_file(f.path()).unwrap());
        assert_eq!(merged.max_history, Some(0));
        assert_eq!(merged.log_level.as_deref(), Some("debug"));
        assert_eq!(given, ["max_history"]);
        let e = Config::resolve(with_file(&file("config: other.yaml\n")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `config`, expected one of `runtime`, `socket`, `listen`, `node_name`, `state_dir`, `ephemeral`, `kube`,"),
            "{e}"
        );
    }

    #[test]
    fn short_tokens_are_refused() {
        let f = file("abc\n");
        let e = Config::resolve(RunArgs {
            admin_token_file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("admin_token_file"));
    }

    #[test]
    fn a_token_file_others_can_read_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let f = file("s3cret-token\n");
        let resolve = || {
            Config::resolve(RunArgs {
                admin_token_file: Some(f.path().into()),
                ephemeral: Some(true),
                ..Default::default()
            })
            .unwrap()
        };
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            resolve().admin_token_exposed.as_deref(),
            Some(f.path()),
            "world-readable"
        );
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(resolve().admin_token_exposed.is_some(), "group-readable");
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = resolve();
        assert_eq!(c.admin_token_exposed, None);
        assert_eq!(c.admin_token.as_deref(), Some("s3cret-token"));
    }
}
