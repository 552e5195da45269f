//! `info`: what a model file holds.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::args::InfoArgs;
use crate::load::open;

pub fn run(a: InfoArgs) -> Result<()> {
    let (path, src) = open(&a.model)?;
    let c = src.config();
    println!("path:              {}", path.display());
    println!("architecture:      {:?}", c.arch);
    println!("layers:            {}", c.num_layers);
    println!("hidden size:       {}", c.hidden_size);
    println!("intermediate size: {}", c.intermediate_size);
    println!(
        "heads / kv heads:  {} / {} (head_dim {})",
        c.num_heads, c.num_kv_heads, c.head_dim
    );
    if let Some(m) = &c.mla {
        println!(
            "latent attention:  q_lora {:?}, kv_lora {}, qk {} + {} rope, v {}, interleaved RoPE {}",
            m.q_lora_rank,
            m.kv_lora_rank,
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim,
            m.rope_interleave
        );
    }
    let (kw, vw) = c.kv_widths();
    println!(
        "KV cache:          {} values per token and layer, {} bytes per token in f16",
        kw + vw,
        c.num_layers * (kw + vw) * 2
    );
    println!("vocab size:        {}", c.vocab_size);
    println!("context length:    {}", c.max_position_embeddings);
    println!(
        "rope:              theta {} scaling {:?}",
        c.rope_theta, c.rope_scaling
    );
    println!("tied embeddings:   {}", c.tie_word_embeddings);
    if let Some(r) = c.rotary_dim {
        println!("rotary dims:       {r} of {} per head", c.head_dim);
    }
    if let Some(m) = &c.moe {
        let sparse = m.sparse_layers.iter().filter(|s| **s).count();
        println!(
            "experts:           {} routed (top-{}, width {}), {} shared; {sparse} of {} layers sparse",
            m.num_experts, m.experts_per_token, m.expert_intermediate_size, m.shared_experts, c.num_layers
        );
        println!(
            "routing:           {:?}{}, groups {} (top {}), renormalised {}, scaling {}",
            m.scoring,
            if m.correction_bias {
                " + correction bias"
            } else {
                ""
            },
            m.n_group,
            m.topk_group,
            m.norm_topk_prob,
            m.routed_scaling_factor
        );
    }
    if let Some(q) = src.quantization() {
        println!(
            "quantization:      {} ({}), {} override(s), {} unquantized weight(s)",
            mm_formats::mm_format_label(q.format),
            q.method.name(),
            q.overrides().count(),
            q.unquantized().count()
        );
    }
    let tensors = src.describe();
    let params: usize = tensors.iter().map(|t| t.2.iter().product::<usize>()).sum();
    println!(
        "parameters:        {:.1} M in {} tensors",
        params as f64 / 1e6,
        tensors.len()
    );
    let mut types: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tensors {
        *types.entry(t.1.clone()).or_default() += 1;
    }
    let types: Vec<String> = types.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("tensor types:      {}", types.join(", "));
    match mm_engine::tokenizer::load_for(&path, src.as_ref()) {
        Ok(t) => {
            println!(
                "tokenizer:         {} tokens, bos {:?}, eos {:?}",
                t.vocab_size(),
                t.bos_id(),
                t.eos_ids()
            );
            println!(
                "chat template:     {}",
                if t.chat_template().is_some() {
                    "present"
                } else {
                    "absent"
                }
            );
        }
        Err(e) => println!("tokenizer:         unavailable ({e})"),
    }
    if a.tensors {
        for (name, fmt, shape) in &tensors {
            println!("  {name:50} {fmt:16} {shape:?}");
        }
    }
    Ok(())
}
