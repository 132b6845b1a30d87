// Training kernels around the RNN: fused softmax cross-entropy (forward and backward), dropout,
// gradient clipping by global norm (two deterministic passes, no atomics) and by value, and the
// SGD-momentum and Adam updates over flat parameter buffers. The CPU twins are in src/train/.
//
// Every kernel runs 256 invocations per workgroup; workgroups may be laid out on a 2-D grid
// (x + y · num_workgroups.x) when one dimension is not enough.

const WG: u32 = 256u;
// Elements summed by one workgroup of `sumsq_partial`.
const CHUNK: u32 = 1024u;

var<workgroup> scratch: array<f32, 256>;

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// ---- counter-based hash: bitwise the same as src/train/dropout.rs ----

fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn dropout_hash(seed: u32, stream: u32, index: u32) -> u32 {
    return pcg_hash(index + pcg_hash(stream + pcg_hash(seed)));
}

// ---- workgroup reductions over `scratch` (call in uniform control flow) ----

fn reduce_max(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            scratch[lid] = max(scratch[lid], scratch[lid + s]);
        }
        workgroupBarrier();
    }
    let result = scratch[0];
    workgroupBarrier();
    return result;
}

fn reduce_sum(lid: u32, value: f32) -> f32 {
    scratch[lid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            scratch[lid] = scratch[lid] + scratch[lid + s];
        }
        workgroupBarrier();
    }
    let result = scratch[0];
    workgroupBarrier();
    return result;
}

// ---- softmax cross-entropy: one workgroup per row ----

struct CeParams {
    rows: u32,
    classes: u32,
    // 1 / rows: the mean over rows
    inv_rows: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> ce_logits: array<f32>;          // (N, V)
@group(0) @binding(1) var<storage, read> ce_targets: array<u32>;         // (N)
@group(0) @binding(2) var<storage, read_write> ce_grad: array<f32>;      // (N, V)
@group(0) @binding(3) var<storage, read_write> ce_row_loss: array<f32>;  // (N)
@group(0) @binding(4) var<uniform> ce: CeParams;

// row_loss[n] = logsumexp(z_n) − z_n[target_n]; grad = (softmax(z_n) − onehot) / N.
@compute @workgroup_size(256)
fn softmax_ce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = group_index(wid, nwg);
    if (row >= ce.rows) {
        return;
    }
    let base = row * ce.classes;
    var local_max = -3.402823e38;
    for (var j = lid; j < ce.classes; j = j + WG) {
        local_max = max(local_max, ce_logits[base + j]);
    }
    let row_max = reduce_max(lid, local_max);
    var local_sum = 0.0;
    for (var j = lid; j < ce.classes; j = j + WG) {
        local_sum = local_sum + exp(ce_logits[base + j] - row_max);
    }
    let log_sum = log(reduce_sum(lid, local_sum)) + row_max;
    let target_class = ce_targets[row];
    for (var j = lid; j < ce.classes; j = j + WG) {
        var g = exp(ce_logits[base + j] - log_sum) * ce.inv_rows;
        if (j == target_class) {
            g = g - ce.inv_rows;
        }
        ce_grad[base + j] = g;
    }
    if (lid == 0u) {
        ce_row_loss[row] = log_sum - ce_logits[base + min(target_class, ce.classes - 1u)];
    }
}

// ---- dropout ----

struct DropoutParams {
    len: u32,
    seed: u32,
    stream: u32,
    // hash values below this are kept: ⌊(1 − p) · 2³²⌋
    threshold: u32,
    // 1 / (1 − p)
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(5) var<storage, read_write> dropout_x: array<f32>;  // (n)
@group(0) @binding(6) var<uniform> dp: DropoutParams;

// x[i] ← keep(i) ? x[i] · scale : 0 (forward on activations, backward on their gradients).
@compute @workgroup_size(256)
fn dropout_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= dp.len) {
        return;
    }
    let keep = dropout_hash(dp.seed, dp.stream, i) < dp.threshold;
    dropout_x[i] = select(0.0, dropout_x[i] * dp.scale, keep);
}

// ---- clipping ----

struct ClipParams {
    len: u32,
    // number of partial sums (workgroups of sumsq_partial)
    partials: u32,
    // max_norm for norm clipping, the bound for value clipping
    limit: f32,
    _pad: u32,
}

@group(0) @binding(7) var<storage, read> norm_x: array<f32>;                // (n)
@group(0) @binding(8) var<storage, read_write> norm_partials: array<f32>;   // (⌈n / 1024⌉)
@group(0) @binding(9) var<storage, read_write> norm_out: array<f32>;        // (2): norm, coefficient
@group(0) @binding(10) var<uniform> cp: ClipParams;
@group(0) @binding(11) var<storage, read_write> clip_x: array<f32>;         // (n)

// Pass 1: partials[g] = Σ x² over elements [g·CHUNK, (g+1)·CHUNK).
@compute @workgroup_size(256)
fn sumsq_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = group_index(wid, nwg);
    if (g >= cp.partials) {
        return;
    }
    var acc = 0.0;
    for (var k = 0u; k < CHUNK / WG; k = k + 1u) {
        let i = g * CHUNK + k * WG + lid;
        if (i < cp.len) {
            let v = norm_x[i];
            acc = acc + v * v;
        }
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        norm_partials[g] = total;
    }
}

// Pass 2 (one workgroup): norm = √Σ partials, coefficient = min(1, max_norm / (norm + 1e-6)).
@compute @workgroup_size(256)
fn norm_finalize(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < cp.partials; i = i + WG) {
        acc = acc + norm_partials[i];
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(total);
        norm_out[0] = norm;
        norm_out[1] = min(1.0, cp.limit / (norm + 1e-6));
    }
}

// x[i] ← x[i] · coefficient (norm_out[1]).
@compute @workgroup_size(256)
fn scale_by_coefficient(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= cp.len) {
        return;
    }
    clip_x[i] = clip_x[i] * norm_out[1];
}

// x[i] ← clamp(x[i], −limit, limit).
@compute @workgroup_size(256)
fn clip_value(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= cp.len) {
        return;
    }
    clip_x[i] = clamp(clip_x[i], -cp.limit, cp.limit);
}

// ---- optimizers (torch.optim semantics) ----

struct SgdParams {
    len: u32,
    // 1 on the first step: the momentum buffer starts as the gradient
    first: u32,
    lr: f32,
    momentum: f32,
    // 1 − dampening
    keep: f32,
    weight_decay: f32,
    _pad0: u32,
    _pad1: u32,
}

struct AdamParams {
    len: u32,
    _pad0: u32,
    // lr / (1 − β1ᵗ)
    step_size: f32,
    // √(1 − β2ᵗ)
    correction2_sqrt: f32,
    // 1 − β1
    w1: f32,
    beta2: f32,
    // 1 − β2
    w2: f32,
    eps: f32,
    weight_decay: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(12) var<storage, read_write> opt_param: array<f32>;   // (n)
@group(0) @binding(13) var<storage, read> opt_grad: array<f32>;          // (n)
@group(0) @binding(14) var<storage, read_write> opt_state_a: array<f32>; // (n) momentum_buffer or exp_avg
@group(0) @binding(15) var<storage, read_write> opt_state_b: array<f32>; // (n) exp_avg_sq
@group(0) @binding(16) var<uniform> sgd: SgdParams;
@group(0) @binding(17) var<uniform> adam: AdamParams;

fn sgd_direction(i: u32) -> f32 {
    var d = opt_grad[i];
    if (sgd.weight_decay != 0.0) {
        d = d + sgd.weight_decay * opt_param[i];
    }
    return d;
}

// p ← p − lr · (g + wd · p).
@compute @workgroup_size(256)
fn sgd_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= sgd.len) {
        return;
    }
    opt_param[i] = opt_param[i] - sgd.lr * sgd_direction(i);
}

// buf ← first ? d : momentum · buf + (1 − dampening) · d; p ← p − lr · buf.
@compute @workgroup_size(256)
fn sgd_momentum_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= sgd.len) {
        return;
    }
    let d = sgd_direction(i);
    var buf = d;
    if (sgd.first == 0u) {
        buf = sgd.momentum * opt_state_a[i] + sgd.keep * d;
    }
    opt_state_a[i] = buf;
    opt_param[i] = opt_param[i] - sgd.lr * buf;
}

// m ← lerp(m, g, 1 − β1); v ← β2 · v + (1 − β2) · g²;
// p ← p − step_size · m / (√v / √(1 − β2ᵗ) + eps).
@compute @workgroup_size(256)
fn adam_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= adam.len) {
        return;
    }
    var g = opt_grad[i];
    if (adam.weight_decay != 0.0) {
        g = g + adam.weight_decay * opt_param[i];
    }
    var m = opt_state_a[i];
    if (adam.w1 < 0.5) {
        m = m + adam.w1 * (g - m);
    } else {
        m = g - (g - m) * (1.0 - adam.w1);
    }
    let v = opt_state_b[i] * adam.beta2 + adam.w2 * g * g;
    opt_state_a[i] = m;
    opt_state_b[i] = v;
    let denom = sqrt(v) / adam.correction2_sqrt + adam.eps;
    opt_param[i] = opt_param[i] - adam.step_size * (m / denom);
}

// ---- MSE on the GPU-resident training step (the output layer itself is gemm.wgsl) ----

struct MseParams {
    // N·O: output elements
    count: u32,
    // 1 / (N·O)
    inv_count: f32,
}

@group(0) @binding(20) var<storage, read> mse_out: array<f32>;             // (N, O)
@group(0) @binding(21) var<uniform> mp: MseParams;
@group(0) @binding(25) var<storage, read> mse_target: array<f32>;          // (N, O)
@group(0) @binding(26) var<storage, read_write> mse_sq: array<f32>;        // (N, O)
@group(0) @binding(27) var<storage, read_write> mse_grad: array<f32>;      // (N, O)

// sq = (out − target)², grad = 2 · (out − target) / (N·O).
@compute @workgroup_size(256)
fn mse_loss_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= mp.count) {
        return;
    }
    let d = mse_out[i] - mse_target[i];
    mse_sq[i] = d * d;
    mse_grad[i] = 2.0 * d * mp.inv_count;
}

// ---- embedding (token ids → rows of the flat parameter buffer) ----

struct EmbeddingParams {
    // T·B token positions
    positions: u32,
    // D: embedding width
    dim: u32,
    // V: vocabulary size
    vocab: u32,
    // element offset of embedding.weight in the flat buffers
    offset: u32,
}

@group(0) @binding(28) var<storage, read> emb_tokens: array<u32>;          // (T, B)
@group(0) @binding(29) var<storage, read> emb_params: array<f32>;          // (P) flat parameters
@group(0) @binding(30) var<storage, read_write> emb_out: array<f32>;       // (T, B, D)
@group(0) @binding(31) var<uniform> emb: EmbeddingParams;
@group(0) @binding(32) var<storage, read> emb_grad_out: array<f32>;        // (T, B, D)
@group(0) @binding(33) var<storage, read_write> emb_grads: array<f32>;     // (P) flat gradients

// out[p, d] = weight[token[p], d].
@compute @workgroup_size(256)
fn embedding_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= emb.positions * emb.dim) {
        return;
    }
    let p = i / emb.dim;
    let d = i % emb.dim;
    emb_out[i] = emb_params[emb.offset + emb_tokens[p] * emb.dim + d];
}

// d weight[v, d] = Σ over positions p with token v of d out[p, d], in order of p.
@compute @workgroup_size(256)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= emb.vocab * emb.dim) {
        return;
    }
    let v = i / emb.dim;
    let d = i % emb.dim;
    var acc = 0.0;
    for (var p = 0u; p < emb.positions; p = p + 1u) {
        if (emb_tokens[p] == v) {
            acc = acc + emb_grad_out[p * emb.dim + d];
        }
    }
    emb_grads[emb.offset + i] = acc;
}
