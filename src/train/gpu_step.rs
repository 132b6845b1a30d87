//! A GPU-resident training step (adding problem, character LM): parameters, embedding,
//! gradients and optimizer state live in flat GPU buffers in [`SeqModel::tensors`] order. One
//! step uploads the batch, runs every RNN layer's training forward, dropout, the output layer
//! and the loss, the backward pass, clipping and the optimizer update on the GPU. The losses
//! stay on the GPU until [`GpuTrainer::take_losses`] reads them; the updated RNN weights reach
//! the layers by a GPU-to-GPU copy ([`GpuRnn::copy_weights_from`]). Nothing else leaves the GPU.

use super::dropout::Dropout;
use super::gpu::{
    check_u32, dispatch, elementwise_groups, record_clip_grad_norm, record_clip_grad_value,
    record_dropout, record_softmax_cross_entropy, run_pass, upload_targets, FlatLayout,
    GpuOptimizer, NormScratch,
};
use super::layers::Readout;
use super::model::{DropoutKey, Inputs, SeqModel, Targets};
use super::optim::{Optimizer, OptimizerConfig};
use super::trainer::Clip;
use crate::error::{check_shape, Result, RnnError};
use crate::gpu::kernels::{CellKernels, Gemm};
use crate::gpu::model::{GpuRnn, GpuSequenceBatch, GpuTape, GpuUpstreamGrads};
use crate::gpu::Recorder;
use crate::gpu::{GpuContext, GpuTensor};
use crate::gpu::{LayerGradIo, LayerWeights};
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
    /// The RNN layers, reading their weights as views of `params`.
    layers: Vec<GpuRnn>,
    /// gemm.wgsl and reduce.wgsl for the output layer
    kernels: Arc<CellKernels>,
    /// (P) every parameter, in [`SeqModel::tensors`] order
    params: GpuTensor,
    /// (P) d loss / d params of the last step
    grads: GpuTensor,
    /// Where each tensor of [`SeqModel::tensors`] lies in `params` and `grads`.
    layout: FlatLayout,
    /// Per RNN layer, per direction: views of its gradients in `grads`.
    layer_grads: Vec<Vec<GradViews>>,
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
        // Every tensor starts where a storage binding may: the layers bind views of it.
        let align = ctx.limits().min_storage_buffer_offset_alignment as usize / 4;
        let layout = FlatLayout::aligned(&model.tensor_lens(), align)?;
        let flat = layout.flatten(&model.tensors(), 0.0)?;
        let params = GpuTensor::from_slice(&ctx, "parameters", &[flat.len()], &flat)?;
        // NaN until written (zero between tensors): an element the step missed would show up
        // in the parameters.
        let nan: Vec<Vec<f32>> = layout.lens.iter().map(|&n| vec![f32::NAN; n]).collect();
        let nan: Vec<&[f32]> = nan.iter().map(Vec::as_slice).collect();
        let grads = GpuTensor::from_slice(
            &ctx,
            "gradients",
            &[layout.len],
            &layout.flatten(&nan, 0.0)?,
        )?;
        let first_rnn = usize::from(model.embedding.is_some());
        let (layers, layer_grads) = rnn_views(&ctx, model, &layout, first_rnn, &params, &grads)?;
        Ok(GpuTrainer {
            kernels: CellKernels::new(&ctx, model.config.cell)?,
            optimizer: GpuOptimizer::from_host(&ctx, optimizer, &layout)?,
            norm: NormScratch::new(&ctx, layout.len)?,
            ctx,
            model: model.clone(),
            layers,
            layer_grads,
            params,
            grads,
            layout,
            losses: Vec::new(),
        })
    }

    /// Offset of `linear.weight` and `linear.bias` in the flat buffers.
    fn linear_offsets(&self) -> (usize, usize) {
        let n = self.layout.offsets.len();
        (self.layout.offsets[n - 2], self.layout.offsets[n - 1])
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
        self.kernels.gemm(
            &mut rec,
            x,
            &self.params,
            Some(&self.params),
            &out,
            Gemm {
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
                ..Gemm::default()
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
        self.kernels.gemm(
            &mut rec,
            grad_out,
            x,
            None,
            &self.grads,
            Gemm {
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
                ..Gemm::default()
            },
        )?;
        self.kernels.column_sum(
            &mut rec,
            grad_out,
            &self.grads,
            (ol.rows, ol.outputs),
            0,
            ol.b_offset,
        )?;
        self.kernels.gemm(
            &mut rec,
            grad_out,
            &self.params,
            None,
            grad_seq,
            Gemm {
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
                ..Gemm::default()
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
        for k in (0..self.layers.len()).rev() {
            if let Some(key) = dropout {
                let stream = self.model.stream(key, k);
                run_pass(&ctx, |pass| {
                    record_dropout(&ctx, pass, &upstream, &drop, key.seed, stream)
                })?;
            }
            let params = self.layer_grads[k]
                .iter()
                .map(|g| LayerGradIo {
                    w_ih: &g.w_ih,
                    w_hh: &g.w_hh,
                    bias: g.bias.as_ref().map(|(i, h)| (i, h)),
                })
                .collect();
            upstream = self.layers[k].backward_into(
                &tapes[k],
                &GpuUpstreamGrads::new(&upstream),
                params,
            )?;
        }
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
        Ok(())
    }

    fn unflatten(&mut self, flat: &[f32]) -> Result<()> {
        for (i, target) in self.model.tensors_mut().into_iter().enumerate() {
            target.copy_from_slice(self.layout.tensor(flat, i)?);
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
        self.optimizer.to_host(&self.ctx)
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

/// Views of one layer·direction's gradients in the flat gradient buffer.
#[derive(Debug)]
pub(crate) struct GradViews {
    pub w_ih: GpuTensor,
    pub w_hh: GpuTensor,
    pub bias: Option<(GpuTensor, GpuTensor)>,
}

/// The RNN layers of `model` over views of its tensors in `params` (tensor `first` of `layout`
/// onwards, in [`SeqModel::tensors`] order), and views of their gradients in `grads`.
fn rnn_views(
    ctx: &Arc<GpuContext>,
    model: &SeqModel<f32>,
    layout: &FlatLayout,
    first: usize,
    params: &GpuTensor,
    grads: &GpuTensor,
) -> Result<(Vec<GpuRnn>, Vec<Vec<GradViews>>)> {
    let mut next = first;
    let view = |flat: &GpuTensor, shape: &[usize], label: &str, i: usize| {
        flat.view(ctx, layout.offsets[i], shape)
            .map(|v| v.with_label(label))
    };
    let mut layers = Vec::with_capacity(model.rnn.len());
    let mut layer_grads = Vec::with_capacity(model.rnn.len());
    for rnn in &model.rnn {
        let config = &rnn.config;
        let rows = config.gate_rows();
        let mut weights = Vec::new();
        let mut grad_views = Vec::new();
        for (ld, p) in rnn.layers.iter().enumerate() {
            let in_features = config.layer_input_size(ld / config.num_directions());
            let w_shape = [rows, in_features];
            let h_shape = [rows, config.hidden_size];
            let (w_ih_i, w_hh_i) = (next, next + 1);
            next += 2;
            let bias = if p.b_ih.is_some() {
                next += 2;
                Some((next - 2, next - 1))
            } else {
                None
            };
            let zero_bias = || GpuTensor::zeros(ctx, "no bias", &[rows]);
            let (b_ih, b_hh) = match bias {
                Some((i, h)) => (
                    view(params, &[rows], "b_ih", i)?,
                    view(params, &[rows], "b_hh", h)?,
                ),
                None => (zero_bias()?, zero_bias()?),
            };
            weights.push(LayerWeights {
                w_ih: view(params, &w_shape, "w_ih", w_ih_i)?,
                w_hh: view(params, &h_shape, "w_hh", w_hh_i)?,
                b_ih,
                b_hh,
                w_hh_half: None,
            });
            grad_views.push(GradViews {
                w_ih: view(grads, &w_shape, "grad w_ih", w_ih_i)?,
                w_hh: view(grads, &h_shape, "grad w_hh", w_hh_i)?,
                bias: bias
                    .map(|(i, h)| {
                        Ok::<_, RnnError>((
                            view(grads, &[rows], "grad b_ih", i)?,
                            view(grads, &[rows], "grad b_hh", h)?,
                        ))
                    })
                    .transpose()?,
            });
        }
        layers.push(GpuRnn::from_weights(
            Arc::clone(ctx),
            config.clone(),
            weights,
        )?);
        layer_grads.push(grad_views);
    }
    Ok((layers, layer_grads))
}
