//! Helpers shared by the model tests: CPU devices, reference ids, the
//! logits error measure, greedy decoding.
#![allow(dead_code)]

use std::sync::Arc;

use mm_backend_cpu::CpuBackend;
use mm_core::Device;
use mm_models::DecoderModel;

/// The CPU backend, exact (`--exact`, f32 KV) or default.
pub fn device(exact: bool) -> Device {
    let b: Arc<dyn mm_core::Backend> = Arc::new(if exact {
        CpuBackend::exact()
    } else {
        CpuBackend::new()
    });
    Device::new(b.clone(), b)
}

/// The token ids under `key` of a reference.json.
pub fn ids(v: &serde_json::Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("reference has no {key}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// max |Δ| / max |want|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    err / max_ref
}

/// The first index of the largest value.
pub fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

/// `n` greedy tokens after `prompt`, one decode step at a time.
pub fn greedy(model: &DecoderModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache(256).unwrap();
    let mut logits = model.forward(prompt, &mut cache, false).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits.to_vec().unwrap());
        out.push(next);
        logits = model.forward(&[next], &mut cache, false).unwrap();
    }
    out
}
