// GRU cell as torch defines it (gate order r, z, n; b_hn inside the reset product):
//   r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r⊙(W_hn h + b_hn)), h' = (1−z)⊙n + z⊙h.
// Used with recurrent.wgsl appended. Saved per unit: r, z, n, W_hn h + b_hn.

const GATES: u32 = 3u;
const SAVED: u32 = 4u;
const HAS_C: bool = false;
const GRAD_PLANES: u32 = 2u;

fn cell_forward(xg: array<f32, 4>, hg: array<f32, 4>, h_prev: f32, c_prev: f32) -> CellForward {
    let r = sigmoid(xg[0] + hg[0]);
    let z = sigmoid(xg[1] + hg[1]);
    let hn = hg[2];
    let n = tanh_stable(xg[2] + r * hn);
    let h = (1.0 - z) * n + z * h_prev;
    return CellForward(h, 0.0, array<f32, 4>(r, z, n, hn));
}

fn cell_backward(
    dh: f32,
    dc: f32,
    acts: array<f32, 4>,
    h_prev: f32,
    c_prev: f32,
    c_cur: f32,
) -> CellBackward {
    let r = acts[0];
    let z = acts[1];
    let n = acts[2];
    let hn = acts[3];
    let dn = dh * (1.0 - z) * (1.0 - n * n);
    let dz = dh * (h_prev - n) * z * (1.0 - z);
    let dr = dn * hn * r * (1.0 - r);
    // The n block differs: x_n enters n directly, W_hn h + b_hn through the reset gate.
    let dgx = array<f32, 4>(dr, dz, dn, 0.0);
    let dgh = array<f32, 4>(dr, dz, dn * r, 0.0);
    return CellBackward(dgx, dgh, dh * z, 0.0);
}
