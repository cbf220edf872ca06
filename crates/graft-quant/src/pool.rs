//! A small spinning thread pool for decode-step mat-vecs.
//!
//! A decode step runs ~200 mat-vecs of tens of microseconds each. A sleeping pool (rayon)
//! pays a wake-up per mat-vec — measured at ~22% of decode time on the 2-core VM. Here the
//! helper threads spin on an atomic epoch between jobs (parking only after a quiet spell), as
//! llama.cpp's threads do. Jobs own their data (`Arc`s), so no lifetimes cross threads and no
//! `unsafe` is needed.
//!
//! Without threads the pool is the caller alone: on wasm32 no helper is ever spawned, and
//! where `thread::Builder::spawn` fails the pool keeps the helpers it got (possibly none) and
//! the caller runs the remaining parts. With no helpers [`SpinPool::run`] just calls the job
//! inline, so the helpers' clock (`Instant`, which panics on wasm32-unknown-unknown) is never
//! read there.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// A job: called once with each part index `0..parts`.
pub type Job = Arc<dyn Fn(usize) + Send + Sync>;

struct Shared {
    epoch: AtomicU64,
    done: AtomicUsize,
    job: Mutex<Option<Job>>,
    stop: AtomicBool,
}

/// Helper threads plus the caller, which runs part 0 itself.
pub struct SpinPool {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    /// Serialises callers (the pool runs one job at a time).
    gate: Mutex<()>,
}

/// How long an idle helper spins before parking.
const SPIN_FOR: Duration = Duration::from_millis(3);

impl SpinPool {
    /// A pool with `parts − 1` helper threads (none on wasm32, fewer if spawning fails).
    pub fn new(parts: usize) -> Self {
        // No threads in the browser: the caller runs every part.
        let parts = if cfg!(target_arch = "wasm32") {
            1
        } else {
            parts
        };
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for part in 1..parts.max(1) {
            let sh = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("graft-matvec-{part}"))
                .spawn(move || worker(sh, part));
            match spawned {
                Ok(h) => handles.push(h),
                Err(_) => break, // fewer helpers: the caller does the remaining parts
            }
        }
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        SpinPool {
            shared,
            threads,
            handles,
            gate: Mutex::new(()),
        }
    }

    /// The shared pool, one part per core (`GRAFT_THREADS` overrides; one part on wasm32).
    pub fn global() -> &'static SpinPool {
        static POOL: OnceLock<SpinPool> = OnceLock::new();
        POOL.get_or_init(|| {
            if cfg!(target_arch = "wasm32") {
                return SpinPool::new(1);
            }
            let n = std::env::var("GRAFT_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| {
                    thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
            SpinPool::new(n)
        })
    }

    /// Number of parts a job is split into.
    pub fn parts(&self) -> usize {
        self.handles.len() + 1
    }

    /// Runs `job(0..parts)`, part 0 on the calling thread; returns when all parts are done.
    pub fn run(&self, job: Job) {
        let helpers = self.handles.len();
        if helpers == 0 {
            job(0);
            return;
        }
        let _one_at_a_time = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        *self.shared.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.clone());
        self.shared.done.store(0, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for t in &self.threads {
            t.unpark();
        }
        job(0);
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) < helpers {
            // Spin briefly, then yield: on an oversubscribed machine the helper needs the core.
            spins = spins.saturating_add(1);
            if spins < 4096 {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
    }
}

fn worker(sh: Arc<Shared>, part: usize) {
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = sh.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if sh.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                if start.elapsed() > SPIN_FOR {
                    thread::park_timeout(Duration::from_millis(50));
                } else {
                    thread::yield_now();
                }
            } else {
                std::hint::spin_loop();
            }
        }
        let job = sh.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(job) = job {
            job(part);
        }
        sh.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job() {
        let pool = SpinPool::new(3);
        let hits: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        for _ in 0..1000 {
            let h = hits.clone();
            pool.run(Arc::new(move |p| {
                h[p].fetch_add(1, Ordering::Relaxed);
            }));
        }
        for h in hits.iter() {
            assert_eq!(h.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn a_pool_of_one_runs_inline() {
        let pool = SpinPool::new(1);
        assert_eq!(pool.parts(), 1);
        assert!(pool.handles.is_empty());
        let caller = std::thread::current().id();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        pool.run(Arc::new(move |p| {
            assert_eq!(p, 0);
            assert_eq!(std::thread::current().id(), caller);
            r.fetch_add(1, Ordering::Relaxed);
        }));
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        // Zero parts asked for is one part, not a panic.
        assert_eq!(SpinPool::new(0).parts(), 1);
    }
}
