//! Helpers shared by the speech-to-text engines' tests (`whisper.rs`, `moonshine.rs`).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// LibriVox clips and their transcription, from Debian's pocketsphinx test data.
pub const LIBRIVOX: &str = "/usr/share/pocketsphinx/test/data/librivox";

pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.assets/models")
}

/// Heavy tests take turns: the machine has 2 cores and the timings should mean something.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// (mono f32 samples, sample rate); stereo is averaged.
pub fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = r.spec();
    let raw: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(Result::unwrap).collect(),
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.unwrap() as f32 / scale)
                .collect()
        }
    };
    let ch = spec.channels as usize;
    let mono = raw
        .chunks(ch)
        .map(|f| f.iter().sum::<f32>() / ch as f32)
        .collect();
    (mono, spec.sample_rate)
}

/// (file id, reference text) from the `<s> words </s> (id)` transcription file.
pub fn librivox_refs() -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(Path::new(LIBRIVOX).join("transcription")).ok()?;
    let refs = text
        .lines()
        .filter_map(|l| {
            let (words, id) = l.rsplit_once('(')?;
            let words = words.replace("<s>", "").replace("</s>", "");
            Some((
                id.trim_end_matches(')').trim().to_string(),
                words.trim().to_string(),
            ))
        })
        .collect();
    Some(refs)
}
