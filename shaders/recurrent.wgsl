// Generic fused time-step kernels shared by every cell. This file is appended to a cell file
// (rnn.wgsl, lstm.wgsl or gru.wgsl) that defines:
//   const GATES: u32        G, gate blocks in the rows of W_hh (1, 4 or 3)
//   const SAVED: u32        S, values per hidden unit saved for backward (at most 4)
//   const HAS_C: bool       whether the cell has a cell state c
//   const GRAD_PLANES: u32  1 when dG_x = dG_h, 2 when they differ (GRU)
//   fn cell_forward(xg, hg, h_prev, c_prev) -> CellForward
//   fn cell_backward(dh, dc, saved, h_prev, c_prev, c_cur) -> CellBackward
// Tiled step kernels: a workgroup of WJ × KS invocations covers WJ hidden units and ROWS batch
// rows. Invocation (x, y) accumulates, for unit j0 + x and all ROWS rows, the k-slice y of every
// k tile (KSTEP of its TK values), so each W_hh value read from workgroup memory feeds ROWS rows
// and each h value (read by all 32 invocations of a subgroup at once) feeds every gate: per k,
// G W_hh values and 4 vec4s of h feed 16·G multiply-adds (LSTM: 64 per 8 loads, against 8 per
// 6 with one unit × 2 rows per invocation). The KS slices' partial sums are
// then added in slice order through workgroup memory (deterministic), leaving invocation (x, y)
// rows y and y + KS. STEP_TILE in src/gpu/kernels.rs is (WJ, ROWS).
// Rows of state-like buffers are (B, H); a "slot" offset selects one (B, H) block.

const WJ: u32 = 32u;
const KS: u32 = 8u;
// Batch rows per workgroup: 2·KS, so that each invocation finishes two rows.
const ROWS: u32 = 2u * KS;
// Vec4s of ROWS rows, and the padded row length (in vec4s) of the row tiles in workgroup
// memory: with 5 vec4s per k, the 8 k × 4 rows that one subgroup of 32 stores hit 32 banks.
const QUADS: u32 = ROWS / 4u;
const QUADS_PAD: u32 = QUADS + 1u;
const TK: u32 = 32u;
const KSTEP: u32 = TK / KS;
// Padded row length of the forward W_hh tile in workgroup memory (conflict-free column reads).
const TKP: u32 = TK + 1u;
// Elements of a (ROWS, TK) tile and of a (WJ, TK) tile that each of the WJ·KS invocations loads.
const ROW_LOADS: u32 = ROWS * TK / (WJ * KS);
const UNIT_LOADS: u32 = WJ * TK / (WJ * KS);

// Partial sums of one half of the rows: (KS slices, ROWS / 2 rows, WJ units).
var<workgroup> slice_sums: array<f32, KS * (ROWS / 2u) * WJ>;
// The k tile of the batch rows: h_{t-1} (forward_step) or dG_h[t_prev] (backward_step).
var<workgroup> row_tile: array<vec4<f32>, TK * QUADS_PAD>;  // (TK, QUADS_PAD): row_tile[kk·QUADS_PAD + r / 4][r % 4] = row b0 + r, column k0 + kk

// Element e (< ROWS·TK) of a (ROWS, TK) tile load as (row, kk): 32 consecutive e cover 4 rows ×
// 8 consecutive k, so a subgroup reads four 32-byte segments and stores to distinct banks.
fn tile_element(e: u32) -> vec2<u32> {
    let lane = e % 32u;
    let block = e / 32u;
    let kk = (block % (TK / 8u)) * 8u + lane % 8u;
    let r = (block / (TK / 8u)) * 4u + lane / 8u;
    return vec2<u32>(r, kk);
}

// Stores this invocation's elements of a row tile (as loaded at tile_element(li + r·WJ·KS)).
fn store_row_tile(li: u32, values: array<f32, ROW_LOADS>) {
    for (var r = 0u; r < ROW_LOADS; r++) {
        let at = tile_element(li + r * WJ * KS);
        row_tile[at.y * QUADS_PAD + at.x / 4u][at.x % 4u] = values[r];
    }
}

// Adds the KS slices' partial sums of rows half·KS .. half·KS + KS - 1 of unit x, where
// `quads` are this invocation's (slice y's) sums of those rows; returns row half·KS + y.
// Every invocation of the workgroup must call it (it holds barriers).
fn add_slices(x: u32, y: u32, quads: array<vec4<f32>, 2>) -> f32 {
    for (var q = 0u; q < 2u; q++) {
        for (var c = 0u; c < 4u; c++) {
            slice_sums[(y * KS + 4u * q + c) * WJ + x] = quads[q][c];
        }
    }
    workgroupBarrier();
    var sum = 0.0;
    for (var s = 0u; s < KS; s++) {
        sum += slice_sums[(s * KS + y) * WJ + x];
    }
    workgroupBarrier();
    return sum;
}

// Logistic without overflow or cancellation: exp only of non-positive arguments.
fn sigmoid(x: f32) -> f32 {
    let e = exp(-abs(x));
    return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0);
}

// tanh without overflow (exp only of non-positive arguments) and without cancellation near 0
// (odd Taylor series up to x⁹ there: its error is below 1e-12 relative for |x| < 0.125).
fn tanh_stable(x: f32) -> f32 {
    let a = abs(x);
    var t: f32;
    if a < 0.125 {
        let a2 = a * a;
        t = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0 + a2 * (62.0 / 2835.0)))));
    } else {
        let e = exp(-2.0 * a);
        t = (1.0 - e) / (1.0 + e);
    }
    return select(-t, t, x >= 0.0);
}

struct CellForward {
    h: f32,
    c: f32,
    saved: array<f32, 4>,
}

struct CellBackward {
    // Gradient of the input-side pre-activations (rows of W_ih, b_ih).
    dgx: array<f32, 4>,
    // Gradient of the hidden-side pre-activations (rows of W_hh, b_hh).
    dgh: array<f32, 4>,
    // Part of dh_{t-1} that does not go through W_hh.
    dh_direct: f32,
    dc_prev: f32,
}

// ---------------------------------------------------------------- forward step

struct ForwardStepParams {
    batch: u32,
    hidden: u32,
    t: u32,
    // 1: write the saved activations.
    train: u32,
    // Element offsets of the (B, H) slot holding h_{t-1} (c_{t-1}) and of the slot receiving h_t.
    read_slot: u32,
    write_slot: u32,
    // Column offset d·H and row length D·H of the output.
    out_col: u32,
    out_stride: u32,
    // Time indices of this step's rows in xproj and in output: t minus the first time of the
    // chunk the buffer holds (0 for a buffer holding all T).
    xproj_t: u32,
    out_t: u32,
}

// Inference with W_hh rounded to f16 (util.wgsl pack_half): half the bytes per step read.
override HALF_WEIGHTS: bool = false;

@group(0) @binding(0) var<uniform> fp: ForwardStepParams;
@group(0) @binding(1) var<storage, read> xproj: array<f32>;              // (T_c, B, G·H): x·W_ihᵀ + b_ih of one chunk
@group(0) @binding(2) var<storage, read> w_hh: array<u32>;               // (G·H, H) f32 bits; HALF_WEIGHTS: (G·H, ⌈H/2⌉) f16 pairs
@group(0) @binding(3) var<storage, read> b_hh: array<f32>;               // (G·H)
@group(0) @binding(4) var<storage, read> lengths: array<u32>;            // (B)
@group(0) @binding(5) var<storage, read_write> h_states: array<f32>;     // (slots, B, H)
@group(0) @binding(6) var<storage, read_write> c_states: array<f32>;     // (slots, B, H), LSTM only
@group(0) @binding(7) var<storage, read_write> output: array<f32>;       // (T or T_c, B, D·H)
@group(0) @binding(8) var<storage, read_write> saved: array<f32>;        // (T, B, S·H), training only

var<workgroup> w_tile: array<f32, GATES * WJ * TKP>;   // (G·WJ, TKP): w_tile[(g·WJ + x)·TKP + kk] = W_hh[g·H + j0 + x, k0 + kk]

// W_hh[row, k] as f32.
fn recurrent_weight(row: u32, k: u32) -> f32 {
    let H = fp.hidden;
    if HALF_WEIGHTS {
        return unpack2x16float(w_hh[row * ((H + 1u) / 2u) + k / 2u])[k % 2u];
    }
    return bitcast<f32>(w_hh[row * H + k]);
}

// This invocation's elements of the h_{t-1} tile and the W_hh tile at k0 (zero past the edges).
struct ForwardTiles {
    h: array<f32, ROW_LOADS>,
    // (G·WJ, TK) tile: element e = li + r·WJ·KS is row e / TK, column e % TK (consecutive
    // invocations read consecutive k).
    w: array<f32, 4 * UNIT_LOADS>,
}

fn load_forward_tiles(j0: u32, b0: u32, k0: u32, li: u32) -> ForwardTiles {
    let B = fp.batch;
    let H = fp.hidden;
    var tiles: ForwardTiles;
    for (var r = 0u; r < ROW_LOADS; r++) {
        let at = tile_element(li + r * WJ * KS);
        let b = b0 + at.x;
        let k = k0 + at.y;
        var v = 0.0;
        if b < B && k < H {
            v = h_states[fp.read_slot + b * H + k];
        }
        tiles.h[r] = v;
    }
    for (var r = 0u; r < GATES * UNIT_LOADS; r++) {
        let e = li + r * WJ * KS;
        let row = e / TK;
        let jj = j0 + row % WJ;
        let k = k0 + e % TK;
        var v = 0.0;
        if jj < H && k < H {
            v = recurrent_weight((row / WJ) * H + jj, k);
        }
        tiles.w[r] = v;
    }
    return tiles;
}

@compute @workgroup_size(32, 8, 1)
fn forward_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let B = fp.batch;
    let H = fp.hidden;
    let j0 = wg.x * WJ;
    let b0 = wg.y * ROWS;
    let j = j0 + lid.x;

    // acc[g·QUADS + q][c]: gate g of unit j, row b0 + 4q + c, over slice lid.y of k.
    var acc = array<vec4<f32>, 4 * QUADS>();
    // The next tiles are read from memory before the current one's products (their latency
    // hidden behind them) and stored to workgroup memory after.
    var next = load_forward_tiles(j0, b0, 0u, li);
    for (var k0 = 0u; k0 < H; k0 += TK) {
        store_row_tile(li, next.h);
        for (var r = 0u; r < GATES * UNIT_LOADS; r++) {
            let e = li + r * WJ * KS;
            w_tile[(e / TK) * TKP + e % TK] = next.w[r];
        }
        workgroupBarrier();
        if k0 + TK < H {
            next = load_forward_tiles(j0, b0, k0 + TK, li);
        }
        for (var step = 0u; step < KSTEP; step++) {
            let kk = lid.y * KSTEP + step;
            var w = array<f32, 4>();
            for (var g = 0u; g < GATES; g++) {
                w[g] = w_tile[(g * WJ + lid.x) * TKP + kk];
            }
            for (var q = 0u; q < QUADS; q++) {
                let hv = row_tile[kk * QUADS_PAD + q];
                for (var g = 0u; g < GATES; g++) {
                    acc[g * QUADS + q] += w[g] * hv;
                }
            }
        }
        workgroupBarrier();
    }

    // gates[half][g]: gate g of unit j, row b0 + lid.y + KS·half, summed over the slices.
    var gates = array<array<f32, 4>, 2>();
    for (var g = 0u; g < GATES; g++) {
        for (var half = 0u; half < 2u; half++) {
            let quads = array<vec4<f32>, 2>(acc[g * QUADS + 2u * half], acc[g * QUADS + 2u * half + 1u]);
            gates[half][g] = add_slices(lid.x, lid.y, quads);
        }
    }
    for (var half = 0u; half < 2u; half++) {
        let b = b0 + lid.y + KS * half;
        if j < H && b < B {
            finish_forward(j, b, gates[half]);
        }
    }
}

// Small-batch forward step: workgroup (j, y) covers hidden unit j and the RB batch rows from
// b0 = RB·y; its RW invocations split k and accumulate every gate of unit j for those rows,
// then a tree reduction in workgroup memory (fixed order: deterministic). H·⌈B/RB⌉ workgroups
// keep a large GPU busy where the tiled kernel above launches only H/32 for B ≤ 16 (each reads
// W_hh row j: ⌈B/RB⌉ passes over W_hh per step). STEP_ROWS_PER_GROUP in src/gpu/kernels.rs is
// RB.
const RW: u32 = 64u;
const RB: u32 = 4u;

var<workgroup> partial: array<f32, GATES * RB * RW>;  // (G·RB, RW) partial dot products

// Adds partial[e·RW + 0 .. RW) into partial[e·RW] for e < count, in a fixed order (a tree),
// after every invocation wrote its partial[e·RW + li]. Every invocation must call it (barriers).
fn add_partials(li: u32, count: u32) {
    workgroupBarrier();
    for (var stride = RW / 2u; stride > 0u; stride /= 2u) {
        if li < stride {
            for (var e = 0u; e < count; e++) {
                partial[e * RW + li] += partial[e * RW + li + stride];
            }
        }
        workgroupBarrier();
    }
}

// Invocation li's share (k = li, li + RW, …) of (h_{t-1}·W_hhᵀ)[b0 + b, g·H + j] at
// [g·RB + b]. Loops over the constants RB and GATES unroll, so the sums stay in registers; rows
// b0 + b ≥ B multiply zeros.
fn unit_partial_sums(j: u32, b0: u32, li: u32) -> array<f32, GATES * RB> {
    let B = fp.batch;
    let H = fp.hidden;
    var acc = array<f32, GATES * RB>();
    for (var k = li; k < H; k += RW) {
        var hv = array<f32, RB>();
        for (var b = 0u; b < RB; b++) {
            if b0 + b < B {
                hv[b] = h_states[fp.read_slot + (b0 + b) * H + k];
            }
        }
        for (var g = 0u; g < GATES; g++) {
            let w = recurrent_weight(g * H + j, k);
            for (var b = 0u; b < RB; b++) {
                acc[g * RB + b] += w * hv[b];
            }
        }
    }
    return acc;
}

@compute @workgroup_size(64, 1, 1)
fn forward_step_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let j = wg.x;
    let b0 = wg.y * RB;
    let acc = unit_partial_sums(j, b0, li);
    for (var e = 0u; e < GATES * RB; e++) {
        partial[e * RW + li] = acc[e];
    }
    add_partials(li, GATES * RB);
    if li < RB && b0 + li < fp.batch {
        var unit = array<f32, 4>();
        for (var g = 0u; g < GATES; g++) {
            unit[g] = partial[(g * RB + li) * RW];
        }
        finish_forward(j, b0 + li, unit);
    }
}

// The cell update of unit j, batch row b at step fp.t from acc[g] = (h_{t-1}·W_hhᵀ)[b, g·H + j].
fn finish_forward(j: u32, b: u32, acc: array<f32, 4>) {
    let B = fp.batch;
    let H = fp.hidden;
    let GH = GATES * H;
    let t = fp.t;
    let row = t * B + b;
    let prev = fp.read_slot + b * H + j;
    let next = fp.write_slot + b * H + j;
    let h_prev = h_states[prev];
    var c_prev = 0.0;
    if HAS_C {
        c_prev = c_states[prev];
    }
    let out_index = (fp.out_t * B + b) * fp.out_stride + fp.out_col + j;
    if t < lengths[b] {
        var xg = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        var hg = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        for (var g = 0u; g < GATES; g++) {
            xg[g] = xproj[(fp.xproj_t * B + b) * GH + g * H + j];
            hg[g] = acc[g] + b_hh[g * H + j];
        }
        let cell = cell_forward(xg, hg, h_prev, c_prev);
        var acts = cell.saved;
        h_states[next] = cell.h;
        if HAS_C {
            c_states[next] = cell.c;
        }
        output[out_index] = cell.h;
        if fp.train != 0u {
            for (var s = 0u; s < SAVED; s++) {
                saved[row * SAVED * H + s * H + j] = acts[s];
            }
        }
    } else {
        // Past the sequence's end: the state is carried unchanged and the output is zero.
        h_states[next] = h_prev;
        if HAS_C {
            c_states[next] = c_prev;
        }
        output[out_index] = 0.0;
        if fp.train != 0u {
            for (var s = 0u; s < SAVED; s++) {
                saved[row * SAVED * H + s * H + j] = 0.0;
            }
        }
    }
}


// --------------------------------------------------------------- backward step

struct BackwardStepParams {
    batch: u32,
    hidden: u32,
    t: u32,
    // 1: add dG_h of the previously processed step (time t_prev) times W_hh to the carry.
    has_prev: u32,
    t_prev: u32,
    // 1: only finish dh_0 = carry + dG_h[t_prev]·W_hh and dc_0; no gates at t.
    finish: u32,
    // Element offsets of the (B, H) state slots before and after time t.
    prev_slot: u32,
    cur_slot: u32,
    // Element offsets of the carry slots read and written; c's part follows at + B·H.
    carry_read: u32,
    carry_write: u32,
    // Column offset d·H and row length D·H of the output gradient.
    dout_col: u32,
    dout_stride: u32,
    // Element offsets of the dG_x and dG_h planes (equal unless GRAD_PLANES = 2).
    dgx_off: u32,
    dgh_off: u32,
}

@group(0) @binding(0) var<uniform> bp: BackwardStepParams;
@group(0) @binding(1) var<storage, read> bw_hh: array<f32>;              // (G·H, H); backward_step_rows: W_hhᵀ (H, G·H)
@group(0) @binding(2) var<storage, read> blengths: array<u32>;           // (B)
@group(0) @binding(3) var<storage, read> bh_states: array<f32>;          // (T+1, B, H)
@group(0) @binding(4) var<storage, read> bc_states: array<f32>;          // (T+1, B, H), LSTM only
@group(0) @binding(5) var<storage, read> bsaved: array<f32>;             // (T, B, S·H)
@group(0) @binding(6) var<storage, read> d_output: array<f32>;           // (T, B, D·H)
@group(0) @binding(7) var<storage, read_write> d_gates: array<f32>;      // (GRAD_PLANES, T, B, G·H)
@group(0) @binding(8) var<storage, read_write> carry: array<f32>;        // (2, 2, B, H): slot, (dh, dc)

var<workgroup> wt_tile: array<f32, TK * WJ>;            // (TK, WJ): wt_tile[kk·WJ + x] = W_hh[k0 + kk, j0 + x]

// This invocation's elements of the dG_h[t_prev] tile and the W_hh tile at k0 (zero past the
// edges).
struct BackwardTiles {
    dg: array<f32, ROW_LOADS>,
    // (TK, WJ) tile: element e = li + r·WJ·KS is row e / WJ, column e % WJ.
    wt: array<f32, UNIT_LOADS>,
}

fn load_backward_tiles(j0: u32, b0: u32, k0: u32, li: u32) -> BackwardTiles {
    let B = bp.batch;
    let H = bp.hidden;
    let GH = GATES * H;
    let base = bp.dgh_off + bp.t_prev * B * GH;
    var tiles: BackwardTiles;
    for (var r = 0u; r < ROW_LOADS; r++) {
        let at = tile_element(li + r * WJ * KS);
        let b = b0 + at.x;
        let k = k0 + at.y;
        var v = 0.0;
        if b < B && k < GH {
            v = d_gates[base + b * GH + k];
        }
        tiles.dg[r] = v;
    }
    for (var r = 0u; r < UNIT_LOADS; r++) {
        let e = li + r * WJ * KS;
        let k = k0 + e / WJ;
        let jj = j0 + e % WJ;
        var v = 0.0;
        if k < GH && jj < H {
            v = bw_hh[k * H + jj];
        }
        tiles.wt[r] = v;
    }
    return tiles;
}

@compute @workgroup_size(32, 8, 1)
fn backward_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let B = bp.batch;
    let H = bp.hidden;
    let GH = GATES * H;
    let j0 = wg.x * WJ;
    let j = j0 + lid.x;
    let b0 = wg.y * ROWS;

    // dh through W_hh from the step processed before: dG_h[t_prev] (B, G·H) · W_hh (G·H, H);
    // acc[q][c] for row b0 + 4q + c over slice lid.y of k.
    var acc = array<vec4<f32>, QUADS>();
    if bp.has_prev != 0u {
        // As in forward_step: the next tiles are read before the current one's products.
        var next = load_backward_tiles(j0, b0, 0u, li);
        for (var k0 = 0u; k0 < GH; k0 += TK) {
            store_row_tile(li, next.dg);
            for (var r = 0u; r < UNIT_LOADS; r++) {
                wt_tile[li + r * WJ * KS] = next.wt[r];
            }
            workgroupBarrier();
            if k0 + TK < GH {
                next = load_backward_tiles(j0, b0, k0 + TK, li);
            }
            for (var step = 0u; step < KSTEP; step++) {
                let kk = lid.y * KSTEP + step;
                let w = wt_tile[kk * WJ + lid.x];
                for (var q = 0u; q < QUADS; q++) {
                    acc[q] += row_tile[kk * QUADS_PAD + q] * w;
                }
            }
            workgroupBarrier();
        }
    }
    for (var half = 0u; half < 2u; half++) {
        let dh_rec = add_slices(lid.x, lid.y, array<vec4<f32>, 2>(acc[2u * half], acc[2u * half + 1u]));
        let b = b0 + lid.y + KS * half;
        if j < H && b < B {
            finish_backward(j, b, dh_rec);
        }
    }
}

// Small-batch backward step, as forward_step_rows: workgroup (j, y) covers unit j and rows
// b0 = RB·y …; its RW invocations split the G·H products of dG_h[t_prev]·W_hh[:, j], reading
// row j of W_hhᵀ (contiguous, where column j of W_hh is strided), then a fixed-order tree
// reduction. H·⌈B/RB⌉ workgroups where backward_step launches H/32 for B ≤ 16.
@compute @workgroup_size(64, 1, 1)
fn backward_step_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let B = bp.batch;
    let GH = GATES * bp.hidden;
    let j = wg.x;
    let b0 = wg.y * RB;
    var acc = array<f32, RB>();
    if bp.has_prev != 0u {
        let base = bp.dgh_off + bp.t_prev * B * GH;
        for (var k = li; k < GH; k += RW) {
            let w = bw_hh[j * GH + k];
            for (var b = 0u; b < RB; b++) {
                if b0 + b < B {
                    acc[b] += d_gates[base + (b0 + b) * GH + k] * w;
                }
            }
        }
    }
    for (var b = 0u; b < RB; b++) {
        partial[b * RW + li] = acc[b];
    }
    add_partials(li, RB);
    if li < RB && b0 + li < B {
        finish_backward(j, b0 + li, partial[li * RW]);
    }
}

// The cell backward of unit j, batch row b at step bp.t, given dh_rec = (dG_h[t_prev]·W_hh)[b, j].
fn finish_backward(j: u32, b: u32, dh_rec: f32) {
    let B = bp.batch;
    let H = bp.hidden;
    let GH = GATES * H;
    let BH = B * H;
    let unit = b * H + j;
    let dh_total = carry[bp.carry_read + unit] + dh_rec;
    let dc_carry = carry[bp.carry_read + BH + unit];
    if bp.finish != 0u {
        carry[bp.carry_write + unit] = dh_total;
        carry[bp.carry_write + BH + unit] = dc_carry;
        return;
    }
    let t = bp.t;
    let row = t * B + b;
    let gx = bp.dgx_off + row * GH + j;
    let gh = bp.dgh_off + row * GH + j;
    if t < blengths[b] {
        let dh = dh_total + d_output[row * bp.dout_stride + bp.dout_col + j];
        var acts = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
        for (var s = 0u; s < SAVED; s++) {
            acts[s] = bsaved[row * SAVED * H + s * H + j];
        }
        let h_prev = bh_states[bp.prev_slot + unit];
        var c_prev = 0.0;
        var c_cur = 0.0;
        if HAS_C {
            c_prev = bc_states[bp.prev_slot + unit];
            c_cur = bc_states[bp.cur_slot + unit];
        }
        let grad = cell_backward(dh, dc_carry, acts, h_prev, c_prev, c_cur);
        var dgx = grad.dgx;
        var dgh = grad.dgh;
        for (var g = 0u; g < GATES; g++) {
            d_gates[gx + g * H] = dgx[g];
            if GRAD_PLANES == 2u {
                d_gates[gh + g * H] = dgh[g];
            }
        }
        carry[bp.carry_write + unit] = grad.dh_direct;
        carry[bp.carry_write + BH + unit] = grad.dc_prev;
    } else {
        // Past the sequence's end the state was copied: its gradient passes through unchanged.
        for (var g = 0u; g < GATES; g++) {
            d_gates[gx + g * H] = 0.0;
            if GRAD_PLANES == 2u {
                d_gates[gh + g * H] = 0.0;
            }
        }
        carry[bp.carry_write + unit] = dh_total;
        carry[bp.carry_write + BH + unit] = dc_carry;
    }
}
