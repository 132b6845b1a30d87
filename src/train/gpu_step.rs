//! A GPU-resident training step (adding problem, character LM): parameters, embedding,
//! gradients and optimizer state live in flat GPU buffers in [`SeqModel::tensors`] order. One
//! step uploads the batch, runs every RNN layer's training forward, dropout, the output layer
//! and the loss, the backward pass, clipping and the optimizer update on the GPU. The losses
//! stay on the GPU until [`GpuTrainer::take_losses`] reads them; the updated RNN weights reach
//! the layers by a GPU-to-GPU copy ([`GpuRnn::copy_weights_from`]). Nothing else leaves the GPU.

use super::dropout::Dropout;
use super::gpu::{
    check_u32, dispatch, elementwise_groups, record_clip_grad_norm, record_clip_grad_value,
    record_dropout, record_softmax_cross_entropy, run_pass, upload_targets, GpuOptimizer,
    NormScratch,
};
use super::layers::Readout;
use super::model::{DropoutKey, Inputs, SeqModel, Targets};
use super::optim::{Optimizer, OptimizerConfig};
use super::trainer::Clip;
use crate::error::{check_shape, Result, RnnError};
use crate::gpu::kernels::{CellKernels, GemmParams, Recorder};
use crate::gpu::model::{GpuRnn, GpuSequenceBatch, GpuTape, GpuUpstreamGrads};
use crate::gpu::{GpuContext, GpuTensor};
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct EmbeddingParams {
    positions: u32,
    dim: u32,
    vocab: u32,
    offset: u32,
}

/// train.wgsl `MseParams`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MseParams {
    count: u32,
    inv_count: f32,
    _pad: [u32; 2],
}

/// The output layer of one (T, B) batch: where its rows and parameters are (elements).
#[derive(Clone, Copy, Debug)]
struct OutputLayer {
    /// N: rows read from the top layer's output
    rows: usize,
    /// H
    hidden: usize,
    /// O
    outputs: usize,
    /// `linear.weight` (O, H) in the flat buffers
    w_offset: usize,
    /// `linear.bias` (O) in the flat buffers
    b_offset: usize,
    /// The first row in the top layer's output (T, B, H)
    row_offset: usize,
}

/// What a forward pass is for.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// Evaluation: inference kernels, no tapes, no dropout.
    Eval,
    /// Training: tapes for backward, dropout masks from the key when set.
    Train(Option<DropoutKey>),
}

/// A model in training on the GPU (f32).
#[derive(Debug)]
pub struct GpuTrainer {
    ctx: Arc<GpuContext>,
    model: SeqModel<f32>,
    layers: Vec<GpuRnn>,
    /// gemm.wgsl and reduce.wgsl for the output layer
    kernels: Arc<CellKernels>,
    /// (P) every parameter, in [`SeqModel::tensors`] order
    params: GpuTensor,
    /// (P) d loss / d params of the last step
    grads: GpuTensor,
    /// Offset of each tensor of [`SeqModel::tensors`] in `params` and `grads`.
    offsets: Vec<usize>,
    optimizer: GpuOptimizer,
    norm: NormScratch,
    /// Per step since the last [`GpuTrainer::take_losses`]: the per-row (cross-entropy) or
    /// per-element (MSE) losses, whose mean is the step's loss
    losses: Vec<GpuTensor>,
}

impl GpuTrainer {
    /// Uploads `model` and zero optimizer state of `optimizer`.
    pub fn new(
        ctx: Arc<GpuContext>,
        model: &SeqModel<f32>,
        optimizer: OptimizerConfig,
    ) -> Result<Self> {
        Self::resume(
            ctx,
            model,
            &Optimizer::new(optimizer, &model.tensor_lens())?,
        )
    }

    /// Uploads `model` and the state of `optimizer` (one state tensor per model tensor, as
    /// [`load_checkpoint`](super::checkpoint::load_checkpoint) returns them): training goes on
    /// from the optimizer's step.
    pub fn resume(
        ctx: Arc<GpuContext>,
        model: &SeqModel<f32>,
        optimizer: &Optimizer<f32>,
    ) -> Result<Self> {
        model.validate()?;
        optimizer.check_lens(&model.tensor_lens())?;
        let tensors = model.tensors();
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut flat = Vec::with_capacity(model.num_parameters());
        for t in &tensors {
            offsets.push(flat.len());
            flat.extend_from_slice(t);
        }
        check_u32("parameters", flat.len())?;
        let params = GpuTensor::from_slice(&ctx, "parameters", &[flat.len()], &flat)?;
        // NaN until written: an element the step missed would show up in the parameters.
        let grads = GpuTensor::filled(&ctx, "gradients", &[flat.len()], f32::NAN)?;
        let layers = model
            .rnn
            .iter()
            .map(|p| GpuRnn::new(Arc::clone(&ctx), p))
            .collect::<Result<_>>()?;
        Ok(GpuTrainer {
            kernels: CellKernels::new(&ctx, model.config.cell)?,
            optimizer: GpuOptimizer::from_host(&ctx, optimizer, flat.len())?,
            norm: NormScratch::new(&ctx, flat.len())?,
            ctx,
            model: model.clone(),
            layers,
            params,
            grads,
            offsets,
            losses: Vec::new(),
        })
    }

    /// Offset of `linear.weight` and `linear.bias` in the flat buffers.
    fn linear_offsets(&self) -> (usize, usize) {
        let n = self.offsets.len();
        (self.offsets[n - 2], self.offsets[n - 1])
    }

    /// The output layer of a (T, B) batch.
    fn output_layer(&self, t: usize, b: usize) -> OutputLayer {
        let config = &self.model.config;
        let row_offset = match config.readout {
            Readout::EveryStep => 0,
            Readout::LastStep => (t - 1) * b * config.hidden,
        };
        let (w_offset, b_offset) = self.linear_offsets();
        OutputLayer {
            rows: config.readout.rows(t, b),
            hidden: config.hidden,
            outputs: config.outputs,
            w_offset,
            b_offset,
            row_offset,
        }
    }

    /// Uploads the inputs (embedding token ids on the GPU) and runs every layer forward: for
    /// training with tapes and, when the key is set, dropout on each layer's output. Returns the
    /// top layer's output (T, B, H), the tapes (none for evaluation) and the uploaded token ids.
    fn forward(
        &self,
        inputs: &Inputs<'_, f32>,
        pass: Pass,
    ) -> Result<(GpuTensor, Vec<GpuTape>, Option<GpuTensor>)> {
        let ctx = &*self.ctx;
        let (t, b) = inputs.dims();
        if t == 0 || b == 0 {
            return Err(RnnError::Config(format!(
                "empty input batch (T, B) = ({t}, {b})"
            )));
        }
        let (mut x, tokens) = match (inputs, &self.model.embedding) {
            (Inputs::Features(features), None) => {
                let input_size = self.model.config.layer_config(0).input_size;
                check_shape("inputs", &[t, b, input_size], features.shape())?;
                let x = GpuTensor::from_array(ctx, "inputs", features.into_dyn())?;
                (x, None)
            }
            (Inputs::Tokens(ids), Some(embedding)) => {
                let (vocab, dim) = embedding.weight.dim();
                let ids: Vec<usize> = ids.iter().copied().collect();
                let tokens = upload_targets(ctx, &ids, vocab)?;
                let x = GpuTensor::zeros(ctx, "embedded", &[t, b, dim])?;
                let params = EmbeddingParams {
                    positions: check_u32("token positions", t * b)?,
                    dim: check_u32("embedding width", dim)?,
                    vocab: check_u32("vocabulary", vocab)?,
                    offset: 0,
                };
                run_pass(ctx, |pass| {
                    dispatch(
                        ctx,
                        pass,
                        "embedding_forward",
                        &[
                            (28, tokens.buffer()),
                            (29, self.params.buffer()),
                            (30, x.buffer()),
                        ],
                        31,
                        &params,
                        elementwise_groups(t * b * dim),
                    )
                })?;
                (x, Some(tokens))
            }
            (Inputs::Features(_), Some(_)) => {
                return Err(RnnError::Config(
                    "this model reads token ids, got feature vectors".into(),
                ))
            }
            (Inputs::Tokens(_), None) => {
                return Err(RnnError::Config(
                    "this model reads feature vectors, got token ids".into(),
                ))
            }
        };
        let drop = Dropout::new(self.model.config.dropout)?;
        let mut tapes = Vec::with_capacity(self.layers.len());
        for (k, layer) in self.layers.iter().enumerate() {
            let batch = GpuSequenceBatch::new(&x);
            let out = match pass {
                Pass::Eval => layer.forward_gpu(&batch)?.output,
                Pass::Train(_) => {
                    let (out, tape) = layer.forward_train_gpu(&batch)?;
                    tapes.push(tape);
                    out.output
                }
            };
            if let Pass::Train(Some(key)) = pass {
                let stream = self.model.stream(key, k);
                run_pass(ctx, |p| {
                    record_dropout(ctx, p, &out, &drop, key.seed, stream)
                })?;
            }
            x = out;
        }
        Ok((x, tapes, tokens))
    }

    /// Output layer and loss on the top layer's output `x` (T, B, H): the per-row or
    /// per-element losses and d loss / d outputs (N, O).
    fn head(
        &self,
        x: &GpuTensor,
        ol: &OutputLayer,
        targets: &Targets<'_, f32>,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let ctx = &*self.ctx;
        let (rows, outputs) = (ol.rows, ol.outputs);
        let out = GpuTensor::zeros(ctx, "outputs", &[rows, outputs])?;
        let grad_out = GpuTensor::zeros(ctx, "d outputs", &[rows, outputs])?;
        let (loss_values, target_tensor) = match targets {
            Targets::Classes(classes) => {
                check_shape("targets", &[rows], &[classes.len()])?;
                (
                    GpuTensor::zeros(ctx, "row losses", &[rows])?,
                    upload_targets(ctx, classes, outputs)?,
                )
            }
            Targets::Values(values) => {
                check_shape("targets", &[rows, outputs], values.shape())?;
                (
                    GpuTensor::zeros(ctx, "squared errors", &[rows, outputs])?,
                    GpuTensor::from_array(ctx, "targets", values.into_dyn())?,
                )
            }
        };
        // out = rows · Wᵀ + bias
        let mut rec = Recorder::new(ctx);
        rec.gemm(
            &self.kernels,
            x.buffer(),
            self.params.buffer(),
            Some(self.params.buffer()),
            out.buffer(),
            GemmParams {
                m: rows,
                n: outputs,
                k: ol.hidden,
                a_off: ol.row_offset,
                a_rs: ol.hidden,
                a_cs: 1,
                b_off: ol.w_offset,
                b_rs: 1,
                b_cs: ol.hidden,
                ldc: outputs,
                bias_off: ol.b_offset,
                ..GemmParams::default()
            },
        )?;
        rec.submit()?;
        run_pass(ctx, |pass| match targets {
            Targets::Classes(_) => record_softmax_cross_entropy(
                ctx,
                pass,
                &out,
                &target_tensor,
                &grad_out,
                &loss_values,
            ),
            Targets::Values(_) => {
                let count = rows * outputs;
                let params = MseParams {
                    count: check_u32("outputs", count)?,
                    inv_count: 1.0 / count as f32,
                    _pad: [0; 2],
                };
                dispatch(
                    ctx,
                    pass,
                    "mse_loss_grad",
                    &[
                        (20, out.buffer()),
                        (25, target_tensor.buffer()),
                        (26, loss_values.buffer()),
                        (27, grad_out.buffer()),
                    ],
                    21,
                    &params,
                    elementwise_groups(count),
                )
            }
        })?;
        Ok((loss_values, grad_out))
    }

    /// Output-layer backward: d weight = gᵀ · rows and d bias = Σ_rows g into the flat
    /// gradients, and d loss / d top-layer output into `grad_seq` (T, B, H, zero outside the
    /// read rows), from g = d loss / d outputs (N, O).
    fn head_backward(
        &self,
        x: &GpuTensor,
        ol: &OutputLayer,
        grad_out: &GpuTensor,
        grad_seq: &GpuTensor,
    ) -> Result<()> {
        let mut rec = Recorder::new(&self.ctx);
        rec.gemm(
            &self.kernels,
            grad_out.buffer(),
            x.buffer(),
            None,
            self.grads.buffer(),
            GemmParams {
                m: ol.outputs,
                n: ol.hidden,
                k: ol.rows,
                a_rs: 1,
                a_cs: ol.outputs,
                b_off: ol.row_offset,
                b_rs: ol.hidden,
                b_cs: 1,
                c_off: ol.w_offset,
                ldc: ol.hidden,
                ..GemmParams::default()
            },
        )?;
        rec.column_sum(
            &self.kernels,
            grad_out.buffer(),
            self.grads.buffer(),
            (ol.rows, ol.outputs),
            0,
            ol.b_offset,
        )?;
        rec.gemm(
            &self.kernels,
            grad_out.buffer(),
            self.params.buffer(),
            None,
            grad_seq.buffer(),
            GemmParams {
                m: ol.rows,
                n: ol.hidden,
                k: ol.outputs,
                a_rs: ol.outputs,
                a_cs: 1,
                b_off: ol.w_offset,
                b_rs: ol.hidden,
                b_cs: 1,
                c_off: ol.row_offset,
                ldc: ol.hidden,
                ..GemmParams::default()
            },
        )?;
        rec.submit()
    }

    /// Evaluation loss (no dropout, no update); reads back the loss.
    pub fn evaluate(&self, inputs: &Inputs<'_, f32>, targets: &Targets<'_, f32>) -> Result<f64> {
        let (t, b) = inputs.dims();
        let (x, _, _) = self.forward(inputs, Pass::Eval)?;
        let (losses, _) = self.head(&x, &self.output_layer(t, b), targets)?;
        mean_loss(&self.ctx, &losses)
    }

    /// One training step: forward, loss, backward, clipping, update.
    /// The loss stays on the GPU until [`GpuTrainer::take_losses`]; nothing is read back.
    pub fn step(
        &mut self,
        inputs: &Inputs<'_, f32>,
        targets: &Targets<'_, f32>,
        clip: Clip,
        dropout: Option<DropoutKey>,
    ) -> Result<()> {
        let ctx = Arc::clone(&self.ctx);
        let (t, b) = inputs.dims();
        let (x, tapes, tokens) = self.forward(inputs, Pass::Train(dropout))?;
        let ol = self.output_layer(t, b);
        let (loss_values, grad_out) = self.head(&x, &ol, targets)?;
        let grad_seq = GpuTensor::zeros(&ctx, "d RNN output", &[t, b, ol.hidden])?;
        self.head_backward(&x, &ol, &grad_out, &grad_seq)?;

        // Backward through the layers (dropout masks again on the upstream gradients).
        let drop = Dropout::new(self.model.config.dropout)?;
        let mut upstream = grad_seq;
        let mut layer_grads = Vec::with_capacity(self.layers.len());
        for k in (0..self.layers.len()).rev() {
            if let Some(key) = dropout {
                let stream = self.model.stream(key, k);
                run_pass(&ctx, |pass| {
                    record_dropout(&ctx, pass, &upstream, &drop, key.seed, stream)
                })?;
            }
            let g = self.layers[k].backward_gpu(&tapes[k], &GpuUpstreamGrads::new(&upstream))?;
            upstream = g.input;
            layer_grads.push(g.params);
        }
        layer_grads.reverse();
        if let (Some(tokens), Some(embedding)) = (&tokens, &self.model.embedding) {
            let (vocab, dim) = embedding.weight.dim();
            let params = EmbeddingParams {
                positions: check_u32("token positions", t * b)?,
                dim: check_u32("embedding width", dim)?,
                vocab: check_u32("vocabulary", vocab)?,
                offset: 0, // embedding.weight is the first tensor
            };
            run_pass(&ctx, |pass| {
                dispatch(
                    &ctx,
                    pass,
                    "embedding_backward",
                    &[
                        (28, tokens.buffer()),
                        (32, upstream.buffer()),
                        (33, self.grads.buffer()),
                    ],
                    31,
                    &params,
                    elementwise_groups(vocab * dim),
                )
            })?;
        }

        // The RNN gradients into the flat buffer, in SeqModel::tensors order.
        let sources = layer_grads.iter().flatten().flat_map(|g| {
            [
                Some(&g.w_ih),
                Some(&g.w_hh),
                g.b_ih.as_ref(),
                g.b_hh.as_ref(),
            ]
            .into_iter()
            .flatten()
        });
        let first = usize::from(self.model.embedding.is_some());
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("gradient copies"),
            });
        for (source, &offset) in sources.zip(&self.offsets[first..]) {
            encoder.copy_buffer_to_buffer(
                source.buffer(),
                0,
                self.grads.buffer(),
                (offset * 4) as u64,
                (source.len() * 4) as u64,
            );
        }
        ctx.queue().submit([encoder.finish()]);

        // Clipping and the update.
        let optimizer = &mut self.optimizer;
        let (params, grads, norm) = (&self.params, &self.grads, &self.norm);
        run_pass(&ctx, |pass| {
            match clip {
                Clip::None => {}
                Clip::Norm(max) => record_clip_grad_norm(&ctx, pass, grads, max as f32, norm)?,
                Clip::Value(v) => record_clip_grad_value(&ctx, pass, grads, v as f32)?,
            }
            optimizer.record_step(&ctx, pass, params, grads)
        })?;
        self.losses.push(loss_values);
        self.sync_rnn()
    }

    /// Copies the updated RNN weights from the flat parameter buffer into the layers' own
    /// buffers, on the GPU.
    fn sync_rnn(&mut self) -> Result<()> {
        let mut next = self.offsets[usize::from(self.model.embedding.is_some())];
        for gpu in &mut self.layers {
            next = gpu.copy_weights_from(&self.params, next)?;
        }
        Ok(())
    }

    fn unflatten(&mut self, flat: &[f32]) -> Result<()> {
        for (target, &offset) in self.model.tensors_mut().into_iter().zip(&self.offsets) {
            let source = flat.get(offset..offset + target.len()).ok_or_else(|| {
                RnnError::Device(format!(
                    "parameter readback holds {} values, expected more than {offset}",
                    flat.len()
                ))
            })?;
            target.copy_from_slice(source);
        }
        Ok(())
    }

    /// The loss of every step since the last call, read back at once.
    pub fn take_losses(&mut self) -> Result<Vec<f64>> {
        std::mem::take(&mut self.losses)
            .iter()
            .map(|losses| mean_loss(&self.ctx, losses))
            .collect()
    }

    /// The current parameters, read back into a [`SeqModel`].
    pub fn model(&mut self) -> Result<SeqModel<f32>> {
        let flat = self.params.to_vec(&self.ctx)?;
        self.unflatten(&flat)?;
        Ok(self.model.clone())
    }

    /// The optimizer state, read back (for
    /// [`save_checkpoint`](super::checkpoint::save_checkpoint)).
    pub fn optimizer(&self) -> Result<Optimizer<f32>> {
        self.optimizer.to_host(&self.ctx, &self.model.tensor_lens())
    }

    /// Completed optimizer steps.
    pub fn steps(&self) -> u64 {
        self.optimizer.step
    }
}

/// The mean of a loss tensor (read back); non-finite is an error.
fn mean_loss(ctx: &GpuContext, losses: &GpuTensor) -> Result<f64> {
    let values = losses.to_vec(ctx)?;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
    if !mean.is_finite() {
        return Err(RnnError::NonFinite {
            tensor: "GPU training loss".into(),
            index: 0,
        });
    }
    Ok(mean)
}
