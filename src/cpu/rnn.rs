//! Elman RNN cell: h' = φ(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).

use crate::config::Nonlinearity;
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayViewMut2, Zip};

/// Columns of the per-step saved activations, in units of H: h'.
pub(super) const SAVED_BLOCKS: usize = 1;

/// dφ/da expressed through the activation's output y = φ(a).
fn derivative_from_output<F: Scalar>(nonlinearity: Nonlinearity, y: F) -> F {
    match nonlinearity {
        Nonlinearity::Tanh => F::one() - y * y,
        Nonlinearity::Relu => {
            if y > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        Nonlinearity::Identity => F::one(),
    }
}

/// One step: `h` (B, H) becomes h'; `saved` (B, H) keeps h'.
/// `gx`, `gh`: (B, H) input-side and hidden-side pre-activations (biases included).
pub(super) fn step<F: Scalar>(
    nonlinearity: Nonlinearity,
    gx: ArrayView2<'_, F>,
    gh: ArrayView2<'_, F>,
    h: ArrayViewMut2<'_, F>,
    saved: ArrayViewMut2<'_, F>,
) {
    // A loop per nonlinearity, so that each inlines its φ and vectorises.
    match nonlinearity {
        Nonlinearity::Tanh => activate(gx, gh, h, saved, F::tanh_activation),
        Nonlinearity::Relu => activate(gx, gh, h, saved, |a| a.max(F::zero())),
        Nonlinearity::Identity => activate(gx, gh, h, saved, |a| a),
    }
}

/// h' = φ(gx + gh), kept in `saved` too.
fn activate<F: Scalar>(
    gx: ArrayView2<'_, F>,
    gh: ArrayView2<'_, F>,
    h: ArrayViewMut2<'_, F>,
    saved: ArrayViewMut2<'_, F>,
    phi: impl Fn(F) -> F,
) {
    Zip::from(h)
        .and(saved)
        .and(gx)
        .and(gh)
        .for_each(|h, s, &x, &r| {
            *h = phi(x + r);
            *s = *h;
        });
}

/// Step backward: from dh (B, H) writes the pre-activation gradient `dg` (B, H), which is the
/// same on the input and the hidden side, and leaves in `dh` the direct part of dh_prev (zero).
pub(super) fn step_backward<F: Scalar>(
    nonlinearity: Nonlinearity,
    saved: ArrayView2<'_, F>,
    dh: ArrayViewMut2<'_, F>,
    dg: ArrayViewMut2<'_, F>,
) {
    Zip::from(dg).and(dh).and(saved).for_each(|dg, dh, &y| {
        *dg = *dh * derivative_from_output(nonlinearity, y);
        *dh = F::zero();
    });
}
