//! LSTM cell with torch's gate order i, f, g, o:
//! c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c').

use super::rows::{blocks, blocks_mut, row, row_kernel, row_mut, saved_row};
use crate::scalar::Scalar;
use ndarray::{ArrayView2, ArrayViewMut2};

/// Columns of the per-step saved activations, in units of H: i, f, g, o, tanh(c').
pub(super) const SAVED_BLOCKS: usize = 5;

/// One step: `h`, `c` (B, H) become h', c'; `saved` (B, 5H) keeps i, f, g, o, tanh(c'), or
/// is one row that every row overwrites (see [`saved_row`]).
/// `gates`: (B, 4H) pre-activations, both sides and both biases summed.
pub(super) fn step<F: Scalar>(
    gates: ArrayView2<'_, F>,
    mut h: ArrayViewMut2<'_, F>,
    mut c: ArrayViewMut2<'_, F>,
    mut saved: ArrayViewMut2<'_, F>,
) {
    let hs = c.ncols();
    for r in 0..c.nrows() {
        let [ai, af, ag, ao] = blocks(row(&gates, r), hs);
        let [si, sf, sg, so, stc] = blocks_mut(saved_row(&mut saved, r), hs);
        let (h, c) = (row_mut(&mut h, r), row_mut(&mut c, r));
        step_row(h, c, ai, af, ag, ao, si, sf, sg, so, stc);
    }
}

row_kernel! {
    /// One row of [`step`].
    fn step_row(
        h: &mut [F],
        c: &mut [F],
        ai: &[F],
        af: &[F],
        ag: &[F],
        ao: &[F],
        si: &mut [F],
        sf: &mut [F],
        sg: &mut [F],
        so: &mut [F],
        stc: &mut [F],
    ) {
        let n = h.len();
        let (c, ai, af, ag, ao) = (&mut c[..n], &ai[..n], &af[..n], &ag[..n], &ao[..n]);
        let (si, sf, sg, so) = (&mut si[..n], &mut sf[..n], &mut sg[..n], &mut so[..n]);
        let stc = &mut stc[..n];
        for j in 0..n {
            let i = ai[j].sigmoid();
            let f = af[j].sigmoid();
            let g = ag[j].tanh_activation();
            let o = ao[j].sigmoid();
            let c_new = f * c[j] + i * g;
            let tc = c_new.tanh_activation();
            (si[j], sf[j], sg[j], so[j], stc[j]) = (i, f, g, o, tc);
            c[j] = c_new;
            h[j] = o * tc;
        }
    }
}

/// Step backward: from dh, dc (B, H) writes the gate pre-activation gradients `dg` (B, 4H),
/// the same on the input and the hidden side; leaves dc_prev in `dc` and the direct part of
/// dh_prev (zero) in `dh`. `c_prev`: (B, H) the cell state entering the step.
pub(super) fn step_backward<F: Scalar>(
    saved: ArrayView2<'_, F>,
    c_prev: ArrayView2<'_, F>,
    mut dh: ArrayViewMut2<'_, F>,
    mut dc: ArrayViewMut2<'_, F>,
    mut dg: ArrayViewMut2<'_, F>,
) {
    let hs = dh.ncols();
    for r in 0..dh.nrows() {
        let [i, f, g, o, tc] = blocks(row(&saved, r), hs);
        let [di, df, dgg, d_o] = blocks_mut(row_mut(&mut dg, r), hs);
        let (dh, dc, c_prev) = (row_mut(&mut dh, r), row_mut(&mut dc, r), row(&c_prev, r));
        step_backward_row(dh, dc, c_prev, i, f, g, o, tc, di, df, dgg, d_o);
    }
}

row_kernel! {
    /// One row of [`step_backward`].
    fn step_backward_row(
        dh: &mut [F],
        dc: &mut [F],
        c_prev: &[F],
        i: &[F],
        f: &[F],
        g: &[F],
        o: &[F],
        tc: &[F],
        di: &mut [F],
        df: &mut [F],
        dgg: &mut [F],
        d_o: &mut [F],
    ) {
        let n = dh.len();
        let (dc, c_prev, i, f, g) = (&mut dc[..n], &c_prev[..n], &i[..n], &f[..n], &g[..n]);
        let (o, tc) = (&o[..n], &tc[..n]);
        let (di, df, dgg, d_o) = (&mut di[..n], &mut df[..n], &mut dgg[..n], &mut d_o[..n]);
        let one = F::one();
        for j in 0..n {
            let (i, f, g, o, tc) = (i[j], f[j], g[j], o[j], tc[j]);
            let dc_j = dc[j] + dh[j] * o * (one - tc * tc);
            d_o[j] = dh[j] * tc * o * (one - o);
            di[j] = dc_j * g * i * (one - i);
            dgg[j] = dc_j * i * (one - g * g);
            df[j] = dc_j * c_prev[j] * f * (one - f);
            dc[j] = dc_j * f;
            dh[j] = F::zero();
        }
    }
}
