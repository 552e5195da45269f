//! Servers of their own for what a shared one cannot show: clients that
//! disconnect free their sequences, the API key, the queue limit (503 with
//! Retry-After), `--metrics-port`, and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use serde_json::json;

fn long_chat(name: &str, stream: bool) -> serde_json::Value {
    json!({
        "model": name,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 3000,
        "ignore_eos": true,
        "temperature": 0,
        "stream": stream,
    })
}

fn running(m: &str, name: &str) -> f64 {
    metric(m, "vllm:num_requests_running", &[("model_name", name)]).unwrap_or(-1.0)
}

fn aborted(m: &str) -> f64 {
    metric(
        m,
        "vllm:request_success_total",
        &[("finished_reason", "abort")],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn disconnected_clients_free_their_sequences() {
    let Some(s) = TestServer::start(config("smol-disconnect")) else {
        return;
    };
    let name = s.name.clone();
    // Streaming: read a few chunks, then hang up.
    let r = client()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&long_chat(&name, true))
        .send()
        .await
        .unwrap();
    let mut r = r;
    let mut got = 0;
    while got < 3 {
        let c = r.chunk().await.unwrap().expect("stream continues");
        got += c.iter().filter(|&&b| b == b'\n').count() / 2;
    }
    let m = wait_metrics(&s.url, 30, "one running", |m| running(m, &name) == 1.0).await;
    assert!(metric(&m, "vllm:kv_cache_usage_perc", &[]).unwrap() > 0.0);
    drop(r);
    let m = wait_metrics(&s.url, 30, "the stream's cancellation", |m| {
        running(m, &name) == 0.0 && aborted(m) == 1.0
    })
    .await;
    assert_eq!(
        metric(&m, "vllm:kv_cache_usage_perc", &[]),
        Some(0.0),
        "blocks freed"
    );

    // Not streaming: a raw connection that sends the request and closes.
    let addr = s.url.trim_start_matches("http://").to_string();
    let body = long_chat(&name, false).to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    wait_metrics(&s.url, 30, "the second request running", |m| {
        running(m, &name) == 1.0
    })
    .await;
    drop(tcp);
    let m = wait_metrics(&s.url, 30, "the non-streaming cancellation", |m| {
        running(m, &name) == 0.0 && aborted(m) == 2.0
    })
    .await;
    assert_eq!(metric(&m, "vllm:kv_cache_usage_perc", &[]), Some(0.0));
    // The server still answers.
    let (st, b) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    s.shutdown().await;
}

/// Seeds reproduce a sampled answer, whatever shares the batch and
/// whether the prompt comes from the prefix cache (the CPU backend is batch
/// invariant bit for bit): a cold run, a warm run, choice `i` of seed `s`
/// and a lone request with seed `s + i` all agree.
#[tokio::test]
async fn seeds_reproduce_sampled_choices() {
    let Some(s) = TestServer::start(config("smol-seeds")) else {
        return;
    };
    let url = format!("{}/v1/chat/completions", s.url);
    let body = json!({
        "messages": [{"role": "user", "content": "Write a word."}],
        "n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 16,
    });
    let texts = |r: serde_json::Value| -> Vec<String> {
        (0..3)
            .map(|i| {
                r["choices"][i]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let a = texts(post(&url, &body).await.1);
    let b = texts(post(&url, &body).await.1);
    assert_eq!(
        a, b,
        "same seed, same choices (the second run hits the prefix cache)"
    );
    let mut lone = body.clone();
    lone["seed"] = json!(8);
    lone["n"] = json!(1);
    let (_, r) = post(&url, &lone).await;
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str(),
        Some(a[1].as_str()),
        "choice i uses seed + i, alone or beside others"
    );
    // Streamed: the same texts.
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let mut st = vec![String::new(); 3];
    for e in post_stream(&url, &sb).await {
        if e == "[DONE]" {
            continue;
        }
        let c: serde_json::Value = serde_json::from_str(&e).unwrap();
        for ch in c["choices"].as_array().unwrap() {
            let i = ch["index"].as_u64().unwrap() as usize;
            st[i].push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(st, a);
    s.shutdown().await;
}

#[tokio::test]
async fn api_key_guards_the_api_only() {
    let mut cfg = config("smol-key");
    cfg.api_key = Some("sekret".into());
    let Some(s) = TestServer::start(cfg) else {
        return;
    };
    let url = format!("{}/v1/completions", s.url);
    let body = json!({"prompt": "Hi", "max_tokens": 2});
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sekret"),
        Some("Basic sekret"),
    ] {
        let mut rq = client().post(&url).json(&body);
        if let Some(a) = auth {
            rq = rq.header("authorization", a);
        }
        let r = rq.send().await.unwrap();
        let st = r.status().as_u16();
        let b: serde_json::Value = r.json().await.unwrap();
        assert_error(st, &b, 401);
        assert_eq!(b["error"]["code"], "invalid_api_key");
    }
    let r = client()
        .post(&url)
        .bearer_auth("sekret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .get(format!("{}/v1/models", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for open in ["health", "metrics"] {
        let (st, _) = get(&format!("{}/{open}", s.url)).await;
        assert_eq!(st, 200, "/{open} needs no key");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let mut cfg = config("smol-queue");
    cfg.engine.max_num_seqs = 1;
    cfg.max_queue = Some(1);
    cfg.metrics_port = Some(0);
    cfg.keep_alive = Duration::from_millis(50);
    let Some(s) = TestServer::start(cfg) else {
        return;
    };
    let name = s.name.clone();
    let chat = format!("{}/v1/chat/completions", s.url);
    // One running (its first chunk arrived) ...
    let mut first = client()
        .post(&chat)
        .json(&long_chat(&name, true))
        .send()
        .await
        .unwrap();
    first.chunk().await.unwrap();
    wait_metrics(&s.url, 30, "one running", |m| running(m, &name) == 1.0).await;
    // ... one waiting: streaming, it gets its role chunk, then keep-alive
    // comments while it waits ...
    let waiting = tokio::spawn({
        let chat = chat.clone();
        let body = long_chat(&name, true);
        async move {
            let mut r = client().post(&chat).json(&body).send().await.unwrap();
            let mut seen = String::new();
            while !seen.contains("\n\n: keep-alive\n\n") {
                match r.chunk().await {
                    Ok(Some(c)) => seen.push_str(&String::from_utf8_lossy(&c)),
                    _ => break,
                }
            }
            (r, seen)
        }
    });
    wait_metrics(&s.url, 30, "one waiting", |m| {
        metric(m, "vllm:num_requests_waiting", &[("model_name", &name)]) == Some(1.0)
    })
    .await;
    // ... and the next is refused.
    let r = client()
        .post(&chat)
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let b: serde_json::Value = r.json().await.unwrap();
    assert_error(503, &b, 503);

    // --metrics-port serves the same metrics.
    let maddr = s.metrics_addr().expect("metrics listener");
    let (st, m) = get(&format!("http://{maddr}/metrics")).await;
    assert_eq!(st, 200);
    assert!(m.contains("vllm:num_requests_waiting"));

    let (second, seen) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("keep-alive comments while waiting")
        .unwrap();
    assert!(
        seen.starts_with("data: {"),
        "the role chunk first: {seen:?}"
    );
    assert!(seen.contains("\n\n: keep-alive\n\n"), "{seen:?}");
    drop(second);

    // Shutdown cancels the running request and ends its stream; it is quick.
    let reader = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(c)) = first.chunk().await {
            rest.extend_from_slice(&c);
        }
        String::from_utf8_lossy(&rest).into_owned()
    });
    let took = s.shutdown().await;
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let rest = reader.await.unwrap();
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "stream ends: {rest:?}"
    );
}

/// `/health` (and the API) answer 503 with Retry-After while the model
/// loads, 200 once it is loaded; a model that fails to load stays 503.
#[tokio::test]
async fn health_is_503_until_the_model_is_loaded() {
    let Some(path) = model_path() else { return };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let slow = loader(path);
    let load: mm_server::Loader = Box::new(move || {
        let _ = rx.recv_timeout(Duration::from_secs(60));
        slow()
    });
    let s = TestServer::start_with(config("smol-slow"), load, false);
    let (st, body) = get(&format!("{}/health", s.url)).await;
    assert_eq!(st, 503, "{body}");
    let (st, b) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_error(st, &b, 503);
    tx.send(()).unwrap();
    let t = std::time::Instant::now();
    while get(&format!("{}/health", s.url)).await.0 != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "never healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (st, _) = post(
        &format!("{}/v1/completions", s.url),
        &json!({"prompt": "Hi", "max_tokens": 2}),
    )
    .await;
    assert_eq!(st, 200);
    s.shutdown().await;

    // A load that fails, or panics: 503 from then on.
    let failing: Vec<mm_server::Loader> = vec![
        Box::new(|| anyhow::bail!("no such model file")),
        Box::new(|| panic!("a bug while loading")),
    ];
    for broken in failing {
        let s = TestServer::start_with(config("smol-broken"), broken, false);
        let t = std::time::Instant::now();
        loop {
            let (st, body) = get(&format!("{}/health", s.url)).await;
            assert_eq!(st, 503, "{body}");
            if body.contains("not available") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (st, b) = post(
            &format!("{}/v1/completions", s.url),
            &json!({"prompt": "Hi", "max_tokens": 2}),
        )
        .await;
        assert_error(st, &b, 503);
    }
}

#[tokio::test]
async fn raw_http_without_content_type_is_accepted() {
    let Some(s) = shared() else { return };
    let addr = s.url.trim_start_matches("http://").to_string();
    let body = json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}).to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        tcp,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"text_completion\""), "{out}");
}

/// Greedy requests sent all at once (continuous batching, chunked prefill,
/// and preemption by recompute under a deliberately tiny cache) each
/// answer what they answer alone.
#[tokio::test]
async fn concurrent_greedy_requests_equal_their_solo_runs() {
    let mut cfg = config("smol-tiny");
    cfg.engine.kv = mm_server::KvBudget::Blocks(16);
    cfg.engine.max_num_batched_tokens = Some(32);
    let Some(s) = TestServer::start(cfg) else {
        return;
    };
    let url = format!("{}/v1/completions", s.url);
    let prompts = [
        "The capital of France is",
        "Once upon a time, in a small village,",
        "The three primary colors are",
        "def fibonacci(n):",
        "Water boils at a temperature of",
        "The largest planet in the solar system is",
    ];
    let body =
        |p: &str| json!({"prompt": p, "max_tokens": 56, "temperature": 0, "ignore_eos": true});
    let mut solo = Vec::new();
    for p in prompts {
        let (st, r) = post(&url, &body(p)).await;
        assert_eq!(st, 200, "{r}");
        solo.push(r["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let all = prompts.iter().chain(prompts.iter()).map(|p| {
        let (url, b) = (url.clone(), body(p));
        tokio::spawn(async move { post(&url, &b).await })
    });
    let mut got = Vec::new();
    for t in all.collect::<Vec<_>>() {
        let (st, r) = t.await.unwrap();
        assert_eq!(st, 200, "{r}");
        got.push(r["choices"][0]["text"].as_str().unwrap().to_string());
    }
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g,
            &solo[i % prompts.len()],
            "request {i} differs from its solo run"
        );
    }
    // The model thread publishes its gauges after the step that sent the
    // last answers, so a scrape right after them may see that step's state.
    let m = wait_metrics(&s.url, 30, "every block freed", |m| {
        metric(m, "vllm:kv_cache_usage_perc", &[]) == Some(0.0)
    })
    .await;
    let pre = metric(&m, "vllm:num_preemptions_total", &[]).unwrap();
    assert!(
        pre > 0.0,
        "16 blocks of 16 for 12 sequences of ~64 tokens preempt:\n{m}"
    );
    s.shutdown().await;
}
