// Column sums of a row-major (rows, cols) block: dst[dst_off + n] = Σ_r src[src_off + r·cols + n].
// One invocation per column, rows summed in order: deterministic. Gives the bias gradients.

struct ColumnSumParams {
    rows: u32,
    cols: u32,
    src_off: u32,
    dst_off: u32,
}

@group(0) @binding(0) var<uniform> cp: ColumnSumParams;
@group(0) @binding(1) var<storage, read> src: array<f32>;         // (rows, cols) at src_off
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;   // (cols) at dst_off

@compute @workgroup_size(64, 1, 1)
fn column_sum(@builtin(global_invocation_id) id: vec3<u32>) {
    let n = id.x;
    if n >= cp.cols {
        return;
    }
    var sum = 0.0;
    for (var r = 0u; r < cp.rows; r++) {
        sum += src[cp.src_off + r * cp.cols + n];
    }
    dst[cp.dst_off + n] = sum;
}
