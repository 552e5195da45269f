//! A small persistent thread pool for the short per-token parallel loops.
//!
//! Why: a decode step makes ~200 parallel calls (7 linears per layer, the LM
//! head, attention), each a few to a few hundred microseconds of work. Rayon's
//! workers go to sleep between such calls (after a few rounds of yielding)
//! and are woken through futexes, and a call from a thread outside the pool
//! blocks on a latch; on a 2-core machine that wake-up/sleep machinery took
//! 15-20% of decode time. Rayon has no setting for how long its workers spin
//! (`RAYON_NUM_THREADS` only sizes the pool; a spin knob was proposed and
//! declined, rayon-rs/rayon#684), so this pool does what llama.cpp's does:
//!
//! * `threads − 1` workers (rayon's global pool size, i.e. `--threads`) wait
//!   for the next job by spinning on an epoch counter for a bounded window
//!   ([`spin_window`], 100 µs by default, `MM_POOL_SPIN_US` to tune, 0 to
//!   never spin), then park, so an idle process costs no CPU;
//! * the calling thread takes a share of the work: tasks are claimed one by
//!   one from an atomic counter by whoever is awake, so a worker that is
//!   parked or descheduled (a busy neighbour process) only costs its share if
//!   it wakes in time, never a wait for it to wake;
//! * with one thread nothing is spawned and every loop runs inline.
//!
//! Nesting and reentrancy: one job runs at a time. A call made while the pool
//! is busy (from one of its own tasks, or from a second thread at once), or
//! from inside a rayon worker, goes to rayon instead, which handles nesting by
//! work stealing; nothing ever waits for the pool while holding it.
//!
//! Lifetimes: a job's closure lives on the caller's stack. Workers reach it
//! through a lifetime-erased pointer that is only dereferenced for a task
//! index claimed below `n`, and the caller returns only after all `n` tasks
//! have finished; a worker that looks at a stale job claims an index `≥ n`
//! and never touches the closure. Panics in tasks are caught, the remaining
//! tasks still run, and the first panic is resumed on the caller.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rayon::prelude::*;

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// One parallel loop `f(0..n)`.
struct Job {
    /// The caller's closure, lifetime erased (see the module comment).
    f: *const Task<'static>,
    n: usize,
    /// Next unclaimed task index.
    next: AtomicUsize,
    /// Tasks finished (including panicked ones).
    done: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `f` points to a `Sync` closure, so calling it from several threads
// is allowed; it is only dereferenced while the caller of `Pool::for_each`
// waits for the job (see `Job::run`). The other fields are thread safe.
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    /// Claims and runs tasks until none are left.
    fn run(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: `i < n` was claimed by this thread, so task `i` is not
            // finished and the caller of `for_each` is still waiting in
            // `wait_done` (it returns only once `done == n`), which keeps the
            // closure borrowed by `f` alive.
            let f = unsafe { &*self.f };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                lock(&self.panic).get_or_insert(p);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Waits until every task has finished: spin briefly (the remaining
    /// tasks are in flight on other threads), then yield.
    fn wait_done(&self) {
        let mut k = 0u32;
        while self.done.load(Ordering::Acquire) < self.n {
            if k < 1 << 12 {
                std::hint::spin_loop();
                k += 1;
            } else {
                thread::yield_now();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Tasks run under `catch_unwind`, so a poisoned lock holds consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared between the caller and the workers.
struct Shared {
    /// Bumped once per published job (and at shutdown).
    epoch: AtomicU64,
    job: Mutex<Option<Arc<Job>>>,
    /// `sleeping[i]`: worker `i` is parked or about to park.
    sleeping: Vec<AtomicBool>,
    shutdown: AtomicBool,
    spin: Duration,
}

/// A pool of `workers` spinning-then-parking threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    busy: AtomicBool,
}

impl Pool {
    /// A pool with `workers` helper threads (the caller is one more) that
    /// spin for `spin` after each job before parking.
    pub fn new(workers: usize, spin: Duration) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let threads = (0..workers)
            .map(|i| {
                let s = shared.clone();
                thread::Builder::new()
                    .name(format!("mm-pool-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("spawn pool worker")
            })
            .collect();
        Pool {
            shared,
            threads,
            busy: AtomicBool::new(false),
        }
    }

    /// Threads that run a job: the workers and the caller.
    pub fn threads(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(i)` for every `i in 0..n`, each exactly once, on the workers
    /// and the calling thread; returns when all have run. Falls back to rayon
    /// when the pool is busy (nested or concurrent call) and runs inline with
    /// no workers or one task. A panic in `f` is resumed here after the other
    /// tasks finished.
    pub fn for_each<F: Fn(usize) + Sync>(&self, n: usize, f: F) {
        if n <= 1 || self.threads.is_empty() {
            (0..n).for_each(f);
            return;
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            (0..n).into_par_iter().for_each(&f);
            return;
        }
        let f: &Task<'_> = &f;
        // SAFETY: only the lifetime is changed (same layout); the pointer is
        // dereferenced only while this call waits for the job (`Job::run`).
        let f: *const Task<'static> = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
        });
        let s = &*self.shared;
        *lock(&s.job) = Some(job.clone());
        // SeqCst pairs with the worker's `sleeping` store / `epoch` load: a
        // worker either sees the new epoch or is seen sleeping and unparked.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (w, t) in s.sleeping.iter().zip(&self.threads) {
            if w.swap(false, Ordering::SeqCst) {
                t.thread().unpark();
            }
        }
        job.run();
        job.wait_done();
        *lock(&s.job) = None;
        self.busy.store(false, Ordering::Release);
        let p = lock(&job.panic).take();
        if let Some(p) = p {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A worker: wait for a new epoch (spin, then park), run the job, repeat.
fn worker(s: &Shared, i: usize) {
    let mut seen = 0u64;
    loop {
        let mut deadline = Instant::now() + s.spin;
        let mut k = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            k = k.wrapping_add(1);
            if k & 63 != 0 || Instant::now() < deadline {
                std::hint::spin_loop();
                continue;
            }
            s.sleeping[i].store(true, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                // An unpark between the check and here leaves a token, so
                // this returns at once: no lost wake-up.
                thread::park();
            }
            s.sleeping[i].store(false, Ordering::SeqCst);
            deadline = Instant::now() + s.spin;
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = lock(&s.job).clone();
        if let Some(job) = job {
            job.run();
        }
    }
}

/// The spin window: `MM_POOL_SPIN_US` microseconds, 100 by default.
pub fn spin_window() -> Duration {
    let us = std::env::var("MM_POOL_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    Duration::from_micros(us)
}

/// The process-wide pool, sized on first use to rayon's global pool
/// (`--threads`).
fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(rayon::current_num_threads().max(1) - 1, spin_window()))
}

/// Threads a parallel loop of the CPU backend spreads over (rayon's count).
pub fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `f(i)` for every `i in 0..n` in parallel: on the global spinning pool, or
/// on rayon from inside a rayon worker (nested parallelism), or inline with
/// one thread.
pub fn for_each<F: Fn(usize) + Sync>(n: usize, f: F) {
    if rayon::current_thread_index().is_some() {
        (0..n).into_par_iter().for_each(&f);
    } else if n <= 1 || threads() == 1 {
        (0..n).for_each(f);
    } else {
        global().for_each(n, f);
    }
}

/// `f(c, chunk)` for every `chunk`-element piece of `out` (the last may be
/// shorter), in parallel as [`for_each`].
pub fn for_each_chunk_mut<T: Send, F>(out: &mut [T], chunk: usize, f: F)
where
    F: Fn(usize, &mut [T]) + Sync,
{
    let chunk = chunk.max(1);
    let len = out.len();
    let base = SendPtr(out.as_mut_ptr());
    for_each(len.div_ceil(chunk), |c| {
        let start = c * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: chunk `c` covers `start..end` of `out`, disjoint from every
        // other chunk, and each index is visited once; `out` is mutably
        // borrowed for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(c, piece)
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint pieces of one `&mut [T: Send]` to tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the `Sync` wrapper).
    fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pool: &Pool, n: usize) -> Vec<usize> {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        pool.for_each(n, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        hits.into_iter().map(|h| h.into_inner()).collect()
    }

    #[test]
    fn every_index_once() {
        for workers in [0, 1, 3] {
            let pool = Pool::new(workers, Duration::from_micros(50));
            assert_eq!(pool.threads(), workers + 1);
            for n in [0, 1, 2, 7, 64, 1000] {
                for _ in 0..50 {
                    assert!(counts(&pool, n).iter().all(|&c| c == 1), "{workers} {n}");
                }
            }
        }
    }

    #[test]
    fn parks_and_wakes() {
        // No spin: workers park after every job and must be woken.
        let pool = Pool::new(2, Duration::ZERO);
        for _ in 0..200 {
            assert!(counts(&pool, 16).iter().all(|&c| c == 1));
        }
        thread::sleep(Duration::from_millis(5));
        assert!(counts(&pool, 16).iter().all(|&c| c == 1));
    }

    #[test]
    fn panic_propagates_after_all_tasks() {
        let pool = Pool::new(2, Duration::from_micros(50));
        let ran = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.for_each(20, |i| {
                ran.fetch_add(1, Ordering::Relaxed);
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        let msg = r.unwrap_err();
        assert_eq!(msg.downcast_ref::<&str>(), Some(&"task 5"));
        assert_eq!(ran.load(Ordering::Relaxed), 20);
        // The pool is usable again.
        assert!(counts(&pool, 10).iter().all(|&c| c == 1));
    }

    #[test]
    fn nested_and_concurrent_calls() {
        let pool = Pool::new(2, Duration::from_micros(50));
        let total = AtomicUsize::new(0);
        pool.for_each(8, |_| {
            // Nested: the pool is busy, so this goes to rayon.
            pool.for_each(8, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 64);
        // Two threads at once.
        let total = AtomicUsize::new(0);
        thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..100 {
                        pool.for_each(10, |_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3000);
    }

    #[test]
    fn global_inside_rayon_and_chunks() {
        let total = AtomicUsize::new(0);
        (0..4).into_par_iter().for_each(|_| {
            for_each(5, |_| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
        let mut v = vec![0usize; 103];
        for_each_chunk_mut(&mut v, 10, |c, piece| {
            for (j, x) in piece.iter_mut().enumerate() {
                *x += c * 10 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn one_thread_runs_inline() {
        let pool = Pool::new(0, Duration::from_micros(50));
        let me = thread::current().id();
        pool.for_each(10, |_| assert_eq!(thread::current().id(), me));
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| {
                let me = thread::current().id();
                for_each(10, |_| assert_eq!(thread::current().id(), me))
            });
    }
}
