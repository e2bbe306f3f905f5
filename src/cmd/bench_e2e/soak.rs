//! `teddyflow bench soak`: a steady mix of valid utterances and hostile records against a
//! real processor for a long time, printing over time what a production user watches —
//! answered, dead-lettered, lost, in flight, RSS, consumer lag — and failing if anything
//! valid is lost or any bad record is not dead-lettered exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use teddyflow_connectors::fleet::{to_records, Utterance, CHILD_PHRASES};
use teddyflow_connectors::kafka::{ensure_topics, AckedWriter, KafkaSettings};
use teddyflow_connectors::wire::{chunk_headers, ChunkHeaders, Codec, OutRecord};
use teddyflow_dataflow::envelope::now_ms;

use super::collect::Collector;
use super::load::{self, LoadSpec, Planned};
use super::procs::{ProcSpec, Processors};
use super::{broker, voices, RunTopics};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Bootstrap servers. Default: BROKERS= in .assets/run/broker.env, else a local broker
    /// is started with scripts/broker.sh (and stopped at the end).
    #[arg(long)]
    brokers: Option<String>,
    /// How long to send for.
    #[arg(long, default_value_t = 1800.0)]
    duration_s: f64,
    /// Records per second, valid utterances and bad records together.
    #[arg(long, default_value_t = 0.5)]
    rate: f64,
    /// Share of the load that is hostile input (each bad record must become one dead letter).
    #[arg(long, default_value_t = 0.3)]
    bad_share: f64,
    /// Conversations the valid utterances are spread over.
    #[arg(long, default_value_t = 8)]
    conversations: usize,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 30)]
    report_every_s: u64,
    /// A valid utterance unanswered this long after it was sent counts as lost.
    #[arg(long, default_value_t = 120)]
    lost_after_s: u64,
    /// Worker threads of the processor.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seed of the mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    processors: super::ProcessorArgs,
}

/// Hostile but fair input, each kind one record that must come back as one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bad {
    NoUtteranceHeader,
    UnknownCodec,
    GarbageFlac,
    OversizedChunk,
    AbsurdRate,
    NoFirstChunk,
}

const BAD: [Bad; 6] = [
    Bad::NoUtteranceHeader,
    Bad::UnknownCodec,
    Bad::GarbageFlac,
    Bad::OversizedChunk,
    Bad::AbsurdRate,
    Bad::NoFirstChunk,
];

pub fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    anyhow::ensure!((0.0..=1.0).contains(&args.bad_share), "--bad-share is 0–1");
    let broker = broker::resolve(args.brokers.as_deref())?;
    let settings = KafkaSettings {
        brokers: broker.addr.clone(),
        ..Default::default()
    };
    let run_id = format!("soak-{:x}", now_ms() % 0xffffff);
    let topics = RunTopics::new(&run_id);
    ensure_topics(&settings, &topics.specs(4))?;
    let spec = LoadSpec {
        conversations: args.conversations,
        codecs: Codec::ALL.to_vec(),
        voices: voices(&[]),
    };
    tracing::info!("synthesizing the valid utterances");
    let speech = load::prepare(&spec, CHILD_PHRASES.len() * 2, &[])?;
    let mut collector = Collector::open(&settings, &topics.outputs())?;
    let log_dir = args
        .processors
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("teddyflow-{run_id}")));
    let mut sets: Vec<String> = topics
        .names
        .iter()
        .map(|(kind, name)| format!("topics.{kind}=\"{name}\""))
        .collect();
    sets.push(format!("kafka.group_id=\"{run_id}\""));
    sets.push("engine.metrics_interval_ms=1000".into());
    sets.extend(args.processors.set.iter().cloned());
    let proc_spec = ProcSpec {
        brokers: broker.addr.clone(),
        workers: args.workers,
        processes: 1,
        config: args.processors.config.clone(),
        sets,
        log_dir,
        cpu_lists: Vec::new(),
    };
    let mut procs = Processors::start(&proc_spec)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    procs.wait_ready(
        &mut collector,
        args.workers,
        Duration::from_secs(300),
        &stop,
    )?;
    let mut soak = Soak::new(&args, settings, topics.name("audio").to_string(), speech)?;
    soak.run(&mut collector, &mut procs)
}

struct Soak<'a> {
    args: &'a SoakArgs,
    writer: AckedWriter,
    audio_topic: String,
    speech: Vec<Planned>,
    rng: StdRng,
    next_id: u64,
    /// Valid utterances sent and not yet answered: id → when sent.
    waiting: HashMap<(String, String), Instant>,
    sent_good: usize,
    sent_bad: usize,
    lost: usize,
    rss_first: Option<u64>,
}

impl<'a> Soak<'a> {
    fn new(
        args: &'a SoakArgs,
        settings: KafkaSettings,
        audio_topic: String,
        speech: Vec<Planned>,
    ) -> anyhow::Result<Self> {
        Ok(Soak {
            args,
            writer: AckedWriter::open(&settings)?,
            audio_topic,
            speech,
            rng: StdRng::seed_from_u64(args.seed),
            next_id: 0,
            waiting: HashMap::new(),
            sent_good: 0,
            sent_bad: 0,
            lost: 0,
            rss_first: None,
        })
    }

    fn run(&mut self, collector: &mut Collector, procs: &mut Processors) -> anyhow::Result<()> {
        let start = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / self.args.rate);
        let every = Duration::from_secs(self.args.report_every_s);
        let (mut next_send, mut next_report) = (start, start + every);
        println!(
            "soak: {:.2} records/s for {:.0} s, {:.0} % hostile; a line every {} s",
            self.args.rate,
            self.args.duration_s,
            self.args.bad_share * 100.0,
            self.args.report_every_s
        );
        let end = start + Duration::from_secs_f64(self.args.duration_s);
        let grace = Duration::from_secs(self.args.lost_after_s);
        while Instant::now() < end + grace && !(Instant::now() >= end && self.waiting.is_empty()) {
            if Instant::now() >= next_send && Instant::now() < end {
                self.send_one()?;
                next_send += gap;
            }
            collector.poll_for(Duration::from_millis(100));
            procs.check_alive()?;
            self.settle(collector);
            if Instant::now() >= next_report {
                self.report(start, collector);
                next_report += every;
            }
        }
        self.lost += self.waiting.len();
        self.report(start, collector);
        self.verdict(collector)
    }

    fn send_one(&mut self) -> anyhow::Result<()> {
        self.next_id += 1;
        let records = if self.rng.gen_bool(self.args.bad_share) {
            self.sent_bad += 1;
            let kind = BAD[self.rng.gen_range(0..BAD.len())];
            vec![bad_record(kind, &self.audio_topic, self.next_id)]
        } else {
            self.sent_good += 1;
            let p = &self.speech[self.rng.gen_range(0..self.speech.len())];
            let u = Utterance {
                conversation: format!("soak-toy-{}", self.next_id % self.args.conversations as u64),
                utterance: format!("u{}", self.next_id),
                child: None,
                audio: p.audio.clone(),
            };
            self.waiting.insert(
                (u.conversation.clone(), u.utterance.clone()),
                Instant::now(),
            );
            to_records(&u, 16 * 1024, &self.audio_topic, now_ms())
        };
        for rec in &records {
            while let Err(e) = self.writer.send(self.next_id, rec) {
                tracing::debug!(error = %e, "soak producer backing off");
                self.writer.poll();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for d in self.writer.poll() {
            if let Err(e) = d.result {
                anyhow::bail!("the soak's own produce failed: {e}");
            }
        }
        Ok(())
    }

    /// Drop answered utterances from the waiting list; count the long-unanswered as lost.
    fn settle(&mut self, collector: &Collector) {
        let limit = Duration::from_secs(self.args.lost_after_s);
        let mut lost = 0;
        self.waiting.retain(|id, sent| {
            if collector.responses.contains_key(id) {
                return false;
            }
            let gone = sent.elapsed() > limit;
            lost += usize::from(gone);
            !gone
        });
        self.lost += lost;
    }

    fn report(&mut self, start: Instant, collector: &Collector) {
        let snaps = collector.metrics.values();
        let (rss, lag, in_flight) = snaps.fold((0u64, 0i64, 0i64), |(r, l, f), m| {
            (r.max(m.rss_bytes), l + m.consumer_lag, f + m.in_flight)
        });
        self.rss_first.get_or_insert(rss);
        let answered = collector.responses.len();
        println!(
            "t={:>6.0}s sent {:>5} valid {:>5} bad | answered {:>5} dead letters {:>5} lost {:>3} | waiting {:>3} in flight {:>3} | rss {:>5} MiB lag {:>4}",
            start.elapsed().as_secs_f64(),
            self.sent_good,
            self.sent_bad,
            answered,
            collector.deadletters,
            self.lost,
            self.waiting.len(),
            in_flight,
            rss >> 20,
            lag
        );
    }

    fn verdict(&self, collector: &Collector) -> anyhow::Result<()> {
        let rss_last = collector
            .metrics
            .values()
            .map(|m| m.rss_bytes)
            .max()
            .unwrap_or(0);
        let first = self.rss_first.unwrap_or(rss_last).max(1);
        let growth = (rss_last as f64 / first as f64 - 1.0) * 100.0;
        println!(
            "soak done: {} valid sent, {} answered, {} lost; {} bad sent, {} dead letters; RSS {} → {} MiB ({growth:+.1} %)",
            self.sent_good,
            collector.responses.len(),
            self.lost,
            self.sent_bad,
            collector.deadletters,
            first >> 20,
            rss_last >> 20
        );
        anyhow::ensure!(
            self.lost == 0,
            "{} valid utterances were never answered",
            self.lost
        );
        anyhow::ensure!(
            collector.deadletters == self.sent_bad,
            "{} bad records sent, {} dead letters",
            self.sent_bad,
            collector.deadletters
        );
        Ok(())
    }
}

/// One hostile record of `kind`, in its own conversation so it cannot touch a valid one.
fn bad_record(kind: Bad, topic: &str, n: u64) -> OutRecord {
    let mut headers = ChunkHeaders {
        utterance: format!("bad-{n}"),
        seq: 0,
        is_final: true,
        codec: Codec::Flac,
        rate: None,
        channels: 1,
        child: None,
        sent_ms: Some(now_ms()),
    };
    let mut payload: Vec<u8> = (0..4000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut rewrite: Option<(&str, &str)> = None;
    match kind {
        Bad::NoUtteranceHeader | Bad::GarbageFlac => {}
        Bad::UnknownCodec => rewrite = Some(("codec", "aac")),
        Bad::OversizedChunk => payload = vec![0u8; 300 * 1024],
        Bad::AbsurdRate => {
            headers.codec = Codec::PcmS16le;
            headers.rate = Some(1_000_000_000);
        }
        Bad::NoFirstChunk => headers.seq = 1,
    }
    let mut hs = chunk_headers(&headers);
    if kind == Bad::NoUtteranceHeader {
        hs.retain(|(k, _)| k != "utterance");
    }
    if let Some((name, value)) = rewrite {
        for (k, v) in hs.iter_mut() {
            if k == name {
                *v = value.as_bytes().to_vec();
            }
        }
    }
    OutRecord {
        topic: topic.into(),
        key: Some(format!("soak-bad-{n}").into_bytes()),
        payload,
        headers: hs,
    }
}
