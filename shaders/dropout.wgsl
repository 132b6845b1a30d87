// Dropout masks from a counter-based hash, bitwise the same as src/train/dropout.rs: element i
// of stream s under seed k is kept when pcg(i + pcg(s + pcg(k))) < threshold. One invocation per
// element; workgroups may be laid out on a 2-D grid (flat index (x + y · num_workgroups.x) · WG
// + local index).

const WG: u32 = 256u;

struct DropoutParams {
    len: u32,
    seed: u32,
    stream: u32,
    // hash values below this are kept: ⌊(1 − p) · 2³²⌋
    threshold: u32,
    // 1 / (1 − p)
    scale: f32,
}

@group(0) @binding(0) var<uniform> dp: DropoutParams;
@group(0) @binding(1) var<storage, read_write> dropout_x: array<f32>;  // (len)

fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// x[i] ← keep(i) ? x[i] · scale : 0 (forward on activations, backward on their gradients).
@compute @workgroup_size(WG)
fn dropout_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= dp.len) {
        return;
    }
    let keep = pcg_hash(i + pcg_hash(dp.stream + pcg_hash(dp.seed))) < dp.threshold;
    dropout_x[i] = select(0.0, dropout_x[i] * dp.scale, keep);
}
