//! Structured output on the real SmolLM2-135M-Instruct: JSON schema, any
//! JSON object, enum and regular-expression constraints, in one batch with
//! an unconstrained request, through the batch engine and through the
//! single-sequence `generate` loop.
//!
//! The model file comes from `$MM_SMOLLM2_GGUF` or the default-model cache;
//! without it the tests fail when `MM_REQUIRE_SMOLLM2` is set (as in CI)
//! and are skipped otherwise.

use std::collections::HashMap;
use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, KvDType};
use mm_engine::batch::{BatchEngine, BatchRequest};
use mm_engine::constrain::{Constraint, GrammarCompiler};
use mm_engine::sched::{FinishReason, SchedulerConfig};
use mm_engine::tokenizer::{load_for, ChatMessage, Tokenizer};
use mm_engine::{generate, GenerateRequest, SamplingParams, StopReason};
use mm_formats::open_source;
use mm_models::{load_model, DecoderModel};
use serde_json::{json, Value};

fn load() -> Option<(DecoderModel, Tokenizer)> {
    let path = mm_engine::resolve::smollm2_for_tests()?;
    let src = open_source(&path).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let model = load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap();
    let tok = load_for(&path, src.as_ref()).unwrap();
    Some((model, tok))
}

fn chat(tok: &Tokenizer, user: &str) -> Vec<u32> {
    tok.encode_chat(&[ChatMessage::user(user)], true).unwrap()
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "city": {"type": "string"}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

/// The person object: exactly the three keys with their types.
fn check_person(text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "city", "name"], "{text}");
    assert!(o["name"].is_string() && o["city"].is_string(), "{text}");
    assert!(
        o["age"].is_i64() || o["age"].is_u64(),
        "age not an integer: {text}"
    );
}

#[test]
fn constrained_and_free_requests_share_a_batch() {
    let Some((model, tok)) = load() else {
        eprintln!("skipped: SmolLM2 not available");
        return;
    };
    let compiler = GrammarCompiler::new(&tok).unwrap();
    let eos = tok.eos_ids().to_vec();
    let person = chat(
        &tok,
        "Describe a fictional person as JSON with name, age and city.",
    );
    let paris = chat(&tok, "Give me a JSON object describing Paris.");
    let year = chat(&tok, "In which year did the French Revolution start?");
    let free = chat(&tok, "What is the capital of France?");
    let cases: Vec<(&str, Vec<u32>, Option<Constraint>, SamplingParams)> = vec![
        (
            "schema",
            person.clone(),
            Some(Constraint::JsonSchema(person_schema())),
            SamplingParams::default(),
        ),
        (
            "schema, sampled",
            person.clone(),
            Some(Constraint::JsonSchema(person_schema())),
            SamplingParams {
                temperature: 0.8,
                seed: 7,
                ..Default::default()
            },
        ),
        (
            "object",
            paris,
            Some(Constraint::JsonObject),
            SamplingParams::default(),
        ),
        (
            "enum",
            chat(&tok, "Is Paris in France? Answer yes or no."),
            Some(Constraint::JsonSchema(json!({"enum": ["yes", "no"]}))),
            SamplingParams::default(),
        ),
        (
            "regex",
            year,
            Some(Constraint::Regex("1[0-9]{3}".into())),
            SamplingParams::default(),
        ),
        ("free", free.clone(), None, SamplingParams::default()),
    ];
    let cfg = SchedulerConfig {
        max_num_seqs: 8,
        num_blocks: 256,
        ..Default::default()
    };
    let run = |cases: &[(&str, Vec<u32>, Option<Constraint>, SamplingParams)]| {
        let mut eng = BatchEngine::new(&model, cfg.clone(), KvDType::F16).unwrap();
        let mut names = HashMap::new();
        for (name, prompt, c, sampling) in cases {
            let id = eng
                .add(BatchRequest {
                    prompt: prompt.clone(),
                    max_new_tokens: 120,
                    sampling: sampling.clone(),
                    eos: eos.clone(),
                    guide: c.as_ref().map(|c| compiler.compile(c).unwrap()),
                    ..Default::default()
                })
                .unwrap();
            names.insert(id, name.to_string());
        }
        let mut out: HashMap<String, (Vec<u32>, Option<FinishReason>)> = HashMap::new();
        while eng.has_unfinished() {
            for ev in eng.step().unwrap() {
                let e = out.entry(names[&ev.id].clone()).or_default();
                e.0.push(ev.token);
                e.1 = ev.finished;
            }
        }
        out
    };
    let out = run(&cases);
    let text = |name: &str| {
        let ids: Vec<u32> = out[name]
            .0
            .iter()
            .copied()
            .filter(|t| !eos.contains(t))
            .collect();
        tok.decode(&ids, true).unwrap()
    };
    for (name, (_, fin)) in &out {
        assert_eq!(
            *fin,
            Some(FinishReason::Stop),
            "{name} ran out of tokens: {}",
            text(name)
        );
    }
    check_person(&text("schema"));
    check_person(&text("schema, sampled"));
    let obj: Value = serde_json::from_str(&text("object"))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", text("object")));
    assert!(obj.is_object());
    assert!(
        ["\"yes\"", "\"no\""].contains(&text("enum").as_str()),
        "{}",
        text("enum")
    );
    let y = text("regex");
    assert!(
        y.len() == 4 && y.starts_with('1') && y.bytes().all(|b| b.is_ascii_digit()),
        "{y:?}"
    );
    for name in ["schema", "schema, sampled", "object", "enum", "regex"] {
        eprintln!("{name}: {}", text(name));
    }

    // The unconstrained request is the same as alone (batch invariance
    // holds with guided neighbours).
    let solo = run(&cases[5..]);
    assert_eq!(solo["free"].0, out["free"].0);

    // The single-sequence loop gives the same constrained answer.
    let mut engine = mm_engine::engine_for(&model, 512).unwrap();
    let res = generate(
        &mut engine,
        &tok,
        &GenerateRequest {
            prompt_ids: person,
            max_new_tokens: 120,
            sampling: SamplingParams::default(),
            stop_strings: vec![],
            stop_on_eos: true,
            guide: Some(
                compiler
                    .compile(&Constraint::JsonSchema(person_schema()))
                    .unwrap(),
            ),
        },
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(
        matches!(res.stop, StopReason::Eos | StopReason::Grammar),
        "{:?}",
        res.stop
    );
    assert_eq!(res.text, text("schema"));
}

#[test]
fn invalid_constraints_are_refused_with_the_reason() {
    let Some((_, tok)) = load() else {
        eprintln!("skipped: SmolLM2 not available");
        return;
    };
    let c = GrammarCompiler::new(&tok).unwrap();
    for (bad, says) in [
        (
            Constraint::JsonSchema(json!({"type": "foo"})),
            "JSON schema",
        ),
        (Constraint::JsonSchema(json!(3)), "JSON schema"),
        (Constraint::Regex("(".into()), "regular expression"),
        (Constraint::Lark("start: undefined_rule".into()), "grammar"),
    ] {
        let e = c.compile(&bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad:?}: {e}");
    }
}
