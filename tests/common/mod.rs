//! Test harness: a real Tansu broker per test, the real `teddyflow` binary, real models.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use teddyflow_connectors::fleet::{encode, synthesize, to_records, Utterance, Voice};
use teddyflow_connectors::kafka::{
    ensure_topics, AckedWriter, KafkaSettings, StartAt, TopicReader, TopicSpec,
};
use teddyflow_connectors::wire::Codec;
use teddyflow_connectors::{OutRecord, RawRecord};
use teddyflow_dataflow::outputs::{Alert, MetricsSnapshot, Response};

/// Pipelines run Whisper on both cores: run one test at a time so timings stay sane.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn assets() -> PathBuf {
    std::env::var_os("TEDDYFLOW_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".assets"))
}

/// `--set` arguments pointing a processor at the test's models and labelled data.
pub fn model_sets() -> Vec<String> {
    vec![
        "--set".into(),
        format!("models.dir=\"{}\"", assets().join("models").display()),
        "--set".into(),
        format!(
            "understanding.data_dir=\"{}\"",
            repo().join("data").display()
        ),
    ]
}

pub const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("teddyflow-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A Tansu broker on a free loopback port with memory storage, killed on drop.
pub struct Broker {
    child: Child,
    pub addr: String,
}

impl Broker {
    /// `child` of `conversation` says `text` (espeak-ng, flac chunks into `teddy.audio`);
    /// waits until `teddy.responses` holds `n` responses and returns this utterance's.
    pub fn say(
        &self,
        (conversation, child): (&str, &str),
        utterance: &str,
        text: &str,
        n: usize,
    ) -> Response {
        let voice = Voice::new("en-us", 50, 140);
        let wav = synthesize(text, &voice).unwrap();
        let u = Utterance {
            conversation: conversation.into(),
            utterance: utterance.into(),
            child: Some(child.into()),
            audio: encode(&wav, Codec::Flac).unwrap(),
        };
        self.produce(&to_records(&u, 8192, "teddy.audio", now_ms()));
        let responses = self.collect("teddy.responses", Duration::from_secs(180), |r| {
            r.len() >= n
        });
        let found = responses
            .iter()
            .map(Record::response)
            .find(|r| r.utterance == utterance);
        found.unwrap_or_else(|| panic!("no response for {utterance}"))
    }

    pub fn start(name: &str) -> Broker {
        Self::start_on(name, free_port())
    }

    /// A broker on `port`, e.g. a fresh, empty one where another was (its log is lost:
    /// Tansu's memory storage).
    pub fn start_on(name: &str, port: u16) -> Broker {
        let tansu = std::env::var_os("TANSU_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| assets().join("bin/tansu"));
        assert!(
            tansu.exists(),
            "{} missing: run scripts/setup.sh",
            tansu.display()
        );
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = scratch(name).join(format!("broker-{port}-{}.log", now_ms()));
        let log = std::fs::File::create(log_path).unwrap();
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "broker did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGSTOP: the broker stops answering, as a hung or partitioned broker would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Kill it (SIGKILL): its memory storage, and so every topic and offset, is gone.
    pub fn kill(mut self) -> u16 {
        let port = self.port();
        let _ = self.child.kill();
        let _ = self.child.wait();
        port
    }

    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.addr.clone(),
            ..Default::default()
        }
    }

    pub fn create_topics(&self, names: &[&str], partitions: i32) {
        let specs: Vec<TopicSpec> = names
            .iter()
            .map(|n| TopicSpec {
                name: n.to_string(),
                partitions,
                compacted: false,
            })
            .collect();
        ensure_topics(&self.settings(), &specs).expect("create topics");
    }

    /// Produce records and wait until the broker acknowledged all of them.
    pub fn produce(&self, records: &[OutRecord]) {
        let writer = AckedWriter::open(&self.settings()).unwrap();
        for (i, r) in records.iter().enumerate() {
            while writer.send(i as u64 + 1, r).is_err() {
                writer.poll();
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut acked = 0;
        while acked < records.len() {
            for d in writer.poll() {
                d.result.expect("delivery");
                acked += 1;
            }
            assert!(Instant::now() < deadline, "produce not acknowledged");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Write a tombstone (a record with no value) for `key`: a delete in a compacted topic.
    pub fn delete(&self, topic: &str, key: &str) {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = self.settings().client_config().create().unwrap();
        producer
            .send(BaseRecord::<str, [u8]>::to(topic).key(key))
            .map_err(|(e, _)| e)
            .expect("send tombstone");
        producer
            .flush(Duration::from_secs(10))
            .expect("tombstone acknowledged");
    }

    /// Read `topic` from the beginning until `done` says so or `timeout` passes.
    pub fn collect(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> Vec<Record> {
        let settings = KafkaSettings {
            brokers: self.addr.clone(),
            group_id: format!("test-reader-{}", std::process::id()),
            ..Default::default()
        };
        let reader = TopicReader::open(&settings, &[topic], StartAt::Beginning, timeout).unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while Instant::now() < deadline && !done(&out) {
            if let Some(rec) = reader.next(Duration::from_millis(100)) {
                out.push(Record(rec));
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record read back from an output topic, with the typed views tests check.
#[derive(Debug, Clone)]
pub struct Record(pub RawRecord);

impl Record {
    pub fn key(&self) -> String {
        String::from_utf8_lossy(self.0.key.as_deref().unwrap_or_default()).to_string()
    }

    pub fn payload(&self) -> &[u8] {
        self.0.value.as_deref().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn response(&self) -> Response {
        serde_json::from_slice(self.payload()).expect("a response record")
    }

    pub fn alert(&self) -> Alert {
        serde_json::from_slice(self.payload()).expect("an alert record")
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        serde_json::from_slice(self.payload()).expect("a metrics snapshot")
    }
}

/// The real `teddyflow run` binary against `broker`.
pub struct Processor {
    child: Child,
    pub log: PathBuf,
}

impl Processor {
    pub fn start(broker: &Broker, name: &str, sets: &[&str]) -> Processor {
        Self::start_with(broker, name, sets, &[])
    }

    /// A timely cluster of two processes on this host (a hostfile of two free ports).
    pub fn start_pair(broker: &Broker, name: &str, sets: &[&str]) -> [Processor; 2] {
        let hostfile = scratch(name).join("hosts");
        let ports = [free_port(), free_port()];
        let hosts = format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1]);
        std::fs::write(&hostfile, hosts).unwrap();
        let h = hostfile.to_str().unwrap();
        ["0", "1"].map(|p| Self::start_with(broker, name, sets, &["-n", "2", "-p", p, "-h", h]))
    }

    /// Like `start`, with extra command-line arguments (e.g. timely's `-n -p -h`).
    pub fn start_with(broker: &Broker, name: &str, sets: &[&str], args: &[&str]) -> Processor {
        // Processes started in the same millisecond must not share a log file.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = scratch(name).join(format!("processor-{n}-{}.log", now_ms()));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teddyflow"));
        cmd.arg("run")
            .arg("--config")
            .arg(repo().join("configs/teddyflow.toml"))
            .args(["--brokers", &broker.addr])
            .args(model_sets())
            .args([
                "--set",
                "engine.metrics_interval_ms=1000",
                "--set",
                "engine.commit_interval_ms=200",
                // Tests run processors side by side: each serves /metrics on a port of its own.
                "--set",
                "engine.http_addr=\"127.0.0.1:0\"",
            ]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        cmd.args(args);
        let child = cmd
            // TEDDYFLOW_TEST_LOG=debug,... to see more of a failing test's processor.
            .env(
                "RUST_LOG",
                std::env::var("TEDDYFLOW_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start teddyflow run");
        Processor {
            child,
            log: log_path,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL: no drain, no final commit
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "teddyflow did not stop after SIGTERM; log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the process ended, if it has (a crash leaves no line in the log).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Reference texts of the LibriVox clips, by clip name.
pub fn librivox() -> Vec<teddyflow_connectors::file::Clip> {
    teddyflow_connectors::file::clips_in_dir(Path::new(LIBRIVOX))
        .expect("pocketsphinx-testdata installed (scripts/setup.sh)")
}

/// llama.cpp's own OpenAI-compatible HTTP server (the PyPI wheel xllamacpp, installed by
/// `scripts/setup.d/50-llm-server.sh`), serving the SmolLM2 GGUF on a free port, started by
/// `scripts/llm_server.py`. Killed when dropped.
pub struct LlmServer {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl LlmServer {
    /// Start it and wait until `/health` answers (model loaded).
    pub fn start(name: &str) -> LlmServer {
        let python = assets().join("venv-llm-server/bin/python");
        assert!(
            python.exists(),
            "{} missing: run scripts/setup.sh",
            python.display()
        );
        let model = assets().join("models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let port = free_port();
        let log = scratch(name).join(format!("llm-server-{port}.log"));
        let child = Command::new(python)
            .arg(repo().join("scripts/llm_server.py"))
            .args([
                "--port",
                &port.to_string(),
                "--threads",
                "2",
                "--parallel",
                "2",
            ])
            .arg("--model")
            .arg(model)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("start scripts/llm_server.py");
        let mut server = LlmServer {
            child: Some(child),
            port,
            log,
        };
        server.wait_healthy(Duration::from_secs(60));
        server
    }

    fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.health() {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "LLM server not healthy ({exited:?}); log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET /health` answers 200.
    pub fn health(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        let mut answer = String::new();
        s.write_all(req.as_bytes()).is_ok()
            && s.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    /// What `answering.openai.base_url` should be.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Chat completions the server started (llama.cpp logs one line per task it launches).
    pub fn completions(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("launch_slot_")).count()
    }

    /// SIGKILL: the server dies as a crashed one would, connections refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.kill();
    }
}
