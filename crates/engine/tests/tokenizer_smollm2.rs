//! The real SmolLM2 vocabulary, loaded both ways (HF directory and GGUF
//! metadata), against what `transformers` produces for it
//! (fixtures from `scripts/make_tokenizer_fixtures.py`).
//!
//! The HF directory is the tokenizer `transformers` builds from the GGUF; its
//! ids are `ids`. The GGUF path follows llama.cpp's "smollm" pre-tokenizer,
//! which, like SmolLM2's own tokenizer.json, isolates numeric characters
//! first; its ids are `ids_original` (the same tokenizer with SmolLM2's
//! pre-tokenizer, run by `tokenizers` in Python). The two differ only where
//! GPT-2's regex keeps a space or several numerals together.

mod tokenizer_common;

use mm_engine::tokenizer::{ChatMessage, Tokenizer};
use serde_json::Value;
use tokenizer_common::*;

fn cases() -> Value {
    read_json("smollm2-cases.json")
}

fn both() -> [(&'static str, Tokenizer); 2] {
    [("hf", smollm2_hf()), ("gguf", smollm2_gguf())]
}

#[test]
fn hf_dir_encode_matches_transformers() {
    let tok = smollm2_hf();
    for case in cases()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids(&case["ids_with_special"]),
            "{text:?} (special)"
        );
    }
}

#[test]
fn gguf_encode_matches_smollm2s_own_pretokenizer() {
    let tok = smollm2_gguf();
    let mut differ = 0;
    for case in cases()["encode"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids_original"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "{text:?}");
        assert_eq!(tok.encode(text, true).unwrap(), want, "{text:?} (special)");
        differ += usize::from(want != ids(&case["ids"]));
    }
    // Only the strings with non-ASCII numerals after a space.
    assert_eq!(differ, 2);
}

#[test]
fn decode_matches_transformers() {
    let cases = cases();
    for (name, tok) in both() {
        for case in cases["encode"].as_array().unwrap() {
            let ids = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}: {ids:?}"
            );
            assert_eq!(
                tok.decode(&ids, true).unwrap(),
                case["decoded_skip_special"].as_str().unwrap(),
                "{name}: {ids:?} (skip special)"
            );
        }
    }
}

#[test]
fn decode_round_trips() {
    for (name, tok) in both() {
        for case in cases()["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}");
        }
    }
}

#[test]
fn stream_decoding_concatenates_to_the_full_decode() {
    let cases = cases();
    for (name, tok) in both() {
        for skip_special in [false, true] {
            for case in cases["encode"].as_array().unwrap() {
                let ids = ids(&case["ids"]);
                let full = tok.decode(&ids, skip_special).unwrap();
                let mut stream = tok.stream_decoder(skip_special);
                let mut out = String::new();
                for &id in &ids {
                    if let Some(piece) = stream.push(id).unwrap() {
                        assert!(!piece.is_empty());
                        if !full.contains('\u{FFFD}') {
                            assert!(
                                !piece.contains('\u{FFFD}'),
                                "{name}: piece {piece:?} of {full:?}"
                            );
                        }
                        out.push_str(&piece);
                    }
                }
                if let Some(rest) = stream.finish().unwrap() {
                    out.push_str(&rest);
                }
                assert_eq!(out, full, "{name}: {ids:?} skip_special={skip_special}");
            }
        }
    }
}

#[test]
fn chat_template_matches_transformers() {
    let cases = cases();
    for (name, tok) in both() {
        for chat in cases["chat"].as_array().unwrap() {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(chat["messages"].clone()).unwrap();
            let add = chat["add_generation_prompt"].as_bool().unwrap();
            let rendered = tok.render_chat(&messages, add).unwrap();
            assert_eq!(rendered, chat["rendered"].as_str().unwrap(), "{name}");
            assert_eq!(
                tok.encode_chat(&messages, add).unwrap(),
                ids(&chat["ids"]),
                "{name}"
            );
        }
    }
}

#[test]
fn special_tokens_and_ids() {
    let cases = cases();
    let special = &cases["special_tokens"];
    for (name, tok) in both() {
        assert_eq!(tok.vocab_size(), 49152, "{name}");
        assert_eq!(
            tok.bos_token().as_deref(),
            special["bos_token"].as_str(),
            "{name}"
        );
        assert_eq!(
            tok.eos_token().as_deref(),
            special["eos_token"].as_str(),
            "{name}"
        );
        assert_eq!(tok.bos_id(), Some(1), "{name}");
        assert_eq!(tok.eos_ids(), &[2], "{name}");
        assert!(tok.is_eos(2) && !tok.is_eos(0), "{name}");
        assert!(!tok.add_bos(), "{name}");
        for id in [0, 1, 2] {
            assert!(tok.is_special(id), "{name}: {id}");
        }
        assert!(
            !tok.is_special(28120) && !tok.is_special(1_000_000),
            "{name}"
        );
        assert_eq!(tok.token_str(1).as_deref(), Some("<|im_start|>"), "{name}");
        assert_eq!(tok.token_str(216).as_deref(), Some("Ġ"), "{name}");
        assert_eq!(tok.token_id("Ġ"), Some(216), "{name}");
        assert_eq!(tok.token_str(49152), None, "{name}");
        assert!(
            tok.chat_template().unwrap().contains("<|im_start|>"),
            "{name}"
        );
    }
}

#[test]
fn both_loaders_agree_on_the_vocabulary() {
    let [(_, hf), (_, gguf)] = both();
    assert_eq!(hf.vocab(), gguf.vocab());
    for id in 0..hf.vocab_size() as u32 {
        assert_eq!(hf.is_special(id), gguf.is_special(id), "{id}");
    }
}

#[test]
fn out_of_range_ids_are_errors() {
    for (name, tok) in both() {
        let e = tok.decode(&[5, 49152], false).unwrap_err().to_string();
        assert!(
            e.contains("49152") && e.contains("outside the vocabulary"),
            "{name}: {e}"
        );
        let mut s = tok.stream_decoder(false);
        assert!(s.push(u32::MAX).is_err(), "{name}");
        assert_eq!(s.push(28120).unwrap().as_deref(), Some("hello"), "{name}");
    }
}
