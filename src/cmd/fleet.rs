//! `teddyflow fleet`: a simulated fleet of toys speaking to the audio topic.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use teddyflow_connectors::file::clips_in_dir;
use teddyflow_connectors::fleet::{
    default_voices, encode, profile_record, synthesize, to_records, Utterance, CHILD_NAMES,
    CHILD_PHRASES,
};
use teddyflow_connectors::kafka::{ensure_topics, AckedWriter, KafkaSettings, TopicSpec};
use teddyflow_connectors::wire::Codec;

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Audio topic.
    #[arg(long, default_value = "teddy.audio")]
    topic: String,
    /// Partitions if the topic has to be created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Number of toys (conversations).
    #[arg(long, default_value_t = 3)]
    conversations: usize,
    /// Utterances each toy sends.
    #[arg(long, default_value_t = 3)]
    utterances: usize,
    /// Utterances per second, whole fleet.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Codecs to cycle through: pcm_s16le, wav, flac, ogg, mp3.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wav,flac,ogg,mp3,pcm_s16le"
    )]
    codecs: Vec<Codec>,
    /// Chunk size in bytes.
    #[arg(long, default_value_t = 8192)]
    chunk_bytes: usize,
    /// File with one phrase per line (default: built-in child phrases), spoken by espeak-ng.
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Send these recordings instead of synthesized speech (clips with reference text).
    #[arg(long)]
    wav_dir: Option<PathBuf>,
    /// Prefix of conversation ids, so runs do not collide.
    #[arg(long)]
    run_id: Option<String>,
    /// Compacted topic of child profiles; each simulated child gets one before speaking
    /// (every fourth child's profile asks for Spanish replies).
    #[arg(long, default_value = "teddy.profiles")]
    profiles_topic: String,
    /// Do not write profiles (children are then answered with the defaults).
    #[arg(long)]
    no_profiles: bool,
}

/// What one toy says: the audio as WAV and, when known, the words.
struct Speech {
    wav: Vec<u8>,
    text: String,
}

pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let settings = KafkaSettings {
        brokers: args.brokers.clone(),
        ..Default::default()
    };
    ensure_topics(
        &settings,
        &[TopicSpec {
            name: args.topic.clone(),
            partitions: args.partitions,
            compacted: false,
        }],
    )?;
    let writer = AckedWriter::open(&settings)?;
    if !args.no_profiles {
        write_profiles(&args, &settings, &writer)?;
    }
    let speech = prepare_speech(&args)?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:x}", teddyflow_dataflow::envelope::now_ms() % 0xfffff));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let started = Instant::now();
    let mut sent = 0usize;
    let mut id = 0u64;
    for u in 0..args.utterances {
        for c in 0..args.conversations {
            let n = u * args.conversations + c;
            let s = &speech[n % speech.len()];
            let codec = args.codecs[n % args.codecs.len()];
            let utterance = Utterance {
                conversation: format!("toy-{run_id}-{c}"),
                utterance: format!("u{u}"),
                child: Some(format!("child-{c}")),
                audio: encode(&s.wav, codec)?,
            };
            let records = to_records(
                &utterance,
                args.chunk_bytes,
                &args.topic,
                teddyflow_dataflow::envelope::now_ms(),
            );
            for rec in &records {
                id += 1;
                send_with_retry(&writer, id, rec)?;
            }
            println!(
                "sent {}/{} codec={} chunks={} bytes={} text={:?}",
                utterance.conversation,
                utterance.utterance,
                codec,
                records.len(),
                utterance.audio.bytes.len(),
                s.text
            );
            sent += 1;
            wait_acks(&writer)?;
            let due = started + interval * sent as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
    }
    println!(
        "fleet done: {sent} utterances in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_profiles(
    args: &FleetArgs,
    settings: &KafkaSettings,
    writer: &AckedWriter,
) -> anyhow::Result<()> {
    ensure_topics(
        settings,
        &[TopicSpec {
            name: args.profiles_topic.clone(),
            partitions: args.partitions,
            compacted: true,
        }],
    )?;
    for c in 0..args.conversations {
        let language = if c % 4 == 3 { "es" } else { "en" };
        let name = CHILD_NAMES[c % CHILD_NAMES.len()];
        let age = 4 + (c % 5) as u8;
        let rec = profile_record(
            &args.profiles_topic,
            &format!("child-{c}"),
            name,
            age,
            language,
        );
        send_with_retry(writer, (c + 1) as u64, &rec)?;
    }
    wait_acks(writer)?;
    println!("profiles written for {} children", args.conversations);
    Ok(())
}

fn prepare_speech(args: &FleetArgs) -> anyhow::Result<Vec<Speech>> {
    if let Some(dir) = &args.wav_dir {
        return clips_in_dir(dir)?
            .into_iter()
            .map(|clip| {
                let wav =
                    std::fs::read(&clip.path).with_context(|| clip.path.display().to_string())?;
                Ok(Speech {
                    wav,
                    text: clip.reference,
                })
            })
            .collect();
    }
    let texts: Vec<String> = match &args.texts {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => CHILD_PHRASES.iter().map(|s| s.to_string()).collect(),
    };
    anyhow::ensure!(!texts.is_empty(), "no phrases to speak");
    let voices = default_voices();
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let wav = synthesize(text, &voices[i % voices.len()])?;
            Ok(Speech {
                wav,
                text: text.clone(),
            })
        })
        .collect()
}

pub(crate) fn send_with_retry(
    writer: &AckedWriter,
    id: u64,
    rec: &teddyflow_connectors::OutRecord,
) -> anyhow::Result<()> {
    loop {
        match writer.send(id, rec) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "producer busy");
                check(writer.poll())?;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub(crate) fn check(deliveries: Vec<teddyflow_connectors::kafka::Delivery>) -> anyhow::Result<()> {
    for d in deliveries {
        if let Err(e) = d.result {
            anyhow::bail!("a chunk was not delivered: {e}");
        }
    }
    Ok(())
}

/// Wait until the broker has acknowledged everything sent so far.
pub(crate) fn wait_acks(writer: &AckedWriter) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while writer.in_flight() > 0 {
        check(writer.poll())?;
        anyhow::ensure!(
            Instant::now() < deadline,
            "broker did not acknowledge chunks within 30 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    check(writer.poll())
}
