//! The CPU path's threads: their count (`WGPU_RNN_NUM_THREADS` or [`set_num_threads`]), a pool
//! of that many, and a team of workers that run the steps of a sequence in lockstep, each on its
//! own block of hidden units, with one barrier per step at which a worker that is ahead can do
//! work that does not depend on the others.

use crate::error::{Result, RnnError};
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The environment variable that sets the CPU path's thread count.
pub const THREADS_ENV: &str = "WGPU_RNN_NUM_THREADS";

/// Hidden units per worker at least: fewer make the per-step barrier cost more than it saves.
const MIN_UNITS_PER_WORKER: usize = 16;

/// Set by [`set_num_threads`]; 0 while unset.
static THREADS_SET: AtomicUsize = AtomicUsize::new(0);

/// The pool of the last thread count used, rebuilt when the count changes.
static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

/// Sets the CPU path's thread count (at least 1) for this process; it overrides
/// `WGPU_RNN_NUM_THREADS`.
pub fn set_num_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        return Err(RnnError::Config(
            "the CPU thread count must be at least 1, got 0".into(),
        ));
    }
    THREADS_SET.store(threads, Ordering::Relaxed);
    Ok(())
}

/// The CPU path's thread count: [`set_num_threads`]'s, else `WGPU_RNN_NUM_THREADS`, else the
/// number of CPUs available. An unreadable `WGPU_RNN_NUM_THREADS` is an error.
pub fn num_threads() -> Result<usize> {
    match THREADS_SET.load(Ordering::Relaxed) {
        0 => match std::env::var(THREADS_ENV) {
            Ok(text) => match text.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(RnnError::Config(format!(
                    "{THREADS_ENV} must be a whole number of at least 1, got {text:?}"
                ))),
            },
            Err(std::env::VarError::NotPresent) => {
                Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
            }
            Err(std::env::VarError::NotUnicode(text)) => Err(RnnError::Config(format!(
                "{THREADS_ENV} must be a whole number of at least 1, got {text:?}"
            ))),
        },
        n => Ok(n),
    }
}

/// A pool of threads for one CPU call.
pub(super) struct Team {
    pool: Arc<rayon::ThreadPool>,
}

impl Team {
    /// A team of [`num_threads`] threads.
    pub(super) fn current() -> Result<Self> {
        Self::with_threads(num_threads()?)
    }

    /// A team of `threads` (≥ 1) threads; the pool is kept for the next call of the same count.
    pub(super) fn with_threads(threads: usize) -> Result<Self> {
        let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(p) = pool.as_ref().filter(|p| p.current_num_threads() == threads) {
            return Ok(Team { pool: p.clone() });
        }
        let built = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("wgpu-rnn-cpu-{i}"))
            .build()
            .map_err(|e| RnnError::Config(format!("cannot start {threads} CPU threads: {e}")))?;
        let built = Arc::new(built);
        *pool = Some(built.clone());
        Ok(Team { pool: built })
    }

    pub(super) fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// `hidden` units in contiguous blocks, one per worker: as many as there are threads, each
    /// of at least [`MIN_UNITS_PER_WORKER`] units (or one block of all).
    pub(super) fn blocks(&self, hidden: usize) -> Vec<Range<usize>> {
        let workers = self.threads().min(hidden / MIN_UNITS_PER_WORKER).max(1);
        (0..workers)
            .map(|k| hidden * k / workers..hidden * (k + 1) / workers)
            .collect()
    }

    /// Runs `work(k, barrier)` for k in 0..workers, each on its own thread at the same time
    /// (workers ≤ threads); `barrier` holds each caller until all workers have reached it.
    pub(super) fn run(&self, workers: usize, work: impl Fn(usize, &Barrier) + Sync) {
        assert!(workers <= self.threads(), "more workers than threads");
        let barrier = Barrier::new(workers);
        if workers == 1 {
            return work(0, &barrier);
        }
        self.pool.broadcast(|ctx| {
            if ctx.index() < workers {
                let _guard = PoisonOnPanic(&barrier);
                work(ctx.index(), &barrier);
            }
        });
    }
}

/// A barrier for the workers of [`Team::run`]: spins for about as long as a step takes (tens
/// of microseconds), then yields, so that a worker waiting for one that lost its core to
/// another process gives the core up instead of spinning out its time slice. Once a worker panics, no wait blocks any more, so the others finish and the panic
/// reaches the caller instead of a hang.
pub(super) struct Barrier {
    workers: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    fn new(workers: usize) -> Self {
        Barrier {
            workers,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// Returns once every worker has called `wait_working` as often as this one; what each
    /// wrote before its call is then visible to all. While waiting it calls `work` for as long
    /// as that returns true (it did a piece of work), so that a worker ahead of the others does
    /// something useful meanwhile.
    pub(super) fn wait_working(&self, work: impl FnMut() -> bool) {
        if self.workers == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.workers {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        self.spin_until(
            || self.generation.load(Ordering::Acquire) != generation,
            work,
        );
    }

    /// Returns once `ready` holds: what the other workers wrote before making it true is then
    /// visible, if `ready` reads it with Acquire.
    pub(super) fn wait_until(&self, ready: impl Fn() -> bool) {
        self.spin_until(ready, || false);
    }

    /// Calls `work` until `ready` holds, then spins and yields, as long as no worker panicked.
    fn spin_until(&self, ready: impl Fn() -> bool, mut work: impl FnMut() -> bool) {
        const SPINS: u32 = 1 << 11;
        let mut spins = 0u32;
        while !ready() && !self.poisoned.load(Ordering::Relaxed) {
            if work() {
                continue;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Poisons the barrier when its worker unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// A row-major matrix (unit column stride) that the workers of a team share: each writes its
/// own blocks, and reads what others wrote only after a barrier that follows their writes.
pub(super) struct SharedMatrix<'a, F> {
    ptr: *mut F,
    rows: usize,
    cols: usize,
    row_stride: usize,
    _borrow: PhantomData<&'a mut F>,
}

// SAFETY: the matrix is borrowed mutably for 'a and F is Send + Sync; the accessors' contracts
// keep reads and writes of different threads apart.
unsafe impl<F: Send + Sync> Send for SharedMatrix<'_, F> {}
unsafe impl<F: Send + Sync> Sync for SharedMatrix<'_, F> {}

impl<'a, F> SharedMatrix<'a, F> {
    /// Shares `a`, which must have a unit column stride and a non-negative row stride.
    pub(super) fn new(mut a: ArrayViewMut2<'a, F>) -> Self {
        let (rows, cols) = a.dim();
        let [row_stride, col_stride] = [a.strides()[0], a.strides()[1]];
        assert!(
            (col_stride == 1 || cols <= 1) && (row_stride >= 0 || rows <= 1),
            "a shared matrix is row-major"
        );
        SharedMatrix {
            ptr: a.as_mut_ptr(),
            rows,
            cols,
            row_stride: row_stride.max(0) as usize,
            _borrow: PhantomData,
        }
    }

    fn check(&self, rows: &Range<usize>, cols: &Range<usize>) {
        assert!(
            rows.start <= rows.end && rows.end <= self.rows,
            "rows in range"
        );
        assert!(
            cols.start <= cols.end && cols.end <= self.cols,
            "columns in range"
        );
    }

    /// # Safety
    /// No thread writes these elements while the view lives.
    pub(super) unsafe fn block(&self, rows: Range<usize>, cols: Range<usize>) -> ArrayView2<'_, F> {
        self.check(&rows, &cols);
        let shape = (rows.len(), cols.len()).strides((self.row_stride, 1));
        // SAFETY: in bounds (checked), and the caller excludes writers.
        unsafe {
            ArrayView2::from_shape_ptr(
                shape,
                self.ptr.add(rows.start * self.row_stride + cols.start),
            )
        }
    }

    /// # Safety
    /// No other thread reads or writes these elements while the view lives.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn block_mut(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
    ) -> ArrayViewMut2<'_, F> {
        self.check(&rows, &cols);
        let shape = (rows.len(), cols.len()).strides((self.row_stride, 1));
        // SAFETY: in bounds (checked), and the caller makes the access exclusive.
        unsafe {
            ArrayViewMut2::from_shape_ptr(
                shape,
                self.ptr.add(rows.start * self.row_stride + cols.start),
            )
        }
    }
}
