//! Word error rate: Levenshtein distance over normalized words, divided by the
//! number of reference words.
//!
//! Normalization is deliberately simple (lowercase, punctuation dropped, whitespace
//! collapsed): "Mr." against "mister" still counts as an error, so reported numbers
//! are a little pessimistic rather than flattering.

/// Lowercases, keeps letters/digits/apostrophes inside words, collapses whitespace.
pub fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        // Arabic short-vowel marks and the stretching tatweel: written by some engines and
        // references and not by others, they are not letters a listener hears wrong.
        .filter(|c| !matches!(c, '\u{064B}'..='\u{0652}' | '\u{0670}' | '\u{0640}'))
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .flat_map(char::to_lowercase)
        .collect();
    cleaned
        .split_whitespace()
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// (substitutions + insertions + deletions, number of reference words).
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    let r: Vec<&str> = r.split_whitespace().collect();
    let h: Vec<&str> = h.split_whitespace().collect();
    (edit_distance(&r, &h), r.len())
}

/// Edits per reference word; an empty reference scores 0 for an empty hypothesis and 1 otherwise.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (edits, n) = word_errors(reference, hypothesis);
    match n {
        0 => f64::from(u8::from(edits > 0)),
        n => edits as f64 / n as f64,
    }
}

/// Character errors over [`normalize`]d text with Latin accents folded (á → a, ñ → n, ...)
/// and Arabic alef forms folded (أ إ آ → ا): (edits, reference characters, spaces between
/// words included). Reference transcripts often drop accents ("numero" for "número", "احمد"
/// for "أحمد"); folding keeps that from counting as an error.
pub fn char_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r: Vec<char> = normalize(reference).chars().map(fold_accent).collect();
    let h: Vec<char> = normalize(hypothesis).chars().map(fold_accent).collect();
    (edit_distance(&r, &h), r.len())
}

/// Character error rate: edits per reference character (see [`char_errors`]).
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let (edits, n) = char_errors(reference, hypothesis);
    match n {
        0 => f64::from(u8::from(edits > 0)),
        n => edits as f64 / n as f64,
    }
}

fn fold_accent(c: char) -> char {
    match c {
        'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ñ' => 'n',
        'ç' => 'c',
        // Arabic alef with hamza or madda: often written as a bare alef.
        'أ' | 'إ' | 'آ' | 'ٱ' => 'ا',
        c => c,
    }
}

/// Classic two-row Levenshtein distance.
fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, wa) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, wb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(wa != wb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_punctuation_and_case() {
        assert_eq!(
            normalize("  Hello, Teddy!  How are you? "),
            "hello teddy how are you"
        );
        assert_eq!(normalize("Don't stop -- 'quoted'"), "don't stop quoted");
        assert_eq!(normalize("Mr. Dashwood"), "mr dashwood");
    }

    #[test]
    fn character_errors_fold_accents() {
        assert_eq!(char_errors("Número de agente", "numero de agente"), (0, 16));
        assert_eq!(char_errors("contraseña", "contrasena."), (0, 10));
        assert_eq!(char_errors("gracias", "gracia"), (1, 7));
        assert_eq!(char_errors("مرحبًا يا أحمد", "مرحبا يا احمد"), (0, 13));
        assert_eq!(char_errors("قطة", "قطط"), (1, 3));
        assert_eq!(cer("", ""), 0.0);
        assert_eq!(cer("", "x"), 1.0);
        assert!((cer("abcd", "abxd") - 0.25).abs() < 1e-12);
    }

    #[test]
    fn identical_is_zero() {
        assert_eq!(wer("the cat sat", "The cat, sat."), 0.0);
        assert_eq!(word_errors("the cat sat", "the cat sat"), (0, 3));
    }

    #[test]
    fn one_substitution() {
        assert_eq!(word_errors("the cat sat", "the dog sat"), (1, 3));
        assert!((wer("the cat sat", "the dog sat") - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn insertion_and_deletion() {
        assert_eq!(word_errors("the cat sat", "the cat sat down"), (1, 3));
        assert_eq!(word_errors("the cat sat", "cat sat"), (1, 3));
        assert_eq!(word_errors("a b c d", "b c d e"), (2, 4));
    }

    #[test]
    fn empty_cases() {
        assert_eq!(wer("", ""), 0.0);
        assert_eq!(wer("", "noise"), 1.0);
        assert_eq!(wer("two words", ""), 1.0);
    }
}
