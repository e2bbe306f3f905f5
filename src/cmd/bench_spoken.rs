//! `teddyflow bench safety --spoken FILE`: the child-safety check as the pipeline runs it on
//! speech. Every labelled line is spoken by espeak-ng voices (a child-like grid by default),
//! heard by the speech-to-text engines of the config, as the hearing stage would route a
//! child without a profile, and judged on what was heard, as the understanding stage judges
//! it. Prints recall (unsafe + needs_care) and false positives (safe lines) beside the same
//! lines judged as text, so what mishearing costs is one subtraction.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use teddyflow_dataflow::outputs::Heard;
use teddyflow_dataflow::stages::hear::Listeners;
use teddyflow_dataflow::stages::understand;
use teddyflow_models::eval::{self, SafetyCase, SafetyReport};
use teddyflow_models::safety::{SafetyModel, SafetyVerdict, Verdict};
use teddyflow_models::spoken::{self, SpokenClip};
use teddyflow_models::wer;

use super::bench::{print_report, SafetyArgs};

/// One spoken line as it was heard: the format of `data/safety_heard.jsonl`.
#[derive(Serialize)]
struct HeardRow<'a> {
    /// What the engine heard.
    text: &'a str,
    /// The spoken line's first category (or `safe`): a training example's label.
    category: String,
    verdict: String,
    categories: &'a [String],
    /// The line that was spoken.
    spoken: &'a str,
    voice: &'a str,
    pitch: u8,
    rate: u32,
    engine: &'a str,
    model: &'a str,
    confidence: f32,
}

#[derive(Serialize)]
struct SpokenReport {
    engine: String,
    model: String,
    lines: usize,
    clips: usize,
    /// Word error rate of what was heard against the lines.
    wer: f64,
    mean_confidence: f64,
    /// Clips in which no words were heard.
    silent: usize,
    /// Mean speech-to-text time per clip, ms (machine load shows here).
    mean_asr_ms: f64,
    /// `asr.second_opinion`: the second English engine whose transcript is judged too.
    #[serde(skip_serializing_if = "Option::is_none")]
    second_opinion: Option<SecondReport>,
    /// The first engine's other readings (`asr.moonshine.beam` > 1), judged too.
    #[serde(skip_serializing_if = "Option::is_none")]
    alternatives: Option<AlternativesReport>,
    voices: Vec<String>,
    pitches: Vec<u8>,
    rates: Vec<u32>,
    /// The same lines judged as text.
    text_recall: f32,
    text_false_positive_rate: f32,
    /// Verdicts on what was heard, one per clip.
    heard: SafetyReport,
}

/// What the second engine heard, on its own.
#[derive(Serialize)]
struct SecondReport {
    engine: String,
    model: String,
    wer: f64,
    /// Its speech-to-text time per clip, ms: what a second opinion adds per utterance.
    mean_asr_ms: f64,
    /// What its transcript flagged that the first engine's did not.
    #[serde(flatten)]
    added: Added,
}

/// What the first engine's other readings added.
#[derive(Serialize)]
struct AlternativesReport {
    /// Other readings per clip, on average.
    mean_per_clip: f64,
    /// What they flagged that the first transcript did not.
    #[serde(flatten)]
    added: Added,
}

/// Clips another hearing flagged that the hearings judged before it did not (gold unsafe
/// or needs_care / gold safe).
#[derive(Serialize, Default, Clone, Copy)]
struct Added {
    added_flags: usize,
    added_false_flags: usize,
}

impl Added {
    /// One clip: `before` is the verdict without the hearing, `after` with it.
    fn count(&mut self, gold: Verdict, before: Verdict, after: Verdict) {
        if before == Verdict::Safe && after != Verdict::Safe {
            match gold {
                Verdict::Safe => self.added_false_flags += 1,
                _ => self.added_flags += 1,
            }
        }
    }
}

impl std::fmt::Display for SpokenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "spoken: {} lines x {} voices = {} clips, heard by {} {} (WER {:.1}%, confidence {:.2}, {} silent, {:.0} ms/clip)",
            self.lines,
            self.clips / self.lines.max(1),
            self.clips,
            self.engine,
            self.model,
            self.wer * 100.0,
            self.mean_confidence,
            self.silent,
            self.mean_asr_ms
        )?;
        if let Some(s) = &self.second_opinion {
            writeln!(
                f,
                "second opinion: {} {} (WER {:.1}%, {:.0} ms/clip): flagged {} more lines rightly, {} wrongly",
                s.engine,
                s.model,
                s.wer * 100.0,
                s.mean_asr_ms,
                s.added.added_flags,
                s.added.added_false_flags
            )?;
        }
        if let Some(a) = &self.alternatives {
            writeln!(
                f,
                "other readings: {:.1} per clip: flagged {} more lines rightly, {} wrongly",
                a.mean_per_clip, a.added.added_flags, a.added.added_false_flags
            )?;
        }
        writeln!(
            f,
            "voices {:?} pitches {:?} rates {:?}",
            self.voices, self.pitches, self.rates
        )?;
        writeln!(
            f,
            "as text:  unsafe + needs_care recall {:.1}%, false positives on safe {:.1}%",
            self.text_recall * 100.0,
            self.text_false_positive_rate * 100.0
        )?;
        writeln!(
            f,
            "as heard: unsafe + needs_care recall {:.1}%, false positives on safe {:.1}%",
            self.heard.flagged_recall * 100.0,
            self.heard.safe_false_positive_rate * 100.0
        )?;
        writeln!(f)?;
        write!(f, "{}", self.heard)
    }
}

pub fn run(args: &SafetyArgs, file: &Path) -> anyhow::Result<()> {
    let config = args.config()?;
    let every = args.every.max(1);
    let cases: Vec<SafetyCase> = eval::read_jsonl(file)?.into_iter().step_by(every).collect();
    anyhow::ensure!(!cases.is_empty(), "no lines in {}", file.display());
    let gold = eval::gold_verdicts(&cases, file)?;
    let listeners = Listeners::load(&config)?;
    let u = &config.understanding;
    let safety = SafetyModel::load(&config.models.dir, &u.data_dir)?;
    let grid = args.voices.grid();
    let texts: Vec<String> = cases.iter().map(|c| c.text.clone()).collect();
    let clips = spoken::speak_sentences(&texts, &grid, args.voices.per_sentence)?;
    let per = clips.len() / cases.len();
    let mut save = match &args.save_heard {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| path.display().to_string())?,
        )),
        None => None,
    };
    let (mut heard_cases, mut verdicts) = (Vec::new(), Vec::new());
    let (mut edits, mut words, mut confidence, mut silent) = (0, 0, 0.0, 0);
    let mut asr_s = 0.0;
    let mut second = SecondTally::default();
    let (mut readings, mut by_readings) = (0, Added::default());
    for (i, clip) in clips.iter().enumerate() {
        let case = &cases[i / per];
        let started = Instant::now();
        let mut heard = listeners.hear(&clip.pcm, None)?;
        asr_s += started.elapsed().as_secs_f64();
        // Each hearing is judged once, in turn: the transcript, the first engine's other
        // readings, the second engine's transcript (what `understand::judge` does at once).
        let plain = safety.check(heard.english());
        let plain_verdict = plain.verdict;
        let alone = understand::with_readings(&safety, plain, heard.other_readings());
        let alone_verdict = alone.verdict;
        readings += heard.other_readings().len();
        by_readings.count(gold[i / per], plain_verdict, alone_verdict);
        let started = Instant::now();
        heard.second_opinion = listeners.hear_second(&clip.pcm)?;
        second.asr_s += started.elapsed().as_secs_f64();
        let verdict = understand::with_readings(&safety, alone, &heard.second_opinion);
        second.count(
            &clip.text,
            &heard,
            gold[i / per],
            alone_verdict,
            verdict.verdict,
        );
        let (e, n) = wer::word_errors(&clip.text, &heard.transcript);
        (edits, words) = (edits + e, words + n);
        confidence += heard.asr.confidence as f64;
        silent += usize::from(heard.is_silent());
        // A clip heard as nothing teaches nothing (and an empty "profanity" would teach harm).
        if let Some(out) = save.as_mut().filter(|_| !heard.is_silent()) {
            let row = heard_row(case, clip, &heard, file)?;
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        }
        let mut second = match &heard.second_opinion {
            Some(t) => format!(" / second {t:?}"),
            None => String::new(),
        };
        if !heard.alternatives.is_empty() {
            second += &format!(" / others {:?}", heard.alternatives);
        }
        heard_cases.push(SafetyCase {
            text: format!(
                "{}  =>  {:?}{second} [{} p{} r{}]",
                case.text, heard.transcript, clip.voice, clip.pitch, clip.rate_wpm
            ),
            ..case.clone()
        });
        verdicts.push(verdict);
    }
    if let Some(mut out) = save {
        out.flush()?;
    }
    let text: Vec<SafetyVerdict> = cases.iter().map(|c| safety.check(&c.text)).collect();
    let shown = file.display().to_string();
    let as_text = eval::safety_report(&shown, &cases, &text, 0.0)?;
    let n = clips.len().max(1) as f64;
    let mean_ms = (asr_s * 1e3 / n) as f32;
    let report = SpokenReport {
        engine: listeners.english.engine().to_string(),
        model: listeners.english.model().to_string(),
        lines: cases.len(),
        clips: clips.len(),
        wer: edits as f64 / words.max(1) as f64,
        mean_confidence: confidence / n,
        silent,
        mean_asr_ms: asr_s * 1e3 / n,
        second_opinion: listeners.second.as_ref().map(|e| SecondReport {
            engine: e.engine().to_string(),
            model: e.model().to_string(),
            wer: second.edits as f64 / second.words.max(1) as f64,
            mean_asr_ms: second.asr_s * 1e3 / n,
            added: second.added,
        }),
        alternatives: (readings > 0).then(|| AlternativesReport {
            mean_per_clip: readings as f64 / n,
            added: by_readings,
        }),
        voices: grid.voices,
        pitches: grid.pitches,
        rates: grid.rates,
        text_recall: as_text.flagged_recall,
        text_false_positive_rate: as_text.safe_false_positive_rate,
        heard: eval::safety_report(&shown, &heard_cases, &verdicts, mean_ms)?,
    };
    print_report(&report, args.json)
}

/// Running counts for [`SecondReport`].
#[derive(Default)]
struct SecondTally {
    asr_s: f64,
    edits: usize,
    words: usize,
    added: Added,
}

impl SecondTally {
    /// One clip: `alone` is the verdict on the first transcript, `both` on the two.
    fn count(&mut self, spoken: &str, heard: &Heard, gold: Verdict, alone: Verdict, both: Verdict) {
        let Some(text) = &heard.second_opinion else {
            return;
        };
        let (e, n) = wer::word_errors(spoken, text);
        (self.edits, self.words) = (self.edits + e, self.words + n);
        self.added.count(gold, alone, both);
    }
}

fn heard_row<'a>(
    case: &'a SafetyCase,
    clip: &'a SpokenClip,
    heard: &'a Heard,
    file: &Path,
) -> anyhow::Result<HeardRow<'a>> {
    let verdict = eval::gold_verdicts(std::slice::from_ref(case), file)?[0];
    Ok(HeardRow {
        text: &heard.transcript,
        category: case
            .categories
            .first()
            .cloned()
            .unwrap_or_else(|| "safe".into()),
        verdict: verdict.to_string(),
        categories: &case.categories,
        spoken: &case.text,
        voice: &clip.voice,
        pitch: clip.pitch,
        rate: clip.rate_wpm,
        engine: &heard.asr.engine,
        model: &heard.asr.model,
        confidence: heard.asr.confidence,
    })
}
