//! Curated replies for languages the reply model cannot serve, and safe stand-ins everywhere.
//!
//! SmolLM2-135M-Instruct was trained almost only on English (its GGUF declares
//! `general.languages = ["en"]`). Told to "Speak Spanish/French/German/Arabic" and spoken to
//! in that language (`models/examples/reply.rs --languages`, greedy), it answered Spanish with
//! a bare "¿Cómo estás?", French with nonsense ("Je suis le joueur !"), German by echoing the
//! child's sentence in broken word order, and Arabic in English. So
//! [`model_serves`] is true for English only, and every other language with a bank gets a reply
//! from `data/replies/<lang>.json`:
//!
//! | code | language | espeak-ng voice |
//! |---|---|---|
//! | ar de en es fr hi it nl pt ru tr zh | Arabic, German, English, Spanish, French, Hindi, Italian, Dutch, Portuguese, Russian, Turkish, Mandarin | see [`crate::tts::voice_for`] |
//!
//! Each bank holds three replies per [`ReplyKind`], each in a form with the child's name
//! (`{name}`) and one without (word order and particles such as Arabic "يا" differ, so the name
//! cannot simply be deleted). Replies avoid gendered forms where the language allows, since the
//! child's gender is unknown. English has a bank too: it supplies the redirect for unsafe
//! utterances and the fallback for a generated reply that fails the safety check.
//! The banks are compiled in (`include_str!`), so there is nothing to install or misplace.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::emotion::Label;
use crate::safety::Verdict;

/// What the reply has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// The child is distressed or the safety stage said "needs_care".
    Comfort,
    /// Steer away from an unsafe topic; also the fallback for an unsafe generated reply.
    Redirect,
    /// Warm, generic encouragement to keep talking.
    Encourage,
    /// First turn of a conversation.
    Greeting,
    /// The words were not heard clearly: a gentle "say that again?".
    Clarify,
}

/// Languages the model answers in itself.
pub const MODEL_LANGUAGES: &[&str] = &["en"];

/// Every bank, by language code.
const BANKS: &[(&str, &str)] = &[
    ("ar", include_str!("../../data/replies/ar.json")),
    ("de", include_str!("../../data/replies/de.json")),
    ("en", include_str!("../../data/replies/en.json")),
    ("es", include_str!("../../data/replies/es.json")),
    ("fr", include_str!("../../data/replies/fr.json")),
    ("hi", include_str!("../../data/replies/hi.json")),
    ("it", include_str!("../../data/replies/it.json")),
    ("nl", include_str!("../../data/replies/nl.json")),
    ("pt", include_str!("../../data/replies/pt.json")),
    ("ru", include_str!("../../data/replies/ru.json")),
    ("tr", include_str!("../../data/replies/tr.json")),
    ("zh", include_str!("../../data/replies/zh.json")),
];

/// Longest name inserted; a profile field is not a place for a paragraph.
const MAX_NAME_CHARS: usize = 40;

#[derive(Debug, serde::Deserialize)]
struct Bank {
    greeting: Vec<Entry>,
    comfort: Vec<Entry>,
    redirect: Vec<Entry>,
    encourage: Vec<Entry>,
    clarify: Vec<Entry>,
}

#[derive(Debug, serde::Deserialize)]
struct Entry {
    named: String,
    plain: String,
}

impl Bank {
    fn entries(&self, kind: ReplyKind) -> &[Entry] {
        match kind {
            ReplyKind::Comfort => &self.comfort,
            ReplyKind::Redirect => &self.redirect,
            ReplyKind::Encourage => &self.encourage,
            ReplyKind::Greeting => &self.greeting,
            ReplyKind::Clarify => &self.clarify,
        }
    }
}

fn banks() -> &'static HashMap<&'static str, Bank> {
    static BANKS_PARSED: OnceLock<HashMap<&'static str, Bank>> = OnceLock::new();
    BANKS_PARSED.get_or_init(|| {
        BANKS
            .iter()
            .map(|(code, json)| {
                // The files are compiled in and checked by the tests: a parse error is a bug.
                let bank = serde_json::from_str(json)
                    .unwrap_or_else(|e| panic!("data/replies/{code}.json: {e}"));
                (*code, bank)
            })
            .collect()
    })
}

/// "ar-SA", "AR" and "ar_SA" all mean "ar".
pub fn base_language(language: &str) -> String {
    let base = language.trim().split(['-', '_']).next().unwrap_or("");
    match base.to_ascii_lowercase().as_str() {
        "cmn" | "zho" | "chi" => "zh".to_string(),
        other => other.to_string(),
    }
}

/// Whether the reply model answers in `language` (otherwise use [`bank_reply`]).
pub fn model_serves(language: &str) -> bool {
    MODEL_LANGUAGES.contains(&base_language(language).as_str())
}

/// Language codes that have a bank.
pub fn bank_languages() -> impl Iterator<Item = &'static str> {
    BANKS.iter().map(|(code, _)| *code)
}

/// A curated reply of `kind` in `language`, naming the child when a name is given; `seed`
/// picks among the variants (deterministic). `None` when there is no bank for the language.
pub fn bank_reply(
    language: &str,
    kind: ReplyKind,
    child_name: Option<&str>,
    seed: u64,
) -> Option<String> {
    let bank = banks().get(base_language(language).as_str())?;
    let entries = bank.entries(kind);
    let entry = entries.get((seed % entries.len() as u64) as usize)?;
    Some(match child_name.and_then(clean_name) {
        Some(name) => entry.named.replace("{name}", &name),
        None => entry.plain.clone(),
    })
}

/// The safe stand-in for a generated reply that failed the safety check (and the reply to an
/// unsafe utterance): a gentle redirect in `language`, or in English when it has no bank.
pub fn fallback_reply(language: &str, child_name: Option<&str>, seed: u64) -> String {
    bank_reply(language, ReplyKind::Redirect, child_name, seed)
        .or_else(|| bank_reply("en", ReplyKind::Redirect, child_name, seed))
        .expect("the English bank has redirects")
}

/// Which bank reply fits a turn. Distress comes first, whatever else the utterance holds:
/// "I am so scared, nobody loves me, my number is ..." is unsafe (personal information) and
/// distressed, and a child who says it must hear comfort, not "let's talk about something
/// happier" (the parent alert is raised from the verdict either way). So: distress (the
/// emotion, a `needs_care` verdict, or a `needs_care` category such as `distress` or
/// `bullying` among an unsafe verdict's categories) is comforted, an unsafe utterance is
/// redirected, a first turn is greeted, anything else is encouraged.
pub fn kind_for(
    emotion: Option<Label>,
    verdict: Option<Verdict>,
    categories: &[String],
    first_turn: bool,
) -> ReplyKind {
    let distressed = crate::llm::prompt::needs_comfort(emotion, verdict)
        || categories
            .iter()
            .any(|c| crate::safety::verdict_of(c) == Verdict::NeedsCare);
    match verdict {
        _ if distressed => ReplyKind::Comfort,
        Some(Verdict::Unsafe) => ReplyKind::Redirect,
        _ if first_turn => ReplyKind::Greeting,
        _ => ReplyKind::Encourage,
    }
}

/// The curated reply to an unsafe utterance (it never reaches the reply model): comfort
/// when [`kind_for`] says the child is distressed, otherwise the gentle redirect. In
/// `language`, or in English when it has no bank.
pub fn reply_to_unsafe(
    kind: ReplyKind,
    language: &str,
    child_name: Option<&str>,
    seed: u64,
) -> String {
    if kind != ReplyKind::Comfort {
        return fallback_reply(language, child_name, seed);
    }
    bank_reply(language, ReplyKind::Comfort, child_name, seed)
        .or_else(|| bank_reply("en", ReplyKind::Comfort, child_name, seed))
        .expect("the English bank has comfort replies")
}

/// Closing lines by language (`data/replies/closing.json`).
fn closings() -> &'static HashMap<String, String> {
    static CLOSINGS: OnceLock<HashMap<String, String>> = OnceLock::new();
    CLOSINGS.get_or_init(|| {
        let json = include_str!("../../data/replies/closing.json");
        let mut map: HashMap<String, String> =
            serde_json::from_str(json).expect("data/replies/closing.json parses");
        map.retain(|code, _| !code.starts_with('_'));
        map
    })
}

/// The end of a reply whose server stopped writing after some of it was spoken: it closes
/// the turn kindly without repeating anything. In `language`, or in English.
pub fn closing_line(language: &str) -> String {
    let all = closings();
    all.get(&base_language(language))
        .or_else(|| all.get("en"))
        .expect("the closing lines have English")
        .clone()
}

/// The name as it will be spoken: printable, single-spaced, bounded, and free of the
/// template's braces. `None` if nothing is left.
fn clean_name(name: &str) -> Option<String> {
    let words: Vec<&str> = name.split_whitespace().collect();
    let name: String = words
        .join(" ")
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '{' | '}' | '<' | '>'))
        .take(MAX_NAME_CHARS)
        .collect();
    let name = name.trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bank_parses_and_is_complete() {
        for code in bank_languages() {
            let bank = &banks()[code];
            for kind in [
                ReplyKind::Comfort,
                ReplyKind::Redirect,
                ReplyKind::Encourage,
                ReplyKind::Greeting,
                ReplyKind::Clarify,
            ] {
                let entries = bank.entries(kind);
                assert!(!entries.is_empty(), "{code} {kind:?}");
                for e in entries {
                    assert!(e.named.contains("{name}"), "{code}: {}", e.named);
                    assert!(!e.plain.contains('{'), "{code}: {}", e.plain);
                }
            }
        }
    }

    #[test]
    fn every_bank_language_has_a_closing_line() {
        for code in bank_languages() {
            let line = &closings()[code];
            assert!(
                line.chars().any(char::is_alphabetic) && !line.contains('{'),
                "{code}"
            );
        }
        assert_eq!(closings().len(), bank_languages().count());
        assert_eq!(closing_line("sw"), closing_line("en-GB"));
        assert!(closing_line("fr-CA").starts_with("Je vais"));
    }

    #[test]
    fn names_and_languages() {
        let r = bank_reply("de-AT", ReplyKind::Greeting, Some(" Lena "), 0).unwrap();
        assert!(r.starts_with("Hallo Lena!"), "{r}");
        assert!(bank_reply("sw", ReplyKind::Greeting, None, 0).is_none());
        assert!(fallback_reply("sw", Some("Ali"), 1).contains("Ali"));
        assert!(model_serves("en-GB") && !model_serves("ar"));
        assert_eq!(
            kind_for(Some(Label::Sad), Some(Verdict::Safe), &[], true),
            ReplyKind::Comfort
        );
        assert_eq!(
            kind_for(
                None,
                Some(Verdict::Unsafe),
                &["personal_info".into()],
                false
            ),
            ReplyKind::Redirect
        );
    }

    /// Issue 11, defect 8: distress plus personal information was redirected cheerfully.
    #[test]
    fn distress_is_comforted_even_when_the_utterance_is_unsafe() {
        let categories = ["distress".to_string(), "personal_info".to_string()];
        let kind = kind_for(
            Some(Label::Neutral),
            Some(Verdict::Unsafe),
            &categories,
            false,
        );
        assert_eq!(kind, ReplyKind::Comfort);
        // The emotion alone is enough, and so is bullying among the categories.
        assert_eq!(
            kind_for(
                Some(Label::Scared),
                Some(Verdict::Unsafe),
                &["personal_info".into()],
                false
            ),
            ReplyKind::Comfort
        );
        assert_eq!(
            kind_for(
                None,
                Some(Verdict::Unsafe),
                &["profanity".into(), "bullying".into()],
                true
            ),
            ReplyKind::Comfort
        );
        let comfort: Vec<String> = (0..3)
            .map(|seed| bank_reply("en", ReplyKind::Comfort, Some("Mia"), seed).unwrap())
            .collect();
        let reply = reply_to_unsafe(kind, "en", Some("Mia"), 1);
        assert!(comfort.contains(&reply), "{reply}");
        assert_eq!(
            reply_to_unsafe(ReplyKind::Redirect, "en", None, 1),
            fallback_reply("en", None, 1)
        );
        // A language without a bank still gets comfort, in English.
        let reply = reply_to_unsafe(ReplyKind::Comfort, "sw", None, 2);
        assert_eq!(Some(reply), bank_reply("en", ReplyKind::Comfort, None, 2));
    }
}
