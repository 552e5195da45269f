//! Checks of the ops multi-head latent attention adds: reading the paged
//! cache back ([`check_gather_kv`]) and the per-head matmul of the absorbed
//! form ([`check_head_matmul`]).

use mm_backend_cpu::ops::{gather_kv, head_matmul, write_kv};
use mm_core::{Backend, KvDType, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{check, randv, up, Tolerance};

/// `gather_kv` of shuffled slots (repeats included) from f32 and f16 stores
/// equals the stored values (f16 rounding as `write_kv_ref` keeps it); a
/// slot past the end is an error.
pub fn check_gather_kv(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (slots, w) = (12, 40);
    for dtype in [KvDType::F32, KvDType::F16] {
        let mut st = b.kv_store(slots, w, dtype)?;
        let written = [3u32, 11, 0, 7, 5];
        let src = randv(&mut rng, written.len() * w);
        b.write_kv(
            &mut st,
            &written,
            &up(b, vec![written.len(), w], src.clone())?,
        )?;
        let mut image = vec![0.0f32; slots * w];
        write_kv::write_kv_ref(&mut image, w, &written, &src, dtype == KvDType::F16);
        let read = [7u32, 0, 11, 7, 2, 3];
        let out = b.gather_kv(&st, &read)?;
        if out.shape() != [read.len(), w] {
            return Err(mm_core::Error::Other(format!(
                "gather_kv: shape {:?}, expected {:?}",
                out.shape(),
                [read.len(), w]
            )));
        }
        let want = gather_kv::gather_kv_ref(&image, w, &read);
        check("gather_kv", &out, &want, tol)?;
        if b.gather_kv(&st, &[1, slots as u32]).is_ok() {
            return Err(mm_core::Error::Other(
                "gather_kv of a slot past the store must fail".into(),
            ));
        }
    }
    Ok(())
}

/// `head_matmul` over decode-like and prompt-like shapes (odd widths, one
/// head and several) against the f64 reference; mismatched shapes are
/// errors.
pub fn check_head_matmul(b: &dyn Backend, seed: u64, tol: Tolerance) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for (n, h, k, m) in [
        (1, 4, 32, 24),
        (9, 3, 37, 19),
        (20, 1, 64, 70),
        (3, 2, 5, 3),
    ] {
        let x = randv(&mut rng, n * h * k);
        let w = randv(&mut rng, h * m * k);
        let out = b.head_matmul(
            &up(b, vec![n, h * k], x.clone())?,
            &up(b, vec![h, m, k], w.clone())?,
        )?;
        let want = head_matmul::head_matmul_ref(&x, &w, n, h, k, m);
        check("head_matmul", &out, &want, tol)?;
    }
    let x = up(b, vec![2, 10], randv(&mut rng, 20))?;
    for shape in [vec![3, 4, 3], vec![12, 10]] {
        let n: usize = shape.iter().product();
        let w = up(b, shape.clone(), randv(&mut rng, n))?;
        if b.head_matmul(&x, &w).is_ok() {
            return Err(mm_core::Error::Other(format!(
                "head_matmul of x [2, 10] by w {shape:?} must fail"
            )));
        }
    }
    Ok(())
}
