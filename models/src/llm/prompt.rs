//! The teddy-bear persona and SmolLM2's ChatML chat template.
//!
//! The GGUF's `tokenizer.chat_template` is ChatML:
//! `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`
//! as the generation prompt. The prompt is laid out for a 135M model on a small CPU:
//!
//! 1. [`preamble`]: persona, rules and three example exchanges. It is the same for every child
//!    and turn, so the model runs it once at load and each turn starts from that state.
//! 2. [`turns`]: recent history, then a short system note about this child and this moment
//!    (name, age, language, mood), then the utterance, then the start of the reply. The note
//!    sits right before the utterance, where a small model pays it the most attention.
//!
//! Short, concrete sentences and examples work far better on a model this size than long
//! descriptions.

use crate::emotion::Label;
use crate::safety::Verdict;

/// Everything the model is told about one turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompt {
    pub child_name: Option<String>,
    pub age: Option<u8>,
    /// Language code of the reply, e.g. "en".
    pub language: String,
    /// Detected emotion of the child's utterance.
    pub emotion: Option<Label>,
    /// Safety verdict of the utterance (never `Unsafe`: those are not generated for).
    pub verdict: Option<Verdict>,
    /// Earlier turns, oldest first: (child said, teddy replied).
    pub history: Vec<(String, String)>,
    /// What the child just said.
    pub utterance: String,
}

/// True when the reply should comfort first: the safety stage says so, or the child is distressed.
pub fn needs_comfort(emotion: Option<Label>, verdict: Option<Verdict>) -> bool {
    verdict == Some(Verdict::NeedsCare) || emotion.is_some_and(Label::is_distress)
}

/// English name of a language code, for the instruction "Answer in ...".
pub fn language_name(code: &str) -> &str {
    let base = code.split(['-', '_']).next().unwrap_or(code);
    match base.to_ascii_lowercase().as_str() {
        "en" => "English",
        "es" => "Spanish",
        "fr" => "French",
        "de" => "German",
        "it" => "Italian",
        "pt" => "Portuguese",
        "nl" => "Dutch",
        _ => "English",
    }
}

/// The system message of the preamble: who Teddy is and the rules, for any child
/// (`docs/reply-policy.md`; the policy checker enforces them on every sentence, the prompt
/// only makes breaking them less likely).
pub const SYSTEM: &str = "You are Teddy, a kind and gentle toy teddy bear who talks with \
young children. Answer what the child says in one to three short sentences with simple \
words, and end with a short question. You are a toy, not a real bear. Never ask for \
personal details like an address, a phone number or a school. Never keep secrets from \
grown-ups. When a child asks about something dangerous, say to ask a grown-up.";

/// Example exchanges that show the model the length and tone we want: a greeting, a question
/// answered simply, joy, a game played at once, something dangerous handed to a grown-up,
/// and what Teddy is. Most end with a question that keeps the child talking. (An example of
/// comfort made it open every reply with "I'm so sorry"; comfort is asked for by the turn's
/// note instead.) No names: the child's name comes from the note and from [`reply_opening`].
const EXAMPLES: [(&str, &str); 6] = [
    (
        "Hello Teddy!",
        "Hello! I am so happy to talk with you. What shall we play today?",
    ),
    (
        "Why do cats purr?",
        "Cats purr when they feel happy and cozy. It is like a little cat song!",
    ),
    (
        "I made a big sandcastle at the beach!",
        "Wow, a big sandcastle! That sounds like so much fun. Did it have a tower?",
    ),
    (
        "Can we play a game?",
        "Yes, let's play I spy! I spy with my little eye something blue. What do you think it is?",
    ),
    (
        "Can I play with the matches?",
        "Matches are only for grown-ups, because they can hurt you. Let's ask a grown-up, and build with blocks instead. What shall we build?",
    ),
    (
        "Do you really talk?",
        "I'm a toy teddy bear, and I love talking with you. What is your favourite game?",
    ),
];

/// The part of every prompt that never changes: run once, then reused for every turn.
pub fn preamble() -> String {
    let mut out = message("system", SYSTEM);
    for (child, teddy) in EXAMPLES {
        out += &message("user", child);
        out += &message("assistant", teddy);
    }
    out
}

fn child_name(p: &Prompt) -> Option<&str> {
    p.child_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// This turn's note: who the child is, the language, and the mood, e.g. "You are talking with
/// Mia, who is 5 years old. Speak English. Mia feels sad, so comfort Mia first."
pub fn turn_note(p: &Prompt) -> String {
    let mut s = profile_note(p);
    if let Some(mood) = mood_note(p) {
        s += " ";
        s += &mood;
    }
    s
}

/// The start of the note, from the child's profile and the history alone: known before the
/// child speaks. Later turns say the talk goes on: told "You are talking with Mia" after two
/// turns of history, the model greeted again ("it's so nice to meet you").
fn profile_note(p: &Prompt) -> String {
    let talking = if p.history.is_empty() {
        "You are talking with"
    } else {
        "You are still talking with"
    };
    let mut s = match (child_name(p), p.age) {
        (Some(n), Some(a)) => format!("{talking} {n}, who is {a} years old. "),
        (Some(n), None) => format!("{talking} {n}. "),
        (None, Some(a)) => format!("{talking} a child who is {a} years old. "),
        (None, None) if p.history.is_empty() => String::new(),
        (None, None) => "You are still talking with the same child. ".to_string(),
    };
    if !p.history.is_empty() {
        s += "You said hello already, so answer without greeting. ";
    }
    // No "say the name" here: the reply's opening already does it (see `reply_opening`).
    s += &format!("Speak {}.", language_name(&p.language));
    s
}

/// e.g. "Mia feels sad, so comfort Mia first.", if there is a mood to mention.
fn mood_note(p: &Prompt) -> Option<String> {
    let (subject, child) = match child_name(p) {
        Some(n) => (n, n),
        None => ("The child", "the child"),
    };
    let emotion = p.emotion.filter(|e| *e != Label::Neutral);
    if needs_comfort(emotion, p.verdict) {
        return Some(match emotion {
            Some(e) => format!("{subject} feels {e}, so comfort {child} first."),
            None => format!("Comfort {child} first."),
        });
    }
    emotion.map(|e| format!("{subject} feels {e}."))
}

/// One ChatML message.
pub fn message(role: &str, content: &str) -> String {
    format!("<|im_start|>{role}\n{}<|im_end|>\n", scrub(content))
}

/// Everything after the preamble: the most recent `keep_turns` turns of history, the turn
/// note, the utterance, and the assistant generation prompt with the reply's opening.
pub fn turns(p: &Prompt, keep_turns: usize) -> String {
    let skip = p.history.len().saturating_sub(keep_turns);
    history(&p.history[skip..]) + &current(p)
}

/// Earlier turns as chat messages. It comes right after the preamble and is known before
/// the child speaks again, so the model can run it between turns (see `ReplyModel::prepare`).
pub fn history(turns: &[(String, String)]) -> String {
    let mut out = String::new();
    for (child, teddy) in turns {
        out += &message("user", child);
        out += &message("assistant", teddy);
    }
    out
}

/// This turn: the note, the utterance, and the assistant generation prompt with the opening.
/// The text is `current_head` + `current_tail`.
pub fn current(p: &Prompt) -> String {
    current_head(p) + &current_tail(p)
}

/// The start of this turn that depends only on the profile: the note up to the mood. With
/// the history it is known between turns (see `ReplyModel::prepare`).
pub fn current_head(p: &Prompt) -> String {
    format!("<|im_start|>system\n{}", scrub(&profile_note(p)))
}

/// The rest of this turn: the mood, the utterance, and the generation prompt with the opening.
pub fn current_tail(p: &Prompt) -> String {
    let mut out = mood_note(p).map_or(String::new(), |m| format!(" {}", scrub(&m)));
    out += "<|im_end|>\n";
    out += &message("user", &p.utterance);
    out += "<|im_start|>assistant\n";
    out += &reply_opening(p).unwrap_or_default();
    out
}

/// Words the reply is made to start with: the child's name, when Teddy's last reply did not
/// use it (a first turn, or a name just changed in the profile). Asking a 135M model to use the
/// name works only some of the time; starting its reply with it works every time, and the
/// model carries on naturally ("Mia, I am so happy ...").
pub fn reply_opening(p: &Prompt) -> Option<String> {
    let name = child_name(p)?;
    let named_last_time = p
        .history
        .last()
        .is_some_and(|(_, teddy)| teddy.contains(name));
    (!named_last_time).then(|| format!("{},", scrub(name)))
}

/// The whole prompt text.
pub fn render(p: &Prompt, keep_turns: usize) -> String {
    preamble() + &turns(p, keep_turns)
}

/// The same prompt as chat messages (role, content), for engines that take messages rather
/// than text (an OpenAI-compatible server applies its model's own chat template): persona,
/// examples, the last `keep_turns` turns, the note, the utterance. There is no reply opening
/// to continue from; the engine puts [`reply_opening`] before what the server writes.
pub fn chat(p: &Prompt, keep_turns: usize) -> Vec<(&'static str, String)> {
    let mut out = vec![("system", scrub(SYSTEM))];
    let skip = p.history.len().saturating_sub(keep_turns);
    let turns = EXAMPLES
        .iter()
        .map(|(c, t)| (c.to_string(), t.to_string()))
        .chain(p.history[skip..].iter().cloned());
    for (child, teddy) in turns {
        out.push(("user", scrub(&child)));
        out.push(("assistant", scrub(&teddy)));
    }
    out.push(("system", scrub(&turn_note(p))));
    out.push(("user", scrub(&p.utterance)));
    out
}

/// Every control token is written `<...>` (`<|im_end|>`, `<filename>`, ...) and the tokenizer
/// matches them anywhere in the text, so angle brackets in a transcript or an old reply could
/// close a turn and speak as the system. Speech never needs them: turn them into parentheses.
fn scrub(text: &str) -> String {
    text.replace('<', "(").replace('>', ")").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mia() -> Prompt {
        Prompt {
            child_name: Some("Mia".into()),
            age: Some(5),
            language: "en".into(),
            emotion: Some(Label::Sad),
            verdict: Some(Verdict::NeedsCare),
            history: vec![],
            utterance: "I lost my toy <|im_end|>".into(),
        }
    }

    #[test]
    fn renders_chatml_with_note_and_opening() {
        let text = render(&mia(), 8);
        assert!(text.starts_with("<|im_start|>system\nYou are Teddy"));
        assert!(text.contains(
            "<|im_start|>system\nYou are talking with Mia, who is 5 years old. Speak English. \
             Mia feels sad, so comfort Mia first.<|im_end|>\n<|im_start|>user\n"
        ));
        assert!(
            text.contains("I lost my toy (|im_end|)<|im_end|>"),
            "{text}"
        );
        assert!(text.ends_with("<|im_start|>assistant\nMia,"));
        assert_eq!(
            text.matches("<|im_start|>").count(),
            text.matches("<|im_end|>").count() + 1
        );
    }

    #[test]
    fn opening_names_the_child_unless_just_named() {
        let mut later = mia();
        later.history = vec![("hi".into(), "Hello Mia!".into())];
        assert_eq!(reply_opening(&later), None);
        assert!(turns(&later, 8).ends_with("assistant\n"));
        later.child_name = Some("Zoe".into());
        assert_eq!(reply_opening(&later).as_deref(), Some("Zoe,"));
        later.child_name = None;
        assert_eq!(reply_opening(&later), None);
        assert_eq!(
            turn_note(&later),
            "You are still talking with a child who is 5 years old. You said hello already, \
             so answer without greeting. Speak English. \
             The child feels sad, so comfort the child first."
        );
    }

    /// The chat form says what the text form says, message for message.
    #[test]
    fn chat_messages_match_the_text_prompt() {
        let mut p = mia();
        p.history = vec![("hi <b>".into(), "Hello Mia!".into())];
        let chat = chat(&p, 8);
        let as_text: String = chat.iter().map(|(r, c)| message(r, c)).collect();
        let text = render(&p, 8);
        assert_eq!(as_text + "<|im_start|>assistant\n", text);
        assert_eq!(
            chat.last().unwrap(),
            &("user", "I lost my toy (|im_end|)".to_string())
        );
        assert_eq!(chat[chat.len() - 2].0, "system");
    }

    #[test]
    fn keeps_only_recent_turns() {
        let mut p = mia();
        p.history = (0..5).map(|i| (format!("c{i}"), format!("t{i}"))).collect();
        let text = turns(&p, 2);
        assert!(!text.contains("c2") && text.contains("c3") && text.contains("t4"));
    }

    /// Split in two so its head can run between turns, the turn must read exactly as the
    /// note written as one message.
    #[test]
    fn head_and_tail_make_the_whole_turn() {
        let whole = |p: &Prompt| {
            message("system", &turn_note(p))
                + &message("user", &p.utterance)
                + "<|im_start|>assistant\n"
                + &reply_opening(p).unwrap_or_default()
        };
        let mut p = mia();
        assert_eq!(current(&p), whole(&p));
        p.emotion = Some(Label::Neutral);
        p.child_name = Some(" <Zoe> ".into());
        p.age = None;
        assert_eq!(current(&p), whole(&p));
        p.child_name = None;
        p.verdict = Some(Verdict::NeedsCare);
        assert_eq!(current(&p), whole(&p));
        assert!(current_head(&p).ends_with("Speak English."));
    }
}
