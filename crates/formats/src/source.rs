//! One interface over a checkpoint, whatever its file format.
//!
//! Tensors are always named as in HF checkpoints
//! (`model.layers.0.self_attn.q_proj.weight`); GGUF names are mapped,
//! llama.cpp's q/k row permutation of `llama` GGUFs is undone and its
//! merged expert and split MLA tensors are taken apart ([`gguf`]), so model
//! code sees one layout.

use std::io::Read;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use mm_core::weight::MmFormat;
use mm_core::{Error, Result, WeightData};
use mm_quant::mm::{
    mm_part_names, mm_weight_from_parts, PartView, QuantizationConfig, TensorQuant,
    QUANT_CONFIG_FILE,
};

use crate::gguf::GGUF_MAGIC;
use crate::{GgufFile, ModelConfig, SafetensorsSet};

mod gguf;
mod gguf_layout;
mod gguf_names;
pub use gguf::GgufSource;
pub use gguf_layout::unpermute_rows;
pub use gguf_names::{gguf_to_hf_name, hf_to_gguf_name};

/// Tensors under their HF names, with GGUF names and layouts mapped.
pub trait WeightSource: Send + Sync {
    fn config(&self) -> &ModelConfig;
    fn tensor(&self, hf_name: &str) -> Result<WeightData>;
    fn contains(&self, hf_name: &str) -> bool;

    /// The GGUF file behind this source (its metadata holds the tokenizer).
    fn gguf(&self) -> Option<&GgufFile> {
        None
    }

    /// The safetensors files behind this source (for [`SafetensorsSet::raw`]).
    fn safetensors(&self) -> Option<&SafetensorsSet> {
        None
    }

    /// The model directory or GGUF file this source was opened from.
    fn path(&self) -> Option<&Path> {
        None
    }

    /// (name, format, shape) of every tensor, sorted by name; HF names where
    /// a GGUF name maps to one, the file's own name otherwise (and
    /// [`WeightSource::tensor`] accepts every name listed). A quantized
    /// weight of a metal-marlin directory is listed once, under its
    /// original name (`P.weight`), with its format ([`mm_format_label`],
    /// e.g. `int4/g128`) and logical shape; its stored parts are not listed.
    fn describe(&self) -> Vec<(String, String, Vec<usize>)> {
        Vec::new()
    }

    /// The `quantization_config.json` of a metal-marlin quantized directory.
    fn quantization(&self) -> Option<&QuantizationConfig> {
        None
    }
}

/// Short name of a metal-marlin format with its group: `int4/g128`,
/// `int8/per-channel`, `mxfp4/g32`.
pub fn mm_format_label(f: MmFormat) -> String {
    if f.kind.is_trellis() {
        f.name().to_string()
    } else if f.group == 0 {
        format!("{}/per-channel", f.name())
    } else {
        format!("{}/g{}", f.name(), f.group)
    }
}

/// Opens a HF directory or a `.gguf` file.
pub fn open_source(path: &Path) -> Result<Box<dyn WeightSource>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Ok(Box::new(HfSource::open(path)?));
    }
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if got == 4 && magic == GGUF_MAGIC {
        return Ok(Box::new(GgufSource::open(path)?));
    }
    let hint = if path.extension().is_some_and(|x| x == "safetensors") {
        "; pass the model directory (with config.json) instead of a .safetensors file"
    } else {
        ""
    };
    Err(Error::format(
        path,
        "model",
        format!("not a GGUF file or model directory{hint}"),
    ))
}

// ------------------------------------------------------------------ HF

/// A HF model directory: `config.json` and safetensors weights; with a
/// `quantization_config.json`, a metal-marlin quantized model directory
/// (docs/FORMAT.md), whose quantized weights load in their stored format.
pub struct HfSource {
    dir: PathBuf,
    config: ModelConfig,
    weights: SafetensorsSet,
    quant: Option<Quantized>,
}

/// The quantized weights of a metal-marlin directory.
struct Quantized {
    config: QuantizationConfig,
    /// Original weight name (`P.weight`) → format and logical shape.
    weights: BTreeMap<String, (MmFormat, Vec<usize>)>,
    /// Names of the stored parts (`P.qweight`, `P.scales`, `P.zeros`).
    parts: std::collections::BTreeSet<String>,
}

impl HfSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config = ModelConfig::from_hf_json(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", cfg_path.display())),
            e => e,
        })?;
        let weights = SafetensorsSet::open_dir(dir)?;
        let qc_path = dir.join(QUANT_CONFIG_FILE);
        let quant = if qc_path.is_file() {
            let qc = QuantizationConfig::from_path(&qc_path)?;
            Some(Quantized::index(qc, &weights, &qc_path)?)
        } else {
            None
        };
        Ok(HfSource {
            dir: dir.to_path_buf(),
            config,
            weights,
            quant,
        })
    }

    /// The parts of `name` as stored, if it is a quantized weight.
    fn quantized_tensor(&self, q: &Quantized, name: &str) -> Result<Option<WeightData>> {
        let [qw, sc, ze] = mm_part_names(name);
        if !self.weights.contains(&qw) {
            return Ok(None);
        }
        let fmt = match q.config.tensor_quant(name)? {
            TensorQuant::Quantized(f) => f,
            TensorQuant::Unquantized => {
                return Err(Error::format(
                    self.dir.join(QUANT_CONFIG_FILE),
                    "quantization config",
                    format!("'{name}' is stored quantized as '{qw}', but the config lists it as unquantized"),
                ))
            }
        };
        load_parts(&self.weights, fmt, &qw, &sc, &ze).map(Some)
    }
}

/// Builds a quantized weight from its stored parts, naming it in errors.
fn load_parts(
    set: &SafetensorsSet,
    fmt: MmFormat,
    qw: &str,
    sc: &str,
    ze: &str,
) -> Result<WeightData> {
    let fail = |e: Error| {
        Error::format(
            set.dir(),
            "quantized model",
            format!("weight '{qw}' ({}): {e}", mm_format_label(fmt)),
        )
    };
    let (qd, qs, qb) = set.raw(qw)?;
    let (sd, ss, sb) = set.raw(sc).map_err(|_| {
        fail(Error::Invalid(format!(
            "its scales tensor '{sc}' is missing"
        )))
    })?;
    let z = if set.contains(ze) {
        Some(set.raw(ze)?)
    } else {
        None
    };
    let zeros = z.as_ref().map(|(d, s, b)| PartView {
        dtype: d,
        shape: s,
        bytes: b.clone(),
    });
    let qweight = PartView {
        dtype: &qd,
        shape: &qs,
        bytes: qb,
    };
    let scales = PartView {
        dtype: &sd,
        shape: &ss,
        bytes: sb,
    };
    mm_weight_from_parts(fmt, qweight, scales, zeros).map_err(fail)
}

impl Quantized {
    /// Finds every quantized weight (`*.qweight`) and checks its parts
    /// against the format the config gives it, so that a bad directory fails
    /// at open time with the weight named.
    fn index(config: QuantizationConfig, set: &SafetensorsSet, qc_path: &Path) -> Result<Self> {
        let mut weights = BTreeMap::new();
        let mut parts = std::collections::BTreeSet::new();
        let bases: Vec<String> = set
            .names()
            .filter_map(|n| n.strip_suffix(".qweight"))
            .map(String::from)
            .collect();
        for base in bases {
            let name = format!("{base}.weight");
            if set.contains(&name) {
                return Err(Error::format(
                    set.dir(),
                    "quantized model",
                    format!(
                        "'{name}' is stored both unquantized and quantized (as '{base}.qweight')"
                    ),
                ));
            }
            let fmt = match config.tensor_quant(&name).map_err(|e| {
                Error::format(qc_path, "quantization config", e.to_string())
            })? {
                TensorQuant::Quantized(f) => f,
                TensorQuant::Unquantized => {
                    return Err(Error::format(
                        qc_path,
                        "quantization config",
                        format!("'{name}' is stored quantized as '{base}.qweight', but the config lists it as unquantized"),
                    ))
                }
            };
            let [qw, sc, ze] = mm_part_names(&name);
            let w = load_parts(set, fmt, &qw, &sc, &ze)?;
            parts.insert(qw);
            parts.insert(sc);
            if fmt.kind.has_zeros() {
                parts.insert(ze);
            }
            weights.insert(name, (fmt, w.shape));
        }
        Ok(Self {
            config,
            weights,
            parts,
        })
    }
}

impl WeightSource for HfSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn tensor(&self, hf_name: &str) -> Result<WeightData> {
        match &self.quant {
            Some(q) => {
                if let Some(w) = self.quantized_tensor(q, hf_name)? {
                    return Ok(w);
                }
            }
            None => {
                let qw = &mm_part_names(hf_name)[0];
                if !self.weights.contains(hf_name) && self.weights.contains(qw) {
                    return Err(Error::format(
                        &self.dir,
                        "model",
                        format!(
                            "'{hf_name}' is stored quantized as '{qw}', but the directory has no {QUANT_CONFIG_FILE} \
                             (only metal-marlin quantized directories are supported, see docs/FORMAT.md)"
                        ),
                    ));
                }
            }
        }
        self.weights.tensor(hf_name)
    }
    fn contains(&self, hf_name: &str) -> bool {
        self.weights.contains(hf_name)
            || self
                .quant
                .as_ref()
                .is_some_and(|_| self.weights.contains(&mm_part_names(hf_name)[0]))
    }
    fn safetensors(&self) -> Option<&SafetensorsSet> {
        Some(&self.weights)
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.dir)
    }
    fn describe(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut v: Vec<(String, String, Vec<usize>)> = self
            .weights
            .names()
            .filter(|n| !self.quant.as_ref().is_some_and(|q| q.parts.contains(*n)))
            .filter_map(|n| {
                self.weights
                    .info(n)
                    .map(|(d, s)| (n.to_string(), d, s.to_vec()))
            })
            .collect();
        if let Some(q) = &self.quant {
            v.extend(
                q.weights
                    .iter()
                    .map(|(n, (f, s))| (n.clone(), mm_format_label(*f), s.clone())),
            );
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }
        v
    }
    fn quantization(&self) -> Option<&QuantizationConfig> {
        self.quant.as_ref().map(|q| &q.config)
    }
}
