//! `metal-marlin chat` with a thinking model: the scripted model of
//! `tests/fixtures/think` (made by `scripts/make_reasoning_fixtures.py`;
//! greedy, it writes `<think>Let me think.</think>\n\nThe answer is 42!`
//! after its GLM-4.5-like template's generation prompt, and answers
//! directly when the template switches thinking off).
//!
//! stdout is a pipe here, so the reasoning is hidden unless
//! `--show-reasoning` asks for it (then between `<think>` lines);
//! `--no-think`/`--think` reach the template's `enable_thinking`;
//! `--reasoning-parser none` prints the model's text as it is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/think")
}

fn chat(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_metal-marlin"))
        .env("HF_HUB_OFFLINE", "1")
        .arg("chat")
        .arg("-m")
        .arg(model())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// stdout of a successful one-turn chat.
fn answer(args: &[&str]) -> String {
    let mut all = vec!["--prompt", "What is 6 x 7?"];
    all.extend_from_slice(args);
    let out = chat(&all, "");
    assert!(
        out.status.success(),
        "chat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const REASONING: &str = "<think>\nLet me think.\n</think>\n\n";
const ANSWER: &str = "The answer is 42!\n";

#[test]
fn reasoning_is_hidden_on_a_pipe_unless_asked() {
    assert_eq!(answer(&[]), ANSWER);
    assert_eq!(answer(&["--hide-reasoning"]), ANSWER);
    assert_eq!(
        answer(&["--show-reasoning"]),
        format!("{REASONING}{ANSWER}")
    );
}

#[test]
fn think_switches_reach_the_template() {
    assert_eq!(
        answer(&["--show-reasoning", "--think"]),
        format!("{REASONING}{ANSWER}")
    );
    // Thinking off: the template closes an empty block, the model answers.
    assert_eq!(answer(&["--show-reasoning", "--no-think"]), ANSWER);
}

#[test]
fn reasoning_parser_none_prints_the_text_as_it_is() {
    assert_eq!(
        answer(&["--reasoning-parser", "none"]),
        "<think>Let me think.</think>\n\nThe answer is 42!\n"
    );
}

#[test]
fn a_conversation_keeps_going_after_a_thinking_turn() {
    let out = chat(&["--show-reasoning"], "What is 6 x 7?\nAnd 7 x 8?\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("{REASONING}{ANSWER}").repeat(2));
}

#[test]
fn bad_reasoning_flags_are_refused() {
    for args in [
        &["--show-reasoning", "--hide-reasoning"][..],
        &["--think", "--no-think"][..],
        &["--reasoning-parser", "deepseek"][..],
    ] {
        let mut all = vec!["--prompt", "q"];
        all.extend_from_slice(args);
        let out = chat(&all, "");
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = if args[0] == "--reasoning-parser" {
            "deepseek_r1"
        } else {
            "cannot be used with"
        };
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
