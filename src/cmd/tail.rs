//! `teddyflow tail`: print the output topics as they arrive. For the demo and for people
//! debugging a deployment: it prints transcripts, so it is a console tool, never a log.

use std::time::{Duration, Instant};

use clap::Args;
use teddyflow_connectors::kafka::{KafkaSettings, StartAt, TopicReader};
use teddyflow_connectors::wire::RawRecord;
use teddyflow_dataflow::outputs::{Alert, MetricsSnapshot, Response};
use teddyflow_dataflow::stage::Stage;

#[derive(Args, Debug)]
pub struct TailArgs {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topics to print.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "teddy.responses,teddy.metrics,teddy.deadletter"
    )]
    topics: Vec<String>,
    /// Stop after this many response records (0: never).
    #[arg(long, default_value_t = 0)]
    responses: usize,
    /// Stop after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    seconds: u64,
    /// Print whole JSON records instead of one-line summaries.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TailArgs) -> anyhow::Result<()> {
    let settings = KafkaSettings {
        brokers: args.brokers.clone(),
        group_id: format!("teddyflow-tail-{}", std::process::id()),
        ..Default::default()
    };
    // The processor creates its topics at start-up; a tail started beside it waits for them.
    let topics: Vec<&str> = args.topics.iter().map(String::as_str).collect();
    let wait = Duration::from_secs(60);
    let reader = TopicReader::open(&settings, &topics, StartAt::Beginning, wait)?;
    let started = Instant::now();
    let mut responses = 0;
    loop {
        if args.seconds > 0 && started.elapsed() >= Duration::from_secs(args.seconds) {
            break;
        }
        if args.responses > 0 && responses >= args.responses {
            break;
        }
        let Some(rec) = reader.next(Duration::from_millis(200)) else {
            continue;
        };
        let topic = rec.topic.as_str();
        if topic.contains("responses") {
            responses += 1;
        }
        if args.json {
            let body = String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default());
            println!("{topic}\t{body}");
        } else {
            println!("{}", summary(&rec));
        }
    }
    Ok(())
}

/// The reply of a response, on its own line: what teddy said and how soon it started speaking.
fn reply_line(r: &Response) -> String {
    let Some(reply) = &r.reply else {
        return String::new();
    };
    let first_audio = r
        .timing(Stage::FirstAudio)
        .map_or("-".to_string(), |ms| format!("{ms:.0}"));
    format!(
        "\n  [reply] ({} {}, {:?}{}) first_audio={first_audio}ms: {}",
        reply.language,
        reply.voice,
        reply.origin,
        if reply.fallback { ", replaced" } else { "" },
        reply.text
    )
}

fn response_line(r: &Response) -> String {
    let understood = r.understanding.as_ref().map_or(String::new(), |u| {
        format!(" {}/{}", u.safety.verdict, u.emotion.label)
    });
    let ms = |s: Stage| r.timing(s).unwrap_or(0.0);
    format!(
        "[response] {}/{} audio={}ms asr={:.0}ms total={:.0}ms{understood}: {:?}",
        r.conversation,
        r.utterance,
        r.audio_ms,
        ms(Stage::Asr),
        ms(Stage::Total),
        r.transcript
    ) + &reply_line(r)
}

fn alert_line(a: &Alert) -> String {
    format!(
        "[alert] {}/{} {} {:?} score={:.2}: {:?}",
        a.conversation, a.utterance, a.kind, a.categories, a.score, a.excerpt
    )
}

fn metrics_line(m: &MetricsSnapshot) -> String {
    let p = |s: Stage| {
        m.stages
            .get(&s)
            .map_or((0.0, 0.0), |x| (x.p50_ms, x.p95_ms))
    };
    let (asr, first) = (p(Stage::Asr), p(Stage::FirstAudio));
    format!(
        "[metrics] worker={} records_in={} done={} deadletters={} alerts={} lag={} rss={}MiB asr p50/p95={:.0}/{:.0}ms first_audio p50/p95={:.0}/{:.0}ms",
        m.worker,
        m.counts.records_in,
        m.counts.utterances_done,
        m.counts.deadletters,
        m.counts.alerts,
        m.consumer_lag,
        m.rss_bytes >> 20,
        asr.0,
        asr.1,
        first.0,
        first.1
    )
}

fn summary(rec: &RawRecord) -> String {
    let body = rec.value.as_deref().unwrap_or_default();
    let topic = rec.topic.as_str();
    let parsed = if topic.contains("responses") {
        serde_json::from_slice(body).map(|r| response_line(&r))
    } else if topic.contains("alerts") {
        serde_json::from_slice(body).map(|a| alert_line(&a))
    } else if topic.contains("metrics") {
        serde_json::from_slice(body).map(|m| metrics_line(&m))
    } else {
        let error = rec
            .header("error")
            .map(|v| String::from_utf8_lossy(v).to_string())
            .unwrap_or_default();
        return format!("[{topic}] {} bytes: {error}", body.len());
    };
    parsed.unwrap_or_else(|e| format!("[{topic}] unreadable record: {e}"))
}
