//! Short codes: "only people with the code can send" (issue 11). This
//! module owns how a code is generated, written, typed back and read from a
//! terminal or a file; the key exchange that proves both sides know it lives
//! elsewhere and receives [`Code::secret`].
//!
//! A code reads `NNNN-word-word-word-word`, e.g. `4821-orbit-lemon-tiger-brick`:
//!
//! - `NNNN` (0000–9999) is **public**. A receiver may announce it (for
//!   discovery) so a sender can pick the right receiver among several; it
//!   adds no secrecy and is not counted below.
//! - The four words are the **secret**: each is one of 2048 words
//!   ([`WORD_COUNT`], 11 bits), so a code carries [`Code::SECRET_BITS`] = 44
//!   secret bits, drawn from the operating system's random source. That is
//!   few enough to read aloud and far too many to guess online when the
//!   receiver limits wrong codes (see SECURITY.md for the cost).
//! - The secret handed to the key exchange is the canonical text, number
//!   included, so number and words are bound together.
//!
//! Typing a code back, [`Code::parse`] accepts:
//! - any case, and whitespace around the code;
//! - any run of the separators `-`, `_`, `.`, `,`, space or tab between parts;
//! - a word shortened to its first 4 letters or more (`orbi`, `lemo`): no two
//!   words share their first 4 letters, so such a prefix names one word. A
//!   prefix that is also one edit away from another word, or from a prefix
//!   of it (`artic`: `article`, or a slip for `attic`?), is refused as
//!   ambiguous, so shortening never turns a slip into a different word.
//!
//! Nothing else is guessed. A word not in the list is an error that names it
//! and, when one word is within 2 edits, suggests it. The list is built so
//! that no two words are 1 edit apart (a letter inserted, deleted, changed,
//! or two neighbours swapped), so a single slip never turns into another
//! valid word: it is caught here instead of costing a wrong-code attempt.
//!
//! The word list (`code/words.txt`, sorted) is part of the format: a word
//! removed from it makes codes that contain it untypeable on newer builds.
//! It was chosen from the most frequent English words that a spelling
//! dictionary knows, 3 to 7 letters, without function words, names,
//! inflected forms (`tags` when `tag` exists), homophones, and words that are
//! crude, morbid or loaded; the tests check every property above.

mod input;

use std::fmt;
use std::sync::LazyLock;

use zeroize::{Zeroize, Zeroizing};

pub use input::{prompt, read_code_file, CodeFileError};

/// How many code words there are: 2^11.
pub const WORD_COUNT: usize = 2048;

/// Letters a typed word may be shortened to (and still name one word).
pub const PREFIX_LEN: usize = 4;

/// Edits within which a mistyped word gets a "did you mean" suggestion.
const SUGGEST_DISTANCE: usize = 2;

/// Parts of a code: the number and [`WORDS_PER_CODE`] words.
const WORDS_PER_CODE: usize = 4;

/// The longest canonical text: 4 digits, 4 separators, 4 words of 7 letters.
const MAX_CANONICAL_LEN: usize = 4 + WORDS_PER_CODE * (1 + 7);

const WORDS_TXT: &str = include_str!("code/words.txt");

/// Lines in the word list, counted when compiling.
const fn count_lines(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut lines = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            lines += 1;
        }
        i += 1;
    }
    lines
}

const _: () = assert!(count_lines(WORDS_TXT) == WORD_COUNT);

static WORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| WORDS_TXT.lines().collect());

fn words() -> &'static [&'static str] {
    &WORDS
}

/// A short code: a public number and four secret word indices.
///
/// Not `Copy` and not comparable: the words are zeroed when a code is
/// dropped, and comparing codes is the key exchange's job.
#[derive(Clone)]
pub struct Code {
    number: u16,
    words: [u16; WORDS_PER_CODE],
}

impl Code {
    /// Secret bits in a code: four words of 11 bits. The number is public.
    pub const SECRET_BITS: u32 = 44;

    /// A fresh code from the operating system's random source.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes, which on Linux
    /// (getrandom(2)) does not happen once the system has booted; a code
    /// from any weaker source would be worse than no code.
    pub fn generate() -> Code {
        let mut bytes = Zeroizing::new([0u8; 8]);
        fill_random(&mut bytes[..]);
        let mut bits = Zeroizing::new(u64::from_le_bytes(*bytes));
        let mut words = [0u16; WORDS_PER_CODE];
        for word in &mut words {
            *word = (*bits & 0x7ff) as u16;
            *bits >>= 11;
        }
        Code {
            number: random_number(),
            words,
        }
    }

    /// Reads a code as a person typed it; see the module docs for what is
    /// accepted.
    pub fn parse(text: &str) -> Result<Code, CodeError> {
        let mut parts = text
            .split(|c: char| c.is_whitespace() || matches!(c, '-' | '_' | '.' | ','))
            .filter(|part| !part.is_empty());
        let Some(first) = parts.next() else {
            return Err(CodeError::Empty);
        };
        let number = parse_number(first)?;
        let mut words = [0u16; WORDS_PER_CODE];
        let mut found = 0;
        for part in parts {
            if let Some(slot) = words.get_mut(found) {
                *slot = lookup(part)?;
            }
            found += 1;
        }
        if found != WORDS_PER_CODE {
            words.zeroize();
            return Err(CodeError::WordCount { found });
        }
        Ok(Code { number, words })
    }

    /// The public part, 0–9999.
    pub fn number(&self) -> u16 {
        self.number
    }

    /// The bytes the key exchange uses: the canonical text,
    /// e.g. `b"4821-orbit-lemon-tiger-brick"`.
    pub fn secret(&self) -> Zeroizing<Vec<u8>> {
        // Reserved up front so no reallocation leaves a copy behind.
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_CANONICAL_LEN));
        let digits = [
            self.number / 1000,
            self.number / 100 % 10,
            self.number / 10 % 10,
            self.number % 10,
        ];
        out.extend(digits.iter().map(|&d| b'0' + d as u8));
        for word in self.word_texts() {
            out.push(b'-');
            out.extend_from_slice(word.as_bytes());
        }
        out
    }

    fn word_texts(&self) -> impl Iterator<Item = &'static str> + '_ {
        let list = words();
        self.words.iter().map(move |&i| list[usize::from(i)])
    }
}

impl Drop for Code {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

/// The canonical text, `NNNN-word-word-word-word`: secret; show it only to
/// the person who is to pass it on.
impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.number)?;
        for word in self.word_texts() {
            write!(f, "-{word}")?;
        }
        Ok(())
    }
}

/// Only the public number, so a code in a log or panic leaks nothing.
impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({:04}-…)", self.number)
    }
}

/// Why a typed code was refused. The messages name what the person typed:
/// they are for that person's terminal, not for logs.
#[derive(thiserror::Error)]
pub enum CodeError {
    #[error("no code given; a code looks like 4821-orbit-lemon-tiger-brick")]
    Empty,
    #[error(
        "a code starts with its 4-digit number, like 4821-orbit-lemon-tiger-brick; \
         '{}' is not a 4-digit number",
        .0.as_str()
    )]
    Number(Zeroizing<String>),
    #[error(
        "a code has 4 words after its number, like 4821-orbit-lemon-tiger-brick; \
         this one has {found}"
    )]
    WordCount { found: usize },
    #[error(
        "'{}' could be '{start_of}' or a slip for {}; type more of the word",
        .word.as_str(),
        Candidates(.near)
    )]
    Ambiguous {
        word: Zeroizing<String>,
        start_of: &'static str,
        near: Vec<&'static str>,
    },
    #[error("'{}' is not a code word{}", .word.as_str(), Suggestion(*.suggestion))]
    UnknownWord {
        word: Zeroizing<String>,
        suggestion: Option<&'static str>,
    },
}

/// Leaves out what was typed: a `{:?}` in a log must not carry code words.
impl fmt::Debug for CodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeError::Empty => f.write_str("Empty"),
            CodeError::Number(_) => f.write_str("Number(…)"),
            CodeError::WordCount { found } => write!(f, "WordCount {{ found: {found} }}"),
            CodeError::UnknownWord { .. } => f.write_str("UnknownWord { … }"),
            CodeError::Ambiguous { .. } => f.write_str("Ambiguous { … }"),
        }
    }
}

struct Candidates<'a>(&'a [&'static str]);

impl fmt::Display for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, word) in self.0.iter().enumerate() {
            let sep = match i {
                0 => "",
                _ if i + 1 == self.0.len() => " or ",
                _ => ", ",
            };
            write!(f, "{sep}'{word}'")?;
        }
        Ok(())
    }
}

struct Suggestion(Option<&'static str>);

impl fmt::Display for Suggestion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(word) => write!(f, "; did you mean '{word}'?"),
            None => Ok(()),
        }
    }
}

fn fill_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random source failed: {e}");
    }
}

/// A uniform number in 0..=9999: 14 random bits, retried when 10000 or more
/// (a modulo would favour the low numbers).
fn random_number() -> u16 {
    loop {
        let mut bytes = [0u8; 2];
        fill_random(&mut bytes);
        let n = u16::from_le_bytes(bytes) & 0x3fff;
        if n < 10_000 {
            return n;
        }
    }
}

fn parse_number(part: &str) -> Result<u16, CodeError> {
    if part.len() == 4 && part.bytes().all(|b| b.is_ascii_digit()) {
        let n = part.bytes().fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
        Ok(n)
    } else {
        Err(CodeError::Number(Zeroizing::new(part.to_owned())))
    }
}

/// The index of a typed word: exact, or a prefix of at least
/// [`PREFIX_LEN`] letters that is not a likely slip, in any case.
fn lookup(typed: &str) -> Result<u16, CodeError> {
    let word = Zeroizing::new(typed.to_ascii_lowercase());
    match resolve(&word) {
        Resolved::Word(index) => Ok(index),
        Resolved::Ambiguous { start_of, near } => Err(CodeError::Ambiguous {
            word,
            start_of,
            near,
        }),
        Resolved::Unknown => Err(CodeError::UnknownWord {
            suggestion: suggest(&word),
            word,
        }),
    }
}

enum Resolved {
    Word(u16),
    Ambiguous {
        start_of: &'static str,
        near: Vec<&'static str>,
    },
    Unknown,
}

/// [`lookup`] of a lowercase word, without the suggestion search.
fn resolve(word: &str) -> Resolved {
    let list = words();
    let at = list.partition_point(|w| *w < word);
    let Some(&found) = list.get(at) else {
        return Resolved::Unknown;
    };
    // `at` < WORD_COUNT = 2048, which fits a u16.
    if found == word {
        return Resolved::Word(at as u16);
    }
    // The list is sorted, so the first word not below a prefix is the
    // only word that can start with it.
    if word.len() < PREFIX_LEN || !found.starts_with(word) {
        return Resolved::Unknown;
    }
    let near: Vec<&'static str> = list
        .iter()
        .enumerate()
        .filter(|&(i, other)| i != at && one_slip_from(word, other))
        .map(|(_, other)| *other)
        .collect();
    if near.is_empty() {
        Resolved::Word(at as u16)
    } else {
        Resolved::Ambiguous {
            start_of: found,
            near,
        }
    }
}

/// Whether `typed` is one edit from `word` or from a prefix of it that
/// could be typed (at least [`PREFIX_LEN`] letters): then a shortened
/// word that happens to start another word may be a slip for this one.
fn one_slip_from(typed: &str, word: &str) -> bool {
    let low = typed.len().saturating_sub(1).max(PREFIX_LEN);
    let high = (typed.len() + 1).min(word.len());
    (low..=high)
        .chain(std::iter::once(word.len()))
        .any(|k| within_one_edit(typed.as_bytes(), &word.as_bytes()[..k]))
}

/// Whether `a` and `b` are at most one edit apart (an insertion, deletion,
/// substitution or swap of neighbours): [`edit_distance`] `<= 1` without
/// its table, cheap enough to run against the whole list per word typed.
fn within_one_edit(a: &[u8], b: &[u8]) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if long.len() - short.len() > 1 {
        return false;
    }
    let same = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    if short.len() < long.len() {
        // One letter inserted into `short` at `same`.
        return short.get(same..) == long.get(same + 1..);
    }
    if same == short.len() {
        return true;
    }
    // One letter changed at `same`, or it and the next swapped.
    let changed = short.get(same + 1..) == long.get(same + 1..);
    let swapped = short.get(same) == long.get(same + 1)
        && short.get(same + 1) == long.get(same)
        && short.get(same + 2..) == long.get(same + 2..);
    changed || swapped
}

/// The one list word within [`SUGGEST_DISTANCE`] edits of `typed` that is
/// closer than every other; none when two are equally close.
fn suggest(typed: &str) -> Option<&'static str> {
    let mut best: Option<(usize, &'static str)> = None;
    let mut tied = false;
    for &word in words() {
        if word.len().abs_diff(typed.len()) > SUGGEST_DISTANCE {
            continue;
        }
        let d = edit_distance(typed.as_bytes(), word.as_bytes());
        if d > SUGGEST_DISTANCE {
            continue;
        }
        match best {
            Some((b, _)) if d > b => {}
            Some((b, _)) if d == b => tied = true,
            _ => {
                best = Some((d, word));
                tied = false;
            }
        }
    }
    best.filter(|_| !tied).map(|(_, word)| word)
}

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of neighbours each cost 1.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests;
