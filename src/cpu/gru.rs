//! GRU cell as in torch, gates r, z, n:
//! r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.

use crate::scalar::Scalar;
use ndarray::{s, ArrayView2, ArrayViewMut2, Axis, Zip};

/// Columns of the per-step saved activations, in units of H: r, z, n, W_hn h + b_hn.
pub(super) const SAVED_BLOCKS: usize = 4;

/// One step: `h` (B, H) becomes h'; `saved` (B, 4H) keeps r, z, n, W_hn h + b_hn.
/// `gx`, `gh`: (B, 3H) input-side and hidden-side pre-activations (biases included).
pub(super) fn step<F: Scalar>(
    gx: ArrayView2<'_, F>,
    gh: ArrayView2<'_, F>,
    h: ArrayViewMut2<'_, F>,
    saved: ArrayViewMut2<'_, F>,
) {
    let hs = h.ncols();
    let (mut rz, rest) = saved.split_at(Axis(1), 2 * hs);
    let (mut n, hn) = rest.split_at(Axis(1), hs);
    let rz_cols = s![.., 0..2 * hs];
    let n_cols = s![.., 2 * hs..3 * hs];
    Zip::from(&mut rz)
        .and(gx.slice(rz_cols))
        .and(gh.slice(rz_cols))
        .for_each(|a, &x, &r| *a = (x + r).sigmoid());
    let (r, z) = rz.view().split_at(Axis(1), hs);
    Zip::from(&mut n)
        .and(hn)
        .and(gx.slice(n_cols))
        .and(gh.slice(n_cols))
        .and(r)
        .for_each(|n, hn, &x, &ghn, &r| {
            *hn = ghn;
            *n = (x + r * ghn).tanh_activation();
        });
    Zip::from(h)
        .and(z)
        .and(&n)
        .for_each(|h, &z, &n| *h = (F::one() - z) * n + z * *h);
}

/// Step backward: from dh (B, H) writes the input-side gate gradients `dg_x` (B, 3H) and the
/// hidden-side ones `dg_h` (B, 3H), which differ in the n block by the factor r; leaves the
/// direct part of dh_prev (dh ⊙ z) in `dh`. `h_prev`: (B, H) the state entering the step.
pub(super) fn step_backward<F: Scalar>(
    saved: ArrayView2<'_, F>,
    h_prev: ArrayView2<'_, F>,
    mut dh: ArrayViewMut2<'_, F>,
    dg_x: ArrayViewMut2<'_, F>,
    dg_h: ArrayViewMut2<'_, F>,
) {
    let hs = dh.ncols();
    let one = F::one();
    let block = |k: usize| saved.slice(s![.., k * hs..(k + 1) * hs]);
    let (r, z, n, hn) = (block(0), block(1), block(2), block(3));
    let (dx_rz, mut dx_n) = dg_x.split_at(Axis(1), 2 * hs);
    let (mut dx_r, mut dx_z) = dx_rz.split_at(Axis(1), hs);
    Zip::from(&mut dx_n)
        .and(&mut dx_z)
        .and(&dh)
        .and(z)
        .and(n)
        .and(h_prev)
        .for_each(|dn, dz, &dh, &z, &n, &hp| {
            *dn = dh * (one - z) * (one - n * n);
            *dz = dh * (hp - n) * z * (one - z);
        });
    Zip::from(&mut dx_r)
        .and(&dx_n)
        .and(hn)
        .and(r)
        .for_each(|dr, &dn, &hn, &r| *dr = dn * hn * r * (one - r));
    let (mut dh_r, rest) = dg_h.split_at(Axis(1), hs);
    let (mut dh_z, dh_n) = rest.split_at(Axis(1), hs);
    dh_r.assign(&dx_r);
    dh_z.assign(&dx_z);
    Zip::from(dh_n)
        .and(&dx_n)
        .and(r)
        .for_each(|d, &dn, &r| *d = dn * r);
    Zip::from(&mut dh).and(z).for_each(|dh, &z| *dh *= z);
}
