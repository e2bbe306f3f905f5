//! Child profiles: the compacted topic `teddy.profiles` (key = child id, JSON value,
//! tombstone = delete) as a differential-dataflow collection, joined with the utterances by
//! child id, before the utterance is heard: the child's language decides how it is heard.
//!
//! ```text
//! profiles topic ─► ProfileSource ─► upserts (child, Profile) ±1 ──arrange──┐
//! final chunks ──► (child, (conversation, utterance)) +1@t −1@t+1 ──────────┴─ join ─► Lookup@t
//! decoded utterances ⋈ lookups (by ready time) ─► meta.profile ─► hear ─► … ─► answer
//! ```
//!
//! An utterance exists in the collection for one instant only, so it meets exactly the
//! profile that was current when its final chunk was read: an update applies to the next
//! utterance, and a later update never re-answers an old one. Children without a profile
//! come out of the antijoin with `profile: None` (the documented defaults). From the join on,
//! the profile travels in the utterance's [`Meta`](crate::envelope::Meta).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use teddyflow_connectors::kafka::PartitionReader;
use teddyflow_connectors::wire::{Chunk, RawRecord};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::{Scope, Stream};

use teddyflow_connectors::kafka::StartAt;
use timely::dataflow::operators::core::{Exchange, Map};

use crate::envelope::Envelope;
use crate::operators::{join_lookup, kafka_source, stable_hash, Hold, Polled, SourceSettings};
use crate::outputs::{DeadLetter, DeadLetterReason, Out, Output};
use crate::stages::{Ctx, Flow, Then};

/// Longest profile value accepted; a profile is a handful of short fields.
pub const MAX_PROFILE_BYTES: usize = 16 * 1024;
const MAX_NAME_CHARS: usize = 60;

/// What teddyflow uses of a child's profile. Other fields of the JSON are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Profile {
    pub name: Option<String>,
    pub age: Option<u8>,
    /// Language code of the replies, e.g. "en", "es", "ar".
    pub language: Option<String>,
    /// espeak-ng voice, e.g. "en-us+f3"; otherwise chosen from the language.
    pub voice: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("profile has no key (the key is the child id)")]
    NoKey,
    #[error("profile value of {0} bytes exceeds {MAX_PROFILE_BYTES}")]
    TooLarge(usize),
    #[error("profile is not a JSON object: {0}")]
    NotJson(String),
    #[error("profile field `{0}` is invalid: {1}")]
    Field(&'static str, String),
}

#[derive(Deserialize)]
struct RawProfile {
    name: Option<String>,
    age: Option<serde_json::Value>,
    language: Option<String>,
    voice: Option<String>,
}

/// Parse a profile value. Empty strings count as absent; an age must be 0–18.
pub fn parse_profile(value: &[u8]) -> Result<Profile, ProfileError> {
    if value.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge(value.len()));
    }
    let raw: RawProfile =
        serde_json::from_slice(value).map_err(|e| ProfileError::NotJson(e.to_string()))?;
    let text = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let name = text(raw.name);
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(ProfileError::Field(
            "name",
            "longer than 60 characters".into(),
        ));
    }
    let age = match raw.age {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|a| *a <= 18)
                .ok_or_else(|| ProfileError::Field("age", format!("{v} is not 0–18")))?
                as u8,
        ),
    };
    Ok(Profile {
        name,
        age,
        language: text(raw.language),
        voice: text(raw.voice),
    })
}

/// What the profile source emits: differential updates and dead letters.
#[derive(Debug, Clone)]
pub enum ProfileEvent {
    /// `(child, profile)` with a diff, at a dataflow time.
    Update(String, Profile, u64, isize),
    /// The child's profile was deleted: forget their conversations.
    Deleted(String),
    Invalid(Output),
}

/// The profiles of this worker's partitions, with upsert semantics.
#[derive(Debug, Default)]
pub struct ProfileTable {
    current: HashMap<String, Profile>,
}

impl ProfileTable {
    /// Apply one record: `Some(value)` upserts, `None` (tombstone) deletes. Returns the
    /// updates to emit at `time`.
    pub fn apply(&mut self, child: &str, value: Option<Profile>, time: u64) -> Vec<ProfileEvent> {
        let old = match &value {
            Some(p) => self.current.insert(child.to_string(), p.clone()),
            None => self.current.remove(child),
        };
        // A delete always goes out: forgetting a child must not depend on what this
        // process happened to know about them.
        if old == value && value.is_some() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(3);
        if let Some(old) = old {
            out.push(ProfileEvent::Update(child.into(), old, time, -1));
        }
        match value {
            Some(new) => out.push(ProfileEvent::Update(child.into(), new, time, 1)),
            None => out.push(ProfileEvent::Deleted(child.into())),
        }
        out
    }

    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

/// Read this worker's partitions of the profiles topic from the beginning, forever. Until
/// the topic has been read to its end (or `load_timeout` passes), the source holds time 0,
/// so no utterance is answered with profiles half loaded.
pub fn profile_source<'s>(
    scope: Scope<'s, u64>,
    reader: Option<PartitionReader>,
    settings: SourceSettings,
    load_timeout: Duration,
    ctx: &Ctx,
) -> Stream<'s, u64, Vec<ProfileEvent>> {
    let loading = reader.as_ref().map(|r| r.high_watermarks());
    if loading.is_none() {
        ctx.health(|h, w| h.profiles_read(w)); // no partitions of the profiles topic
    }
    let input = ProfileInput {
        reader,
        table: ProfileTable::default(),
        started: Instant::now(),
        load_timeout,
        loading,
        ctx: ctx.clone(),
    };
    kafka_source(scope, "ProfileSource", settings, input)
}

struct ProfileInput {
    reader: Option<PartitionReader>,
    table: ProfileTable,
    started: Instant,
    load_timeout: Duration,
    /// High watermarks to read up to before answering; `None` once loaded.
    loading: Option<BTreeMap<i32, i64>>,
    ctx: Ctx,
}

impl Polled<ProfileEvent> for ProfileInput {
    fn has_partitions(&self) -> bool {
        self.reader.is_some()
    }

    fn hold(&mut self) -> Hold {
        if self.ctx.stop.load(Ordering::Acquire) {
            return Hold::Release; // nothing read after the stop matters to the drain
        }
        // An update read now applies to utterances ending from the next epoch on; the
        // lookup of one ending now is not held back waiting for this epoch to close.
        match self.loading {
            Some(_) => Hold::Still,
            None => Hold::EpochEnd,
        }
    }

    fn poll(&mut self, max: usize) -> Vec<RawRecord> {
        self.reader
            .as_mut()
            .map_or_else(Vec::new, |r| r.poll_batch(max))
    }

    fn record(&mut self, rec: RawRecord, time: u64, give: &mut dyn FnMut(ProfileEvent)) -> bool {
        for event in apply_record(&mut self.table, &rec, time) {
            give(event);
        }
        false
    }

    fn after(&mut self, _time: u64) {
        self.ctx.metrics().counts.profiles = self.table.len() as u64;
        let (Some(high), Some(r)) = (&self.loading, &self.reader) else {
            return;
        };
        let read_all = high.iter().all(|(p, h)| r.position(*p) >= *h);
        if read_all || self.started.elapsed() >= self.load_timeout {
            if !read_all {
                tracing::warn!("profiles topic not read to its end in time; answering anyway");
            }
            tracing::info!(profiles = self.table.len(), "profiles loaded");
            self.ctx.health(|h, w| h.profiles_read(w));
            self.loading = None;
        }
    }
}

fn apply_record(table: &mut ProfileTable, rec: &RawRecord, time: u64) -> Vec<ProfileEvent> {
    let parsed = match (&rec.key, &rec.value) {
        (None, _) => Err(ProfileError::NoKey),
        (Some(key), None) => Ok((key, None)),
        (Some(key), Some(v)) => parse_profile(v).map(|p| (key, Some(p))),
    };
    match parsed {
        Ok((key, value)) => table.apply(&String::from_utf8_lossy(key), value, time),
        Err(e) => {
            // The previous profile (if any) stays in force.
            tracing::warn!(partition = rec.partition, offset = rec.offset, error = %e, "invalid profile");
            let dead =
                DeadLetter::of_record(rec, DeadLetterReason::Profile, format!("profile: {e}"));
            vec![ProfileEvent::Invalid(Output::new(Out::DeadLetter(dead), 0))]
        }
    }
}

/// The profile side of the graph, for one worker.
pub struct Profiles<'s> {
    /// Each utterance's profile, routed to its conversation's owner.
    pub lookups: Stream<'s, u64, Vec<Lookup>>,
    /// What answering needs to hear about profiles.
    pub news: ProfileNews<'s>,
}

/// Profile events the answer stage acts on.
pub struct ProfileNews<'s> {
    /// Children whose profile was deleted.
    pub deleted: Stream<'s, u64, Vec<String>>,
    /// Dead letters for invalid profile records.
    pub invalid: Stream<'s, u64, Vec<Output>>,
}

impl<'s> Profiles<'s> {
    /// Read this worker's share of the profiles topic (state: from the beginning, offsets
    /// never committed) and look up the child of every final chunk.
    pub fn read(
        scope: Scope<'s, u64>,
        ctx: &Ctx,
        chunks: Stream<'s, u64, Vec<Chunk>>,
    ) -> anyhow::Result<Profiles<'s>> {
        let c = &ctx.config;
        let at = (ctx.worker, ctx.peers);
        let reader =
            PartitionReader::for_worker(&c.kafka, &c.topics.profiles, at, StartAt::Beginning)?;
        let settings = SourceSettings {
            epoch_ms: c.engine.epoch_ms,
            poll_batch: c.engine.poll_batch,
        };
        let timeout = Duration::from_millis(c.answering.profiles_load_timeout_ms);
        let events = profile_source(scope, reader, settings, timeout, ctx);
        let updates = events.clone().flat_map(|e| match e {
            ProfileEvent::Update(child, p, t, r) => Some((child, p, t, r)),
            _ => None,
        });
        let deleted = events.clone().flat_map(|e| match e {
            ProfileEvent::Deleted(child) => Some(child),
            _ => None,
        });
        let invalid = events.flat_map(|e| match e {
            ProfileEvent::Invalid(out) => Some(out),
            _ => None,
        });
        let lookups = lookups(chunks, updates).exchange(|l: &Lookup| stable_hash(&l.conversation));
        Ok(Profiles {
            lookups,
            news: ProfileNews { deleted, invalid },
        })
    }
}

pub trait WithProfile<'s> {
    /// Each utterance with its child's profile in `meta.profile`, as current at its final
    /// chunk. It waits for its lookup only until the lookups' frontier passes the time of
    /// that chunk (`meta.ready_time`), then goes on without one (the defaults).
    fn with_profile(self, lookups: Stream<'s, u64, Vec<Lookup>>) -> Self;
}

impl<'s, T: Clone + 'static> WithProfile<'s> for Flow<'s, T> {
    fn with_profile(self, lookups: Stream<'s, u64, Vec<Lookup>>) -> Self {
        self.then(move |utterances| {
            join_lookup(
                utterances,
                lookups,
                |e: &Envelope<T>| e.meta.key(),
                |l: &Lookup| (l.conversation.clone(), l.utterance.clone()),
                |e: &Envelope<T>| e.meta.ready_time,
            )
            .map(|(mut e, lookup)| {
                e.meta.profile = lookup.and_then(|l| l.profile);
                Ok(e)
            })
        })
    }
}

/// The profile an utterance is heard and answered with (`None`: no profile, defaults apply).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lookup {
    pub conversation: String,
    pub utterance: String,
    pub profile: Option<Profile>,
}

type Key = (String, String);

/// Differential updates: (record, time, diff).
type Updates<'s, D> = Stream<'s, u64, Vec<(D, u64, isize)>>;

/// Join every final chunk's utterance with its child's profile. The result is emitted at the
/// chunk's time, on the worker that owns the child; route it on to the conversation's owner.
pub fn lookups<'s>(
    chunks: Stream<'s, u64, Vec<Chunk>>,
    updates: Stream<'s, u64, Vec<(String, Profile, u64, isize)>>,
) -> Stream<'s, u64, Vec<Lookup>> {
    let profiles = updates
        .unary(Pipeline, "ProfileUpdates", |_, _| {
            |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    for (child, p, t, r) in data.drain(..) {
                        session.give(((child, p), t, r));
                    }
                })
            }
        })
        .as_collection();
    let events = utterance_events(chunks).as_collection();
    let known = events
        .clone()
        .join_map(profiles.clone(), |_, key, p| (key.clone(), Some(p.clone())));
    let unknown = events
        .antijoin(profiles.map(|(child, _)| child).distinct())
        .map(|(_, key)| (key, None));
    // The antijoin is events minus their semijoin: consolidate, or its +1 and −1 for a known
    // child would both come out.
    positive_at_their_time(known.concat(unknown).consolidate().inner)
}

/// `(child, (conversation, utterance))` for each final chunk: +1 at its time, −1 just after.
fn utterance_events<'s>(chunks: Stream<'s, u64, Vec<Chunk>>) -> Updates<'s, (String, Key)> {
    chunks.unary(Pipeline, "UtteranceEvents", |_, _| {
        |input, output| {
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else {
                    return;
                };
                let t = *cap.time();
                let mut session = output.session(&cap);
                for c in data.drain(..).filter(|c| c.headers.is_final) {
                    let child = c.headers.child.clone().unwrap_or_default();
                    let key = (c.conversation, c.headers.utterance);
                    session.give(((child.clone(), key.clone()), t, 1));
                    session.give(((child, key), t + 1, -1));
                }
            })
        }
    })
}

/// Additions of a differential output, as plain records at the time they happened (later
/// retractions and corrections are not new answers).
fn positive_at_their_time<'s>(
    updates: Updates<'s, (Key, Option<Profile>)>,
) -> Stream<'s, u64, Vec<Lookup>> {
    updates.unary(Pipeline, "PositiveLookups", |_, _| {
        |input, output| {
            input.for_each(|cap, data| {
                for (((conversation, utterance), profile), t, r) in data.drain(..) {
                    if r <= 0 {
                        continue;
                    }
                    let lookup = Lookup {
                        conversation,
                        utterance,
                        profile,
                    };
                    let at = cap.delayed(&t, 0);
                    output.session(&at).give(lookup);
                }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use teddyflow_connectors::wire::ChunkHeaders;
    use timely::dataflow::operators::capture::Extract;
    use timely::dataflow::operators::{Capture, Input, Probe};

    fn final_chunk(conversation: &str, utterance: &str, child: Option<&str>) -> Chunk {
        Chunk {
            conversation: conversation.into(),
            headers: ChunkHeaders {
                utterance: utterance.into(),
                seq: 0,
                is_final: true,
                codec: teddyflow_connectors::wire::Codec::Wav,
                rate: None,
                channels: 1,
                child: child.map(String::from),
                sent_ms: None,
            },
            bytes: Vec::new(),
            partition: 0,
            offset: 0,
        }
    }

    fn named(name: &str) -> Profile {
        Profile {
            name: Some(name.into()),
            ..Default::default()
        }
    }

    /// Oracle: each utterance meets the profile current at its final chunk's time, once;
    /// a later update never re-answers it; unknown children come out with `None`.
    #[test]
    fn each_utterance_meets_the_profile_of_its_moment_once() {
        let out = timely::execute_directly(|worker| {
            let (mut chunks, mut updates, probe, captured) =
                worker.dataflow::<u64, _, _>(|scope| {
                    let (ch, c) = scope.new_input::<Vec<Chunk>>();
                    let (uh, u) = scope.new_input::<Vec<(String, Profile, u64, isize)>>();
                    let (probe, out) = lookups(c, u).probe();
                    (ch, uh, probe, out.capture())
                });
            updates.send(("c1".into(), named("Mia"), 0, 1));
            updates.advance_to(1);
            chunks.advance_to(1);
            chunks.send(final_chunk("a", "u1", Some("c1")));
            chunks.send(final_chunk("b", "u2", Some("c2")));
            let mut partial = final_chunk("a", "u9", Some("c1"));
            partial.headers.is_final = false;
            chunks.send(partial);
            updates.advance_to(2);
            updates.send(("c1".into(), named("Mia"), 2, -1));
            updates.send(("c1".into(), named("Leo"), 2, 1));
            chunks.advance_to(3);
            chunks.send(final_chunk("a", "u3", Some("c1")));
            chunks.advance_to(5);
            updates.advance_to(5);
            while probe.less_than(&5) {
                worker.step();
            }
            captured
        });
        let mut got: Vec<(u64, String, Option<String>)> = out
            .extract()
            .into_iter()
            .flat_map(|(t, v)| v.into_iter().map(move |l| (t, l)))
            .map(|(t, l)| (t, l.utterance, l.profile.and_then(|p| p.name)))
            .collect();
        got.sort();
        let want = vec![
            (1, "u1".to_string(), Some("Mia".to_string())),
            (1, "u2".to_string(), None),
            (3, "u3".to_string(), Some("Leo".to_string())),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn profiles_parse_with_defaults_and_limits() {
        let p = parse_profile(br#"{"name":" Mia ","age":5,"language":"en","pet":"cat"}"#).unwrap();
        assert_eq!(p.name.as_deref(), Some("Mia"));
        assert_eq!(p.age, Some(5));
        assert_eq!(p.voice, None);
        assert_eq!(
            parse_profile(br#"{"name":""}"#).unwrap(),
            Profile::default()
        );
        assert!(matches!(
            parse_profile(b"not json"),
            Err(ProfileError::NotJson(_))
        ));
        assert!(matches!(
            parse_profile(br#"{"age":42}"#),
            Err(ProfileError::Field("age", _))
        ));
        let long = format!(r#"{{"name":"{}"}}"#, "a".repeat(61));
        assert!(parse_profile(long.as_bytes()).is_err());
    }

    #[test]
    fn upserts_retract_the_old_value_and_deletes_forget() {
        let mut t = ProfileTable::default();
        let mia = Profile {
            name: Some("Mia".into()),
            ..Default::default()
        };
        let leo = Profile {
            name: Some("Leo".into()),
            ..Default::default()
        };
        assert!(
            matches!(&t.apply("c1", Some(mia.clone()), 1)[..], [ProfileEvent::Update(_, p, 1, 1)] if *p == mia)
        );
        assert!(
            t.apply("c1", Some(mia.clone()), 2).is_empty(),
            "repeat is no change"
        );
        let ev = t.apply("c1", Some(leo.clone()), 3);
        assert!(
            matches!(&ev[..], [ProfileEvent::Update(_, a, 3, -1), ProfileEvent::Update(_, b, 3, 1)] if *a == mia && *b == leo)
        );
        let ev = t.apply("c1", None, 4);
        assert!(
            matches!(&ev[..], [ProfileEvent::Update(_, a, 4, -1), ProfileEvent::Deleted(c)] if *a == leo && c == "c1")
        );
        assert!(t.is_empty());
        let ev = t.apply("c2", None, 5);
        assert!(
            matches!(&ev[..], [ProfileEvent::Deleted(c)] if c == "c2"),
            "a delete always forgets"
        );
    }
}
