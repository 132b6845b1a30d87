// Utility kernels on flat row-major f32 buffers.
//
// Every entry point takes one invocation per output element and its parameters at binding 0
// (as every kernel of this crate: the sequence recorder binds them at a dynamic offset). Dispatch
// ceil(n / WORKGROUP_SIZE) workgroups split over (x, y) when that exceeds the per-dimension
// limit (GpuContext::grid_1d); the flat index is id.x + id.y * num_workgroups.x * WORKGROUP_SIZE.

override WORKGROUP_SIZE: u32 = 256u;

fn flat_index(id: vec3u, groups: vec3u) -> u32 {
    return id.x + id.y * groups.x * WORKGROUP_SIZE;
}

// ---- fill: out[i] = value for i < len ----

struct FillParams {
    len: u32,
    value: f32,
}

@group(0) @binding(0) var<uniform> fill_params: FillParams;
@group(0) @binding(1) var<storage, read_write> fill_out: array<f32>; // (len,)

@compute @workgroup_size(WORKGROUP_SIZE)
fn fill(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
    let i = flat_index(id, groups);
    if i < fill_params.len {
        fill_out[i] = fill_params.value;
    }
}

// ---- transpose: swaps the two leading axes, out[b, a, f] = in[a, b, f] ----
// Seq-major (T, B, F) -> batch-first (B, T, F) with (a, b) = (T, B); the reverse with (B, T).

struct TransposeParams {
    a: u32,
    b: u32,
    f: u32,
}

@group(0) @binding(0) var<uniform> transpose_params: TransposeParams;
@group(0) @binding(1) var<storage, read> transpose_in: array<f32>; // (A, B, F)
@group(0) @binding(2) var<storage, read_write> transpose_out: array<f32>; // (B, A, F)

@compute @workgroup_size(WORKGROUP_SIZE)
fn transpose(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
    let a = transpose_params.a;
    let b = transpose_params.b;
    let f = transpose_params.f;
    let i = flat_index(id, groups);
    if i >= a * b * f {
        return;
    }
    // i indexes the output (B, A, F).
    let fi = i % f;
    let ai = (i / f) % a;
    let bi = i / (f * a);
    transpose_out[i] = transpose_in[(ai * b + bi) * f + fi];
}

// ---- pack_half: rows of f32 rounded to f16, two per word ----
// out[r, p] = pack2x16float(in[r, 2p], in[r, 2p + 1]) (0 past the row's end): rows of ⌈cols/2⌉
// words, as recurrent.wgsl reads W_hh with HALF_WEIGHTS. Values beyond f16's range saturate at
// ±65504 (pack2x16float leaves them undefined).

const F16_MAX: f32 = 65504.0;

struct PackParams {
    rows: u32,
    cols: u32,
}

@group(0) @binding(0) var<uniform> pack_params: PackParams;
@group(0) @binding(1) var<storage, read> pack_in: array<f32>; // (rows, cols)
@group(0) @binding(2) var<storage, read_write> pack_out: array<u32>; // (rows, ⌈cols/2⌉)

@compute @workgroup_size(WORKGROUP_SIZE)
fn pack_half(@builtin(global_invocation_id) id: vec3u, @builtin(num_workgroups) groups: vec3u) {
    let cols = pack_params.cols;
    let pairs = (cols + 1u) / 2u;
    let i = flat_index(id, groups);
    if i >= pack_params.rows * pairs {
        return;
    }
    let r = i / pairs;
    let c = 2u * (i % pairs);
    var pair = vec2<f32>(pack_in[r * cols + c], 0.0);
    if c + 1u < cols {
        pair.y = pack_in[r * cols + c + 1u];
    }
    pack_out[i] = pack2x16float(clamp(pair, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}
