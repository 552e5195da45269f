//! HF tensor names ↔ GGUF tensor names (llama.cpp's `gguf-py/gguf/
//! constants.py` and `tensor_mapping.py`).
//!
//! Most tensors are one GGUF tensor under another name ([`LAYER_MAP`],
//! [`GLOBAL_MAP`]). Two kinds are not:
//! - routed experts: HF stores one matrix per expert and projection
//!   (`model.layers.N.mlp.experts.E.gate_proj.weight`; Mixtral
//!   `block_sparse_moe.experts.E.w1`, `w3` up, `w2` down); llama.cpp merges
//!   them into `blk.N.ffn_{gate,up,down}_exps.weight` of shape
//!   `[experts, rows, cols]` (gate and up into one `ffn_gate_up_exps` with
//!   `--fuse-gate-up-exps`), and converters before 2024 wrote
//!   `blk.N.ffn_{gate,up,down}.E.weight`, one per expert ([`Place::Expert`]);
//! - multi-head latent attention's `kv_b_proj`: `blk.N.attn_kv_b.weight`,
//!   or, from current converters, split into `attn_k_b` and `attn_v_b`
//!   ([`Place::KvB`]).
//!
//! One name depends on the architecture: `glm4moe` files hold the norm
//! before the feed-forward (HF `post_attention_layernorm`) as
//! `post_attention_norm`, not `ffn_norm`.

use crate::Arch;

/// Per-layer tensors: HF module path, GGUF module name. The router has two
/// HF names (Mixtral's first); GGUF → HF picks by architecture.
const LAYER_MAP: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("self_attn.q_a_proj", "attn_q_a"),
    ("self_attn.q_a_layernorm", "attn_q_a_norm"),
    ("self_attn.q_b_proj", "attn_q_b"),
    ("self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"),
    ("self_attn.kv_a_layernorm", "attn_kv_a_norm"),
    // GGUF → HF only: HF → GGUF is Place::KvB (the split form too).
    ("self_attn.kv_b_proj", "attn_kv_b"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    ("mlp.shared_experts.gate_proj", "ffn_gate_shexp"),
    ("mlp.shared_experts.up_proj", "ffn_up_shexp"),
    ("mlp.shared_experts.down_proj", "ffn_down_shexp"),
    ("block_sparse_moe.gate", "ffn_gate_inp"),
    ("mlp.gate", "ffn_gate_inp"),
];

/// Whole-model tensors: HF name, GGUF name.
const GLOBAL_MAP: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// The router's correction bias: HF suffix (after `model.layers.N.`), GGUF
/// suffix (after `blk.N.`).
const CORRECTION_BIAS: (&str, &str) = ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias");

/// Which head count a permuted tensor was permuted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Permuted {
    Q,
    K,
}

/// One of a routed expert's projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proj {
    Gate,
    Up,
    Down,
}

impl Proj {
    pub(super) const ALL: [Proj; 3] = [Proj::Gate, Proj::Up, Proj::Down];

    /// The GGUF word (`ffn_{gate}_exps`).
    pub(super) fn gguf(self) -> &'static str {
        match self {
            Proj::Gate => "gate",
            Proj::Up => "up",
            Proj::Down => "down",
        }
    }

    /// The HF module name: Mixtral's `w1`/`w3`/`w2`, else `{gate,up,down}_proj`.
    fn hf(self, mixtral: bool) -> &'static str {
        match (self, mixtral) {
            (Proj::Gate, true) => "w1",
            (Proj::Up, true) => "w3",
            (Proj::Down, true) => "w2",
            (Proj::Gate, false) => "gate_proj",
            (Proj::Up, false) => "up_proj",
            (Proj::Down, false) => "down_proj",
        }
    }
}

/// Where an HF tensor is found in a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// One GGUF tensor, its rows permuted for Q or K in `llama` files.
    Tensor(String, Option<Permuted>),
    /// Projection `proj` of routed expert `expert` in layer `layer`.
    Expert {
        layer: usize,
        expert: usize,
        proj: Proj,
    },
    /// `kv_b_proj` of layer `layer`.
    KvB { layer: usize },
}

fn parse_index(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// The GGUF module name of LAYER_MAP's `g` in a file of `arch`.
fn arch_module(g: &'static str, arch: Arch) -> &'static str {
    match (g, arch) {
        ("ffn_norm", Arch::Glm4Moe) => "post_attention_norm",
        _ => g,
    }
}

/// LAYER_MAP's module name for GGUF module `g` of a file of `arch`.
fn map_module(g: &str, arch: Arch) -> &str {
    match (g, arch) {
        ("post_attention_norm", Arch::Glm4Moe) => "ffn_norm",
        ("ffn_norm", Arch::Glm4Moe) => "",
        _ => g,
    }
}

/// Where HF tensor `hf` is in a GGUF file of `arch` (None: no GGUF name).
pub(super) fn place(hf: &str, arch: Arch) -> Option<Place> {
    if let Some((_, g)) = GLOBAL_MAP.iter().find(|(h, _)| *h == hf) {
        return Some(Place::Tensor(g.to_string(), None));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = parse_index(layer)?;
    if rest == CORRECTION_BIAS.0 {
        return Some(Place::Tensor(
            format!("blk.{layer}.{}", CORRECTION_BIAS.1),
            None,
        ));
    }
    if rest == "self_attn.kv_b_proj.weight" {
        return Some(Place::KvB { layer });
    }
    if let Some(p) = expert_place(layer, rest) {
        return Some(p);
    }
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (_, g) = LAYER_MAP.iter().find(|(h, _)| *h == module)?;
    let perm = match *g {
        "attn_q" => Some(Permuted::Q),
        "attn_k" => Some(Permuted::K),
        _ => None,
    };
    Some(Place::Tensor(
        format!("blk.{layer}.{}.{kind}", arch_module(g, arch)),
        perm,
    ))
}

/// `mlp.experts.E.gate_proj.weight` or `block_sparse_moe.experts.E.w1.weight`.
fn expert_place(layer: usize, rest: &str) -> Option<Place> {
    let (mixtral, rest) = match rest.strip_prefix("mlp.experts.") {
        Some(r) => (false, r),
        None => (true, rest.strip_prefix("block_sparse_moe.experts.")?),
    };
    let (expert, rest) = rest.split_once('.')?;
    let module = rest.strip_suffix(".weight")?;
    let proj = Proj::ALL.into_iter().find(|p| p.hf(mixtral) == module)?;
    Some(Place::Expert {
        layer,
        expert: parse_index(expert)?,
        proj,
    })
}

/// HF name → GGUF name (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`), for the tensors that are one GGUF tensor
/// (not routed experts, not `kv_b_proj`).
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    match place(hf, Arch::Llama)? {
        Place::Tensor(g, _) => Some(g),
        _ => None,
    }
}

/// GGUF name → HF name, for the tensors [`hf_to_gguf_name`] maps and the
/// per-expert tensors of older converters (`blk.1.ffn_up.3.weight`); the
/// router and experts are named as Qwen3-MoE and DeepSeek name them.
pub fn gguf_to_hf_name(g: &str) -> Option<String> {
    gguf_to_hf(g, Arch::Llama)
}

/// [`gguf_to_hf_name`] for a file of `arch` (Mixtral's names for the
/// router and experts, GLM-4-MoE's norm).
pub(super) fn gguf_to_hf(g: &str, arch: Arch) -> Option<String> {
    let mixtral = arch == Arch::Mixtral;
    if let Some((h, _)) = GLOBAL_MAP.iter().find(|(_, gg)| *gg == g) {
        return Some(h.to_string());
    }
    let rest = g.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = parse_index(layer)?;
    if rest == CORRECTION_BIAS.1 {
        return Some(format!("model.layers.{layer}.{}", CORRECTION_BIAS.0));
    }
    let (module, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    // Older converters' per-expert tensors: `ffn_gate.3`.
    if let Some((m, e)) = module.split_once('.') {
        let proj = Proj::ALL
            .into_iter()
            .find(|p| m.strip_prefix("ffn_") == Some(p.gguf()))?;
        let e = parse_index(e)?;
        return (kind == "weight").then(|| expert_name(layer, e, proj, mixtral));
    }
    if module == "ffn_gate_inp" {
        return Some(router_name(layer, kind, mixtral));
    }
    let module = map_module(module, arch);
    let (h, _) = LAYER_MAP.iter().find(|(_, gg)| *gg == module)?;
    Some(format!("model.layers.{layer}.{h}.{kind}"))
}

/// The HF name of expert `e`'s projection `p` in layer `l`.
pub(super) fn expert_name(l: usize, e: usize, p: Proj, mixtral: bool) -> String {
    let block = if mixtral { "block_sparse_moe" } else { "mlp" };
    format!(
        "model.layers.{l}.{block}.experts.{e}.{}.weight",
        p.hf(mixtral)
    )
}

fn router_name(l: usize, kind: &str, mixtral: bool) -> String {
    let block = if mixtral { "block_sparse_moe" } else { "mlp" };
    format!("model.layers.{l}.{block}.gate.{kind}")
}

/// GGUF names of the merged experts: `blk.L.ffn_{p}_exps.weight` →
/// `(L, Some(p))`, `blk.L.ffn_gate_up_exps.weight` → `(L, None)`.
pub(super) fn merged_experts(g: &str) -> Option<(usize, Option<Proj>)> {
    let rest = g.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = parse_index(layer)?;
    let module = rest.strip_suffix("_exps.weight")?.strip_prefix("ffn_")?;
    if module == "gate_up" {
        return Some((layer, None));
    }
    let p = Proj::ALL.into_iter().find(|p| p.gguf() == module)?;
    Some((layer, Some(p)))
}

/// `blk.L.attn_k_b.weight` → `(L, true)`, `attn_v_b` → `(L, false)`.
pub(super) fn split_kv_b(g: &str) -> Option<(usize, bool)> {
    let rest = g.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = parse_index(layer)?;
    match rest {
        "attn_k_b.weight" => Some((layer, true)),
        "attn_v_b.weight" => Some((layer, false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moe_and_mla_names_map_both_ways() {
        for (hf, g) in [
            (
                "model.layers.2.mlp.gate.weight",
                "blk.2.ffn_gate_inp.weight",
            ),
            (
                "model.layers.2.mlp.gate.e_score_correction_bias",
                "blk.2.exp_probs_b.bias",
            ),
            (
                "model.layers.2.mlp.shared_experts.down_proj.weight",
                "blk.2.ffn_down_shexp.weight",
            ),
            (
                "model.layers.0.self_attn.kv_a_proj_with_mqa.bias",
                "blk.0.attn_kv_a_mqa.bias",
            ),
            (
                "model.layers.0.self_attn.q_a_layernorm.weight",
                "blk.0.attn_q_a_norm.weight",
            ),
        ] {
            assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(g), "{hf}");
            assert_eq!(gguf_to_hf_name(g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(
            gguf_to_hf("blk.1.ffn_gate_inp.weight", Arch::Mixtral).as_deref(),
            Some("model.layers.1.block_sparse_moe.gate.weight")
        );
        assert_eq!(
            hf_to_gguf_name("model.layers.1.block_sparse_moe.gate.weight").as_deref(),
            Some("blk.1.ffn_gate_inp.weight")
        );
        let e = |layer, expert, proj| {
            Some(Place::Expert {
                layer,
                expert,
                proj,
            })
        };
        assert_eq!(
            place(
                "model.layers.1.mlp.experts.7.up_proj.weight",
                Arch::Qwen3Moe
            ),
            e(1, 7, Proj::Up)
        );
        assert_eq!(
            place(
                "model.layers.3.block_sparse_moe.experts.0.w2.weight",
                Arch::Qwen3Moe
            ),
            e(3, 0, Proj::Down)
        );
        for bad in [
            "model.layers.1.mlp.experts.7.w1.weight",
            "model.layers.1.block_sparse_moe.experts.7.gate_proj.weight",
            "model.layers.1.mlp.experts.07.up_proj.weight",
            "model.layers.1.mlp.experts.x.up_proj.weight",
            "model.layers.1.mlp.experts.1.up_proj.bias",
        ] {
            assert_eq!(place(bad, Arch::Mixtral), None, "{bad}");
        }
        assert_eq!(
            place("model.layers.4.self_attn.kv_b_proj.weight", Arch::Qwen3Moe),
            Some(Place::KvB { layer: 4 })
        );
        assert_eq!(
            gguf_to_hf("blk.1.ffn_up.3.weight", Arch::Mixtral).as_deref(),
            Some("model.layers.1.block_sparse_moe.experts.3.w3.weight")
        );
        assert_eq!(
            gguf_to_hf_name("blk.1.ffn_down.0.weight").as_deref(),
            Some("model.layers.1.mlp.experts.0.down_proj.weight")
        );
        assert_eq!(gguf_to_hf_name("blk.1.ffn_down.0.bias"), None);
        assert_eq!(gguf_to_hf_name("blk.1.ffn_nope.0.weight"), None);
        assert_eq!(
            merged_experts("blk.12.ffn_gate_exps.weight"),
            Some((12, Some(Proj::Gate)))
        );
        assert_eq!(
            merged_experts("blk.0.ffn_gate_up_exps.weight"),
            Some((0, None))
        );
        assert_eq!(merged_experts("blk.0.ffn_gate.weight"), None);
        assert_eq!(split_kv_b("blk.5.attn_v_b.weight"), Some((5, false)));
        assert_eq!(
            gguf_to_hf_name("blk.5.attn_kv_b.weight").as_deref(),
            Some("model.layers.5.self_attn.kv_b_proj.weight")
        );
        // GLM-4-MoE's pre-feed-forward norm.
        let norm = "model.layers.2.post_attention_layernorm.weight";
        assert_eq!(
            place(norm, Arch::Glm4Moe),
            Some(Place::Tensor(
                "blk.2.post_attention_norm.weight".into(),
                None
            ))
        );
        assert_eq!(
            gguf_to_hf("blk.2.post_attention_norm.weight", Arch::Glm4Moe).as_deref(),
            Some(norm)
        );
        assert_eq!(gguf_to_hf("blk.2.ffn_norm.weight", Arch::Glm4Moe), None);
        assert_eq!(
            gguf_to_hf("blk.2.post_attention_norm.weight", Arch::Qwen3),
            None
        );
    }
}
