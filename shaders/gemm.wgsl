// C = A·B [+ bias] [+ C], with A and B read through arbitrary element strides, so that
// transposed operands need no copy:
//   A(m, k) = a[a_off + m·a_rs + k·a_cs]   (M, K)
//   B(k, n) = b[b_off + k·b_rs + n·b_cs]   (K, N)
//   C(m, n) = c[c_off + m·ldc + n]         (M, N)
// Workgroup tile 64×64, BK = 16; each of the 16×16 invocations owns a 4×4 register tile
// (rows ty + 16·i, columns tx + 16·jj). Sums run over k in ascending order: deterministic.

const TILE: u32 = 64u;
const BK: u32 = 16u;

struct Gemm {
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

@group(0) @binding(0) var<uniform> gp: Gemm;
@group(0) @binding(1) var<storage, read> a: array<f32>;           // (M, K) through a_rs, a_cs
@group(0) @binding(2) var<storage, read> b: array<f32>;           // (K, N) through b_rs, b_cs
@group(0) @binding(3) var<storage, read> bias: array<f32>;        // (N) at bias_off, read when use_bias
@group(0) @binding(4) var<storage, read_write> c: array<f32>;     // (M, N) with row stride ldc

var<workgroup> a_tile: array<f32, 1024>;   // (BK, TILE): a_tile[kk·64 + mm] = A(m0 + mm, k0 + kk)
var<workgroup> b_tile: array<f32, 1024>;   // (BK, TILE): b_tile[kk·64 + nn] = B(k0 + kk, n0 + nn)

@compute @workgroup_size(16, 16, 1)
fn gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m0 = wg.y * TILE;
    let n0 = wg.x * TILE;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < gp.k; k0 += BK) {
        for (var r = 0u; r < 4u; r++) {
            let e = li + r * 256u;
            // A: consecutive invocations walk k (contiguous when a_cs = 1).
            let kk_a = e % BK;
            let mm = e / BK;
            let m = m0 + mm;
            let ka = k0 + kk_a;
            var va = 0.0;
            if m < gp.m && ka < gp.k {
                va = a[gp.a_off + m * gp.a_rs + ka * gp.a_cs];
            }
            a_tile[kk_a * TILE + mm] = va;
            // B: consecutive invocations walk n (contiguous when b_cs = 1).
            let nn = e % TILE;
            let kk_b = e / TILE;
            let n = n0 + nn;
            let kb = k0 + kk_b;
            var vb = 0.0;
            if n < gp.n && kb < gp.k {
                vb = b[gp.b_off + kb * gp.b_rs + n * gp.b_cs];
            }
            b_tile[kk_b * TILE + nn] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[kk * TILE + lid.y + 16u * i];
                bv[i] = b_tile[kk * TILE + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var jj = 0u; jj < 4u; jj++) {
                    acc[i][jj] += av[i] * bv[jj];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let m = m0 + lid.y + 16u * i;
        for (var jj = 0u; jj < 4u; jj++) {
            let n = n0 + lid.x + 16u * jj;
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
