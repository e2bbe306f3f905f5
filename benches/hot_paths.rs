//! Micro-benchmarks of the non-model hot paths: wire parsing, reassembly, decode,
//! resample, response JSON, and the Prometheus telemetry (an update, a scrape's encoding).
//! `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use teddyflow_connectors::fleet::{encode, to_records, Encoded, Utterance};
use teddyflow_connectors::wire::{parse_chunk, RawRecord};
use teddyflow_dataflow::config::Limits;
use teddyflow_dataflow::reassembly::{Outcome, Reassembler};
use teddyflow_models::audio::{self, Codec, DecodeOptions};

const LIBRIVOX_CLIP: &str =
    "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav";

fn raw_records(bytes: &[u8], codec: Codec, chunk: usize) -> Vec<RawRecord> {
    let u = Utterance {
        conversation: "toy-1".into(),
        utterance: "u1".into(),
        child: Some("child-1".into()),
        audio: Encoded {
            codec,
            rate: None,
            channels: 1,
            bytes: bytes.to_vec(),
        },
    };
    to_records(&u, chunk, "teddy.audio", 0)
        .into_iter()
        .enumerate()
        .map(|(i, r)| RawRecord {
            topic: r.topic,
            partition: 0,
            offset: i as i64,
            key: r.key,
            value: Some(r.payload),
            headers: r.headers,
        })
        .collect()
}

fn wire_and_reassembly(c: &mut Criterion) {
    let wav = std::fs::read(LIBRIVOX_CLIP).expect("pocketsphinx-testdata installed");
    let records = raw_records(&wav, Codec::Wav, 4096);
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(wav.len() as u64));
    g.bench_function("parse_chunks_3s_wav_4k_chunks", |b| {
        b.iter(|| {
            for r in &records {
                black_box(parse_chunk(black_box(r), 1 << 20).unwrap());
            }
        })
    });
    let chunks: Vec<_> = records
        .iter()
        .map(|r| parse_chunk(r, 1 << 20).unwrap())
        .collect();
    g.bench_function("reassemble_3s_wav_reversed_chunks", |b| {
        b.iter(|| {
            let mut r = Reassembler::<u64>::new(Limits::default(), "teddy.audio");
            let now = Instant::now();
            let mut out = Vec::new();
            for ch in chunks.iter().rev() {
                out.extend(r.push(ch.clone(), 0, now, |_, _| {}));
            }
            assert!(matches!(out[..], [Outcome::Ready(..)]));
        })
    });
    g.finish();
}

fn decode_and_resample(c: &mut Criterion) {
    let wav = std::fs::read(LIBRIVOX_CLIP).expect("pocketsphinx-testdata installed");
    let flac = encode(&wav, Codec::Flac).expect("sox installed").bytes;
    let mp3 = encode(&wav, Codec::Mp3).expect("sox installed").bytes;
    let mut g = c.benchmark_group("decode_3s");
    for (name, codec, bytes) in [
        ("wav", Codec::Wav, &wav),
        ("flac", Codec::Flac, &flac),
        ("mp3", Codec::Mp3, &mp3),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| audio::decode(black_box(bytes), &DecodeOptions::new(codec)).unwrap())
        });
    }
    g.finish();
    let pcm = audio::decode(&wav, &DecodeOptions::new(Codec::Wav))
        .unwrap()
        .samples;
    let at_22k = audio::resample(&pcm, 16_000, 22_050);
    c.bench_function("resample_3s_22050_to_16000", |b| {
        b.iter(|| audio::resample(black_box(&at_22k), 22_050, 16_000))
    });
}

fn response_json(c: &mut Criterion) {
    c.bench_function("response_json", |b| {
        b.iter(|| {
            serde_json::json!({
                "conversation": "toy-1", "utterance": "u1", "child": "child-1",
                "transcript": black_box("he was not an ill disposed young man"),
                "language": "en", "audio_ms": 2990, "incomplete": false, "model": "tiny.en",
                "timings_ms": {"decode": 1.2, "asr": 180.0, "total": 190.0},
                "source": [{"topic": "teddy.audio", "partition": 0, "first_offset": 1, "last_offset": 12}],
            })
            .to_string()
        })
    });
}

/// What the graph pays per utterance for Prometheus (one counter, one histogram
/// observation per stage) and what one scrape costs to encode, with every family present.
fn telemetry(c: &mut Criterion) {
    use teddyflow_connectors::http::{AlertKind, DeadLetterReason, Telemetry};
    use teddyflow_dataflow::stage::{self, Kind};
    let timed: Vec<&'static str> = stage::ALL
        .into_iter()
        .filter(|s| s.kind() != Kind::Untimed)
        .map(|s| s.name())
        .collect();
    let t = Telemetry::new(2, true);
    for (i, stage) in timed.iter().enumerate() {
        t.stage_ms(stage, i as f64 * 10.0);
    }
    t.deadletter(DeadLetterReason::Decode);
    t.alert(AlertKind::Unsafe);
    t.lag(&(0..8).map(|p| (p, 3)).collect());
    c.bench_function("telemetry_utterance", |b| {
        b.iter(|| {
            t.utterance_done();
            for stage in &timed {
                t.stage_ms(stage, black_box(120.0));
            }
            t.in_flight(0, black_box(3));
        })
    });
    c.bench_function("telemetry_scrape_encode", |b| b.iter(|| t.encode().len()));
    // A whole scrape over loopback: connect, GET /metrics, read the body.
    let server = teddyflow_connectors::http::HttpServer::telemetry(
        "127.0.0.1:0",
        t.clone(),
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    let addr = server.local_addr();
    c.bench_function("telemetry_scrape_http", |b| {
        b.iter(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut body = Vec::new();
            s.read_to_end(&mut body).unwrap();
            body.len()
        })
    });
}

criterion_group!(
    benches,
    wire_and_reassembly,
    decode_and_resample,
    response_json,
    telemetry
);
criterion_main!(benches);
