//! The request a turn becomes, and the reply text the stream builds up.

use serde::Serialize;

use crate::llm::prompt::{self, Prompt};
use crate::llm::Sampling;

/// Longest utterance (characters) sent; a 30 s transcript is far shorter.
const MAX_UTTERANCE_CHARS: usize = 600;

/// `POST {base_url}/chat/completions`, streamed.
#[derive(Debug, Serialize)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<Message>,
    pub stream: bool,
    pub max_tokens: usize,
    pub temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Servers that support it sample reproducibly; others ignore it.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// The request for `p`: the persona and note of [`prompt::chat`] (one persona for every
/// engine), the history the answering stage kept, the sampling settings.
pub fn request<'a>(model: &'a str, p: &Prompt, sampling: &Sampling) -> ChatRequest<'a> {
    let mut p = p.clone();
    p.utterance = p.utterance.chars().take(MAX_UTTERANCE_CHARS).collect();
    let messages = prompt::chat(&p, p.history.len())
        .into_iter()
        .map(|(role, content)| Message { role, content })
        .collect();
    ChatRequest {
        model,
        messages,
        stream: true,
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature.max(0.0),
        top_p: sampling.top_p.filter(|p| *p > 0.0 && *p < 1.0),
        seed: sampling.seed,
    }
}

/// The reply as written so far, starting with the words the child hears first.
///
/// The local engine makes the model continue from the opening ("Mia,"); a chat API has no
/// such prefill, so the opening is put in front of what the server writes. A server that
/// starts with the name itself ("Mia! Hi") has it replaced by the opening ("Mia, Hi"), so
/// the name is not said twice.
#[derive(Debug, Default)]
pub struct ReplyText {
    opening: Option<String>,
    content: String,
}

impl ReplyText {
    pub fn new(p: &Prompt) -> ReplyText {
        ReplyText {
            opening: prompt::reply_opening(p),
            content: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) {
        self.content += piece;
    }

    pub fn has_content(&self) -> bool {
        !self.content.trim().is_empty()
    }

    /// The raw reply to split into sentences, or `None` while too little has come to know
    /// whether the server started with the name (`finished`: nothing more will come).
    pub fn raw(&self, finished: bool) -> Option<String> {
        let Some(opening) = &self.opening else {
            return Some(self.content.clone());
        };
        let name = opening.trim_end_matches(',');
        let content = self.content.trim_start();
        // Enough to see past the name: its letters and the character after them.
        if !finished && content.chars().count() <= name.chars().count() {
            return None;
        }
        let rest = strip_name(content, name).unwrap_or(content);
        Some(format!("{opening} {rest}"))
    }
}

/// `text` without a leading `name` and the punctuation and spaces after it, if it starts
/// with the name as a whole word.
fn strip_name<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let head = text.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name) && head.to_lowercase() != name.to_lowercase() {
        return None;
    }
    let rest = &text[name.len()..];
    if rest.starts_with(char::is_alphanumeric) {
        return None; // "Miami", not "Mia"
    }
    Some(rest.trim_start_matches(|c: char| {
        matches!(c, ',' | '!' | '.' | ':' | ';') || c.is_whitespace()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emotion::Label;

    fn mia() -> Prompt {
        Prompt {
            child_name: Some("Mia".into()),
            age: Some(5),
            language: "en".into(),
            emotion: Some(Label::Happy),
            utterance: "I built a tower".into(),
            ..Prompt::default()
        }
    }

    #[test]
    fn request_carries_persona_note_and_sampling() {
        let s = Sampling {
            top_p: Some(1.0),
            ..Sampling::default()
        };
        let r = request("smol", &mia(), &s);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["stream"], true);
        assert_eq!(json["max_tokens"], 60);
        assert!(json.get("top_p").is_none(), "1.0 means off");
        let m = &r.messages;
        assert_eq!(m[0].role, "system");
        assert_eq!(m[0].content, prompt::SYSTEM);
        assert_eq!(m[m.len() - 2].content, prompt::turn_note(&mia()));
        assert_eq!(
            m.last().unwrap(),
            &Message {
                role: "user",
                content: "I built a tower".into()
            }
        );
    }

    #[test]
    fn the_opening_leads_and_is_not_repeated() {
        let text = |pieces: &[&str], finished| {
            let mut t = ReplyText::new(&mia());
            pieces.iter().for_each(|p| t.push(p));
            t.raw(finished)
        };
        assert_eq!(text(&["Mi"], false), None, "wait: is it the name?");
        assert_eq!(
            text(&["What a", " tower!"], false).unwrap(),
            "Mia, What a tower!"
        );
        assert_eq!(
            text(&["Mia! What", " a tower"], false).unwrap(),
            "Mia, What a tower"
        );
        assert_eq!(text(&[" mia, wow"], false).unwrap(), "Mia, wow");
        assert_eq!(text(&["Miami is far"], false).unwrap(), "Mia, Miami is far");
        assert_eq!(text(&["Hi"], true).unwrap(), "Mia, Hi");
        let mut later = mia();
        later.history = vec![("hi".into(), "Hello Mia!".into())];
        let mut t = ReplyText::new(&later);
        t.push("Wow");
        assert_eq!(
            t.raw(false).unwrap(),
            "Wow",
            "no opening: the name was just said"
        );
    }
}
