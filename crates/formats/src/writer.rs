//! Writing sharded safetensors checkpoints with bounded memory.
//!
//! The whole layout is planned before any byte is written: every tensor's
//! name, dtype and shape is known up front (a quantized weight's part sizes
//! follow from its format and shape), so each shard's header is final when
//! the file is created and tensor data is then streamed in, piece by piece,
//! at its planned offset. Nothing is held in memory beyond the piece being
//! written.
//!
//! Layout: shards `model-0000i-of-0000n.safetensors` (1-based, five digits,
//! as Hugging Face names them) and `model.safetensors.index.json` with
//! `metadata.total_size` and `weight_map`. A group of tensors (the parts of
//! one quantized weight) always lands in one shard; a new shard starts when
//! the next group would push the current one past the size limit. Inside a
//! shard, tensors are ordered by element alignment (4-byte dtypes, then
//! 2-byte, then bytes), as the `safetensors` library orders them, so every
//! tensor's data is aligned to its element size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use ::safetensors::Dtype;
use mm_core::{Error, Result};
use serde_json::{json, Map, Value};

use crate::safetensors::INDEX_FILE;

/// One tensor to write: its name, dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape,
        }
    }

    /// Bytes of the tensor's data.
    pub fn byte_len(&self) -> Result<u64> {
        let bits = self
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(self.dtype.bitsize() as u64))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "tensor '{}': shape {:?} of {} overflows",
                    self.name, self.shape, self.dtype
                ))
            })?;
        if bits % 8 != 0 {
            return Err(Error::Invalid(format!(
                "tensor '{}': {bits} bits of {} is not a whole number of bytes",
                self.name, self.dtype
            )));
        }
        Ok(bits / 8)
    }
}

/// One planned shard: file name, tensors with their data offsets, header.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    pub file_name: String,
    /// (tensor, offset of its data from the start of the data section).
    pub tensors: Vec<(TensorSpec, u64)>,
    /// The complete header: 8-byte little-endian length, then the JSON,
    /// padded with spaces to a multiple of 8 bytes.
    header: Vec<u8>,
    /// Bytes of the data section.
    pub data_len: u64,
}

impl ShardPlan {
    /// Size of the shard file.
    pub fn file_len(&self) -> u64 {
        self.header.len() as u64 + self.data_len
    }
}

/// Where a tensor goes: shard index, absolute file offset, byte length.
#[derive(Clone, Copy, Debug)]
struct Slot {
    shard: usize,
    offset: u64,
    len: u64,
    /// Index in `written`.
    id: usize,
}

/// The full layout of a sharded checkpoint.
#[derive(Clone, Debug)]
pub struct SafetensorsPlan {
    shards: Vec<ShardPlan>,
    slots: HashMap<String, Slot>,
    total_size: u64,
}

fn dtype_align(d: Dtype) -> usize {
    d.bitsize().div_ceil(8).clamp(1, 8)
}

/// File name of shard `i` (0-based) of `n`.
pub fn shard_file_name(i: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
}

impl SafetensorsPlan {
    /// Plans shards for `groups` of tensors, in order; the tensors of a group
    /// share a shard. A shard is closed when the next group would take it
    /// past `max_shard_bytes` of data (a single larger group gets a shard of
    /// its own). `metadata` becomes each header's `__metadata__`.
    pub fn new(
        groups: Vec<Vec<TensorSpec>>,
        max_shard_bytes: u64,
        metadata: &[(&str, &str)],
    ) -> Result<Self> {
        if max_shard_bytes == 0 {
            return Err(Error::Invalid("the shard size must be positive".into()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut bins: Vec<(Vec<TensorSpec>, u64)> = Vec::new();
        for g in groups {
            let mut size = 0u64;
            for t in &g {
                if t.name.is_empty() || t.name == "__metadata__" {
                    return Err(Error::Invalid(format!(
                        "'{}' cannot be a tensor name",
                        t.name
                    )));
                }
                if !seen.insert(t.name.clone()) {
                    return Err(Error::Invalid(format!(
                        "tensor '{}' is planned twice",
                        t.name
                    )));
                }
                size = size
                    .checked_add(t.byte_len()?)
                    .ok_or_else(|| Error::Invalid("checkpoint size overflows".into()))?;
            }
            match bins.last_mut() {
                Some((b, used)) if !b.is_empty() && *used + size <= max_shard_bytes => {
                    b.extend(g);
                    *used += size;
                }
                _ => bins.push((g, size)),
            }
        }
        if bins.is_empty() {
            return Err(Error::Invalid(
                "a checkpoint needs at least one tensor".into(),
            ));
        }
        let n = bins.len();
        let meta: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let mut shards = Vec::with_capacity(n);
        let mut slots = HashMap::new();
        let mut total_size = 0u64;
        for (i, (mut tensors, _)) in bins.into_iter().enumerate() {
            // Stable: larger element alignment first.
            tensors.sort_by_key(|t| std::cmp::Reverse(dtype_align(t.dtype)));
            let mut header = Map::new();
            if !meta.is_empty() {
                header.insert("__metadata__".into(), Value::Object(meta.clone()));
            }
            let mut placed = Vec::with_capacity(tensors.len());
            let mut off = 0u64;
            for t in tensors {
                let len = t.byte_len()?;
                header.insert(
                    t.name.clone(),
                    json!({
                        "dtype": t.dtype.to_string(),
                        "shape": t.shape,
                        "data_offsets": [off, off + len],
                    }),
                );
                placed.push((t, off));
                off += len;
            }
            let mut js = serde_json::to_vec(&Value::Object(header))
                .map_err(|e| Error::Other(format!("safetensors header: {e}")))?;
            while js.len() % 8 != 0 {
                js.push(b' ');
            }
            let mut bytes = (js.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&js);
            let hlen = bytes.len() as u64;
            for (t, o) in &placed {
                let id = slots.len();
                slots.insert(
                    t.name.clone(),
                    Slot {
                        shard: i,
                        offset: hlen + o,
                        len: t.byte_len()?,
                        id,
                    },
                );
            }
            total_size += off;
            shards.push(ShardPlan {
                file_name: shard_file_name(i, n),
                tensors: placed,
                header: bytes,
                data_len: off,
            });
        }
        Ok(Self {
            shards,
            slots,
            total_size,
        })
    }

    pub fn shards(&self) -> &[ShardPlan] {
        &self.shards
    }

    /// Sum of every tensor's byte length (the index's `total_size`).
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Tensor name → shard file name.
    pub fn weight_map(&self) -> BTreeMap<String, String> {
        self.slots
            .iter()
            .map(|(n, s)| (n.clone(), self.shards[s.shard].file_name.clone()))
            .collect()
    }

    /// The `model.safetensors.index.json` document.
    pub fn index_json(&self) -> Value {
        json!({
            "metadata": {"total_size": self.total_size},
            "weight_map": self.weight_map(),
        })
    }

    /// Creates the shard files in `dir` with their headers written; the
    /// data is then filled in with [`SafetensorsWriter::write`].
    pub fn create(self, dir: &Path) -> Result<SafetensorsWriter> {
        let mut files = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let path = dir.join(&s.file_name);
            let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            f.write_all(&s.header).map_err(|e| Error::io(&path, e))?;
            f.set_len(s.file_len()).map_err(|e| Error::io(&path, e))?;
            files.push((f, path));
        }
        let written = vec![0; self.slots.len()];
        Ok(SafetensorsWriter {
            dir: dir.to_path_buf(),
            files,
            plan: self,
            written,
        })
    }
}

/// Fills the planned shards; every tensor's bytes are written in order, in
/// pieces of any size.
pub struct SafetensorsWriter {
    dir: PathBuf,
    files: Vec<(File, PathBuf)>,
    plan: SafetensorsPlan,
    /// Bytes written so far per tensor.
    written: Vec<u64>,
}

impl SafetensorsWriter {
    /// Appends `bytes` to tensor `name`'s data.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = *self
            .plan
            .slots
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("tensor '{name}' is not in the plan")))?;
        let done = self.written[slot.id];
        let end = done + bytes.len() as u64;
        if end > slot.len {
            return Err(Error::Invalid(format!(
                "tensor '{name}': writing {} bytes after {done} overruns its {} bytes",
                bytes.len(),
                slot.len
            )));
        }
        let (f, path) = &mut self.files[slot.shard];
        f.seek(SeekFrom::Start(slot.offset + done))
            .and_then(|_| f.write_all(bytes))
            .map_err(|e| Error::io(path.as_path(), e))?;
        self.written[slot.id] = end;
        Ok(())
    }

    /// Checks that every tensor was written in full, flushes the shards to
    /// disk and writes `model.safetensors.index.json`. Returns the plan.
    pub fn finish(self) -> Result<SafetensorsPlan> {
        let mut missing: Vec<&str> = self
            .plan
            .slots
            .iter()
            .filter(|(_, s)| self.written[s.id] != s.len)
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(Error::Invalid(format!(
                "{} tensor(s) were not written in full: {}",
                missing.len(),
                missing.join(", ")
            )));
        }
        for (f, path) in &self.files {
            f.sync_all().map_err(|e| Error::io(path.as_path(), e))?;
        }
        let index = self.dir.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(&self.plan.index_json())
            .map_err(|e| Error::Other(format!("{INDEX_FILE}: {e}")))?;
        std::fs::write(&index, text + "\n").map_err(|e| Error::io(&index, e))?;
        Ok(self.plan)
    }
}
