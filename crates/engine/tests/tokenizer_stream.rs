//! Streaming detokenization: the pieces a `StreamDecoder` emits concatenate
//! to the full decode, never split a character, and keep the spaces a
//! sentencepiece decoder strips from a sequence's first token.

mod tokenizer_common;

use mm_engine::tokenizer::{GgufVocab, Tokenizer};
use tokenizer_common::*;

fn spm() -> Tokenizer {
    let vocab: GgufVocab =
        serde_json::from_value(read_json("tiny-spm.json")["vocab"].clone()).unwrap();
    Tokenizer::from_gguf_vocab(vocab).unwrap()
}

/// Streams `ids`; returns the pieces (including what `finish` flushes).
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut s = tok.stream_decoder(skip_special);
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(p) = s.push(id).unwrap() {
            pieces.push(p);
        }
    }
    pieces.extend(s.finish().unwrap());
    pieces
}

fn check(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    check_with(tok, ids, skip_special, true)
}

/// `exact_on_invalid`: also compare when the ids hold invalid UTF-8. A
/// sentencepiece decoder turns a whole run of `<0xNN>` tokens into U+FFFD
/// once the run is invalid anywhere, so its full decode can lose characters
/// the stream had already (correctly) emitted; byte-level decoding has no
/// such effect.
fn check_with(
    tok: &Tokenizer,
    ids: &[u32],
    skip_special: bool,
    exact_on_invalid: bool,
) -> Vec<String> {
    let full = tok.decode(ids, skip_special).unwrap();
    let pieces = stream(tok, ids, skip_special);
    if exact_on_invalid || !full.contains('\u{FFFD}') {
        assert_eq!(
            pieces.concat(),
            full,
            "ids {ids:?} skip_special={skip_special}"
        );
    }
    for p in &pieces {
        assert!(!p.is_empty(), "empty piece for {ids:?}");
        if !full.contains('\u{FFFD}') {
            assert!(!p.contains('\u{FFFD}'), "piece {p:?} of {full:?}");
        }
    }
    pieces
}

#[test]
fn sentencepiece_spaces_survive() {
    let tok = spm();
    let ids = tok.encode("hello world and the world", true).unwrap();
    let pieces = check(&tok, &ids, true);
    assert_eq!(pieces, ["hello", " world", " and", " the", " world"]);
    // Without skipping, BOS prints and the first word keeps its space.
    let pieces = check(&tok, &ids, false);
    assert_eq!(pieces.concat(), "<s> hello world and the world");
}

#[test]
fn sentencepiece_byte_fallback_waits_for_whole_characters() {
    let tok = spm();
    // "界" is not a piece: three <0xNN> byte tokens.
    let ids = tok.encode("世界 hello", false).unwrap();
    let pieces = check(&tok, &ids, false);
    assert!(pieces.iter().any(|p| p.contains('界')));
    // Nothing comes out for the first two bytes of "界".
    let jie: Vec<u32> = "界"
        .bytes()
        .map(|b| tok.token_id(&format!("<0x{b:02X}>")).unwrap())
        .collect();
    let mut s = tok.stream_decoder(false);
    assert_eq!(s.push(jie[0]).unwrap(), None);
    assert_eq!(s.push(jie[1]).unwrap(), None);
    assert_eq!(s.push(jie[2]).unwrap().as_deref(), Some("界"));
    assert_eq!(s.finish().unwrap(), None);
}

#[test]
fn special_tokens_between_words() {
    let tok = spm();
    let ids = tok.encode("hello</s> world<s> and", false).unwrap();
    check(&tok, &ids, true);
    check(&tok, &ids, false);
    // Specials first, then words, skipping them.
    let ids = [
        1,
        1,
        tok.token_id("▁hello").unwrap(),
        2,
        tok.token_id("▁world").unwrap(),
    ];
    assert_eq!(check(&tok, &ids, true).concat(), "hello world");
}

#[test]
fn byte_level_partial_characters() {
    let tok = smollm2_gguf();
    for text in [
        "é",
        "中文测试",
        "😀🎉👍🏽",
        "👨\u{200d}👩\u{200d}👧",
        "a😀b c中d",
        "½ ² ³",
    ] {
        let ids = tok.encode(text, false).unwrap();
        let pieces = check(&tok, &ids, false);
        assert_eq!(pieces.concat(), text);
    }
    // An emoji spread over byte tokens comes out whole, once.
    let emoji: Vec<u32> = "😀"
        .bytes()
        .map(|b| tok.token_id(&byte_char(b).to_string()).unwrap())
        .collect();
    let mut s = tok.stream_decoder(false);
    let out: Vec<Option<String>> = emoji.iter().map(|&id| s.push(id).unwrap()).collect();
    assert_eq!(out, [None, None, None, Some("😀".to_string())]);
}

#[test]
fn invalid_bytes_are_flushed() {
    let tok = smollm2_gguf();
    let b = |x: u8| tok.token_id(&byte_char(x).to_string()).unwrap();
    let hello = tok.token_id("hello").unwrap();
    // A lone continuation byte, a truncated sequence at the end, a real U+FFFD.
    for ids in [
        vec![hello, b(0x80), hello],
        vec![hello, b(0xE2), b(0x82)],
        tok.encode("a\u{FFFD}", false).unwrap(),
    ] {
        check(&tok, &ids, false);
    }
    // Garbage that never completes is emitted after a while, not held forever.
    let mut s = tok.stream_decoder(false);
    let mut emitted = String::new();
    for _ in 0..40 {
        if let Some(p) = s.push(b(0xF0)).unwrap() {
            emitted.push_str(&p);
        }
    }
    assert!(!emitted.is_empty());
    emitted.extend(s.finish().unwrap());
    assert_eq!(emitted, tok.decode(&[b(0xF0); 40], false).unwrap());
}

/// A small deterministic generator (no external dependency on a seed API).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

#[test]
fn random_id_sequences() {
    let mut rng = Lcg(0x5eed);
    for (tok, byte_level) in [(spm(), false), (smollm2_gguf(), true)] {
        let n = tok.vocab_size() as u32;
        for round in 0..300 {
            let len = 1 + rng.next(24) as usize;
            // Mostly small ids (bytes, specials, short pieces) to make partial characters likely.
            let ids: Vec<u32> = (0..len)
                .map(|_| {
                    if rng.next(3) == 0 {
                        rng.next(n)
                    } else {
                        rng.next(n.min(300))
                    }
                })
                .collect();
            check_with(&tok, &ids, round % 2 == 0, byte_level);
        }
    }
}

#[test]
fn reuse_after_finish_and_push_all() {
    let tok = spm();
    let ids = tok.encode("hello world", false).unwrap();
    let mut s = tok.stream_decoder(false);
    assert_eq!(s.push_all(&ids).unwrap().as_deref(), Some("hello world"));
    assert_eq!(s.finish().unwrap(), None);
    // A fresh sequence after finish: its first word has no leading space.
    assert_eq!(s.push_all(&ids).unwrap().as_deref(), Some("hello world"));
    s.reset();
    assert_eq!(s.push(ids[1]).unwrap().as_deref(), Some("world"));
    assert!(s.push(u32::MAX).is_err());
}
