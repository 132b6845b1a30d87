//! LSTM cell with torch's gate order i, f, g, o:
//! c' = f ⊙ c + i ⊙ g, h' = o ⊙ tanh(c').

use crate::scalar::Scalar;
use ndarray::{s, ArrayView2, ArrayViewMut2, Axis, Zip};

/// Columns of the per-step saved activations, in units of H: i, f, g, o, tanh(c').
pub(super) const SAVED_BLOCKS: usize = 5;

/// One step: `h`, `c` (B, H) become h', c'; `saved` (B, 5H) keeps i, f, g, o, tanh(c').
/// `gx`, `gh`: (B, 4H) input-side and hidden-side pre-activations (biases included).
pub(super) fn step<F: Scalar>(
    gx: ArrayView2<'_, F>,
    gh: ArrayView2<'_, F>,
    h: ArrayViewMut2<'_, F>,
    mut c: ArrayViewMut2<'_, F>,
    saved: ArrayViewMut2<'_, F>,
) {
    let hs = c.ncols();
    let (mut gates, tanh_c) = saved.split_at(Axis(1), 4 * hs);
    // The pre-activations, then each activation in a loop of its own, so that it vectorises.
    Zip::from(&mut gates)
        .and(gx)
        .and(gh)
        .for_each(|a, &x, &r| *a = x + r);
    Zip::from(gates.slice_mut(s![.., ..2 * hs])).for_each(|a| *a = a.sigmoid());
    Zip::from(gates.slice_mut(s![.., 2 * hs..3 * hs])).for_each(|a| *a = a.tanh_activation());
    Zip::from(gates.slice_mut(s![.., 3 * hs..])).for_each(|a| *a = a.sigmoid());
    let gates = gates.view();
    let gate = |k: usize| gates.slice_move(s![.., k * hs..(k + 1) * hs]);
    let (i, f, g, o) = (gate(0), gate(1), gate(2), gate(3));
    Zip::from(&mut c)
        .and(i)
        .and(f)
        .and(g)
        .for_each(|c, &i, &f, &g| *c = f * *c + i * g);
    Zip::from(h)
        .and(tanh_c)
        .and(&c)
        .and(o)
        .for_each(|h, tc, &c, &o| {
            *tc = c.tanh_activation();
            *h = o * *tc;
        });
}

/// Step backward: from dh, dc (B, H) writes the gate pre-activation gradients `dg` (B, 4H),
/// the same on the input and the hidden side; leaves dc_prev in `dc` and the direct part of
/// dh_prev (zero) in `dh`. `c_prev`: (B, H) the cell state entering the step.
pub(super) fn step_backward<F: Scalar>(
    saved: ArrayView2<'_, F>,
    c_prev: ArrayView2<'_, F>,
    mut dh: ArrayViewMut2<'_, F>,
    mut dc: ArrayViewMut2<'_, F>,
    dg: ArrayViewMut2<'_, F>,
) {
    let hs = dh.ncols();
    let one = F::one();
    let block = |k: usize| saved.slice(s![.., k * hs..(k + 1) * hs]);
    let (i, f, g, o, tanh_c) = (block(0), block(1), block(2), block(3), block(4));
    let (mut di, rest) = dg.split_at(Axis(1), hs);
    let (mut df, rest) = rest.split_at(Axis(1), hs);
    let (mut dgg, mut d_o) = rest.split_at(Axis(1), hs);
    Zip::from(&mut d_o)
        .and(&mut dc)
        .and(&dh)
        .and(o)
        .and(tanh_c)
        .for_each(|d_o, dc, &dh, &o, &tc| {
            *d_o = dh * tc * o * (one - o);
            *dc += dh * o * (one - tc * tc);
        });
    Zip::from(&mut di)
        .and(&mut dgg)
        .and(&dc)
        .and(i)
        .and(g)
        .for_each(|di, dgg, &dc, &i, &g| {
            *di = dc * g * i * (one - i);
            *dgg = dc * i * (one - g * g);
        });
    Zip::from(&mut df)
        .and(&mut dc)
        .and(c_prev)
        .and(f)
        .for_each(|df, dc, &cp, &f| {
            *df = *dc * cp * f * (one - f);
            *dc *= f;
        });
    dh.fill(F::zero());
}
