//! The end of a chain that stops before answering: each utterance's response (and parent
//! alert), and a dead letter for each one that failed on the way.

use timely::dataflow::operators::core::Map;
use timely::dataflow::Stream;

use super::understand::{alert_for, Understood};
use super::{dead_letter, Ctx, Flow};
use crate::envelope::Envelope;
use crate::outputs::{self, Heard, Out, Output, Response};

/// What an utterance that got this far is reported as.
pub trait IntoOutputs: Sized {
    fn outputs(env: Envelope<Self>, worker: usize) -> Vec<Output>;
}

impl IntoOutputs for Heard {
    fn outputs(env: Envelope<Heard>, worker: usize) -> Vec<Output> {
        let response = Response::new(&env.meta, worker, env.body);
        vec![response_output(response, env.meta.completed_ms)]
    }
}

impl IntoOutputs for Understood {
    fn outputs(env: Envelope<Understood>, worker: usize) -> Vec<Output> {
        let mut out: Vec<Output> = alert_for(&env).into_iter().collect();
        let completed_ms = env.meta.completed_ms;
        out.push(response_output(
            understood_response(env, worker),
            completed_ms,
        ));
        out
    }
}

/// The response of an understood utterance (without a reply yet).
pub fn understood_response(env: Envelope<Understood>, worker: usize) -> Response {
    let u = env.body;
    let mut response = Response::new(&env.meta, worker, u.heard);
    response.understanding = Some(outputs::Understanding {
        emotion: u.emotion,
        safety: u.safety,
        redacted: u.redacted,
    });
    response
}

pub fn response_output(response: Response, completed_ms: i64) -> Output {
    Output::new(Out::Response(Box::new(response)), completed_ms)
}

pub trait Respond<'s> {
    fn respond(self, ctx: &Ctx) -> Stream<'s, u64, Vec<Output>>;
}

impl<'s, T: IntoOutputs + 'static> Respond<'s> for Flow<'s, T> {
    fn respond(self, ctx: &Ctx) -> Stream<'s, u64, Vec<Output>> {
        let worker = ctx.worker;
        self.flat_map(move |r| match r {
            Ok(env) => T::outputs(env, worker),
            Err(failed) => vec![dead_letter(failed)],
        })
    }
}
