//! What each tensor becomes: targets, `--keep` rules and recipes.
//!
//! A tensor's target starts from its kind (a 2-D `*_proj.weight` gets the
//! default format; other 2-D weights — embeddings, `lm_head` — keep a float
//! dtype; 1-D tensors — norms, biases — become F32), then every matching
//! rule is applied in order, recipe rules first and `--keep` rules after
//! them, the last match winning. docs/QUANTIZE.md explains the recipes.

use std::fmt;

use mm_core::weight::{MmFormat, MmKind, MM_FORMAT_NAMES};
use mm_core::{Error, Result};
use mm_formats::mm_format_label;
use regex::Regex;

/// Default group size when none is given.
pub const DEFAULT_GROUP: u32 = 128;

/// A float dtype for a tensor kept unquantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dense {
    F32,
    F16,
    BF16,
    /// The source's own float dtype; F16 for a GGML block-quantized source.
    Source,
}

/// What a tensor is stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Quant(MmFormat),
    Dense(Dense),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Quant(m) => f.write_str(&mm_format_label(*m)),
            Target::Dense(Dense::F32) => f.write_str("f32"),
            Target::Dense(Dense::F16) => f.write_str("f16"),
            Target::Dense(Dense::BF16) => f.write_str("bf16"),
            Target::Dense(Dense::Source) => f.write_str("source dtype"),
        }
    }
}

/// Parses a group: `128`, `g128`, `0`, `per-channel`.
fn parse_group(s: &str) -> Option<u32> {
    let s = s.trim();
    if s == "per-channel" || s == "pc" {
        return Some(0);
    }
    s.strip_prefix('g').unwrap_or(s).parse().ok()
}

/// Parses a target: `f16`, `bf16`, `f32`, or a quantized format with an
/// optional group (`int8`, `int8/g64`, `int4/per-channel`); a format
/// without a group takes `default_group` (or its fixed group, for mxfp4).
pub fn parse_target(s: &str, default_group: u32) -> Result<Target> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "f16" | "fp16" | "float16" => return Ok(Target::Dense(Dense::F16)),
        "bf16" | "bfloat16" => return Ok(Target::Dense(Dense::BF16)),
        "f32" | "fp32" | "float32" => return Ok(Target::Dense(Dense::F32)),
        _ => {}
    }
    let (name, group) = match t.split_once('/') {
        Some((n, g)) => {
            let g = parse_group(g).ok_or_else(|| {
                Error::Invalid(format!(
                    "format '{s}': '{g}' is not a group size (write e.g. int8/g64, int4/g128 or int8/per-channel)"
                ))
            })?;
            (n, Some(g))
        }
        None => (t.as_str(), None),
    };
    let kind = MmKind::parse(name).map_err(|_| {
        Error::Invalid(format!(
            "unknown format '{s}' (valid: f16, bf16, f32 to keep a tensor unquantized, or {}; optionally with a group, e.g. int8/g64)",
            MM_FORMAT_NAMES[..16].join(", ")
        ))
    })?;
    let group = group.unwrap_or_else(|| kind.fixed_group().unwrap_or(default_group));
    Ok(Target::Quant(MmFormat::new(kind, group).map_err(|e| {
        Error::Invalid(format!("format '{s}': {e}"))
    })?))
}

/// A rule: tensors whose name the regex matches (anywhere, as `grep -E`
/// does; anchor with `^…$`) get `target`.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The text the rule was given as (for messages and the config).
    pub source: String,
    pub re: Regex,
    pub target: Target,
    /// The rule names its group (`int8/g64`): rows it does not divide are
    /// an error rather than a reason to fall back to a smaller group.
    pub explicit_group: bool,
}

impl Rule {
    pub fn new(pattern: &str, target: Target, source: String) -> Result<Self> {
        let re = Regex::new(pattern)
            .map_err(|e| Error::Invalid(format!("--keep '{source}': invalid regex: {e}")))?;
        Ok(Self {
            source,
            re,
            target,
            explicit_group: false,
        })
    }

    /// Parses `REGEX=FORMAT` (split at the last `=`).
    pub fn parse_keep(s: &str, default_group: u32) -> Result<Self> {
        let (pat, fmt) = s.rsplit_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "--keep '{s}': expected REGEX=FORMAT, e.g. --keep 'lm_head'=f16 or --keep '.*down_proj.*'=int8"
            ))
        })?;
        if pat.is_empty() {
            return Err(Error::Invalid(format!("--keep '{s}': the regex is empty")));
        }
        let target = parse_target(fmt, default_group)
            .map_err(|e| Error::Invalid(format!("--keep '{s}': {e}")))?;
        let mut r = Self::new(pat, target, s.to_string())?;
        r.explicit_group = fmt.contains('/');
        Ok(r)
    }
}

/// Without a recipe, a tied embedding is also the LM head, the largest
/// matmul of a small model: it is stored int8 g128 (fast integer kernels,
/// 1.06 bytes a weight, KL cost far below the 4-bit layers') instead of in
/// its float dtype. A `--keep` rule overrides it.
pub fn tied_embedding_rule() -> Rule {
    Rule {
        source: "tied embedding (the LM head): int8".into(),
        re: Regex::new(EMBED).expect("the embedding pattern is valid"),
        target: Target::Quant(MmFormat {
            kind: MmKind::IntSym(8),
            group: DEFAULT_GROUP,
        }),
        explicit_group: false,
    }
}

/// Preset mixes of formats ([`Recipe::describe`] says what each holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Speed4bit,
    Balanced5bit,
    Quality8bit,
    Mixed,
}

const EMBED: &str = r"(^|\.)embed_tokens\.weight$";
const LM_HEAD: &str = r"^lm_head\.weight$";

impl Recipe {
    /// Every recipe, in the order the CLI lists them.
    pub const ALL: [Recipe; 4] = [
        Recipe::Speed4bit,
        Recipe::Balanced5bit,
        Recipe::Quality8bit,
        Recipe::Mixed,
    ];

    /// The recipe called `name` ([`Recipe::name`]).
    pub fn from_name(name: &str) -> Option<Recipe> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// What the recipe quantizes to what.
    pub fn describe(self) -> &'static str {
        match self {
            Recipe::Speed4bit => "int4 g128 everywhere; embeddings and lm_head int8 g128",
            Recipe::Balanced5bit => {
                "int4 g64 MLP and q/k; int8 g128 attention v/o, embeddings, lm_head"
            }
            Recipe::Quality8bit => "int8 g128 linear layers; embeddings and lm_head unquantized",
            Recipe::Mixed => {
                "fp8-e4m3 attention, int4 MLP, int8 down_proj in the first and last layers, \
                 int8 embeddings and lm_head"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Recipe::Speed4bit => "speed-4bit",
            Recipe::Balanced5bit => "balanced-5bit",
            Recipe::Quality8bit => "quality-8bit",
            Recipe::Mixed => "mixed",
        }
    }

    fn fmt(kind: MmKind, group: u32) -> MmFormat {
        MmFormat { kind, group }
    }

    /// The default format of the recipe's linear layers.
    pub fn default_format(self) -> MmFormat {
        match self {
            Recipe::Speed4bit | Recipe::Mixed => Self::fmt(MmKind::IntSym(4), 128),
            Recipe::Balanced5bit => Self::fmt(MmKind::IntSym(4), 64),
            Recipe::Quality8bit => Self::fmt(MmKind::IntSym(8), 128),
        }
    }

    /// The recipe's rules for a model of `layers` decoder layers.
    pub fn rules(self, layers: usize) -> Vec<Rule> {
        let int8 = Target::Quant(Self::fmt(MmKind::IntSym(8), 128));
        let rule = |pat: &str, target: Target| Rule {
            source: format!("{}: {pat}", self.name()),
            re: Regex::new(pat).expect("recipe patterns are valid"),
            target,
            explicit_group: false,
        };
        match self {
            Recipe::Speed4bit => vec![rule(EMBED, int8), rule(LM_HEAD, int8)],
            Recipe::Balanced5bit => vec![
                rule(r"\.self_attn\.(v|o)_proj\.weight$", int8),
                rule(EMBED, int8),
                rule(LM_HEAD, int8),
            ],
            Recipe::Quality8bit => vec![
                rule(EMBED, Target::Dense(Dense::Source)),
                rule(LM_HEAD, Target::Dense(Dense::Source)),
            ],
            Recipe::Mixed => {
                let fp8 = Target::Quant(Self::fmt(MmKind::Fp8E4M3, 128));
                let last = layers.saturating_sub(1);
                vec![
                    rule(r"\.self_attn\.(q|k|v|o)_proj\.weight$", fp8),
                    rule(
                        &format!(r"^model\.layers\.({}|{last})\.mlp\.down_proj\.weight$", 0),
                        int8,
                    ),
                    rule(EMBED, int8),
                    rule(LM_HEAD, int8),
                ]
            }
        }
    }
}

/// Whether a tensor is a linear layer's weight, quantized by default:
/// `*_proj.weight`, and Mixtral's experts (`*.experts.N.w1.weight`, `w2`,
/// `w3`). MoE routers (`*.gate.weight`) stay in a float dtype: their
/// logits pick the experts.
pub fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    let mixtral_expert = || {
        let mut parts = name.rsplit('.');
        matches!(parts.next(), Some("weight"))
            && matches!(parts.next(), Some("w1" | "w2" | "w3"))
            && parts.next().is_some_and(|n| n.parse::<usize>().is_ok())
            && parts.next() == Some("experts")
    };
    shape.len() == 2 && (name.ends_with("_proj.weight") || mixtral_expert())
}

/// The target of tensor `name` of `shape`: its default by kind, then every
/// matching rule in order (rules that would quantize a 1-D tensor are
/// skipped: 1-D tensors are never quantized). Returns the target and the
/// indices of the rules that applied.
pub fn resolve(
    name: &str,
    shape: &[usize],
    default: MmFormat,
    rules: &[Rule],
) -> (Target, Vec<usize>) {
    let mut t = if is_linear_weight(name, shape) {
        Target::Quant(default)
    } else if shape.len() >= 2 {
        Target::Dense(Dense::Source)
    } else {
        Target::Dense(Dense::F32)
    };
    let mut hits = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        if !r.re.is_match(name) {
            continue;
        }
        if matches!(r.target, Target::Quant(_)) && shape.len() < 2 {
            continue;
        }
        t = r.target;
        hits.push(i);
    }
    (t, hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str, g: u32) -> Target {
        Target::Quant(MmFormat::parse(s, g).unwrap())
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("f16", 128).unwrap(), Target::Dense(Dense::F16));
        assert_eq!(
            parse_target("BF16", 128).unwrap(),
            Target::Dense(Dense::BF16)
        );
        assert_eq!(parse_target("int8", 64).unwrap(), q("int8", 64));
        assert_eq!(parse_target("int8/g32", 64).unwrap(), q("int8", 32));
        assert_eq!(parse_target("int4/per-channel", 64).unwrap(), q("int4", 0));
        assert_eq!(parse_target("mxfp4", 128).unwrap(), q("mxfp4", 32));
        assert_eq!(parse_target("fp8", 128).unwrap(), q("fp8-e4m3", 128));
        let e = parse_target("int5", 128).unwrap_err().to_string();
        assert!(
            e.contains("int5") && e.contains("f16") && e.contains("nf4"),
            "{e}"
        );
        let e = parse_target("int4/g48", 128).unwrap_err().to_string();
        assert!(e.contains("48"), "{e}");
        let e = parse_target("int4/gx", 128).unwrap_err().to_string();
        assert!(e.contains("group"), "{e}");
        assert!(parse_target("mxfp4/g64", 128).is_err());
    }

    #[test]
    fn keep_rules_parse() {
        let r = Rule::parse_keep("lm_head=f16", 128).unwrap();
        assert!(r.re.is_match("lm_head.weight"));
        assert_eq!(r.target, Target::Dense(Dense::F16));
        let r = Rule::parse_keep("a=b=int8", 128).unwrap();
        assert!(r.re.is_match("xa=by"));
        assert!(Rule::parse_keep("lm_head", 128)
            .unwrap_err()
            .to_string()
            .contains("REGEX=FORMAT"));
        assert!(Rule::parse_keep("(=int8", 128)
            .unwrap_err()
            .to_string()
            .contains("regex"));
        assert!(Rule::parse_keep("=int8", 128).is_err());
    }

    #[test]
    fn resolution_order() {
        let d = MmFormat::parse("int4", 128).unwrap();
        let rules = vec![
            Rule::parse_keep(".*proj.*=int8", 128).unwrap(),
            Rule::parse_keep("down_proj=f16", 128).unwrap(),
            Rule::parse_keep(".*=int8", 128).unwrap(),
        ];
        let sh = [8usize, 128];
        assert_eq!(resolve("x.q_proj.weight", &sh, d, &[]).0, q("int4", 128));
        let expert = "model.layers.0.block_sparse_moe.experts.7.w2.weight";
        assert_eq!(resolve(expert, &sh, d, &[]).0, q("int4", 128));
        let router = "model.layers.0.block_sparse_moe.gate.weight";
        assert_eq!(resolve(router, &sh, d, &[]).0, Target::Dense(Dense::Source));
        assert!(!is_linear_weight("model.layers.0.mlp.w2.weight", &sh));
        assert_eq!(
            resolve("model.embed_tokens.weight", &sh, d, &[]).0,
            Target::Dense(Dense::Source)
        );
        assert_eq!(
            resolve("x.norm.weight", &[8], d, &[]).0,
            Target::Dense(Dense::F32)
        );
        // Last match wins; quantizing rules skip 1-D tensors.
        assert_eq!(
            resolve("x.down_proj.weight", &sh, d, &rules[..2]).0,
            Target::Dense(Dense::F16)
        );
        assert_eq!(
            resolve("x.down_proj.weight", &sh, d, &rules).0,
            q("int8", 128)
        );
        let (t, hits) = resolve("x.norm.weight", &[8], d, &rules);
        assert_eq!(t, Target::Dense(Dense::F32));
        assert!(hits.is_empty());
    }

    #[test]
    fn recipes() {
        let sh = [8usize, 128];
        for r in [
            Recipe::Speed4bit,
            Recipe::Balanced5bit,
            Recipe::Quality8bit,
            Recipe::Mixed,
        ] {
            let rules = r.rules(4);
            let d = r.default_format();
            let t = |n: &str| resolve(n, &sh, d, &rules).0;
            let emb = t("model.embed_tokens.weight");
            let head = t("lm_head.weight");
            assert_eq!(emb, head, "{r:?}");
            match r {
                Recipe::Speed4bit => {
                    assert_eq!(t("model.layers.0.self_attn.v_proj.weight"), q("int4", 128));
                    assert_eq!(emb, q("int8", 128));
                }
                Recipe::Balanced5bit => {
                    assert_eq!(t("model.layers.0.self_attn.q_proj.weight"), q("int4", 64));
                    assert_eq!(t("model.layers.0.self_attn.o_proj.weight"), q("int8", 128));
                    assert_eq!(t("model.layers.2.mlp.down_proj.weight"), q("int4", 64));
                }
                Recipe::Quality8bit => {
                    assert_eq!(t("model.layers.1.mlp.up_proj.weight"), q("int8", 128));
                    assert_eq!(emb, Target::Dense(Dense::Source));
                }
                Recipe::Mixed => {
                    assert_eq!(
                        t("model.layers.1.self_attn.k_proj.weight"),
                        q("fp8-e4m3", 128)
                    );
                    assert_eq!(t("model.layers.0.mlp.down_proj.weight"), q("int8", 128));
                    assert_eq!(t("model.layers.3.mlp.down_proj.weight"), q("int8", 128));
                    assert_eq!(t("model.layers.2.mlp.down_proj.weight"), q("int4", 128));
                    assert_eq!(t("model.layers.13.mlp.down_proj.weight"), q("int4", 128));
                    assert_eq!(t("model.layers.2.mlp.gate_proj.weight"), q("int4", 128));
                }
            }
        }
    }
}
