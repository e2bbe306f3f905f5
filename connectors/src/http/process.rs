//! The usual `process_*` figures, read from /proc at each scrape (Linux; absent elsewhere).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What /proc says about this process now.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse::<f64>()
            .ok()?;
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut s = parse_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, btime)?;
        s.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        s.max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        Some(s)
    }
}

/// Fields of /proc/self/stat after the command name (which may hold spaces and parens).
fn parse_stat(stat: &str, ticks: f64, page: u64, btime: f64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // proc(5) numbers fields from 1 (pid); `rest` starts at field 3 (state).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        threads: field(20)?,
        start_time_seconds: btime + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds: 0,
        max_fds: None,
    })
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, bytes",
                s.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, bytes",
                s.virtual_bytes as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time since the Unix epoch, seconds",
                s.start_time_seconds,
            ),
            ("process_threads", "OS threads", s.threads as f64),
            (
                "process_open_fds",
                "Open file descriptors",
                s.open_fds as f64,
            ),
        ];
        let max = s.max_fds.map(|m| {
            (
                "process_max_fds",
                "Most open file descriptors allowed",
                m as f64,
            )
        });
        for (name, help, value) in gauges.into_iter().chain(max) {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice num_threads itrealvalue starttime vsize rss
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 10 0 0 0 250 50 0 0 20 0 7 0 1000 123456 300 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096, 1_700_000_000.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 1_700_000_010.0);
        assert_eq!(s.virtual_bytes, 123456);
        assert_eq!(s.resident_bytes, 300 * 4096);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_reads() {
        let s = ProcessStats::read().expect("/proc");
        assert!(s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 3);
    }
}
