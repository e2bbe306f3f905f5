//! Decode: container/codec → mono 16 kHz samples, on the timely worker (it takes about a
//! millisecond; a thread hand-off would cost more).

use std::time::Instant;

use teddyflow_models::audio::{self, DecodeOptions};
use timely::dataflow::operators::core::Map;

use super::{Ctx, Flow, Then};
use crate::envelope::{Envelope, Failed};
use crate::stage::Stage;

/// Decoded audio: mono, 16 kHz.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub pcm: Vec<f32>,
    /// The encoded audio, kept so a later failure can still dead-letter the original.
    pub bytes: Vec<u8>,
}

impl Decoded {
    pub fn audio_ms(&self) -> u64 {
        self.pcm.len() as u64 * 1000 / audio::TARGET_RATE as u64
    }
}

pub trait Decode<'s> {
    fn decode(self, ctx: &Ctx) -> Flow<'s, Decoded>;
}

impl<'s> Decode<'s> for Flow<'s, Vec<u8>> {
    fn decode(self, ctx: &Ctx) -> Flow<'s, Decoded> {
        let ctx = ctx.clone();
        let max_ms = ctx.config.limits.max_utterance_ms;
        self.then(|utterances| {
            utterances.map(move |u| {
                let result = decode(u, max_ms);
                match &result {
                    Ok(d) => ctx.metrics().timings(&d.meta, &[Stage::Decode]),
                    Err(_) => ctx.metrics().error(Stage::Decode.name()),
                }
                result
            })
        })
    }
}

fn decode(u: Envelope<Vec<u8>>, max_ms: u64) -> Result<Envelope<Decoded>, Failed> {
    let started = Instant::now();
    let h = &u.meta.headers;
    let opts = DecodeOptions {
        codec: h.codec,
        rate: h.rate,
        channels: h.channels,
        max_seconds: max_ms as f32 / 1000.0,
    };
    match audio::decode(&u.body, &opts) {
        Ok(decoded) => {
            let (mut env, bytes) = u.replace(());
            env.meta
                .time(Stage::Decode, started.elapsed().as_secs_f64() * 1e3);
            Ok(env.map(|()| Decoded {
                pcm: decoded.samples,
                bytes,
            }))
        }
        Err(e) => {
            let (env, bytes) = u.replace(());
            Err(env.fail(Stage::Decode, e, bytes))
        }
    }
}
