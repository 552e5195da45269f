//! Chat templates against jinja2 as `transformers` configures it
//! (`template-cases.json`, rendered by `apply_chat_template`).

mod tokenizer_common;

use mm_core::Error;
use mm_engine::tokenizer::{
    ChatMessage, ChatTemplate, ChatTemplateOptions, TemplateTokens, Tokenizer,
};
use serde_json::{json, Value};
use tokenizer_common::*;

fn tokens_of(special: &Value) -> TemplateTokens {
    let s = |k: &str| special[k].as_str().map(str::to_string);
    TemplateTokens {
        bos: s("bos_token"),
        eos: s("eos_token"),
        unk: s("unk_token"),
        pad: s("pad_token"),
    }
}

#[test]
fn templates_render_as_transformers_renders_them() {
    let fixture = read_json("template-cases.json");
    let tokens = tokens_of(&fixture["special_tokens"]);
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let template = ChatTemplate::new(case["template"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{name}: does not compile: {e}"));
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let opts = ChatTemplateOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            tools: case["tools"].as_array().cloned(),
            ..Default::default()
        };
        let got = template.render(&messages, &tokens, &opts);
        match (case.get("expected"), case.get("error")) {
            (Some(want), _) => {
                let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(
                    got,
                    want.as_str().unwrap(),
                    "{name} (add_generation_prompt={})",
                    opts.add_generation_prompt
                );
            }
            (None, Some(err)) => {
                let e = got.expect_err(name);
                assert!(matches!(e, Error::Template(_)), "{name}: {e:?}");
                assert!(e.to_string().contains(err.as_str().unwrap()), "{name}: {e}");
            }
            _ => panic!("{name}: fixture has neither expected nor error"),
        }
        checked += 1;
    }
    assert!(checked >= 20);
}

fn chatml() -> ChatTemplate {
    ChatTemplate::new(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
         {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    .unwrap()
}

#[test]
fn extra_variables_and_strftime() {
    let t = ChatTemplate::new(
        "{{ bos_token }}{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}\
         {{ strftime_now('%Y-%m-%d') }}|{{ date_string | default('none') }}|{{ messages[0].content }}",
    )
    .unwrap();
    let mut extra = serde_json::Map::new();
    extra.insert("enable_thinking".into(), json!(false));
    extra.insert("bos_token".into(), json!("<override>"));
    let opts = ChatTemplateOptions {
        extra,
        ..Default::default()
    };
    let tokens = TemplateTokens {
        bos: Some("<s>".into()),
        ..Default::default()
    };
    let out = t
        .render(&[ChatMessage::user("hi")], &tokens, &opts)
        .unwrap();
    let (head, rest) = out.split_once("/no_think ").unwrap();
    assert_eq!(head, "<override>");
    let (date, rest) = rest.split_once('|').unwrap();
    assert_eq!(date.len(), 10, "{date}");
    assert!(
        date.starts_with("20") && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-',
        "{date}"
    );
    assert_eq!(rest, "none|hi");
}

#[test]
fn template_errors_are_template_errors() {
    // Syntax error at compile time.
    let e = ChatTemplate::new("{% for m in messages %}").unwrap_err();
    assert!(matches!(e, Error::Template(_)), "{e:?}");
    // Unknown filter at render time... or compile time; either way an error.
    let r = ChatTemplate::new("{{ messages | no_such_filter }}").and_then(|t| {
        t.render(
            &[ChatMessage::user("x")],
            &TemplateTokens::default(),
            &Default::default(),
        )
    });
    assert!(matches!(r, Err(Error::Template(_))), "{r:?}");
    // Empty conversations are refused, as transformers refuses them.
    let e = chatml()
        .render(&[], &TemplateTokens::default(), &Default::default())
        .unwrap_err();
    assert!(e.to_string().contains("empty conversation"), "{e}");
    // tojson of something that is not JSON.
    let r = ChatTemplate::new("{{ nothing | tojson }}").unwrap().render(
        &[ChatMessage::user("x")],
        &TemplateTokens::default(),
        &Default::default(),
    );
    assert!(matches!(r, Err(Error::Template(_))), "{r:?}");
}

#[test]
fn tojson_positional_and_keyword_arguments() {
    let t = ChatTemplate::new(
        "{{ {'é': [1, 2]} | tojson }}|{{ {'é': [1, 2]} | tojson(true) }}|{{ {'a': 1} | tojson(indent='\t') }}|\
         {{ {'b': 1, 'a': 2} | tojson(false, none, (',', ':'), true) }}",
    )
    .unwrap();
    let out = t
        .render(
            &[ChatMessage::user("x")],
            &TemplateTokens::default(),
            &Default::default(),
        )
        .unwrap();
    assert_eq!(
        out,
        "{\"é\": [1, 2]}|{\"\\u00e9\": [1, 2]}|{\n\t\"a\": 1\n}|{\"a\":2,\"b\":1}"
    );
    let bad = ChatTemplate::new("{{ 1 | tojson(bogus=1) }}").unwrap();
    assert!(bad
        .render(
            &[ChatMessage::user("x")],
            &TemplateTokens::default(),
            &Default::default()
        )
        .is_err());
}

#[test]
fn tokenizer_without_template_says_so() {
    let mut vocab = smollm2_gguf_vocab();
    vocab.chat_template = None;
    let tok = Tokenizer::from_gguf_vocab(vocab).unwrap();
    assert!(tok.chat_template().is_none());
    let e = tok
        .render_chat(&[ChatMessage::user("hi")], true)
        .unwrap_err();
    assert!(matches!(e, Error::Template(_)));
    assert!(
        e.to_string().contains("no chat template") && e.to_string().contains("generate"),
        "{e}"
    );
}

#[test]
fn broken_model_template_fails_on_render_not_on_load() {
    let mut vocab = smollm2_gguf_vocab();
    vocab.chat_template = Some("{% if %}".into());
    let tok = Tokenizer::from_gguf_vocab(vocab).unwrap();
    for _ in 0..2 {
        let e = tok
            .render_chat(&[ChatMessage::user("hi")], true)
            .unwrap_err();
        assert!(matches!(e, Error::Template(_)), "{e:?}");
    }
    // Plain tokenization still works.
    assert_eq!(tok.encode("hello", false).unwrap(), vec![28120]);
}

#[test]
fn tools_reach_the_template() {
    let tok = smollm2_hf();
    let t = ChatTemplate::new(
        "{% for t in tools %}{{ t.function.name }};{% endfor %}{{ messages | length }}",
    )
    .unwrap();
    let opts = ChatTemplateOptions {
        tools: Some(vec![
            json!({"type": "function", "function": {"name": "a"}}),
            json!({"function": {"name": "b"}}),
        ]),
        ..Default::default()
    };
    let tokens = TemplateTokens {
        bos: tok.bos_token(),
        eos: tok.eos_token(),
        ..Default::default()
    };
    assert_eq!(
        t.render(
            &[ChatMessage::user("x"), ChatMessage::assistant("y")],
            &tokens,
            &opts
        )
        .unwrap(),
        "a;b;2"
    );
    assert_eq!(
        tok.render_chat_with(&[ChatMessage::system("s")], &opts)
            .unwrap(),
        "<|im_start|>system\ns<|im_end|>\n"
    );
}
