// Optimizer updates over one flat parameter buffer (torch.optim semantics; the CPU twins are in
// src/train/optim.rs), guarded by a step status that lives on the GPU:
//   status (2) u32: [0] ok: 1 when this step may update, [1] steps applied so far.
// `guard` sets ok from the step's loss and gradient norm (a training step with a non-finite
// value then changes neither the parameters nor the optimizer state) and logs the step;
// `begin_step` counts the step when ok; every update returns at once when it is not. Without a
// guard ok stays 1. Adam reads its bias corrections for step t from a table computed on the
// host in f64 (entry min(t, entries) − 1), so that skipped steps leave later corrections exact.
//
// Elementwise kernels take one invocation per element; workgroups may be laid out on a 2-D grid
// (flat index (x + y · num_workgroups.x) · WG + local index).

const WG: u32 = 256u;
// status words
const OK: u32 = 0u;
const APPLIED: u32 = 1u;
// log codes of a step (host twin: src/train/gpu.rs StepCode)
const STEP_OK: u32 = 0u;
const LOSS_NOT_FINITE: u32 = 1u;
const GRADIENTS_NOT_FINITE: u32 = 2u;

struct OptimParams {
    // n: parameters
    len: u32,
    // SGD momentum or Adam β1 weight (1 − β1)
    momentum: f32,
    lr: f32,
    // SGD: 1 − dampening
    keep: f32,
    weight_decay: f32,
    // Adam: β2, 1 − β2, eps, entries of the bias-correction table
    beta2: f32,
    w2: f32,
    eps: f32,
    corrections: u32,
    // guard: 1 / (number of loss values), the step's entry in the log
    loss_scale: f32,
    log_slot: u32,
}

@group(0) @binding(0) var<uniform> op: OptimParams;

@group(0) @binding(1) var<storage, read> guard_norm: array<f32>;         // (2): norm, coefficient
@group(0) @binding(2) var<storage, read> guard_loss_sum: array<f32>;     // (1)
@group(0) @binding(3) var<storage, read_write> guard_status: array<u32>; // (2)
@group(0) @binding(4) var<storage, read_write> guard_log: array<u32>;    // (steps, 2): loss bits, code

@group(0) @binding(1) var<storage, read_write> begin_status: array<u32>; // (2)

@group(0) @binding(1) var<storage, read> status: array<u32>;             // (2)
@group(0) @binding(2) var<storage, read_write> param: array<f32>;        // (n)
@group(0) @binding(3) var<storage, read> grad: array<f32>;               // (n)
@group(0) @binding(4) var<storage, read_write> state_a: array<f32>;      // (n) momentum_buffer or exp_avg
@group(0) @binding(5) var<storage, read_write> state_b: array<f32>;      // (n) exp_avg_sq
@group(0) @binding(6) var<storage, read> adam_corrections: array<f32>;   // (entries, 2)

// Neither infinite nor NaN, by the bits (arithmetic tests may be folded away by compilers that
// assume finite math).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// One invocation: ok ← loss and gradient norm finite; log[slot] ← (mean loss, code).
@compute @workgroup_size(1)
fn guard() {
    let loss = guard_loss_sum[0] * op.loss_scale;
    var code = STEP_OK;
    if (!is_finite(loss)) {
        code = LOSS_NOT_FINITE;
    } else if (!is_finite(guard_norm[0])) {
        code = GRADIENTS_NOT_FINITE;
    }
    guard_status[OK] = select(0u, 1u, code == STEP_OK);
    guard_log[2u * op.log_slot] = bitcast<u32>(loss);
    guard_log[2u * op.log_slot + 1u] = code;
}

// One invocation: counts the step when ok.
@compute @workgroup_size(1)
fn begin_step() {
    begin_status[APPLIED] = begin_status[APPLIED] + begin_status[OK];
}

fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn direction(i: u32) -> f32 {
    var d = grad[i];
    if (op.weight_decay != 0.0) {
        d = d + op.weight_decay * param[i];
    }
    return d;
}

// p ← p − lr · (g + wd · p).
@compute @workgroup_size(WG)
fn sgd_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element(wid, nwg, lid);
    if (i >= op.len || status[OK] == 0u) {
        return;
    }
    param[i] = param[i] - op.lr * direction(i);
}

// buf ← first step ? d : momentum · buf + (1 − dampening) · d; p ← p − lr · buf.
@compute @workgroup_size(WG)
fn sgd_momentum_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element(wid, nwg, lid);
    if (i >= op.len || status[OK] == 0u) {
        return;
    }
    let d = direction(i);
    var buf = d;
    if (status[APPLIED] > 1u) {
        buf = op.momentum * state_a[i] + op.keep * d;
    }
    state_a[i] = buf;
    param[i] = param[i] - op.lr * buf;
}

// m ← lerp(m, g, 1 − β1); v ← β2 · v + (1 − β2) · g²;
// p ← p − step_size · m / (√v / √(1 − β2ᵗ) + eps), (step_size, √(1 − β2ᵗ)) from the table.
@compute @workgroup_size(WG)
fn adam_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element(wid, nwg, lid);
    if (i >= op.len || status[OK] == 0u) {
        return;
    }
    let entry = 2u * (min(status[APPLIED], op.corrections) - 1u);
    let step_size = adam_corrections[entry];
    let correction2_sqrt = adam_corrections[entry + 1u];
    let g = direction(i);
    let w1 = op.momentum;
    var m = state_a[i];
    if (w1 < 0.5) {
        m = m + w1 * (g - m);
    } else {
        m = g - (g - m) * (1.0 - w1);
    }
    let v = state_b[i] * op.beta2 + op.w2 * g * g;
    state_a[i] = m;
    state_b[i] = v;
    let denom = sqrt(v) / correction2_sqrt + op.eps;
    param[i] = param[i] - step_size * (m / denom);
}
