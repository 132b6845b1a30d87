//! The cells' elementwise loops: one pass over each row's units, on slices, so that the
//! compiler vectorises them, with AVX2 and FMA where the CPU has them (twice the lanes of the
//! x86_64 baseline).

use ndarray::{ArrayView2, ArrayViewMut2};

/// Defines `fn name<F: Scalar>(slices…)`, a loop over one row's units, compiled twice: for
/// the x86_64 baseline and for AVX2 and FMA, which runs where the CPU has them. It is never
/// inlined: as a function of its own, its slice arguments are known not to overlap, so the
/// loop vectorises without runtime checks. Every slice must have the length of the first.
macro_rules! row_kernel {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        // Separate slice arguments are the point: each is known not to overlap the others.
        #[allow(clippy::too_many_arguments)]
        #[inline(never)]
        fn $name<F: Scalar>($($arg: $ty),*) {
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn portable<F: Scalar>($($arg: $ty),*) $body
            #[allow(clippy::too_many_arguments)]
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2<F: Scalar>($($arg: $ty),*) {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features `avx2` is compiled for.
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}
pub(super) use row_kernel;

/// Row `r` of a matrix with unit column stride (every matrix the driver passes a cell).
#[inline(always)]
pub(super) fn row<'a, F>(a: &'a ArrayView2<'_, F>, r: usize) -> &'a [F] {
    let (cols, stride) = (a.ncols(), a.strides()[1]);
    assert!(
        r < a.nrows() && (stride == 1 || cols <= 1),
        "a row-major row"
    );
    // SAFETY: row r is in bounds, and its `cols` elements are contiguous.
    unsafe { std::slice::from_raw_parts(a.as_ptr().offset(r as isize * a.strides()[0]), cols) }
}

/// Row `r` of a matrix with unit column stride, mutable.
#[inline(always)]
pub(super) fn row_mut<'a, F>(a: &'a mut ArrayViewMut2<'_, F>, r: usize) -> &'a mut [F] {
    let (cols, stride) = (a.ncols(), a.strides()[1]);
    assert!(
        r < a.nrows() && (stride == 1 || cols <= 1),
        "a row-major row"
    );
    let offset = r as isize * a.strides()[0];
    // SAFETY: row r is in bounds, its `cols` elements are contiguous, and `a` is borrowed
    // mutably for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr().offset(offset), cols) }
}

/// Row `r` of a step's saved activations; a one-row matrix is a scratch that every row
/// overwrites, for a forward that keeps nothing, so that the activations stay in L1.
#[inline(always)]
pub(super) fn saved_row<'a, F>(saved: &'a mut ArrayViewMut2<'_, F>, r: usize) -> &'a mut [F] {
    let r = if saved.nrows() == 1 { 0 } else { r };
    row_mut(saved, r)
}

/// `s` as N consecutive blocks of `width`.
#[inline(always)]
pub(super) fn blocks<F, const N: usize>(s: &[F], width: usize) -> [&[F]; N] {
    std::array::from_fn(|k| &s[k * width..(k + 1) * width])
}

/// `s` as N consecutive mutable blocks of `width`.
#[inline(always)]
pub(super) fn blocks_mut<F, const N: usize>(s: &mut [F], width: usize) -> [&mut [F]; N] {
    let mut rest = &mut s[..N * width];
    std::array::from_fn(|_| {
        let (block, tail) = std::mem::take(&mut rest).split_at_mut(width);
        rest = tail;
        block
    })
}
