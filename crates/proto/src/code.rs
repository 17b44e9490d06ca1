//! One-time invitation codes, said aloud: `<number>-<word>-<word>`, as in
//! `17-ocean-violin`.
//!
//! The number names the rendezvous at the relay (it is not secret; the relay
//! allocates it). The words are the secret the two sides run a PAKE on: two words
//! of the BIP-39 English list (2048 words whose first four letters are unique), so
//! 22 bits. The relay lets one party join a rendezvous, once: a guesser gets one
//! guess per code, with odds of one in 4,194,304.
//!
//! Parsing forgives case and separators (`17 Ocean violin`), accepts a unique
//! four-letter prefix of a word (`17-ocea-viol`), and answers a typo with the word
//! meant ("'ocaen' is not a code word; did you mean 'ocean'?") rather than guessing:
//! a wrong guess would use the code up.

use std::fmt;
use std::str::FromStr;

use bip39::Language;

/// Words after the number.
pub const CODE_WORDS: usize = 2;

/// Bits of secret in a code: 11 per word.
pub const CODE_SECRET_BITS: u32 = 11 * CODE_WORDS as u32;

/// A parsed invitation code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InviteCode {
    /// The rendezvous number at the relay.
    pub nameplate: u32,
    /// Indexes into the word list.
    words: [u16; CODE_WORDS],
}

/// Why a code could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// No number at the start.
    #[error("a code starts with its number, as in 17-ocean-violin")]
    NoNumber,
    /// Not as many words as a code has.
    #[error("a code has {expected} words after its number, this one has {found}")]
    WordCount {
        /// How many a code has.
        expected: usize,
        /// How many were given.
        found: usize,
    },
    /// A word that is not in the list.
    #[error("'{word}' is not a code word{}", suggestion.map(|s| format!("; did you mean '{s}'?")).unwrap_or_default())]
    UnknownWord {
        /// What was typed.
        word: String,
        /// The closest word of the list, if one is close.
        suggestion: Option<&'static str>,
    },
}

fn words() -> &'static [&'static str; 2048] {
    Language::English.word_list()
}

impl InviteCode {
    /// A code from a rendezvous number and at least 3 random bytes (the first 22
    /// bits are used).
    pub fn new(nameplate: u32, random: [u8; 3]) -> Self {
        let bits = u32::from(random[0]) << 16 | u32::from(random[1]) << 8 | u32::from(random[2]);
        let first = ((bits >> 13) & 0x7ff) as u16;
        let second = ((bits >> 2) & 0x7ff) as u16;
        Self {
            nameplate,
            words: [first, second],
        }
    }

    /// The secret the two sides run the PAKE on: the whole code, written canonically
    /// (so the number is bound into the key as well).
    pub fn password(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.nameplate)?;
        for &w in &self.words {
            let word = words().get(usize::from(w)).copied().unwrap_or("?");
            write!(f, "-{word}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words are the secret.
        write!(f, "InviteCode({}-…)", self.nameplate)
    }
}

impl FromStr for InviteCode {
    type Err = CodeError;

    fn from_str(text: &str) -> Result<Self, CodeError> {
        let lower = text.trim().to_lowercase();
        let mut parts = lower
            .split(|c: char| c == '-' || c == '_' || c == ',' || c == '.' || c.is_whitespace())
            .filter(|p| !p.is_empty());
        let nameplate = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0)
            .ok_or(CodeError::NoNumber)?;
        let given: Vec<&str> = parts.collect();
        if given.len() != CODE_WORDS {
            return Err(CodeError::WordCount {
                expected: CODE_WORDS,
                found: given.len(),
            });
        }
        let mut out = [0u16; CODE_WORDS];
        for (slot, word) in out.iter_mut().zip(&given) {
            *slot = lookup(word)?;
        }
        Ok(Self {
            nameplate,
            words: out,
        })
    }
}

/// A word, or the unique word it is a prefix (of at least four letters) of.
fn lookup(word: &str) -> Result<u16, CodeError> {
    if let Some(i) = Language::English.find_word(word) {
        return Ok(i);
    }
    if word.chars().count() >= 4 {
        let matches = Language::English.words_by_prefix(word);
        if let [only] = matches
            && let Some(i) = Language::English.find_word(only)
        {
            return Ok(i);
        }
    }
    Err(CodeError::UnknownWord {
        word: word.to_owned(),
        suggestion: closest(word),
    })
}

/// The word of the list nearest to `word` by edit distance (transpositions count
/// once), if it is at most 2 edits away and no other word is as near.
fn closest(word: &str) -> Option<&'static str> {
    // List words have 3 to 8 letters: anything much longer is no typo of one.
    if word.chars().count() > 12 {
        return None;
    }
    let mut best: Option<(usize, &'static str)> = None;
    let mut tie = false;
    for &candidate in words() {
        let d = edit_distance(word, candidate);
        match best {
            Some((b, _)) if d > b => {}
            Some((b, _)) if d == b => tie = true,
            _ => {
                best = Some((d, candidate));
                tie = false;
            }
        }
    }
    match best {
        Some((d, w)) if d <= 2 && !tie => Some(w),
        _ => None,
    }
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and
/// adjacent transpositions.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        if let Some(cell) = d.get_mut(at(i, 0)) {
            *cell = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(cell) = d.get_mut(at(0, j)) {
            *cell = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a.get(i - 1) != b.get(j - 1));
            let get = |i: usize, j: usize| d.get(at(i, j)).copied().unwrap_or(usize::MAX / 2);
            let mut v = (get(i - 1, j) + 1)
                .min(get(i, j - 1) + 1)
                .min(get(i - 1, j - 1) + cost);
            if i > 1 && j > 1 && a.get(i - 1) == b.get(j - 2) && a.get(i - 2) == b.get(j - 1) {
                v = v.min(get(i - 2, j - 2) + 1);
            }
            if let Some(cell) = d.get_mut(at(i, j)) {
                *cell = v;
            }
        }
    }
    d.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_word_list_has_2048_words_unique_in_four_letters() {
        assert_eq!(words().len(), 2048);
        let prefixes: HashSet<String> = words()
            .iter()
            .map(|w| w.chars().take(4).collect())
            .collect();
        assert_eq!(prefixes.len(), 2048);
        const { assert!(CODE_SECRET_BITS >= 16) };
        assert_eq!(CODE_SECRET_BITS, 22);
    }

    #[test]
    fn every_random_value_gives_a_distinct_code() {
        // 22 bits of the 24 are used: values differing there give different codes.
        let a = InviteCode::new(7, [0, 0, 0]);
        let b = InviteCode::new(7, [0, 0, 4]);
        let c = InviteCode::new(7, [0x80, 0, 0]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            InviteCode::new(7, [0, 0, 3]),
            a,
            "the last two bits are unused"
        );
        assert_eq!(a.to_string(), "7-abandon-abandon");
        assert_eq!(
            InviteCode::new(7, [0xff, 0xff, 0xff]).to_string(),
            "7-zoo-zoo"
        );
    }

    #[test]
    fn parsing_forgives_case_separators_and_prefixes() {
        let code: InviteCode = "17-ocean-violin".parse().unwrap();
        assert_eq!(code.to_string(), "17-ocean-violin");
        for variant in [
            "  17 Ocean VIOLIN ",
            "17_ocean_violin",
            "17-ocea-viol",
            "17 ocean, violin",
        ] {
            assert_eq!(variant.parse::<InviteCode>().unwrap(), code, "{variant}");
        }
        assert_eq!(code.password(), "17-ocean-violin");
        assert_eq!(format!("{code:?}"), "InviteCode(17-…)");
    }

    #[test]
    fn typos_get_helpful_errors() {
        let err = "17-ocaen-violin".parse::<InviteCode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "'ocaen' is not a code word; did you mean 'ocean'?"
        );
        let err = "17-ocean-vioiln".parse::<InviteCode>().unwrap_err();
        assert!(err.to_string().contains("did you mean 'violin'"), "{err}");
        let err = "17-ocean-qqqqqqqq".parse::<InviteCode>().unwrap_err();
        assert_eq!(err.to_string(), "'qqqqqqqq' is not a code word");
        assert_eq!(
            "ocean-violin".parse::<InviteCode>().unwrap_err(),
            CodeError::NoNumber
        );
        assert_eq!(
            "0-ocean-violin".parse::<InviteCode>().unwrap_err(),
            CodeError::NoNumber
        );
        assert_eq!(
            "17-ocean".parse::<InviteCode>().unwrap_err(),
            CodeError::WordCount {
                expected: 2,
                found: 1
            }
        );
        // A prefix shared by several words is not guessed.
        assert!(matches!(
            "17-ab-violin".parse::<InviteCode>().unwrap_err(),
            CodeError::UnknownWord { .. }
        ));
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("ocean", "ocean"), 0);
        assert_eq!(edit_distance("ocaen", "ocean"), 1);
        assert_eq!(edit_distance("ocen", "ocean"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    proptest! {
        #[test]
        fn codes_round_trip(n in 1u32.., r in any::<[u8; 3]>()) {
            let code = InviteCode::new(n, r);
            prop_assert_eq!(code.to_string().parse::<InviteCode>().unwrap(), code);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<InviteCode>();
        }
    }
}
