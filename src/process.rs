//! The agent's own resource use, as the `process_*` metrics every Prometheus client library
//! exports: an agent on every node has to show what it costs where it runs, without cAdvisor.
//!
//! Read from `/proc/self` at scrape time (three small files and one directory listing). Units
//! follow the conventions of client_golang's process collector; CPU times in `/proc` are in
//! USER_HZ, which Linux fixes at 100 for user space whatever the kernel's own tick.

use std::path::Path;

const USER_HZ: f64 = 100.0;

/// One reading of the process's resource use. A field is `None` when its file could not be
/// read or parsed (another OS, a restricted `/proc`): that family is then left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        Self::read_from(Path::new("/proc"))
    }

    /// Reads `proc/self/*` and `proc/stat` under `proc` (a directory laid out like `/proc`).
    pub fn read_from(proc: &Path) -> ProcessStats {
        let me = proc.join("self");
        let stat = std::fs::read_to_string(me.join("stat")).ok();
        let fields = stat.as_deref().and_then(stat_fields);
        let field = |i: usize| fields.as_ref().and_then(|f| f.get(i)?.parse::<u64>().ok());
        let boot_time = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| boot_time(&s));
        let status = std::fs::read_to_string(me.join("status")).ok();
        let limits = std::fs::read_to_string(me.join("limits")).ok();
        ProcessStats {
            // Fields after the command, counted from `state` (field 3 of proc(5)) as 0.
            cpu_seconds: field(11)
                .zip(field(12))
                .map(|(u, s)| (u + s) as f64 / USER_HZ),
            virtual_memory_bytes: field(20),
            start_time_seconds: field(19)
                .zip(boot_time)
                .map(|(ticks, boot)| boot as f64 + ticks as f64 / USER_HZ),
            threads: field(17),
            resident_memory_bytes: status
                .as_deref()
                .and_then(|s| status_kib(s, "VmRSS:"))
                .map(|k| k * 1024),
            open_fds: std::fs::read_dir(me.join("fd"))
                .ok()
                .map(|d| d.count() as u64),
            max_fds: limits.as_deref().and_then(max_open_files),
        }
    }
}

/// The fields of `/proc/self/stat` after `(comm)`, which may itself hold spaces and parentheses.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// `btime` of `/proc/stat`: when the machine booted, in Unix seconds.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
}

/// A `Key:   N kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits` (`unlimited` is left out).
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn this_process_reads_plausibly() {
        let p = ProcessStats::read();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let started = p.start_time_seconds.expect("start time");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        assert!(p.resident_memory_bytes.expect("rss") > 1024 * 1024);
        assert!(p.virtual_memory_bytes.expect("vsz") >= p.resident_memory_bytes.unwrap_or(0));
        let open = p.open_fds.expect("open fds");
        assert!(open >= 3, "stdin, stdout, stderr at least: {open}");
        assert!(p.max_fds.expect("max fds") >= open);
        assert!(p.cpu_seconds.expect("cpu") >= 0.0);
        assert!(p.threads.expect("threads") >= 1);
    }

    #[test]
    fn a_command_with_spaces_and_parentheses_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = dir.path().join("self");
        std::fs::create_dir_all(me.join("fd")).expect("fd dir");
        for n in ["0", "1"] {
            std::fs::write(me.join("fd").join(n), "").expect("fd");
        }
        // pid (comm) state ppid ... : utime 150, stime 50, threads 3, starttime 1000, vsize.
        let stat =
            "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 1000 123456789 300";
        std::fs::write(me.join("stat"), stat).expect("stat");
        std::fs::write(dir.path().join("stat"), "cpu  1 2 3\nbtime 1700000000\n").expect("stat");
        std::fs::write(me.join("status"), "Name:\tx\nVmRSS:\t  2048 kB\n").expect("status");
        std::fs::write(
            me.join("limits"),
            "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n",
        )
        .expect("limits");
        let p = ProcessStats::read_from(dir.path());
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: Some(2.0),
                resident_memory_bytes: Some(2048 * 1024),
                virtual_memory_bytes: Some(123_456_789),
                start_time_seconds: Some(1_700_000_010.0),
                open_fds: Some(2),
                max_fds: Some(1024),
                threads: Some(3),
            }
        );
        assert_eq!(
            ProcessStats::read_from(&dir.path().join("missing")),
            ProcessStats::default()
        );
    }
}
