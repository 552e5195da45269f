//! Tokenizers built from small GGUF vocabularies made in code: byte-level
//! BPE (`gpt2`) with its pre-tokenizer splits, sentencepiece-style (`llama`)
//! against `transformers` (`tiny-spm.json`), and bad metadata.

mod tokenizer_common;

use mm_core::Error;
use mm_engine::tokenizer::{token_type, GgufVocab, Tokenizer};
use tokenizer_common::*;

/// 256 byte tokens (id = byte), then the tokens of `merges` (written in the
/// byte alphabet, `Ġ` for a space), `extra` tokens, and added tokens.
fn byte_vocab(pre: &str, merges: &[&str], extra: &[&str]) -> GgufVocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let mut types = vec![token_type::NORMAL; 256];
    for m in merges {
        let t: String = m.split(' ').collect();
        if !tokens.contains(&t) {
            tokens.push(t);
            types.push(token_type::NORMAL);
        }
    }
    for e in extra {
        tokens.push(byte_level(e));
        types.push(token_type::NORMAL);
    }
    for (t, ty) in [
        ("<|endoftext|>", token_type::CONTROL),
        ("<|im_start|>", token_type::CONTROL),
        ("<think>", token_type::USER_DEFINED),
    ] {
        tokens.push(t.into());
        types.push(ty);
    }
    let eot = tokens.len() as u32 - 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: Some(types),
        merges: Some(merges.iter().map(|m| m.to_string()).collect()),
        bos_id: Some(eot),
        eos_id: Some(eot),
        ..Default::default()
    }
}

const HELLO: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
];

fn id(tok: &Tokenizer, text: &str) -> u32 {
    tok.token_id(&byte_level(text))
        .unwrap_or_else(|| panic!("{text:?} not in vocab"))
}

#[test]
fn byte_level_bpe_merges_and_special_tokens() {
    let tok = Tokenizer::from_gguf_vocab(byte_vocab("gpt2", HELLO, &[])).unwrap();
    let (hello, world) = (id(&tok, "hello"), id(&tok, " world"));
    assert_eq!(
        tok.encode("hello world", false).unwrap(),
        vec![hello, world]
    );
    // gpt2 vocabularies add no BOS unless told to.
    assert_eq!(tok.encode("hello world", true).unwrap(), vec![hello, world]);
    assert!(!tok.add_bos());

    let eot = tok.token_id("<|endoftext|>").unwrap();
    let think = tok.token_id("<think>").unwrap();
    assert_eq!(
        tok.encode("hello<|endoftext|>", false).unwrap(),
        vec![hello, eot]
    );
    assert!(tok.is_special(eot) && !tok.is_special(think) && !tok.is_special(hello));
    assert_eq!(
        tok.encode("<think>h", false).unwrap(),
        vec![think, b'h' as u32]
    );
    assert_eq!(
        tok.decode(&[think, hello, eot], true).unwrap(),
        "<think>hello"
    );
    assert_eq!(
        tok.decode(&[think, hello, eot], false).unwrap(),
        "<think>hello<|endoftext|>"
    );
    assert_eq!(tok.eos_ids(), &[eot]);

    // Bytes of characters no merge covers, and their round trip.
    let text = "é 中文 😀\n\t\0";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids, text.bytes().map(u32::from).collect::<Vec<_>>());
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
}

#[test]
fn byte_level_bos_eos_when_configured() {
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.add_bos = Some(true);
    v.add_eos = Some(true);
    let tok = Tokenizer::from_gguf_vocab(v).unwrap();
    let eot = tok.token_id("<|endoftext|>").unwrap();
    let hello = id(&tok, "hello");
    assert_eq!(tok.encode("hello", true).unwrap(), vec![eot, hello, eot]);
    assert_eq!(tok.encode("hello", false).unwrap(), vec![hello]);
    assert!(tok.add_bos());

    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.add_bos = Some(true);
    v.bos_id = None;
    let e = Tokenizer::from_gguf_vocab(v).unwrap_err();
    assert!(
        matches!(e, Error::Tokenizer(_)) && e.to_string().contains("BOS"),
        "{e}"
    );
}

#[test]
fn pre_tokenizer_regexes_split_as_llama_cpp_does() {
    // "3 4" joins digits only when a pre-tokenizer keeps "34" together.
    let merges = &["3 4", "1 2", "12 3"];
    let digits = |pre: &str| {
        let tok = Tokenizer::from_gguf_vocab(byte_vocab(pre, merges, &["xyz"])).unwrap();
        let ids = tok.encode("1234", false).unwrap();
        ids.iter()
            .map(|&i| tok.decode(&[i], false).unwrap())
            .collect::<Vec<_>>()
            .join("|")
    };
    assert_eq!(digits("gpt2"), "12|34"); // "1234" is one word: 3 4 → 34 first, then 1 2 → 12
    assert_eq!(digits("smollm"), "1|2|3|4"); // every digit alone
    assert_eq!(digits("qwen2"), "1|2|3|4");
    assert_eq!(digits("llama3"), "123|4"); // groups of three: "123" "4"
    assert_eq!(digits("deepseek-v3"), "123|4");
    assert_eq!(digits("default"), "123|4"); // \p{N}+ then [0-9]{3}: "123" "4"

    // llama3 ignores merges for words that are whole tokens.
    let whole = |pre: &str| {
        Tokenizer::from_gguf_vocab(byte_vocab(pre, merges, &["xyz"]))
            .unwrap()
            .encode("xyz", false)
            .unwrap()
            .len()
    };
    assert_eq!(whole("llama-bpe"), 1);
    assert_eq!(whole("gpt2"), 3);

    // Unknown and missing names fall back instead of failing.
    for pre in ["no-such-pre", ""] {
        let tok = Tokenizer::from_gguf_vocab(byte_vocab(pre, HELLO, &[])).unwrap();
        assert_eq!(
            tok.decode(&tok.encode("hello world", false).unwrap(), false)
                .unwrap(),
            "hello world"
        );
    }
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.pre = None;
    assert!(Tokenizer::from_gguf_vocab(v).is_ok());

    // llama3 adds BOS by default (llama.cpp), unless the file says otherwise.
    assert!(Tokenizer::from_gguf_vocab(byte_vocab("llama3", HELLO, &[]))
        .unwrap()
        .add_bos());
    let mut v = byte_vocab("llama3", HELLO, &[]);
    v.add_bos = Some(false);
    assert!(!Tokenizer::from_gguf_vocab(v).unwrap().add_bos());
}

#[test]
fn every_known_pre_tokenizer_builds_and_round_trips() {
    let text =
        "Hello, World! It's 2024-06-01: 12345 ½ café 中文テスト 한국어\n\n  x\ty 😀 I'M DONE";
    for pre in [
        "default",
        "gpt2",
        "gpt-2",
        "llama3",
        "llama-bpe",
        "dbrx",
        "smaug-bpe",
        "deepseek-llm",
        "deepseek-coder",
        "deepseek-v3",
        "falcon",
        "smollm",
        "starcoder",
        "qwen2",
        "qwen35",
        "stablelm2",
        "bloom",
        "poro-chat",
        "viking",
        "tekken",
        "gpt-4o",
        "chatglm-bpe",
        "seed-coder",
        "bailingmoe",
        "command-r",
        "olmo",
    ] {
        let tok = Tokenizer::from_gguf_vocab(byte_vocab(pre, HELLO, &[]))
            .unwrap_or_else(|e| panic!("{pre}: {e}"));
        let ids = tok
            .encode(text, false)
            .unwrap_or_else(|e| panic!("{pre}: {e}"));
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{pre}");
    }
}

#[test]
fn bad_metadata_is_an_error_not_a_panic() {
    let check = |v: GgufVocab, needle: &str| {
        let e = Tokenizer::from_gguf_vocab(v).unwrap_err();
        assert!(matches!(e, Error::Tokenizer(_)), "{e:?}");
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    };
    check(
        GgufVocab {
            model: "gpt2".into(),
            ..Default::default()
        },
        "empty",
    );
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.model = "t5".into();
    check(v, "unsupported tokenizer.ggml.model 't5'");
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.merges = None;
    check(v, "merges");
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.tokens.push(v.tokens[5].clone());
    v.token_types.as_mut().unwrap().push(1);
    check(v, "duplicate token");
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.token_types.as_mut().unwrap().truncate(10);
    check(v, "token types");
    let mut v = spm_vocab();
    v.scores.as_mut().unwrap().truncate(3);
    check(v, "scores");

    // Survivable oddities: bad merges are skipped, out-of-range ids ignored,
    // empty tokens get placeholder names.
    let mut v = byte_vocab("gpt2", HELLO, &[]);
    v.merges
        .as_mut()
        .unwrap()
        .extend(["no_space".into(), "q zzz".into(), "".into(), " ".into()]);
    v.eos_id = Some(1_000_000);
    v.bos_id = Some(1_000_001);
    v.extra_eos_ids = vec![7, 2_000_000];
    v.tokens[200] = String::new();
    let tok = Tokenizer::from_gguf_vocab(v).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert_eq!(tok.eos_ids(), &[7]);
    assert_eq!(tok.token_str(200).as_deref(), Some("[EMPTY_200]"));
    assert_eq!(
        tok.decode(&tok.encode("hello world", false).unwrap(), false)
            .unwrap(),
        "hello world"
    );
}

/// The tiny sentencepiece vocabulary of `tiny-spm.json`.
fn spm_vocab() -> GgufVocab {
    serde_json::from_value(read_json("tiny-spm.json")["vocab"].clone()).unwrap()
}

/// `ids_legacy`: the model `transformers` builds from this GGUF, with the
/// Prepend+Replace normalizer of Llama-2's tokenizer.json, which prepends
/// "▁" to every text fragment as sentencepiece and llama.cpp do.
/// `transformers`' own GGUF conversion (`ids`) prepends it only at the very
/// start and only when the text does not start with a space.
#[test]
fn sentencepiece_matches_transformers() {
    let fixture = read_json("tiny-spm.json");
    let tok = Tokenizer::from_gguf_vocab(spm_vocab()).unwrap();
    let mut differ = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids_legacy"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        // BOS by default for sentencepiece vocabularies.
        let with_bos: Vec<u32> = std::iter::once(1).chain(want.iter().copied()).collect();
        assert_eq!(tok.encode(text, true).unwrap(), with_bos, "{text:?}");
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded_legacy"].as_str().unwrap(),
            "{text:?}"
        );
        let skipped = case["decoded_legacy_skip_special"].as_str().unwrap();
        assert_eq!(tok.decode(&with_bos, true).unwrap(), skipped, "{text:?}");
        if want != ids(&case["ids"]) {
            differ.push(text);
        }
    }
    assert_eq!(
        differ,
        [
            " hello",
            "  two leading",
            "hello<tool>world",
            "<s>hello</s>"
        ]
    );
    assert!(tok.add_bos());
    assert_eq!(tok.bos_token().as_deref(), Some("<s>"));
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2) && !tok.is_special(3));
}

#[test]
fn sentencepiece_special_and_user_tokens() {
    let tok = Tokenizer::from_gguf_vocab(spm_vocab()).unwrap();
    let hello = tok.token_id("▁hello").unwrap();
    let world = tok.token_id("▁world").unwrap();
    let tool = tok.token_id("<tool>").unwrap();
    // After a special or added token the text is a new fragment with its own
    // space prefix, as llama.cpp tokenizes it.
    assert_eq!(tok.encode("<s>hello", false).unwrap(), vec![1, hello]);
    assert_eq!(
        tok.encode("hello<tool>world", false).unwrap(),
        vec![hello, tool, world]
    );
    assert_eq!(tok.decode(&[1, hello, 2], false).unwrap(), "<s> hello</s>");
    assert_eq!(tok.decode(&[1, hello, 2], true).unwrap(), "hello");
}

#[test]
fn sentencepiece_without_space_prefix() {
    let mut v = spm_vocab();
    v.add_space_prefix = Some(false);
    let tok = Tokenizer::from_gguf_vocab(v).unwrap();
    let ids = tok.encode("hello world", false).unwrap();
    assert_eq!(ids[0], tok.token_id("hell").unwrap());
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello world");
    assert_eq!(
        tok.decode(&tok.encode(" hello", false).unwrap(), false)
            .unwrap(),
        " hello"
    );
}

#[test]
fn sentencepiece_unknown_without_byte_tokens() {
    // No <0xNN> tokens: characters outside the vocabulary become <unk>, runs fused.
    let mut v = spm_vocab();
    let keep: Vec<usize> = (0..v.tokens.len())
        .filter(|&i| !v.tokens[i].starts_with("<0x"))
        .collect();
    v.tokens = keep.iter().map(|&i| v.tokens[i].clone()).collect();
    v.scores = Some(
        keep.iter()
            .map(|&i| v.scores.as_ref().unwrap()[i])
            .collect(),
    );
    v.token_types = Some(
        keep.iter()
            .map(|&i| v.token_types.as_ref().unwrap()[i])
            .collect(),
    );
    let tok = Tokenizer::from_gguf_vocab(v).unwrap();
    let hello = tok.token_id("▁hello").unwrap();
    assert_eq!(
        tok.encode("hello ЖЖЖ", false).unwrap(),
        vec![hello, tok.token_id("▁").unwrap(), 0]
    );
    assert_eq!(tok.decode(&[hello, 0], true).unwrap(), "hello");
}

#[test]
fn sentencepiece_merges_from_the_file_take_priority() {
    // With explicit merges only "h e" applies: scores are not consulted.
    let mut v = spm_vocab();
    v.merges = Some(vec!["h e".into()]);
    let tok = Tokenizer::from_gguf_vocab(v).unwrap();
    let got: Vec<String> = tok
        .encode("he", false)
        .unwrap()
        .iter()
        .map(|&i| tok.token_str(i).unwrap())
        .collect();
    assert_eq!(got, vec!["▁", "he"]);
}
