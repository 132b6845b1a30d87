//! The sequence driver: records the forward or backward pass of every layer, direction and time
//! step into one compute pass (see [`Recorder`]). One driver serves all cells: a cell is its
//! gate count, its saved activations and its two fused step kernels.
//!
//! Data flow, forward, per layer l and direction d:
//!   x_l (T, B, In) → gemm → xproj (T, B, G·H) → T × forward_step → out_l[:, :, d·H..] and states.
//! Backward, per layer from the top, per direction:
//!   d_out_l → T × backward_step (+ one finishing step for dh_0) → dG (planes, T, B, G·H)
//!   → gemm dW_ih = dG_xᵀ·x_l, dW_hh = dG_hᵀ·H_prev, column sums db, dx_l += dG_x·W_ih.

use super::buffer::GpuTensor;
use super::context::GpuContext;
use super::kernels::{CellKernels, GemmParams, Recorder, STEP_TILE};
use crate::config::{CellKind, RnnConfig};
use crate::error::Result;

/// Weights of one layer and direction on the GPU, in torch layout.
#[derive(Debug)]
pub(crate) struct LayerWeights {
    /// (G·H, In)
    pub w_ih: GpuTensor,
    /// (G·H, H)
    pub w_hh: GpuTensor,
    /// (G·H); zeros without bias
    pub b_ih: GpuTensor,
    /// (G·H); zeros without bias
    pub b_hh: GpuTensor,
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub t: usize,
    pub b: usize,
    pub h: usize,
    pub gates: usize,
    pub layers: usize,
    pub directions: usize,
    pub input: usize,
    /// Values per unit saved for backward.
    pub saved: usize,
    pub has_c: bool,
    /// 2 when dG_x and dG_h differ (GRU), else 1.
    pub grad_planes: usize,
}

impl Dims {
    pub fn new(config: &RnnConfig, t: usize, b: usize) -> Self {
        let (saved, grad_planes) = match config.cell {
            CellKind::Rnn(_) => (1, 1),
            CellKind::Lstm => (4, 1),
            CellKind::Gru => (4, 2),
        };
        Dims {
            t,
            b,
            h: config.hidden_size,
            gates: config.cell.gates(),
            layers: config.num_layers,
            directions: config.num_directions(),
            input: config.input_size,
            saved,
            has_c: config.cell.has_cell_state(),
            grad_planes,
        }
    }

    fn gh(&self) -> usize {
        self.gates * self.h
    }

    fn bh(&self) -> usize {
        self.b * self.h
    }

    fn layer_input(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input
        } else {
            self.directions * self.h
        }
    }

    fn step_groups(&self) -> (usize, usize) {
        (self.h.div_ceil(STEP_TILE.0), self.b.div_ceil(STEP_TILE.1))
    }

    /// Times in the order direction `d` processes them.
    fn times(&self, d: usize) -> Vec<usize> {
        if d == 0 {
            (0..self.t).collect()
        } else {
            (0..self.t).rev().collect()
        }
    }
}

/// Where the recurrent state of one layer and direction lives during a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateLayout {
    /// Two (B, H) slots used alternately: inference.
    PingPong,
    /// T + 1 slots, slot t holding the state entering time t (forward direction) or leaving it
    /// (reverse): training, so that backward finds every h_{t-1} and c_t.
    Sequence,
}

impl StateLayout {
    fn slots(self, t: usize) -> usize {
        match self {
            StateLayout::PingPong => 2,
            StateLayout::Sequence => t + 1,
        }
    }

    /// Element offsets of the (B, H) slots read and written at processing index `step`
    /// (time `t`) of direction `d`.
    fn step_offsets(self, dims: &Dims, d: usize, step: usize, t: usize) -> (usize, usize) {
        let (read, write) = match (self, d) {
            (StateLayout::PingPong, _) => (step % 2, (step + 1) % 2),
            (StateLayout::Sequence, 0) => (t, t + 1),
            (StateLayout::Sequence, _) => (t + 1, t),
        };
        (read * dims.bh(), write * dims.bh())
    }

    fn initial_slot(self, dims: &Dims, d: usize) -> usize {
        match (self, d) {
            (StateLayout::Sequence, 1) => dims.t,
            _ => 0,
        }
    }

    fn final_slot(self, dims: &Dims, d: usize) -> usize {
        match (self, d) {
            (StateLayout::PingPong, _) => dims.t % 2,
            (StateLayout::Sequence, 0) => dims.t,
            (StateLayout::Sequence, _) => 0,
        }
    }
}

/// Everything a forward pass writes. The training layout is kept as the tape.
#[derive(Debug)]
pub(crate) struct ForwardWorkspace {
    pub layout: StateLayout,
    /// Layer outputs (T, B, D·H): one per layer (training) or two used alternately (inference).
    pub outputs: Vec<GpuTensor>,
    /// Input projections (T, B, G·H), one per direction, reused by every layer.
    pub xproj: Vec<GpuTensor>,
    /// Hidden states (slots, B, H) per layer·direction.
    pub h_states: Vec<GpuTensor>,
    /// Cell states (slots, B, H) per layer·direction; LSTM only.
    pub c_states: Vec<GpuTensor>,
    /// Saved activations (T, B, S·H) per layer·direction; training only.
    pub saved: Vec<GpuTensor>,
    /// Stand-in (1) for bindings a kernel does not use in this configuration.
    unused: Vec<GpuTensor>,
}

/// A tensor filled with NaN when `poison`, else zeros.
pub(crate) fn output_tensor(
    ctx: &GpuContext,
    label: &str,
    shape: &[usize],
    poison: bool,
) -> Result<GpuTensor> {
    if poison {
        GpuTensor::filled(ctx, label, shape, f32::NAN)
    } else {
        GpuTensor::zeros(ctx, label, shape)
    }
}

impl ForwardWorkspace {
    pub fn new(ctx: &GpuContext, dims: &Dims, layout: StateLayout, poison: bool) -> Result<Self> {
        let ld = dims.layers * dims.directions;
        let seq = [dims.t, dims.b, dims.directions * dims.h];
        let output_count = match layout {
            StateLayout::PingPong => dims.layers.min(2),
            StateLayout::Sequence => dims.layers,
        };
        let state_shape = [layout.slots(dims.t), dims.b, dims.h];
        let outputs = (0..output_count)
            .map(|_| output_tensor(ctx, "layer output", &seq, poison))
            .collect::<Result<_>>()?;
        let xproj = (0..dims.directions)
            .map(|_| output_tensor(ctx, "xproj", &[dims.t, dims.b, dims.gh()], poison))
            .collect::<Result<_>>()?;
        let h_states = (0..ld)
            .map(|_| GpuTensor::zeros(ctx, "h states", &state_shape))
            .collect::<Result<_>>()?;
        let c_states = if dims.has_c {
            (0..ld)
                .map(|_| GpuTensor::zeros(ctx, "c states", &state_shape))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let saved = match layout {
            StateLayout::Sequence => (0..ld)
                .map(|_| {
                    let shape = [dims.t, dims.b, dims.saved * dims.h];
                    output_tensor(ctx, "saved activations", &shape, poison)
                })
                .collect::<Result<_>>()?,
            StateLayout::PingPong => Vec::new(),
        };
        let unused = (0..2)
            .map(|_| GpuTensor::zeros(ctx, "unused binding", &[1]))
            .collect::<Result<_>>()?;
        Ok(ForwardWorkspace {
            layout,
            outputs,
            xproj,
            h_states,
            c_states,
            saved,
            unused,
        })
    }

    /// The output of the last layer (T, B, D·H).
    pub fn top_output(&self, dims: &Dims) -> &GpuTensor {
        &self.outputs[(dims.layers - 1) % self.outputs.len()]
    }
}

/// Initial and final states of a forward pass: (L·D, B, H) tensors.
pub(crate) struct StateIo<'a> {
    pub h0: Option<&'a GpuTensor>,
    pub c0: Option<&'a GpuTensor>,
    pub h_n: &'a GpuTensor,
    pub c_n: Option<&'a GpuTensor>,
}

/// Records a whole forward pass: all layers, directions and time steps.
///
/// `input` is (T, B, I) seq-major; `lengths` (B) u32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_forward<'k>(
    rec: &mut Recorder<'k>,
    kernels: &'k CellKernels,
    weights: &[LayerWeights],
    dims: &Dims,
    input: &GpuTensor,
    lengths: &wgpu::Buffer,
    states: StateIo<'_>,
    ws: &ForwardWorkspace,
) -> Result<()> {
    let bh = dims.bh();
    let gh = dims.gh();
    let train = ws.layout == StateLayout::Sequence;
    for l in 0..dims.layers {
        let x = if l == 0 {
            input
        } else {
            &ws.outputs[(l - 1) % ws.outputs.len()]
        };
        let out = &ws.outputs[l % ws.outputs.len()];
        let in_features = dims.layer_input(l);
        for d in 0..dims.directions {
            let ld = l * dims.directions + d;
            let w = &weights[ld];
            let h_states = &ws.h_states[ld];
            let c_states = ws.c_states.get(ld).unwrap_or(&ws.unused[0]);
            let saved = ws.saved.get(ld).unwrap_or(&ws.unused[1]);
            let initial = ws.layout.initial_slot(dims, d) * bh;
            if let Some(h0) = states.h0 {
                rec.copy_before(h0.buffer(), ld * bh, h_states.buffer(), initial, bh);
            }
            if let (Some(c0), true) = (states.c0, dims.has_c) {
                rec.copy_before(c0.buffer(), ld * bh, c_states.buffer(), initial, bh);
            }
            // Input projections of all time steps at once: (T·B, In) · W_ihᵀ + b_ih.
            rec.gemm(
                kernels,
                x.buffer(),
                w.w_ih.buffer(),
                Some(w.b_ih.buffer()),
                ws.xproj[d].buffer(),
                GemmParams {
                    m: dims.t * dims.b,
                    n: gh,
                    k: in_features,
                    a_rs: in_features,
                    a_cs: 1,
                    b_rs: 1,
                    b_cs: in_features,
                    ldc: gh,
                    ..GemmParams::default()
                },
            )?;
            let binding = rec.bind(
                &kernels.forward_step,
                &[
                    ws.xproj[d].buffer(),
                    w.w_hh.buffer(),
                    w.b_hh.buffer(),
                    lengths,
                    h_states.buffer(),
                    c_states.buffer(),
                    out.buffer(),
                    saved.buffer(),
                ],
            );
            for (step, t) in dims.times(d).into_iter().enumerate() {
                let (read, write) = ws.layout.step_offsets(dims, d, step, t);
                rec.dispatch(
                    &kernels.forward_step,
                    binding,
                    &[
                        dims.b,
                        dims.h,
                        t,
                        usize::from(train),
                        read,
                        write,
                        d * dims.h,
                        dims.directions * dims.h,
                    ],
                    dims.step_groups(),
                )?;
            }
            let last = ws.layout.final_slot(dims, d) * bh;
            rec.copy_after(h_states.buffer(), last, states.h_n.buffer(), ld * bh, bh);
            if let (Some(c_n), true) = (states.c_n, dims.has_c) {
                rec.copy_after(c_states.buffer(), last, c_n.buffer(), ld * bh, bh);
            }
        }
    }
    Ok(())
}

/// Element offsets of one layer·direction's parameter gradients in the flat gradient buffer,
/// in state_dict order (w_ih, w_hh, b_ih, b_hh).
#[derive(Clone, Copy, Debug)]
pub(crate) struct GradOffsets {
    pub w_ih: usize,
    pub w_hh: usize,
    pub bias: Option<(usize, usize)>,
}

/// Offsets of every layer·direction and the total length of the flat gradient buffer.
pub(crate) fn grad_offsets(dims: &Dims, bias: bool) -> (Vec<GradOffsets>, usize) {
    let gh = dims.gh();
    let mut next = 0;
    let mut offsets = Vec::new();
    for l in 0..dims.layers {
        for _ in 0..dims.directions {
            let w_ih = next;
            let w_hh = w_ih + gh * dims.layer_input(l);
            next = w_hh + gh * dims.h;
            let bias = bias.then(|| {
                next += 2 * gh;
                (next - 2 * gh, next - gh)
            });
            offsets.push(GradOffsets { w_ih, w_hh, bias });
        }
    }
    (offsets, next)
}

/// Buffers a backward pass writes.
#[derive(Debug)]
pub(crate) struct BackwardWorkspace {
    /// d loss / d input of layer l: (T, B, I) for l = 0, else (T, B, D·H).
    pub d_inputs: Vec<GpuTensor>,
    /// Gate gradients (planes, T, B, G·H), one per direction, reused by every layer.
    pub d_gates: Vec<GpuTensor>,
    /// Carried state gradients (2, 2, B, H) per layer·direction: slot, (dh, dc).
    pub carry: Vec<GpuTensor>,
    /// All parameter gradients, laid out by [`grad_offsets`].
    pub params: GpuTensor,
    /// d loss / d h_0, d c_0: (L·D, B, H).
    pub d_h0: GpuTensor,
    pub d_c0: Option<GpuTensor>,
    unused: GpuTensor,
}

impl BackwardWorkspace {
    pub fn new(ctx: &GpuContext, dims: &Dims, params_len: usize, poison: bool) -> Result<Self> {
        let ld = dims.layers * dims.directions;
        let d_inputs = (0..dims.layers)
            .map(|l| {
                let shape = [dims.t, dims.b, dims.layer_input(l)];
                output_tensor(ctx, "input gradient", &shape, poison)
            })
            .collect::<Result<_>>()?;
        let d_gates = (0..dims.directions)
            .map(|_| {
                let shape = [dims.grad_planes, dims.t, dims.b, dims.gh()];
                output_tensor(ctx, "gate gradients", &shape, poison)
            })
            .collect::<Result<_>>()?;
        let carry = (0..ld)
            .map(|_| GpuTensor::zeros(ctx, "carried state gradient", &[2, 2, dims.b, dims.h]))
            .collect::<Result<_>>()?;
        let state = [ld, dims.b, dims.h];
        Ok(BackwardWorkspace {
            d_inputs,
            d_gates,
            carry,
            params: output_tensor(ctx, "parameter gradients", &[params_len], poison)?,
            d_h0: output_tensor(ctx, "h0 gradient", &state, poison)?,
            d_c0: if dims.has_c {
                Some(output_tensor(ctx, "c0 gradient", &state, poison)?)
            } else {
                None
            },
            unused: GpuTensor::zeros(ctx, "unused binding", &[1])?,
        })
    }
}

/// Upstream gradients on the GPU: output (T, B, D·H) seq-major, h_n and c_n (L·D, B, H).
pub(crate) struct UpstreamIo<'a> {
    pub output: &'a GpuTensor,
    pub h_n: Option<&'a GpuTensor>,
    pub c_n: Option<&'a GpuTensor>,
}

/// Records a whole backward pass (BPTT) over the tape of a training forward pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_backward<'k>(
    rec: &mut Recorder<'k>,
    kernels: &'k CellKernels,
    weights: &[LayerWeights],
    dims: &Dims,
    input: &GpuTensor,
    lengths: &wgpu::Buffer,
    tape: &ForwardWorkspace,
    upstream: UpstreamIo<'_>,
    offsets: &[GradOffsets],
    ws: &BackwardWorkspace,
) -> Result<()> {
    let bh = dims.bh();
    let gh = dims.gh();
    let rows = dims.t * dims.b;
    let dgx_off = 0;
    let dgh_off = (dims.grad_planes - 1) * rows * gh;
    for l in (0..dims.layers).rev() {
        let d_out = if l + 1 == dims.layers {
            upstream.output
        } else {
            &ws.d_inputs[l + 1]
        };
        let x = if l == 0 { input } else { &tape.outputs[l - 1] };
        let in_features = dims.layer_input(l);
        for d in 0..dims.directions {
            let ld = l * dims.directions + d;
            let w = &weights[ld];
            let carry = &ws.carry[ld];
            let d_gates = &ws.d_gates[d];
            let h_states = &tape.h_states[ld];
            let c_states = tape.c_states.get(ld).unwrap_or(&ws.unused);
            if let Some(g) = upstream.h_n {
                rec.copy_before(g.buffer(), ld * bh, carry.buffer(), 0, bh);
            }
            if let (Some(g), true) = (upstream.c_n, dims.has_c) {
                rec.copy_before(g.buffer(), ld * bh, carry.buffer(), bh, bh);
            }
            let binding = rec.bind(
                &kernels.backward_step,
                &[
                    w.w_hh.buffer(),
                    lengths,
                    h_states.buffer(),
                    c_states.buffer(),
                    tape.saved[ld].buffer(),
                    d_out.buffer(),
                    d_gates.buffer(),
                    carry.buffer(),
                ],
            );
            // Reverse of the forward processing order, then one step finishing dh_0.
            let mut times = dims.times(d);
            times.reverse();
            let last_time = *times.last().unwrap_or(&0);
            for step in 0..=dims.t {
                let finish = step == dims.t;
                let t = if finish { last_time } else { times[step] };
                let t_prev = if step > 0 { times[step - 1] } else { 0 };
                let (prev_slot, cur_slot) = if d == 0 { (t, t + 1) } else { (t + 1, t) };
                rec.dispatch(
                    &kernels.backward_step,
                    binding,
                    &[
                        dims.b,
                        dims.h,
                        t,
                        usize::from(step > 0),
                        t_prev,
                        usize::from(finish),
                        prev_slot * bh,
                        cur_slot * bh,
                        (step % 2) * 2 * bh,
                        ((step + 1) % 2) * 2 * bh,
                        d * dims.h,
                        dims.directions * dims.h,
                        dgx_off,
                        dgh_off,
                    ],
                    dims.step_groups(),
                )?;
            }
            let done = ((dims.t + 1) % 2) * 2 * bh;
            rec.copy_after(carry.buffer(), done, ws.d_h0.buffer(), ld * bh, bh);
            if let Some(d_c0) = &ws.d_c0 {
                rec.copy_after(carry.buffer(), done + bh, d_c0.buffer(), ld * bh, bh);
            }

            let grads = ws.params.buffer();
            let off = offsets[ld];
            // dW_ih = dG_xᵀ · x: (G·H, T·B) · (T·B, In).
            rec.gemm(
                kernels,
                d_gates.buffer(),
                x.buffer(),
                None,
                grads,
                GemmParams {
                    m: gh,
                    n: in_features,
                    k: rows,
                    a_off: dgx_off,
                    a_rs: 1,
                    a_cs: gh,
                    b_rs: in_features,
                    b_cs: 1,
                    c_off: off.w_ih,
                    ldc: in_features,
                    ..GemmParams::default()
                },
            )?;
            // dW_hh = dG_hᵀ · H_prev, H_prev being the state slots entering each time.
            let h_prev_off = if d == 0 { 0 } else { bh };
            rec.gemm(
                kernels,
                d_gates.buffer(),
                h_states.buffer(),
                None,
                grads,
                GemmParams {
                    m: gh,
                    n: dims.h,
                    k: rows,
                    a_off: dgh_off,
                    a_rs: 1,
                    a_cs: gh,
                    b_off: h_prev_off,
                    b_rs: dims.h,
                    b_cs: 1,
                    c_off: off.w_hh,
                    ldc: dims.h,
                    ..GemmParams::default()
                },
            )?;
            if let Some((b_ih, b_hh)) = off.bias {
                rec.column_sum(kernels, d_gates.buffer(), grads, (rows, gh), dgx_off, b_ih)?;
                rec.column_sum(kernels, d_gates.buffer(), grads, (rows, gh), dgh_off, b_hh)?;
            }
            // dx_l (+)= dG_x · W_ih: (T·B, G·H) · (G·H, In); directions add in a fixed order.
            rec.gemm(
                kernels,
                d_gates.buffer(),
                w.w_ih.buffer(),
                None,
                ws.d_inputs[l].buffer(),
                GemmParams {
                    m: rows,
                    n: in_features,
                    k: gh,
                    a_off: dgx_off,
                    a_rs: gh,
                    a_cs: 1,
                    b_rs: in_features,
                    b_cs: 1,
                    ldc: in_features,
                    accumulate: d > 0,
                    ..GemmParams::default()
                },
            )?;
        }
    }
    Ok(())
}
