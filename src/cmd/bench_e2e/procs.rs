//! The `teddyflow run` processes under test: started from this very binary (so the bench
//! measures the code it was built with), watched until ready, measured from /proc, and
//! killed when dropped, on success and on every error path alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::collect::Collector;

/// The line every worker logs once it has its partitions and starts reading.
const READY_LINE: &str = "worker reading partitions";

pub struct ProcSpec {
    pub brokers: String,
    pub workers: usize,
    pub processes: usize,
    pub config: Option<PathBuf>,
    /// `key=value` overrides, in order (later ones win).
    pub sets: Vec<String>,
    pub log_dir: PathBuf,
    /// Per process, the CPUs it is pinned to (`run --cpu-list`); empty = not pinned.
    pub cpu_lists: Vec<String>,
}

struct Proc {
    child: Child,
    log: PathBuf,
    cpu_at_start: f64,
}

pub struct Processors {
    procs: Vec<Proc>,
}

/// What one processor process cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcUsage {
    pub process: usize,
    pub pid: u32,
    /// utime + stime over the whole life of the process (model loading included).
    pub cpu_s: f64,
    /// utime + stime from the clock's start to the last response.
    pub cpu_s_measured: f64,
    /// VmHWM: peak resident set size.
    pub peak_rss_bytes: u64,
    pub log: String,
}

impl Processors {
    pub fn start(spec: &ProcSpec) -> anyhow::Result<Processors> {
        std::fs::create_dir_all(&spec.log_dir)
            .with_context(|| format!("creating {}", spec.log_dir.display()))?;
        let exe = std::env::current_exe().context("locating the teddyflow binary")?;
        let hostfile = cluster_hostfile(spec)?;
        let mut procs = Processors { procs: Vec::new() };
        for index in 0..spec.processes {
            // Pushed one by one: if a later spawn fails, Drop still kills the earlier ones.
            procs
                .procs
                .push(spawn(&exe, spec, index, hostfile.as_deref())?);
        }
        Ok(procs)
    }

    /// Wait until every process is ready: all its workers logged that they read their
    /// partitions, or it wrote a metrics snapshot. A process that exits is an error.
    pub fn wait_ready(
        &mut self,
        collector: &mut Collector,
        workers: usize,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            collector.poll_for(Duration::from_millis(200));
            self.check_alive()?;
            anyhow::ensure!(!stop.load(Ordering::Acquire), "stopped");
            let ready =
                self.procs.iter().enumerate().all(|(i, p)| {
                    ready_workers(&p.log) >= workers || collector.has_metrics_from(i)
                });
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "processors not ready after {} s (models still loading?); logs: {}",
                timeout.as_secs(),
                self.log_list()
            );
        }
    }

    /// An error naming the log of any processor that has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (i, p) in self.procs.iter_mut().enumerate() {
            if let Some(status) = p.child.try_wait()? {
                anyhow::bail!(
                    "processor {i} exited ({status}); its log {}:\n{}",
                    p.log.display(),
                    tail(&p.log, 15)
                );
            }
        }
        Ok(())
    }

    /// Start of the measured window: remember each process's CPU time so far.
    pub fn mark(&mut self) {
        for p in &mut self.procs {
            p.cpu_at_start = cpu_seconds(p.child.id()).unwrap_or(0.0);
        }
    }

    pub fn usage(&self) -> Vec<ProcUsage> {
        self.procs
            .iter()
            .enumerate()
            .map(|(process, p)| {
                let pid = p.child.id();
                let cpu_s = cpu_seconds(pid).unwrap_or(0.0);
                ProcUsage {
                    process,
                    pid,
                    cpu_s,
                    cpu_s_measured: cpu_s - p.cpu_at_start,
                    peak_rss_bytes: peak_rss(pid).unwrap_or(0),
                    log: p.log.display().to_string(),
                }
            })
            .collect()
    }

    pub fn log_list(&self) -> String {
        let logs: Vec<String> = self
            .procs
            .iter()
            .map(|p| p.log.display().to_string())
            .collect();
        logs.join(", ")
    }
}

impl Drop for Processors {
    fn drop(&mut self) {
        // SIGKILL: the bench's topics are throwaway, so there is nothing to drain.
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn spawn(
    exe: &Path,
    spec: &ProcSpec,
    index: usize,
    hostfile: Option<&Path>,
) -> anyhow::Result<Proc> {
    let log = spec.log_dir.join(format!("processor-{index}.log"));
    let file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .args(["--brokers", &spec.brokers])
        .args(["--workers", &spec.workers.to_string()]);
    if let Some(config) = &spec.config {
        cmd.arg("--config").arg(config);
    }
    // Several processes on one host: each serves /metrics on a port of its own, unless the
    // bench's --set says otherwise (later sets win).
    cmd.args(["--set", "engine.http_addr=\"127.0.0.1:0\""]);
    for set in &spec.sets {
        cmd.args(["--set", set]);
    }
    if let Some(cpus) = spec.cpu_lists.get(index) {
        cmd.args(["--cpu-list", cpus]);
    }
    if let Some(hostfile) = hostfile {
        cmd.args(["-n", &spec.processes.to_string(), "-p", &index.to_string()])
            .arg("-h")
            .arg(hostfile);
    }
    // Info level at most: the processor never logs transcripts there.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let child = cmd
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {} run", exe.display()))?;
    Ok(Proc {
        child,
        log,
        cpu_at_start: 0.0,
    })
}

/// Several processes form one timely cluster on loopback ports.
fn cluster_hostfile(spec: &ProcSpec) -> anyhow::Result<Option<PathBuf>> {
    if spec.processes <= 1 {
        return Ok(None);
    }
    let mut hosts = String::new();
    for _ in 0..spec.processes {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        hosts.push_str(&format!("127.0.0.1:{port}\n"));
    }
    let path = spec.log_dir.join("hosts");
    std::fs::write(&path, hosts)?;
    Ok(Some(path))
}

fn ready_workers(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|text| text.matches(READY_LINE).count())
        .unwrap_or(0)
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// utime + stime of `pid` in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks() as f64)
}

/// Fields 14 and 15 (utime, stime), counted after the `(comm)` field, which may hold
/// spaces and parentheses of its own.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every common Linux).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// VmHWM of `pid` in bytes, from /proc/<pid>/status.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_comm_with_spaces() {
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn vm_hwm_in_bytes() {
        let status = "Name:\tteddyflow\nVmPeak:\t  900 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(peak_rss(pid).unwrap() > 0);
    }
}
