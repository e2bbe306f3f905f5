//! Turning raw generated text into speakable sentences, as they complete.
//!
//! Boundaries are found in the raw text (a terminator followed by whitespace, or a line break)
//! and each raw sentence is cleaned on its own, so a sentence once emitted never changes.

/// Sentences a reply may have; generation stops once this many are complete.
pub const MAX_SENTENCES: usize = 3;

/// Text that means the model has started writing another turn: everything from here is dropped.
const TURN_MARKERS: &[&str] = &[
    "<|",
    "\nuser",
    "\nUser:",
    "\nassistant",
    "\nAssistant:",
    "\nsystem",
    "\nChild:",
    "\nchild:",
];

/// Splits a growing raw reply into cleaned sentences, each handed out once.
#[derive(Debug, Default)]
pub struct SentenceStream {
    /// Byte offset in the raw text up to which sentences have been handed out.
    consumed: usize,
    emitted: usize,
    /// Set once a turn marker appeared: nothing after it belongs to the reply.
    ended: bool,
    /// Lowercased child's name: Teddy must not claim it as his own.
    child_name: Option<String>,
}

impl SentenceStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also drop sentences in which Teddy says he is the child ("My name is Mia"): a small
    /// model mixes up who is who when the prompt is full of the child's name.
    pub fn with_child_name(mut self, name: Option<&str>) -> Self {
        self.child_name = name
            .map(|n| n.trim().to_lowercase())
            .filter(|n| !n.is_empty());
        self
    }

    /// True once the reply is complete (enough sentences, or the model left its turn).
    pub fn done(&self) -> bool {
        self.ended || self.emitted >= MAX_SENTENCES
    }

    /// New complete sentences in `raw` (the whole reply decoded so far).
    pub fn push(&mut self, raw: &str) -> Vec<String> {
        let (raw, ended) = cut_at_turn_marker(raw);
        self.ended |= ended;
        let mut out = Vec::new();
        while let Some(end) = sentence_end(raw, self.consumed) {
            self.take(&raw[self.consumed..end], &mut out);
            self.consumed = end;
        }
        out
    }

    /// The final, unterminated sentence of `raw`, if any (call once generation has stopped).
    pub fn finish(&mut self, raw: &str) -> Vec<String> {
        let mut out = self.push(raw);
        let (raw, _) = cut_at_turn_marker(raw);
        if self.consumed < raw.len() {
            self.take(&raw[self.consumed..], &mut out);
            self.consumed = raw.len();
        }
        out
    }

    fn take(&mut self, raw_sentence: &str, out: &mut Vec<String>) {
        if self.emitted >= MAX_SENTENCES {
            return;
        }
        let s = clean(raw_sentence);
        // A fragment with no letters ("**", a list number "1.") says nothing aloud.
        // The prompt forbids asking for personal details, but a 135M model still asks "What's
        // your name?" now and then: such a sentence is dropped, whatever else it says.
        let claims_name = self
            .child_name
            .as_deref()
            .is_some_and(|n| claims_name(&s, n));
        if s.chars().any(char::is_alphabetic) && !asks_personal_info(&s) && !claims_name {
            out.push(s);
            self.emitted += 1;
        }
    }
}

/// Phrases that ask a child for something that identifies or locates them.
const PERSONAL_INFO: &[&str] = &[
    "your name",
    "your full name",
    "your last name",
    "your surname",
    "your address",
    "where do you live",
    "where you live",
    "your phone",
    "phone number",
    "your number",
    "your school",
    "which school",
    "what school",
    "your teacher's name",
    "your password",
    "your email",
    "your birthday",
    "how old are you",
    "your parents' names",
    "your mom's name",
    "your dad's name",
    "your location",
    "where are you right now",
    "what city",
    "which city",
    "a photo of you",
    "a picture of you",
    "your secret",
];

/// Whether a sentence asks for personal information (see [`PERSONAL_INFO`]).
pub fn asks_personal_info(sentence: &str) -> bool {
    let s = sentence.to_lowercase().replace('’', "'");
    PERSONAL_INFO.iter().any(|p| s.contains(p))
}

/// "My name is Mia", "I'm Mia", "I am Mia" (`name` lowercased).
fn claims_name(sentence: &str, name: &str) -> bool {
    let s = sentence.to_lowercase().replace('’', "'");
    ["my name is ", "i'm ", "i am "].iter().any(|lead| {
        let claim = format!("{lead}{name}");
        s.match_indices(&claim).any(|(i, m)| {
            let before_ok = i == 0 || !s[..i].ends_with(char::is_alphanumeric);
            let after_ok = !s[i + m.len()..].starts_with(char::is_alphanumeric);
            before_ok && after_ok
        })
    })
}

fn cut_at_turn_marker(raw: &str) -> (&str, bool) {
    match TURN_MARKERS.iter().filter_map(|m| raw.find(m)).min() {
        Some(i) => (&raw[..i], true),
        None => (raw, false),
    }
}

/// End (exclusive, byte offset) of the first complete sentence starting at `from`: after a run
/// of terminators and closing quotes that is followed by whitespace, or at a line break. The
/// whitespace is required so "3.5" or a half-generated "..." is not cut early.
fn sentence_end(raw: &str, from: usize) -> Option<usize> {
    let rest = &raw[from..];
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\n' && rest[..i].chars().any(|c| !c.is_whitespace()) {
            return Some(from + i);
        }
        if !is_terminator(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = chars.peek() {
            if is_terminator(d) || is_closer(d) {
                end = j + d.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        if chars.peek().is_some_and(|&(_, d)| d.is_whitespace()) {
            return Some(from + end);
        }
    }
    None
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？' | '؟')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | '”' | '’' | '»' | '*' | '_')
}

/// Make one sentence speakable: no emojis, no markdown, no speaker label, single spaces.
pub fn clean(raw: &str) -> String {
    let text: String = raw
        .chars()
        .filter(|&c| !is_emoji(c) && !is_markup(c))
        .collect();
    let text = unlink(&text);
    let words: Vec<&str> = text.split_whitespace().collect();
    let text = words.join(" ");
    let text = strip_list_marker(&text);
    strip_speaker_label(text).trim().to_string()
}

/// Emoji and pictographs, with the joiners and selectors that glue them together.
fn is_emoji(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // pictographs, emoticons, transport, flags, supplemental symbols
        | 0x2600..=0x27BF   // misc symbols and dingbats (☀ ✨ ❤)
        | 0x2B00..=0x2BFF   // arrows and stars (⭐)
        | 0x2190..=0x21FF   // arrows
        | 0xFE00..=0xFE0F   // variation selectors
        | 0x200D            // zero-width joiner
        | 0x20E3            // combining keycap
        | 0xE0000..=0xE007F // tag characters
    )
}

/// Markdown emphasis, code, headings and tables: never meant to be read aloud.
fn is_markup(c: char) -> bool {
    matches!(c, '*' | '_' | '`' | '#' | '~' | '|')
}

/// `[text](url)` → `text`.
fn unlink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|i| open + i) else {
            break;
        };
        let Some(paren) = rest[close..].find(')').map(|i| close + i) else {
            break;
        };
        out += &rest[..open];
        out += &rest[open + 1..close];
        rest = &rest[paren + 1..];
    }
    out += rest;
    out
}

/// Leading "- ", "> " or "1. " of a list item or quote.
fn strip_list_marker(text: &str) -> &str {
    let t = text.trim_start();
    if let Some(rest) = t.strip_prefix("- ").or_else(|| t.strip_prefix("> ")) {
        return rest;
    }
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && digits <= 2 {
        if let Some(rest) = t[digits..].strip_prefix(". ") {
            return rest;
        }
    }
    t
}

/// "Teddy: Hello!" → "Hello!": the model sometimes labels its own turn.
fn strip_speaker_label(text: &str) -> &str {
    for label in ["Teddy:", "Teddy Bear:", "Assistant:", "assistant:"] {
        if let Some(rest) = text.strip_prefix(label) {
            return rest;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_text_grows() {
        let mut s = SentenceStream::new();
        assert!(s.push("Hello Mia").is_empty());
        assert!(
            s.push("Hello Mia!").is_empty(),
            "no whitespace after the terminator yet"
        );
        assert_eq!(s.push("Hello Mia! I am 3.5 years"), vec!["Hello Mia!"]);
        assert_eq!(
            s.push("Hello Mia! I am 3.5 years old. Yes"),
            vec!["I am 3.5 years old."]
        );
        assert_eq!(s.finish("Hello Mia! I am 3.5 years old. Yes"), vec!["Yes"]);
    }

    #[test]
    fn stops_after_three_and_at_turn_markers() {
        let mut s = SentenceStream::new();
        let out = s.push("A. B. C. D. ");
        assert_eq!(out, vec!["A.", "B.", "C."]);
        assert!(s.done());
        let mut s = SentenceStream::new();
        assert_eq!(s.finish("Hi there.<|im_end|>user\nMore"), vec!["Hi there."]);
        let mut s = SentenceStream::new();
        assert_eq!(s.finish("Hi there!\nUser: hello"), vec!["Hi there!"]);
        assert!(s.done());
    }

    #[test]
    fn drops_requests_for_personal_details() {
        let mut s = SentenceStream::new();
        let out = s.finish("Mia, hello! What's your name? Where do you live? I like cats.");
        assert_eq!(out, vec!["Mia, hello!", "I like cats."]);
    }

    #[test]
    fn drops_claims_to_be_the_child() {
        let mut s = SentenceStream::new().with_child_name(Some("Mia"));
        let out =
            s.finish("Mia, hello! My name is Mia, and I love toys. I'm Miah's friend. I am Teddy.");
        assert_eq!(
            out,
            vec!["Mia, hello!", "I'm Miah's friend.", "I am Teddy."]
        );
    }

    #[test]
    fn cleans_markdown_and_emoji() {
        assert_eq!(clean("**Teddy:** Hi 🐻 *friend*! 😊"), "Hi friend!");
        assert_eq!(clean("- Let's [play](http://x) ⭐️ "), "Let's play");
        assert_eq!(clean("1. Hug"), "Hug");
    }
}
