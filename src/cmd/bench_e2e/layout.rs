//! How the processors of one bench run sit on the cores: how many processes, and the CPUs
//! each is pinned to (`teddyflow run --cpu-list`), so that a cluster on one host does not
//! have every process's threads fight for the same cores.

use serde::{Deserialize, Serialize};
use teddyflow_dataflow::threads::cpu_list;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// What the run is, in the words of the scaling table.
    pub label: String,
    pub processes: usize,
    /// Per process, the CPUs it is pinned to (`0-1`, `2`); empty = not pinned.
    pub cpu_lists: Vec<String>,
}

impl Layout {
    /// `processes` processes, each pinned to its share of `cpus` when `pin` (and there is
    /// more than one process or `cpus` is not everything), else unpinned.
    pub fn new(processes: usize, cpus: &[usize], pin: bool, restricted: bool) -> Layout {
        let processes = processes.max(1);
        let cpu_lists = match pin && (processes > 1 || restricted) {
            true => shares(cpus, processes)
                .iter()
                .map(|c| cpu_list(c))
                .collect(),
            false => Vec::new(),
        };
        let label = match (processes, cpu_lists.is_empty()) {
            (1, true) => format!("one process, no tuning flags, {} cpus", cpus.len()),
            (1, false) => format!("one process pinned to cpus {}", cpu_lists[0]),
            (n, true) => format!("{n}-process cluster, unpinned"),
            (n, false) => format!("{n}-process cluster, pinned {}", cpu_lists.join(" / ")),
        };
        Layout {
            label,
            processes,
            cpu_lists,
        }
    }

    /// The layouts of `bench e2e --scaling`, the first being the reference: one process
    /// pinned to one core (the last cpu, as `taskset -c 1` on two cores), one process on
    /// every cpu with no flags, and a cluster of one process per cpu pinned to it, then
    /// the same cluster unpinned.
    pub fn scaling(cpus: &[usize]) -> Vec<Layout> {
        let last = cpus.last().copied().unwrap_or(0);
        let n = cpus.len().max(1);
        let mut one = Layout::new(1, &[last], true, true);
        one.label = format!("one process pinned to one core (cpu {last})");
        let mut all = vec![one, Layout::new(1, cpus, false, false)];
        if n > 1 {
            all.push(Layout::new(n, cpus, true, false));
            all.push(Layout::new(n, cpus, false, false));
        }
        all
    }
}

/// `cpus` split into `n` contiguous shares as even as possible; with more processes than
/// cpus, processes share cpus round-robin (one each).
pub fn shares(cpus: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.max(1);
    if cpus.is_empty() {
        return vec![Vec::new(); n];
    }
    if n >= cpus.len() {
        return (0..n).map(|i| vec![cpus[i % cpus.len()]]).collect();
    }
    (0..n)
        .map(|i| cpus[i * cpus.len() / n..(i + 1) * cpus.len() / n].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_cpu_once_and_evenly() {
        assert_eq!(shares(&[0, 1], 2), vec![vec![0], vec![1]]);
        assert_eq!(shares(&[0, 1, 2, 3], 2), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(shares(&[0, 1, 2], 2), vec![vec![0], vec![1, 2]]);
        assert_eq!(shares(&[4, 5, 6, 7], 1), vec![vec![4, 5, 6, 7]]);
        assert_eq!(shares(&[0, 1], 3), vec![vec![0], vec![1], vec![0]]);
        for cores in 1..=16 {
            let cpus: Vec<usize> = (0..cores).collect();
            for n in 1..=cores {
                let s = shares(&cpus, n);
                assert_eq!(s.len(), n);
                assert_eq!(s.concat(), cpus, "{cores} cpus over {n}");
                let sizes: Vec<usize> = s.iter().map(Vec::len).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{sizes:?}");
            }
        }
    }

    #[test]
    fn one_process_is_pinned_only_when_asked_for_fewer_cpus() {
        assert!(Layout::new(1, &[0, 1], true, false).cpu_lists.is_empty());
        assert_eq!(Layout::new(1, &[1], true, true).cpu_lists, ["1"]);
        assert_eq!(Layout::new(2, &[0, 1], true, false).cpu_lists, ["0", "1"]);
        assert!(Layout::new(2, &[0, 1], false, false).cpu_lists.is_empty());
    }

    #[test]
    fn scaling_runs_one_core_then_all_then_a_pinned_and_an_unpinned_cluster() {
        let l = Layout::scaling(&[0, 1]);
        let shape: Vec<(usize, Vec<String>)> = l
            .iter()
            .map(|l| (l.processes, l.cpu_lists.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (1, vec!["1".to_string()]),
                (1, vec![]),
                (2, vec!["0".into(), "1".into()]),
                (2, vec![]),
            ]
        );
        assert_eq!(Layout::scaling(&[3]).len(), 2);
    }
}
