//! Measures of a reply worth hearing, for `teddyflow bench replies`: readability for a young
//! child (Flesch–Kincaid grade), sentences, whether it ends with a question, how it opens (to
//! count openings repeated within a conversation) and whether it greets. Relevance (MiniLM
//! cosine between utterance and reply) needs the embedder and is computed by the bench.
//!
//! [`FreshStart`] acts on two of them: the reply stage and `bench replies` both use it to
//! keep a conversation under way from greeting the child again or opening as before.

/// Flesch–Kincaid grade level: 0.39 × words/sentence + 11.8 × syllables/word − 15.59.
/// Around 0–2 is what a 4–7 year old hears comfortably. `None` for text without words.
pub fn flesch_kincaid_grade(text: &str) -> Option<f64> {
    let words = words(text);
    if words.is_empty() {
        return None;
    }
    let sentences = sentence_count(text).max(1) as f64;
    let syllables: usize = words.iter().map(|w| syllables(w)).sum();
    let n = words.len() as f64;
    Some(0.39 * n / sentences + 11.8 * syllables as f64 / n - 15.59)
}

/// Words: runs of letters, digits and inner apostrophes, lowercased.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| w.trim_matches(['\'', '’']).to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Sentences: runs of text ended by `.`, `!`, `?` or `…` (or the end), with a letter in them.
pub fn sentence_count(text: &str) -> usize {
    text.split(['.', '!', '?', '…'])
        .filter(|s| s.chars().any(char::is_alphabetic))
        .count()
}

/// Syllables of one English word, by vowel groups: a silent final "e" is dropped ("make"),
/// "-le" after a consonant keeps its syllable ("little"), and every word has at least one.
pub fn syllables(word: &str) -> usize {
    let w: Vec<char> = word
        .to_lowercase()
        .chars()
        .filter(char::is_ascii_alphabetic)
        .collect();
    if w.is_empty() {
        return usize::from(word.chars().any(char::is_alphanumeric));
    }
    let vowel = |c: char| matches!(c, 'a' | 'e' | 'i' | 'o' | 'u' | 'y');
    let mut groups = 0;
    let mut prev = false;
    for &c in &w {
        let v = vowel(c);
        if v && !prev {
            groups += 1;
        }
        prev = v;
    }
    let n = w.len();
    let ends_le = n > 2 && w[n - 2] == 'l' && w[n - 1] == 'e' && !vowel(w[n - 3]);
    if n > 2 && w[n - 1] == 'e' && !ends_le && groups > 1 {
        groups -= 1;
    }
    groups.max(1)
}

/// Whether the reply's last sentence is a question (an invitation to keep talking).
pub fn ends_with_question(text: &str) -> bool {
    text.trim_end()
        .trim_end_matches(['"', '\'', ')', '”', '’'])
        .ends_with('?')
}

/// How a reply opens: its first `n` words, lowercased, without the child's name — "Mia, what
/// a tower!" and "What a tower, Leo!" open alike.
pub fn opening(text: &str, child_name: Option<&str>, n: usize) -> String {
    let name = child_name.map(str::to_lowercase);
    words(text)
        .into_iter()
        .filter(|w| Some(w) != name.as_ref())
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether a reply greets the child, as if the conversation were starting.
pub fn greets(text: &str) -> bool {
    let t = text.to_lowercase().replace('’', "'");
    let first: Vec<String> = words(&t).into_iter().take(3).collect();
    let hello = first
        .iter()
        .any(|w| matches!(w.as_str(), "hello" | "hi" | "hey" | "hiya" | "greetings"));
    hello
        || [
            "nice to meet you",
            "good to meet you",
            "pleased to meet you",
            "glad to meet you",
            "welcome",
            // "It's so nice to have you here", "I'm so glad you're here": the same restart.
            "to have you here",
            "glad you're here",
            "happy you're here",
            "glad you are here",
        ]
        .iter()
        .any(|p| t.contains(p))
}

/// Keeps a reply in a conversation under way from sounding like a restart. The small reply
/// model greets again ("It's so nice to meet you!") and opens most turns alike ("I'm so glad
/// you're here"), whatever the prompt says; so, sentence by sentence as they are generated:
/// - a sentence that greets is dropped;
/// - a first sentence that opens as an earlier reply did (its first three words, the name
///   aside) is dropped;
///
/// but never the whole reply: the first stale sentence is held, and said after all when no
/// other sentence follows ([`FreshStart::finish`]). Only sentences within the reply policy
/// are fed to it. The cost: when the first sentence is held, the child hears the reply one
/// sentence later (the name, said at once, is not delayed).
#[derive(Debug, Default)]
pub struct FreshStart {
    /// How earlier replies of the conversation opened; empty at its first turn.
    openings: Vec<String>,
    name: Option<String>,
    /// What the reply was made to start with ("Mia,"), kept in front of whatever sentence
    /// ends up first.
    reply_opening: Option<String>,
    held: Option<String>,
    said_any: bool,
}

impl FreshStart {
    /// `earlier`: the conversation's earlier replies, oldest first.
    pub fn new<'a>(
        earlier: impl IntoIterator<Item = &'a str>,
        child_name: Option<&str>,
        reply_opening: Option<&str>,
    ) -> Self {
        Self {
            openings: earlier
                .into_iter()
                .map(|r| opening(r, child_name, 3))
                .collect(),
            name: child_name.map(str::to_string),
            reply_opening: reply_opening.map(str::to_string),
            ..Self::default()
        }
    }

    /// The sentence as it should be said and recorded, or `None` when it is left out (or
    /// held). The first sentence said carries the reply opening.
    pub fn admit(&mut self, sentence: &str) -> Option<String> {
        if !self.stale(sentence) {
            return Some(self.record(sentence));
        }
        if !self.said_any && self.held.is_none() {
            self.held = Some(sentence.to_string());
        }
        None
    }

    /// The held sentence, when nothing else was said: a stale reply beats no reply.
    pub fn finish(&mut self) -> Option<String> {
        let held = self.held.take()?;
        (!self.said_any).then(|| self.record(&held))
    }

    fn stale(&self, sentence: &str) -> bool {
        if self.openings.is_empty() {
            return false;
        }
        greets(sentence)
            || (!self.said_any
                && self
                    .openings
                    .contains(&opening(sentence, self.name.as_deref(), 3)))
    }

    fn record(&mut self, sentence: &str) -> String {
        let first = !std::mem::replace(&mut self.said_any, true);
        match &self.reply_opening {
            Some(o) if first && !sentence.starts_with(o.as_str()) => after_opening(o, sentence),
            _ => sentence.to_string(),
        }
    }
}

/// "Mia," + "What a tower!" → "Mia, what a tower!" ("I" keeps its capital).
fn after_opening(opening: &str, sentence: &str) -> String {
    let sentence = sentence.trim_start();
    let keeps_capital = sentence.starts_with("I ") || sentence.starts_with("I'");
    let mut chars = sentence.chars();
    let first: String = match chars.next() {
        Some(c) if !keeps_capital => c.to_lowercase().collect(),
        Some(c) => c.to_string(),
        None => String::new(),
    };
    format!("{opening} {first}{}", chars.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syllables_of_common_words() {
        for (w, n) in [
            ("cat", 1),
            ("make", 1),
            ("little", 2),
            ("teddy", 2),
            ("beautiful", 3),
            ("the", 1),
            ("I", 1),
            ("wonderful", 3),
            ("12", 1),
        ] {
            assert_eq!(syllables(w), n, "{w}");
        }
    }

    #[test]
    fn grade_rises_with_long_words_and_sentences() {
        let easy = flesch_kincaid_grade("I see a cat. The cat is big. Do you like it?").unwrap();
        let hard = flesch_kincaid_grade(
            "Photosynthesis transforms electromagnetic radiation into chemical energy, \
             sustaining extraordinarily complicated ecosystems.",
        )
        .unwrap();
        assert!(easy < 1.0, "{easy}");
        assert!(hard > 12.0, "{hard}");
        assert!(flesch_kincaid_grade(" ... ").is_none());
        assert_eq!(sentence_count("Hi Mia! How are you? Fine."), 3);
    }

    #[test]
    fn openings_greetings_and_questions() {
        assert_eq!(
            opening("Mia, what a tower!", Some("Mia"), 3),
            "what a tower"
        );
        assert_eq!(
            opening("What a tower, Mia!", Some("Mia"), 3),
            "what a tower"
        );
        assert!(greets("Hello Mia! It's so nice to meet you."));
        assert!(greets("Mia, it's so nice to meet you!"));
        assert!(greets("It's so nice to have you here, Mia."));
        assert!(greets("I'm so glad you're here!"));
        assert!(!greets("You're here at the park with your kite?"));
        assert!(!greets("Mia, what a tall tower!"));
        assert!(ends_with_question("Shall we play? "));
        assert!(!ends_with_question("Let's play."));
    }

    #[test]
    fn a_fresh_start_drops_greetings_and_repeated_openings_but_never_the_whole_reply() {
        let earlier = ["Mia, I'm so glad you're here! Shall we play?"];
        let mut f = FreshStart::new(earlier, Some("Mia"), Some("Mia,"));
        assert_eq!(f.admit("Mia, I'm so glad you like it."), None);
        assert_eq!(f.admit("It's so nice to meet you."), None);
        assert_eq!(
            f.admit("What a tall tower!").as_deref(),
            Some("Mia, what a tall tower!")
        );
        // Once the reply has started, only greetings are left out.
        assert_eq!(
            f.admit("I'm so glad you built it.").as_deref(),
            Some("I'm so glad you built it.")
        );
        assert_eq!(f.admit("Hello again!"), None);
        assert_eq!(f.finish(), None);

        // Nothing else followed: the held sentence is said after all.
        let mut f = FreshStart::new(earlier, Some("Mia"), Some("Mia,"));
        assert_eq!(f.admit("Mia, I'm so glad you came back."), None);
        assert_eq!(
            f.finish().as_deref(),
            Some("Mia, I'm so glad you came back.")
        );

        // The first turn greets as it likes.
        let mut f = FreshStart::new([], Some("Mia"), Some("Mia,"));
        assert_eq!(
            f.admit("Mia, it's so nice to meet you!").as_deref(),
            Some("Mia, it's so nice to meet you!")
        );
        assert_eq!(after_opening("Mia,", "I think so."), "Mia, I think so.");
    }
}
