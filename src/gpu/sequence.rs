//! The sequence driver: records the forward or backward pass of every layer, direction and time
//! step into one recording (see [`Recorder`]: submitted in a few growing compute passes).
//! One driver serves all cells: a cell is its gate count, its saved activations and its fused
//! step kernels.
//!
//! Data flow, forward, per layer l and direction d:
//!   x_l (T, B, In) → gemm → xproj (T, B, G·H) → T × forward_step → out_l[:, :, d·H..] and states.
//! Backward, per layer from the top, per direction:
//!   d_out_l → T × backward_step (+ one finishing step for dh_0) → dG (planes, T, B, G·H)
//!   → gemm dW_ih = dG_xᵀ·x_l, dW_hh = dG_hᵀ·H_prev, column sums db, dx_l += dG_x·W_ih.

use super::context::GpuContext;
use super::kernels::{
    CellKernels, Gemm, Kernel, StepKernels, STEP_ROWS_MAX_BATCH, STEP_ROWS_PER_GROUP, STEP_TILE,
};
use super::params::{BackwardStepParams, ForwardStepParams};
use super::recorder::{Recorder, Sink};
use super::tensor::GpuTensor;
use crate::config::RnnConfig;
use crate::error::{Result, RnnError};

/// Weights of one layer and direction on the GPU, in torch layout (tensors of their own, or
/// views into a flat parameter buffer).
#[derive(Clone, Debug)]
pub(crate) struct LayerWeights {
    /// (G·H, In)
    pub w_ih: GpuTensor,
    /// (G·H, H)
    pub w_hh: GpuTensor,
    /// (G·H); zeros without bias
    pub b_ih: GpuTensor,
    /// (G·H); zeros without bias
    pub b_hh: GpuTensor,
    /// W_hh rounded to f16, (G·H, ⌈H/2⌉) words of two (util.wgsl `pack_half`): inference
    /// reads it instead of `w_hh` when present ([`GpuRnn::half_recurrent_weights`]).
    ///
    /// [`GpuRnn::half_recurrent_weights`]: super::GpuRnn::half_recurrent_weights
    pub w_hh_half: Option<GpuTensor>,
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
        let cell = config.cell;
        Dims {
            t,
            b,
            h: config.hidden_size,
            gates: cell.gates(),
            layers: config.num_layers,
            directions: config.num_directions(),
            input: config.input_size,
            saved: cell.gpu_saved_per_unit(),
            has_c: cell.has_cell_state(),
            grad_planes: cell.gate_gradient_planes(),
        }
    }

    pub fn gh(&self) -> usize {
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

    /// Whether the steps run one workgroup per hidden unit (small batches; H ≤ 65 535, the
    /// smallest per-dimension limit any adapter has) rather than (units × rows) tiles.
    fn unit_per_workgroup(&self) -> bool {
        self.b <= STEP_ROWS_MAX_BATCH && self.h <= 65_535
    }

    /// The kernel of `step` for this batch, and its grid.
    fn step_kernel<'k>(&self, step: &'k StepKernels) -> (&'k Kernel, (usize, usize)) {
        if self.unit_per_workgroup() {
            (&step.rows, (self.h, self.b.div_ceil(STEP_ROWS_PER_GROUP)))
        } else {
            (&step.tiled, self.step_groups())
        }
    }

    /// The times direction `d` processes at processing indices `steps`.
    fn processed_times(&self, d: usize, steps: std::ops::Range<usize>) -> Vec<usize> {
        steps
            .map(|step| if d == 0 { step } else { self.t - 1 - step })
            .collect()
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

/// Everything a forward pass writes besides its results. The training layout is kept as the tape.
#[derive(Debug)]
pub(crate) struct ForwardWorkspace {
    pub layout: StateLayout,
    /// The layer-0 input (T, B, I) seq-major, when the caller's is not usable as is: a transposed
    /// batch-first input, or (training) a copy the tape owns.
    pub seq_input: Option<GpuTensor>,
    /// The top layer's output (T, B, D·H) seq-major before its transpose to batch-first.
    pub seq_output: Option<GpuTensor>,
    /// Outputs of the layers below the top: (T, B, D·H) one per layer (training) or at most two
    /// used alternately (inference); (T_c, B, H) when `chunk_major`.
    pub inner: Vec<GpuTensor>,
    /// Unidirectional inference: each chunk runs through all layers before the next one, so
    /// that the layers below the top keep one chunk of output. A reverse direction needs its
    /// whole input, so bidirectional models run layer by layer.
    pub chunk_major: bool,
    /// Whether the caller's input and output are batch-first (B, T, ·).
    pub batch_first: bool,
    /// Time steps per input-projection chunk (T_c).
    pub chunk: usize,
    /// Input projections (T_c, B, G·H) of one chunk, one per direction, reused by every chunk
    /// and layer.
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

/// A workspace or result tensor from the context's pool: filled with NaN when `poison` (so
/// that an element no kernel writes shows up), else left as the pool had it.
pub(crate) fn output_tensor(
    ctx: &GpuContext,
    label: &str,
    shape: &[usize],
    poison: bool,
) -> Result<GpuTensor> {
    let tensor = GpuTensor::pooled(ctx, label, shape)?;
    if poison {
        tensor.write(ctx, &vec![f32::NAN; tensor.len()])?;
    }
    Ok(tensor)
}

/// An error unless `t` holds exactly `len` values: the step kernels are built without runtime
/// bounds checks, and every tensor they bind passes this check for the dims of its dispatches.
fn expect_len(t: &GpuTensor, len: usize) -> Result<()> {
    if t.len() == len {
        Ok(())
    } else {
        Err(RnnError::Config(format!(
            "`{}` holds {} values where this call needs {len}",
            t.label(),
            t.len()
        )))
    }
}

impl ForwardWorkspace {
    /// Takes every buffer from the pool up front, so that what does not fit is an error before
    /// encoding. `chunk` (at least 1) is the number of time steps per input-projection chunk;
    /// training (the sequence layout) projects all T steps at once.
    pub fn new(
        ctx: &GpuContext,
        dims: &Dims,
        layout: StateLayout,
        chunk: usize,
        batch_first: bool,
        poison: bool,
    ) -> Result<Self> {
        let ld = dims.layers * dims.directions;
        let seq = [dims.t, dims.b, dims.directions * dims.h];
        let inner_count = match layout {
            StateLayout::PingPong => (dims.layers - 1).min(2),
            StateLayout::Sequence => dims.layers - 1,
        };
        let chunk = match layout {
            StateLayout::PingPong => chunk.clamp(1, dims.t),
            StateLayout::Sequence => dims.t,
        };
        let training = layout == StateLayout::Sequence;
        let chunk_major = !training && dims.directions == 1;
        let inner_shape = [
            if chunk_major { chunk } else { dims.t },
            dims.b,
            dims.directions * dims.h,
        ];
        let input_shape = [dims.t, dims.b, dims.input];
        let seq_input = (batch_first || training)
            .then(|| GpuTensor::pooled(ctx, "input (T, B, I)", &input_shape))
            .transpose()?;
        let seq_output = batch_first
            .then(|| output_tensor(ctx, "output (T, B, D·H)", &seq, poison))
            .transpose()?;
        let state_shape = [layout.slots(dims.t), dims.b, dims.h];
        let inner = (0..inner_count)
            .map(|_| output_tensor(ctx, "layer output", &inner_shape, poison))
            .collect::<Result<_>>()?;
        let xproj = (0..dims.directions)
            .map(|_| output_tensor(ctx, "xproj", &[chunk, dims.b, dims.gh()], poison))
            .collect::<Result<_>>()?;
        let states = |label| {
            (0..ld)
                .map(|_| GpuTensor::pooled(ctx, label, &state_shape))
                .collect::<Result<Vec<_>>>()
        };
        let h_states = states("h states")?;
        let c_states = if dims.has_c {
            states("c states")?
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
            .map(|_| GpuTensor::pooled(ctx, "unused binding", &[1]))
            .collect::<Result<_>>()?;
        Ok(ForwardWorkspace {
            layout,
            seq_input,
            seq_output,
            inner,
            chunk_major,
            batch_first,
            chunk,
            xproj,
            h_states,
            c_states,
            saved,
            unused,
        })
    }

    /// The output (T, B, D·H) of layer `l` below the top.
    fn inner_output(&self, l: usize) -> &GpuTensor {
        &self.inner[l % self.inner.len()]
    }

    /// The layer-0 input, seq-major.
    pub fn input<'a>(&'a self, io_input: &'a GpuTensor) -> &'a GpuTensor {
        self.seq_input.as_ref().unwrap_or(io_input)
    }

    /// Every tensor of the workspace.
    pub fn tensors(&self) -> impl Iterator<Item = &GpuTensor> {
        self.seq_input
            .iter()
            .chain(&self.seq_output)
            .chain(&self.inner)
            .chain(&self.xproj)
            .chain(&self.h_states)
            .chain(&self.c_states)
            .chain(&self.saved)
            .chain(&self.unused)
    }
}

/// What a forward pass reads and writes: input and output in the model's layout, (T, B, ·) or
/// (B, T, ·) when batch_first, the states (L·D, B, H) and the lengths (B) u32.
pub(crate) struct ForwardIo<'a> {
    pub input: &'a GpuTensor,
    pub output: &'a GpuTensor,
    pub h0: Option<&'a GpuTensor>,
    pub c0: Option<&'a GpuTensor>,
    pub h_n: &'a GpuTensor,
    pub c_n: Option<&'a GpuTensor>,
    pub lengths: &'a GpuTensor,
}

/// Records a whole forward pass: all layers, directions and time steps, in one recording, or
/// one per chunk of `ws.chunk` steps when that is shorter than T (inference), each finished
/// into `sink` before the next one starts, so that one parameter arena serves them all.
pub(crate) fn run_forward(
    ctx: &GpuContext,
    kernels: &CellKernels,
    weights: &[LayerWeights],
    dims: &Dims,
    io: ForwardIo<'_>,
    ws: &ForwardWorkspace,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let bh = dims.bh();
    let gh = dims.gh();
    let train = ws.layout == StateLayout::Sequence;
    let chunks = dims.t.div_ceil(ws.chunk);
    let state_len = ws.layout.slots(dims.t) * bh;
    expect_len(io.lengths, dims.b)?;
    let mut rec = Recorder::new(ctx);
    match &ws.seq_input {
        Some(seq) if ws.batch_first => {
            kernels.transpose(&mut rec, io.input, seq, (dims.b, dims.t, dims.input))?
        }
        Some(seq) => rec.copy(io.input, 0, seq, 0, seq.len())?,
        None => {}
    }
    for ld in 0..dims.layers * dims.directions {
        let initial = ws.layout.initial_slot(dims, ld % dims.directions) * bh;
        let h_states = &ws.h_states[ld];
        expect_len(h_states, state_len)?;
        match io.h0 {
            Some(h0) => rec.copy(h0, ld * bh, h_states, initial, bh)?,
            None => rec.clear(h_states)?,
        }
        if let Some(c_states) = ws.c_states.get(ld) {
            expect_len(c_states, state_len)?;
            match io.c0 {
                Some(c0) => rec.copy(c0, ld * bh, c_states, initial, bh)?,
                None => rec.clear(c_states)?,
            }
        }
    }
    let top_output = ws.seq_output.as_ref().unwrap_or(io.output);
    // (chunk, layer, direction) in recording order: chunk by chunk through all layers when the
    // layers below the top keep only one chunk of output, else layer by layer.
    let mut order: Vec<(usize, usize, usize)> = (0..chunks)
        .flat_map(|c| {
            (0..dims.layers).flat_map(move |l| (0..dims.directions).map(move |d| (c, l, d)))
        })
        .collect();
    if !ws.chunk_major {
        order.sort_by_key(|&(c, l, d)| (l, d, c));
    }
    // Time offset of the rows of a buffer of the layers below the top.
    let inner_t0 = |t0: usize| if ws.chunk_major { t0 } else { 0 };
    let features = dims.directions * dims.h;
    for (c, l, d) in order {
        let in_features = dims.layer_input(l);
        let ld = l * dims.directions + d;
        let w = &weights[ld];
        let h_states = &ws.h_states[ld];
        let c_states = ws.c_states.get(ld).unwrap_or(&ws.unused[0]);
        let saved = ws.saved.get(ld).unwrap_or(&ws.unused[1]);
        // Chunk c in direction d's processing order; its first processed step.
        let first_step = c * ws.chunk;
        let chunk_times = dims.processed_times(d, first_step..(first_step + ws.chunk).min(dims.t));
        let t0 = chunk_times.iter().copied().min().unwrap_or(0);
        let (x, x_t0) = if l == 0 {
            (ws.input(io.input), 0)
        } else {
            (ws.inner_output(l - 1), inner_t0(t0))
        };
        let (out, out_rows) = if l + 1 == dims.layers {
            (top_output, dims.t)
        } else {
            (
                ws.inner_output(l),
                ws.inner_output(l).len() / (dims.b * features),
            )
        };
        let out_t0 = if l + 1 == dims.layers {
            0
        } else {
            inner_t0(t0)
        };
        // Input projections of the chunk's steps at once: (T_c·B, In) · W_ihᵀ + b_ih.
        kernels.gemm(
            &mut rec,
            x,
            &w.w_ih,
            Some(&w.b_ih),
            &ws.xproj[d],
            Gemm {
                m: chunk_times.len() * dims.b,
                n: gh,
                k: in_features,
                a_off: (t0 - x_t0) * dims.b * in_features,
                a_rs: in_features,
                a_cs: 1,
                b_rs: 1,
                b_cs: in_features,
                ldc: gh,
                ..Gemm::default()
            },
        )?;
        // Training keeps f32 W_hh: backward needs the forward it differentiates.
        let half_w_hh = w.w_hh_half.as_ref().filter(|_| !train);
        let (step_kernel, step_groups) = dims.step_kernel(match half_w_hh {
            Some(_) => &kernels.forward_half,
            None => &kernels.forward,
        });
        let w_hh = half_w_hh.unwrap_or(&w.w_hh);
        expect_len(w_hh, gh * half_w_hh.map_or(dims.h, |_| dims.h.div_ceil(2)))?;
        expect_len(&w.b_hh, gh)?;
        expect_len(&ws.xproj[d], ws.chunk * dims.b * gh)?;
        expect_len(out, out_rows * dims.b * features)?;
        if train {
            expect_len(c_states, if dims.has_c { state_len } else { 1 })?;
            expect_len(saved, dims.t * dims.b * dims.saved * dims.h)?;
        }
        let binding = rec.bind(
            step_kernel,
            &[
                &ws.xproj[d],
                w_hh,
                &w.b_hh,
                io.lengths,
                h_states,
                c_states,
                out,
                saved,
            ],
        )?;
        for (i, &t) in chunk_times.iter().enumerate() {
            let (read, write) = ws.layout.step_offsets(dims, d, first_step + i, t);
            let params = crate::params!(ForwardStepParams {
                batch: dims.b,
                hidden: dims.h,
                t: t,
                train: train,
                read_slot: read,
                write_slot: write,
                out_col: d * dims.h,
                out_stride: features,
                xproj_t: t - t0,
                out_t: t - out_t0,
            })?;
            rec.dispatch(step_kernel, binding, &params, step_groups)?;
        }
        if c + 1 == chunks {
            let last = ws.layout.final_slot(dims, d) * bh;
            rec.copy(h_states, last, io.h_n, ld * bh, bh)?;
            if let (Some(c_n), true) = (io.c_n, dims.has_c) {
                rec.copy(c_states, last, c_n, ld * bh, bh)?;
            }
        }
        if chunks > 1 {
            std::mem::replace(&mut rec, Recorder::new(ctx)).finish(sink)?;
        }
    }
    if let Some(seq) = &ws.seq_output {
        kernels.transpose(&mut rec, seq, io.output, (dims.t, dims.b, features))?;
    }
    rec.finish(sink)
}

/// Buffers a backward pass writes besides its results.
#[derive(Debug)]
pub(crate) struct BackwardWorkspace {
    /// The upstream output gradient (T, B, D·H) seq-major, transposed from batch-first.
    seq_d_output: Option<GpuTensor>,
    /// d loss / d input (T, B, I) seq-major before its transpose to batch-first.
    seq_d_input: Option<GpuTensor>,
    /// d loss / d input of layer l ≥ 1: (T, B, D·H), at index l - 1.
    d_inner: Vec<GpuTensor>,
    /// Gate gradients (planes, T, B, G·H), one per direction, reused by every layer.
    d_gates: Vec<GpuTensor>,
    /// Carried state gradients (2, 2, B, H) per layer·direction: slot, (dh, dc).
    carry: Vec<GpuTensor>,
    /// W_hhᵀ (H, G·H) of the layer·direction being processed, for the one-workgroup-per-unit
    /// backward step (small batches only).
    w_hh_t: Option<GpuTensor>,
    unused: GpuTensor,
}

impl BackwardWorkspace {
    pub fn new(ctx: &GpuContext, dims: &Dims, batch_first: bool, poison: bool) -> Result<Self> {
        let ld = dims.layers * dims.directions;
        let seq = [dims.t, dims.b, dims.directions * dims.h];
        let d_inner = (1..dims.layers)
            .map(|_| output_tensor(ctx, "layer input gradient", &seq, poison))
            .collect::<Result<_>>()?;
        let d_gates = (0..dims.directions)
            .map(|_| {
                let shape = [dims.grad_planes, dims.t, dims.b, dims.gh()];
                output_tensor(ctx, "gate gradients", &shape, poison)
            })
            .collect::<Result<_>>()?;
        let carry = (0..ld)
            .map(|_| GpuTensor::pooled(ctx, "carried state gradient", &[2, 2, dims.b, dims.h]))
            .collect::<Result<_>>()?;
        let seq_d_output = batch_first
            .then(|| GpuTensor::pooled(ctx, "grad_output (T, B, D·H)", &seq))
            .transpose()?;
        let seq_d_input = batch_first
            .then(|| {
                let shape = [dims.t, dims.b, dims.input];
                output_tensor(ctx, "input gradient (T, B, I)", &shape, poison)
            })
            .transpose()?;
        let w_hh_t = dims
            .unit_per_workgroup()
            .then(|| GpuTensor::pooled(ctx, "W_hh transposed", &[dims.h, dims.gh()]))
            .transpose()?;
        Ok(BackwardWorkspace {
            seq_d_output,
            seq_d_input,
            d_inner,
            d_gates,
            carry,
            w_hh_t,
            unused: GpuTensor::pooled(ctx, "unused binding", &[1])?,
        })
    }

    /// Every tensor of the workspace.
    pub fn tensors(&self) -> impl Iterator<Item = &GpuTensor> {
        self.seq_d_output
            .iter()
            .chain(&self.seq_d_input)
            .chain(&self.d_inner)
            .chain(&self.d_gates)
            .chain(&self.carry)
            .chain(&self.w_hh_t)
            .chain(std::iter::once(&self.unused))
    }
}

/// Parameter gradients of one layer·direction, in torch layout.
pub(crate) struct LayerGradIo<'a> {
    /// (G·H, In)
    pub w_ih: &'a GpuTensor,
    /// (G·H, H)
    pub w_hh: &'a GpuTensor,
    /// (G·H) each, with bias only
    pub bias: Option<(&'a GpuTensor, &'a GpuTensor)>,
}

/// What a backward pass reads and writes: upstream and input gradients in the model's layout,
/// state gradients (L·D, B, H), parameter gradients per layer·direction.
pub(crate) struct BackwardIo<'a> {
    pub d_output: &'a GpuTensor,
    pub d_h_n: Option<&'a GpuTensor>,
    pub d_c_n: Option<&'a GpuTensor>,
    pub d_input: &'a GpuTensor,
    pub d_h0: &'a GpuTensor,
    pub d_c0: Option<&'a GpuTensor>,
    pub params: Vec<LayerGradIo<'a>>,
}

/// Records a whole backward pass (BPTT) over the tape of a training forward pass into `sink`.
/// `input` is the tape's layer-0 input (T, B, I) seq-major, `lengths` its (B) u32.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_backward(
    ctx: &GpuContext,
    kernels: &CellKernels,
    weights: &[LayerWeights],
    dims: &Dims,
    input: &GpuTensor,
    lengths: &GpuTensor,
    tape: &ForwardWorkspace,
    io: BackwardIo<'_>,
    ws: &BackwardWorkspace,
    sink: &mut Sink<'_>,
) -> Result<()> {
    let mut rec = Recorder::new(ctx);
    let features = dims.directions * dims.h;
    if let Some(seq) = &ws.seq_d_output {
        kernels.transpose(&mut rec, io.d_output, seq, (dims.b, dims.t, features))?;
    }
    let d_output = ws.seq_d_output.as_ref().unwrap_or(io.d_output);
    let d_input = ws.seq_d_input.as_ref().unwrap_or(io.d_input);
    let bh = dims.bh();
    let gh = dims.gh();
    let rows = dims.t * dims.b;
    let dgx_off = 0;
    let dgh_off = (dims.grad_planes - 1) * rows * gh;
    let state_len = (dims.t + 1) * bh;
    expect_len(lengths, dims.b)?;
    expect_len(d_output, rows * features)?;
    for ld in 0..dims.layers * dims.directions {
        let carry = &ws.carry[ld];
        expect_len(carry, 4 * bh)?;
        rec.clear(carry)?;
        if let Some(g) = io.d_h_n {
            rec.copy(g, ld * bh, carry, 0, bh)?;
        }
        if let (Some(g), true) = (io.d_c_n, dims.has_c) {
            rec.copy(g, ld * bh, carry, bh, bh)?;
        }
    }
    for l in (0..dims.layers).rev() {
        let d_out = if l + 1 == dims.layers {
            d_output
        } else {
            &ws.d_inner[l]
        };
        let d_in = if l == 0 { d_input } else { &ws.d_inner[l - 1] };
        let x = if l == 0 {
            input
        } else {
            tape.inner_output(l - 1)
        };
        let in_features = dims.layer_input(l);
        for d in 0..dims.directions {
            let ld = l * dims.directions + d;
            let w = &weights[ld];
            let carry = &ws.carry[ld];
            let d_gates = &ws.d_gates[d];
            let h_states = &tape.h_states[ld];
            let c_states = tape.c_states.get(ld).unwrap_or(&ws.unused);
            let (step_kernel, step_groups) = dims.step_kernel(&kernels.backward);
            let w_hh = match &ws.w_hh_t {
                Some(w_hh_t) => {
                    kernels.transpose(&mut rec, &w.w_hh, w_hh_t, (gh, dims.h, 1))?;
                    w_hh_t
                }
                None => &w.w_hh,
            };
            expect_len(w_hh, gh * dims.h)?;
            expect_len(h_states, state_len)?;
            expect_len(c_states, if dims.has_c { state_len } else { 1 })?;
            expect_len(&tape.saved[ld], rows * dims.saved * dims.h)?;
            expect_len(d_out, rows * features)?;
            expect_len(d_gates, dims.grad_planes * rows * gh)?;
            let binding = rec.bind(
                step_kernel,
                &[
                    w_hh,
                    lengths,
                    h_states,
                    c_states,
                    &tape.saved[ld],
                    d_out,
                    d_gates,
                    carry,
                ],
            )?;
            // Reverse of the forward processing order, then one step finishing dh_0.
            let mut times = dims.times(d);
            times.reverse();
            let last_time = *times.last().unwrap_or(&0);
            for step in 0..=dims.t {
                let finish = step == dims.t;
                let t = if finish { last_time } else { times[step] };
                let t_prev = if step > 0 { times[step - 1] } else { 0 };
                let (prev_slot, cur_slot) = if d == 0 { (t, t + 1) } else { (t + 1, t) };
                let params = crate::params!(BackwardStepParams {
                    batch: dims.b,
                    hidden: dims.h,
                    t: t,
                    has_prev: step > 0,
                    t_prev: t_prev,
                    finish: finish,
                    prev_slot: prev_slot * bh,
                    cur_slot: cur_slot * bh,
                    carry_read: (step % 2) * 2 * bh,
                    carry_write: ((step + 1) % 2) * 2 * bh,
                    dout_col: d * dims.h,
                    dout_stride: features,
                    dgx_off: dgx_off,
                    dgh_off: dgh_off,
                })?;
                rec.dispatch(step_kernel, binding, &params, step_groups)?;
            }
            let done = ((dims.t + 1) % 2) * 2 * bh;
            rec.copy(carry, done, io.d_h0, ld * bh, bh)?;
            if let (Some(d_c0), true) = (io.d_c0, dims.has_c) {
                rec.copy(carry, done + bh, d_c0, ld * bh, bh)?;
            }

            let grads = &io.params[ld];
            // dW_ih = dG_xᵀ · x: (G·H, T·B) · (T·B, In).
            kernels.gemm(
                &mut rec,
                d_gates,
                x,
                None,
                grads.w_ih,
                Gemm {
                    m: gh,
                    n: in_features,
                    k: rows,
                    a_off: dgx_off,
                    a_rs: 1,
                    a_cs: gh,
                    b_rs: in_features,
                    b_cs: 1,
                    ldc: in_features,
                    ..Gemm::default()
                },
            )?;
            // dW_hh = dG_hᵀ · H_prev, H_prev being the state slots entering each time.
            let h_prev_off = if d == 0 { 0 } else { bh };
            kernels.gemm(
                &mut rec,
                d_gates,
                h_states,
                None,
                grads.w_hh,
                Gemm {
                    m: gh,
                    n: dims.h,
                    k: rows,
                    a_off: dgh_off,
                    a_rs: 1,
                    a_cs: gh,
                    b_off: h_prev_off,
                    b_rs: dims.h,
                    b_cs: 1,
                    ldc: dims.h,
                    ..Gemm::default()
                },
            )?;
            if let Some((b_ih, b_hh)) = grads.bias {
                kernels.column_sum(&mut rec, d_gates, b_ih, (rows, gh), dgx_off, 0)?;
                kernels.column_sum(&mut rec, d_gates, b_hh, (rows, gh), dgh_off, 0)?;
            }
            // dx_l (+)= dG_x · W_ih: (T·B, G·H) · (G·H, In); directions add in a fixed order.
            kernels.gemm(
                &mut rec,
                d_gates,
                &w.w_ih,
                None,
                d_in,
                Gemm {
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
                    ..Gemm::default()
                },
            )?;
        }
    }
    if let Some(seq) = &ws.seq_d_input {
        kernels.transpose(&mut rec, seq, io.d_input, (dims.t, dims.b, dims.input))?;
    }
    rec.finish(sink)
}
