// C = A·B [+ bias] [+ C], with A and B read through arbitrary element strides, so that
// transposed operands need no copy:
//   A(m, k) = a[a_off + m·a_rs + k·a_cs]   (M, K)
//   B(k, n) = b[b_off + k·b_rs + n·b_cs]   (K, N)
//   C(m, n) = c[c_off + m·ldc + n]         (M, N)
// Workgroup tile 128 (m) × 64 (n), BK = 16; each of the 16×16 invocations owns an 8×4 register
// tile: rows 4·ty + i and 64 + 4·ty + i (i < 4), columns 4·tx + jj (jj < 4), read from workgroup
// memory as vec4s (three vec4 loads per 32 multiply-adds). Sums run over k in ascending order:
// deterministic.
//
// Specialised by override constants for the operands' layouts, so that consecutive invocations
// of a tile load read consecutive addresses: A_ALONG_K where a_cs = 1 (else a_rs = 1 is best),
// B_ALONG_K where b_rs = 1 (else b_cs = 1 is best).

override A_ALONG_K: bool = true;
override B_ALONG_K: bool = false;

const TILE_M: u32 = 128u;
const TILE_N: u32 = 64u;
const BK: u32 = 16u;
// Row lengths in vec4s of the workgroup tiles, padded by one vec4 against bank conflicts of
// the loads that walk k.
const A_ROW4: u32 = 33u;
const B_ROW4: u32 = 17u;

struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_rs: u32,
    a_cs: u32,
    b_off: u32,
    b_rs: u32,
    b_cs: u32,
    c_off: u32,
    ldc: u32,
    // 1: add the existing C.
    accumulate: u32,
    // 1: add bias[bias_off + n].
    use_bias: u32,
    bias_off: u32,
}

@group(0) @binding(0) var<uniform> gp: GemmParams;
@group(0) @binding(1) var<storage, read> a: array<f32>;           // (M, K) through a_rs, a_cs
@group(0) @binding(2) var<storage, read> b: array<f32>;           // (K, N) through b_rs, b_cs
@group(0) @binding(3) var<storage, read> bias: array<f32>;        // (N) at bias_off, read when use_bias
@group(0) @binding(4) var<storage, read_write> c: array<f32>;     // (M, N) with row stride ldc

// Elements of each tile that one of the 256 invocations loads.
const A_LOADS: u32 = TILE_M * BK / 256u;
const B_LOADS: u32 = TILE_N * BK / 256u;

var<workgroup> a_tile: array<vec4<f32>, BK * A_ROW4>;  // (BK, TILE_M / 4): a_tile[kk·A_ROW4 + mm / 4][mm % 4] = A(m0 + mm, k0 + kk)
var<workgroup> b_tile: array<vec4<f32>, BK * B_ROW4>;  // (BK, TILE_N / 4): b_tile[kk·B_ROW4 + nn / 4][nn % 4] = B(k0 + kk, n0 + nn)

// (mm, kk) of element e of an A tile, (nn, kk) of a B tile: k varies fastest along the operand's
// unit stride.
fn a_element(e: u32) -> vec2<u32> {
    if A_ALONG_K {
        return vec2<u32>(e / BK, e % BK);
    }
    return vec2<u32>(e % TILE_M, e / TILE_M);
}

fn b_element(e: u32) -> vec2<u32> {
    if B_ALONG_K {
        return vec2<u32>(e / BK, e % BK);
    }
    return vec2<u32>(e % TILE_N, e / TILE_N);
}

// This invocation's elements of the A and B tiles at k0 (zero past the matrices' edges).
struct TileLoads {
    a: array<f32, A_LOADS>,
    b: array<f32, B_LOADS>,
}

fn load_tiles(m0: u32, n0: u32, k0: u32, li: u32) -> TileLoads {
    var loads: TileLoads;
    for (var r = 0u; r < A_LOADS; r++) {
        let at = a_element(li + r * 256u);
        let m = m0 + at.x;
        let k = k0 + at.y;
        var v = 0.0;
        if m < gp.m && k < gp.k {
            v = a[gp.a_off + m * gp.a_rs + k * gp.a_cs];
        }
        loads.a[r] = v;
    }
    for (var r = 0u; r < B_LOADS; r++) {
        let at = b_element(li + r * 256u);
        let n = n0 + at.x;
        let k = k0 + at.y;
        var v = 0.0;
        if n < gp.n && k < gp.k {
            v = b[gp.b_off + k * gp.b_rs + n * gp.b_cs];
        }
        loads.b[r] = v;
    }
    return loads;
}

@compute @workgroup_size(16, 16, 1)
fn gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m0 = wg.y * TILE_M;
    let n0 = wg.x * TILE_N;
    // acc[i]: columns 4·tx .. 4·tx + 3 of row 4·ty + i (i < 4) or 64 + 4·ty + i - 4 (i ≥ 4).
    var acc = array<vec4<f32>, 8>();
    // The next tiles are read from memory before the current one's products (their latency
    // hidden behind them) and stored to workgroup memory after.
    var next = load_tiles(m0, n0, 0u, li);
    for (var k0 = 0u; k0 < gp.k; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let at = a_element(li + r * 256u);
            a_tile[at.y * A_ROW4 + at.x / 4u][at.x % 4u] = next.a[r];
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let at = b_element(li + r * 256u);
            b_tile[at.y * B_ROW4 + at.x / 4u][at.x % 4u] = next.b[r];
        }
        workgroupBarrier();
        if k0 + BK < gp.k {
            next = load_tiles(m0, n0, k0 + BK, li);
        }
        for (var kk = 0u; kk < BK; kk++) {
            let a_low = a_tile[kk * A_ROW4 + lid.y];
            let a_high = a_tile[kk * A_ROW4 + 16u + lid.y];
            let bv = b_tile[kk * B_ROW4 + lid.x];
            for (var i = 0u; i < 4u; i++) {
                acc[i] += a_low[i] * bv;
                acc[4u + i] += a_high[i] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 8u; i++) {
        let m = m0 + 4u * lid.y + 64u * (i / 4u) + i % 4u;
        for (var jj = 0u; jj < 4u; jj++) {
            let n = n0 + 4u * lid.x + jj;
            if m < gp.m && n < gp.n {
                var v = acc[i][jj];
                if gp.use_bias != 0u {
                    v += bias[gp.bias_off + n];
                }
                let index = gp.c_off + m * gp.ldc + n;
                if gp.accumulate != 0u {
                    v += c[index];
                }
                c[index] = v;
            }
        }
    }
}
