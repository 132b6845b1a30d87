// Embedding lookup and its gradient over token ids (T, B) and the embedding table (V, D), which
// lies at element `offset` of the flat parameter and gradient buffers. One invocation per output
// element; workgroups may be laid out on a 2-D grid (flat index (x + y · num_workgroups.x) · WG
// + local index). The CPU twin is src/train/layers.rs `Embedding`.

const WG: u32 = 256u;

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

@group(0) @binding(0) var<uniform> emb: EmbeddingParams;
@group(0) @binding(1) var<storage, read> emb_tokens: array<u32>;        // (T, B)
@group(0) @binding(2) var<storage, read> emb_params: array<f32>;        // (P) flat parameters
@group(0) @binding(3) var<storage, read_write> emb_out: array<f32>;     // (T, B, D)

@group(0) @binding(2) var<storage, read> emb_grad_out: array<f32>;      // (T, B, D)
@group(0) @binding(3) var<storage, read_write> emb_grads: array<f32>;   // (P) flat gradients

// out[p, d] = weight[token[p], d].
@compute @workgroup_size(WG)
fn embedding_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= emb.positions * emb.dim) {
        return;
    }
    let p = i / emb.dim;
    let d = i % emb.dim;
    emb_out[i] = emb_params[emb.offset + emb_tokens[p] * emb.dim + d];
}

// d weight[v, d] = Σ over positions p with token v of d out[p, d], in order of p.
@compute @workgroup_size(WG)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
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
