//! Which broker the bench talks to: `--brokers`, else the local one `scripts/broker.sh`
//! recorded in `.assets/run/broker.env`, else a fresh local one started for this run
//! (and stopped again when the bench ends, since nobody else knows about it).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

pub struct BrokerGuard {
    pub addr: String,
    /// The repository root whose script started the broker, when the bench started it.
    started_in: Option<PathBuf>,
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if let Some(root) = &self.started_in {
            let _ = Command::new("bash")
                .args(["scripts/broker.sh", "stop"])
                .current_dir(root)
                .status();
        }
    }
}

pub fn resolve(brokers: Option<&str>) -> anyhow::Result<BrokerGuard> {
    if let Some(addr) = brokers {
        return Ok(BrokerGuard {
            addr: addr.into(),
            started_in: None,
        });
    }
    let root = repo_root();
    if let Some(addr) = recorded(&root).filter(|a| reachable(a)) {
        tracing::info!(brokers = %addr, "using the broker in .assets/run/broker.env");
        return Ok(BrokerGuard {
            addr,
            started_in: None,
        });
    }
    let out = Command::new("bash")
        .args(["scripts/broker.sh", "start"])
        .current_dir(&root)
        .output()
        .with_context(|| format!("running scripts/broker.sh in {}", root.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "scripts/broker.sh start failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let addr = brokers_line(&String::from_utf8_lossy(&out.stdout))
        .context("scripts/broker.sh printed no BROKERS= line")?;
    tracing::info!(brokers = %addr, "started a local broker for this bench");
    Ok(BrokerGuard {
        addr,
        started_in: Some(root),
    })
}

/// The checkout holding `scripts/broker.sh`: the working directory when run from one,
/// else the one this binary was built from.
fn repo_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("scripts/broker.sh").exists() {
        cwd
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

fn recorded(root: &Path) -> Option<String> {
    let assets = std::env::var_os("TEDDYFLOW_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".assets"));
    brokers_line(&std::fs::read_to_string(assets.join("run/broker.env")).ok()?)
}

fn brokers_line(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("BROKERS="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// A stale broker.env (broker gone) must not send the bench to a dead address.
fn reachable(brokers: &str) -> bool {
    let first = brokers.split(',').next().unwrap_or_default();
    first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_line_is_found_among_others() {
        assert_eq!(
            brokers_line("x=1\nBROKERS=127.0.0.1:9092\n"),
            Some("127.0.0.1:9092".into())
        );
        assert_eq!(brokers_line("BROKERS=\n"), None);
    }

    #[test]
    fn an_unused_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!reachable(&format!("127.0.0.1:{port}")));
    }
}
