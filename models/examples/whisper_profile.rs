//! Timings of Whisper's encoder at several lengths and of the candle ops it spends time in.
//!
//! cargo run --release -p teddyflow-models --example whisper_profile -- MODELS_DIR

mod common;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::Module;
use teddyflow_models::whisper::WhisperOptions;

/// Best-of-`reps` wall time (least disturbed by other processes) and mean CPU time.
fn time<T>(name: &str, reps: usize, mut f: impl FnMut() -> T) -> f64 {
    f();
    let cpu0 = common::cpu_s() * 1e3;
    let ms = (0..reps)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min);
    let cpu = (common::cpu_s() * 1e3 - cpu0) / reps as f64;
    println!("{name:45} {ms:9.3} ms wall (best), {cpu:7.1} ms cpu (mean)");
    ms
}

fn main() -> anyhow::Result<()> {
    let model = common::tiny_en()?;
    let dir = common::models_dir();
    let pcm: Vec<f32> = (0..16000 * 5)
        .map(|i| (i as f32 * 0.05).sin() * 0.1)
        .collect();
    let skip_encoder = std::env::var_os("PROFILE_DECODE").is_some();
    for min in [0, 1000, 3000].into_iter().filter(|_| !skip_encoder) {
        let m = model.clone().with_options(WhisperOptions {
            tail_pad_frames: 50,
            min_frames: min,
        });
        let mel = m.log_mel(&pcm)?;
        time(&format!("log_mel 5 s, min_frames {min}"), 5, || {
            m.log_mel(&pcm).unwrap()
        });
        time(&format!("encode {} frames", mel.dim(2)?), 10, || {
            m.encode(&mel).unwrap()
        });
    }
    let wav =
        "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav";
    if let Ok(mut r) = hound::WavReader::open(wav) {
        let pcm: Vec<f32> = r
            .samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect();
        let mel = model.log_mel(&pcm)?;
        let audio = model.encode(&mel)?;
        let prompt = model.prompt(None);
        let n = model.greedy_tokens(&audio, &prompt)?.len();
        let ms = time(&format!("greedy decode, {n} tokens (+eot)"), 5, || {
            model.greedy_tokens(&audio, &prompt).unwrap()
        });
        println!("{:45} {:9.3} ms", "  per step", ms / (n + 1) as f64);
        let ct2 = teddyflow_models::whisper::ct2::Ct2Model::read(
            &Path::new(&dir).join("whisper-tiny.en/model.bin"),
        )?;
        let m = teddyflow_models::whisper::model::Model::load(
            &ct2.to_candle_tensors()?,
            &ct2.whisper_config()?,
        )?;
        let dec = &m.decoder;
        time("decoder.start (cross k/v)", 5, || {
            dec.start(&audio).unwrap()
        });
        let mut st = dec.start(&audio)?;
        let h = dec.step(&mut st, &prompt)?;
        time("logits (f16 matvec)", 20, || dec.logits(&h, 0));
        if std::env::var_os("PROFILE_DECODE").is_some() {
            // Decoder steps only, for `perf record`.
            let (t, cpu) = (Instant::now(), common::cpu_s() * 1e3);
            for _ in 0..200 {
                st.reset();
                dec.step(&mut st, &prompt)?;
                for _ in 0..20 {
                    dec.step(&mut st, &[262])?;
                }
            }
            let steps = 200.0 * 21.0;
            println!(
                "decoder step (no logits): {:.3} ms wall, {:.3} ms cpu",
                t.elapsed().as_secs_f64() * 1e3 / steps,
                (common::cpu_s() * 1e3 - cpu) / steps
            );
            return Ok(());
        }
        time("20 decoder steps (no logits)", 5, || {
            st.reset();
            dec.step(&mut st, &prompt).unwrap();
            for _ in 0..20 {
                dec.step(&mut st, &[262]).unwrap();
            }
        });
    }
    let dev = Device::Cpu;
    let d = 384;
    let n = 1500;
    let x = Tensor::randn(0f32, 1., (n, d), &dev)?;
    let w = Tensor::randn(0f32, 1., (3 * d, d), &dev)?;
    time("qkv 1500x384 @ (1152x384)^T", 5, || {
        x.matmul(&w.t().unwrap()).unwrap()
    });
    let w1 = Tensor::randn(0f32, 1., (4 * d, d), &dev)?;
    time("fc1 1500x384 @ (1536x384)^T", 5, || {
        x.matmul(&w1.t().unwrap()).unwrap()
    });
    let h = x.matmul(&w1.t()?)?;
    time("gelu_erf 1500x1536", 5, || h.gelu_erf().unwrap());
    let q = Tensor::randn(0f32, 1., (6, n, 64), &dev)?;
    time("scores 6x1500x64 @ kT", 5, || {
        q.matmul(&q.t().unwrap()).unwrap()
    });
    let kt = q.t()?.contiguous()?;
    time("scores 6x1500x64 @ kT contiguous", 5, || {
        q.matmul(&kt).unwrap()
    });
    time("kT contiguous copy", 5, || {
        q.t().unwrap().contiguous().unwrap()
    });
    time("scores per head 2D", 5, || {
        (0..6)
            .map(|h| q.get(h).unwrap().matmul(&kt.get(h).unwrap()).unwrap())
            .collect::<Vec<_>>()
    });
    use teddyflow_models::whisper::model::{attention, attention_blocked};
    // `attention` takes the keys transposed, as the encoder hands them over.
    time("attention plain 6x1500", 5, || {
        attention(&q, &kt, &q, None).unwrap()
    });
    for b in [64, 128, 256, 512] {
        time(&format!("attention blocked {b}"), 5, || {
            attention_blocked(&q, &q, &q, b).unwrap()
        });
    }
    let s = q.matmul(&q.t()?)?;
    time("softmax 6x1500x1500", 5, || {
        candle_nn::ops::softmax_last_dim(&s).unwrap()
    });
    time("w @ v 6x1500x1500 @ 6x1500x64", 5, || s.matmul(&q).unwrap());
    let ln = candle_nn::LayerNorm::new(
        Tensor::ones(d, DType::F32, &dev)?,
        Tensor::zeros(d, DType::F32, &dev)?,
        1e-5,
    );
    time("layernorm 1500x384", 5, || ln.forward(&x).unwrap());
    let split = Tensor::randn(0f32, 1., (n, 3 * d), &dev)?;
    time("split heads (narrow+reshape+transpose+contig)", 5, || {
        split
            .narrow(1, 0, d)
            .unwrap()
            .reshape((n, 6, 64))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
    });
    let emb = Tensor::randn(0f32, 1., (51864, d), &dev)?;
    let x1 = Tensor::randn(0f32, 1., (1, d), &dev)?;
    time("logits 1x384 @ emb^T", 20, || {
        x1.matmul(&emb.t().unwrap()).unwrap()
    });
    Ok(())
}
