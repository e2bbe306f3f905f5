//! Figures from matched responses: latency distributions, per-stage times and the engine
//! overhead. Pure functions over what the responses said, so they are unit-tested.
//!
//! Engine overhead of one utterance (the definition `bench e2e` prints and `plan` uses):
//!
//! ```text
//! model   = the pipeline's critical path (teddyflow_dataflow::stage::PIPELINE):
//!           decode + max(asr, asr_second, acoustic) + understand + answer
//! answer  = |reply ∪ tts| when both report spans (streamed speech overlaps generation),
//!           reply + tts otherwise (either may be absent: answering is optional)
//! overhead = total − model
//! overhead % = Σ overhead / Σ model × 100, over all matched utterances
//! excluding waits % = (Σ overhead − Σ *_wait) / Σ model × 100
//! ```
//!
//! Queue waits (`*_wait`) are not on the model path: a wait is time an utterance spent
//! queued for a model thread, not model compute, so it counts as overhead. At light load nothing queues, and the overhead is the engine's own
//! cost (reassembly hand-off, exchange, join, scheduling); under load it also holds
//! queueing, which is reported beside it (`queue_wait_ms_mean`). `asr_wait` is measured as
//! time since completion minus decode, so it also holds the hand-off to the model pool: at
//! light load the figure with waits is the engine's cost, the one without them a lower
//! bound. Acoustic analysis and the second opinion (`asr_second`) run beside speech-to-text,
//! so only the longest of the three is on the critical path. `total` runs from the final chunk reaching teddyflow to the response
//! being produced (before the broker's ack), so broker round trips are outside it; they are
//! in `outside_engine_ms` (bench-measured end to end − total).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use teddyflow_dataflow::metrics::percentile;
use teddyflow_dataflow::outputs::Response;
use teddyflow_dataflow::stage::{self, Kind, Stage};

/// What one response said about its utterance, plus what the bench measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub timings: BTreeMap<Stage, f64>,
    /// Stage → (start, end) in ms after the utterance completed.
    pub spans: BTreeMap<Stage, (f64, f64)>,
    /// Bench clock: final chunk handed to the producer → response read back, ms.
    pub e2e_ms: f64,
    /// Stage → how many utterances were processed in the same call (dynamic batching).
    pub batches: BTreeMap<Stage, f64>,
}

impl Observed {
    /// Only timings are kept: transcripts never leave the collector.
    pub fn from_response(r: &Response, e2e_ms: f64) -> Observed {
        Observed {
            timings: r.timings_ms.clone(),
            spans: r
                .spans_ms
                .iter()
                .map(|(s, [a, b])| (*s, (*a, *b)))
                .collect(),
            e2e_ms,
            batches: r.batch.iter().map(|(s, n)| (*s, *n as f64)).collect(),
        }
    }

    fn get(&self, stage: Stage) -> f64 {
        self.timings.get(&stage).copied().unwrap_or(0.0)
    }
}

/// Summary of a set of values (nearest-rank percentiles, as the metrics topic uses).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Dist {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        Dist {
            count: v.len(),
            mean,
            p50: percentile(&v, 0.50),
            p95: percentile(&v, 0.95),
            p99: percentile(&v, 0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStat {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Final chunk reaching teddyflow → first reply-speech chunk acked (answering only).
    pub first_audio: Option<Dist>,
    /// Final chunk reaching teddyflow → response produced (the engine's own clock).
    pub total: Dist,
    /// Final chunk handed to the bench's producer → response read by the bench.
    pub end_to_end: Dist,
}

pub fn latency(obs: &[Observed]) -> Latency {
    let of = |key: Stage| -> Vec<f64> {
        obs.iter()
            .filter_map(|o| o.timings.get(&key).copied())
            .collect()
    };
    let first_audio = of(Stage::FirstAudio);
    Latency {
        first_audio: (!first_audio.is_empty()).then(|| Dist::of(&first_audio)),
        total: Dist::of(&of(Stage::Total)),
        end_to_end: Dist::of(&obs.iter().map(|o| o.e2e_ms).collect::<Vec<_>>()),
    }
}

/// Mean and median of every stage in `timings_ms` (waits included, points and whole-path
/// figures not).
pub fn stage_stats(obs: &[Observed]) -> BTreeMap<Stage, StageStat> {
    let mut by_stage: BTreeMap<Stage, Vec<f64>> = BTreeMap::new();
    for o in obs {
        for (stage, ms) in &o.timings {
            if stage.kind() != Kind::Point {
                by_stage.entry(*stage).or_default().push(*ms);
            }
        }
    }
    by_stage
        .into_iter()
        .map(|(stage, values)| {
            let d = Dist::of(&values);
            let stat = StageStat {
                count: d.count,
                mean_ms: d.mean,
                p50_ms: d.p50,
            };
            (stage, stat)
        })
        .collect()
}

/// Mean batch size per batching stage, over the utterances (how full batches ran).
pub fn batch_means(obs: &[Observed]) -> BTreeMap<Stage, f64> {
    let mut acc: BTreeMap<Stage, (f64, f64)> = BTreeMap::new();
    for (stage, size) in obs.iter().flat_map(|o| &o.batches) {
        let e = acc.entry(*stage).or_default();
        e.0 += size;
        e.1 += 1.0;
    }
    acc.into_iter().map(|(k, (sum, n))| (k, sum / n)).collect()
}

/// Model compute on the critical path of one utterance (see the module docs).
pub fn critical_model_ms(o: &Observed) -> f64 {
    match (o.spans.get(&Stage::Reply), o.spans.get(&Stage::Tts)) {
        // Streamed speech overlaps generation: the time covered by either counts once.
        (Some(a), Some(b)) => {
            let answer = union_len(*a, *b);
            stage::critical_path(|s| match s {
                Stage::Reply => answer,
                Stage::Tts => 0.0,
                other => o.get(other),
            })
        }
        _ => stage::critical_path(|s| o.get(s)),
    }
}

fn union_len(a: (f64, f64), b: (f64, f64)) -> f64 {
    let overlap = (a.1.min(b.1) - a.0.max(b.0)).max(0.0);
    (a.1 - a.0).max(0.0) + (b.1 - b.0).max(0.0) - overlap
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overhead {
    /// Model compute on the critical path, per utterance.
    pub model_ms: Dist,
    /// total − model, per utterance.
    pub overhead_ms: Dist,
    /// Σ overhead / Σ model × 100.
    pub percent_of_model: f64,
    /// (Σ overhead − Σ waits) / Σ model × 100: separates queueing under load; a lower
    /// bound of the engine's cost, since waits also hold the hand-off to the model pool.
    pub percent_of_model_excluding_waits: f64,
    /// Mean of the `*_wait` stages: the queueing part of the overhead.
    pub queue_wait_ms_mean: f64,
    /// Bench end to end − total: producer, broker and consumer legs.
    pub outside_engine_ms: Dist,
}

pub fn overhead(obs: &[Observed]) -> Option<Overhead> {
    let with_total: Vec<&Observed> = obs
        .iter()
        .filter(|o| o.timings.contains_key(&Stage::Total))
        .collect();
    if with_total.is_empty() {
        return None;
    }
    let model: Vec<f64> = with_total.iter().map(|o| critical_model_ms(o)).collect();
    let over: Vec<f64> = with_total
        .iter()
        .zip(&model)
        .map(|(o, m)| o.get(Stage::Total) - m)
        .collect();
    let waits: f64 = with_total
        .iter()
        .flat_map(|o| {
            o.timings
                .iter()
                .filter(|(k, _)| k.is_wait())
                .map(|(_, v)| v)
        })
        .sum();
    let outside: Vec<f64> = with_total
        .iter()
        .map(|o| o.e2e_ms - o.get(Stage::Total))
        .collect();
    let model_sum = model.iter().sum::<f64>().max(f64::EPSILON);
    let over_sum: f64 = over.iter().sum();
    Some(Overhead {
        percent_of_model: over_sum / model_sum * 100.0,
        percent_of_model_excluding_waits: (over_sum - waits) / model_sum * 100.0,
        model_ms: Dist::of(&model),
        overhead_ms: Dist::of(&over),
        queue_wait_ms_mean: waits / with_total.len() as f64,
        outside_engine_ms: Dist::of(&outside),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(timings: &[(&str, f64)], spans: &[(&str, f64, f64)], e2e: f64) -> Observed {
        let stage = |k: &str| Stage::parse(k).unwrap();
        Observed {
            timings: timings.iter().map(|(k, v)| (stage(k), *v)).collect(),
            spans: spans.iter().map(|(k, a, b)| (stage(k), (*a, *b))).collect(),
            e2e_ms: e2e,
            batches: BTreeMap::new(),
        }
    }

    #[test]
    fn critical_path_takes_the_longer_parallel_branch_and_skips_waits() {
        // decode 2 + max(asr 300 (asr_wait excluded), acoustic 50) + understand 30
        let o = obs(
            &[
                ("decode", 2.0),
                ("asr_wait", 100.0),
                ("asr", 300.0),
                ("acoustic", 50.0),
                ("understand", 30.0),
                ("total", 460.0),
            ],
            &[],
            0.0,
        );
        assert_eq!(critical_model_ms(&o), 332.0);
        let o = obs(&[("asr", 10.0), ("acoustic", 40.0)], &[], 0.0);
        assert_eq!(critical_model_ms(&o), 40.0);
        // The join waits for a slower second opinion.
        let o = obs(&[("asr", 300.0), ("asr_second", 700.0)], &[], 0.0);
        assert_eq!(critical_model_ms(&o), 700.0);
    }

    #[test]
    fn streamed_reply_and_speech_count_their_overlap_once() {
        // reply [100, 400], tts [250, 500] → union 400; without spans 300 + 250.
        let t = [("reply", 300.0), ("tts", 250.0)];
        let spanned = obs(&t, &[("reply", 100.0, 400.0), ("tts", 250.0, 500.0)], 0.0);
        assert_eq!(critical_model_ms(&spanned), 400.0);
        assert_eq!(critical_model_ms(&obs(&t, &[], 0.0)), 550.0);
        // Disjoint spans: the gap between them is not model time.
        let gap = obs(&t, &[("reply", 0.0, 300.0), ("tts", 350.0, 600.0)], 0.0);
        assert_eq!(critical_model_ms(&gap), 550.0);
    }

    #[test]
    fn overhead_is_total_minus_model_as_a_share_of_model() {
        let a = obs(
            &[
                ("decode", 2.0),
                ("asr", 198.0),
                ("asr_wait", 4.0),
                ("total", 210.0),
            ],
            &[],
            230.0,
        );
        let b = obs(
            &[("decode", 1.0), ("asr", 299.0), ("total", 306.0)],
            &[],
            316.0,
        );
        let o = overhead(&[a, b]).unwrap();
        // model 200 and 300; overhead 10 and 6 → 16 / 500 = 3.2 %
        assert_eq!(o.model_ms.mean, 250.0);
        assert_eq!(o.overhead_ms.max, 10.0);
        assert!((o.percent_of_model - 3.2).abs() < 1e-9);
        // without the 4 ms queue wait: 12 / 500 = 2.4 %
        assert!((o.percent_of_model_excluding_waits - 2.4).abs() < 1e-9);
        assert_eq!(o.queue_wait_ms_mean, 2.0);
        assert_eq!(o.outside_engine_ms.mean, 15.0);
        assert!(overhead(&[obs(&[("asr", 1.0)], &[], 0.0)]).is_none());
    }

    #[test]
    fn latency_and_stage_tables_from_responses() {
        let v = serde_json::json!({
            "conversation": "c", "utterance": "u", "child": null,
            "transcript": "never kept", "language": "en", "audio_ms": 1000,
            "incomplete": false, "model": "tiny.en",
            "timings_ms": {"decode": 1.5, "asr": 200.0, "total": 210.0, "first_audio": 500.0},
            "spans_ms": {"asr": [2.0, 202.0]},
            "batch": {"asr": 3},
            "source": [], "worker": 0, "sent_ms": null, "processed_ms": 0
        });
        let r: Response = serde_json::from_value(v).unwrap();
        let o = Observed::from_response(&r, 250.0);
        assert_eq!(o.spans[&Stage::Asr], (2.0, 202.0));
        let mut alone = o.clone();
        alone.batches.insert(Stage::Asr, 1.0);
        assert_eq!(batch_means(&[o.clone(), alone])[&Stage::Asr], 2.0);
        let l = latency(std::slice::from_ref(&o));
        assert_eq!(l.total.p50, 210.0);
        assert_eq!(l.end_to_end.p50, 250.0);
        assert_eq!(l.first_audio.unwrap().p50, 500.0);
        let s = stage_stats(&[o]);
        assert_eq!(s.keys().collect::<Vec<_>>(), [&Stage::Decode, &Stage::Asr]);
        assert_eq!(s[&Stage::Decode].mean_ms, 1.5);
        assert!(latency(&[]).first_audio.is_none());
    }

    #[test]
    fn dist_uses_nearest_rank() {
        let d = Dist::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!(
            (d.count, d.mean, d.p50, d.p95, d.max),
            (4, 2.5, 2.0, 4.0, 4.0)
        );
        assert_eq!(Dist::of(&[]), Dist::default());
    }
}
