// LSTM cell (torch gate order i, f, g, o): c' = f⊙c + i⊙g, h' = o⊙tanh(c').
// Used with recurrent.wgsl appended. Saved per unit: i, f, g, o (activated).

const GATES: u32 = 4u;
const SAVED: u32 = 4u;
const HAS_C: bool = true;
const GRAD_PLANES: u32 = 1u;

fn cell_forward(xg: array<f32, 4>, hg: array<f32, 4>, h_prev: f32, c_prev: f32) -> CellForward {
    let i = sigmoid(xg[0] + hg[0]);
    let f = sigmoid(xg[1] + hg[1]);
    let g = tanh_stable(xg[2] + hg[2]);
    let o = sigmoid(xg[3] + hg[3]);
    let c = f * c_prev + i * g;
    let h = o * tanh_stable(c);
    return CellForward(h, c, array<f32, 4>(i, f, g, o));
}

fn cell_backward(
    dh: f32,
    dc: f32,
    acts: array<f32, 4>,
    h_prev: f32,
    c_prev: f32,
    c_cur: f32,
) -> CellBackward {
    let i = acts[0];
    let f = acts[1];
    let g = acts[2];
    let o = acts[3];
    let tc = tanh_stable(c_cur);
    let dc_total = dc + dh * o * (1.0 - tc * tc);
    let di = dc_total * g * i * (1.0 - i);
    let df = dc_total * c_prev * f * (1.0 - f);
    let dg = dc_total * i * (1.0 - g * g);
    let d_o = dh * tc * o * (1.0 - o);
    let dgates = array<f32, 4>(di, df, dg, d_o);
    return CellBackward(dgates, dgates, 0.0, dc_total * f);
}
