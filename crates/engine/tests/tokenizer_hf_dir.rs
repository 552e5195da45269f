//! Loading HF tokenizer directories built in the test: the optional files,
//! their alternative spellings, and what `transformers` 5 does with them
//! (checked against it by hand for the same files).

mod tokenizer_common;

use mm_core::Error;
use mm_engine::tokenizer::{ChatMessage, Tokenizer};
use serde_json::{json, Value};
use tokenizer_common::*;

/// A byte-level BPE tokenizer.json: "<s>" and "</s>" are added special
/// tokens; "<eot>" is only in the model vocabulary.
fn tokenizer_json(post_processor: Value) -> String {
    let added = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<s>"), added(1, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<s>": 0, "</s>": 1, "<eot>": 2, "h": 3, "i": 4, "Ġ": 5, "hi": 6, "Ġhi": 7,
                      "<": 8, ">": 9, "e": 10, "o": 11, "t": 12},
            "merges": [["h", "i"], ["Ġ", "hi"]]
        }
    })
    .to_string()
}

fn bos_template() -> Value {
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
    })
}

fn config() -> Value {
    json!({
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false,
                      "rstrip": false, "single_word": false, "special": true},
        "eos_token": "<eot>",
        "pad_token": "<pad>",
        "add_bos_token": true,
        "chat_template": "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    })
}

#[test]
fn named_special_tokens_become_special() {
    let dir = TempDir::new("hf-special");
    dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    dir.write("tokenizer_config.json", &config().to_string());
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    // transformers: [6, 7, 2], [13, 6], [0, 6]; decodes "hi hi", "hi", "hi" skipping specials.
    assert_eq!(tok.encode("hi hi<eot>", true).unwrap(), vec![6, 7, 2]);
    assert_eq!(tok.encode("<pad>hi", true).unwrap(), vec![13, 6]);
    assert_eq!(tok.encode("<s>hi", true).unwrap(), vec![0, 6]);
    assert_eq!(tok.decode(&[6, 7, 2], true).unwrap(), "hi hi");
    assert_eq!(tok.decode(&[6, 7, 2], false).unwrap(), "hi hi<eot>");
    assert_eq!(tok.decode(&[13, 6], true).unwrap(), "hi");
    assert_eq!(tok.vocab_size(), 14);
    for id in [0, 1, 2, 13] {
        assert!(tok.is_special(id), "{id}");
    }
    assert!(!tok.is_special(6));
    assert_eq!(tok.bos_id(), Some(0));
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.bos_token().as_deref(), Some("<s>"));
    assert_eq!(tok.eos_token().as_deref(), Some("<eot>"));
    // add_bos_token=true does not add BOS when tokenizer.json has no post-processor for it.
    assert!(!tok.add_bos());
    assert_eq!(
        tok.render_chat(
            &[ChatMessage::user("a"), ChatMessage::assistant("b")],
            false
        )
        .unwrap(),
        "a<eot>b<eot>"
    );
}

#[test]
fn bos_follows_the_post_processor() {
    let dir = TempDir::new("hf-bos");
    dir.write("tokenizer.json", &tokenizer_json(bos_template()));
    let mut cfg = config();
    cfg["add_bos_token"] = json!(false);
    dir.write("tokenizer_config.json", &cfg.to_string());
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert!(tok.add_bos());
    assert_eq!(tok.encode("hi", true).unwrap(), vec![0, 6]);
    assert_eq!(tok.encode("hi", false).unwrap(), vec![6]);
    assert_eq!(tok.encode("", true).unwrap(), vec![0]);
}

#[test]
fn only_tokenizer_json() {
    let dir = TempDir::new("hf-bare");
    dir.write("tokenizer.json", &tokenizer_json(bos_template()));
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert!(tok.eos_ids().is_empty());
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.encode("hi hi", true).unwrap(), vec![0, 6, 7]);
    assert_eq!(tok.vocab_size(), 13);
    assert!(tok.render_chat(&[ChatMessage::user("x")], true).is_err());
}

#[test]
fn eos_ids_from_generation_config_and_config() {
    let dir = TempDir::new("hf-eos");
    dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    dir.write("tokenizer_config.json", &config().to_string());
    dir.write("config.json", r#"{"eos_token_id": 9}"#);
    // Without generation_config.json, config.json's eos_token_id counts.
    assert_eq!(
        Tokenizer::from_hf_dir(dir.path()).unwrap().eos_ids(),
        &[2, 9]
    );
    dir.write(
        "generation_config.json",
        r#"{"eos_token_id": [1, 2, 500000], "bos_token_id": 0}"#,
    );
    // generation_config.json wins; out-of-range ids are dropped; no duplicates.
    assert_eq!(
        Tokenizer::from_hf_dir(dir.path()).unwrap().eos_ids(),
        &[2, 1]
    );
    dir.write("generation_config.json", r#"{"eos_token_id": 1}"#);
    assert_eq!(
        Tokenizer::from_hf_dir(dir.path()).unwrap().eos_ids(),
        &[2, 1]
    );
}

#[test]
fn chat_template_sources() {
    let dir = TempDir::new("hf-template");
    dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    let mut cfg = config();
    cfg["chat_template"] = json!([
        {"name": "tool_use", "template": "tools"},
        {"name": "default", "template": "{{ messages[0].content }}!"}
    ]);
    dir.write("tokenizer_config.json", &cfg.to_string());
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(tok.chat_template(), Some("{{ messages[0].content }}!"));
    assert_eq!(
        tok.render_chat(&[ChatMessage::user("x")], false).unwrap(),
        "x!"
    );

    // A list without "default": no template (with a warning), not an error.
    cfg["chat_template"] = json!([{"name": "tool_use", "template": "tools"}]);
    dir.write("tokenizer_config.json", &cfg.to_string());
    assert!(Tokenizer::from_hf_dir(dir.path())
        .unwrap()
        .chat_template()
        .is_none());

    // chat_template.jinja takes priority over the config.
    dir.write(
        "chat_template.jinja",
        "{{ bos_token }}{{ messages[0].content }}\n",
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(
        tok.render_chat(&[ChatMessage::user("x")], false).unwrap(),
        "<s>x"
    );

    // A template of the wrong type is an error that names the file.
    std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
    cfg["chat_template"] = json!(42);
    dir.write("tokenizer_config.json", &cfg.to_string());
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("chat_template"),
        "{e}"
    );
}

#[test]
fn broken_directories_are_errors() {
    let dir = TempDir::new("hf-broken");
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );

    dir.write("tokenizer.json", "{not json");
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::Format { .. }) && e.to_string().contains("tokenizer.json"),
        "{e}"
    );

    dir.write("tokenizer.json", r#"{"model": {"type": "Nope"}}"#);
    assert!(matches!(
        Tokenizer::from_hf_dir(dir.path()),
        Err(Error::Format { .. })
    ));

    dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    dir.write("tokenizer_config.json", "[1, 2]");
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("tokenizer_config.json"), "{e}");

    dir.write("tokenizer_config.json", "{}");
    dir.write("generation_config.json", "{");
    let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("generation_config.json"), "{e}");
}

#[test]
fn additional_special_tokens_in_both_spellings() {
    let dir = TempDir::new("hf-extra");
    dir.write("tokenizer.json", &tokenizer_json(Value::Null));
    dir.write(
        "tokenizer_config.json",
        &json!({"additional_special_tokens": ["<eot>"], "extra_special_tokens": {"image_token": "<img>"}}).to_string(),
    );
    let tok = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert!(tok.is_special(2));
    let img = tok.token_id("<img>").unwrap();
    assert!(tok.is_special(img));
    assert_eq!(tok.encode("hi<img><eot>", false).unwrap(), vec![6, img, 2]);
}
