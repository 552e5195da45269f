// Weight loads, the quantized GPU layout (mm_quant's gpu_layout: every
// GGUF and metal-marlin format): per group of p.group columns a scale s
// and offset o (slot PARAM decodes the layout's parameter storage), and
// w = s·lut[code] + o; rows of p.kp codes (a multiple of 32). Slot CODES
// reads the codes: 4-bit (w_q4.wgsl) or 8-bit (w_q8.wgsl).
@group(0) @binding(8) var<storage, read> wq: array<u32>;
@group(0) @binding(9) var<storage, read> wpar: array<u32>;
@group(0) @binding(10) var<storage, read> wlut: array<f32>;

fn wparam(g: u32) -> vec2<f32> {
    {{PARAM}}
}

{{CODES}}
