//! The GPTQ quantizer: column-by-column rounding with error feedback through
//! the inverse Hessian, in lazy blocks (Frantar et al. 2022, Algorithm 1, as
//! the reference `fasterquant` implements it).

use mm_core::weight::MmFormat;
use mm_core::{Error, Result, WeightData};
use rayon::prelude::*;

use super::cholesky::inverse_cholesky_upper;
use super::Hessian;
use crate::mm::{pack_codes, GroupQuantizer, QuantizedTensor, ScaleSearch};

/// GPTQ settings (the reference's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqOptions {
    /// Dampening added to the Hessian's diagonal, as a fraction of its mean
    /// (the reference's `damp_percent`, 0.01). When the dampened Hessian is
    /// not positive definite, it is retried ×10 up to three times.
    pub damp_percent: f64,
    /// Columns per lazy-update block (128).
    pub block_size: usize,
    /// Quantize columns in order of decreasing Hessian diagonal ("act
    /// order"). Grouped formats need `static_groups` with it (see
    /// [`gptq_quantize`]).
    pub act_order: bool,
    /// Compute every group's scale (and zero-point) up front from the
    /// original weight instead of when the quantizer reaches the group.
    pub static_groups: bool,
    /// How each group's scale (and zero-point) is chosen: the min/max rule
    /// of round-to-nearest, or the search minimizing the group's error
    /// weighted by the Hessian's diagonal (`mm::search`).
    pub scale_search: ScaleSearch,
    /// After the codes are chosen, re-solve each row's group scales for the
    /// least output error `(w − ŵ)ᵀH(w − ŵ)` with the codes fixed
    /// (`refit.rs`; not MXFP4).
    pub refit_scales: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        Self {
            damp_percent: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
            scale_search: ScaleSearch::MinMax,
            refit_scales: false,
        }
    }
}

/// What a GPTQ run did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqStats {
    /// `Σ (w - ŵ)² / d² / 2` over all weights (`d` the diagonal of the
    /// inverse Hessian's Cholesky factor): the reference's reported loss.
    pub loss: f64,
    /// Dampening used, as a fraction of the mean diagonal (larger than the
    /// requested one when retries were needed).
    pub damp_percent: f64,
    /// Input columns that calibration never activated (`H[i][i] = 0`); their
    /// weights are quantized as zero.
    pub dead_columns: usize,
}

/// GPTQ's handling of columns calibration never activated (`H[i][i] = 0`):
/// their diagonal becomes 1 and their weights 0. Returns the Hessian's
/// matrix, the weight and the dead columns; a negative or non-finite
/// diagonal entry is an error.
pub(crate) fn drop_dead_columns(
    h: &Hessian,
    w: &[f32],
    cols: usize,
) -> std::result::Result<(Vec<f64>, Vec<f32>, Vec<usize>), String> {
    let mut hm = h.matrix().to_vec();
    let mut w = w.to_vec();
    let mut dead = Vec::new();
    for i in 0..cols {
        let d = hm[i * cols + i];
        if !(d >= 0.0 && d.is_finite()) {
            return Err(format!(
                "H[{i}][{i}] = {d}: a Hessian's diagonal must be finite and non-negative"
            ));
        }
        if d == 0.0 {
            hm[i * cols + i] = 1.0;
            dead.push(i);
        }
    }
    if !dead.is_empty() {
        w.par_chunks_mut(cols).for_each(|row| {
            for &i in &dead {
                row[i] = 0.0;
            }
        });
    }
    Ok((hm, w, dead))
}

/// Rows quantized together by one task (they share the lazy-update GEMM).
const CHUNK_ROWS: usize = 32;
/// Dampening retries after the first attempt, each ×10.
const DAMP_RETRIES: u32 = 3;

/// Quantizes a row-major `[rows, cols]` weight (`[out, in]`) into `fmt` with
/// GPTQ against the Hessian `h` of its inputs. See
/// [`gptq_quantize_with_stats`].
pub fn gptq_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    fmt: MmFormat,
    opts: &GptqOptions,
) -> Result<QuantizedTensor> {
    Ok(gptq_quantize_with_stats(w, rows, cols, h, fmt, opts)?.0)
}

/// [`gptq_quantize`], also returning what the run did.
///
/// * Columns never activated (`H[i][i] = 0`) get `H[i][i] = 1` and zero
///   weights, as in the reference.
/// * `H += damp_percent · mean(diag H) · I`; `U` = the upper Cholesky factor
///   of `H⁻¹` (f64). A Hessian that is not positive definite is retried with
///   10×, 100×, 1000× the dampening, then rejected.
/// * Each row is quantized column by column; column `i`'s rounding error
///   `e = (w_i - ŵ_i) / U[i][i]` is subtracted from the later columns as
///   `e · U[i][i+1..]`, eagerly inside a block of `block_size` columns and as
///   one GEMM for the columns after the block (f32, as the reference).
/// * A group's scale and zero-point are [`GroupQuantizer::fit`] of the
///   group's *current* (error-updated) values when the quantizer enters the
///   group — exactly what round-to-nearest would store for those values —
///   or, with `static_groups`, of the original weight's values up front.
///   (The reference fits a group that starts inside a block from values
///   that lack the block's pending updates; with the default 128-column
///   blocks and groups of 32, 64, 128 or per-channel, this only differs for
///   groups of 32 and 64, where this implementation uses the updated values.)
/// * Every code is chosen by the format's own codec under its group's
///   parameters, so the result is an ordinary [`QuantizedTensor`] of `fmt`:
///   with `H = c·I` it is bit-identical to [`quantize_rtn`](crate::quantize_rtn).
///
/// `act_order` processes columns by decreasing `H[i][i]`. The stored layout
/// has groups of consecutive columns and no `g_idx`, so with more than one
/// group per row `act_order` requires `static_groups` (group parameters from
/// the original weight in natural column order, as the reference's
/// `static_groups`); without it this is an error. Per-channel formats have
/// one group per row and accept `act_order` alone.
pub fn gptq_quantize_with_stats(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    fmt: MmFormat,
    opts: &GptqOptions,
) -> Result<(QuantizedTensor, GptqStats)> {
    if let mm_core::weight::MmKind::Trellis(k) = fmt.kind {
        // Trellis formats: BlockLDLQ over tiles (act order and scale rules do not apply).
        let q = crate::trellis::ldlq::quantize_trellis_ldlq(
            w,
            rows,
            cols,
            h,
            k as u32,
            opts.damp_percent,
            crate::mm::quantize::TRELLIS_SEED,
        )?;
        let stats = GptqStats {
            loss: 0.0,
            damp_percent: opts.damp_percent,
            dead_columns: (0..cols).filter(|&i| h.get(i, i) == 0.0).count(),
        };
        return Ok((q.into_quantized(fmt), stats));
    }
    let bad = |e: String| Error::Invalid(format!("GPTQ {fmt}: {e}"));
    let sizes = fmt.part_sizes(rows, cols)?;
    if w.len() != rows * cols {
        return Err(bad(format!(
            "a {rows}x{cols} weight needs {} values, found {}",
            rows * cols,
            w.len()
        )));
    }
    if h.cols() != cols {
        return Err(bad(format!(
            "the Hessian is {0}x{0}, the weight has {cols} input columns",
            h.cols()
        )));
    }
    if h.n_samples() == 0 {
        return Err(bad("the Hessian holds no calibration samples".into()));
    }
    if opts.block_size == 0 {
        return Err(bad("block_size must be at least 1".into()));
    }
    if !(opts.damp_percent >= 0.0 && opts.damp_percent.is_finite()) {
        return Err(bad(format!(
            "damp_percent must be finite and non-negative, not {}",
            opts.damp_percent
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "row {}, column {}: cannot quantize the non-finite value {}",
            i / cols,
            i % cols,
            w[i]
        )));
    }
    let gl = fmt.group_len(cols);
    let groups = fmt.groups_per_row(cols);
    if opts.act_order && !opts.static_groups && groups > 1 {
        return Err(bad(
            "act_order with several groups per row needs static_groups: the metal-marlin \
             layout stores groups of consecutive columns and has no g_idx"
                .into(),
        ));
    }
    let static_groups = opts.static_groups || opts.act_order;

    // Dead columns.
    let (mut hm, mut w, dead) = drop_dead_columns(h, w, cols).map_err(bad)?;

    // The weight in natural order, for the scale refit.
    let w_nat = opts.refit_scales.then(|| w.clone());
    // Each column's error weight for the scale search: E[x²], natural order.
    let diag: Vec<f32> = (0..cols).map(|i| hm[i * cols + i] as f32).collect();
    // Group parameters fixed up front, from the original weight in natural order.
    let mut params = if static_groups {
        fit_groups(&w, cols, fmt, opts.scale_search, &diag)?
    } else {
        let placeholder = GroupQuantizer::fit(fmt.kind, &[0.0])?;
        vec![placeholder; rows * groups]
    };

    // Activation order: permute H and the columns of W.
    let perm = opts.act_order.then(|| {
        let mut p: Vec<usize> = (0..cols).collect();
        p.sort_by(|&a, &b| hm[b * cols + b].total_cmp(&hm[a * cols + a]));
        p
    });
    if let Some(p) = &perm {
        let mut hp = vec![0.0f64; cols * cols];
        hp.par_chunks_mut(cols).enumerate().for_each(|(a, row)| {
            for (b, v) in row.iter_mut().enumerate() {
                *v = hm[p[a] * cols + p[b]];
            }
        });
        hm = hp;
        w.par_chunks_mut(cols).for_each(|row| {
            let orig = row.to_vec();
            for (a, v) in row.iter_mut().enumerate() {
                *v = orig[p[a]];
            }
        });
    }

    // Dampening and the inverse Hessian's upper Cholesky factor.
    let mean_diag = (0..cols).map(|i| hm[i * cols + i]).sum::<f64>() / cols as f64;
    let mut damp = opts.damp_percent;
    let mut tries = 0;
    let u = loop {
        let mut hd = hm.clone();
        for i in 0..cols {
            hd[i * cols + i] += damp * mean_diag;
        }
        match inverse_cholesky_upper(&hd, cols) {
            Ok(u) => break u,
            Err(e) if tries == DAMP_RETRIES => {
                return Err(bad(format!(
                    "the Hessian is not positive definite even with dampening {damp} × its mean \
                     diagonal ({e}); calibrate on more (or more varied) data"
                )))
            }
            Err(_) => {
                tries += 1;
                damp = damp.max(1e-3) * 10.0;
            }
        }
    };
    drop(hm);
    let u: Vec<f32> = u.iter().map(|&v| v as f32).collect();

    let job = Job {
        fmt,
        cols,
        gl,
        groups,
        block: opts.block_size.min(cols),
        static_groups,
        perm: perm.as_deref(),
        u: &u,
        search: opts.scale_search,
        diag: &diag,
    };
    let mut codes = vec![0u8; rows * cols];
    let loss: f64 = w
        .par_chunks_mut(CHUNK_ROWS * cols)
        .zip(codes.par_chunks_mut(CHUNK_ROWS * cols))
        .zip(params.par_chunks_mut(CHUNK_ROWS * groups))
        .enumerate()
        .map(|(k, ((wc, cc), pc))| job.run(k * CHUNK_ROWS, wc, cc, pc))
        .collect::<Result<Vec<f64>>>()?
        .iter()
        .sum();

    if let Some(w_nat) = &w_nat {
        super::refit::refit_scales(
            w_nat,
            &codes,
            &mut params,
            h.matrix(),
            damp * mean_diag,
            fmt,
            cols,
        );
    }

    // Pack into the stored parts.
    let mut qweight = vec![0u8; sizes.codes];
    qweight
        .par_chunks_mut(fmt.code_bytes(cols))
        .zip(codes.par_chunks(cols))
        .try_for_each(|(out, c)| pack_codes(fmt.bits(), c, out))?;
    let sb = fmt.scale_bytes();
    let mut scales = vec![0u8; sizes.scales];
    for (s, q) in scales.chunks_exact_mut(sb).zip(&params) {
        q.write_scale(s);
    }
    let zeros = fmt
        .kind
        .has_zeros()
        .then(|| params.iter().map(|q| q.zero()).collect());
    Ok((
        QuantizedTensor {
            format: fmt,
            rows,
            cols,
            qweight,
            scales,
            zeros,
        },
        GptqStats {
            loss,
            damp_percent: damp,
            dead_columns: dead.len(),
        },
    ))
}

/// [`gptq_quantize_with_stats`] of a stored 2-D weight `[out, in]` of any
/// format (dense, GGUF blocks, metal-marlin), dequantized to f32 first.
pub fn gptq_quantize_weight(
    w: &WeightData,
    h: &Hessian,
    fmt: MmFormat,
    opts: &GptqOptions,
) -> Result<(QuantizedTensor, GptqStats)> {
    let [rows, cols] = w.shape[..] else {
        return Err(Error::Invalid(format!(
            "GPTQ quantizes 2-D weights [out, in], not shape {:?}",
            w.shape
        )));
    };
    let values = crate::dequantize_ref(w)?;
    gptq_quantize_with_stats(&values, rows, cols, h, fmt, opts)
}

/// The parameters `search` picks for every group of `w` (columns weighted
/// by `diag`), rows in parallel.
fn fit_groups(
    w: &[f32],
    cols: usize,
    fmt: MmFormat,
    search: ScaleSearch,
    diag: &[f32],
) -> Result<Vec<GroupQuantizer>> {
    let gl = fmt.group_len(cols);
    w.par_chunks(cols)
        .enumerate()
        .flat_map_iter(|(r, row)| {
            row.chunks_exact(gl).enumerate().map(move |(g, x)| {
                search
                    .fit(fmt.kind, x, Some(&diag[g * gl..(g + 1) * gl]))
                    .map_err(|e| Error::Invalid(format!("GPTQ {fmt}: row {r}, group {g}: {e}")))
            })
        })
        .collect()
}

/// The shared, read-only state of one weight's GPTQ run.
struct Job<'a> {
    fmt: MmFormat,
    cols: usize,
    gl: usize,
    groups: usize,
    block: usize,
    static_groups: bool,
    /// Processing position → natural column (act order).
    perm: Option<&'a [usize]>,
    /// Upper Cholesky factor of the dampened inverse Hessian, `cols × cols`,
    /// in processing order.
    u: &'a [f32],
    search: ScaleSearch,
    /// The Hessian's diagonal in natural column order (error weights).
    diag: &'a [f32],
}

impl Job<'_> {
    /// GPTQ of the rows `wc` (in processing order; updated in place) starting
    /// at row `r0`: writes their codes (natural column order) to `cc` and,
    /// unless static, their group parameters to `pc`. Returns their loss.
    fn run(
        &self,
        r0: usize,
        wc: &mut [f32],
        cc: &mut [u8],
        pc: &mut [GroupQuantizer],
    ) -> Result<f64> {
        let (cols, gl, b, u) = (self.cols, self.gl, self.block, self.u);
        let nr = wc.len() / cols;
        let mut err = vec![0f32; nr * b];
        let mut cur = vec![0f32; gl];
        let mut wcur = vec![0f32; gl];
        let mut loss = 0f64;
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + b).min(cols);
            for r in 0..nr {
                let row = &mut wc[r * cols..(r + 1) * cols];
                let er = &mut err[r * b..(r + 1) * b];
                for i in i1..i2 {
                    if !self.static_groups && i % gl == 0 {
                        // The group's current values: columns inside the
                        // block have every update so far; columns past it
                        // still lack this block's pending ones.
                        for (c, v) in (i..i + gl).zip(cur.iter_mut()) {
                            *v = row[c];
                            if c >= i2 {
                                for k in i1..i {
                                    *v -= er[k - i1] * u[k * cols + c];
                                }
                            }
                        }
                        for (c, v) in (i..i + gl).zip(wcur.iter_mut()) {
                            *v = self.diag[self.perm.map_or(c, |p| p[c])];
                        }
                        pc[r * self.groups + i / gl] = self
                            .search
                            .fit(self.fmt.kind, &cur, Some(&wcur))
                            .map_err(|e| {
                                Error::Invalid(format!(
                                    "GPTQ {}: row {}, group {}: {e}",
                                    self.fmt,
                                    r0 + r,
                                    i / gl
                                ))
                            })?;
                    }
                    let nat = self.perm.map_or(i, |p| p[i]);
                    let x = row[i];
                    if !x.is_finite() {
                        return Err(Error::Invalid(format!(
                            "GPTQ {}: row {}, column {nat}: the error feedback produced {x}; \
                             the Hessian is too ill-conditioned (raise the dampening)",
                            self.fmt,
                            r0 + r
                        )));
                    }
                    let (code, q) = pc[r * self.groups + nat / gl].quantize(x);
                    cc[r * cols + nat] = code;
                    let urow = &u[i * cols..(i + 1) * cols];
                    let d = urow[i];
                    let e = (x - q) / d;
                    loss += 0.5 * (e as f64) * (e as f64);
                    for (v, &h) in row[i + 1..i2].iter_mut().zip(&urow[i + 1..i2]) {
                        *v -= e * h;
                    }
                    er[i - i1] = e;
                }
            }
            if i2 < cols {
                // W[:, i2..] -= Err[:, ..i2-i1] · U[i1..i2, i2..]
                // SAFETY: dst is the [nr, cols-i2] tail of wc's rows (row
                // stride cols); lhs is err [nr, i2-i1] (row stride b); rhs is
                // u's block [i2-i1, cols-i2] (row stride cols). All in bounds.
                unsafe {
                    gemm::gemm(
                        nr,
                        cols - i2,
                        i2 - i1,
                        wc.as_mut_ptr().add(i2),
                        1,
                        cols as isize,
                        true,
                        err.as_ptr(),
                        1,
                        b as isize,
                        u.as_ptr().add(i1 * cols + i2),
                        1,
                        cols as isize,
                        1.0,
                        -1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            i1 = i2;
        }
        Ok(loss)
    }
}
