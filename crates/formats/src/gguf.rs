//! GGUF v2/v3 reader (memory-mapped).
//!
//! Layout (all little-endian):
//!
//! ```text
//! magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//! n_kv × (string key, u32 value type, value)
//! n_tensors × (string name, u32 n_dims, n_dims × u64 ne, u32 ggml type, u64 offset)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at `data start + offset`
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes; an array is a u32 element
//! type, a u64 count and the elements. Every size read from the file is
//! checked against the bytes that remain before anything is allocated, so a
//! malformed file yields an [`Error::Format`] naming the file and the
//! problem, never a panic or a huge allocation.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mm_core::{Error, HostBytes, Result, WeightData, WeightFormat};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a GGML tensor has.
pub const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (arrays of arrays of …).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "UINT8",
            GgufValue::I8(_) => "INT8",
            GgufValue::U16(_) => "UINT16",
            GgufValue::I16(_) => "INT16",
            GgufValue::U32(_) => "UINT32",
            GgufValue::I32(_) => "INT32",
            GgufValue::U64(_) => "UINT64",
            GgufValue::I64(_) => "INT64",
            GgufValue::F32(_) => "FLOAT32",
            GgufValue::F64(_) => "FLOAT64",
            GgufValue::Bool(_) => "BOOL",
            GgufValue::String(_) => "STRING",
            GgufValue::Array(_) => "ARRAY",
        }
    }

    /// The value as an integer, when it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v as i128,
            GgufValue::I8(v) => v as i128,
            GgufValue::U16(v) => v as i128,
            GgufValue::I16(v) => v as i128,
            GgufValue::U32(v) => v as i128,
            GgufValue::I32(v) => v as i128,
            GgufValue::U64(v) => v as i128,
            GgufValue::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// The value as an f64, when it is F32 or F64.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Short human rendering; long strings and arrays are abbreviated.
    pub fn summary(&self) -> String {
        match self {
            GgufValue::String(s) if s.chars().count() > 60 => {
                format!("{:?}…", s.chars().take(60).collect::<String>())
            }
            GgufValue::String(s) => format!("{s:?}"),
            GgufValue::Array(a) => {
                let elem = a.first().map(|v| v.type_name()).unwrap_or("?");
                if a.len() <= 8 {
                    let items: Vec<String> = a.iter().map(|v| v.summary()).collect();
                    format!("[{}]", items.join(", "))
                } else {
                    format!("[{} × {elem}]", a.len())
                }
            }
            GgufValue::Bool(b) => b.to_string(),
            GgufValue::F32(v) => v.to_string(),
            GgufValue::F64(v) => v.to_string(),
            v => v.as_i128().map(|i| i.to_string()).unwrap_or_default(),
        }
    }
}

/// Name of a GGML type id (for messages), including types metal-marlin
/// does not load.
pub fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2",
        5 => "Q4_3",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// The GGML type id of a format (inverse of [`WeightFormat::from_ggml_type`]).
pub fn ggml_type_id(f: WeightFormat) -> u32 {
    match f {
        WeightFormat::F32 => 0,
        WeightFormat::F16 => 1,
        WeightFormat::Q4_0 => 2,
        WeightFormat::Q4_1 => 3,
        WeightFormat::Q5_0 => 6,
        WeightFormat::Q5_1 => 7,
        WeightFormat::Q8_0 => 8,
        WeightFormat::Q2K => 10,
        WeightFormat::Q3K => 11,
        WeightFormat::Q4K => 12,
        WeightFormat::Q5K => 13,
        WeightFormat::Q6K => 14,
        WeightFormat::BF16 => 30,
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Logical row-major shape (GGUF `ne` reversed: `[rows, cols]` for 2-D).
    pub shape: Vec<usize>,
    pub format: WeightFormat,
    /// Byte offset from the start of the file.
    pub offset: usize,
    pub size: usize,
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    map: Arc<memmap2::Mmap>,
    index: HashMap<String, usize>,
    alignment: usize,
    data_offset: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &format_args!("{} keys", self.metadata.len()))
            .field("tensors", &format_args!("{} tensors", self.tensors.len()))
            .finish()
    }
}

/// Bounds-checked little-endian cursor over the mapped file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::format(self.path, "GGUF", reason)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(self.err(format!(
                "truncated: {} needs {n} bytes at offset {}, but the file ends at {}",
                what(),
                self.pos,
                self.buf.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min_size` bytes each can still
    /// follow, and returns the count as usize.
    fn count(&self, count: u64, min_size: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let fits = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(min_size).map(|b| (c, b)))
            .filter(|(_, b)| *b <= self.remaining());
        match fits {
            Some((c, _)) => Ok(c),
            None => Err(self.err(format!(
                "{} claims {count} entries of at least {min_size} bytes at offset {}, but only {} bytes remain",
                what(),
                self.pos,
                self.remaining()
            ))),
        }
    }

    fn bytes_of_string(&mut self, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let n = match usize::try_from(len) {
            Ok(n) if n <= self.remaining() => n,
            _ => {
                return Err(self.err(format!(
                    "{} has length {len} at offset {}, but only {} bytes remain",
                    what(),
                    self.pos - 8,
                    self.remaining()
                )))
            }
        };
        self.take(n, what)
    }

    /// A string that must be valid UTF-8 (keys, tensor names).
    fn strict_string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let start = self.pos;
        let b = self.bytes_of_string(what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(format!(
                "{} at offset {start} is not valid UTF-8: {e}",
                what()
            ))),
        }
    }

    /// A string value; invalid UTF-8 is replaced (some converters wrote
    /// raw bytes into vocabularies) with a warning.
    fn value_string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let b = self.bytes_of_string(what)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => {
                tracing::warn!(path = %self.path.display(), "{} is not valid UTF-8; invalid bytes replaced", what());
                String::from_utf8_lossy(b).into_owned()
            }
        })
    }

    fn value(&mut self, ty: u32, depth: usize, what: &dyn Fn() -> String) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8(what)?),
            1 => GgufValue::I8(self.u8(what)? as i8),
            2 => GgufValue::U16(self.u16(what)?),
            3 => GgufValue::I16(self.u16(what)? as i16),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(self.u32(what)? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            7 => {
                let at = self.pos;
                match self.u8(what)? {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(self.err(format!(
                            "{} at offset {at} is a bool of value {b}, not 0 or 1",
                            what()
                        )))
                    }
                }
            }
            8 => GgufValue::String(self.value_string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{} nests arrays deeper than {MAX_ARRAY_DEPTH} levels",
                        what()
                    )));
                }
                let et = self.u32(&|| format!("element type of {}", what()))?;
                let min = min_value_size(et).ok_or_else(|| {
                    self.err(format!("{} has unknown array element type {et}", what()))
                })?;
                let n = self.u64(&|| format!("element count of {}", what()))?;
                let n = self.count(n, min, what)?;
                // Grow with the elements actually read rather than trusting
                // the count for one big allocation.
                let mut v = Vec::with_capacity(n.min(1 << 16));
                for i in 0..n {
                    v.push(self.value(et, depth + 1, &|| format!("element {i} of {}", what()))?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(self.u64(what)? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(self.err(format!("{} has unknown value type {t}", what()))),
        })
    }
}

/// Smallest encoding of a value of metadata type `t` (None: unknown type).
fn min_value_size(t: u32) -> Option<usize> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,
        9 => 12,
        _ => return None,
    })
}

impl GgufFile {
    /// Maps and parses a GGUF v2/v3 file, checking every tensor lies inside it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "is a directory, not a GGUF file",
                ),
            ));
        }
        if meta.len() == 0 {
            return Err(Error::format(path, "GGUF", "file is empty"));
        }
        // SAFETY: the map is read-only; as with every memory-mapped model
        // loader, the file must not be truncated while the map is alive.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<memmap2::Mmap>) -> Result<Self> {
        let buf: &[u8] = &map;
        let mut r = Reader { buf, pos: 0, path };
        let fail = |reason: String| Error::format(path, "GGUF", reason);

        if buf.len() < 4 {
            return Err(fail(format!(
                "file is {} bytes, too short for the GGUF magic",
                buf.len()
            )));
        }
        let magic = r.array::<4>(&|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(fail(match &magic {
                b"lmgg" | b"fmgg" | b"tjgg" | b"algg" => {
                    "legacy GGML/GGJT file (pre-GGUF); convert it to GGUF with llama.cpp"
                        .to_string()
                }
                m => format!(
                    "bad magic {:02x?} ({:?}), expected \"GGUF\"",
                    m,
                    String::from_utf8_lossy(m)
                ),
            }));
        }
        let version = r.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(fail(
                    "GGUF version 1 is not supported (it uses 32-bit counts); re-convert the model with a current llama.cpp"
                        .into(),
                ))
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(fail(format!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                )))
            }
            v => return Err(fail(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes;
        // a tensor info at least 8 (name length) + 4 + 4 + 8.
        let n_kv = r.count(n_kv, 13, &|| "the metadata count".into())?;
        let n_tensors_checked = n_tensors
            .checked_mul(24)
            .and_then(|b| b.checked_add(n_kv as u64 * 13))
            .filter(|b| *b <= r.remaining() as u64);
        if n_tensors_checked.is_none() {
            return Err(fail(format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries, more than the {} bytes that remain can hold",
                r.remaining()
            )));
        }
        let n_tensors = n_tensors as usize;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.strict_string(&|| format!("metadata key #{i}"))?;
            let ty = r.u32(&|| format!("type of metadata '{key}'"))?;
            let value = r.value(ty, 0, &|| format!("metadata '{key}'"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(fail(format!("duplicate metadata key '{key}'")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i128() {
                Some(a) if a > 0 && a <= (1 << 30) && (a as u64).is_power_of_two() => a as usize,
                _ => {
                    return Err(fail(format!(
                        "general.alignment must be a power of two, found {} ({})",
                        v.summary(),
                        v.type_name()
                    )))
                }
            },
        };

        struct Raw {
            name: String,
            shape: Vec<usize>,
            format: WeightFormat,
            rel: u64,
            size: usize,
        }
        let mut raws = Vec::with_capacity(n_tensors.min(1 << 16));
        let mut index = HashMap::with_capacity(n_tensors.min(1 << 16));
        for i in 0..n_tensors {
            let name = r.strict_string(&|| format!("name of tensor #{i}"))?;
            let what = || format!("tensor '{name}'");
            let n_dims = r.u32(&|| format!("dimension count of {}", what()))?;
            if n_dims as usize > MAX_DIMS {
                return Err(fail(format!(
                    "{} has {n_dims} dimensions (at most {MAX_DIMS} are allowed)",
                    what()
                )));
            }
            let mut ne = [1u64; MAX_DIMS];
            for (d, slot) in ne.iter_mut().enumerate().take(n_dims as usize) {
                *slot = r.u64(&|| format!("dimension {d} of {}", what()))?;
            }
            let ty = r.u32(&|| format!("type of {}", what()))?;
            let rel = r.u64(&|| format!("data offset of {}", what()))?;

            let format = WeightFormat::from_ggml_type(ty).ok_or_else(|| {
                fail(match ggml_type_name(ty) {
                    Some(n) => format!(
                        "{} has ggml type {ty} ({n}), which metal-marlin does not support",
                        what()
                    ),
                    None => format!("{} has unknown ggml type id {ty}", what()),
                })
            })?;
            let mut shape = Vec::with_capacity(n_dims as usize);
            for &d in ne[..n_dims as usize].iter().rev() {
                match usize::try_from(d) {
                    Ok(d) if d <= i64::MAX as usize => shape.push(d),
                    _ => {
                        return Err(fail(format!(
                            "{} has dimension {d}, which is too large",
                            what()
                        )))
                    }
                }
            }
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    fail(format!(
                        "{} has shape {shape:?}, whose element count overflows",
                        what()
                    ))
                })?;
            let (block, _) = format.block();
            let row = ne[0];
            if row % block as u64 != 0 {
                return Err(fail(format!(
                    "{} has row length {row}, not a multiple of the {} block size {block}",
                    what(),
                    format.name()
                )));
            }
            let size = format
                .bytes_for(numel)
                .map_err(|e| fail(format!("{}: {e}", what())))?;
            if index.insert(name.clone(), i).is_some() {
                return Err(fail(format!("duplicate tensor name '{name}'")));
            }
            raws.push(Raw {
                name,
                shape,
                format,
                rel,
                size,
            });
        }

        let data_offset = r
            .pos
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| fail("data section offset overflows".into()))?;
        let file_len = buf.len();
        let mut tensors = Vec::with_capacity(raws.len());
        for t in raws {
            if t.rel % alignment as u64 != 0 {
                return Err(fail(format!(
                    "tensor '{}' has data offset {}, not a multiple of the alignment {alignment}",
                    t.name, t.rel
                )));
            }
            let start = usize::try_from(t.rel)
                .ok()
                .and_then(|o| o.checked_add(data_offset));
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(start), Some(end)) if end <= file_len => tensors.push(GgufTensorInfo {
                    name: t.name,
                    shape: t.shape,
                    format: t.format,
                    offset: start,
                    size: t.size,
                }),
                _ => {
                    return Err(fail(format!(
                        "tensor '{}' ({} {:?}, {} bytes at data offset {}) extends past the end of the file ({} bytes, data section at {data_offset})",
                        t.name,
                        t.format.name(),
                        t.shape,
                        t.size,
                        t.rel,
                        file_len
                    )))
                }
            }
        }

        // Tensors must not share bytes.
        let mut order: Vec<usize> = (0..tensors.len())
            .filter(|&i| tensors[i].size > 0)
            .collect();
        order.sort_by_key(|&i| tensors[i].offset);
        for w in order.windows(2) {
            let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
            if a.offset + a.size > b.offset {
                return Err(fail(format!(
                    "tensors '{}' (bytes {}..{}) and '{}' (bytes {}..{}) overlap",
                    a.name,
                    a.offset,
                    a.offset + a.size,
                    b.name,
                    b.offset,
                    b.offset + b.size
                )));
            }
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            map,
            index,
            alignment,
            data_offset,
        })
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::format(&self.path, "GGUF", reason)
    }

    /// A zero-copy view of tensor `name` (its GGUF name).
    pub fn tensor(&self, name: &str) -> Result<WeightData> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let bytes = HostBytes::mapped(self.map.clone(), t.offset, t.size);
        WeightData::new(t.format, t.shape.clone(), bytes)
            .map_err(|e| self.err(format!("tensor '{name}': {e}")))
    }

    /// The header entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// True when the file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Alignment of the data section and of every tensor offset.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// The raw value of metadata `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, want: &str) -> Error {
        self.err(format!(
            "metadata '{key}' is {} {}, expected {want}",
            v.type_name(),
            v.summary()
        ))
    }

    /// A string value; Err when present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, v, "a string")),
        }
    }

    fn int_in<T: TryFrom<i128>>(&self, key: &str, v: &GgufValue, want: &str) -> Result<T> {
        let i = v.as_i128().ok_or_else(|| self.wrong_type(key, v, want))?;
        T::try_from(i)
            .map_err(|_| self.err(format!("metadata '{key}' = {i} does not fit in {want}")))
    }

    /// An unsigned value of any integer type that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| self.int_in(key, v, "a u32"))
            .transpose()
    }

    /// An unsigned value of any integer type that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| self.int_in(key, v, "a u64"))
            .transpose()
    }

    /// A signed value of any integer type that fits in i64.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| self.int_in(key, v, "an i64"))
            .transpose()
    }

    /// A float value stored as F32 or F64.
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_float()
                .map(|f| Some(f as f32))
                .ok_or_else(|| self.wrong_type(key, v, "a float")),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, v, "a bool")),
        }
    }

    fn get_array(&self, key: &str, want: &str) -> Result<Option<&[GgufValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong_type(key, v, want)),
        }
    }

    fn elem_err(&self, key: &str, i: usize, v: &GgufValue, want: &str) -> Error {
        self.err(format!(
            "element {i} of metadata '{key}' is {} {}, expected {want}",
            v.type_name(),
            v.summary()
        ))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        let Some(a) = self.get_array(key, "an array of strings")? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| self.elem_err(key, i, v, "a string"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of F32 or F64 values.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(a) = self.get_array(key, "an array of floats")? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_float()
                    .map(|f| f as f32)
                    .ok_or_else(|| self.elem_err(key, i, v, "a float"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers that fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(a) = self.get_array(key, "an array of integers")? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_i128()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| self.elem_err(key, i, v, "an i32"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array of integers that fit in u32.
    pub fn get_u32_array(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let Some(a) = self.get_array(key, "an array of integers")? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_i128()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| self.elem_err(key, i, v, "a u32"))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `general.architecture`, required by the GGUF spec.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")?
            .ok_or_else(|| self.err("metadata 'general.architecture' is missing"))
    }
}
