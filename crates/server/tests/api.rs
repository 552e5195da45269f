//! The OpenAI API end to end against a real server with SmolLM2: chat and
//! text completions, whole and streamed (equal text for greedy), n > 1,
//! seeds, stop strings, usage and cached tokens, log-probabilities,
//! tokenize/detokenize, and the metrics they leave behind.

mod common;

use common::*;
use serde_json::{json, Value};

const QUESTION: &str = "What is the capital of France?";

/// The message texts of a chat answer, checking the choices' indices.
pub fn choice_texts(r: &Value) -> Vec<String> {
    r["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("no choices: {r}"))
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"].as_u64(), Some(i as u64));
            c["message"]["content"].as_str().unwrap().to_string()
        })
        .collect()
}

fn chat_body(name: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": name,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 24,
    });
    if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    b
}

/// Joins the streamed chat deltas per choice; checks the chunk shapes.
fn chat_stream_texts(events: &[String], n: usize) -> (Vec<String>, Vec<String>, Option<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut texts = vec![String::new(); n];
    let mut finish = vec![String::new(); n];
    let mut roles = vec![false; n];
    let mut usage = None;
    let mut id = None;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).expect("chunk is JSON");
        assert_eq!(c["object"], "chat.completion.chunk");
        let cid = c["id"].as_str().expect("id").to_string();
        assert!(cid.starts_with("chatcmpl-"));
        assert_eq!(id.get_or_insert(cid.clone()), &cid, "one id per stream");
        let choices = c["choices"].as_array().expect("choices");
        if choices.is_empty() {
            usage = Some(c["usage"].clone());
            continue;
        }
        for ch in choices {
            let i = ch["index"].as_u64().expect("index") as usize;
            let d = &ch["delta"];
            if d["role"] == "assistant" {
                assert!(!roles[i], "the role comes once");
                assert_eq!(d["content"], "", "the first delta has empty content");
                assert!(texts[i].is_empty(), "the role comes first");
                roles[i] = true;
            } else if let Some(t) = d["content"].as_str() {
                assert!(roles[i], "content after the role");
                texts[i].push_str(t);
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                finish[i] = f.to_string();
            }
        }
    }
    assert!(
        roles.iter().all(|&r| r),
        "every choice starts with a role delta"
    );
    (texts, finish, usage)
}

#[tokio::test]
async fn chat_whole_and_streamed_agree() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let (status, r) = post(&url, &chat_body(&s.name, json!({}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["model"], s.name.as_str());
    assert!(r["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(r["created"].as_u64().unwrap() > 1_700_000_000);
    let c = &r["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    let text = c["message"]["content"].as_str().unwrap().to_string();
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert!(c["logprobs"].is_null());
    let u = &r["usage"];
    let (p, k) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && k > 0 && k <= 24, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + k);
    assert!(u["prompt_tokens_details"]["cached_tokens"].is_u64());
    let finish = c["finish_reason"].as_str().unwrap().to_string();
    assert!(finish == "stop" || finish == "length");

    let body = chat_body(
        &s.name,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let events = post_stream(&url, &body).await;
    let (texts, finishes, usage) = chat_stream_texts(&events, 1);
    assert_eq!(texts[0], text, "streamed text equals the whole answer");
    assert_eq!(finishes[0], finish);
    let usage = usage.expect("a usage chunk with choices: []");
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(p));
    assert_eq!(usage["completion_tokens"].as_u64(), Some(k));

    // Without include_usage there is no usage chunk.
    let events = post_stream(&url, &chat_body(&s.name, json!({"stream": true}))).await;
    let (texts, _, usage) = chat_stream_texts(&events, 1);
    assert_eq!(texts[0], text);
    assert!(usage.is_none());
}

#[tokio::test]
async fn chat_content_parts_and_system_messages() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let plain = post(&url, &chat_body(&s.name, json!({}))).await.1;
    let parts = chat_body(
        &s.name,
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}]}),
    );
    let (status, r) = post(&url, &parts).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["choices"][0]["message"], plain["choices"][0]["message"]);
    let sys = chat_body(
        &s.name,
        json!({"messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"}
        ]}),
    );
    let (status, r) = post(&url, &sys).await;
    assert_eq!(status, 200, "{r}");
    assert!(
        r["usage"]["prompt_tokens"].as_u64().unwrap()
            > plain["usage"]["prompt_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn completions_whole_streamed_echo_and_token_ids() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/completions", s.url);
    let prompt = "The capital of France is";
    let body = json!({"model": s.name, "prompt": prompt, "max_tokens": 16, "temperature": 0});
    let (status, r) = post(&url, &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert!(r["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = r["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let events = post_stream(&url, &sb).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut streamed = String::new();
    let mut finish = None;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "text_completion");
        streamed.push_str(c["choices"][0]["text"].as_str().unwrap());
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    assert_eq!(streamed, text);
    assert_eq!(finish.as_deref(), r["choices"][0]["finish_reason"].as_str());

    // echo puts the prompt first.
    let mut eb = body.clone();
    eb["echo"] = json!(true);
    let (_, e) = post(&url, &eb).await;
    assert_eq!(
        e["choices"][0]["text"].as_str().unwrap(),
        format!("{prompt}{text}")
    );

    // Streamed, echo comes first.
    eb["stream"] = json!(true);
    let events = post_stream(&url, &eb).await;
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|c| c["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(joined, format!("{prompt}{text}"));

    // The same prompt as token ids gives the same text.
    let (_, t) = post(
        &format!("{}/tokenize", s.url),
        &json!({"model": s.name, "prompt": prompt}),
    )
    .await;
    let ids = t["tokens"].clone();
    assert_eq!(
        t["count"].as_u64().unwrap() as usize,
        ids.as_array().unwrap().len()
    );
    let mut ib = body.clone();
    ib["prompt"] = ids.clone();
    let (status, r2) = post(&url, &ib).await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(r2["choices"][0]["text"], r["choices"][0]["text"]);
    let (_, d) = post(&format!("{}/detokenize", s.url), &json!({"tokens": ids})).await;
    assert_eq!(d["prompt"], prompt);

    // Two prompts, two choices each.
    let mut mb = body.clone();
    mb["prompt"] = json!([prompt, "Once upon a time"]);
    mb["n"] = json!(2);
    let (status, m) = post(&url, &mb).await;
    assert_eq!(status, 200, "{m}");
    let ch = m["choices"].as_array().unwrap();
    assert_eq!(ch.len(), 4);
    assert_eq!(ch[0]["text"], r["choices"][0]["text"]);
    assert_eq!(ch[1]["text"], r["choices"][0]["text"], "greedy: same text");
}

#[tokio::test]
async fn n_choices_come_with_their_indices() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let body = chat_body(
        &s.name,
        json!({"n": 3, "temperature": 1.0, "seed": 1234, "max_tokens": 16}),
    );
    let (status, a) = post(&url, &body).await;
    assert_eq!(status, 200, "{a}");
    let ta = choice_texts(&a);
    assert_eq!(ta.len(), 3);
    assert!(
        ta[0] != ta[1] || ta[1] != ta[2],
        "three sampled choices with different seeds all equal: {ta:?}"
    );
    assert!(a["usage"]["completion_tokens"].as_u64().unwrap() >= 3);

    // Streamed (greedy, so equal whatever shares the batch), the choices
    // interleave by index and equal the whole ones.
    let body = chat_body(&s.name, json!({"n": 2, "max_tokens": 16}));
    let whole = choice_texts(&post(&url, &body).await.1);
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let events = post_stream(&url, &sb).await;
    let (st, _, _) = chat_stream_texts(&events, 2);
    assert_eq!(st, whole);
}

#[tokio::test]
async fn stop_strings_cut_the_text() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let (_, r) = post(&url, &chat_body(&s.name, json!({"max_tokens": 40}))).await;
    let full = r["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // A stop string from the middle of the answer (a multi-token word).
    let at = full.find("Paris").expect("the answer names Paris");
    for stop in [json!("Paris"), json!(["nonexistent", "aris"])] {
        let body = chat_body(&s.name, json!({"max_tokens": 40, "stop": stop}));
        let (status, r) = post(&url, &body).await;
        assert_eq!(status, 200, "{r}");
        let c = &r["choices"][0];
        let cut = c["message"]["content"].as_str().unwrap();
        let want = if stop.is_string() {
            &full[..at]
        } else {
            &full[..at + 1]
        };
        assert_eq!(cut, want, "stop {stop}");
        assert_eq!(c["finish_reason"], "stop");
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let (texts, fin, _) = chat_stream_texts(&post_stream(&url, &sb).await, 1);
        assert_eq!(texts[0], want, "streamed, stop {stop}");
        assert_eq!(fin[0], "stop");
    }
}

#[tokio::test]
async fn logprobs_in_both_shapes() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let body = chat_body(
        &s.name,
        json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 8}),
    );
    let (status, r) = post(&url, &body).await;
    assert_eq!(status, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for e in content {
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0);
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], e["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        let bytes: Vec<u8> = e["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, e["token"].as_str().unwrap().as_bytes());
    }
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let events = post_stream(&url, &sb).await;
    let streamed: usize = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(streamed, content.len());

    let url = format!("{}/v1/completions", s.url);
    let body = json!({"model": s.name, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 2});
    let (status, r) = post(&url, &body).await;
    assert_eq!(status, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let n = r["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[k].as_array().unwrap().len(), n, "{k}: {lp}");
    }
    assert_eq!(lp["text_offset"][0], 0);
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() >= 2);
}

#[tokio::test]
async fn repeated_prompt_reports_cached_tokens() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let long = "You are a helpful assistant who answers questions about European geography, history and culture in short, precise sentences. ".repeat(3);
    let body = chat_body(
        &s.name,
        json!({"messages": [{"role": "system", "content": long}, {"role": "user", "content": QUESTION}], "max_tokens": 4}),
    );
    let (status, _) = post(&url, &body).await;
    assert_eq!(status, 200);
    let (_, r) = post(&url, &body).await;
    let u = &r["usage"];
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= 64,
        "the second identical prompt hits the prefix cache: {u}"
    );
    assert!(cached < u["prompt_tokens"].as_u64().unwrap());
    let (_, m) = get(&format!("{}/metrics", s.url)).await;
    let hits = metric(
        &m,
        "vllm:prefix_cache_hits_total",
        &[("model_name", &s.name)],
    )
    .unwrap();
    assert!(hits >= cached as f64, "{m}");
}

#[tokio::test]
async fn penalties_bias_and_ignore_eos_are_applied() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/completions", s.url);
    let base =
        json!({"model": s.name, "prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0});
    let (_, plain) = post(&url, &base).await;
    let (_, ids) = post(
        &format!("{}/tokenize", s.url),
        &json!({"prompt": " 5", "add_special_tokens": false}),
    )
    .await;
    let five = ids["tokens"][0].as_u64().unwrap();
    // Banning the next number changes the greedy text.
    let mut b = base.clone();
    b["logit_bias"] = json!({ five.to_string(): -100 });
    let (status, biased) = post(&url, &b).await;
    assert_eq!(status, 200, "{biased}");
    assert_ne!(biased["choices"][0]["text"], plain["choices"][0]["text"]);
    // Penalties on a counting continuation that repeats ", " every other
    // token: the growing frequency penalty and the repetition penalty
    // (over prompt and output) change it; a constant presence penalty is
    // accepted (the sampler's unit tests check its arithmetic).
    let mut long = base.clone();
    long["max_tokens"] = json!(24);
    long["ignore_eos"] = json!(true);
    let (_, plain_long) = post(&url, &long).await;
    for (k, v, changes) in [
        ("presence_penalty", json!(2.0), false),
        ("frequency_penalty", json!(2.0), true),
        ("repetition_penalty", json!(3.0), true),
    ] {
        let mut b = long.clone();
        b[k] = v;
        let (status, r) = post(&url, &b).await;
        assert_eq!(status, 200, "{k}: {r}");
        if changes {
            assert_ne!(
                r["choices"][0]["text"], plain_long["choices"][0]["text"],
                "{k} changes the repetitive text"
            );
        }
    }
    // ignore_eos runs to max_tokens.
    let body = chat_body(&s.name, json!({"ignore_eos": true, "max_tokens": 48}));
    let (_, r) = post(&format!("{}/v1/chat/completions", s.url), &body).await;
    assert_eq!(r["usage"]["completion_tokens"], 48);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn models_health_tokenize_and_metrics() {
    let Some(s) = shared() else { return };
    let (status, h) = get(&format!("{}/health", s.url)).await;
    assert_eq!(status, 200, "{h}");
    let (status, m) = get(&format!("{}/v1/models", s.url)).await;
    assert_eq!(status, 200);
    let m: Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], s.name.as_str());
    assert_eq!(m["data"][0]["object"], "model");
    let (status, t) = post(
        &format!("{}/tokenize", s.url),
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert!(t["count"].as_u64().unwrap() > 3);
    assert!(t["max_model_len"].as_u64().unwrap() >= 1024);
    let (_, d) = post(
        &format!("{}/detokenize", s.url),
        &json!({"tokens": t["tokens"]}),
    )
    .await;
    assert!(d["prompt"].as_str().unwrap().contains("hi"));

    // One request, so every metric has a sample.
    post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0}),
    )
    .await;
    let (status, text) = get(&format!("{}/metrics", s.url)).await;
    assert_eq!(status, 200);
    let l = [("model_name", s.name.as_str())];
    for name in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ] {
        assert!(metric(&text, name, &l).is_some(), "{name} missing:\n{text}");
    }
    assert!(metric(&text, "vllm:prompt_tokens_total", &l).unwrap() > 0.0);
    assert!(metric(&text, "vllm:generation_tokens_total", &l).unwrap() >= 3.0);
    assert!(
        metric(
            &text,
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(text.contains("# HELP vllm:num_requests_running "), "{text}");
    assert!(
        text.contains("# TYPE vllm:e2e_request_latency_seconds histogram"),
        "{text}"
    );
    // Real buckets (vLLM's), not a summary.
    assert!(
        metric(
            &text,
            "vllm:time_to_first_token_seconds_bucket",
            &[("le", "0.001")]
        )
        .is_some(),
        "{text}"
    );
    assert!(metric(
        &text,
        "vllm:e2e_request_latency_seconds_bucket",
        &[("le", "7680")]
    )
    .is_some());
}

#[tokio::test]
async fn response_format_constrains_the_output() {
    let Some(s) = shared() else { return };
    let url = format!("{}/v1/chat/completions", s.url);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "city": {"type": "string"}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    });
    let check = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{text}");
        assert!(
            o["name"].is_string() && o["city"].is_string() && o["age"].is_i64(),
            "{text}"
        );
    };
    let body = json!({
        "model": s.name,
        "messages": [{"role": "user", "content": "Describe a fictional person as JSON with name, age and city."}],
        "temperature": 0,
        "max_tokens": 100,
        "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}},
    });
    let (status, r) = post(&url, &body).await;
    assert_eq!(status, 200, "{r}");
    let text = choice_texts(&r).remove(0);
    check(&text);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // Streamed: the same text.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let (texts, finish, _) = chat_stream_texts(&post_stream(&url, &sb).await, 1);
    assert_eq!(texts[0], text);
    assert_eq!(finish[0], "stop");

    // Sampled, two choices: each valid on its own.
    let mut nb = body.clone();
    nb["temperature"] = json!(0.9);
    nb["seed"] = json!(11);
    nb["n"] = json!(2);
    let (status, r) = post(&url, &nb).await;
    assert_eq!(status, 200, "{r}");
    for t in choice_texts(&r) {
        check(&t);
    }

    // json_object on a text completion.
    let (status, r) = post(
        &format!("{}/v1/completions", s.url),
        &json!({
            "model": s.name, "prompt": "A JSON object describing Paris:", "temperature": 0,
            "max_tokens": 80, "response_format": {"type": "json_object"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let text = r["choices"][0]["text"].as_str().unwrap();
    if r["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(text).unwrap().is_object(),
            "{text}"
        );
    } else {
        assert!(text.trim_start().starts_with('{'), "{text}");
    }

    // An invalid schema is the client's error, named.
    let mut bad = body.clone();
    bad["response_format"]["json_schema"]["schema"] = json!({"type": "nonsense"});
    let (status, r) = post(&url, &bad).await;
    assert_error(status, &r, 400);
    assert_eq!(r["error"]["param"], "response_format");
    let (status, r) = post(
        &url,
        &chat_body(&s.name, json!({"response_format": {"type": "yaml"}})),
    )
    .await;
    assert_error(status, &r, 400);
    assert_eq!(r["error"]["param"], "response_format.type");
}
