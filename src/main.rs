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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `run` sizes every pool (and candle's) from its core budget itself.
    if !matches!(cli.command, Command::Run(_)) {
        teddyflow_models::pin_rayon_threads();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,symphonia=warn,symphonia_core=warn,symphonia_format_ogg=warn,symphonia_bundle_mp3=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Fleet(args) => cmd::fleet::run(args),
        Command::Tail(args) => cmd::tail::run(args),
        Command::Bench(b) => cmd::bench::run(b),
        Command::Plan(args) => cmd::plan::run(args),
    }
}
