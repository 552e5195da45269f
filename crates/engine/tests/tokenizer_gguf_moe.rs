//! The tokenizer llama.cpp's converter embedded in the tiny MoE/MLA GGUF
//! fixtures (`scripts/make_gguf_fixtures.py`: a 320-token byte-level BPE
//! with GPT-2's split, as the HF `tokenizer.json` the converter read) loads
//! from every file and encodes the test strings to transformers' ids.

use std::path::{Path, PathBuf};

use mm_engine::tokenizer::load_for;
use mm_formats::open_source;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn gguf_moe_fixtures_carry_the_converted_tokenizer() {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-gguf.json")).unwrap())
            .unwrap();
    let cases = m["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for f in m["files"].as_array().unwrap() {
        let path = fixtures().join("tiny").join(f["gguf"].as_str().unwrap());
        let src = open_source(&path).unwrap();
        let tok = load_for(&path, src.as_ref()).unwrap();
        let name = path.display();
        assert_eq!(tok.vocab_size(), 320, "{name}");
        // The converter's GLM vocabulary (`_set_vocab_glm`) adds <|user|>
        // as end of turn and <|observation|> as end of message.
        let eos: &[u32] = if f["reference"].as_str().unwrap().starts_with("glm4") {
            &[2, 4, 6]
        } else {
            &[2]
        };
        assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(1), eos), "{name}");
        assert_eq!(tok.token_id("[gMASK]"), Some(3), "{name}");
        assert!(tok.is_special(3), "{name}");
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(ids, want, "{name}: {text:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}: {text:?}");
        }
    }
}
