//! GRU cell as in torch, gates r, z, n:
//! r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h.

use super::rows::{blocks, blocks_mut, row, row_kernel, row_mut, saved_row};
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Columns of the per-step saved activations, in units of H: r, z, n, W_hn h + b_hn.
pub(super) const SAVED_BLOCKS: usize = 4;

/// One step: `h` (B, H) becomes h'; `saved` (B, 4H) keeps r, z, n, W_hn h + b_hn, or is one
/// row that every row overwrites (see [`saved_row`]).
/// `gx`, `gh`: (B, 3H) input-side and hidden-side pre-activations (biases included).
pub(super) fn step<F: Scalar>(
    gx: ArrayView2<'_, F>,
    gh: ArrayView2<'_, F>,
    mut h: ArrayViewMut2<'_, F>,
    mut saved: ArrayViewMut2<'_, F>,
) {
    let hs = h.ncols();
    for r in 0..h.nrows() {
        let [xr, xz, xn] = blocks(row(&gx, r), hs);
        let [hr, hz, hn] = blocks(row(&gh, r), hs);
        let [sr, sz, sn, shn] = blocks_mut(saved_row(&mut saved, r), hs);
        step_row(row_mut(&mut h, r), xr, xz, xn, hr, hz, hn, sr, sz, sn, shn);
    }
}

row_kernel! {
    /// One row of [`step`].
    fn step_row(
        h: &mut [F],
        xr: &[F],
        xz: &[F],
        xn: &[F],
        hr: &[F],
        hz: &[F],
        hn: &[F],
        sr: &mut [F],
        sz: &mut [F],
        sn: &mut [F],
        shn: &mut [F],
    ) {
        let n = h.len();
        let (xr, xz, xn, hr, hz, hn) = (&xr[..n], &xz[..n], &xn[..n], &hr[..n], &hz[..n], &hn[..n]);
        let (sr, sz, sn, shn) = (&mut sr[..n], &mut sz[..n], &mut sn[..n], &mut shn[..n]);
        for j in 0..n {
            let r = (xr[j] + hr[j]).sigmoid();
            let z = (xz[j] + hz[j]).sigmoid();
            let n = (xn[j] + r * hn[j]).tanh_activation();
            (sr[j], sz[j], sn[j], shn[j]) = (r, z, n, hn[j]);
            h[j] = (F::one() - z) * n + z * h[j];
        }
    }
}

/// Step backward: from dh (B, H) writes the input-side gate gradients `dg_x` (B, 3H) and the
/// hidden-side ones `dg_h` (B, 3H), which differ in the n block by the factor r; leaves the
/// direct part of dh_prev (dh ⊙ z) in `dh`. `h_prev`: (B, H) the state entering the step.
pub(super) fn step_backward<F: Scalar>(
    saved: ArrayView2<'_, F>,
    h_prev: ArrayView2<'_, F>,
    mut dh: ArrayViewMut2<'_, F>,
    mut dg_x: ArrayViewMut2<'_, F>,
    mut dg_h: ArrayViewMut2<'_, F>,
) {
    let hs = dh.ncols();
    for r in 0..dh.nrows() {
        let [sr, sz, sn, shn] = blocks(row(&saved, r), hs);
        let [dx_r, dx_z, dx_n] = blocks_mut(row_mut(&mut dg_x, r), hs);
        let [dh_r, dh_z, dh_n] = blocks_mut(row_mut(&mut dg_h, r), hs);
        let h_prev = row(&h_prev, r);
        step_backward_row(
            row_mut(&mut dh, r),
            h_prev,
            sr,
            sz,
            sn,
            shn,
            dx_r,
            dx_z,
            dx_n,
            dh_r,
            dh_z,
            dh_n,
        );
    }
}

row_kernel! {
    /// One row of [`step_backward`].
    fn step_backward_row(
        dh: &mut [F],
        h_prev: &[F],
        r: &[F],
        z: &[F],
        n: &[F],
        hn: &[F],
        dx_r: &mut [F],
        dx_z: &mut [F],
        dx_n: &mut [F],
        dh_r: &mut [F],
        dh_z: &mut [F],
        dh_n: &mut [F],
    ) {
        let len = dh.len();
        let (h_prev, r, z, n, hn) = (&h_prev[..len], &r[..len], &z[..len], &n[..len], &hn[..len]);
        let (dx_r, dx_z, dx_n) = (&mut dx_r[..len], &mut dx_z[..len], &mut dx_n[..len]);
        let (dh_r, dh_z, dh_n) = (&mut dh_r[..len], &mut dh_z[..len], &mut dh_n[..len]);
        let one = F::one();
        for j in 0..len {
            let (r, z, n) = (r[j], z[j], n[j]);
            let dn = dh[j] * (one - z) * (one - n * n);
            let dz = dh[j] * (h_prev[j] - n) * z * (one - z);
            let dr = dn * hn[j] * r * (one - r);
            (dx_r[j], dx_z[j], dx_n[j]) = (dr, dz, dn);
            (dh_r[j], dh_z[j], dh_n[j]) = (dr, dz, dn * r);
            dh[j] *= z;
        }
    }
}
