//! How many cores this process may use: its CPU affinity (what `taskset`, `--cpu-list` or a
//! container's cpuset allow) and its cgroup CPU quota (what a container's CPU limit allows),
//! the smaller of the two; `engine.cores` overrides both. Every thread count of the process
//! is derived from this budget (`threads.rs`).

use std::path::{Path, PathBuf};

/// Where the budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `engine.cores` in the config.
    Config,
    /// The CPUs the process may run on (sched_getaffinity).
    Affinity,
    /// The cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
    Quota,
    /// Neither could be read: `std::thread::available_parallelism`.
    Fallback,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "engine.cores",
            Source::Affinity => "cpu affinity",
            Source::Quota => "cgroup cpu quota",
            Source::Fallback => "available parallelism",
        }
    }
}

/// The cores one process may keep busy.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreBudget {
    pub cores: usize,
    pub source: Source,
    /// The CPUs the process may run on, when known.
    pub cpus: Option<Vec<usize>>,
    /// The cgroup quota in cores (1.5 = 150 ms per 100 ms), when one is set.
    pub quota: Option<f64>,
}

impl CoreBudget {
    /// The budget of this process: `configured` (engine.cores) when above 0, otherwise the
    /// smaller of its affinity and its cgroup quota.
    pub fn detect(configured: usize) -> CoreBudget {
        let cpus = affinity();
        let quota = cgroup_quota(Path::new("/"));
        let fallback = std::thread::available_parallelism().map_or(1, |n| n.get());
        CoreBudget::choose(configured, cpus, quota, fallback)
    }

    /// The rule, apart from the reading: config wins, else the smaller of affinity and
    /// quota. A fractional quota is rounded down (1.5 cores → 1): a thread that would run
    /// beyond the quota is throttled until the next period, which costs far more latency
    /// than the half core gains.
    pub fn choose(
        configured: usize,
        cpus: Option<Vec<usize>>,
        quota: Option<f64>,
        fallback: usize,
    ) -> CoreBudget {
        let from_quota = quota.map(|q| (q.floor() as usize).max(1));
        let from_affinity = cpus.as_ref().map(|c| c.len().max(1));
        let (cores, source) = match (configured, from_affinity, from_quota) {
            (n, _, _) if n > 0 => (n, Source::Config),
            (_, Some(a), Some(q)) if q < a => (q, Source::Quota),
            (_, Some(a), _) => (a, Source::Affinity),
            (_, None, Some(q)) => (q, Source::Quota),
            (_, None, None) => (fallback.max(1), Source::Fallback),
        };
        CoreBudget {
            cores,
            source,
            cpus,
            quota,
        }
    }
}

/// The CPUs this process may run on.
pub fn affinity() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

/// Restrict this process to `cpus`. Call it before any other thread starts: threads
/// inherit the mask of the thread that creates them.
pub fn pin(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as in `affinity`; CPU_SET is given indices below CPU_SETSIZE only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        let size = std::mem::size_of::<libc::cpu_set_t>();
        match libc::sched_setaffinity(0, size, &set) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// `0-3,6,8-9` → [0, 1, 2, 3, 6, 8, 9] (the format of `taskset -c` and cpusets).
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').map(str::trim) {
        let (lo, hi): (usize, usize) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse().ok()?, hi.trim().parse().ok()?),
            None => {
                let c = part.parse().ok()?;
                (c, c)
            }
        };
        if lo > hi {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// cgroup v2 `cpu.max`: `"150000 100000"` → 1.5 cores; `"max 100000"` → no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: f64 = fields.next().map_or(Some(100_000.0), |p| p.parse().ok())?;
    match quota {
        "max" => None,
        q => quota_cores(q.parse().ok()?, period),
    }
}

/// cgroup v1: `cpu.cfs_quota_us` (-1 = no limit) over `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: f64 = quota.trim().parse().ok()?;
    quota_cores(quota, period.trim().parse().ok()?)
}

fn quota_cores(quota: f64, period: f64) -> Option<f64> {
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// The process's cgroup paths from `/proc/self/cgroup`: the v2 path (`0::/a/b`) and the
/// v1 path of the hierarchy holding the `cpu` controller (`4:cpu,cpuacct:/a/b`).
fn cgroup_paths(proc_self_cgroup: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// The tightest CPU quota on the process's cgroup or any cgroup above it, read under
/// `root` (`/` in production; a fixture folder in tests). A container usually sees its own
/// cgroup as the root of the hierarchy, so the mount's own files are read too.
pub fn cgroup_quota(root: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(root.join("proc/self/cgroup")).unwrap_or_default();
    let (v2, v1) = cgroup_paths(&text);
    let fs = root.join("sys/fs/cgroup");
    let mut quotas = Vec::new();
    if let Some(path) = v2 {
        for mount in [fs.clone(), fs.join("unified")] {
            quotas.extend(up_the_tree(&mount, &path, |dir| {
                parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
            }));
        }
    }
    let path = v1.unwrap_or_else(|| "/".into());
    for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
        quotas.extend(up_the_tree(&fs.join(mount), &path, |dir| {
            let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
            let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
            parse_cfs(&quota, &period)
        }));
    }
    quotas.into_iter().reduce(f64::min)
}

/// `read` on `mount/path` and each folder above it, up to `mount` itself.
fn up_the_tree(mount: &Path, path: &str, read: impl Fn(&Path) -> Option<f64>) -> Vec<f64> {
    let mut dir: PathBuf = mount.join(path.trim_start_matches('/'));
    let mut found = Vec::new();
    loop {
        found.extend(read(&dir));
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            return found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_in_taskset_format() {
        assert_eq!(
            parse_cpu_list("0-3,6, 8-9"),
            Some(vec![0, 1, 2, 3, 6, 8, 9])
        );
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        assert_eq!(parse_cpu_list("2,1,1-2"), Some(vec![1, 2]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list(""), None);
    }

    #[test]
    fn quota_files_of_both_cgroup_versions() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000"), Some(2.0));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs("400000", "100000"), Some(4.0));
    }

    #[test]
    fn config_wins_then_the_smaller_of_affinity_and_quota() {
        let four = Some(vec![0, 1, 2, 3]);
        let b = CoreBudget::choose(3, four.clone(), Some(1.0), 8);
        assert_eq!((b.cores, b.source), (3, Source::Config));
        let b = CoreBudget::choose(0, four.clone(), Some(2.5), 8);
        assert_eq!((b.cores, b.source), (2, Source::Quota));
        let b = CoreBudget::choose(0, four.clone(), Some(6.0), 8);
        assert_eq!((b.cores, b.source), (4, Source::Affinity));
        let b = CoreBudget::choose(0, four, None, 8);
        assert_eq!((b.cores, b.source), (4, Source::Affinity));
        // Half a core is still one thread's worth.
        let b = CoreBudget::choose(0, None, Some(0.5), 8);
        assert_eq!((b.cores, b.source), (1, Source::Quota));
        let b = CoreBudget::choose(0, None, None, 8);
        assert_eq!((b.cores, b.source), (8, Source::Fallback));
    }

    /// A fixture tree: `/proc/self/cgroup` and the cgroup files under `sys/fs/cgroup`.
    fn fixture(name: &str, proc_cgroup: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("teddyflow-cores-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(root.join("proc/self/cgroup"), proc_cgroup).unwrap();
        for (path, text) in files {
            let file = root.join("sys/fs/cgroup").join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        }
        root
    }

    #[test]
    fn cgroup_v2_quota_is_the_tightest_up_the_tree() {
        let root = fixture(
            "v2",
            "0::/kubepods/pod1/c1\n",
            &[
                ("kubepods/cpu.max", "max 100000\n"),
                ("kubepods/pod1/cpu.max", "300000 100000\n"),
                ("kubepods/pod1/c1/cpu.max", "max 100000\n"),
            ],
        );
        assert_eq!(cgroup_quota(&root), Some(3.0));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn cgroup_v2_inside_a_container_reads_its_own_root() {
        let root = fixture("v2ns", "0::/\n", &[("cpu.max", "250000 100000\n")]);
        assert_eq!(cgroup_quota(&root), Some(2.5));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn cgroup_v1_quota_from_the_cpu_hierarchy() {
        let proc = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        let root = fixture(
            "v1",
            proc,
            &[
                ("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n"),
                ("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n"),
                ("cpu,cpuacct/cpu.cfs_quota_us", "-1\n"),
                ("cpu,cpuacct/cpu.cfs_period_us", "100000\n"),
            ],
        );
        assert_eq!(cgroup_quota(&root), Some(1.5));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn no_limit_anywhere_is_no_quota() {
        let root = fixture(
            "none",
            "1:cpu:/\n0::/\n",
            &[
                ("cpu/cpu.cfs_quota_us", "-1\n"),
                ("cpu/cpu.cfs_period_us", "100000\n"),
                ("unified/cpu.stat", ""),
            ],
        );
        assert_eq!(cgroup_quota(&root), None);
        let _ = std::fs::remove_dir_all(root);
        assert_eq!(cgroup_quota(Path::new("/nonexistent-root")), None);
    }

    #[test]
    fn this_process_has_an_affinity_and_pinning_narrows_it() {
        let cpus = affinity().expect("sched_getaffinity works on Linux");
        assert!(!cpus.is_empty());
        // On a thread of its own, so the test process keeps its mask. `pin` sets the
        // calling thread's mask (what a process's first thread passes on to the rest).
        let first = cpus[0];
        let seen = std::thread::spawn(move || {
            pin(&[first]).unwrap();
            affinity()
        })
        .join()
        .unwrap();
        assert_eq!(seen, Some(vec![first]));
        assert_eq!(affinity(), Some(cpus));
    }
}
