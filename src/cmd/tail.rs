//! `teddyflow tail`: print the output topics as they arrive. For the demo and for people
//! debugging a deployment: it prints transcripts, so it is a console tool, never a log.

use std::time::{Duration, Instant};

use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use teddyflow_connectors::kafka::{partition_count, KafkaSettings};

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
    let consumer: BaseConsumer = settings.consumer()?;
    let mut tpl = TopicPartitionList::new();
    for topic in &args.topics {
        for p in 0..wait_for_topic(&consumer, topic, &args.brokers)? {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut responses = 0;
    loop {
        if args.seconds > 0 && started.elapsed() >= Duration::from_secs(args.seconds) {
            break;
        }
        if args.responses > 0 && responses >= args.responses {
            break;
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        let body = msg
            .payload()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let topic = msg.topic();
        if topic.contains("responses") {
            responses += 1;
        }
        if args.json {
            println!("{topic}\t{body}");
        } else {
            println!("{}", summary(topic, &body, &msg));
        }
    }
    Ok(())
}

/// The processor creates its topics at start-up; a tail started beside it waits for them.
pub(crate) fn wait_for_topic(
    consumer: &BaseConsumer,
    topic: &str,
    brokers: &str,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match partition_count(consumer, topic, brokers) {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The reply of a response, on its own line: what teddy said and how soon it started speaking.
fn reply_line(v: &serde_json::Value) -> String {
    let r = &v["reply"];
    let Some(text) = r["text"].as_str() else {
        return String::new();
    };
    format!(
        "\n  [reply] ({} {}, {}{}) first_audio={}ms: {text}",
        r["language"].as_str().unwrap_or("?"),
        r["voice"].as_str().unwrap_or("?"),
        r["origin"].as_str().unwrap_or("?"),
        if r["fallback"].as_bool() == Some(true) {
            ", replaced"
        } else {
            ""
        },
        v["timings_ms"]["first_audio"],
    )
}

fn summary<M: Message>(topic: &str, body: &str, msg: &M) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if topic.contains("responses") {
        let understood = match (
            v["safety"]["verdict"].as_str(),
            v["emotion"]["label"].as_str(),
        ) {
            (Some(verdict), Some(emotion)) => format!(" {verdict}/{emotion}"),
            _ => String::new(),
        };
        format!(
            "[response] {}/{} audio={}ms asr={}ms total={}ms{}: {}",
            v["conversation"].as_str().unwrap_or("?"),
            v["utterance"].as_str().unwrap_or("?"),
            v["audio_ms"],
            v["timings_ms"]["asr"],
            v["timings_ms"]["total"],
            understood,
            v["transcript"]
        ) + &reply_line(&v)
    } else if topic.contains("alerts") {
        format!(
            "[alert] {}/{} {} {} score={}: {}",
            v["conversation"].as_str().unwrap_or("?"),
            v["utterance"].as_str().unwrap_or("?"),
            v["kind"].as_str().unwrap_or("?"),
            v["categories"],
            v["score"],
            v["excerpt"]
        )
    } else if topic.contains("metrics") {
        let asr = &v["stages"]["asr"];
        let first = &v["stages"]["first_audio"];
        format!(
            "[metrics] worker={} records_in={} done={} deadletters={} alerts={} lag={} rss={}MiB asr p50/p95={:.0}/{:.0}ms first_audio p50/p95={:.0}/{:.0}ms",
            v["worker"],
            v["records_in"],
            v["utterances_done"],
            v["deadletters"],
            v["alerts"],
            v["consumer_lag"],
            v["rss_bytes"].as_u64().unwrap_or(0) / (1 << 20),
            asr["p50_ms"].as_f64().unwrap_or(0.0),
            asr["p95_ms"].as_f64().unwrap_or(0.0),
            first["p50_ms"].as_f64().unwrap_or(0.0),
            first["p95_ms"].as_f64().unwrap_or(0.0)
        )
    } else {
        use rdkafka::message::Headers;
        let error = msg
            .headers()
            .and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == "error")
                    .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
            })
            .unwrap_or_default();
        format!(
            "[{topic}] {} bytes: {error}",
            msg.payload().map_or(0, |p| p.len())
        )
    }
}
