// Elman RNN cell: h' = φ(x·W_ihᵀ + b_ih + h·W_hhᵀ + b_hh).
// Used with recurrent.wgsl appended. Saved per unit: h' (φ' is computed from it).

// φ: 0 tanh, 1 relu, 2 identity.
override NONLINEARITY: u32 = 0u;

const GATES: u32 = 1u;
const SAVED: u32 = 1u;
const HAS_C: bool = false;
const GRAD_PLANES: u32 = 1u;

fn activate(x: f32) -> f32 {
    switch NONLINEARITY {
        case 0u: {
            return tanh_stable(x);
        }
        case 1u: {
            return max(x, 0.0);
        }
        default: {
            return x;
        }
    }
}

// φ'(pre) expressed through h = φ(pre).
fn activation_slope(h: f32) -> f32 {
    switch NONLINEARITY {
        case 0u: {
            return 1.0 - h * h;
        }
        case 1u: {
            return select(0.0, 1.0, h > 0.0);
        }
        default: {
            return 1.0;
        }
    }
}

fn cell_forward(xg: array<f32, 4>, hg: array<f32, 4>, h_prev: f32, c_prev: f32) -> CellForward {
    let h = activate(xg[0] + hg[0]);
    return CellForward(h, 0.0, array<f32, 4>(h, 0.0, 0.0, 0.0));
}

fn cell_backward(
    dh: f32,
    dc: f32,
    acts: array<f32, 4>,
    h_prev: f32,
    c_prev: f32,
    c_cur: f32,
) -> CellBackward {
    let d = dh * activation_slope(acts[0]);
    let dgates = array<f32, 4>(d, 0.0, 0.0, 0.0);
    return CellBackward(dgates, dgates, 0.0, 0.0);
}
