//! Token sampling on the GPU (`kernels/sample.cu`): penalties, bias,
//! greedy or a draw at each row's host-drawn `r`, without sorting the
//! vocabulary; only the ids come back (one copy, the step's one
//! synchronization).
//!
//! Inputs cross the bus once per call as one u32 array (the kernel file's
//! header gives its layout): per entry its parameters, per distinct token
//! of its bias list, repetition window and produced tokens one edit, then
//! the bias values.

use std::collections::BTreeMap;

use cudarc::driver::PushKernelArg;
use mm_core::sample::check_rows;
use mm_core::{Error, Result, SampleRow, Tensor};

use crate::buffer::{alloc, alloc_of, on_device, upload};
use crate::compile::SAMPLE;
use crate::runtime::{driver_err, Runtime};

/// Words per entry and per edit (`ENTRY_WORDS`, `EDIT_WORDS` in the kernel).
const ENTRY_WORDS: usize = 10;
const EDIT_WORDS: usize = 5;
/// The kernel's id for a row with nothing to draw from.
const NO_TOKEN: u32 = u32::MAX;
/// Threads per block (`SAMPLE_THREADS`).
const THREADS: u32 = 1024;

/// What one token of a row gets, in the host's order.
#[derive(Default)]
struct Edit {
    biases: Vec<f32>,
    repeat: bool,
    subtract: Option<f32>,
}

/// The kernel's input array for `rows` over a vocabulary of `vocab`, and
/// whether any row needs a scratch row (a draw, or a token to edit).
fn pack(rows: &[SampleRow], vocab: usize) -> Result<(Vec<u32>, bool)> {
    let mut edits_of = Vec::with_capacity(rows.len());
    for r in rows {
        let mut e: BTreeMap<u32, Edit> = BTreeMap::new();
        let inside = |t: &u32| (*t as usize) < vocab;
        for &(t, b) in r.logit_bias.iter().filter(|(t, _)| inside(t)) {
            e.entry(t).or_default().biases.push(b);
        }
        if r.repeat_penalty != 1.0 {
            for &t in r.repeat_tokens.iter().filter(|t| inside(t)) {
                e.entry(t).or_default().repeat = true;
            }
        }
        if r.penalizes_produced() {
            for &(t, n) in r.produced.iter().filter(|(t, _)| inside(t)) {
                e.entry(t).or_default().subtract = Some(r.produced_penalty(n));
            }
        }
        edits_of.push(e);
    }
    let n_edits: usize = edits_of.iter().map(|e| e.len()).sum();
    let n_bias: usize = rows.iter().map(|r| r.logit_bias.len()).sum();
    let words = rows.len() * ENTRY_WORDS + n_edits * EDIT_WORDS + n_bias;
    if words > u32::MAX as usize {
        return Err(Error::Invalid(format!(
            "sample: {n_edits} penalized tokens and {n_bias} biases overflow the kernel's index"
        )));
    }
    let mut meta = vec![0u32; rows.len() * ENTRY_WORDS];
    let mut edits = Vec::with_capacity(n_edits * EDIT_WORDS);
    let mut biases = Vec::with_capacity(n_bias);
    let edit_base = meta.len();
    let bias_base = edit_base + n_edits * EDIT_WORDS;
    for (i, (r, e)) in rows.iter().zip(&edits_of).enumerate() {
        let top_k = match r.top_k {
            0 => 0,
            k => k.min(vocab) as u32,
        };
        meta[i * ENTRY_WORDS..(i + 1) * ENTRY_WORDS].copy_from_slice(&[
            r.row as u32,
            r.draws() as u32,
            r.temperature.to_bits(),
            top_k,
            r.top_p.to_bits(),
            r.min_p.to_bits(),
            r.r.to_bits(),
            (edit_base + edits.len()) as u32,
            e.len() as u32,
            r.repeat_penalty.to_bits(),
        ]);
        for (&t, ed) in e {
            let flags = ed.repeat as u32 | (ed.subtract.is_some() as u32) << 1;
            edits.extend_from_slice(&[
                t,
                (bias_base + biases.len()) as u32,
                ed.biases.len() as u32,
                flags,
                ed.subtract.unwrap_or(0.0).to_bits(),
            ]);
            biases.extend(ed.biases.iter().map(|b| b.to_bits()));
        }
    }
    let scratch = n_edits > 0 || rows.iter().any(|r| r.draws());
    meta.extend_from_slice(&edits);
    meta.extend_from_slice(&biases);
    Ok((meta, scratch))
}

/// [`mm_core::Backend::sample`] on the GPU: one block per row of `rows`.
pub fn sample(rt: &Runtime, logits: &Tensor, rows: &[SampleRow]) -> Result<Vec<u32>> {
    let (_, vocab) = logits.dims2()?;
    check_rows(logits.numel(), vocab, rows)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let v = super::dim(vocab, "sample vocabulary")?;
    super::dim(rows.len(), "sampled rows")?;
    let (meta, scratch) = pack(rows, vocab)?;
    let meta = upload(rt, &meta, "sampling parameters")?;
    let ld = on_device(rt, logits)?;
    // Plain greedy rows read the logits as they are: no scratch.
    let work_len = if scratch { rows.len() * vocab } else { 1 };
    let mut work = alloc(rt, work_len, "sampling scratch rows")?;
    let mut ids = alloc_of::<u32>(rt, rows.len(), "sampled ids")?;
    let f = rt.function(&SAMPLE, "sample_rows")?;
    let mut l = rt.stream.launch_builder(&f);
    l.arg(ld.slice())
        .arg(&mut work)
        .arg(&meta)
        .arg(&mut ids)
        .arg(&v);
    // SAFETY: logits hold rows·vocab values (check_rows) and every entry's
    // row is below rows; work holds one row per entry that draws or edits
    // (the kernel touches no other); meta is the layout
    // `pack` wrote, every edit's token below vocab and its biases inside.
    unsafe { l.launch(super::grid(rows.len(), THREADS)) }.map_err(|e| driver_err("sample", e))?;
    let got = rt
        .stream
        .clone_dtoh(&ids)
        .map_err(|e| driver_err("reading the sampled ids back", e))?;
    for (r, &id) in rows.iter().zip(&got) {
        if id == NO_TOKEN {
            return Err(Error::Invalid(format!(
                "sample: logits row {} has no finite value to draw from (all NaN or -inf)",
                r.row
            )));
        }
        if id as usize >= vocab {
            return Err(Error::Other(format!(
                "sample: the kernel returned id {id} for row {} of a vocabulary of {vocab}",
                r.row
            )));
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_merges_each_tokens_edits_in_order() {
        let r = SampleRow {
            temperature: 0.5,
            top_k: 1 << 40,
            logit_bias: vec![(3, 1.0), (9, 2.0), (3, -0.5), (1, 4.0)],
            repeat_penalty: 1.5,
            repeat_tokens: vec![1, 2, 99],
            presence_penalty: 0.5,
            produced: vec![(2, 3), (100, 1)],
            r: 0.25,
            ..Default::default()
        };
        let (m, scratch) = pack(&[r], 10).unwrap();
        assert!(scratch);
        assert!(!pack(&[SampleRow::default()], 10).unwrap().1);
        let f = f32::to_bits;
        assert_eq!(&m[..3], &[0, 1, f(0.5)]);
        assert_eq!(m[3], 10, "top_k clamped to the vocabulary");
        assert_eq!(&m[6..10], &[f(0.25), 10, 4, f(1.5)]);
        // Tokens 1, 2, 3, 9 (ids past the vocabulary dropped).
        let e = &m[10..30];
        let bias = 30;
        assert_eq!(&e[..5], &[1, bias, 1, 1, 0]);
        assert_eq!(&e[5..10], &[2, bias + 1, 0, 3, f(0.5)]);
        assert_eq!(&e[10..15], &[3, bias + 1, 2, 0, 0]);
        assert_eq!(&e[15..20], &[9, bias + 3, 1, 0, 0]);
        assert_eq!(&m[30..], &[f(4.0), f(1.0), f(-0.5), f(2.0)]);
    }
}
