//! `quantization_config.json` of a metal-marlin quantized model directory
//! (docs/FORMAT.md): the default format, per-tensor overrides and the
//! tensors kept unquantized.

use std::path::Path;

use mm_core::weight::{MmFormat, MmKind};
use mm_core::{Error, Result};
use regex::Regex;
use serde_json::{json, Map, Value};

/// The layout version this crate reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// File name of the configuration inside a model directory.
pub const QUANT_CONFIG_FILE: &str = "quantization_config.json";

/// How the codes were chosen. Decoding does not depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantMethod {
    /// Round-to-nearest.
    Rtn,
    /// GPTQ (error-compensating, static groups, no activation reordering).
    Gptq,
}

impl QuantMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtn => "rtn",
            Self::Gptq => "gptq",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "rtn" => Ok(Self::Rtn),
            "gptq" => Ok(Self::Gptq),
            _ => Err(Error::Config(format!(
                "quantization method '{s}' is unknown (valid: rtn, gptq)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
struct Pattern {
    src: String,
    re: Regex,
}

impl Pattern {
    fn new(src: &str) -> Result<Self> {
        let re = Regex::new(&format!("^(?:{src})$"))
            .map_err(|e| Error::Config(format!("invalid tensor pattern '{src}': {e}")))?;
        Ok(Self {
            src: src.to_string(),
            re,
        })
    }
}

/// What a model's quantization config says about one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorQuant {
    /// Stored as `{base}.qweight/.scales[/.zeros]` in this format.
    Quantized(MmFormat),
    /// Stored under its own name in its original float dtype.
    Unquantized,
}

/// The contents of `quantization_config.json`.
#[derive(Clone, Debug)]
pub struct QuantizationConfig {
    /// Format of every quantized tensor without an override.
    pub format: MmFormat,
    pub method: QuantMethod,
    overrides: Vec<(Pattern, MmFormat)>,
    unquantized: Vec<Pattern>,
}

impl QuantizationConfig {
    /// A configuration with a default format and no overrides.
    pub fn new(format: MmFormat, method: QuantMethod) -> Result<Self> {
        format.validate()?;
        Ok(Self {
            format,
            method,
            overrides: Vec::new(),
            unquantized: Vec::new(),
        })
    }

    /// Adds an override: tensors whose name is `pattern`, or which the
    /// regular expression `pattern` matches in full, use `format`.
    pub fn with_override(mut self, pattern: &str, format: MmFormat) -> Result<Self> {
        format.validate()?;
        self.overrides.retain(|(p, _)| p.src != pattern);
        self.overrides.push((Pattern::new(pattern)?, format));
        Ok(self)
    }

    /// Marks tensors named or fully matched by `pattern` as kept unquantized.
    pub fn with_unquantized(mut self, pattern: &str) -> Result<Self> {
        if !self.unquantized.iter().any(|p| p.src == pattern) {
            self.unquantized.push(Pattern::new(pattern)?);
        }
        Ok(self)
    }

    /// The overrides, as (pattern, format).
    pub fn overrides(&self) -> impl Iterator<Item = (&str, MmFormat)> {
        self.overrides.iter().map(|(p, f)| (p.src.as_str(), *f))
    }

    /// The patterns of tensors kept unquantized.
    pub fn unquantized(&self) -> impl Iterator<Item = &str> {
        self.unquantized.iter().map(|p| p.src.as_str())
    }

    /// How tensor `name` is stored. An entry whose key equals the name wins
    /// over entries that match it as a regular expression; entries of the
    /// same rank that disagree are an error.
    pub fn tensor_quant(&self, name: &str) -> Result<TensorQuant> {
        for exact in [true, false] {
            let hit = |p: &Pattern| {
                if exact {
                    p.src == name
                } else {
                    p.re.is_match(name)
                }
            };
            let mut found: Vec<(&str, TensorQuant)> = self
                .overrides
                .iter()
                .filter(|(p, _)| hit(p))
                .map(|(p, f)| (p.src.as_str(), TensorQuant::Quantized(*f)))
                .collect();
            found.extend(
                self.unquantized
                    .iter()
                    .filter(|p| hit(p))
                    .map(|p| (p.src.as_str(), TensorQuant::Unquantized)),
            );
            if let Some(&(_, first)) = found.first() {
                if let Some((other, _)) = found.iter().find(|(_, q)| *q != first) {
                    return Err(Error::Config(format!(
                        "tensor '{name}': quantization entries '{}' and '{other}' disagree",
                        found[0].0
                    )));
                }
                return Ok(first);
            }
        }
        Ok(TensorQuant::Quantized(self.format))
    }

    /// Parses the JSON text of a `quantization_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{QUANT_CONFIG_FILE}: {e}")))?;
        Self::from_value(&v)
    }

    /// Reads `dir/quantization_config.json` (or the file `path` itself).
    pub fn from_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(QUANT_CONFIG_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config(m) => Error::format(&file, "quantization config", m),
            e => e,
        })
    }

    /// Parses a JSON value (e.g. a `quantization_config` object embedded elsewhere).
    pub fn from_value(v: &Value) -> Result<Self> {
        let err = |m: String| Error::Config(format!("{QUANT_CONFIG_FILE}: {m}"));
        let o = v
            .as_object()
            .ok_or_else(|| err("expected a JSON object".into()))?;
        let version = o
            .get("format_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| err("missing integer 'format_version'".into()))?;
        if version != FORMAT_VERSION {
            return Err(err(format!(
                "format_version {version} is not supported (this build reads version {FORMAT_VERSION})"
            )));
        }
        let name = o
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| err("missing string 'format'".into()))?;
        let kind = MmKind::parse(name).map_err(|e| err(e.to_string()))?;
        let group = match o.get("group_size") {
            Some(g) => parse_group(g).map_err(&err)?,
            None => kind.fixed_group().ok_or_else(|| {
                err("missing 'group_size' (0 = per-channel, 32, 64 or 128)".into())
            })?,
        };
        let format = MmFormat::new(kind, group).map_err(|e| err(e.to_string()))?;
        if let Some(b) = o.get("bits") {
            if b.as_u64() != Some(format.bits() as u64) {
                return Err(err(format!(
                    "'bits' is {b} but format '{name}' has {}-bit codes",
                    format.bits()
                )));
            }
        }
        let method = match o.get("method") {
            None => QuantMethod::Rtn,
            Some(m) => QuantMethod::parse(
                m.as_str()
                    .ok_or_else(|| err(format!("'method' must be a string, found {m}")))?,
            )
            .map_err(|e| err(e.to_string()))?,
        };
        let mut cfg = Self::new(format, method)?;
        if let Some(ov) = o.get("overrides") {
            let ov = ov.as_object().ok_or_else(|| {
                err("'overrides' must be an object {tensor name or regex: format}".into())
            })?;
            for (pat, f) in ov {
                let f =
                    parse_override(f, group).map_err(|m| err(format!("override '{pat}': {m}")))?;
                cfg = cfg.with_override(pat, f).map_err(|e| err(e.to_string()))?;
            }
        }
        if let Some(u) = o.get("unquantized") {
            let u = u.as_array().ok_or_else(|| {
                err("'unquantized' must be an array of tensor names or regexes".into())
            })?;
            for p in u {
                let p = p.as_str().ok_or_else(|| {
                    err(format!("'unquantized' entries must be strings, found {p}"))
                })?;
                cfg = cfg.with_unquantized(p).map_err(|e| err(e.to_string()))?;
            }
        }
        Ok(cfg)
    }

    /// The configuration as a JSON value (format version 1).
    pub fn to_value(&self) -> Value {
        let overrides: Map<String, Value> = self
            .overrides
            .iter()
            .map(|(p, f)| {
                (
                    p.src.clone(),
                    json!({ "format": f.name(), "group_size": f.group }),
                )
            })
            .collect();
        json!({
            "format_version": FORMAT_VERSION,
            "format": self.format.name(),
            "bits": self.format.bits(),
            "group_size": self.format.group,
            "method": self.method.name(),
            "overrides": overrides,
            "unquantized": self.unquantized.iter().map(|p| p.src.clone()).collect::<Vec<_>>(),
        })
    }

    /// The configuration as pretty-printed JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("JSON values always serialize")
    }
}

fn parse_group(g: &Value) -> std::result::Result<u32, String> {
    match g.as_i64() {
        Some(-1) | Some(0) => Ok(0),
        Some(n) if n > 0 && n <= u32::MAX as i64 => Ok(n as u32),
        _ => Err(format!(
            "'group_size' must be 0 (or -1) for per-channel, or 32, 64, 128; found {g}"
        )),
    }
}

/// An override value: `"int8"` (inheriting the default group size, or the
/// format's fixed one) or `{"format": "int8", "group_size": 0}`.
fn parse_override(v: &Value, default_group: u32) -> std::result::Result<MmFormat, String> {
    let (name, group) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            o.get("format")
                .and_then(Value::as_str)
                .ok_or("an override object needs a string 'format'")?,
            o.get("group_size").map(parse_group).transpose()?,
        ),
        _ => return Err(format!("expected a format name or object, found {v}")),
    };
    let kind = MmKind::parse(name).map_err(|e| e.to_string())?;
    let group = group.unwrap_or_else(|| kind.fixed_group().unwrap_or(default_group));
    MmFormat::new(kind, group).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "format_version": 1,
        "format": "int4",
        "bits": 4,
        "group_size": 128,
        "method": "gptq",
        "overrides": {
            "model.layers.0.mlp.down_proj.weight": "int8",
            "model\\.layers\\.\\d+\\.self_attn\\.v_proj\\.weight": {"format": "int4-asym", "group_size": -1},
            ".*\\.mlp\\.gate_proj\\.weight": "mxfp4"
        },
        "unquantized": ["lm_head.weight", "model.embed_tokens.weight"]
    }"#;

    #[test]
    fn parse_and_resolve() {
        let c = QuantizationConfig::from_json(EXAMPLE).unwrap();
        assert_eq!(c.method, QuantMethod::Gptq);
        let q = |n: &str| c.tensor_quant(n).unwrap();
        let f = |s: &str, g| TensorQuant::Quantized(MmFormat::parse(s, g).unwrap());
        assert_eq!(q("model.layers.3.self_attn.q_proj.weight"), f("int4", 128));
        assert_eq!(q("model.layers.0.mlp.down_proj.weight"), f("int8", 128));
        assert_eq!(q("model.layers.1.mlp.down_proj.weight"), f("int4", 128));
        assert_eq!(
            q("model.layers.12.self_attn.v_proj.weight"),
            f("int4-asym", 0)
        );
        assert_eq!(q("model.layers.2.mlp.gate_proj.weight"), f("mxfp4", 32));
        assert_eq!(q("lm_head.weight"), TensorQuant::Unquantized);
        // Patterns match whole names only.
        assert_eq!(q("x.lm_head.weight"), f("int4", 128));
    }

    #[test]
    fn round_trip_json() {
        let c = QuantizationConfig::from_json(EXAMPLE).unwrap();
        let d = QuantizationConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(c.format, d.format);
        assert_eq!(c.overrides().collect::<Vec<_>>().len(), 3);
        let mut a: Vec<_> = c.overrides().collect();
        let mut b: Vec<_> = d.overrides().collect();
        a.sort_by_key(|x| x.0.to_string());
        b.sort_by_key(|x| x.0.to_string());
        assert_eq!(a, b);
        assert_eq!(
            c.unquantized().collect::<Vec<_>>(),
            d.unquantized().collect::<Vec<_>>()
        );
    }

    #[test]
    fn exact_beats_regex_and_conflicts_error() {
        let int8 = MmFormat::parse("int8", 0).unwrap();
        let c = QuantizationConfig::new(MmFormat::parse("int4", 32).unwrap(), QuantMethod::Rtn)
            .unwrap()
            .with_override(".*proj.weight", int8)
            .unwrap()
            .with_unquantized("a.q_proj.weight")
            .unwrap();
        assert_eq!(
            c.tensor_quant("a.q_proj.weight").unwrap(),
            TensorQuant::Unquantized
        );
        assert_eq!(
            c.tensor_quant("a.k_proj.weight").unwrap(),
            TensorQuant::Quantized(int8)
        );
        let c = c.with_unquantized("a\\.k_.*").unwrap();
        let e = c.tensor_quant("a.k_proj.weight").unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
    }

    #[test]
    fn errors_are_clear() {
        let bad = |s: &str, needle: &str| {
            let e = QuantizationConfig::from_json(s).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} lacks {needle}");
        };
        bad(
            r#"{"format_version": 2, "format": "int4", "group_size": 32}"#,
            "format_version 2",
        );
        bad(
            r#"{"format_version": 1, "format": "int5", "group_size": 32}"#,
            "int4-asym",
        );
        bad(
            r#"{"format_version": 1, "format": "int4", "group_size": 48}"#,
            "48",
        );
        bad(r#"{"format_version": 1, "format": "int4"}"#, "group_size");
        bad(
            r#"{"format_version": 1, "format": "int4", "bits": 8, "group_size": 32}"#,
            "bits",
        );
        bad(
            r#"{"format_version": 1, "format": "int4", "group_size": 32, "method": "awq"}"#,
            "awq",
        );
        bad(
            r#"{"format_version": 1, "format": "int4", "group_size": 32, "overrides": {"(": "int8"}}"#,
            "pattern",
        );
        bad(
            r#"{"format_version": 1, "format": "int4", "group_size": 32, "overrides": {"a": "mxfp4x"}}"#,
            "override 'a'",
        );
        // mxfp4 needs no group_size.
        let c =
            QuantizationConfig::from_json(r#"{"format_version": 1, "format": "mxfp4"}"#).unwrap();
        assert_eq!(c.format.group, 32);
    }
}
