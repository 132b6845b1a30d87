//! The public GPU model: whole-sequence forward, training forward with a tape kept on the GPU,
//! backward (BPTT), and streaming inference. f32 throughout.
//!
//! The GPU-resident API ([`GpuRnn::forward_gpu`], [`GpuRnn::forward_train_gpu`],
//! [`GpuRnn::backward_gpu`]) takes and returns [`GpuTensor`]s: results stay on the GPU and can
//! be fed to the next call or bound by the application's own shaders; nothing is read back
//! unless asked (`to_host`). The ndarray API is a thin wrapper: upload, the same call, readback.

use std::sync::Arc;

use ndarray::{Array1, Array2, Array3, ArrayView3};

use super::context::{ContextId, GpuContext};
use super::kernels::{CellKernels, GEMM_TILE_M};
use super::recorder::{param_stride, Recorded, Recorder, Sink};
use super::sequence::{
    output_tensor, run_backward, run_forward, BackwardIo, BackwardWorkspace, Dims, ForwardIo,
    ForwardWorkspace, LayerGradIo, LayerWeights, StateLayout,
};
use super::tensor::GpuTensor;
use crate::batch::{
    check_lengths, check_params, ForwardOutput, Gradients, SequenceBatch, UpstreamGrads,
};
use crate::config::RnnConfig;
use crate::error::{check_shape, Result, RnnError};
use crate::params::{LayerParams, RnnParams};

/// Default upper bound of one input-projection chunk (T_c, B, G·H) in bytes, for inference.
const XPROJ_CHUNK_BYTES: usize = 64 << 20;
/// Default upper bound of the time steps of one inference chunk: what one recording holds
/// (parameters, bind groups, commands) stays bounded however long the sequence.
const MAX_CHUNK_STEPS: usize = 1024;

/// An RNN, LSTM or GRU whose weights live on the GPU (uploaded once, per layer and direction).
#[derive(Debug)]
pub struct GpuRnn {
    ctx: Arc<GpuContext>,
    config: RnnConfig,
    weights: Arc<Vec<LayerWeights>>,
    kernels: Arc<CellKernels>,
    poison: bool,
    /// Time steps per inference chunk; `None`: as many as fit [`XPROJ_CHUNK_BYTES`].
    time_chunk: Option<usize>,
}

/// One forward call's inputs, on the GPU. Shapes as [`SequenceBatch`]; values are not checked
/// for NaN (that would need a readback).
#[derive(Clone, Copy, Debug)]
pub struct GpuSequenceBatch<'a> {
    /// (T, B, I), or (B, T, I) when batch_first
    pub input: &'a GpuTensor,
    /// (L·D, B, H); zeros when None
    pub h0: Option<&'a GpuTensor>,
    /// (L·D, B, H), LSTM only; zeros when None
    pub c0: Option<&'a GpuTensor>,
    /// (B): sequence b is valid for t < `lengths[b]`; each in 1..=T. All T when None.
    pub lengths: Option<&'a [usize]>,
}

impl<'a> GpuSequenceBatch<'a> {
    /// A batch of full-length sequences starting from zero states.
    pub fn new(input: &'a GpuTensor) -> Self {
        GpuSequenceBatch {
            input,
            h0: None,
            c0: None,
            lengths: None,
        }
    }

    /// Sets the initial hidden state (L·D, B, H).
    pub fn h0(mut self, h0: &'a GpuTensor) -> Self {
        self.h0 = Some(h0);
        self
    }

    /// Sets the initial cell state (L·D, B, H); LSTM only.
    pub fn c0(mut self, c0: &'a GpuTensor) -> Self {
        self.c0 = Some(c0);
        self
    }

    /// Sets per-sequence lengths (B).
    pub fn lengths(mut self, lengths: &'a [usize]) -> Self {
        self.lengths = Some(lengths);
        self
    }

    /// Validates every shape, length and context against `config` and `ctx`; returns (T, B).
    fn validate(&self, config: &RnnConfig, ctx: &GpuContext) -> Result<(usize, usize)> {
        config.validate()?;
        for t in [Some(self.input), self.h0, self.c0].into_iter().flatten() {
            t.check_context(ctx)?;
        }
        let shape = self.input.shape();
        let &[d0, d1, features] = shape else {
            return Err(RnnError::shape(
                "input",
                &config.sequence_shape(0, 0, config.input_size),
                shape,
            ));
        };
        let (t, b) = if config.batch_first {
            (d1, d0)
        } else {
            (d0, d1)
        };
        if t == 0 || b == 0 {
            return Err(RnnError::Config(format!(
                "input must hold at least one time step and one sequence, got shape {shape:?}"
            )));
        }
        let expected = config.sequence_shape(t, b, config.input_size);
        check_shape("input", &expected, &[d0, d1, features])?;
        let state = config.state_shape(b);
        if let Some(h0) = self.h0 {
            check_shape("h0", &state, h0.shape())?;
        }
        if let Some(c0) = self.c0 {
            check_cell_state(config, "c0")?;
            check_shape("c0", &state, c0.shape())?;
        }
        if let Some(lengths) = self.lengths {
            check_lengths(lengths, t, b)?;
        }
        Ok((t, b))
    }
}

/// The results of a forward call, on the GPU.
#[derive(Debug)]
pub struct GpuForwardOutput {
    /// (T, B, D·H), or (B, T, D·H) when batch_first; zero where t >= `lengths[b]`
    pub output: GpuTensor,
    /// (L·D, B, H)
    pub h_n: GpuTensor,
    /// (L·D, B, H), LSTM only
    pub c_n: Option<GpuTensor>,
    ctx: Arc<GpuContext>,
    /// What a recording into a caller's encoder refers to, until this output is dropped.
    _recorded: Recorded,
}

impl GpuForwardOutput {
    /// Waits for the GPU and reads everything back.
    pub fn to_host(&self) -> Result<ForwardOutput<f32>> {
        let ctx = &*self.ctx;
        Ok(ForwardOutput {
            output: read3(ctx, &self.output)?,
            h_n: read3(ctx, &self.h_n)?,
            c_n: self.c_n.as_ref().map(|c| read3(ctx, c)).transpose()?,
        })
    }
}

/// Gradients of the loss with respect to a forward call's outputs, on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct GpuUpstreamGrads<'a> {
    /// Like [`GpuForwardOutput::output`]
    pub output: &'a GpuTensor,
    /// (L·D, B, H); zeros when None
    pub h_n: Option<&'a GpuTensor>,
    /// (L·D, B, H), LSTM only; zeros when None
    pub c_n: Option<&'a GpuTensor>,
}

impl<'a> GpuUpstreamGrads<'a> {
    /// Upstream gradient of the output sequence only.
    pub fn new(output: &'a GpuTensor) -> Self {
        GpuUpstreamGrads {
            output,
            h_n: None,
            c_n: None,
        }
    }

    /// Sets the gradient of h_n (L·D, B, H).
    pub fn h_n(mut self, h_n: &'a GpuTensor) -> Self {
        self.h_n = Some(h_n);
        self
    }

    /// Sets the gradient of c_n (L·D, B, H); LSTM only.
    pub fn c_n(mut self, c_n: &'a GpuTensor) -> Self {
        self.c_n = Some(c_n);
        self
    }

    fn validate(&self, config: &RnnConfig, ctx: &GpuContext, t: usize, b: usize) -> Result<()> {
        for g in [Some(self.output), self.h_n, self.c_n]
            .into_iter()
            .flatten()
        {
            g.check_context(ctx)?;
        }
        let expected = config.sequence_shape(t, b, config.output_size());
        check_shape("grad_output", &expected, self.output.shape())?;
        let state = config.state_shape(b);
        if let Some(h_n) = self.h_n {
            check_shape("grad_h_n", &state, h_n.shape())?;
        }
        if let Some(c_n) = self.c_n {
            check_cell_state(config, "grad_c_n")?;
            check_shape("grad_c_n", &state, c_n.shape())?;
        }
        Ok(())
    }
}

/// Parameter gradients of one layer and direction, in torch layout.
#[derive(Debug)]
pub struct GpuLayerGradients {
    /// (G·H, In)
    pub w_ih: GpuTensor,
    /// (G·H, H)
    pub w_hh: GpuTensor,
    /// (G·H), with bias only
    pub b_ih: Option<GpuTensor>,
    /// (G·H), with bias only
    pub b_hh: Option<GpuTensor>,
}

/// The results of a backward call, on the GPU.
#[derive(Debug)]
pub struct GpuGradients {
    /// d loss / d parameters, `params[layer * D + dir]` as [`RnnParams::layers`]
    pub params: Vec<GpuLayerGradients>,
    /// d loss / d input: (T, B, I), or (B, T, I) when batch_first
    pub input: GpuTensor,
    /// (L·D, B, H)
    pub h0: GpuTensor,
    /// (L·D, B, H), LSTM only
    pub c0: Option<GpuTensor>,
    config: RnnConfig,
    ctx: Arc<GpuContext>,
    _recorded: Recorded,
}

impl GpuGradients {
    /// Waits for the GPU and reads everything back.
    pub fn to_host(&self) -> Result<Gradients<f32>> {
        let ctx = &*self.ctx;
        let read2 = |t: &GpuTensor| -> Result<Array2<f32>> {
            t.to_array(ctx)?
                .into_dimensionality()
                .map_err(|e| RnnError::Device(format!("readback of `{}`: {e}", t.label())))
        };
        let read1 = |t: &GpuTensor| t.to_vec(ctx).map(Array1::from);
        let layers = self
            .params
            .iter()
            .map(|g| {
                Ok(LayerParams {
                    w_ih: read2(&g.w_ih)?,
                    w_hh: read2(&g.w_hh)?,
                    b_ih: g.b_ih.as_ref().map(read1).transpose()?,
                    b_hh: g.b_hh.as_ref().map(read1).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Gradients {
            params: RnnParams {
                config: self.config.clone(),
                layers,
            },
            input: read3(ctx, &self.input)?,
            h0: read3(ctx, &self.h0)?,
            c0: self.c0.as_ref().map(|g| read3(ctx, g)).transpose()?,
        })
    }
}

/// What [`GpuRnn::backward`] needs from a [`GpuRnn::forward_train`] call, kept on the GPU:
/// a copy of the input, every layer's output, all states (T + 1 slots) and the saved gate
/// activations.
///
/// It knows the context and the configuration of the model that recorded it: backward with a
/// model of another cell, nonlinearity, size or context is an error naming both.
#[derive(Debug)]
pub struct GpuTape {
    context: ContextId,
    config: RnnConfig,
    dims: Dims,
    /// (B) u32
    lengths: GpuTensor,
    forward: ForwardWorkspace,
}

impl GpuTape {
    /// (T, B) of the recorded call.
    pub fn seq_and_batch(&self) -> (usize, usize) {
        (self.dims.t, self.dims.b)
    }

    /// An error unless this tape was recorded by a training forward of a model of `config` on
    /// `ctx`.
    fn check_model(&self, config: &RnnConfig, ctx: &GpuContext) -> Result<()> {
        if self.context != ctx.id() {
            return Err(RnnError::Config(format!(
                "backward: the tape was recorded on GPU context {}, the model lives on context {}",
                self.context,
                ctx.id()
            )));
        }
        if &self.config != config {
            return Err(RnnError::Config(format!(
                "backward: the tape was recorded by a model of {:?}, not of this model's {:?}",
                self.config, config
            )));
        }
        if self.forward.layout != StateLayout::Sequence {
            return Err(RnnError::Config(
                "backward needs the tape of forward_train".into(),
            ));
        }
        Ok(())
    }
}

impl GpuRnn {
    /// Uploads `params`; the kernels of its cell come from the context's pipeline cache.
    pub fn new(ctx: Arc<GpuContext>, params: &RnnParams<f32>) -> Result<Self> {
        check_params(params)?;
        let rows = params.config.gate_rows();
        let weights = params
            .layers
            .iter()
            .map(|p| upload_layer(&ctx, p, rows))
            .collect::<Result<Vec<_>>>()?;
        Self::from_weights(ctx, params.config.clone(), weights)
    }

    /// A model over weights already on the GPU (a trainer's views into its flat parameters).
    pub(crate) fn from_weights(
        ctx: Arc<GpuContext>,
        config: RnnConfig,
        weights: Vec<LayerWeights>,
    ) -> Result<Self> {
        config.validate()?;
        let kernels = CellKernels::new(&ctx, config.cell)?;
        Ok(GpuRnn {
            ctx,
            config,
            weights: Arc::new(weights),
            kernels,
            poison: false,
            time_chunk: None,
        })
    }

    /// When on, every buffer the kernels must fill completely (outputs, final states, gate
    /// gradients, parameter and input gradients) starts as NaN, so an element no kernel wrote
    /// shows up in the results. For tests; it costs one upload per buffer.
    pub fn poison_outputs(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }

    /// Inference ([`GpuRnn::forward`], [`GpuRnn::forward_gpu`], streams) projects the input
    /// and records the work in chunks of `steps` time steps (at least 1), so that its memory
    /// does not grow with T. The default fits one chunk's input projections (T_c, B, G·H) in
    /// 64 MiB and takes at most 1024 steps. Results do not depend on it.
    pub fn with_time_chunk(mut self, steps: usize) -> Self {
        self.time_chunk = Some(steps.max(1));
        self
    }

    /// When on, inference ([`GpuRnn::forward`], [`GpuRnn::forward_gpu`], streams) reads W_hh
    /// rounded to f16, two per 32-bit word (products and states stay f32): half the bytes per
    /// time step, which bounds small-batch steps on a GPU. Expect relative errors around 1e-4
    /// (f16 keeps 11 significant bits) instead of 1e-7; weights beyond ±65504 saturate.
    /// Training and backward keep f32. The f16 copy (G·H·⌈H/2⌉ words per layer and direction)
    /// follows [`GpuRnn::update_params`]. Set it before creating streams: a model shared with a
    /// stream is a [`RnnError::Config`].
    pub fn half_recurrent_weights(mut self, on: bool) -> Result<Self> {
        let Some(weights) = Arc::get_mut(&mut self.weights) else {
            return Err(RnnError::Config(
                "half_recurrent_weights: set it before creating streams of the model".into(),
            ));
        };
        let rows = self.config.gate_rows();
        let pairs = self.config.hidden_size.div_ceil(2);
        for w in weights.iter_mut() {
            w.w_hh_half = if on {
                Some(GpuTensor::zeros(&self.ctx, "w_hh f16", &[rows, pairs])?)
            } else {
                None
            };
        }
        self.ctx
            .scoped("half_recurrent_weights", || self.pack_half_weights())?;
        Ok(self)
    }

    /// Refreshes the f16 copies of W_hh, if any, from the f32 weights.
    fn pack_half_weights(&self) -> Result<()> {
        if self.weights.iter().all(|w| w.w_hh_half.is_none()) {
            return Ok(());
        }
        let mut rec = Recorder::new(&self.ctx);
        let shape = (self.config.gate_rows(), self.config.hidden_size);
        for w in self.weights.iter() {
            if let Some(half) = &w.w_hh_half {
                self.kernels.pack_half(&mut rec, &w.w_hh, half, shape)?;
            }
        }
        rec.submit()
    }

    pub fn config(&self) -> &RnnConfig {
        &self.config
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Replaces the weights in place (same configuration); streams see the new weights.
    /// A tape recorded before the update must not be used for backward afterwards.
    pub fn update_params(&mut self, params: &RnnParams<f32>) -> Result<()> {
        check_params(params)?;
        if params.config != self.config {
            return Err(RnnError::Config(format!(
                "update_params: configuration {:?} differs from the model's {:?}",
                params.config, self.config
            )));
        }
        for (target, p) in self.weights.iter().zip(&params.layers) {
            target.w_ih.write(&self.ctx, &contiguous(&p.w_ih))?;
            target.w_hh.write(&self.ctx, &contiguous(&p.w_hh))?;
            if let (Some(b_ih), Some(b_hh)) = (&p.b_ih, &p.b_hh) {
                target.b_ih.write(&self.ctx, &b_ih.to_vec())?;
                target.b_hh.write(&self.ctx, &b_hh.to_vec())?;
            }
        }
        self.ctx
            .scoped("update_params", || self.pack_half_weights())
    }

    /// Inference over a whole batch: uploads, [`GpuRnn::forward_gpu`], reads back.
    pub fn forward(&self, batch: &SequenceBatch<f32>) -> Result<ForwardOutput<f32>> {
        batch.validate(&self.config)?;
        let (input, h0, c0) = self.upload_batch(batch)?;
        let gpu_batch = GpuSequenceBatch {
            input: &input,
            h0: h0.as_ref(),
            c0: c0.as_ref(),
            lengths: batch.lengths,
        };
        self.forward_gpu(&gpu_batch)?.to_host()
    }

    /// Training forward: like [`GpuRnn::forward`], and keeps on the GPU what backward needs.
    pub fn forward_train(
        &self,
        batch: &SequenceBatch<f32>,
    ) -> Result<(ForwardOutput<f32>, GpuTape)> {
        batch.validate(&self.config)?;
        let (input, h0, c0) = self.upload_batch(batch)?;
        let gpu_batch = GpuSequenceBatch {
            input: &input,
            h0: h0.as_ref(),
            c0: c0.as_ref(),
            lengths: batch.lengths,
        };
        let (output, tape) = self.forward_train_gpu(&gpu_batch)?;
        Ok((output.to_host()?, tape))
    }

    /// Inference on GPU tensors, submitted: one recording for the whole sequence, or one per
    /// time chunk ([`GpuRnn::with_time_chunk`]); two state slots per layer and direction.
    /// Nothing is read back: the results can feed the next call.
    pub fn forward_gpu(&self, batch: &GpuSequenceBatch<'_>) -> Result<GpuForwardOutput> {
        Ok(self
            .run_forward(batch, StateLayout::PingPong, &mut Sink::Submit)?
            .0)
    }

    /// [`GpuRnn::forward_gpu`] recorded into the caller's `encoder`; nothing is submitted.
    /// The results hold what the recording refers to: keep them until the encoder is
    /// submitted. The parameters of every time step are kept until then (about 256 bytes per
    /// step and layer·direction).
    pub fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        batch: &GpuSequenceBatch<'_>,
    ) -> Result<GpuForwardOutput> {
        let mut recorded = Recorded::default();
        let mut sink = Sink::Encoder {
            encoder,
            recorded: &mut recorded,
        };
        let (mut output, tape) = self.run_forward(batch, StateLayout::PingPong, &mut sink)?;
        recorded.keep(tape.forward.tensors().chain([&tape.lengths]));
        output._recorded = recorded;
        Ok(output)
    }

    /// Training forward on GPU tensors: like [`GpuRnn::forward_gpu`] in one recording, and keeps
    /// on the GPU what backward needs (the tape owns a copy of the input).
    pub fn forward_train_gpu(
        &self,
        batch: &GpuSequenceBatch<'_>,
    ) -> Result<(GpuForwardOutput, GpuTape)> {
        self.run_forward(batch, StateLayout::Sequence, &mut Sink::Submit)
    }

    /// [`GpuRnn::forward_train_gpu`] recorded into the caller's `encoder`; nothing is
    /// submitted. Keep the results until the encoder is submitted.
    pub fn record_forward_train(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        batch: &GpuSequenceBatch<'_>,
    ) -> Result<(GpuForwardOutput, GpuTape)> {
        let mut recorded = Recorded::default();
        let mut sink = Sink::Encoder {
            encoder,
            recorded: &mut recorded,
        };
        let (mut output, tape) = self.run_forward(batch, StateLayout::Sequence, &mut sink)?;
        output._recorded = recorded;
        Ok((output, tape))
    }

    fn upload_batch(
        &self,
        batch: &SequenceBatch<f32>,
    ) -> Result<(GpuTensor, Option<GpuTensor>, Option<GpuTensor>)> {
        let ctx = &*self.ctx;
        let upload = |label: &str, a: Option<ArrayView3<f32>>| {
            a.map(|a| upload_pooled(ctx, label, a)).transpose()
        };
        Ok((
            upload_pooled(ctx, "input", batch.input)?,
            upload("h0", batch.h0)?,
            upload("c0", batch.c0)?,
        ))
    }

    /// Time steps per inference chunk for `dims`.
    fn chunk_steps(&self, dims: &Dims) -> usize {
        if let Some(steps) = self.time_chunk {
            return steps;
        }
        let limits = self.ctx.limits();
        let row_bytes = dims.b * dims.gh() * 4;
        let budget = XPROJ_CHUNK_BYTES
            .min(limits.max_storage_buffer_binding_size as usize)
            .min(limits.max_buffer_size as usize);
        let gemm_rows = limits.max_compute_workgroups_per_dimension as usize * GEMM_TILE_M;
        // One chunk's dispatches: its steps, the gemm and up to two transposes.
        let dispatches = limits.max_buffer_size as usize / param_stride(&self.ctx);
        let fits = (budget / row_bytes)
            .min(gemm_rows / dims.b)
            .min(dispatches.saturating_sub(3));
        fits.clamp(1, MAX_CHUNK_STEPS)
    }

    fn run_forward(
        &self,
        batch: &GpuSequenceBatch<'_>,
        layout: StateLayout,
        sink: &mut Sink<'_>,
    ) -> Result<(GpuForwardOutput, GpuTape)> {
        let what = match layout {
            StateLayout::PingPong => "forward",
            StateLayout::Sequence => "training forward",
        };
        self.ctx
            .scoped(what, || self.record_forward_in(batch, layout, sink))
    }

    fn record_forward_in(
        &self,
        batch: &GpuSequenceBatch<'_>,
        layout: StateLayout,
        sink: &mut Sink<'_>,
    ) -> Result<(GpuForwardOutput, GpuTape)> {
        let (t, b) = batch.validate(&self.config, &self.ctx)?;
        let dims = Dims::new(&self.config, t, b);
        let ctx = &*self.ctx;
        let lengths = match batch.lengths {
            Some(lengths) => upload_lengths(ctx, lengths)?,
            None => upload_lengths(ctx, &vec![t; b])?,
        };
        let output_shape = self.config.sequence_shape(t, b, self.config.output_size());
        let output = output_tensor(ctx, "output", &output_shape, self.poison)?;
        let state = self.config.state_shape(b);
        let h_n = output_tensor(ctx, "h_n", &state, self.poison)?;
        let c_n = dims
            .has_c
            .then(|| output_tensor(ctx, "c_n", &state, self.poison))
            .transpose()?;
        let chunk = self.chunk_steps(&dims);
        let ws = ForwardWorkspace::new(
            ctx,
            &dims,
            layout,
            chunk,
            self.config.batch_first,
            self.poison,
        )?;
        run_forward(
            ctx,
            &self.kernels,
            &self.weights,
            &dims,
            ForwardIo {
                input: batch.input,
                output: &output,
                h0: batch.h0,
                c0: batch.c0,
                h_n: &h_n,
                c_n: c_n.as_ref(),
                lengths: &lengths,
            },
            &ws,
            sink,
        )?;
        let output = GpuForwardOutput {
            output,
            h_n,
            c_n,
            ctx: Arc::clone(&self.ctx),
            _recorded: Recorded::default(),
        };
        let tape = GpuTape {
            context: ctx.id(),
            config: self.config.clone(),
            dims,
            lengths,
            forward: ws,
        };
        Ok((output, tape))
    }

    /// Backpropagation through time over `tape` (from [`GpuRnn::forward_train`] with the
    /// current weights): uploads, [`GpuRnn::backward_gpu`], reads back.
    pub fn backward(&self, tape: &GpuTape, grads: &UpstreamGrads<f32>) -> Result<Gradients<f32>> {
        tape.check_model(&self.config, &self.ctx)?;
        grads.validate(&self.config, tape.dims.t, tape.dims.b)?;
        let ctx = &*self.ctx;
        let upload = |label: &str, a: Option<ArrayView3<f32>>| {
            a.map(|a| upload_pooled(ctx, label, a)).transpose()
        };
        let output = upload_pooled(ctx, "grad_output", grads.output)?;
        let h_n = upload("grad_h_n", grads.h_n)?;
        let c_n = upload("grad_c_n", grads.c_n)?;
        let upstream = GpuUpstreamGrads {
            output: &output,
            h_n: h_n.as_ref(),
            c_n: c_n.as_ref(),
        };
        self.backward_gpu(tape, &upstream)?.to_host()
    }

    /// Backpropagation through time on GPU tensors, submitted: d loss / d (parameters, input,
    /// h0, c0), in one recording. Nothing is read back.
    pub fn backward_gpu(
        &self,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
    ) -> Result<GpuGradients> {
        self.run_backward(tape, grads, &mut Sink::Submit)
    }

    /// [`GpuRnn::backward_gpu`] recorded into the caller's `encoder`; nothing is submitted.
    /// Keep the results (and the tape) until the encoder is submitted.
    pub fn record_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
    ) -> Result<GpuGradients> {
        let mut recorded = Recorded::default();
        let mut sink = Sink::Encoder {
            encoder,
            recorded: &mut recorded,
        };
        let mut gradients = self.run_backward(tape, grads, &mut sink)?;
        recorded.keep(tape.forward.tensors().chain([&tape.lengths]));
        gradients._recorded = recorded;
        Ok(gradients)
    }

    fn run_backward(
        &self,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<GpuGradients> {
        self.ctx
            .scoped("backward", || self.record_backward_in(tape, grads, sink))
    }

    fn record_backward_in(
        &self,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<GpuGradients> {
        tape.check_model(&self.config, &self.ctx)?;
        let dims = tape.dims;
        grads.validate(&self.config, &self.ctx, dims.t, dims.b)?;
        let ctx = &*self.ctx;
        let poison = self.poison;
        let rows = self.config.gate_rows();
        let params = (0..dims.layers * dims.directions)
            .map(|ld| {
                let in_features = self.config.layer_input_size(ld / dims.directions);
                let bias = |label| {
                    self.config
                        .bias
                        .then(|| output_tensor(ctx, label, &[rows], poison))
                        .transpose()
                };
                Ok(GpuLayerGradients {
                    w_ih: output_tensor(ctx, "grad w_ih", &[rows, in_features], poison)?,
                    w_hh: output_tensor(ctx, "grad w_hh", &[rows, dims.h], poison)?,
                    b_ih: bias("grad b_ih")?,
                    b_hh: bias("grad b_hh")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let input_shape = self.config.sequence_shape(dims.t, dims.b, dims.input);
        let input = output_tensor(ctx, "grad input", &input_shape, poison)?;
        let state = self.config.state_shape(dims.b);
        let h0 = output_tensor(ctx, "grad h0", &state, poison)?;
        let c0 = dims
            .has_c
            .then(|| output_tensor(ctx, "grad c0", &state, poison))
            .transpose()?;
        self.record_backward_into(
            tape,
            grads,
            BackwardIo {
                d_output: grads.output,
                d_h_n: grads.h_n,
                d_c_n: grads.c_n,
                d_input: &input,
                d_h0: &h0,
                d_c0: c0.as_ref(),
                params: params
                    .iter()
                    .map(|g| LayerGradIo {
                        w_ih: &g.w_ih,
                        w_hh: &g.w_hh,
                        bias: g.b_ih.as_ref().zip(g.b_hh.as_ref()),
                    })
                    .collect(),
            },
            sink,
        )?;
        Ok(GpuGradients {
            params,
            input,
            h0,
            c0,
            config: self.config.clone(),
            ctx: Arc::clone(&self.ctx),
            _recorded: Recorded::default(),
        })
    }

    /// Backward over `tape`, submitted, writing the parameter gradients into `params` (a
    /// trainer's views of its flat gradients); returns d loss / d input.
    pub(crate) fn backward_into(
        &self,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
        params: Vec<LayerGradIo<'_>>,
    ) -> Result<GpuTensor> {
        tape.check_model(&self.config, &self.ctx)?;
        let dims = tape.dims;
        grads.validate(&self.config, &self.ctx, dims.t, dims.b)?;
        let ctx = &*self.ctx;
        let input_shape = self.config.sequence_shape(dims.t, dims.b, dims.input);
        let input = output_tensor(ctx, "grad input", &input_shape, self.poison)?;
        let state = self.config.state_shape(dims.b);
        let h0 = GpuTensor::pooled(ctx, "grad h0", &state)?;
        let c0 = dims
            .has_c
            .then(|| GpuTensor::pooled(ctx, "grad c0", &state))
            .transpose()?;
        let io = BackwardIo {
            d_output: grads.output,
            d_h_n: grads.h_n,
            d_c_n: grads.c_n,
            d_input: &input,
            d_h0: &h0,
            d_c0: c0.as_ref(),
            params,
        };
        self.ctx.scoped("backward", || {
            self.record_backward_into(tape, grads, io, &mut Sink::Submit)
        })?;
        Ok(input)
    }

    /// Records backward over `tape` writing the gradients where `io` says. `tape` and `grads`
    /// must be checked by the caller.
    pub(crate) fn record_backward_into(
        &self,
        tape: &GpuTape,
        grads: &GpuUpstreamGrads<'_>,
        io: BackwardIo<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<()> {
        let dims = tape.dims;
        let ws = BackwardWorkspace::new(&self.ctx, &dims, self.config.batch_first, self.poison)?;
        let tape_input =
            tape.forward.seq_input.as_ref().ok_or_else(|| {
                RnnError::Config("backward needs the tape of forward_train".into())
            })?;
        debug_assert!(std::ptr::eq(io.d_output, grads.output));
        run_backward(
            &self.ctx,
            &self.kernels,
            &self.weights,
            &dims,
            tape_input,
            &tape.lengths,
            &tape.forward,
            io,
            &ws,
            sink,
        )?;
        if let Sink::Encoder { recorded, .. } = sink {
            recorded.keep(ws.tensors());
        }
        Ok(())
    }

    /// Streaming inference over a batch of `batch_size` sequences, state kept on the GPU and
    /// starting at zero. Unidirectional models only.
    pub fn stream(&self, batch_size: usize) -> Result<GpuStream> {
        if self.config.bidirectional {
            return Err(RnnError::Unsupported(
                "streaming needs the whole sequence for a bidirectional model".into(),
            ));
        }
        if batch_size == 0 {
            return Err(RnnError::Config(
                "stream batch size must be at least 1".into(),
            ));
        }
        let shape = [self.config.num_layers, batch_size, self.config.hidden_size];
        let ctx = &*self.ctx;
        Ok(GpuStream {
            ctx: Arc::clone(&self.ctx),
            config: RnnConfig {
                batch_first: false,
                ..self.config.clone()
            },
            weights: Arc::clone(&self.weights),
            kernels: Arc::clone(&self.kernels),
            time_chunk: self.time_chunk,
            batch_size,
            h: GpuTensor::zeros(ctx, "stream h", &shape)?,
            c: self
                .config
                .cell
                .has_cell_state()
                .then(|| GpuTensor::zeros(ctx, "stream c", &shape))
                .transpose()?,
        })
    }
}

fn check_cell_state(config: &RnnConfig, tensor: &str) -> Result<()> {
    if config.cell.has_cell_state() {
        Ok(())
    } else {
        Err(RnnError::Config(format!(
            "{tensor} was given but a {} cell has no cell state",
            config.cell.name()
        )))
    }
}

/// Streaming inference: feeds k time steps at a time, the state staying on the GPU.
#[derive(Debug)]
pub struct GpuStream {
    ctx: Arc<GpuContext>,
    /// The model's configuration, seq-major.
    config: RnnConfig,
    weights: Arc<Vec<LayerWeights>>,
    kernels: Arc<CellKernels>,
    time_chunk: Option<usize>,
    batch_size: usize,
    /// (L, B, H)
    h: GpuTensor,
    /// (L, B, H), LSTM only
    c: Option<GpuTensor>,
}

impl GpuStream {
    /// Runs `x` (k, B, I), seq-major, from the current state; returns the outputs (k, B, H).
    pub fn step(&mut self, x: ArrayView3<f32>) -> Result<Array3<f32>> {
        let (k, b, i) = x.dim();
        self.check_input(&[k, b, i])?;
        SequenceBatch::new(x).validate(&self.config)?;
        let input = upload_pooled(&self.ctx, "stream input", x)?;
        let output = self.run(&input, &mut Sink::Submit)?;
        read3(&self.ctx, &output)
    }

    /// Records a step over `x` (k, B, I) on the GPU into the caller's `encoder`; returns the
    /// outputs (k, B, H), which hold what the recording refers to: keep them until the encoder
    /// is submitted. The state advances when the GPU runs it.
    pub fn record_step(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &GpuTensor,
    ) -> Result<GpuStreamOutput> {
        x.check_context(&self.ctx)?;
        self.check_input(x.shape())?;
        let mut recorded = Recorded::default();
        let mut sink = Sink::Encoder {
            encoder,
            recorded: &mut recorded,
        };
        let output = self.run(x, &mut sink)?;
        recorded.keep([&self.h].into_iter().chain(&self.c));
        Ok(GpuStreamOutput {
            output,
            _recorded: recorded,
        })
    }

    fn check_input(&self, shape: &[usize]) -> Result<()> {
        let k = shape.first().copied().unwrap_or(0);
        if k == 0 {
            return Err(RnnError::Config(
                "stream step needs at least one time step".into(),
            ));
        }
        check_shape(
            "stream input",
            &[k, self.batch_size, self.config.input_size],
            shape,
        )
    }

    /// Records the steps of `input` (k, B, I) from the state into `sink`; returns the outputs.
    fn run(&mut self, input: &GpuTensor, sink: &mut Sink<'_>) -> Result<GpuTensor> {
        let ctx = Arc::clone(&self.ctx);
        ctx.scoped("stream step", || self.record_in(input, sink))
    }

    fn record_in(&mut self, input: &GpuTensor, sink: &mut Sink<'_>) -> Result<GpuTensor> {
        let ctx = &*self.ctx;
        let k = input.shape()[0];
        let b = self.batch_size;
        let dims = Dims::new(&self.config, k, b);
        let output = GpuTensor::pooled(ctx, "stream output", &[k, b, self.config.hidden_size])?;
        let lengths = upload_lengths(ctx, &vec![k; b])?;
        let chunk = self.time_chunk.unwrap_or(MAX_CHUNK_STEPS);
        let ws = ForwardWorkspace::new(ctx, &dims, StateLayout::PingPong, chunk, false, false)?;
        run_forward(
            ctx,
            &self.kernels,
            &self.weights,
            &dims,
            ForwardIo {
                input,
                output: &output,
                h0: Some(&self.h),
                c0: self.c.as_ref(),
                h_n: &self.h,
                c_n: self.c.as_ref(),
                lengths: &lengths,
            },
            &ws,
            sink,
        )?;
        if let Sink::Encoder { recorded, .. } = sink {
            recorded.keep(ws.tensors().chain([&lengths]));
        }
        Ok(output)
    }

    /// The current (h, c), each (L, B, H).
    pub fn state(&self) -> Result<(Array3<f32>, Option<Array3<f32>>)> {
        let h = read3(&self.ctx, &self.h)?;
        let c = self.c.as_ref().map(|c| read3(&self.ctx, c)).transpose()?;
        Ok((h, c))
    }

    /// Sets the state back to zero.
    pub fn reset(&mut self) -> Result<()> {
        let mut rec = Recorder::new(&self.ctx);
        for tensor in std::iter::once(&self.h).chain(self.c.as_ref()) {
            rec.clear(tensor)?;
        }
        rec.submit()
    }
}

/// The outputs (k, B, H) of [`GpuStream::record_step`].
#[derive(Debug)]
pub struct GpuStreamOutput {
    pub output: GpuTensor,
    _recorded: Recorded,
}

fn upload_layer(
    ctx: &GpuContext,
    p: &crate::params::LayerParams<f32>,
    rows: usize,
) -> Result<LayerWeights> {
    let bias = |b: &Option<Array1<f32>>, label: &str| match b {
        Some(b) => GpuTensor::from_slice(ctx, label, &[rows], &b.to_vec()),
        None => GpuTensor::zeros(ctx, label, &[rows]),
    };
    Ok(LayerWeights {
        w_ih: GpuTensor::from_array(ctx, "w_ih", p.w_ih.view().into_dyn())?,
        w_hh: GpuTensor::from_array(ctx, "w_hh", p.w_hh.view().into_dyn())?,
        b_ih: bias(&p.b_ih, "b_ih")?,
        b_hh: bias(&p.b_hh, "b_hh")?,
        w_hh_half: None,
    })
}

/// The elements of `a` in row-major order.
fn contiguous(a: &Array2<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// Uploads `a` into a pooled tensor.
fn upload_pooled(ctx: &GpuContext, label: &str, a: ArrayView3<f32>) -> Result<GpuTensor> {
    let (d0, d1, d2) = a.dim();
    let tensor = GpuTensor::pooled(ctx, label, &[d0, d1, d2])?;
    match a.as_slice() {
        Some(values) => tensor.write(ctx, values)?,
        None => tensor.write(ctx, &a.iter().copied().collect::<Vec<_>>())?,
    }
    Ok(tensor)
}

/// The lengths (B) as u32 words in a pooled tensor.
fn upload_lengths(ctx: &GpuContext, lengths: &[usize]) -> Result<GpuTensor> {
    let words = lengths
        .iter()
        .map(|&l| u32::try_from(l))
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| RnnError::TooLarge("a length exceeds 32 bits".into()))?;
    let tensor = GpuTensor::pooled(ctx, "lengths (u32)", &[words.len()])?;
    tensor.write(ctx, bytemuck::cast_slice(&words))?;
    Ok(tensor)
}

fn read3(ctx: &GpuContext, tensor: &GpuTensor) -> Result<Array3<f32>> {
    let a = tensor.to_array(ctx)?;
    a.into_dimensionality()
        .map_err(|e| RnnError::Device(format!("readback of `{}`: {e}", tensor.label())))
}
