// Mean squared error, forward and backward, elementwise over the outputs (N, O). The CPU twin is
// src/train/loss.rs `mse`. One invocation per element; workgroups may be laid out on a 2-D grid
// (flat index (x + y · num_workgroups.x) · WG + local index).

const WG: u32 = 256u;

struct MseParams {
    // N·O: output elements
    count: u32,
    // 1 / (N·O)
    inv_count: f32,
}

@group(0) @binding(0) var<uniform> mp: MseParams;
@group(0) @binding(1) var<storage, read> mse_out: array<f32>;         // (N, O)
@group(0) @binding(2) var<storage, read> mse_target: array<f32>;      // (N, O)
@group(0) @binding(3) var<storage, read_write> mse_sq: array<f32>;    // (N, O)
@group(0) @binding(4) var<storage, read_write> mse_grad: array<f32>;  // (N, O)

// sq = (out − target)², grad = 2 · (out − target) / (N·O).
@compute @workgroup_size(WG)
fn mse_loss_grad(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= mp.count) {
        return;
    }
    let d = mse_out[i] - mse_target[i];
    mse_sq[i] = d * d;
    mse_grad[i] = 2.0 * d * mp.inv_count;
}
