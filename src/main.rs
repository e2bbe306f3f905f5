//! `teddyflow`: run the stream processor, simulate a fleet, tail the output topics,
//! benchmark the models and the whole pipeline, and plan a cluster's size.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "teddyflow",
    version,
    about = "Kafka stream processor for a fleet of talking toys"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: audio topic → timely graph → responses, metrics, dead letters.
    Run(cmd::run::RunArgs),
    /// Simulate a fleet of toys producing utterances to the audio topic.
    Fleet(cmd::fleet::FleetArgs),
    /// Print records of the output topics as they arrive (for the demo and for debugging).
    Tail(cmd::tail::TailArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Recommend processes, workers, threads, partitions and batch sizes for a target
    /// utterance rate and latency, from measured stage costs.
    Plan(cmd::plan::PlanArgs),
    /// Serve a live page of the fleet's metrics (counts and latencies, never transcripts).
    Dashboard(cmd::dashboard::DashboardArgs),
}

/// `RUST_LOG` (default `info`), with symphonia silenced unless it is named there. Audio it
/// cannot read comes from toys, not from a fault of ours: it becomes a dead letter with the
/// reason and a `decode` error in metrics, while symphonia itself logs an ERROR ("probe
/// reached EOF") for each such record — hundreds in one storm of bad input.
fn log_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    let base = rust_log.map(str::trim).filter(|s| !s.is_empty());
    let base = base.unwrap_or("info");
    let directives = if base.contains("symphonia") {
        base.to_string()
    } else {
        format!("{base},symphonia=off")
    };
    tracing_subscriber::EnvFilter::try_new(directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,symphonia=off"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `run` sizes every pool (and candle's) from its core budget itself.
    if !matches!(cli.command, Command::Run(_)) {
        teddyflow_models::pin_rayon_threads();
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Fleet(args) => cmd::fleet::run(args),
        Command::Tail(args) => cmd::tail::run(args),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Plan(args) => cmd::plan::run(args),
        Command::Dashboard(args) => cmd::dashboard::run(args),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        // clap checks its own definition (conflicts, groups, names) only when asked.
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use teddyflow_models::audio::{decode, Codec, DecodeOptions};
    use tracing_subscriber::util::SubscriberInitExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 11, defect 7: undecodable client audio must not log ERROR lines from symphonia
    /// (it did, once per bad record: "probe reached EOF"); our own logs still come through.
    #[test]
    fn symphonia_stays_quiet_about_bad_client_audio() {
        let captured = Captured::default();
        let writer = captured.clone();
        // Installs the log -> tracing bridge too: symphonia logs through the `log` crate.
        tracing_subscriber::fmt()
            .with_env_filter(super::log_filter(Some("debug")))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .try_init()
            .expect("the only subscriber in this test binary");
        for codec in [Codec::Wav, Codec::Flac, Codec::Ogg, Codec::Mp3] {
            assert!(decode(b"not audio at all", &DecodeOptions::new(codec)).is_err());
        }
        tracing::error!(target: "teddyflow::probe", "ours");
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("ours"), "{text}");
        assert!(!text.contains("symphonia"), "{text}");
        // Whoever names symphonia in RUST_LOG gets its logs.
        let f = super::log_filter(Some("warn,symphonia_core=debug")).to_string();
        assert!(!f.contains("symphonia=off"), "{f}");
        let f = super::log_filter(None).to_string();
        assert!(f.contains("symphonia=off") && f.contains("info"), "{f}");
    }
}
