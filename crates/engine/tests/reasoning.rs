//! Reasoning models end to end in the engine, against transformers
//! (`scripts/make_reasoning_fixtures.py`):
//!
//! * thinking templates (imitations of GLM-4.5, GLM-4.7 and Qwen3 written
//!   for these tests) render byte for byte as `apply_chat_template` renders
//!   them, for every conversation and `enable_thinking` setting; the
//!   rendered prompts tell the splitter where the answer starts;
//! * which tokenizers get their reasoning split ([`ReasoningConfig::detect`]);
//! * the scripted model (`tests/fixtures/think`) generates transformers'
//!   greedy text for every scenario through the engine, and the text,
//!   split as it streams or whole, gives the reasoning and content the
//!   fixture script's own (Python) splitter gives.

mod tokenizer_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_engine::reasoning::Section;
use mm_engine::tokenizer::{
    ChatMessage, ChatTemplate, ChatTemplateOptions, TemplateTokens, Tokenizer,
};
use mm_engine::{
    engine_for, generate, GenerateRequest, ReasoningConfig, ReasoningParser, SamplingParams, Split,
};
use serde_json::Value;
use tokenizer_common::*;

fn think_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/think")
}

fn cases() -> Value {
    read_json("reasoning-template-cases.json")
}

fn template_source(name: &str) -> String {
    cases()["templates"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no template {name}"))
        .to_string()
}

fn opts(add_generation_prompt: bool, kwargs: &Value) -> ChatTemplateOptions {
    ChatTemplateOptions {
        add_generation_prompt,
        extra: kwargs.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

#[test]
fn thinking_templates_render_as_transformers_renders_them() {
    let f = cases();
    let special = &f["special_tokens"];
    let s = |k: &str| special[k].as_str().map(str::to_string);
    let tokens = TemplateTokens {
        bos: None,
        eos: s("eos_token"),
        unk: s("unk_token"),
        pad: s("pad_token"),
    };
    let mut checked = 0;
    for case in f["cases"].as_array().unwrap() {
        let (tname, conv) = (
            case["template"].as_str().unwrap(),
            case["conversation"].as_str().unwrap(),
        );
        let template = ChatTemplate::new(f["templates"][tname].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{tname}: does not compile: {e}"));
        let messages: Vec<ChatMessage> =
            serde_json::from_value(f["conversations"][conv].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let got = template
            .render(&messages, &tokens, &opts(add, &case["kwargs"]))
            .unwrap_or_else(|e| panic!("{tname} {conv}: {e}"));
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "{tname} {conv} kwargs {} add_generation_prompt {add}",
            case["kwargs"]
        );
        checked += 1;
    }
    // 4 templates × 7 conversations × 3 settings, with and without the
    // generation prompt unless the conversation ends with the assistant.
    assert_eq!(checked, 4 * (5 * 2 + 2) * 3);
}

#[test]
fn rendered_prompts_say_where_the_answer_starts() {
    use Section::{Content, Reasoning};
    let auto = ReasoningConfig::think(Content);
    let r1 = ReasoningConfig::think(Reasoning);
    // (template, enable_thinking, start under auto, under deepseek_r1)
    let table: &[(&str, Option<bool>, Section, Section)] = &[
        // The model opens the block itself: the prompt does not say.
        ("glm45-like", None, Content, Reasoning),
        ("glm45-like", Some(true), Content, Reasoning),
        // Thinking off: an empty block closed at the end of the prompt.
        ("glm45-like", Some(false), Content, Content),
        // The prompt opens the block.
        ("glm47-like", None, Reasoning, Reasoning),
        ("glm47-like", Some(true), Reasoning, Reasoning),
        ("glm47-like", Some(false), Content, Content),
        ("qwen3-like", None, Content, Reasoning),
        ("qwen3-like", Some(false), Content, Content),
        ("qwen3-thinking-like", None, Reasoning, Reasoning),
        ("qwen3-thinking-like", Some(false), Reasoning, Reasoning),
    ];
    let f = cases();
    for &(tname, thinking, want_auto, want_r1) in table {
        let template = ChatTemplate::new(&template_source(tname)).unwrap();
        let kwargs = match thinking {
            Some(b) => serde_json::json!({ "enable_thinking": b }),
            None => serde_json::json!({}),
        };
        // After one question and after a history with reasoning (closed
        // blocks of earlier turns must not count).
        for conv in ["one-turn", "history-with-reasoning", "history-inline-think"] {
            let messages: Vec<ChatMessage> =
                serde_json::from_value(f["conversations"][conv].clone()).unwrap();
            let prompt = template
                .render(&messages, &TemplateTokens::default(), &opts(true, &kwargs))
                .unwrap();
            assert_eq!(
                auto.start_for(&prompt),
                want_auto,
                "{tname} {thinking:?} {conv}"
            );
            assert_eq!(
                r1.start_for(&prompt),
                want_r1,
                "{tname} {thinking:?} {conv} (r1)"
            );
        }
    }
}

fn think_tokenizer() -> Tokenizer {
    Tokenizer::from_hf_dir(&think_dir()).expect("load tests/fixtures/think")
}

#[test]
fn which_tokenizers_get_their_reasoning_split() {
    let think = think_tokenizer();
    let cfg = ReasoningConfig::detect(ReasoningParser::Auto, &think).unwrap();
    assert_eq!(
        (cfg.open.as_str(), cfg.close.as_str()),
        ("<think>", "</think>")
    );
    assert_eq!(cfg.default_start, Section::Content);
    let r1 = ReasoningConfig::detect(ReasoningParser::DeepSeekR1, &think).unwrap();
    assert_eq!(r1.default_start, Section::Reasoning);
    let e = ReasoningConfig::detect(ReasoningParser::None, &think).unwrap_err();
    assert!(e.contains("none"), "{e}");

    // SmolLM2 has no tags: not split unless asked.
    let smol = smollm2_hf();
    let e = ReasoningConfig::detect(ReasoningParser::Auto, &smol).unwrap_err();
    assert!(e.contains("<think>"), "{e}");
    assert!(ReasoningConfig::detect(ReasoningParser::Think, &smol).is_ok());
    // A template that writes the tags is enough.
    let smol_thinking = smol.with_chat_template(template_source("qwen3-like"));
    assert!(ReasoningConfig::detect(ReasoningParser::Auto, &smol_thinking).is_ok());

    // Tags that are special tokens never reach the decoded text.
    let dir = TempDir::new("special-think");
    let mut tj: Value =
        serde_json::from_str(&std::fs::read_to_string(think_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    for t in tj["added_tokens"].as_array_mut().unwrap() {
        if t["content"] == "</think>" {
            t["special"] = Value::Bool(true);
        }
    }
    dir.write("tokenizer.json", &tj.to_string());
    let special = Tokenizer::from_hf_dir(&dir.0).unwrap();
    for parser in [ReasoningParser::Auto, ReasoningParser::Think] {
        let e = ReasoningConfig::detect(parser, &special).unwrap_err();
        assert!(e.contains("</think> is a special token"), "{e}");
    }
}

#[test]
fn scripted_model_thinks_as_transformers_says_and_splits() {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(think_dir().join("reference.json")).unwrap())
            .unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let src = mm_formats::open_source(&think_dir()).unwrap();
    let model =
        mm_models::load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap();
    let mut engine = engine_for(&model, 256).unwrap();
    let base = think_tokenizer();
    let cfg = ReasoningConfig::detect(ReasoningParser::Auto, &base).unwrap();
    let scenarios = reference["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 8);
    for sc in scenarios {
        let name = sc["name"].as_str().unwrap();
        let tok = base.with_chat_template(template_source(sc["template"].as_str().unwrap()));
        let messages: Vec<ChatMessage> = serde_json::from_value(sc["messages"].clone()).unwrap();
        let prompt = tok
            .render_chat_with(&messages, &opts(true, &sc["kwargs"]))
            .unwrap();
        assert_eq!(prompt, sc["prompt"].as_str().unwrap(), "{name}: prompt");
        let prompt_ids = tok.encode(&prompt, false).unwrap();
        assert_eq!(prompt_ids, ids(&sc["prompt_ids"]), "{name}: prompt ids");
        let banned = sc["banned"].as_array().unwrap();
        let req = GenerateRequest {
            prompt_ids,
            max_new_tokens: sc["max_new_tokens"].as_u64().unwrap() as usize,
            sampling: SamplingParams {
                logit_bias: banned
                    .iter()
                    .map(|t| (tok.token_id(t.as_str().unwrap()).unwrap(), -100.0))
                    .collect(),
                ..Default::default()
            },
            stop_strings: Vec::new(),
            stop_on_eos: true,
            guide: None,
        };
        let mut streamed = Split::default();
        let mut splitter = cfg.splitter(&prompt);
        let out = generate(&mut engine, &tok, &req, &mut |piece| {
            let s = splitter.push(piece);
            streamed.reasoning.push_str(&s.reasoning);
            streamed.content.push_str(&s.content);
            Ok(())
        })
        .unwrap();
        let rest = splitter.finish();
        streamed.reasoning.push_str(&rest.reasoning);
        streamed.content.push_str(&rest.content);
        // transformers' ids end with EOS, which the engine does not return.
        let mut want_ids = ids(&sc["greedy_ids"]);
        if want_ids.last().is_some_and(|&t| tok.is_eos(t)) {
            want_ids.pop();
        }
        assert_eq!(out.ids, want_ids, "{name}: greedy ids");
        assert_eq!(
            out.text,
            sc["greedy_text"].as_str().unwrap(),
            "{name}: text"
        );
        let want = Split {
            reasoning: sc["reasoning"].as_str().unwrap().into(),
            content: sc["content"].as_str().unwrap().into(),
        };
        assert_eq!(
            cfg.splitter(&prompt).split_all(&out.text),
            want,
            "{name}: whole"
        );
        assert_eq!(streamed, want, "{name}: streamed");
    }
}
