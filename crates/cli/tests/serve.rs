//! `metal-marlin serve` as the seed documents invoke it: the model
//! positional, `--enable-batching`, `--num-kv-blocks 1024 --block-size 32`,
//! `--metrics-port`; it answers a chat completion, serves `/metrics` on
//! both ports, and exits 0 on SIGTERM (needs SmolLM2: skipped without it
//! unless `MM_REQUIRE_SMOLLM2` is set). `--reasoning-parser` reaches the
//! server (the scripted thinking model of `tests/fixtures/think`). Bad flags
//! fail with a message.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.1 exchange; (status, body), or None if nobody answers.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1.to_string())?;
    Some((status, body))
}

/// Starts `metal-marlin serve MODEL --port PORT ARGS...` and waits until
/// `/health` answers 200.
fn serve(model: &Path, port: u16, args: &[String]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metal-marlin"))
        .env("HF_HUB_OFFLINE", "1")
        .arg("serve")
        .arg(model)
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("metal-marlin serve starts");
    let t = Instant::now();
    loop {
        if let Some((200, _)) = http(port, "GET", "/health", "") {
            return child;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("serve exited early ({st}): {err}");
        }
        assert!(t.elapsed() < Duration::from_secs(180), "no /health 200");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_as_the_seed_documents_invoke_it() {
    let Some(model) = mm_engine::resolve::smollm2_for_tests() else {
        return;
    };
    let (port, mport) = (free_port(), free_port());
    let args = [
        "--enable-batching",
        "--num-kv-blocks",
        "1024",
        "--block-size",
        "32",
        "--metrics-port",
        &mport.to_string(),
    ]
    .map(String::from);
    let mut child = serve(&model, port, &args);
    let body = r#"{"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 20}"#;
    let (st, out) = http(port, "POST", "/v1/chat/completions", body).expect("answer");
    assert_eq!(st, 200, "{out}");
    assert!(out.contains("Paris"), "{out}");
    for p in [port, mport] {
        let (st, m) = http(p, "GET", "/metrics", "").expect("metrics");
        assert_eq!(st, 200);
        assert!(m.contains("vllm:generation_tokens_total"), "{m}");
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "serve ignores SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).ok();
    assert!(status.success(), "exit {status}: {err}");
    assert!(err.contains("listening on"), "{err}");
}

/// `--reasoning-parser` reaches the server: the scripted thinking model of
/// `tests/fixtures/think` answers with its reasoning split off by default
/// and left in the content with `none`.
#[test]
fn serve_reasoning_parser_flag() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/think");
    let body = r#"{"messages": [{"role": "user", "content": "q"}], "temperature": 0}"#;
    for (args, split) in [(vec![], true), (vec!["--reasoning-parser", "none"], false)] {
        let port = free_port();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let mut child = serve(&model, port, &args);
        let (st, out) = http(port, "POST", "/v1/chat/completions", body).expect("answer");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(st, 200, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let m = &v["choices"][0]["message"];
        if split {
            assert_eq!(m["reasoning_content"], "Let me think.", "{out}");
            assert_eq!(m["content"], "The answer is 42!", "{out}");
        } else {
            assert!(m.get("reasoning_content").is_none(), "{out}");
            assert_eq!(
                m["content"], "<think>Let me think.</think>\n\nThe answer is 42!",
                "{out}"
            );
        }
    }
}

#[test]
fn serve_rejects_bad_flags() {
    for args in [
        vec!["serve", "--num-kv-blocks", "0"],
        vec!["serve", "--kv-memory", "-1"],
        vec!["serve", "--max-queue", "0"],
        vec!["serve", "--num-kv-blocks", "4", "--kv-memory", "1"],
        vec!["serve", "--reasoning-parser", "think"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_metal-marlin"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?}: no message");
    }
}
