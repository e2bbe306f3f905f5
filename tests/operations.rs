//! Operating the fleet: the dashboard in a real browser against a real broker, `plan
//! --emit k8s` and `plan --watch` against real metrics snapshots, and the deployment files
//! (manifests validated against the Kubernetes schemas, the entrypoint, the Dockerfile,
//! the Grafana dashboard's queries against the families teddyflow exports).
//!
//! Snapshots are written by `WorkerMetrics::snapshot`, the code the workers use, so the
//! records are the real format; only their timestamps are spread over the past minute so
//! the charts have a history.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, repo, scratch, Broker};
use teddyflow_connectors::OutRecord;
use teddyflow_dataflow::metrics::WorkerMetrics;
use teddyflow_dataflow::stage::Stage;

const METRICS: &str = "teddy.metrics";
const ALERTS: &str = "teddy.alerts";

/// One worker's run: `intervals` snapshots a second apart ending now, utterances answered
/// rising to `done`, the stage times of the last interval as given.
fn worker_snapshots(
    process: usize,
    worker: usize,
    intervals: i64,
    done: u64,
    stages: &[(Stage, &[f64])],
    lag: &[(i32, i64)],
) -> Vec<OutRecord> {
    let mut m = WorkerMetrics::default();
    let end = common::now_ms();
    (0..intervals)
        .map(|i| {
            m.counts.utterances_done = done * (i as u64 + 1) / intervals as u64;
            m.counts.records_in = m.counts.utterances_done * 6;
            m.counts.deadletters = u64::from(i == intervals - 1 && worker == 0);
            m.lag = lag.iter().copied().collect();
            for (stage, times) in stages {
                // Earlier intervals ran a little slower, so the chart has a shape.
                let slower = 1.0 + 0.4 * (intervals - 1 - i) as f64 / intervals as f64;
                for t in *times {
                    m.stage(*stage, t * slower);
                }
            }
            let mut snap = m.snapshot(worker, process, 1000);
            snap.ts_ms = end - (intervals - 1 - i) * 1000;
            snap.in_flight = 1 + worker as i64;
            OutRecord {
                topic: METRICS.into(),
                key: Some(format!("worker-{worker}").into_bytes()),
                payload: serde_json::to_vec(&snap).unwrap(),
                headers: Vec::new(),
            }
        })
        .collect()
}

const W0_STAGES: &[(Stage, &[f64])] = &[
    (Stage::Decode, &[1.2, 1.5, 1.1]),
    (Stage::AsrWait, &[3.0, 40.0, 8.0]),
    (Stage::Asr, &[200.0, 300.0, 400.0]),
    (Stage::Acoustic, &[18.0, 22.0, 20.0]),
    (Stage::Understand, &[35.0, 30.0, 40.0]),
    (Stage::ReplyFirstSentence, &[420.0, 380.0, 500.0]),
    (Stage::Reply, &[800.0, 900.0, 1000.0]),
    (Stage::Tts, &[60.0, 70.0, 65.0]),
    (Stage::FirstAudio, &[900.0, 1100.0, 1000.0]),
    (Stage::SinkAck, &[4.0, 5.0, 6.0]),
    (Stage::EndToEnd, &[1500.0, 1700.0, 1600.0]),
];

const W1_STAGES: &[(Stage, &[f64])] = &[
    (Stage::Decode, &[1.0]),
    (Stage::Asr, &[500.0]),
    (Stage::Acoustic, &[25.0]),
    (Stage::Understand, &[30.0]),
    (Stage::Reply, &[950.0]),
    (Stage::Tts, &[70.0]),
    (Stage::FirstAudio, &[1400.0]),
    (Stage::EndToEnd, &[1800.0]),
];

fn alert(kind: &str) -> OutRecord {
    let body = serde_json::json!({
        "conversation": "toy-secret-id", "utterance": "u9", "child": "c-secret", "kind": kind,
        "categories": ["distress"], "score": 0.9, "excerpt": "words the dashboard never shows",
    });
    OutRecord {
        topic: ALERTS.into(),
        key: Some(b"toy-secret-id".to_vec()),
        payload: body.to_string().into_bytes(),
        headers: Vec::new(),
    }
}

/// A fleet of two workers: 7 + 5 = 12 answered; asr over the last intervals 3 × p50 300 ms
/// and 1 × 500 ms → count 4, fleet p50 (3 × 300 + 500) / 4 = 350.
fn fill_fleet(broker: &Broker) {
    broker.create_topics(&[METRICS, ALERTS], 2);
    let mut records = worker_snapshots(0, 0, 40, 7, W0_STAGES, &[(0, 4), (2, 9)]);
    records.extend(worker_snapshots(0, 1, 40, 5, W1_STAGES, &[(1, 2), (3, 0)]));
    records.extend(["unsafe", "needs_care"].map(alert));
    broker.produce(&records);
}

/// A plain HTTP/1.1 GET on loopback: (status, body). The body ends at Content-Length
/// (Chromium's DevTools server keeps the connection open) or when the server closes.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let split = |data: &[u8]| -> Option<(u16, Option<usize>, String)> {
        let text = String::from_utf8_lossy(data).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        });
        Some((head.get(9..12)?.parse().ok()?, length, body.to_string()))
    };
    loop {
        if let Some((status, Some(n), body)) = split(&data) {
            if body.len() >= n {
                return Some((status, body));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    split(&data).map(|(status, _, body)| (status, body))
}

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn teddyflow(args: &[&str], log: &Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_teddyflow"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start teddyflow");
    Running(child)
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Headless Chromium driven over the DevTools protocol: a page's DOM is read after a
/// wall-clock wait (`--dump-dom` never returns while the page holds its event stream).
struct Chromium {
    _child: Running,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Chromium {
    fn open(url: &str, name: &str) -> Chromium {
        let profile = scratch(name).join("chromium-profile");
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(scratch(name).join("chromium.log")).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1280,1180",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("chromium (Debian package) installed by scripts/setup.sh");
        let child = Running(child);
        // Chromium writes the port it chose into the profile.
        let port: u16 = wait_until("DevToolsActivePort", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?;
            text.lines().next()?.trim().parse().ok()
        });
        let addr = format!("127.0.0.1:{port}");
        let page = wait_until("a page target", Duration::from_secs(30), || {
            let (_, body) = http_get(&addr, "/json/list")?;
            let targets: serde_json::Value = serde_json::from_str(&body).ok()?;
            targets
                .as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(String::from))
        });
        let (ws, _) = tungstenite::connect(page.as_str()).expect("DevTools websocket");
        Chromium {
            _child: child,
            ws,
            next_id: 0,
        }
    }

    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let reply = self.ws.read().expect("DevTools reply");
            let Ok(text) = reply.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `expr` (which must return a JSON string) in the page.
    fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": expr, "returnByValue": true}),
        );
        serde_json::from_str(r["result"]["value"].as_str().unwrap_or("null")).unwrap()
    }

    /// The whole page, however long.
    fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let height = self.eval("JSON.stringify(document.documentElement.scrollHeight)");
        self.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}

const READ_PAGE: &str = r#"JSON.stringify({
  done: document.querySelector('[data-metric="utterances_done"]').textContent,
  deadletters: document.querySelector('[data-metric="deadletters"]').textContent,
  alerts: document.querySelector('[data-metric="alerts"]').textContent,
  first_audio: document.querySelector('[data-metric="first_audio"]').textContent,
  stages: [...document.querySelectorAll('tr[data-stage]')].map(r => [r.dataset.stage,
    r.querySelector('[data-field="count"]').textContent, r.querySelector('[data-field="p50_ms"]').textContent]),
  pipeline: document.querySelectorAll('[data-pipeline-stage]').length,
  partitions: [...document.querySelectorAll('[data-partition]')].map(e => e.dataset.partition),
  workers: document.querySelectorAll('tr[data-worker]').length,
  status: document.querySelector('#status').textContent,
  text: document.body.innerText,
})"#;

#[test]
fn the_dashboard_in_headless_chromium_shows_the_fleet_and_follows_it_live() {
    let _serial = common::serial();
    let broker = Broker::start("dashboard");
    fill_fleet(&broker);
    let addr = format!("127.0.0.1:{}", free_port());
    let _dash = teddyflow(
        &["dashboard", "--brokers", &broker.addr, "--listen", &addr],
        &scratch("dashboard").join("dashboard.log"),
    );
    // The server has read both topics when its state says so.
    wait_until("the dashboard's state", Duration::from_secs(60), || {
        let (_, body) = http_get(&addr, "/state")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["utterances_done"] == 12 && v["alerts"] == 2).then_some(())
    });

    let mut browser = Chromium::open(&format!("http://{addr}/"), "dashboard");
    let page = wait_until("the page to draw 12", Duration::from_secs(30), || {
        let p = browser.eval(READ_PAGE);
        (p["done"] == "12").then_some(p)
    });
    assert_eq!(page["deadletters"], "1");
    assert_eq!(page["alerts"], "2");
    assert_eq!(page["status"], "live", "fed by server-sent events");
    let stages = page["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s[0].as_str().unwrap()).collect();
    // One row per timed stage, in the pipeline's order.
    let timed: Vec<&str> = teddyflow_dataflow::stage::ALL
        .into_iter()
        .filter(|s| s.kind() != teddyflow_dataflow::stage::Kind::Untimed)
        .map(|s| s.name())
        .collect();
    assert_eq!(names, timed);
    let asr = stages.iter().find(|s| s[0] == "asr").unwrap();
    assert_eq!((&asr[1], &asr[2]), (&"4".into(), &"350.0".into()));
    // (3 × 1000 + 1400) / 4 = 1100 ms; the highest p95 1400 ms.
    assert_eq!(page["first_audio"], "1.10 s / 1.40 s");
    assert_eq!(page["pipeline"], 7);
    assert_eq!(page["partitions"], serde_json::json!(["0", "1", "2", "3"]));
    assert_eq!(page["workers"], 2);
    let text = page["text"].as_str().unwrap();
    assert!(
        !text.contains("never shows") && !text.contains("secret"),
        "no excerpt or id reaches the page"
    );

    let png = browser.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(scratch("dashboard").join("dashboard.png"), &png).unwrap();
    if let Some(path) = std::env::var_os("TEDDYFLOW_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }

    // A new snapshot reaches the open page without a reload: worker 1 now at 9 → 16.
    broker.produce(&worker_snapshots(0, 1, 1, 9, W1_STAGES, &[(1, 0)]));
    wait_until("the page to follow to 16", Duration::from_secs(30), || {
        (browser.eval(READ_PAGE)["done"] == "16").then_some(())
    });
}

fn kubernetes_validate(files: &[PathBuf]) -> std::process::Output {
    let bin = common::assets().join("venv-k8s/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} missing: run scripts/setup.sh",
        bin.display()
    );
    Command::new(bin)
        .arg("--strict")
        .args(files)
        .output()
        .unwrap()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_committed_manifests_validate_against_the_kubernetes_schemas() {
    let files = yaml_files(&repo().join("deploy/k8s"));
    assert_eq!(files.len(), 3);
    let out = kubernetes_validate(&files);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" passed for resource ").count(), 3, "{text}");
    // The validator is not a rubber stamp: a wrong type fails it.
    let bad = scratch("k8s-bad").join("statefulset.yaml");
    let sts = std::fs::read_to_string(&files[2]).unwrap();
    std::fs::write(&bad, sts.replace("replicas: 2", "replicas: two")).unwrap();
    assert!(!kubernetes_validate(&[bad]).status.success());
}

#[test]
fn plan_emit_k8s_writes_valid_manifests_for_the_size_it_recommends() {
    let _serial = common::serial();
    let broker = Broker::start("plan-emit");
    fill_fleet(&broker);
    let dir = scratch("plan-emit").join("k8s");
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_teddyflow"))
        .args([
            "plan",
            "--target-rate",
            "3",
            "--cores-per-process",
            "2",
            "--json",
        ])
        .args([
            "--metrics-from-brokers",
            &broker.addr,
            "--metrics-topic",
            METRICS,
        ])
        .args(["--metrics-seconds", "4", "--emit", "k8s"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let processes = plan["plan"]["processes"].as_u64().unwrap();
    let workers = plan["plan"]["workers_per_process"].as_u64().unwrap();
    assert!(
        processes >= 2,
        "3 utterances/s of ~1.6 s CPU each need more than 2 cores: {plan}"
    );
    let sts = std::fs::read_to_string(dir.join("statefulset.yaml")).unwrap();
    assert!(
        sts.contains(&format!("\n  replicas: {processes}\n")),
        "{sts}"
    );
    assert!(sts.contains(&format!(
        "name: TEDDYFLOW_PROCESSES\n              value: \"{processes}\""
    )));
    assert!(sts.contains(&format!(
        "name: TEDDYFLOW_WORKERS\n              value: \"{workers}\""
    )));
    assert!(sts.contains("cpu: 2000m"));
    let out = kubernetes_validate(&yaml_files(&dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Snapshots of one busy process (asr 3 × 900 ms per 1 s interval on one thread: 270 %),
/// written as the watch reads them, for `seconds`.
fn busy_metrics(broker: &Broker, seconds: u64) {
    let mut m = WorkerMetrics::default();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for ms in [900.0, 900.0, 900.0] {
            m.stage(Stage::Asr, ms);
        }
        m.counts.utterances_done += 3;
        m.lag = [(0, 30)].into_iter().collect();
        let snap = m.snapshot(0, 0, 1000);
        broker.produce(&[OutRecord {
            topic: METRICS.into(),
            key: Some(b"worker-0".to_vec()),
            payload: serde_json::to_vec(&snap).unwrap(),
            headers: Vec::new(),
        }]);
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn plan_watch_recommends_growing_a_busy_cluster_within_the_partitions() {
    let _serial = common::serial();
    let broker = Broker::start("plan-watch");
    broker.create_topics(&["teddy.audio"], 4);
    broker.create_topics(&[METRICS, "teddy.scaling"], 1);
    let listen = format!("127.0.0.1:{}", free_port());
    let out_path = scratch("plan-watch").join("watch.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_teddyflow"))
        .args([
            "plan",
            "--watch",
            "--brokers",
            &broker.addr,
            "--window-seconds",
            "2",
        ])
        .args([
            "--windows",
            "5",
            "--up-windows",
            "2",
            "--record-topic",
            "teddy.scaling",
        ])
        .args(["--listen", &listen])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(scratch("plan-watch").join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let mut watch = Running(child);
    // It reads from the end of the topic: start writing once it listens.
    wait_until("the watch to serve", Duration::from_secs(30), || {
        http_get(&listen, "/metrics")
    });
    let feeder = std::thread::scope(|s| {
        s.spawn(|| busy_metrics(&broker, 7));
        wait_until("a recommendation", Duration::from_secs(30), || {
            let (_, body) = http_get(&listen, "/metrics")?;
            let m = teddyflow_connectors::http::exposition::parse(&body).ok()?;
            (m.value("teddyflow_recommended_processes", &[]) == Some(4.0)).then_some(m)
        })
    });
    assert_eq!(feeder.value("teddyflow_observed_processes", &[]), Some(1.0));
    let status = wait_until("the watch to end", Duration::from_secs(30), || {
        watch.0.try_wait().unwrap()
    });
    assert!(status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let resizes: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["advice"]["decision"] == "resize")
        .collect();
    assert_eq!(resizes.len(), 1, "then the cooldown: {lines:?}");
    // ⌈1 × 2.7 / 0.6⌉ = 5, but 4 partitions of one worker each allow 4.
    assert_eq!(resizes[0]["advice"]["to"], 4);
    assert_eq!(resizes[0]["advice"]["from"], 1);
    assert!(resizes[0]["advice"]["reason"]
        .as_str()
        .unwrap()
        .contains("asr.threads"));
    let records = broker.collect("teddy.scaling", Duration::from_secs(20), |r| !r.is_empty());
    let advice: serde_json::Value = serde_json::from_slice(records[0].payload()).unwrap();
    assert_eq!(advice["advice"]["to"], 4);
}

#[test]
fn the_entrypoint_writes_the_hostfile_from_the_pod_ordinal() {
    let dir = scratch("entrypoint");
    let hosts = dir.join("hosts");
    let run = |pod: &str| {
        Command::new(repo().join("deploy/entrypoint.sh"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOSTNAME", pod)
            .env("TEDDYFLOW_PROCESSES", "3")
            .env("TEDDYFLOW_WORKERS", "2")
            .env("TEDDYFLOW_BROKERS", "kafka:9092")
            .env("POD_NAMESPACE", "toys")
            .env("TEDDYFLOW_HOSTFILE", &hosts)
            .env("TEDDYFLOW_BIN", "echo")
            .output()
            .unwrap()
    };
    let out = run("teddyflow-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "teddyflow-0.teddyflow.toys.svc.cluster.local:2101\n0.0.0.0:2101\nteddyflow-2.teddyflow.toys.svc.cluster.local:2101\n"
    );
    let args = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "run --config /etc/teddyflow/teddyflow.toml --brokers kafka:9092 --workers 2 -n 3 -p 1 -h {} --set engine.http_addr=\"0.0.0.0:9464\"\n",
        hosts.display()
    );
    assert_eq!(args, want);
    let beyond = run("teddyflow-3");
    assert!(!beyond.status.success());
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("beyond the cluster size 3"));
    assert!(!run("teddyflow").status.success(), "no ordinal, no start");
}

/// The Dockerfile, read as Docker would: known instructions, stages named before they are
/// copied from, sources that exist, the set-up script's own packages in the runtime.
#[test]
fn the_dockerfile_is_consistent_with_the_repository() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        current.push_str(l.trim_end_matches('\\'));
        current.push(' ');
        if !l.ends_with('\\') {
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "a continuation runs off the end");
    let known = [
        "FROM",
        "RUN",
        "COPY",
        "WORKDIR",
        "USER",
        "EXPOSE",
        "ENTRYPOINT",
        "ENV",
    ];
    let mut stages: Vec<String> = Vec::new();
    let setup = std::fs::read_to_string(repo().join("scripts/setup.sh")).unwrap();
    for inst in &logical {
        let (op, rest) = inst.split_once(' ').unwrap();
        assert!(known.contains(&op), "unknown instruction {op}");
        let words: Vec<&str> = rest.split_whitespace().collect();
        match op {
            "FROM" => {
                assert_eq!(words.len(), 3, "every stage is named: {inst}");
                assert_eq!(words[1], "AS");
                stages.push(words[2].to_string());
            }
            "COPY" if words[0].starts_with("--from=") => {
                let from = words[0].trim_start_matches("--from=");
                assert!(
                    stages[..stages.len() - 1].iter().any(|s| s == from),
                    "{inst}"
                );
            }
            "COPY" => {
                for src in &words[..words.len() - 1] {
                    assert!(repo().join(src).exists(), "COPY source {src} missing");
                }
            }
            "RUN" if rest.contains("apt-get install") => {
                let runtime = stages.last().map(String::as_str) == Some("runtime");
                for pkg in ["espeak-ng"].iter().filter(|_| runtime) {
                    assert!(rest.contains(pkg) && setup.contains(pkg), "{pkg}");
                }
            }
            "ENTRYPOINT" => {
                let argv: Vec<String> = serde_json::from_str(rest.trim()).unwrap();
                assert_eq!(argv, ["/opt/teddyflow/entrypoint.sh"]);
                let sts =
                    std::fs::read_to_string(repo().join("deploy/k8s/statefulset.yaml")).unwrap();
                assert!(sts.contains("command: [\"/opt/teddyflow/entrypoint.sh\"]"));
            }
            _ => {}
        }
    }
    assert_eq!(stages, ["build", "runtime"]);
    assert!(
        logical.iter().any(|i| i.contains("bash scripts/setup.sh")),
        "set up as a developer does"
    );
    assert!(logical.iter().any(|i| i.contains("cargo build --release")));
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == ".assets/"));
}

/// Every series a Grafana query names is one teddyflow serves.
#[test]
fn the_grafana_dashboard_queries_only_exported_families() {
    use teddyflow_connectors::http::{
        exposition, AlertKind, CommitResult, DeadLetterReason, Telemetry,
    };
    let t = Telemetry::new(1, false);
    t.utterance_done();
    t.deadletter(DeadLetterReason::Decode);
    t.alert(AlertKind::Unsafe);
    t.stage_ms("asr", 1.0);
    t.lag(&[(0, 1)].into_iter().collect());
    t.in_flight(0, 1);
    t.reply_replaced();
    t.offset_commit(CommitResult::Ok);
    let served = exposition::parse(&t.encode()).unwrap();
    let names: std::collections::BTreeSet<&str> =
        served.samples().map(|s| s.name.as_str()).collect();
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/teddyflow.json")).unwrap(),
    )
    .unwrap();
    let mut queried = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let idents = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for name in idents.filter(|w| w.starts_with("teddyflow_") || w.starts_with("process_"))
            {
                assert!(names.contains(name), "{name} in `{expr}` is not served");
                queried += 1;
            }
        }
    }
    assert!(queried >= 15, "{queried}");
    for family in [
        "teddyflow_stage_duration_seconds_bucket",
        "teddyflow_consumer_lag",
        "teddyflow_deadletters_total",
    ] {
        assert!(dash.to_string().contains(family), "{family} has no panel");
    }
}

/// A running processor's `/metrics` agree with what it wrote to its topics, and `/readyz`
/// says ready once models, partitions and profiles are in.
#[test]
fn a_running_processor_serves_metrics_that_match_its_outputs() {
    use teddyflow_connectors::fleet::{encode, synthesize, to_records, Utterance, Voice};
    use teddyflow_connectors::http::exposition;
    use teddyflow_connectors::wire::Codec;
    let _guard = common::serial();
    let broker = Broker::start("telemetry");
    let topics = [
        "teddy.audio",
        "teddy.responses",
        "teddy.metrics",
        "teddy.deadletter",
        "teddy.alerts",
        "teddy.speech",
        "teddy.profiles",
    ];
    broker.create_topics(&topics, 2);
    let addr = format!("127.0.0.1:{}", free_port());
    let set = format!("engine.http_addr=\"{addr}\"");
    let processor = common::Processor::start(&broker, "telemetry", &[&set]);
    // Served before the models load (seconds), so the first answer is "not ready".
    let mut statuses = Vec::new();
    wait_until("/readyz 200", Duration::from_secs(120), || {
        let got = http_get(&addr, "/readyz");
        statuses.extend(got.as_ref().map(|(status, _)| *status));
        got.filter(|(status, _)| *status == 200)
    });
    assert_eq!(
        statuses.first(),
        Some(&503),
        "/readyz answered {statuses:?}"
    );
    assert_eq!(http_get(&addr, "/healthz").map(|r| r.0), Some(200));
    let voice = Voice::new("en-us", 50, 140);
    let phrases = [
        "we went to the park and I saw a duck",
        "I want to hurt myself",
    ];
    let mut records = Vec::new();
    for (i, text) in phrases.iter().enumerate() {
        let u = Utterance {
            conversation: format!("toy-{i}"),
            utterance: format!("u{i}"),
            child: None,
            audio: encode(&synthesize(text, &voice).unwrap(), Codec::Flac).unwrap(),
        };
        records.extend(to_records(&u, 8192, "teddy.audio", common::now_ms()));
    }
    // And one record that is not a chunk at all.
    records.push(OutRecord {
        topic: "teddy.audio".into(),
        key: Some(b"toy-9".to_vec()),
        payload: b"not audio".to_vec(),
        headers: Vec::new(),
    });
    broker.produce(&records);
    let wait = Duration::from_secs(180);
    let responses = broker.collect("teddy.responses", wait, |r| r.len() >= phrases.len());
    assert_eq!(
        responses.len(),
        phrases.len(),
        "log: {}",
        processor.log_text()
    );
    let dead = broker.collect("teddy.deadletter", wait, |r| !r.is_empty());
    let alerts = broker.collect("teddy.alerts", Duration::from_secs(5), |_| false);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("reason"), Some("parse"));
    // Counters are bumped on acknowledgement, after the topic has the record.
    let scrape = wait_until("utterances counted", Duration::from_secs(30), || {
        let (_, body) = http_get(&addr, "/metrics")?;
        let e = exposition::parse(&body).expect("valid exposition");
        let done = e.value("teddyflow_utterances_total", &[])?;
        (done >= phrases.len() as f64).then_some(e)
    });
    assert_eq!(
        scrape.value("teddyflow_utterances_total", &[]),
        Some(phrases.len() as f64)
    );
    assert_eq!(
        scrape.value("teddyflow_deadletters_total", &[("reason", "parse")]),
        Some(1.0)
    );
    let alerted: f64 = ["unsafe", "needs_care"]
        .iter()
        .filter_map(|k| scrape.value("teddyflow_alerts_total", &[("kind", k)]))
        .sum();
    assert_eq!(alerted, alerts.len() as f64);
    assert!(
        !alerts.is_empty(),
        "\"I want to hurt myself\" alerts a parent"
    );
    let asr = scrape
        .histogram("teddyflow_stage_duration_seconds", &[("stage", "asr")])
        .expect("asr histogram");
    assert_eq!(asr.count, phrases.len() as f64);
    assert!(asr.sum > 0.0);
    // Lag per audio partition the process reads (the gauge follows each metrics snapshot).
    for partition in ["0", "1"] {
        let lag = scrape.value("teddyflow_consumer_lag", &[("partition", partition)]);
        assert!(
            lag.is_some_and(|l| l >= 0.0),
            "partition {partition}: {lag:?}"
        );
    }
    // No ids in metrics: no label value names a conversation or an utterance.
    let (_, body) = http_get(&addr, "/metrics").unwrap();
    assert!(!body.contains("toy-") && !body.contains("u0"), "{body}");
}
