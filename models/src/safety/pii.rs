//! Personal information in a transcript: phone numbers, emails, street addresses, school
//! names, full names introduced by the child, passwords. Found by patterns (a phone number
//! is a phone number whatever the sentence means), and replaced by placeholders such as
//! `[phone]` so a child's details never land in a topic in clear.
//!
//! Patterns are written for Whisper's output (digits as digits, proper nouns capitalised)
//! and for lower-case text alike where that costs no false alarms.

use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What kind of detail was found; the placeholder is `[kind]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiKind {
    Email,
    Phone,
    Address,
    School,
    Name,
    Password,
}

impl PiiKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Address => "address",
            Self::School => "school",
            Self::Name => "name",
            Self::Password => "password",
        }
    }

    fn placeholder(&self) -> String {
        format!("[{}]", self.as_str())
    }
}

/// One detail: its kind and byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiHit {
    pub kind: PiiKind,
    pub start: usize,
    pub end: usize,
}

const STREET: &str = r"(?:street|st|road|rd|avenue|ave|lane|ln|drive|dr|close|court|ct|way|boulevard|blvd|place|pl|crescent|terrace|grove|gardens|square|parkway|highway|hill|row|mews)\b\.?";
const SCHOOL: &str = r"(?:elementary(?:\s+school)?|primary(?:\s+school)?|academy|middle\s+school|high\s+school|junior\s+school|infant\s+school|school|kindergarten|preschool|nursery|montessori)\b";

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b[a-z0-9._%+\-]+\s?(?:@|\bat\b)\s?[a-z0-9\-]+(?:(?:\.|\s?\bdot\b\s?)[a-z]{2,})+\b",
    )
    .unwrap()
});

/// Digit runs with phone-like separators; checked further in [`phone_like`].
static PHONE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\+?\(?\d[\d\s\-.()]{5,}\d").unwrap());

/// A phone number in words, as some speech-to-text engines write it: seven or more digit
/// words ("five, five, five, eight six seven…"), separated by spaces, commas or hyphens.
static PHONE_WORDS: LazyLock<Regex> = LazyLock::new(|| {
    let digit = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)";
    Regex::new(&format!(r"(?i)\b{digit}(?:[\s,.\-]+{digit}){{6,18}}\b")).unwrap()
});

/// A house number as an engine may write it: digits ("27", "9b") or words ("twenty
/// seven", "one thousand four hundred"), as speech-to-text often spells numbers out.
fn house_number() -> String {
    let word = r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand)";
    format!(r"(?:\d{{1,5}}[A-Za-z]?|(?i:{word}(?:[\s\-]+(?:and\s+)?{word}){{0,5}}))")
}

/// "42 Maple Street", "number 18 Baker Street", "1400 Sunset Boulevard apartment 3",
/// "twenty seven Rosewood Drive": the street's name capitalised, so "3 cookies all the way"
/// or "2 miles up the hill" stay.
static ADDRESS_NUMBERED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\b(?:[Nn]umber\s+)?{},?\s+(?:[A-Z][\w']*\s+){{1,3}}(?i:{STREET})(?i:,?\s+(?:apartment|apt|flat|unit)\s+\w+)?",
        house_number()
    ))
    .unwrap()
});

/// The same in lower case, when a word about home says it is an address.
static ADDRESS_CONTEXT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b(?:live at|lives at|address is|(?:house|home) is(?: at)?|we're at|we are at)\s+((?:number\s+)?{},?\s+(?:[a-z][\w']*\s+){{1,3}}{STREET})",
        house_number()
    ))
    .unwrap()
});

/// "I live on Elm Avenue", "our house is on Birch Street": a named street after a word
/// about home (a capitalised name, so "I live on a busy street" stays).
static ADDRESS_STREET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i:\b(?:live|lives|living|house|home|address|flat|apartment)\b[\w\s,']{{0,20}}?\bon\s+)((?:[A-Z][\w']*\s+){{1,3}}(?i:{STREET}))"
    ))
    .unwrap()
});

/// "Lincoln Elementary", "Saint Mary's school", "Riverside Primary School".
static SCHOOL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"\b(?:(?:St\.?|Saint|Mount|Mt\.?)\s+)?[A-Z][\w']*(?:\s+[A-Z][\w']*){{0,2}}\s+(?i:{SCHOOL})"
    ))
    .unwrap()
});

/// "my school is called oakwood" (lower case): the name after the cue.
static SCHOOL_CALLED: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bmy school(?:'s| is)\s+(?:called|named)\s+((?:[a-z][\w']*\s*){1,3})").unwrap()
});

/// A first and last name after an introduction: "my name is Emma Johnson",
/// "my full name is ...", "I'm Jack Thompson". Capitalised words only, so "my name is
/// Lily and I like cats" keeps Lily (a first name alone is not identifying).
static FULL_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:(?i:\b(?:my|her|his|mom's|mum's|dad's|mommy's|mummy's|daddy's)\s+(?:full\s+|whole\s+|real\s+)?name(?:'s|\s+is)|\bI'm|\bI\s+am|\bthis\s+is|\bcall\s+me))\s+([A-Z][a-z]+(?:[\s-]+[A-Z][a-z]+){1,3})")
        .unwrap()
});

/// "my full name is olivia grace martinez": an explicit "full name" in lower case.
static FULL_NAME_EXPLICIT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:full|whole|real)\s+name(?:'s|\s+is)\s+([a-z]+(?:\s+[a-z]+){1,3})")
        .unwrap()
});

static PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(?:(?:password|passcode)(?:'s|\s+is|:)\s+(\S+)|(?:pin|code)(?:\s+(?:number|for\s+[\w\s]{1,20}?))?(?:'s|\s+is|:)\s+(\d(?:[\s-]?\d){2,}))").unwrap()
});

/// Words that follow an introduction but are no names ("I'm Very Happy", "I am In").
const NOT_NAMES: &[&str] = &[
    "I", "Happy", "Sad", "Sorry", "Very", "So", "Not", "In", "At", "The", "A", "And", "But",
    "Going", "Ok", "Okay", "Good", "Fine", "Scared", "Tired", "Hungry", "Mad", "Angry",
];

/// Every detail in `text`, sorted by position, overlaps removed (first, longest wins).
pub fn detect(text: &str) -> Vec<PiiHit> {
    let mut hits = Vec::new();
    hits.extend(matches(&EMAIL, text, PiiKind::Email, 0));
    hits.extend(phones(text));
    hits.extend(matches(&ADDRESS_NUMBERED, text, PiiKind::Address, 0));
    hits.extend(matches(&ADDRESS_CONTEXT, text, PiiKind::Address, 1));
    hits.extend(matches(&ADDRESS_STREET, text, PiiKind::Address, 1));
    hits.extend(
        matches(&SCHOOL_NAME, text, PiiKind::School, 0)
            .filter(|h| named_school(&text[h.start..h.end])),
    );
    hits.extend(matches(&SCHOOL_CALLED, text, PiiKind::School, 1));
    hits.extend(
        matches(&FULL_NAME, text, PiiKind::Name, 1).filter(|h| real_name(&text[h.start..h.end])),
    );
    hits.extend(matches(&FULL_NAME_EXPLICIT, text, PiiKind::Name, 1));
    hits.extend(matches(&PASSWORD, text, PiiKind::Password, 1));
    hits.extend(matches(&PASSWORD, text, PiiKind::Password, 2));
    without_overlaps(hits)
}

/// Replace every detail with its placeholder; `true` when anything changed.
pub fn redact(text: &str) -> (String, bool) {
    let hits = detect(text);
    if hits.is_empty() {
        return (text.to_string(), false);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for h in &hits {
        out.push_str(&text[at..h.start]);
        out.push_str(&h.kind.placeholder());
        at = h.end;
    }
    out.push_str(&text[at..]);
    (out, true)
}

fn matches<'a>(
    re: &'a Regex,
    text: &'a str,
    kind: PiiKind,
    group: usize,
) -> impl Iterator<Item = PiiHit> + 'a {
    re.captures_iter(text).filter_map(move |c: Captures| {
        let m = c.get(group)?;
        let trimmed = m.as_str().trim_end();
        Some(PiiHit {
            kind,
            start: m.start(),
            end: m.start() + trimmed.len(),
        })
    })
}

/// Phone-shaped digit runs: 7–15 digits. Counting ("1, 2, 3, 4 …" or "1 2 3 4 5 6 7")
/// is not a phone number, so runs made only of single digits need a phone word nearby.
fn phones(text: &str) -> Vec<PiiHit> {
    let hit = |m: regex::Match| PiiHit {
        kind: PiiKind::Phone,
        start: m.start(),
        end: m.end(),
    };
    let digits = PHONE
        .find_iter(text)
        .filter(|m| phone_like(m.as_str(), &text[..m.start()]))
        .map(hit);
    // In words only after a word about phones: a child counting is no phone number.
    let words = PHONE_WORDS
        .find_iter(text)
        .filter(|m| phone_context(&text[..m.start()]));
    digits.chain(words.map(hit)).collect()
}

fn phone_like(candidate: &str, before: &str) -> bool {
    let digits = candidate.chars().filter(char::is_ascii_digit).count();
    if !(7..=19).contains(&digits) {
        return false;
    }
    let groups: Vec<&str> = candidate
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    let has_long_group = groups.iter().any(|g| g.len() >= 3);
    has_long_group || phone_context(before)
}

/// A word about phones in the 40 bytes before a number.
fn phone_context(before: &str) -> bool {
    let mut from = before.len().saturating_sub(40);
    while !before.is_char_boundary(from) {
        from += 1;
    }
    let tail = before[from..].to_lowercase();
    ["phone", "number", "call", "text", "mobile", "cell", "ring"]
        .iter()
        .any(|w| tail.contains(w))
}

/// A school match needs a proper name in front of the school word, not "My school" or
/// "The primary school".
fn named_school(s: &str) -> bool {
    const GENERIC: &[&str] = &[
        "my",
        "the",
        "a",
        "our",
        "your",
        "his",
        "her",
        "their",
        "big",
        "new",
        "old",
        "at",
        "i",
        "in",
        "to",
        "go",
        "primary",
        "elementary",
        "middle",
        "high",
        "junior",
        "after",
        "before",
        "sunday",
        "summer",
        "swimming",
        "dance",
        "ballet",
        "art",
        "music",
        "nursery",
        "this",
        "that",
        "every",
        "no",
        "when",
        "then",
        "and",
        "today",
        "tomorrow",
        "from",
    ];
    let first = s.split_whitespace().next().unwrap_or("").to_lowercase();
    !GENERIC.contains(&first.as_str())
}

fn real_name(s: &str) -> bool {
    s.split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty())
        .all(|w| !NOT_NAMES.contains(&w))
}

fn without_overlaps(mut hits: Vec<PiiHit>) -> Vec<PiiHit> {
    hits.sort_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
    let mut out: Vec<PiiHit> = Vec::new();
    for h in hits {
        match out.last_mut() {
            Some(last) if h.start < last.end => last.end = last.end.max(h.end),
            _ => out.push(h),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<&'static str> {
        detect(t).iter().map(|h| h.kind.as_str()).collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(kinds("my phone number is 555-123-4567"), ["phone"]);
        assert_eq!(kinds("call mummy on 07700 900123"), ["phone"]);
        assert_eq!(
            kinds(
                "My phone number is five, five, five, eight, six, seven, five, three, zero, nine."
            ),
            ["phone"]
        );
        assert_eq!(kinds("my email is sam.jones@example.com"), ["email"]);
        // As an engine writes one it heard spoken.
        assert_eq!(kinds("my email is sam at example dot com"), ["email"]);
        assert_eq!(kinds("my email is sam at example.co.uk"), ["email"]);
        assert_eq!(kinds("I live at 42 Maple Street"), ["address"]);
        assert_eq!(kinds("we live at number 18 Baker Street"), ["address"]);
        assert_eq!(kinds("We live on Elm Avenue"), ["address"]);
        assert_eq!(kinds("I go to Lincoln Elementary"), ["school"]);
        assert_eq!(kinds("I go to Saint Mary's school in Oakville"), ["school"]);
        assert_eq!(kinds("my name is Emma Johnson"), ["name"]);
        assert_eq!(kinds("my name's Lucas Garcia and I'm six"), ["name"]);
        assert_eq!(kinds("my full name is olivia grace martinez"), ["name"]);
        assert_eq!(kinds("my password is sunshine123"), ["password"]);
        assert_eq!(
            kinds("the code for our front door is 4 5 8 2"),
            ["password"]
        );
        assert_eq!(kinds("my address is 9 station road"), ["address"]);
        // Numbers spelt out, as engines write what they hear.
        assert_eq!(kinds("I live at twenty seven Rosewood Drive"), ["address"]);
        assert_eq!(
            kinds("our house is at one thousand four hundred sunset boulevard"),
            ["address"]
        );
        assert_eq!(kinds("my address is nine station road"), ["address"]);
    }

    #[test]
    fn leaves_innocent_numbers_and_names() {
        for t in [
            "my name is Lily",
            "my name is Lily and I like cats",
            "I'm seven years old",
            "I can count 1 2 3 4 5 6 7 8 9 10",
            "I can count one two three four five six seven eight nine ten",
            "one, two, three, 1, 2, 3, 4, 5, 6, 7, 8",
            "the bus number 42 goes to my school",
            "there are 365 days in a year",
            "I go to school on the bus",
            "my school is big",
            "I live on a busy street",
            "I'm Very Happy",
            "my birthday is on the 3rd of May 2017",
            "I ate 3 cookies all the way",
            "we walked 2 miles up the hill",
            "we walked two miles up the hill",
            "I have three Lego sets and one big road track",
            "my pin is broken",
            "I came 1st place in the race",
            // A sentence break after "at <word>" is no domain's dot.
            "we learned about the human body at school. We have a heart and lungs",
            "we had cake at grandma. Then we went home",
        ] {
            assert!(detect(t).is_empty(), "{t}: {:?}", detect(t));
        }
    }

    #[test]
    fn redacts_in_place() {
        let (r, changed) =
            redact("call me at 617-555-0142 or mail kid@example.org, I live at 9 Station Road");
        assert!(changed);
        assert_eq!(r, "call me at [phone] or mail [email], I live at [address]");
        assert_eq!(redact("hello teddy"), ("hello teddy".to_string(), false));
    }
}
