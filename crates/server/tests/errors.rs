//! Every class of bad request gets its status and an OpenAI error object,
//! never a 500, and the server keeps serving afterwards.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post_raw(url: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let r = client()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn bad_requests_are_answered_in_openai_shape() {
    let Some(s) = shared() else { return };
    let chat = format!("{}/v1/chat/completions", s.url);
    let cmpl = format!("{}/v1/completions", s.url);
    let msgs = json!([{"role": "user", "content": "Hi"}]);

    // Malformed JSON, with and without a JSON content type.
    for ct in ["application/json", "text/plain"] {
        let (st, b) = post_raw(&chat, b"{\"messages\": [".to_vec(), ct).await;
        assert_error(st, &b, 400);
        assert!(
            b["error"]["message"].as_str().unwrap().contains("JSON"),
            "{b}"
        );
    }
    let (st, b) = post_raw(&chat, b"[1, 2]".to_vec(), "application/json").await;
    assert_error(st, &b, 400);

    // (body, param the error names)
    let cases: Vec<(Value, Option<&str>)> = vec![
        (json!({}), None),                             // missing messages
        (json!({"messages": "hi"}), Some("messages")), // mistyped
        (
            json!({"messages": msgs, "temperature": "hot"}),
            Some("temperature"),
        ),
        (
            json!({"messages": msgs, "temperature": -0.5}),
            Some("temperature"),
        ),
        (json!({"messages": msgs, "top_p": 1.5}), Some("top_p")),
        (json!({"messages": msgs, "top_p": 0}), Some("top_p")),
        (json!({"messages": msgs, "n": 0}), Some("n")),
        (
            json!({"messages": msgs, "max_tokens": 0}),
            Some("max_tokens"),
        ),
        (
            json!({"messages": msgs, "max_tokens": -3}),
            Some("max_tokens"),
        ),
        (json!({"messages": msgs, "min_p": 2}), Some("min_p")),
        (
            json!({"messages": msgs, "presence_penalty": 5}),
            Some("presence_penalty"),
        ),
        (
            json!({"messages": msgs, "frequency_penalty": -5}),
            Some("frequency_penalty"),
        ),
        (
            json!({"messages": msgs, "repetition_penalty": 0}),
            Some("repetition_penalty"),
        ),
        (
            json!({"messages": msgs, "top_logprobs": 5}),
            Some("top_logprobs"),
        ),
        (
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 50}),
            Some("top_logprobs"),
        ),
        (
            json!({"messages": msgs, "logit_bias": {"x": 1}}),
            Some("logit_bias"),
        ),
        (
            json!({"messages": msgs, "logit_bias": {"99999999": 1}}),
            Some("logit_bias"),
        ),
        (json!({"messages": msgs, "stop": 3}), Some("stop")),
        (json!({"messages": msgs, "stream": "yes"}), Some("stream")),
        (
            json!({"messages": msgs, "stream_options": {"include_usage": true}}),
            Some("stream_options"),
        ),
        (json!({"messages": []}), Some("messages")),
        (
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            Some("messages[0].role"),
        ),
        (json!({"messages": [{"content": "x"}]}), Some("messages[0]")),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            Some("messages[0].content[0].type"),
        ),
        // Prompt plus max_tokens past the context.
        (json!({"messages": msgs, "max_tokens": 1_000_000}), None),
    ];
    for (body, param) in cases {
        let (st, b) = post(&chat, &body).await;
        assert_error(st, &b, 400);
        if let Some(p) = param {
            assert_eq!(b["error"]["param"].as_str(), Some(p), "body {body}: {b}");
        }
    }
    let (st, b) = post(&chat, &json!({"messages": msgs, "max_tokens": 1_000_000})).await;
    assert_error(st, &b, 400);
    assert_eq!(b["error"]["code"], "context_length_exceeded");

    let long = "word ".repeat(6000);
    for body in [
        json!({"prompt": long, "max_tokens": 4}),
        json!({"prompt": []}),
        json!({"prompt": [1, -2]}),
        json!({"prompt": [1, 999999]}),
        json!({"prompt": "x", "logprobs": 2, "echo": true}),
        json!({"prompt": {"a": 1}}),
        json!({"prompt": vec!["a"; 600], "n": 2, "max_tokens": 1}),
    ] {
        let (st, b) = post(&cmpl, &body).await;
        assert_error(st, &b, 400);
    }
    for (url, body) in [
        (format!("{}/tokenize", s.url), json!({})),
        (format!("{}/tokenize", s.url), json!({"prompt": 5})),
        (format!("{}/detokenize", s.url), json!({"tokens": [-1]})),
        (format!("{}/detokenize", s.url), json!({"tokens": "abc"})),
    ] {
        let (st, b) = post(&url, &body).await;
        assert_error(st, &b, 400);
    }

    // 404: an unknown model, an unknown route.
    let (st, b) = post(&chat, &json!({"model": "gpt-9", "messages": msgs})).await;
    assert_error(st, &b, 404);
    assert_eq!(b["error"]["code"], "model_not_found");
    let (st, b) = post(&format!("{}/v1/nothing", s.url), &json!({})).await;
    assert_error(st, &b, 404);
    let (st, b) = get(&format!("{}/v2/models", s.url)).await;
    assert_error(st, &serde_json::from_str(&b).unwrap(), 404);
    // 405: a known route, another method.
    let (st, b) = get(&chat).await;
    assert_error(st, &serde_json::from_str(&b).unwrap(), 405);

    // 413: a body over the limit (4 MiB).
    let big = format!(
        "{{\"messages\": [{{\"role\": \"user\", \"content\": \"{}\"}}]}}",
        "a".repeat(5 << 20)
    );
    let (st, b) = post_raw(&chat, big.into_bytes(), "application/json").await;
    assert_error(st, &b, 413);

    // Still serving.
    let (st, b) = post(
        &chat,
        &json!({"messages": msgs, "max_tokens": 3, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, _) = get(&format!("{}/health", s.url)).await;
    assert_eq!(st, 200);
}
