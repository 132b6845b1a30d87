//! The big products of a sequence (input projection, weight gradients, input gradient) through
//! the `gemm` crate on the team's threads. Measured on the step and sequence shapes against
//! `matrixmultiply` (docs/PERFORMANCE.md): neither wins on every shape, but gemm takes its
//! thread count per call, so the CPU path honours `WGPU_RNN_NUM_THREADS`; it dispatches to
//! AVX2+FMA or portable kernels at runtime.

use super::threads::Team;
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayViewMut2};

/// c = a · b, or c += a · b when `accumulate`; a (m, k), b (k, n), c (m, n), any strides.
pub(super) fn matmul<F: Scalar>(
    team: &Team,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    mut c: ArrayViewMut2<'_, F>,
    accumulate: bool,
) {
    let ((m, k), n) = (a.dim(), b.ncols());
    assert_eq!(b.nrows(), k, "inner dimensions agree");
    assert_eq!(c.dim(), (m, n), "c is (m, n)");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(F::zero());
        }
        return;
    }
    let parallelism = match team.threads() {
        1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    };
    let (sa, sb, sc) = (a.strides(), b.strides(), c.strides());
    let (sa, sb, sc) = ([sa[0], sa[1]], [sb[0], sb[1]], [sc[0], sc[1]]);
    let (pa, pb, pc) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    let (pa, pb, pc) = (Ptr(pa.cast_mut()), Ptr(pb.cast_mut()), Ptr(pc));
    team.install(move || {
        let (pa, pb, pc) = (pa, pb, pc);
        // SAFETY: the pointers and strides describe the three views, which live for this call;
        // c is borrowed mutably and does not overlap a or b; F is f32 or f64.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                pc.0,
                sc[1],
                sc[0],
                accumulate,
                pa.0.cast_const(),
                sa[1],
                sa[0],
                pb.0.cast_const(),
                sb[1],
                sb[0],
                F::one(),
                F::one(),
                false,
                false,
                false,
                parallelism,
            )
        }
    });
}

/// A pointer that may cross into the pool for the duration of one [`matmul`].
#[derive(Clone, Copy)]
struct Ptr<F>(*mut F);

// SAFETY: only used while `matmul` borrows the data, which is Send + Sync (f32, f64).
unsafe impl<F: Send + Sync> Send for Ptr<F> {}
