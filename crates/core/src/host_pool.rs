//! Reuse of host activation buffers across ops and steps.
//!
//! A CPU op returns a new tensor, and one forward step makes hundreds of
//! them, of the same few sizes every step. Rather than going back to the
//! allocator each time (and, for buffers past malloc's mmap threshold, to
//! the kernel for fresh zeroed pages), the buffer of a dropped host tensor
//! goes to a free list by size class (powers of two), and the next op that
//! asks for at most that many values ([`zeroed`]) takes it back. Size classes rather than exact lengths because continuous batching
//! changes a step's row count, and with it every activation's length, from
//! one step to the next. In a steady decode or prefill loop no op allocates.
//!
//! One pool per process behind a mutex (ops allocate on the caller's
//! thread or on a worker of the backend's pool, and tensors die wherever
//! their owner drops them; a few hundred uncontended locks per step cost
//! nothing next to the kernels), bounded: at most [`MAX_PER_CLASS`] buffers
//! of one class and [`MAX_BYTES`] in all; beyond that a buffer is freed.

use std::sync::Mutex;

/// Most buffers kept of one size class.
pub const MAX_PER_CLASS: usize = 32;
/// Most bytes kept.
pub const MAX_BYTES: usize = 128 << 20;
/// Buffers below this many values are left to the allocator (cheap).
const MIN_LEN: usize = 1024;

struct Pool {
    /// By size class (log2 of the capacity, rounded down): free buffers.
    free: [Vec<Vec<f32>>; 64],
    bytes: usize,
    hits: u64,
    misses: u64,
}

const NONE: Vec<Vec<f32>> = Vec::new();
static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: [NONE; 64],
    bytes: 0,
    hits: 0,
    misses: 0,
});

/// The pool; a panic while it was held leaves nothing inconsistent.
fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The class of a buffer that must hold `n` values (capacity `2^class`).
fn class_for(n: usize) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

/// A buffer of `n` zeros: a recycled one when the pool has one that holds
/// `n` values, else a new allocation with the capacity of `n`'s class.
pub fn zeroed(n: usize) -> Vec<f32> {
    let mut v = take(n);
    v.resize(n, 0.0);
    v
}

/// A copy of `src` in a pooled buffer.
pub fn copied(src: &[f32]) -> Vec<f32> {
    let mut v = take(src.len());
    v.extend_from_slice(src);
    v
}

/// An empty buffer with room for at least `n` values (recycled when the
/// pool has one), for callers that push or extend.
pub fn take(n: usize) -> Vec<f32> {
    if n < MIN_LEN {
        return Vec::with_capacity(n);
    }
    let class = class_for(n) as usize;
    let reused = {
        let mut p = pool();
        // Any buffer of the class holds `n`; one of the class below may
        // too (a buffer allocated elsewhere at exactly this length).
        let below = p.free[class - 1].iter().rposition(|b| b.capacity() >= n);
        let v = match below {
            Some(i) if p.free[class].is_empty() => Some(p.free[class - 1].swap_remove(i)),
            _ => p.free[class].pop(),
        };
        match &v {
            Some(v) => {
                p.hits += 1;
                p.bytes -= v.capacity() * 4;
            }
            None => p.misses += 1,
        }
        v
    };
    let mut v = reused.unwrap_or_else(|| Vec::with_capacity(1 << class));
    v.clear();
    v
}

/// Gives a buffer back for reuse by [`zeroed`] (freed when the pool is
/// full).
pub fn recycle(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < MIN_LEN {
        return;
    }
    // Rounded down: the buffer can serve any request of this class.
    let class = usize::BITS - 1 - cap.leading_zeros();
    let mut p = pool();
    if p.bytes + cap * 4 > MAX_BYTES || p.free[class as usize].len() >= MAX_PER_CLASS {
        return;
    }
    p.free[class as usize].push(v);
    p.bytes += cap * 4;
}

/// `(reused, newly allocated)` buffers handed out by [`zeroed`] so far
/// (for tests and profiling).
pub fn stats() -> (u64, u64) {
    let p = pool();
    (p.hits, p.misses)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is shared by the whole process.
    #[test]
    fn buffers_are_reused_zeroed_by_class_and_bounded() {
        let mut v = zeroed(4096);
        v.iter_mut().for_each(|x| *x = 7.0);
        let ptr = v.as_ptr();
        recycle(v);
        let (h0, _) = stats();
        let w = zeroed(4096);
        assert_eq!(w.as_ptr(), ptr, "the same allocation is reused");
        assert!(w.iter().all(|&x| x == 0.0));
        assert_eq!(stats().0, h0 + 1);
        // A shorter request of the same class takes it too, zeroed.
        recycle(w);
        let s = zeroed(3000);
        assert_eq!((s.as_ptr(), s.len()), (ptr, 3000));
        assert!(s.iter().all(|&x| x == 0.0));
        // A longer one (the next class) does not.
        recycle(s);
        assert_ne!(zeroed(4097).as_ptr(), ptr);

        let n = 1 << 16;
        let bufs: Vec<_> = (0..MAX_PER_CLASS + 4).map(|_| zeroed(n)).collect();
        bufs.into_iter().for_each(recycle);
        assert_eq!(pool().free[16].len(), MAX_PER_CLASS);
        // Small buffers are left to the allocator.
        recycle(vec![0.0; 16]);
        assert!(pool().free[4].is_empty());
    }
}
