//! Kernel sources and their variants.
//!
//! A kernel is a WGSL file of `shaders/` and an entry point; a variant
//! fills the file's `{{NAME}}` slots (workgroup size, element types, the
//! weight format's load functions) by plain text substitution, after the
//! tier's prelude (`prelude_t0.wgsl` or `prelude_t1.wgsl`: reductions,
//! the f16 conversions). Every variant any op can ask for is listed by
//! [`all`], which the tests translate with naga to MSL (Metal) and SPIR-V
//! (Vulkan) for every tier.

use mm_core::{Error, Result};

use crate::runtime::Tier;

/// A kernel file and entry point with its slot values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variant {
    pub file: &'static str,
    pub entry: &'static str,
    pub vars: Vec<(&'static str, String)>,
}

impl Variant {
    pub fn new(file: &'static str, entry: &'static str) -> Self {
        Self {
            file,
            entry,
            vars: Vec::new(),
        }
    }

    /// Sets slot `name` to `value`.
    pub fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.vars.push((name, value.to_string()));
        self
    }

    /// The cache key: file, entry and every slot.
    pub fn key(&self) -> String {
        let mut k = format!("{}:{}", self.file, self.entry);
        for (n, v) in &self.vars {
            k.push_str(&format!(";{n}={}", v.replace('\n', " ")));
        }
        k
    }
}

/// The text of a kernel file.
pub fn source(file: &str) -> Result<&'static str> {
    Ok(match file {
        "activation" => include_str!("../shaders/activation.wgsl"),
        "attention" => include_str!("../shaders/attention.wgsl"),
        "concat_cols" => include_str!("../shaders/concat_cols.wgsl"),
        "embedding" => include_str!("../shaders/embedding.wgsl"),
        "gather_kv" => include_str!("../shaders/gather_kv.wgsl"),
        "head_matmul" => include_str!("../shaders/head_matmul.wgsl"),
        "matmul" => include_str!("../shaders/matmul.wgsl"),
        "matvec" => include_str!("../shaders/matvec.wgsl"),
        "gemm" => include_str!("../shaders/gemm.wgsl"),
        "moe" => include_str!("../shaders/moe.wgsl"),
        "moe_combine" => include_str!("../shaders/moe_combine.wgsl"),
        "rms_norm" => include_str!("../shaders/rms_norm.wgsl"),
        "rope" => include_str!("../shaders/rope.wgsl"),
        "sample" => include_str!("../shaders/sample.wgsl"),
        "slice_cols" => include_str!("../shaders/slice_cols.wgsl"),
        "trellis" => include_str!("../shaders/trellis.wgsl"),
        "write_kv" => include_str!("../shaders/write_kv.wgsl"),
        other => return Err(Error::Other(format!("wgpu: no kernel file {other:?}"))),
    })
}

fn prelude(tier: Tier) -> &'static str {
    match tier {
        Tier::T0 => include_str!("../shaders/prelude_t0.wgsl"),
        Tier::T1 => include_str!("../shaders/prelude_t1.wgsl"),
    }
}

/// The complete WGSL of `v` for `tier`. Slots `SG` and `SG_INIT` (the
/// subgroup builtins an entry point takes and stores) are filled per
/// tier; a slot left unfilled is an error naming it.
pub fn render(v: &Variant, tier: Tier) -> Result<String> {
    let mut text = format!("{}\n{}", prelude(tier), source(v.file)?);
    let (sg, sg_init) = match tier {
        Tier::T0 => ("", ""),
        Tier::T1 => (
            "@builtin(subgroup_invocation_id) sg_lane_: u32, \
             @builtin(subgroup_id) sg_id_: u32, @builtin(num_subgroups) sg_count_: u32,",
            "sg_lane = sg_lane_; sg_id = sg_id_; sg_count = sg_count_;",
        ),
    };
    // Slot values may hold slots of their own (a weight format's
    // functions name the kernel's workgroup size): substitute until none
    // is left, a few rounds at most.
    for _ in 0..4 {
        for (name, value) in v
            .vars
            .iter()
            .map(|(n, v)| (*n, v.as_str()))
            .chain([("SG", sg), ("SG_INIT", sg_init)])
        {
            text = text.replace(&format!("{{{{{name}}}}}"), value);
        }
    }
    if let Some(at) = text.find("{{") {
        let name: String = text[at + 2..].chars().take_while(|c| *c != '}').collect();
        return Err(Error::Other(format!(
            "wgpu kernel {}: slot {{{{{name}}}}} has no value",
            v.key()
        )));
    }
    Ok(text)
}

/// Every variant the ops of this backend may build.
pub fn all() -> Vec<Variant> {
    let mut v = Vec::new();
    v.extend(crate::ops::activation::variants());
    v.extend(crate::ops::attention::variants());
    v.extend(crate::ops::concat_cols::variants());
    v.extend(crate::ops::embedding::variants());
    v.extend(crate::ops::gather_kv::variants());
    v.extend(crate::ops::head_matmul::variants());
    v.extend(crate::ops::matmul::variants());
    v.extend(crate::ops::moe::variants());
    v.extend(crate::ops::rms_norm::variants());
    v.extend(crate::ops::rope::variants());
    v.extend(crate::ops::sample::variants());
    v.extend(crate::ops::slice_cols::variants());
    v.extend(crate::ops::trellis::variants());
    v.extend(crate::ops::write_kv::variants());
    v
}
