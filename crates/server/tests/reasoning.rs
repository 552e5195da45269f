//! Reasoning models through real servers: the scripted model of
//! `tests/fixtures/think` (made by `scripts/make_reasoning_fixtures.py`;
//! its greedy output is fixed by its weights and steered by `logit_bias`,
//! and transformers recorded what it writes) behind the real HTTP routes,
//! model thread and engine, with test chat templates imitating GLM-4.5
//! (the model opens `<think>`) and GLM-4.7 (the prompt opens it).
//!
//! * chat answers, whole and streamed, put the reasoning in
//!   `reasoning_content` and `reasoning` and the rest in `content`, for
//!   every scenario of the fixture (model or prompt opens the block,
//!   thinking switched off by `chat_template_kwargs` or `/nothink`, the
//!   closing tag split over two tokens, a block that never closes, no
//!   tags); usage counts every generated token;
//! * streams send reasoning deltas, then content deltas, each token's
//!   log-probabilities once, per choice;
//! * `reasoning` / `reasoning_content` of input messages reach the template;
//! * `--reasoning-parser none` and `deepseek_r1`; text completions (whole
//!   and streamed) are not split, nor are answers under `response_format`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use common::*;
use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_engine::tokenizer::Tokenizer;
use mm_engine::ReasoningParser;
use mm_server::Loader;
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| read(fixtures().join("think/reference.json")))
}

fn template(name: &str) -> String {
    let cases = read(fixtures().join("tokenizer/reasoning-template-cases.json"));
    cases["templates"][name].as_str().unwrap().to_string()
}

/// The id of a token of the scripted model.
fn id(token: &str) -> usize {
    reference()["vocab"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t == token)
        .unwrap_or_else(|| panic!("no token {token:?}"))
}

/// Loads the scripted model, with the chat template `template` (a name in
/// the template cases) instead of its own.
fn loader(template_name: &str) -> Loader {
    let source = template(template_name);
    Box::new(move || {
        let dir = fixtures().join("think");
        let src = mm_formats::open_source(&dir)?;
        let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
        let model =
            mm_models::load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {})?;
        let tok = Tokenizer::from_hf_dir(&dir)?.with_chat_template(source);
        Ok((model, tok))
    })
}

fn start(template_name: &str, parser: ReasoningParser) -> TestServer {
    let mut cfg = config("think");
    cfg.reasoning_parser = parser;
    TestServer::start_with(cfg, loader(template_name), true)
}

/// One server per template and parser, shared by the tests.
fn server(template_name: &str, parser: ReasoningParser) -> &'static TestServer {
    type Servers = std::sync::Mutex<Vec<(String, ReasoningParser, &'static TestServer)>>;
    static S: OnceLock<Servers> = OnceLock::new();
    let mut list = S.get_or_init(Default::default).lock().unwrap();
    if let Some((_, _, s)) = list
        .iter()
        .find(|(t, p, _)| t == template_name && *p == parser)
    {
        return s;
    }
    let s: &'static TestServer = Box::leak(Box::new(start(template_name, parser)));
    list.push((template_name.to_string(), parser, s));
    s
}

fn scenario(name: &str) -> &'static Value {
    reference()["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// The chat request of a fixture scenario.
fn body(sc: &Value, extra: Value) -> Value {
    let bias: serde_json::Map<String, Value> = sc["banned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (id(t.as_str().unwrap()).to_string(), json!(-100)))
        .collect();
    let mut b = json!({
        "model": "think",
        "messages": sc["messages"],
        "chat_template_kwargs": sc["kwargs"],
        "logit_bias": bias,
        "max_tokens": sc["max_new_tokens"],
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Every scenario of the fixture with the (reasoning, content) its text
/// splits into under the default parser; the list is checked not to shrink.
fn expected() -> Vec<(&'static Value, &'static str, &'static str)> {
    let all: Vec<_> = reference()["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sc| {
            let s = |k: &str| sc[k].as_str().unwrap();
            (sc, s("reasoning"), s("content"))
        })
        .collect();
    assert_eq!(all.len(), 8);
    all
}

/// A message or delta's reasoning: both names present and equal, or
/// neither.
fn reasoning_of(m: &Value) -> Option<String> {
    match (m.get("reasoning_content"), m.get("reasoning")) {
        (None, None) => None,
        (Some(a), Some(b)) => {
            assert_eq!(a, b, "reasoning_content and reasoning differ: {m}");
            let r = a.as_str().expect("reasoning is a string");
            assert!(!r.is_empty(), "empty reasoning is left out: {m}");
            Some(r.to_string())
        }
        _ => panic!("one of reasoning_content and reasoning: {m}"),
    }
}

#[tokio::test]
async fn whole_answers_split_reasoning_from_content() {
    for (sc, reasoning, content) in expected() {
        let name = sc["name"].as_str().unwrap();
        let s = server(sc["template"].as_str().unwrap(), ReasoningParser::Auto);
        let (status, r) = post(
            &format!("{}/v1/chat/completions", s.url),
            &body(sc, json!({})),
        )
        .await;
        assert_eq!(status, 200, "{name}: {r}");
        let m = &r["choices"][0]["message"];
        assert_eq!(m["role"], "assistant");
        assert_eq!(m["content"], content, "{name}: content of {r}");
        assert_eq!(
            reasoning_of(m).unwrap_or_default(),
            reasoning,
            "{name}: reasoning of {r}"
        );
        let finish = if name == "never-closes" {
            "length"
        } else {
            "stop"
        };
        assert_eq!(r["choices"][0]["finish_reason"], finish, "{name}");
        // Every generated token counts, reasoning and tags included.
        let u = &r["usage"];
        assert_eq!(
            u["prompt_tokens"],
            sc["prompt_ids"].as_array().unwrap().len(),
            "{name}"
        );
        assert_eq!(
            u["completion_tokens"],
            sc["greedy_ids"].as_array().unwrap().len(),
            "{name}: usage {u}"
        );
    }
}

/// A chat stream's text per choice: (reasoning, content, finish reasons,
/// usage), checking that reasoning deltas come before content deltas and
/// that no delta mixes them.
fn read_stream(events: &[String], n: usize) -> (Vec<String>, Vec<String>, Vec<String>, Value) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (mut reasoning, mut content) = (vec![String::new(); n], vec![String::new(); n]);
    let mut finish = vec![String::new(); n];
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let choices = c["choices"].as_array().unwrap();
        if choices.is_empty() {
            usage = c["usage"].clone();
        }
        for ch in choices {
            let i = ch["index"].as_u64().unwrap() as usize;
            let d = &ch["delta"];
            if let Some(f) = ch["finish_reason"].as_str() {
                assert_eq!(d, &json!({}), "the finish chunk is empty");
                finish[i] = f.to_string();
                continue;
            }
            assert!(finish[i].is_empty(), "nothing after the finish reason");
            if d["role"] == "assistant" {
                continue;
            }
            match (reasoning_of(d), d.get("content")) {
                (Some(r), None) => {
                    assert!(content[i].is_empty(), "reasoning after content: {e}");
                    reasoning[i].push_str(&r);
                }
                (None, Some(t)) => content[i].push_str(t.as_str().unwrap()),
                other => panic!("a delta holds one of reasoning and content: {e} {other:?}"),
            }
        }
    }
    (reasoning, content, finish, usage)
}

#[tokio::test]
async fn streams_send_reasoning_then_content() {
    for (sc, reasoning, content) in expected() {
        let name = sc["name"].as_str().unwrap();
        let s = server(sc["template"].as_str().unwrap(), ReasoningParser::Auto);
        let events = post_stream(
            &format!("{}/v1/chat/completions", s.url),
            &body(
                sc,
                json!({"stream": true, "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
        let (r, c, finish, usage) = read_stream(&events, 1);
        assert_eq!(
            (r[0].as_str(), c[0].as_str()),
            (reasoning, content),
            "{name}"
        );
        let want = if name == "never-closes" {
            "length"
        } else {
            "stop"
        };
        assert_eq!(finish[0], want, "{name}");
        assert_eq!(
            usage["completion_tokens"],
            sc["greedy_ids"].as_array().unwrap().len(),
            "{name}"
        );
        // The closing tag split over two tokens never shows.
        assert!(
            events
                .iter()
                .all(|e| !e.contains("</thi") && !e.contains("nk>")),
            "{name}: {events:?}"
        );
    }
}

#[tokio::test]
async fn choices_split_apart_and_logprobs_come_once_per_token() {
    let sc = scenario("model-opens");
    let s = server("glm45-like", ReasoningParser::Auto);
    let events = post_stream(
        &format!("{}/v1/chat/completions", s.url),
        &body(
            sc,
            json!({"stream": true, "n": 2, "logprobs": true, "top_logprobs": 1,
                   "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    let (r, c, _, usage) = read_stream(&events, 2);
    for i in 0..2 {
        assert_eq!(
            (r[i].as_str(), c[i].as_str()),
            ("Let me think.", "The answer is 42!")
        );
    }
    let mut entries = [0usize; 2];
    for e in &events[..events.len() - 1] {
        let ch: Value = serde_json::from_str(e).unwrap();
        for choice in ch["choices"].as_array().unwrap() {
            if let Some(lp) = choice["logprobs"]["content"].as_array() {
                entries[choice["index"].as_u64().unwrap() as usize] += lp.len();
            }
        }
    }
    let per_choice = sc["greedy_ids"].as_array().unwrap().len();
    assert_eq!(entries, [per_choice; 2], "one log-probability per token");
    assert_eq!(usage["completion_tokens"], 2 * per_choice);
}

/// The detokenized prompt the server renders for `messages`.
async fn rendered(s: &TestServer, messages: Value) -> String {
    let (status, t) = post(
        &format!("{}/tokenize", s.url),
        &json!({"messages": messages, "add_generation_prompt": false}),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let (status, d) = post(
        &format!("{}/detokenize", s.url),
        &json!({"tokens": t["tokens"]}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    d["prompt"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn input_reasoning_reaches_the_template() {
    // The GLM-4.7 imitation keeps the reasoning of every assistant turn.
    let s = server("glm47-like", ReasoningParser::Auto);
    let user = json!({"role": "user", "content": "q"});
    for key in ["reasoning_content", "reasoning"] {
        let msgs = json!([user, {"role": "assistant", "content": "The", key: "Let"}]);
        let text = rendered(s, msgs.clone()).await;
        assert!(
            text.ends_with("<|assistant|><think>Let</think>The"),
            "{key}: {text:?}"
        );
        // And such a history is answered.
        let mut history = msgs.as_array().unwrap().clone();
        history.push(user.clone());
        let (status, r) = post(
            &format!("{}/v1/chat/completions", s.url),
            &json!({"messages": history, "temperature": 0}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["choices"][0]["message"]["reasoning"], "Let me think.");
    }
    // `reasoning_content` wins when both come (clients echo both back).
    let both = json!([user, {"role": "assistant", "content": "The",
                             "reasoning_content": "Let", "reasoning": "Hmm"}]);
    assert!(rendered(s, both).await.ends_with("<think>Let</think>The"));
    let none = json!([user, {"role": "assistant", "content": "The"}]);
    assert!(rendered(s, none)
        .await
        .ends_with("<|assistant|></think>The"));
    // Template variables through /tokenize too.
    let (_, on) = post(&format!("{}/tokenize", s.url), &json!({"messages": [user]})).await;
    let (_, off) = post(
        &format!("{}/tokenize", s.url),
        &json!({"messages": [user], "chat_template_kwargs": {"enable_thinking": false}}),
    )
    .await;
    let last = |v: &Value| {
        v["tokens"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_u64()
            .unwrap()
    };
    assert_eq!(last(&on) as usize, id("<think>"));
    assert_eq!(last(&off) as usize, id("</think>"));
}

#[tokio::test]
async fn template_kwargs_and_input_reasoning_are_checked() {
    let s = server("glm45-like", ReasoningParser::Auto);
    let url = format!("{}/v1/chat/completions", s.url);
    let user = json!({"role": "user", "content": "q"});
    for (b, param) in [
        (
            json!({"messages": [user], "chat_template_kwargs": true}),
            "chat_template_kwargs",
        ),
        (
            json!({"messages": [user, {"role": "assistant", "content": "a", "reasoning": 3}]}),
            "messages[1].reasoning",
        ),
    ] {
        let (status, r) = post(&url, &b).await;
        assert_error(status, &r, 400);
        assert_eq!(r["error"]["param"], param, "{r}");
    }
    // Template variables cannot replace the messages.
    let (status, r) = post(
        &url,
        &json!({"messages": [user], "temperature": 0,
                "chat_template_kwargs": {"messages": "not a list"}}),
    )
    .await;
    assert_eq!(status, 200, "kwargs cannot replace messages: {r}");
    assert_eq!(r["choices"][0]["message"]["reasoning"], "Let me think.");
}

#[tokio::test]
async fn reasoning_parser_none_and_deepseek_r1() {
    let sc = scenario("model-opens");
    let raw = sc["greedy_text"].as_str().unwrap();
    let none = server("glm45-like", ReasoningParser::None);
    let (_, r) = post(
        &format!("{}/v1/chat/completions", none.url),
        &body(sc, json!({})),
    )
    .await;
    let m = &r["choices"][0]["message"];
    assert_eq!(m["content"], raw, "{r}");
    assert_eq!(reasoning_of(m), None);
    let events = post_stream(
        &format!("{}/v1/chat/completions", none.url),
        &body(sc, json!({"stream": true})),
    )
    .await;
    let (rs, c, _, _) = read_stream(&events, 1);
    assert_eq!((rs[0].as_str(), c[0].as_str()), ("", raw));

    // deepseek_r1: an answer the prompt does not place starts in reasoning.
    let r1 = server("glm45-like", ReasoningParser::DeepSeekR1);
    for (name, reasoning, content) in [
        ("no-tags", "The answer is 42!", ""),
        ("model-opens", "Let me think.", "The answer is 42!"),
        ("thinking-off", "", "The answer is 42!"),
    ] {
        let (_, r) = post(
            &format!("{}/v1/chat/completions", r1.url),
            &body(scenario(name), json!({})),
        )
        .await;
        let m = &r["choices"][0]["message"];
        assert_eq!(
            reasoning_of(m).unwrap_or_default(),
            reasoning,
            "{name}: {r}"
        );
        assert_eq!(m["content"], content, "{name}: {r}");
    }
}

/// A grammar applies from the first token, so a constrained answer is all
/// content even after a prompt that opened a reasoning block. Needs a
/// tokenizer structured output supports: SmolLM2's, under the GLM-4.7
/// imitation template (skipped without SmolLM2, as the other SmolLM2 tests).
#[tokio::test]
async fn constrained_answers_are_all_content() {
    let Some(path) = model_path() else {
        return;
    };
    let inner = common::loader(path);
    let source = template("glm47-like");
    let load: Loader = Box::new(move || {
        let (model, tok) = inner()?;
        Ok((model, tok.with_chat_template(source)))
    });
    let s = TestServer::start_with(config("smol-thinking"), load, true);
    let url = format!("{}/v1/chat/completions", s.url);
    let ask = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Name a color."}],
                           "temperature": 0, "max_tokens": 12});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    // Unconstrained, the template's open block makes the answer reasoning.
    let (status, r) = post(&url, &ask(json!({"ignore_eos": true}))).await;
    assert_eq!(status, 200, "{r}");
    assert!(reasoning_of(&r["choices"][0]["message"]).is_some(), "{r}");
    let (status, r) = post(
        &url,
        &ask(json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let m = &r["choices"][0]["message"];
    assert_eq!(reasoning_of(m), None, "{r}");
    let content = m["content"].as_str().unwrap();
    assert!(content.trim_start().starts_with('{'), "{r}");
}

#[tokio::test]
async fn text_completions_are_not_split() {
    let sc = scenario("model-opens");
    let s = server("glm45-like", ReasoningParser::Auto);
    let (status, r) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": sc["prompt"], "max_tokens": 32, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let c = &r["choices"][0];
    assert_eq!(c["text"], sc["greedy_text"]);
    assert_eq!(reasoning_of(c), None);
    // Streamed: the same text, one chunk per piece, then the finish chunk.
    let events = post_stream(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": sc["prompt"], "max_tokens": 32, "temperature": 0, "stream": true}),
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut text = String::new();
    let mut finish = Vec::new();
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let ch = &c["choices"][0];
        assert_eq!(reasoning_of(ch), None);
        text.push_str(ch["text"].as_str().unwrap());
        if let Some(f) = ch["finish_reason"].as_str() {
            finish.push(f.to_string());
        }
    }
    assert_eq!(text, sc["greedy_text"].as_str().unwrap());
    assert_eq!(finish, ["stop"]);
}
