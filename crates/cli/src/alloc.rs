//! Allocator policy for the process.
//!
//! A forward pass allocates and frees activation tensors of 0.1–4 MB per
//! op. glibc serves blocks over its dynamic mmap threshold with fresh
//! `mmap`s and returns them on `free`, so every op pays page faults and
//! kernel zeroing of its output (about 330 000 faults and 15–20 % of the CPU
//! time of a 512-token prefill benchmark of SmolLM2). Raising the mmap
//! threshold to glibc's maximum (32 MiB) and the trim threshold keeps
//! those blocks in the heap for reuse (42 000 faults on the same run).
//! Model files stay memory-mapped; other C libraries are left alone.

/// Applies the policy (glibc on Linux; a no-op elsewhere).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator parameters; called before
        // any thread is spawned. A refused value leaves glibc's default.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 512 << 20);
        }
    }
}
