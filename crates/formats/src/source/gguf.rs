//! A GGUF file as a [`WeightSource`]: tensors requested by their HF names
//! ([`super::gguf_names`]) and put into the HF layout
//! ([`super::gguf_layout`]): q/k rows of `llama` files unpermuted, routed
//! experts cut out of llama.cpp's merged tensors (or read from the older
//! per-expert ones), MLA's `kv_b_proj` rebuilt from `attn_k_b`/`attn_v_b`.
//! A tensor the model needs and the file lacks is an error naming the GGUF
//! tensor and the HF name it stands for.

use std::path::Path;

use mm_core::{Error, Result, WeightData};

use super::gguf_layout::{self, KvBShape};
use super::gguf_names::{self, place, Permuted, Place, Proj};
use super::WeightSource;
use crate::{Arch, GgufFile, ModelConfig};

/// A GGUF file under HF tensor names.
pub struct GgufSource {
    file: GgufFile,
    config: ModelConfig,
    /// `llama` GGUFs store q/k rows permuted for interleaved RoPE.
    permuted: bool,
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(GgufFile::open(path)?)
    }

    pub fn from_file(file: GgufFile) -> Result<Self> {
        let config = ModelConfig::from_gguf(&file)?;
        let permuted = file.architecture()? == "llama";
        Ok(GgufSource {
            file,
            config,
            permuted,
        })
    }

    fn mixtral(&self) -> bool {
        self.config.arch == Arch::Mixtral
    }

    fn fail(&self, reason: String) -> Error {
        Error::format(&self.file.path, "GGUF", reason)
    }

    fn missing(&self, gguf: &str, hf: &str) -> Error {
        self.fail(format!(
            "tensor '{gguf}' is missing (the model needs it as '{hf}')"
        ))
    }

    /// A tensor of the file, failing as [`Self::missing`] without it.
    fn get(&self, gguf: &str, hf: &str) -> Result<WeightData> {
        if !self.file.contains(gguf) {
            return Err(self.missing(gguf, hf));
        }
        self.file.tensor(gguf)
    }

    /// Names of the tensors that can hold expert `e`'s `proj` in layer `l`:
    /// merged, fused gate/up (with the half), per expert.
    fn expert_names(l: usize, e: usize, proj: Proj) -> (String, Option<(String, usize)>, String) {
        let p = proj.gguf();
        let fused = match proj {
            Proj::Gate => Some(0),
            Proj::Up => Some(1),
            Proj::Down => None,
        }
        .map(|h| (format!("blk.{l}.ffn_gate_up_exps.weight"), h));
        (
            format!("blk.{l}.ffn_{p}_exps.weight"),
            fused,
            format!("blk.{l}.ffn_{p}.{e}.weight"),
        )
    }

    fn expert(&self, l: usize, e: usize, proj: Proj, hf: &str) -> Result<WeightData> {
        let (merged, fused, single) = Self::expert_names(l, e, proj);
        let cut = |name: &str, half| {
            gguf_layout::expert(&self.file.tensor(name)?, e, half)
                .map_err(|err| self.fail(format!("tensor '{name}' (for '{hf}'): {err}")))
        };
        if self.file.contains(&merged) {
            return cut(&merged, None);
        }
        if let Some((f, half)) = fused.filter(|(f, _)| self.file.contains(f)) {
            return cut(&f, Some(half));
        }
        if self.file.contains(&single) {
            return self.file.tensor(&single);
        }
        Err(self.missing(&merged, hf))
    }

    fn kv_b(&self, l: usize, hf: &str) -> Result<WeightData> {
        let whole = format!("blk.{l}.attn_kv_b.weight");
        if self.file.contains(&whole) {
            return self.file.tensor(&whole);
        }
        let (k, v) = (
            format!("blk.{l}.attn_k_b.weight"),
            format!("blk.{l}.attn_v_b.weight"),
        );
        if !self.file.contains(&k) && !self.file.contains(&v) {
            return Err(self.fail(format!(
                "tensor '{whole}' (or its split form '{k}' and '{v}') is missing (the model needs it as '{hf}')"
            )));
        }
        let (kb, vb) = (self.get(&k, hf)?, self.get(&v, hf)?);
        let shape = self.kv_b_shape()?;
        gguf_layout::kv_b(&kb, &vb, shape)
            .map_err(|e| self.fail(format!("tensors '{k}' and '{v}' (for '{hf}'): {e}")))
    }

    fn kv_b_shape(&self) -> Result<KvBShape> {
        let m = self.config.mla.ok_or_else(|| {
            self.fail("attn_k_b/attn_v_b tensors in a model without latent attention".into())
        })?;
        Ok(KvBShape {
            heads: self.config.num_heads,
            nope: m.qk_nope_head_dim,
            v: m.v_head_dim,
            lora: m.kv_lora_rank,
        })
    }

    /// The HF entries describing GGUF tensor `t`: one per expert for
    /// merged experts, `kv_b_proj` for `attn_k_b` (none for `attn_v_b`
    /// beside it), else its mapped (or own) name.
    fn describe_one(&self, t: &crate::GgufTensorInfo, out: &mut Vec<(String, String, Vec<usize>)>) {
        let fmt = t.format.name().to_string();
        let (arch, mixtral) = (self.config.arch, self.mixtral());
        if let (Some((l, proj)), [experts, rows, cols]) =
            (gguf_names::merged_experts(&t.name), &t.shape[..])
        {
            let (experts, rows, cols) = (*experts, *rows, *cols);
            for e in 0..experts {
                match proj {
                    Some(p) => out.push((
                        gguf_names::expert_name(l, e, p, mixtral),
                        fmt.clone(),
                        vec![rows, cols],
                    )),
                    None => {
                        for p in [Proj::Gate, Proj::Up] {
                            out.push((
                                gguf_names::expert_name(l, e, p, mixtral),
                                fmt.clone(),
                                vec![rows / 2, cols],
                            ));
                        }
                    }
                }
            }
            return;
        }
        if let Some((l, is_k)) = gguf_names::split_kv_b(&t.name) {
            let other = format!("blk.{l}.attn_{}_b.weight", if is_k { "v" } else { "k" });
            let pair = self.file.tensor_info(&other);
            match (pair, self.kv_b_shape(), is_k) {
                (Some(v), Ok(s), true) => {
                    let (f, shape) = gguf_layout::kv_b_format(t.format, v.format, s);
                    let name = format!("model.layers.{l}.self_attn.kv_b_proj.weight");
                    out.push((name, f.name().to_string(), shape));
                    return;
                }
                (Some(_), Ok(_), false) => return,
                _ => {}
            }
        }
        let name = gguf_names::gguf_to_hf(&t.name, arch).unwrap_or_else(|| t.name.clone());
        out.push((name, fmt, t.shape.clone()));
    }
}

impl WeightSource for GgufSource {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn tensor(&self, hf_name: &str) -> Result<WeightData> {
        let Some(p) = place(hf_name, self.config.arch) else {
            // Tensors without an HF name (e.g. rope_freqs.weight) go by
            // their GGUF name, as describe() lists them.
            if self.file.contains(hf_name)
                && gguf_names::gguf_to_hf(hf_name, self.config.arch).is_none()
            {
                return self.file.tensor(hf_name);
            }
            return Err(Error::MissingTensor(hf_name.to_string()));
        };
        let (g, perm) = match p {
            Place::Expert {
                layer,
                expert,
                proj,
            } => return self.expert(layer, expert, proj, hf_name),
            Place::KvB { layer } => return self.kv_b(layer, hf_name),
            Place::Tensor(g, perm) => (g, perm),
        };
        let w = self.get(&g, hf_name)?;
        match perm {
            Some(p) if self.permuted => {
                let heads = match p {
                    Permuted::Q => self.config.num_heads,
                    Permuted::K => self.config.num_kv_heads,
                };
                gguf_layout::unpermute_rows(&w, heads)
                    .map_err(|e| self.fail(format!("tensor '{g}': {e}")))
            }
            _ => Ok(w),
        }
    }

    fn contains(&self, hf_name: &str) -> bool {
        let has = |n: &str| self.file.contains(n);
        match place(hf_name, self.config.arch) {
            Some(Place::Tensor(g, _)) => has(&g),
            Some(Place::Expert {
                layer,
                expert,
                proj,
            }) => {
                let (merged, fused, single) = Self::expert_names(layer, expert, proj);
                let holds = |n: &str| {
                    self.file
                        .tensor_info(n)
                        .is_some_and(|t| t.shape.len() == 3 && expert < t.shape[0])
                };
                holds(&merged) || fused.is_some_and(|(f, _)| holds(&f)) || has(&single)
            }
            Some(Place::KvB { layer }) => {
                has(&format!("blk.{layer}.attn_kv_b.weight"))
                    || (has(&format!("blk.{layer}.attn_k_b.weight"))
                        && has(&format!("blk.{layer}.attn_v_b.weight")))
            }
            None => has(hf_name) && gguf_names::gguf_to_hf(hf_name, self.config.arch).is_none(),
        }
    }

    fn gguf(&self) -> Option<&GgufFile> {
        Some(&self.file)
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.file.path)
    }

    fn describe(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut v = Vec::with_capacity(self.file.tensors.len());
        for t in &self.file.tensors {
            self.describe_one(t, &mut v);
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
