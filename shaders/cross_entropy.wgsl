// Fused softmax cross-entropy, forward and backward: one workgroup per row of logits (N, V).
// The CPU twin is src/train/loss.rs `cross_entropy`. Rows may be laid out on a 2-D grid of
// workgroups (x + y · num_workgroups.x) when one dimension is not enough.

const WG: u32 = 256u;

struct CeParams {
    rows: u32,
    classes: u32,
    // 1 / rows: the mean over rows
    inv_rows: f32,
}

@group(0) @binding(0) var<uniform> ce: CeParams;
@group(0) @binding(1) var<storage, read> ce_logits: array<f32>;          // (N, V)
@group(0) @binding(2) var<storage, read> ce_targets: array<u32>;         // (N)
@group(0) @binding(3) var<storage, read_write> ce_grad: array<f32>;      // (N, V)
@group(0) @binding(4) var<storage, read_write> ce_row_loss: array<f32>;  // (N)

// reduce_max, reduce_sum: workgroup_reduce.wgsl, appended.

// row_loss[n] = logsumexp(z_n) − z_n[target_n]; grad = (softmax(z_n) − onehot) / N.
@compute @workgroup_size(WG)
fn softmax_ce(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
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
