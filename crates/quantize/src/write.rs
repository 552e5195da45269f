//! Steps 2 and 3 of [`crate::run`]: the output written into a temporary
//! sibling directory (side files, then tensors block by block), re-opened
//! as a model, and renamed into place only when complete.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use indicatif::ProgressBar;
use mm_core::{Error, Result, WeightData, WeightFormat};
use mm_formats::writer::Dtype;
use mm_formats::{open_source, WeightSource};
use mm_quant::mm::{mm_part_names, quantize_rtn_with, QuantizedTensor, ScaleSearch};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::plan::{Item, Out};
use crate::{json_err, numel, scale_search_for, Quantizer};

/// Elements per block of rows processed at once.
pub(crate) const BLOCK_ELEMS: usize = 1 << 23;

/// Tokenizer and generation files copied from an HF source.
pub(crate) const HF_SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// `OUT` must not exist (unless `force`), and must not be, or contain, the
/// source.
pub(crate) fn check_out(src: &Path, out: &Path, force: bool) -> Result<()> {
    if out.as_os_str().is_empty() {
        return Err(Error::Invalid("-o: the output path is empty".into()));
    }
    let exists = std::fs::symlink_metadata(out).is_ok();
    if exists && !force {
        return Err(Error::Invalid(format!(
            "output {} already exists; choose another -o, or pass --force to replace it (only once the new model is complete)",
            out.display()
        )));
    }
    let src_abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
    if exists {
        let out_abs = std::fs::canonicalize(out).map_err(|e| Error::io(out, e))?;
        if src_abs.starts_with(&out_abs) {
            return Err(Error::Invalid(format!(
                "output {} is (or contains) the source {}; --force would delete it",
                out.display(),
                src.display()
            )));
        }
    }
    Ok(())
}

/// Rows `r0..r1` of `w` as f32, dequantized in parallel.
pub(crate) fn rows_f32(w: &WeightData, r0: usize, r1: usize, cols: usize) -> Result<Vec<f32>> {
    const SUB: usize = 16;
    let mut out = vec![0f32; (r1 - r0) * cols];
    out.par_chunks_mut(SUB * cols.max(1))
        .enumerate()
        .try_for_each(|(i, chunk)| {
            let a = r0 + i * SUB;
            let b = a + chunk.len() / cols.max(1);
            chunk.copy_from_slice(&mm_quant::dequantize_rows_ref(w, a..b)?);
            Ok::<_, Error>(())
        })?;
    Ok(out)
}

/// f32 values as little-endian `dtype` bytes; F16 overflow is an error.
pub(crate) fn encode_dense(name: &str, v: &[f32], dtype: Dtype) -> Result<Vec<u8>> {
    match dtype {
        Dtype::F32 => Ok(bytemuck::cast_slice(v).to_vec()),
        Dtype::BF16 => Ok(v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect()),
        Dtype::F16 => {
            let mut out = Vec::with_capacity(v.len() * 2);
            for x in v {
                let h = f16::from_f32(*x);
                if h.is_infinite() && x.is_finite() {
                    return Err(Error::Invalid(format!(
                        "tensor '{name}': the value {x} is beyond the F16 range; keep it as bf16 or f32 (--keep '{name}'=bf16)"
                    )));
                }
                out.extend_from_slice(&h.to_le_bytes());
            }
            Ok(out)
        }
        d => Err(Error::Other(format!(
            "internal: {d} is not a dense output dtype"
        ))),
    }
}

pub(crate) fn same_dtype(src: WeightFormat, d: Dtype) -> bool {
    matches!(
        (src, d),
        (WeightFormat::F32, Dtype::F32)
            | (WeightFormat::F16, Dtype::F16)
            | (WeightFormat::BF16, Dtype::BF16)
    )
}

/// Streams one tensor into the writer, a block of rows at a time.
pub(crate) fn write_item(
    src: &dyn WeightSource,
    it: &Item,
    q: &Quantizer,
    scale_search: Option<ScaleSearch>,
    out: &mut mm_formats::SafetensorsWriter,
    bar: &ProgressBar,
) -> Result<()> {
    let cols = (*it.shape.last().unwrap_or(&1)).max(1);
    let rows = numel(&it.shape) / cols;
    let in_tensor = |e: Error| match e {
        Error::Invalid(m) | Error::Other(m) if !m.contains(&it.name) => {
            Error::Invalid(format!("tensor '{}': {m}", it.name))
        }
        e => e,
    };
    let put = |out: &mut mm_formats::SafetensorsWriter, t: &QuantizedTensor| -> Result<()> {
        let [qw, sc, ze] = mm_part_names(&it.name);
        out.write(&qw, &t.qweight)?;
        out.write(&sc, &t.scales)?;
        if let Some(z) = &t.zeros {
            out.write(&ze, z)?;
        }
        Ok(())
    };
    if let Out::Quant(f) = it.out {
        if let Some(t) = q.take(&it.name, rows, cols, f).map_err(in_tensor)? {
            put(out, &t)?;
            bar.inc(numel(&it.shape) as u64);
            return Ok(());
        }
    }
    let w = src.tensor(&it.name)?;
    if w.shape != it.shape || w.format != it.src_format {
        return Err(Error::Other(format!(
            "tensor '{}' changed while being quantized",
            it.name
        )));
    }
    // Trellis weights are quantized whole (their transforms mix rows).
    let block = match it.out {
        Out::Quant(f) if f.kind.is_trellis() => rows,
        _ => (BLOCK_ELEMS / cols).max(1),
    };
    match it.out {
        Out::Dense(d) if same_dtype(w.format, d) => {
            let bytes: &[u8] = &w.bytes;
            for chunk in bytes.chunks(BLOCK_ELEMS * 2) {
                out.write(&it.name, chunk)?;
            }
            bar.inc(numel(&it.shape) as u64);
        }
        Out::Dense(d) => {
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + block).min(rows);
                let v = rows_f32(&w, r0, r1, cols).map_err(in_tensor)?;
                out.write(&it.name, &encode_dense(&it.name, &v, d)?)?;
                bar.inc(((r1 - r0) * cols) as u64);
                r0 = r1;
            }
        }
        Out::Quant(f) => {
            let mut r0 = 0;
            while r0 < rows {
                let r1 = (r0 + block).min(rows);
                let v = rows_f32(&w, r0, r1, cols).map_err(in_tensor)?;
                let search = scale_search_for(scale_search, f, false);
                let t = quantize_rtn_with(&v, r1 - r0, cols, f, search).map_err(in_tensor)?;
                put(out, &t)?;
                bar.inc(((r1 - r0) * cols) as u64);
                r0 = r1;
            }
        }
    }
    Ok(())
}

/// config.json and the tokenizer/generation files.
pub(crate) fn write_side_files(src_path: &Path, src: &dyn WeightSource, dir: &Path) -> Result<()> {
    let write = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(v).map_err(json_err)?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    };
    if src.gguf().is_some() {
        write("config.json", &src.config().to_hf_json())?;
        let tok = mm_engine::tokenizer::load_for(src_path, src)
            .map_err(|e| Error::Other(format!("exporting the GGUF tokenizer: {e}")))?;
        let p = dir.join("tokenizer.json");
        tok.inner()
            .save(&p, false)
            .map_err(|e| Error::Other(format!("{}: writing the tokenizer: {e}", p.display())))?;
        let mut tc = serde_json::Map::new();
        tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        tc.insert(
            "model_max_length".into(),
            json!(src.config().max_position_embeddings),
        );
        if let Some(b) = tok.bos_token() {
            tc.insert("bos_token".into(), json!(b));
        }
        if let Some(e) = tok.eos_token() {
            tc.insert("eos_token".into(), json!(e));
        }
        tc.insert("add_bos_token".into(), json!(tok.add_bos()));
        if let Some(t) = tok.chat_template() {
            tc.insert("chat_template".into(), json!(t));
        }
        write("tokenizer_config.json", &Value::Object(tc))?;
        let mut gc = serde_json::Map::new();
        if let Some(b) = tok.bos_id() {
            gc.insert("bos_token_id".into(), json!(b));
        }
        match tok.eos_ids() {
            [] => {}
            [one] => {
                gc.insert("eos_token_id".into(), json!(one));
            }
            many => {
                gc.insert("eos_token_id".into(), json!(many));
            }
        }
        write("generation_config.json", &Value::Object(gc))?;
    } else {
        let copy = |name: &str| -> Result<bool> {
            let from = src_path.join(name);
            if !from.is_file() {
                return Ok(false);
            }
            let to = dir.join(name);
            std::fs::copy(&from, &to).map_err(|e| Error::io(&from, e))?;
            Ok(true)
        };
        if !copy("config.json")? {
            return Err(Error::io(
                src_path.join("config.json"),
                std::io::Error::new(std::io::ErrorKind::NotFound, "missing"),
            ));
        }
        if !src.config().tie_word_embeddings {
            untie_config(&dir.join("config.json"))?;
        }
        let mut has_tok = false;
        for f in HF_SIDE_FILES {
            has_tok |= copy(f)? && *f == "tokenizer.json";
        }
        if !has_tok {
            tracing::warn!(
                "{} has no tokenizer.json: the quantized model will have none either",
                src_path.display()
            );
        }
    }
    Ok(())
}

/// Sets `tie_word_embeddings` to false in a copied config.json where it is
/// true (a rotated model has its own LM head).
pub(crate) fn untie_config(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let tied = v.get("tie_word_embeddings").and_then(Value::as_bool);
    if let (Some(true), Some(m)) = (tied, v.as_object_mut()) {
        m.insert("tie_word_embeddings".into(), json!(false));
        let text = serde_json::to_string_pretty(&v).map_err(json_err)?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Re-opens the written directory as a model and checks every planned
/// tensor reads back with its planned format and shape.
pub(crate) fn verify(dir: &Path, items: &[Item]) -> Result<()> {
    let fail = |m: String| Error::Other(format!("the written model does not read back: {m}"));
    let src = open_source(dir).map_err(|e| fail(e.to_string()))?;
    for it in items {
        let w = src.tensor(&it.name).map_err(|e| fail(e.to_string()))?;
        let ok = match it.out {
            Out::Quant(f) => w.format == WeightFormat::Mm(f),
            Out::Dense(d) => same_dtype(w.format, d),
        };
        if !ok || w.shape != it.shape {
            return Err(fail(format!(
                "'{}' reads back as {} {:?}",
                it.name,
                w.format.name(),
                w.shape
            )));
        }
    }
    Ok(())
}

pub(crate) fn dir_size(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        n += e.metadata().map_err(|x| Error::io(e.path(), x))?.len();
    }
    Ok(n)
}

/// The output being written, `OUT.tmp-<pid>`; removed on drop unless
/// committed.
pub(crate) struct TempOut {
    pub(crate) path: PathBuf,
    pub(crate) committed: bool,
}

pub(crate) fn sibling(out: &Path, tag: &str) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{tag}-{}", std::process::id()));
    out.with_file_name(name)
}

impl TempOut {
    pub(crate) fn create(out: &Path) -> Result<Self> {
        if out.file_name().is_none() {
            return Err(Error::Invalid(format!(
                "-o {}: the output must name a directory to create",
                out.display()
            )));
        }
        let path = sibling(out, "tmp");
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            committed: false,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the finished directory to `out`, replacing an existing `out`
    /// when `force` (moved aside first, removed after).
    pub(crate) fn commit(mut self, out: &Path, force: bool) -> Result<()> {
        let exists = std::fs::symlink_metadata(out).is_ok();
        if exists && !force {
            return Err(Error::Invalid(format!(
                "output {} appeared while quantizing; not replacing it (pass --force to)",
                out.display()
            )));
        }
        let old = sibling(out, "old");
        if exists {
            std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        }
        if let Err(e) = std::fs::rename(&self.path, out) {
            if exists {
                let _ = std::fs::rename(&old, out);
            }
            return Err(Error::io(out, e));
        }
        self.committed = true;
        if exists {
            let r = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
            if let Err(e) = r {
                tracing::warn!("could not remove the replaced {}: {e}", old.display());
            }
        }
        Ok(())
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
