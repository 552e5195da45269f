//! One or sharded safetensors files, memory-mapped.
//!
//! A directory holds `model.safetensors`, or shards listed by
//! `model.safetensors.index.json` (`weight_map`: tensor → file), or, when
//! neither exists, any `*.safetensors` files. Headers are parsed with the
//! `safetensors` crate; its errors become messages naming the file and, where
//! one is at fault, the tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ::safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};
use mm_core::{Error, HostBytes, Result, WeightData, WeightFormat};

/// Name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

struct Shard {
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
}

#[derive(Clone)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute offset in the shard file.
    offset: usize,
    len: usize,
}

/// All tensors of a model directory's safetensors files.
pub struct SafetensorsSet {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for SafetensorsSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsSet")
            .field("dir", &self.dir)
            .field("files", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn st_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::format(path, "safetensors", reason)
}

/// Explains why the header of `buf` failed validation, naming the tensor
/// at fault where the crate's error does not.
fn diagnose(buf: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    let header: serde_json::Value = serde_json::from_slice(buf.get(8..end)?).ok()?;
    let data_len = buf.len() - end;
    let mut max_end = 0usize;
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype: Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let shape: Vec<usize> = serde_json::from_value(info.get("shape")?.clone()).ok()?;
        let (s, e): (usize, usize) =
            serde_json::from_value(info.get("data_offsets")?.clone()).ok()?;
        let Some(bits) = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(dtype.bitsize()))
        else {
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype} overflows"
            ));
        };
        if e < s {
            return Some(format!(
                "tensor '{name}': data_offsets [{s}, {e}] end before they start"
            ));
        }
        if bits % 8 != 0 {
            return Some(format!(
                "tensor '{name}': {bits} bits of {dtype} is not a whole number of bytes"
            ));
        }
        if e - s != bits / 8 {
            return Some(format!(
                "tensor '{name}': shape {shape:?} of {dtype} needs {} bytes, but data_offsets [{s}, {e}] span {}",
                bits / 8,
                e - s
            ));
        }
        if e > data_len {
            return Some(format!(
                "tensor '{name}': data_offsets [{s}, {e}] run past the end of the data section ({data_len} bytes)"
            ));
        }
        max_end = max_end.max(e);
    }
    if max_end != data_len {
        return Some(format!(
            "tensor data ends at byte {max_end} of the data section, but the file holds {data_len} bytes after the header"
        ));
    }
    None
}

fn describe_error(buf: &[u8], e: SafeTensorError) -> String {
    let header_len = buf
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!(
                "file is {} bytes, too short for the 8-byte header length",
                buf.len()
            )
        }
        SafeTensorError::HeaderTooLarge => format!(
            "header length {} exceeds the 100 MB limit",
            header_len.unwrap_or_default()
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "header length {} runs past the end of the file ({} bytes)",
            header_len.unwrap_or_default(),
            buf.len()
        ),
        SafeTensorError::InvalidHeader(e) => format!("header is not valid UTF-8: {e}"),
        SafeTensorError::InvalidHeaderStart => "header does not start with '{'".to_string(),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("header is not valid safetensors JSON: {e}")
        }
        SafeTensorError::InvalidOffset(name) => diagnose(buf).unwrap_or_else(|| {
            format!(
                "tensor '{name}': data_offsets overlap or leave a gap after the previous tensor"
            )
        }),
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::MetadataIncompleteBuffer
        | SafeTensorError::ValidationOverflow
        | SafeTensorError::MisalignedSlice => {
            diagnose(buf).unwrap_or_else(|| format!("invalid tensor layout ({e:?})"))
        }
        e => format!("{e:?}"),
    }
}

fn open_shard(path: &Path) -> Result<(Shard, Vec<(String, Entry)>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a directory, not a safetensors file",
            ),
        ));
    }
    if meta.len() == 0 {
        return Err(st_err(path, "file is empty"));
    }
    // SAFETY: read-only map; the file must not be truncated while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (n, meta) =
        SafeTensors::read_metadata(&map).map_err(|e| st_err(path, describe_error(&map, e)))?;
    let data_start = n + 8;
    let mut entries = Vec::new();
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let offset = data_start.checked_add(s);
        let end = data_start.checked_add(e);
        match (offset, end) {
            (Some(o), Some(end)) if o <= end && end <= map.len() => entries.push((
                name,
                Entry {
                    shard: 0,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offset: o,
                    len: end - o,
                },
            )),
            _ => {
                return Err(st_err(
                    path,
                    format!("tensor '{name}': data_offsets [{s}, {e}] lie outside the file"),
                ))
            }
        }
    }
    Ok((
        Shard {
            path: path.to_path_buf(),
            map: Arc::new(map),
        },
        entries,
    ))
}

/// Reads `weight_map` of an index file: tensor name → shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fail = |r: String| Error::format(path, "safetensors index", r);
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
    let wm = v
        .get("weight_map")
        .ok_or_else(|| fail("missing 'weight_map'".into()))?
        .as_object()
        .ok_or_else(|| fail("'weight_map' is not an object".into()))?;
    let mut out = BTreeMap::new();
    for (name, file) in wm {
        let file = file
            .as_str()
            .ok_or_else(|| fail(format!("weight_map entry '{name}' is not a file name")))?;
        let p = Path::new(file);
        if file.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(fail(format!(
                "weight_map entry '{name}' names '{file}', which is not a file inside the model directory"
            )));
        }
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

impl SafetensorsSet {
    /// Opens the safetensors checkpoint of a model directory.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
            ));
        }
        let index_path = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        if index_path.is_file() {
            let weight_map = read_index(&index_path)?;
            let mut files: Vec<&String> = weight_map.values().collect();
            files.sort();
            files.dedup();
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            let set = Self::from_files(dir, &paths, Some(&weight_map))?;
            // Every indexed tensor must be where the index says.
            for (name, file) in &weight_map {
                let ok = set
                    .tensors
                    .get(name)
                    .map(|e| set.shards[e.shard].path == dir.join(file))
                    .unwrap_or(false);
                if !ok {
                    return Err(Error::format(
                        &index_path,
                        "safetensors index",
                        format!("weight_map maps '{name}' to '{file}', which does not contain it"),
                    ));
                }
            }
            Ok(set)
        } else if single.is_file() {
            Self::from_files(dir, &[single], None)
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut paths = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|e| Error::io(dir, e))?;
                let p = ent.path();
                if p.extension().is_some_and(|x| x == "safetensors") && p.is_file() {
                    paths.push(p);
                }
            }
            if paths.is_empty() {
                return Err(Error::io(
                    dir,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no {SINGLE_FILE}, {INDEX_FILE} or other *.safetensors file in the directory"),
                    ),
                ));
            }
            paths.sort();
            Self::from_files(dir, &paths, None)
        }
    }

    /// Opens the given files as one checkpoint; a tensor in several files is
    /// an error.
    pub fn open_files(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        Self::from_files(dir, files, None)
    }

    /// With `weight_map`, a tensor found in several files is taken from the
    /// file the map names; otherwise duplicates are an error.
    fn from_files(
        dir: &Path,
        files: &[PathBuf],
        weight_map: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        let mut shards: Vec<Shard> = Vec::with_capacity(files.len());
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let (shard, entries) = open_shard(path)?;
            for (name, mut e) in entries {
                e.shard = i;
                let Some(prev) = tensors.get(&name).map(|p| p.shard) else {
                    tensors.insert(name, e);
                    continue;
                };
                let prev_path = &shards[prev].path;
                match weight_map.and_then(|m| m.get(&name)).map(|f| dir.join(f)) {
                    Some(w) if w == *path => {
                        tensors.insert(name, e);
                    }
                    Some(w) if w == *prev_path => {}
                    _ => {
                        return Err(st_err(
                            path,
                            format!("tensor '{name}' also appears in {}", prev_path.display()),
                        ))
                    }
                }
            }
            shards.push(shard);
        }
        Ok(SafetensorsSet {
            dir: dir.to_path_buf(),
            shards,
            tensors,
        })
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn bytes(&self, e: &Entry) -> HostBytes {
        HostBytes::mapped(self.shards[e.shard].map.clone(), e.offset, e.len)
    }

    /// A zero-copy F32/F16/BF16 weight; other dtypes are an error (see
    /// [`SafetensorsSet::raw`]).
    pub fn tensor(&self, name: &str) -> Result<WeightData> {
        let e = self.entry(name)?;
        let format = match e.dtype {
            Dtype::F32 => WeightFormat::F32,
            Dtype::F16 => WeightFormat::F16,
            Dtype::BF16 => WeightFormat::BF16,
            d => {
                return Err(Error::Invalid(format!(
                    "{}: tensor '{name}' has dtype {d}, which is not a float weight format (F32, F16, BF16)",
                    self.shards[e.shard].path.display()
                )))
            }
        };
        WeightData::new(format, e.shape.clone(), self.bytes(e)).map_err(|err| {
            st_err(
                &self.shards[e.shard].path,
                format!("tensor '{name}': {err}"),
            )
        })
    }

    /// Any tensor as (dtype name as safetensors writes it, e.g. "I8",
    /// shape, bytes), zero-copy.
    pub fn raw(&self, name: &str) -> Result<(String, Vec<usize>, HostBytes)> {
        let e = self.entry(name)?;
        Ok((e.dtype.to_string(), e.shape.clone(), self.bytes(e)))
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dtype name and shape of tensor `name`.
    pub fn info(&self, name: &str) -> Option<(String, &[usize])> {
        self.tensors
            .get(name)
            .map(|e| (e.dtype.to_string(), e.shape.as_slice()))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The files of the checkpoint, in load order.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }
}
