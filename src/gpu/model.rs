//! The public GPU model: whole-sequence forward, training forward with a tape kept on the GPU,
//! backward (BPTT), and streaming inference. f32 throughout.

use std::sync::Arc;

use ndarray::{Array1, Array2, Array3, ArrayView3};
use wgpu::util::DeviceExt;

use super::buffer::GpuTensor;
use super::context::GpuContext;
use super::kernels::{CellKernels, Recorder};
use super::sequence::{
    grad_offsets, output_tensor, record_backward, record_forward, BackwardWorkspace, Dims,
    ForwardWorkspace, LayerWeights, StateIo, StateLayout, UpstreamIo,
};
use crate::batch::{check_params, ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use crate::config::RnnConfig;
use crate::error::{check_shape, Result, RnnError};
use crate::params::RnnParams;

/// An RNN, LSTM or GRU whose weights live on the GPU (uploaded once, per layer and direction).
#[derive(Debug)]
pub struct GpuRnn {
    ctx: Arc<GpuContext>,
    config: RnnConfig,
    weights: Arc<Vec<LayerWeights>>,
    kernels: Arc<CellKernels>,
    poison: bool,
}

/// What [`GpuRnn::backward`] needs from a [`GpuRnn::forward_train`] call, kept on the GPU:
/// the input, every layer's output, all states (T + 1 slots) and the saved gate activations.
#[derive(Debug)]
pub struct GpuTape {
    dims: Dims,
    /// (T, B, I) seq-major
    input: GpuTensor,
    /// (B) u32
    lengths: wgpu::Buffer,
    forward: ForwardWorkspace,
}

impl GpuTape {
    /// (T, B) of the recorded call.
    pub fn seq_and_batch(&self) -> (usize, usize) {
        (self.dims.t, self.dims.b)
    }
}

impl GpuRnn {
    /// Uploads `params` and compiles the kernels of its cell.
    pub fn new(ctx: Arc<GpuContext>, params: &RnnParams<f32>) -> Result<Self> {
        check_params(params)?;
        let kernels = CellKernels::new(&ctx, params.config.cell)?;
        let weights = params
            .layers
            .iter()
            .map(|p| upload_layer(&ctx, p, params.config.gate_rows()))
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuRnn {
            ctx,
            config: params.config.clone(),
            weights: Arc::new(weights),
            kernels,
            poison: false,
        })
    }

    /// When on, every buffer the kernels must fill completely (outputs, final states, gate
    /// gradients, parameter and input gradients) starts as NaN, so an element no kernel wrote
    /// shows up in the results. For tests; it costs one upload per buffer.
    pub fn poison_outputs(mut self, on: bool) -> Self {
        self.poison = on;
        self
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
        Ok(())
    }

    /// Inference over a whole batch: one submit, two state slots per layer and direction.
    pub fn forward(&self, batch: &SequenceBatch<f32>) -> Result<ForwardOutput<f32>> {
        let (output, _) = self.run_forward(batch, StateLayout::PingPong)?;
        Ok(output)
    }

    /// Training forward: like [`GpuRnn::forward`], and keeps on the GPU what backward needs.
    pub fn forward_train(
        &self,
        batch: &SequenceBatch<f32>,
    ) -> Result<(ForwardOutput<f32>, GpuTape)> {
        self.run_forward(batch, StateLayout::Sequence)
    }

    fn run_forward(
        &self,
        batch: &SequenceBatch<f32>,
        layout: StateLayout,
    ) -> Result<(ForwardOutput<f32>, GpuTape)> {
        let (t, b) = batch.validate(&self.config)?;
        let dims = Dims::new(&self.config, t, b);
        let ctx = &*self.ctx;
        let input = upload_sequence(ctx, "input", batch.input, self.config.batch_first)?;
        let lengths = match batch.lengths {
            Some(lengths) => lengths.to_vec(),
            None => vec![t; b],
        };
        let lengths = upload_lengths(ctx, &lengths)?;
        let h0 = batch
            .h0
            .map(|h0| GpuTensor::from_array(ctx, "h0", h0.into_dyn()))
            .transpose()?;
        let c0 = batch
            .c0
            .map(|c0| GpuTensor::from_array(ctx, "c0", c0.into_dyn()))
            .transpose()?;
        let state_shape = [dims.layers * dims.directions, b, dims.h];
        let h_n = output_tensor(ctx, "h_n", &state_shape, self.poison)?;
        let c_n = dims
            .has_c
            .then(|| output_tensor(ctx, "c_n", &state_shape, self.poison))
            .transpose()?;
        let ws = ForwardWorkspace::new(ctx, &dims, layout, self.poison)?;
        let mut rec = Recorder::new(ctx);
        record_forward(
            &mut rec,
            &self.kernels,
            &self.weights,
            &dims,
            &input,
            &lengths,
            StateIo {
                h0: h0.as_ref(),
                c0: c0.as_ref(),
                h_n: &h_n,
                c_n: c_n.as_ref(),
            },
            &ws,
        )?;
        rec.submit()?;
        let output = read3(ctx, ws.top_output(&dims))?;
        let output = ForwardOutput {
            output: from_seq_major(output, self.config.batch_first),
            h_n: read3(ctx, &h_n)?,
            c_n: c_n.as_ref().map(|c| read3(ctx, c)).transpose()?,
        };
        let tape = GpuTape {
            dims,
            input,
            lengths,
            forward: ws,
        };
        Ok((output, tape))
    }

    /// Backpropagation through time over `tape` (from [`GpuRnn::forward_train`] with the
    /// current weights): d loss / d (parameters, input, h0, c0), in one submit.
    pub fn backward(&self, tape: &GpuTape, grads: &UpstreamGrads<f32>) -> Result<Gradients<f32>> {
        if tape.forward.layout != StateLayout::Sequence {
            return Err(RnnError::Config(
                "backward needs the tape of forward_train".into(),
            ));
        }
        let dims = tape.dims;
        grads.validate(&self.config, dims.t, dims.b)?;
        let ctx = &*self.ctx;
        let d_output = upload_sequence(ctx, "grad_output", grads.output, self.config.batch_first)?;
        let d_h_n = grads
            .h_n
            .map(|g| GpuTensor::from_array(ctx, "grad_h_n", g.into_dyn()))
            .transpose()?;
        let d_c_n = grads
            .c_n
            .map(|g| GpuTensor::from_array(ctx, "grad_c_n", g.into_dyn()))
            .transpose()?;
        let (offsets, params_len) = grad_offsets(&dims, self.config.bias);
        let ws = BackwardWorkspace::new(ctx, &dims, params_len, self.poison)?;
        let mut rec = Recorder::new(ctx);
        record_backward(
            &mut rec,
            &self.kernels,
            &self.weights,
            &dims,
            &tape.input,
            &tape.lengths,
            &tape.forward,
            UpstreamIo {
                output: &d_output,
                h_n: d_h_n.as_ref(),
                c_n: d_c_n.as_ref(),
            },
            &offsets,
            &ws,
        )?;
        rec.submit()?;

        let flat = ws.params.to_vec(ctx)?;
        let mut params = RnnParams::<f32>::zeros(&self.config)?;
        for (layer, (p, off)) in params.layers.iter_mut().zip(&offsets).enumerate() {
            let l = layer / dims.directions;
            let in_features = self.config.layer_input_size(l);
            let rows = self.config.gate_rows();
            p.w_ih = matrix(&flat, off.w_ih, rows, in_features);
            p.w_hh = matrix(&flat, off.w_hh, rows, dims.h);
            if let Some((b_ih, b_hh)) = off.bias {
                p.b_ih = Some(Array1::from(flat[b_ih..b_ih + rows].to_vec()));
                p.b_hh = Some(Array1::from(flat[b_hh..b_hh + rows].to_vec()));
            }
        }
        let input = read3(ctx, &ws.d_inputs[0])?;
        Ok(Gradients {
            params,
            input: from_seq_major(input, self.config.batch_first),
            h0: read3(ctx, &ws.d_h0)?,
            c0: ws.d_c0.as_ref().map(|g| read3(ctx, g)).transpose()?,
        })
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
            config: self.config.clone(),
            weights: Arc::clone(&self.weights),
            kernels: Arc::clone(&self.kernels),
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

/// Streaming inference: feeds k time steps at a time, the state staying on the GPU.
#[derive(Debug)]
pub struct GpuStream {
    ctx: Arc<GpuContext>,
    config: RnnConfig,
    weights: Arc<Vec<LayerWeights>>,
    kernels: Arc<CellKernels>,
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
        if k == 0 {
            return Err(RnnError::Config(
                "stream step needs at least one time step".into(),
            ));
        }
        check_shape(
            "stream input",
            &[k, self.batch_size, self.config.input_size],
            &[k, b, i],
        )?;
        let batch = SequenceBatch::new(x);
        let seq_major = RnnConfig {
            batch_first: false,
            ..self.config.clone()
        };
        batch.validate(&seq_major)?;
        let ctx = &*self.ctx;
        let dims = Dims::new(&self.config, k, b);
        let input = upload_sequence(ctx, "stream input", x, false)?;
        let lengths = upload_lengths(ctx, &vec![k; b])?;
        let ws = ForwardWorkspace::new(ctx, &dims, StateLayout::PingPong, false)?;
        let mut rec = Recorder::new(ctx);
        record_forward(
            &mut rec,
            &self.kernels,
            &self.weights,
            &dims,
            &input,
            &lengths,
            StateIo {
                h0: Some(&self.h),
                c0: self.c.as_ref(),
                h_n: &self.h,
                c_n: self.c.as_ref(),
            },
            &ws,
        )?;
        rec.submit()?;
        read3(ctx, ws.top_output(&dims))
    }

    /// The current (h, c), each (L, B, H).
    pub fn state(&self) -> Result<(Array3<f32>, Option<Array3<f32>>)> {
        let h = read3(&self.ctx, &self.h)?;
        let c = self.c.as_ref().map(|c| read3(&self.ctx, c)).transpose()?;
        Ok((h, c))
    }

    /// Sets the state back to zero.
    pub fn reset(&mut self) {
        let zeros = vec![0.0f32; self.h.len()];
        for tensor in std::iter::once(&self.h).chain(self.c.as_ref()) {
            self.ctx
                .queue()
                .write_buffer(tensor.buffer(), 0, bytemuck::cast_slice(&zeros));
        }
    }
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
    })
}

/// The elements of `a` in row-major order.
fn contiguous(a: &Array2<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// Uploads a sequence tensor as (T, B, F), transposing from (B, T, F) when `batch_first`.
fn upload_sequence(
    ctx: &GpuContext,
    label: &str,
    a: ArrayView3<f32>,
    batch_first: bool,
) -> Result<GpuTensor> {
    let view = if batch_first {
        a.permuted_axes([1, 0, 2])
    } else {
        a
    };
    GpuTensor::from_array(ctx, label, view.into_dyn())
}

fn from_seq_major(a: Array3<f32>, batch_first: bool) -> Array3<f32> {
    if batch_first {
        a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned()
    } else {
        a
    }
}

fn upload_lengths(ctx: &GpuContext, lengths: &[usize]) -> Result<wgpu::Buffer> {
    let words = lengths
        .iter()
        .map(|&l| u32::try_from(l))
        .collect::<std::result::Result<Vec<u32>, _>>()
        .map_err(|_| RnnError::TooLarge("a length exceeds 32 bits".into()))?;
    Ok(ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("lengths"),
            contents: bytemuck::cast_slice(&words),
            usage: wgpu::BufferUsages::STORAGE,
        }))
}

fn read3(ctx: &GpuContext, tensor: &GpuTensor) -> Result<Array3<f32>> {
    let a = tensor.to_array(ctx)?;
    a.into_dimensionality()
        .map_err(|e| RnnError::Device(format!("readback of `{}`: {e}", tensor.label())))
}

/// The (rows, cols) matrix at `offset` of the flat gradient buffer.
fn matrix(flat: &[f32], offset: usize, rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(r, c)| flat[offset + r * cols + c])
}
