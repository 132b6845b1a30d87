//! Elman RNN cell: h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).

use super::rows::{row, row_kernel, row_mut, saved_row};
use crate::config::Nonlinearity;
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Columns of the per-step saved activations, in units of H: h'.
pub(super) const SAVED_BLOCKS: usize = 1;

/// One step: `h` (B, H) becomes h' = φ(a); `saved` (B, H) keeps h', or is one row that every
/// row overwrites (see [`saved_row`]). `gates`: (B, H) the pre-activation a, both sides and
/// both biases summed.
pub(super) fn step<F: Scalar>(
    nonlinearity: Nonlinearity,
    gates: ArrayView2<'_, F>,
    mut h: ArrayViewMut2<'_, F>,
    mut saved: ArrayViewMut2<'_, F>,
) {
    for r in 0..h.nrows() {
        let (h, saved, a) = (row_mut(&mut h, r), saved_row(&mut saved, r), row(&gates, r));
        // A kernel per nonlinearity, so that each inlines its φ.
        match nonlinearity {
            Nonlinearity::Tanh => tanh_row(h, saved, a),
            Nonlinearity::Relu => relu_row(h, saved, a),
            Nonlinearity::Identity => identity_row(h, saved, a),
        }
    }
}

/// Defines the row kernel of a nonlinearity φ: h' = φ(a), kept in `saved` too.
macro_rules! activation_row {
    ($name:ident, $phi:expr) => {
        row_kernel! {
            fn $name(h: &mut [F], saved: &mut [F], a: &[F]) {
                let n = h.len();
                let (saved, a) = (&mut saved[..n], &a[..n]);
                let phi = $phi;
                for j in 0..n {
                    h[j] = phi(a[j]);
                    saved[j] = h[j];
                }
            }
        }
    };
}
activation_row!(tanh_row, |a: F| a.tanh_activation());
activation_row!(relu_row, |a: F| a.max(F::zero()));
activation_row!(identity_row, |a: F| a);

/// Step backward: from dh (B, H) writes the pre-activation gradient `dg` (B, H), which is the
/// same on the input and the hidden side, and leaves in `dh` the direct part of dh_prev (zero).
pub(super) fn step_backward<F: Scalar>(
    nonlinearity: Nonlinearity,
    saved: ArrayView2<'_, F>,
    mut dh: ArrayViewMut2<'_, F>,
    mut dg: ArrayViewMut2<'_, F>,
) {
    for r in 0..dh.nrows() {
        let (dh, dg, y) = (row_mut(&mut dh, r), row_mut(&mut dg, r), row(&saved, r));
        match nonlinearity {
            Nonlinearity::Tanh => tanh_gradient_row(dh, dg, y),
            Nonlinearity::Relu => relu_gradient_row(dh, dg, y),
            Nonlinearity::Identity => identity_gradient_row(dh, dg, y),
        }
    }
}

/// Defines the row kernel of a derivative φ'(a), given through the output y = φ(a):
/// dg = dh ⊙ φ'(y), dh = 0.
macro_rules! gradient_row {
    ($name:ident, $derivative:expr) => {
        row_kernel! {
            fn $name(dh: &mut [F], dg: &mut [F], y: &[F]) {
                let n = dh.len();
                let (dg, y) = (&mut dg[..n], &y[..n]);
                let derivative = $derivative;
                for j in 0..n {
                    dg[j] = dh[j] * derivative(y[j]);
                    dh[j] = F::zero();
                }
            }
        }
    };
}
gradient_row!(tanh_gradient_row, |y: F| F::one() - y * y);
gradient_row!(relu_gradient_row, |y: F| if y > F::zero() {
    F::one()
} else {
    F::zero()
});
gradient_row!(identity_gradient_row, |_: F| F::one());
