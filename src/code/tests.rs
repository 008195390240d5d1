use std::collections::HashSet;

use super::*;

fn canonical(code: &Code) -> String {
    String::from_utf8(code.secret().to_vec()).expect("canonical text is ASCII")
}

#[test]
fn word_list_has_2048_distinct_sorted_words() {
    let list = words();
    assert_eq!(list.len(), WORD_COUNT);
    assert_eq!(1 << 11, WORD_COUNT, "11 bits per word");
    assert_eq!(Code::SECRET_BITS, 11 * WORDS_PER_CODE as u32);
    let distinct: HashSet<_> = list.iter().collect();
    assert_eq!(distinct.len(), WORD_COUNT, "duplicate words");
    for pair in list.windows(2) {
        assert!(
            pair[0] < pair[1],
            "not sorted: {} before {}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn word_list_is_3_to_7_lowercase_letters() {
    for word in words() {
        assert!((3..=7).contains(&word.len()), "length of {word:?}");
        assert!(
            word.bytes().all(|b| b.is_ascii_lowercase()),
            "letters of {word:?}"
        );
    }
}

#[test]
fn word_list_first_4_letters_name_one_word() {
    let mut seen = HashSet::new();
    for word in words() {
        let prefix = &word[..word.len().min(PREFIX_LEN)];
        assert!(seen.insert(prefix), "two words start with {prefix:?}");
    }
}

#[test]
fn word_list_no_two_words_one_edit_apart() {
    let list = words();
    for (i, a) in list.iter().enumerate() {
        for b in &list[i + 1..] {
            assert!(
                !within_one_edit(a.as_bytes(), b.as_bytes()),
                "{a} and {b} are one edit apart"
            );
        }
    }
}

#[test]
fn within_one_edit_agrees_with_edit_distance() {
    let samples = [
        "", "a", "ab", "ba", "abc", "acb", "bac", "abd", "abcd", "abdc", "xbcd", "abc", "lemon",
        "lemmon", "lmeon", "melon", "lemons", "emon", "lemno", "attic", "artic",
    ];
    for a in samples {
        for b in samples {
            assert_eq!(
                within_one_edit(a.as_bytes(), b.as_bytes()),
                edit_distance(a.as_bytes(), b.as_bytes()) <= 1,
                "{a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn edit_distance_counts_each_kind_of_edit() {
    assert_eq!(edit_distance(b"lemon", b"lemon"), 0);
    assert_eq!(edit_distance(b"lemmon", b"lemon"), 1);
    assert_eq!(edit_distance(b"lemn", b"lemon"), 1);
    assert_eq!(edit_distance(b"lenon", b"lemon"), 1);
    assert_eq!(edit_distance(b"lmeon", b"lemon"), 1);
    assert_eq!(edit_distance(b"", b"abc"), 3);
    assert_eq!(edit_distance(b"orbit", b"lemon"), 5);
}

#[test]
fn generate_gives_in_range_parts_that_parse_back() {
    for _ in 0..200 {
        let code = Code::generate();
        assert!(code.number() <= 9999);
        assert!(code.words.iter().all(|&w| usize::from(w) < WORD_COUNT));
        let text = code.to_string();
        assert_eq!(text.as_bytes(), &code.secret()[..]);
        let back = Code::parse(&text).expect("a generated code parses");
        assert_eq!(canonical(&back), text);
    }
}

#[test]
fn generate_varies_the_words() {
    // 44 bits: two equal draws in a row mean the source is not random.
    let a = Code::generate();
    let b = Code::generate();
    assert_ne!(canonical(&a), canonical(&b));
}

#[test]
fn display_is_canonical_with_leading_zeros() {
    let code = Code {
        number: 42,
        words: [0, 1, 2047, 1024],
    };
    let list = words();
    let expected = format!("0042-{}-{}-{}-{}", list[0], list[1], list[2047], list[1024]);
    assert_eq!(code.to_string(), expected);
    assert_eq!(canonical(&code), expected);
}

#[test]
fn debug_shows_only_the_number() {
    let code = Code {
        number: 4821,
        words: [10, 20, 30, 40],
    };
    let debug = format!("{code:?}");
    assert_eq!(debug, "Code(4821-…)");
    for word in code.word_texts() {
        assert!(!debug.contains(word));
    }
}

fn sample() -> (Code, [&'static str; 4]) {
    let code = Code {
        number: 4821,
        words: [100, 600, 1200, 1900],
    };
    let w: Vec<_> = code.word_texts().collect();
    (code.clone(), [w[0], w[1], w[2], w[3]])
}

#[test]
fn parse_canonical() {
    let (code, _) = sample();
    let parsed = Code::parse(&code.to_string()).expect("canonical parses");
    assert_eq!(parsed.number(), 4821);
    assert_eq!(canonical(&parsed), code.to_string());
}

#[test]
fn parse_ignores_case_whitespace_and_separator_runs() {
    let (code, [a, b, c, d]) = sample();
    let inputs = [
        format!("  4821 {a} {b} {c} {d}\n"),
        format!("4821_{}.{},{}--{}", a.to_uppercase(), b, c, d),
        format!("\t4821 - {a} -- {b}, {c}. {d}  "),
        format!("4821-{}-{b}-{c}-{d}", capitalise(a)),
    ];
    for input in inputs {
        let parsed = Code::parse(&input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(canonical(&parsed), code.to_string(), "{input:?}");
    }
}

fn capitalise(word: &str) -> String {
    let mut out = word.to_owned();
    out[..1].make_ascii_uppercase();
    out
}

#[test]
fn parse_prefixes_name_their_word_or_are_refused() {
    // Every prefix of 4 letters or more is either taken for its own word or
    // refused as a possible slip; never taken for another word.
    let list = words();
    let mut accepted = 0;
    for (i, word) in list.iter().enumerate() {
        for len in PREFIX_LEN..word.len() {
            match resolve(&word[..len]) {
                Resolved::Word(found) => {
                    assert_eq!(found, i as u16, "{word} as {len}");
                    accepted += 1;
                }
                Resolved::Ambiguous { start_of, .. } => assert_eq!(start_of, *word),
                Resolved::Unknown => panic!("{} unknown", &word[..len]),
            }
        }
        assert!(matches!(resolve(word), Resolved::Word(f) if f == i as u16));
    }
    // Of the about 5,000 shortened forms a bit under a quarter stay; the
    // rest are one slip from another word or from its start.
    assert!(accepted > 1000, "only {accepted} prefixes accepted");
}

#[test]
fn parse_refuses_shorter_prefixes() {
    // A 3-letter start of a longer word is not taken for it.
    let list = words();
    let long = list.iter().find(|w| w.len() >= 5).expect("a long word");
    let short = &long[..3];
    if !list.contains(&short) {
        assert!(matches!(lookup(short), Err(CodeError::UnknownWord { .. })));
    }
}

#[test]
fn parse_refuses_a_word_with_extra_letters_past_the_word() {
    let list = words();
    let word = list.iter().find(|w| w.len() == 7).expect("a 7-letter word");
    let typed = format!("{word}x");
    let err = lookup(&typed).expect_err("not a list word");
    assert_eq!(
        err.to_string(),
        format!("'{typed}' is not a code word; did you mean '{word}'?")
    );
}

#[test]
fn parse_suggests_the_closest_word_for_one_slip() {
    let err = Code::parse("4821-lemmon-lemon-lemon-lemon").expect_err("typo");
    assert_eq!(
        err.to_string(),
        "'lemmon' is not a code word; did you mean 'lemon'?"
    );
    let err = Code::parse("4821-LMEON-lemon-lemon-lemon").expect_err("swap");
    assert_eq!(
        err.to_string(),
        "'lmeon' is not a code word; did you mean 'lemon'?"
    );
}

#[test]
fn parse_every_single_slip_is_refused_never_another_word() {
    // The list's 2-edit spacing means a single substitution of any word is
    // never silently a different word.
    let list = words();
    for (i, word) in list.iter().enumerate().step_by(7) {
        for pos in 0..word.len() {
            for letter in b'a'..=b'z' {
                let mut typo = word.as_bytes().to_vec();
                if typo[pos] == letter {
                    continue;
                }
                typo[pos] = letter;
                let typo = String::from_utf8(typo).expect("ascii");
                if let Resolved::Word(found) = resolve(&typo) {
                    // Only a prefix of the same word may still match.
                    assert_eq!(found, i as u16, "{typo} taken for another word");
                }
            }
        }
    }
}

#[test]
fn parse_refuses_a_prefix_that_is_one_slip_from_another_word() {
    let err = lookup("artic").expect_err("article or attic");
    assert_eq!(
        err.to_string(),
        "'artic' could be 'article' or a slip for 'attic'; type more of the word"
    );
    assert_eq!(lookup("artic").ok(), None);
    assert_eq!(lookup("artifact").ok(), None);
    assert!(lookup("articl").is_ok());
}

#[test]
fn parse_no_suggestion_when_nothing_is_close() {
    let err = Code::parse("4821-zzzzzzzz-lemon-lemon-lemon").expect_err("junk");
    assert_eq!(err.to_string(), "'zzzzzzzz' is not a code word");
}

#[test]
fn parse_refuses_bad_numbers() {
    for number in ["482", "48210", "48a1", "lemon", "٤٨٢١"] {
        let err = Code::parse(&format!("{number}-lemon-lemon-lemon-lemon")).expect_err(number);
        assert!(matches!(err, CodeError::Number(_)), "{number}: {err}");
        assert!(err.to_string().contains("4-digit number"), "{err}");
    }
}

#[test]
fn parse_refuses_wrong_word_counts() {
    for (input, found) in [
        ("4821", 0),
        ("4821-lemon-lemon-lemon", 3),
        ("4821-lemon-lemon-lemon-lemon-lemon", 5),
    ] {
        match Code::parse(input) {
            Err(CodeError::WordCount { found: f }) => assert_eq!(f, found, "{input}"),
            other => panic!("{input}: {other:?}"),
        }
    }
    assert!(matches!(Code::parse(" -_. "), Err(CodeError::Empty)));
    assert!(matches!(Code::parse(""), Err(CodeError::Empty)));
}

#[test]
fn parse_refuses_non_ascii_words_without_panicking() {
    let err = Code::parse("4821-lémon-lemon-lemon-lemon").expect_err("accent");
    assert!(matches!(err, CodeError::UnknownWord { .. }), "{err}");
    let err = Code::parse("4821-ßßßß-lemon-lemon-lemon").expect_err("multibyte");
    assert!(matches!(err, CodeError::UnknownWord { .. }), "{err}");
}

#[test]
fn error_debug_leaves_out_what_was_typed() {
    let err = Code::parse("4821-lemmon-lemon-lemon-lemon").expect_err("typo");
    let debug = format!("{err:?}");
    assert!(!debug.contains("lem"), "{debug}");
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(text in "\\PC{0,60}") {
        let _ = Code::parse(&text);
    }

    #[test]
    fn parse_round_trips_any_indices(
        number in 0u16..10_000,
        words in proptest::array::uniform4(0u16..2048),
    ) {
        let code = Code { number, words };
        let back = Code::parse(&code.to_string()).expect("canonical parses");
        proptest::prop_assert_eq!(canonical(&back), code.to_string());
        proptest::prop_assert_eq!(back.number(), number);
    }
}

/// docs/PROTOCOL.md §9.2: the typed example and the `pw` it gives.
#[test]
fn the_canonical_text_example_in_the_protocol_document_holds() {
    let typed = "  4821 Orbit BICY_tiger,,brick ";
    let pw = "4821-orbit-bicycle-tiger-brick";
    let code = Code::parse(typed).unwrap();
    assert_eq!(canonical(&code), pw);
    assert_eq!(pw.len(), 30);
    let doc = include_str!("../../docs/PROTOCOL.md");
    assert!(doc.contains(&format!("typed                \"{typed}\"")));
    assert!(doc.contains(&format!("pw (canonical text)  \"{pw}\" (30 bytes)")));
    // Leading zeros are kept; the texts are 20 to 36 bytes long.
    let short = Code::parse("7 act add ago act");
    assert!(short.is_err(), "the number has four digits");
    let short = Code::parse("0007 ACT add ago act").unwrap();
    assert_eq!(canonical(&short), "0007-act-add-ago-act");
    let lengths = words().iter().map(|w| w.len());
    let (min, max) = (lengths.clone().min().unwrap(), lengths.max().unwrap());
    assert_eq!((4 + 4 * (1 + min), 4 + 4 * (1 + max)), (20, 36));
    assert!(doc.contains("`NNNN-word-word-word-word`, 20 to 36 bytes"));
}
