//! `teddyflow bench e2e` against a real broker: the bench starts real processors, and its
//! figures come from responses matched to what it sent. Missing responses fail it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{repo, serial, Broker};

/// `teddyflow bench e2e --json` against `broker`, with the test's models and data.
fn bench(broker: &Broker, logs: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teddyflow"))
        .args(["bench", "e2e", "--json", "--brokers", &broker.addr])
        .arg("--log-dir")
        .arg(logs)
        .args(common::model_sets())
        .args(extra)
        .current_dir(repo())
        .output()
        .expect("run teddyflow bench e2e")
}

#[test]
fn bench_e2e_matches_every_response_and_reports_consistent_latencies() {
    let _guard = serial();
    let broker = Broker::start("e2e-bench");
    let logs = common::scratch("e2e-bench").join("bench");
    let args = [
        "--conversations",
        "2",
        "--utterances",
        "4",
        "--rate",
        "2",
        "--response-timeout-s",
        "120",
    ];
    let out = bench(&broker, &logs, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench e2e failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));

    let run = &report["runs"][0];
    assert_eq!(run["sent"], 4, "{run}");
    assert_eq!(run["matched"], 4, "{run}");
    assert_eq!(run["missing"], 0, "{run}");
    let total = run["latency_ms"]["total"]["p50"].as_f64().unwrap();
    let end_to_end = run["latency_ms"]["end_to_end"]["p50"].as_f64().unwrap();
    assert!(total > 0.0, "total p50 {total}");
    // The bench's clock also holds the producer, the broker and the consumer.
    assert!(
        total < end_to_end,
        "total p50 {total} ms not below end to end p50 {end_to_end} ms"
    );
    assert_eq!(run["stages"]["asr"]["count"], 4, "{run}");
    assert!(run["utterances_per_s"].as_f64().unwrap() > 0.0);
    assert!(run["overhead"]["model_ms"]["mean"].as_f64().unwrap() > 0.0);
    let usage = &run["process_usage"][0];
    assert!(usage["cpu_s"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(
        usage["peak_rss_bytes"].as_u64().unwrap() > 50 << 20,
        "{usage}"
    );
    // Scaling is only reported when several worker counts were compared.
    assert!(report["scaling"].is_null());
}

#[test]
fn bench_e2e_fails_and_names_the_log_when_responses_are_missing() {
    let _guard = serial();
    let broker = Broker::start("e2e-bench-missing");
    let logs = common::scratch("e2e-bench-missing").join("bench");
    // Every utterance is longer than 100 ms, so each one is dead-lettered, not answered.
    let args = [
        "--utterances",
        "2",
        "--warmup",
        "0",
        "--response-timeout-s",
        "3",
        "--set",
        "limits.max_utterance_ms=100",
    ];
    let out = bench(&broker, &logs, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bench must fail:\n{stderr}");
    assert!(
        stderr.contains("2 of 2 responses missing"),
        "stderr:\n{stderr}"
    );
    assert!(stderr.contains("processor-0.log"), "stderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["runs"][0]["deadletters"], 2);
}
