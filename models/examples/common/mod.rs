//! Helpers the model examples share.
#![allow(dead_code)]

/// CPU seconds used by this process so far (all threads), from /proc on Linux, else 0:
/// unlike wall time it hardly changes when other processes compete for the cores.
pub fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after_name
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime (fields 14, 15 of stat) are the 12th and 13th after the command name,
    // in clock ticks of 1/100 s.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// The models folder: the first argument, else `.assets/models`.
pub fn models_dir() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| ".assets/models".into())
}

/// Whisper tiny.en from [`models_dir`], with rayon pinned as the processor pins it.
pub fn tiny_en() -> anyhow::Result<teddyflow_models::whisper::WhisperModel> {
    use teddyflow_models::whisper::{WhisperModel, WhisperVariant};
    teddyflow_models::pin_rayon_threads();
    WhisperModel::load(std::path::Path::new(&models_dir()), WhisperVariant::TinyEn)
}
