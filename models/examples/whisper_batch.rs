//! Decoder time of the LibriVox clips one by one and as one batch (encoder excluded).
//!
//! cargo run --release -p teddyflow-models --example whisper_batch -- [MODELS_DIR]

mod common;

const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

fn main() -> anyhow::Result<()> {
    let model = common::tiny_en()?;
    let mut clips = Vec::new();
    for entry in std::fs::read_dir(LIBRIVOX)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wav") {
            let mut r = hound::WavReader::open(&path)?;
            let pcm: Vec<f32> = r
                .samples::<i16>()
                .map(|s| s.map(|s| s as f32 / 32768.0))
                .collect::<Result<_, _>>()?;
            clips.push(pcm);
        }
    }
    let views: Vec<&[f32]> = clips.iter().map(Vec::as_slice).collect();
    model.transcribe(views[0], None)?;
    for round in 0..3 {
        let alone: f64 = views
            .iter()
            .map(|c| model.transcribe(c, None).map(|t| t.decode_ms))
            .sum::<anyhow::Result<f64>>()?;
        // Wall time of the batch minus its clips' mel and encoder time: cross k/v
        // projections, the batched greedy steps and any fallback.
        let t = std::time::Instant::now();
        let batch = model.transcribe_batch(&views, None);
        let wall = t.elapsed().as_secs_f64() * 1e3;
        let encode: f64 = batch
            .into_iter()
            .map(|t| t.map(|t| t.mel_ms + t.encode_ms))
            .sum::<anyhow::Result<f64>>()?;
        let together = wall - encode;
        println!(
            "round {round}: {} clips decoded one by one {alone:.0} ms, as one batch {together:.0} ms ({:.2}x)",
            views.len(),
            alone / together
        );
    }
    Ok(())
}
