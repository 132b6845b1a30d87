// Gradient clipping over a flat gradient buffer: the global L2 norm in two deterministic passes
// (no atomics), the scale by min(1, max_norm / (norm + 1e-6)) as torch's clip_grad_norm_, and
// clipping by value. The CPU twins are in src/train/clip.rs. Elementwise kernels take one
// invocation per element; workgroups may be laid out on a 2-D grid (group x + y ·
// num_workgroups.x).

const WG: u32 = 256u;
// Elements summed by one workgroup of `sumsq_partial`.
const CHUNK: u32 = 1024u;

struct ClipParams {
    // n: gradient elements
    len: u32,
    // number of partial sums (workgroups of sumsq_partial)
    partials: u32,
    // max_norm for norm clipping, the bound for value clipping
    limit: f32,
}

@group(0) @binding(0) var<uniform> cp: ClipParams;

@group(0) @binding(1) var<storage, read> norm_x: array<f32>;               // (n)
@group(0) @binding(2) var<storage, read_write> norm_partials: array<f32>;  // (⌈n / 1024⌉)

@group(0) @binding(1) var<storage, read> final_partials: array<f32>;       // (⌈n / 1024⌉)
@group(0) @binding(2) var<storage, read_write> norm_out: array<f32>;       // (2): norm, coefficient

@group(0) @binding(1) var<storage, read> scale_norm: array<f32>;           // (2): norm, coefficient
@group(0) @binding(2) var<storage, read_write> scale_x: array<f32>;        // (n)

@group(0) @binding(1) var<storage, read_write> clip_x: array<f32>;         // (n)

// reduce_max, reduce_sum: workgroup_reduce.wgsl, appended.

// Pass 1: partials[g] = Σ x² over elements [g·CHUNK, (g+1)·CHUNK).
@compute @workgroup_size(WG)
fn sumsq_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wid.x + wid.y * nwg.x;
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
@compute @workgroup_size(WG)
fn norm_finalize(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < cp.partials; i = i + WG) {
        acc = acc + final_partials[i];
    }
    let total = reduce_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(total);
        norm_out[0] = norm;
        norm_out[1] = min(1.0, cp.limit / (norm + 1e-6));
    }
}

// x[i] ← x[i] · coefficient.
@compute @workgroup_size(WG)
fn scale_by_coefficient(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= cp.len) {
        return;
    }
    scale_x[i] = scale_x[i] * scale_norm[1];
}

// x[i] ← clamp(x[i], −limit, limit).
@compute @workgroup_size(WG)
fn clip_value(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= cp.len) {
        return;
    }
    clip_x[i] = clamp(clip_x[i], -cp.limit, cp.limit);
}
