//! A GPU-resident training step (adding problem, character LM): parameters, embedding,
//! gradients and optimizer state live in flat GPU buffers in [`SeqModel::tensors`] order; the
//! RNN layers read their weights and write their gradients as views of them.
//!
//! One step is one command buffer and one submit, with no buffer copy: the batch upload
//! (`queue.write_buffer` into pooled buffers that the next step of the same shape reuses), the
//! embedding, every layer's training forward, dropout, the output layer and the loss, the
//! backward pass, the gradient norm and clipping, the guard and the optimizer update. The guard
//! (optim.wgsl) lets the update through only when the step's loss and gradient norm are finite,
//! and logs (mean loss, outcome) per step on the GPU; the log is read back by
//! [`GpuTrainer::take_losses`], [`GpuTrainer::model`] and [`GpuTrainer::optimizer`], which
//! report a rejected step as an error. Non-finite features or targets are refused on the host
//! before anything is recorded.

use super::dropout::Dropout;
use super::gpu::{
    id_words, Embedded, FlatLayout, GpuOptimizer, NormScratch, StepCheck, StepCode, TrainKernels,
};
use super::layers::Readout;
use super::model::{DropoutKey, Inputs, SeqModel, Targets};
use super::optim::{Optimizer, OptimizerConfig};
use super::trainer::Clip;
use crate::error::{check_shape, Result, RnnError};
use crate::gpu::kernels::{CellKernels, Gemm};
use crate::gpu::model::{GpuForwardOutput, GpuRnn, GpuSequenceBatch, GpuTape, GpuUpstreamGrads};
use crate::gpu::recorder::Sink;
use crate::gpu::{GpuContext, GpuTensor, Recorded, Recorder};
use crate::gpu::{LayerGradIo, LayerWeights};
use std::sync::Arc;

/// Steps the GPU log holds before it is read back to make room.
const LOG_STEPS: usize = 256;

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

/// One batch on the GPU.
struct Batch {
    /// The layer-0 input (T, B, I): the features, or the embedding's output
    input: GpuTensor,
    /// (T, B) u32 token ids, for a model with an embedding
    tokens: Option<GpuTensor>,
    /// (N) u32 classes or (N, O) values
    targets: GpuTensor,
    /// Cross-entropy (true) or MSE
    classes: bool,
}

/// One command buffer that everything of a step records into, submitted once.
struct StepCommands {
    encoder: wgpu::CommandEncoder,
    /// What the recordings refer to, kept until the submit.
    recorded: Recorded,
    /// Inference forward outputs, which keep their own recordings' buffers.
    outputs: Vec<GpuForwardOutput>,
}

impl StepCommands {
    fn new(ctx: &GpuContext) -> Self {
        let encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("training step"),
            });
        StepCommands {
            encoder,
            recorded: Recorded::default(),
            outputs: Vec::new(),
        }
    }

    fn sink(&mut self) -> Sink<'_> {
        Sink::Encoder {
            encoder: &mut self.encoder,
            recorded: &mut self.recorded,
        }
    }

    /// Appends `rec`'s commands.
    fn record(&mut self, rec: Recorder<'_>) -> Result<()> {
        self.recorded.extend(rec.record_into(&mut self.encoder)?);
        Ok(())
    }

    /// Submits everything; what the recordings referred to is free for the next step.
    fn submit(self, ctx: &GpuContext) -> Result<()> {
        ctx.submit(self.encoder.finish());
        ctx.take_errors()
    }
}

/// The per-step log on the GPU and what has been read back from it.
#[derive(Debug)]
struct StepLog {
    /// (LOG_STEPS, 2) u32 per step: mean loss bits, [`StepCode`]
    tensor: GpuTensor,
    /// The step index (count of [`GpuTrainer::step`] calls before it) of each row in use
    rows: Vec<u64>,
    /// Read back and not yet taken: (step index, mean loss, outcome)
    read: Vec<(u64, f32, StepCode)>,
}

impl StepLog {
    fn new(ctx: &GpuContext) -> Result<Self> {
        Ok(StepLog {
            tensor: GpuTensor::zeros(ctx, "step log", &[LOG_STEPS, 2])?,
            rows: Vec::new(),
            read: Vec::new(),
        })
    }

    /// Reads the rows in use back (one readback) and frees them.
    fn drain(&mut self, ctx: &GpuContext) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let words = self.tensor.to_vec(ctx)?;
        for (&step, row) in self.rows.iter().zip(words.chunks_exact(2)) {
            let code = StepCode::from_word(row[1].to_bits());
            self.read.push((step, row[0], code));
        }
        self.rows.clear();
        Ok(())
    }

    /// The row for the next step (draining the log when it is full).
    fn next_row(&mut self, ctx: &GpuContext) -> Result<usize> {
        if self.rows.len() == LOG_STEPS {
            self.drain(ctx)?;
        }
        Ok(self.rows.len())
    }

    /// Reads the log back; an error naming the first step the guard rejected, if any (each
    /// rejected step is reported once).
    fn check(&mut self, ctx: &GpuContext, loss_name: &str) -> Result<()> {
        self.drain(ctx)?;
        let first = self.read.iter().find(|r| r.2 != StepCode::Applied).copied();
        self.read.retain(|r| r.2 == StepCode::Applied);
        match first {
            None => Ok(()),
            Some((step, _, code)) => {
                let tensor = match code {
                    StepCode::LossNotFinite => loss_name,
                    _ => "gradients",
                };
                Err(RnnError::NonFinite {
                    tensor: format!(
                        "{tensor} of GPU training step {step} (skipped: parameters and \
                         optimizer state unchanged)"
                    ),
                    index: 0,
                })
            }
        }
    }
}

/// A model in training on the GPU (f32).
#[derive(Debug)]
pub struct GpuTrainer {
    ctx: Arc<GpuContext>,
    model: SeqModel<f32>,
    /// The RNN layers, reading their weights as views of `params`.
    layers: Vec<GpuRnn>,
    /// gemm.wgsl and reduce.wgsl for the output layer and the loss sum
    kernels: Arc<CellKernels>,
    train: Arc<TrainKernels>,
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
    /// (1) Σ of the last step's (or evaluation's) loss values
    loss_sum: GpuTensor,
    log: StepLog,
    /// [`GpuTrainer::step`] calls so far.
    calls: u64,
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
        // The host copy in standard layout, whatever layout the caller's tensors are in.
        let mut host = model.clone();
        host.make_standard_layout();
        let model = &host;
        // Every tensor starts where a storage binding may: the layers bind views of it.
        let align = ctx.limits().min_storage_buffer_offset_alignment as usize / 4;
        let layout = FlatLayout::aligned(&model.tensor_lens(), align)?;
        let flat = layout.flatten(&model.tensors()?, 0.0)?;
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
            train: TrainKernels::new(&ctx)?,
            optimizer: GpuOptimizer::from_host(&ctx, optimizer, &layout)?,
            norm: NormScratch::new(&ctx, layout.len)?,
            loss_sum: GpuTensor::zeros(&ctx, "loss sum", &[1])?,
            log: StepLog::new(&ctx)?,
            ctx,
            model: host,
            layers,
            layer_grads,
            params,
            grads,
            layout,
            calls: 0,
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

    /// Checks the batch on the host (shapes, ids, finite values) and uploads it into pooled
    /// buffers; records the embedding of token ids into `cmd`.
    fn upload(
        &self,
        cmd: &mut StepCommands,
        inputs: &Inputs<'_, f32>,
        targets: &Targets<'_, f32>,
    ) -> Result<Batch> {
        let ctx = &*self.ctx;
        let (t, b) = inputs.dims();
        if t == 0 || b == 0 {
            return Err(RnnError::Config(format!(
                "empty input batch (T, B) = ({t}, {b})"
            )));
        }
        let (input, tokens) = match (inputs, &self.model.embedding) {
            (Inputs::Features(features), None) => {
                let input_size = self.model.config.layer_config(0).input_size;
                check_shape("inputs", &[t, b, input_size], features.shape())?;
                let values: Vec<f32> = features.iter().copied().collect();
                check_finite("inputs", &values)?;
                let input = GpuTensor::pooled(ctx, "inputs", &[t, b, input_size])?;
                input.write(ctx, &values)?;
                (input, None)
            }
            (Inputs::Tokens(ids), Some(embedding)) => {
                let (vocab, dim) = embedding.weight.dim();
                let ids: Vec<usize> = ids.iter().copied().collect();
                let tokens = GpuTensor::pooled(ctx, "token ids", &[t, b])?;
                tokens.write(ctx, &id_words(&ids, vocab, "token id")?)?;
                let input = GpuTensor::pooled(ctx, "embedded", &[t, b, dim])?;
                let mut rec = Recorder::new(ctx);
                // embedding.weight is the first tensor.
                let table = Embedded {
                    vocab,
                    dim,
                    offset: 0,
                };
                let train = &*self.train;
                train.record_embedding_forward(&mut rec, &tokens, &self.params, table, &input)?;
                cmd.record(rec)?;
                (input, Some(tokens))
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
        let (rows, outputs) = (
            self.model.config.readout.rows(t, b),
            self.model.config.outputs,
        );
        let (targets, classes) = match targets {
            Targets::Classes(classes) => {
                check_shape("targets", &[rows], &[classes.len()])?;
                let words = id_words(classes, outputs, "target")?;
                let tensor = GpuTensor::pooled(ctx, "targets", &[rows])?;
                tensor.write(ctx, &words)?;
                (tensor, true)
            }
            Targets::Values(values) => {
                check_shape("targets", &[rows, outputs], values.shape())?;
                let values: Vec<f32> = values.iter().copied().collect();
                check_finite("targets", &values)?;
                let tensor = GpuTensor::pooled(ctx, "targets", &[rows, outputs])?;
                tensor.write(ctx, &values)?;
                (tensor, false)
            }
        };
        Ok(Batch {
            input,
            tokens,
            targets,
            classes,
        })
    }

    /// Records every layer forward from `input` into `cmd`: for training with tapes (which
    /// refer to each layer's input) and, when the key is set, dropout on each layer's output.
    /// Returns the top layer's output (T, B, H) and the tapes (none for evaluation).
    fn record_forward(
        &self,
        cmd: &mut StepCommands,
        input: &GpuTensor,
        pass: Pass,
    ) -> Result<(GpuTensor, Vec<GpuTape>)> {
        let drop = Dropout::new(self.model.config.dropout)?;
        let mut tapes = Vec::with_capacity(self.layers.len());
        let mut x = input.clone();
        for (k, layer) in self.layers.iter().enumerate() {
            let out = match pass {
                Pass::Eval => {
                    let out = layer.record_forward(&mut cmd.encoder, &GpuSequenceBatch::new(&x))?;
                    let output = out.output.clone();
                    cmd.outputs.push(out);
                    output
                }
                Pass::Train(_) => {
                    let (out, tape) = layer.record_forward_train_into(&x, &mut cmd.sink())?;
                    tapes.push(tape);
                    out
                }
            };
            if let Pass::Train(Some(key)) = pass {
                let mut rec = Recorder::new(&self.ctx);
                let stream = self.model.stream(key, k);
                self.train
                    .record_dropout(&mut rec, &out, &drop, key.seed, stream)?;
                cmd.record(rec)?;
            }
            x = out;
        }
        Ok((x, tapes))
    }

    /// Records the output layer and the loss on the top layer's output `x` (T, B, H), and
    /// Σ loss values into `loss_sum`: returns the per-row (cross-entropy) or per-element (MSE)
    /// losses and d loss / d outputs (N, O).
    fn record_head<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        x: &GpuTensor,
        ol: &OutputLayer,
        batch: &Batch,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let ctx = &*self.ctx;
        let (rows, outputs) = (ol.rows, ol.outputs);
        let out = GpuTensor::pooled(ctx, "outputs", &[rows, outputs])?;
        let grad_out = GpuTensor::pooled(ctx, "d outputs", &[rows, outputs])?;
        // out = rows · Wᵀ + bias
        self.kernels.gemm(
            rec,
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
        let loss_values = if batch.classes {
            let loss_values = GpuTensor::pooled(ctx, "row losses", &[rows])?;
            let train = &*self.train;
            train.record_softmax_cross_entropy(
                rec,
                &out,
                &batch.targets,
                &grad_out,
                &loss_values,
            )?;
            loss_values
        } else {
            let loss_values = GpuTensor::pooled(ctx, "squared errors", &[rows, outputs])?;
            let train = &*self.train;
            train.record_mse(rec, &out, &batch.targets, &loss_values, &grad_out)?;
            loss_values
        };
        // Summed in order, as the CPU does.
        let count = (loss_values.len(), 1);
        self.kernels
            .column_sum(rec, &loss_values, &self.loss_sum, count, 0, 0)?;
        Ok((loss_values, grad_out))
    }

    /// Records the output-layer backward: d weight = gᵀ · rows and d bias = Σ_rows g into the
    /// flat gradients, and d loss / d top-layer output into `grad_seq` (T, B, H, zero outside
    /// the read rows), from g = d loss / d outputs (N, O).
    fn record_head_backward<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        x: &GpuTensor,
        ol: &OutputLayer,
        grad_out: &GpuTensor,
        grad_seq: &GpuTensor,
    ) -> Result<()> {
        self.kernels.gemm(
            rec,
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
            rec,
            grad_out,
            &self.grads,
            (ol.rows, ol.outputs),
            0,
            ol.b_offset,
        )?;
        if ol.rows * ol.hidden < grad_seq.len() {
            rec.clear(grad_seq)?;
        }
        self.kernels.gemm(
            rec,
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
        )
    }

    /// Evaluation loss (no dropout, no update): one submit, the loss sum read back.
    pub fn evaluate(&self, inputs: &Inputs<'_, f32>, targets: &Targets<'_, f32>) -> Result<f64> {
        let ctx = &*self.ctx;
        let (t, b) = inputs.dims();
        let mut cmd = StepCommands::new(ctx);
        let batch = self.upload(&mut cmd, inputs, targets)?;
        let (top, _) = self.record_forward(&mut cmd, &batch.input, Pass::Eval)?;
        let mut rec = Recorder::new(ctx);
        let (losses, _) = self.record_head(&mut rec, &top, &self.output_layer(t, b), &batch)?;
        cmd.record(rec)?;
        cmd.submit(ctx)?;
        let mean = f64::from(self.loss_sum.to_vec(ctx)?[0]) / losses.len() as f64;
        if !mean.is_finite() {
            return Err(RnnError::NonFinite {
                tensor: "GPU evaluation loss".into(),
                index: 0,
            });
        }
        Ok(mean)
    }

    /// One training step: forward, loss, backward, clipping, update, in one submit. Nothing
    /// is read back: the loss stays on the GPU until [`GpuTrainer::take_losses`], and a step
    /// whose loss or gradient norm is not finite changes nothing and is reported there (or by
    /// [`GpuTrainer::model`], [`GpuTrainer::optimizer`]). A batch with a non-finite feature
    /// or target is an error at once, as on the CPU.
    pub fn step(
        &mut self,
        inputs: &Inputs<'_, f32>,
        targets: &Targets<'_, f32>,
        clip: Clip,
        dropout: Option<DropoutKey>,
    ) -> Result<()> {
        let call = self.calls;
        self.calls += 1;
        let ctx = Arc::clone(&self.ctx);
        let slot = self.log.next_row(&ctx)?;
        let (t, b) = inputs.dims();
        let mut cmd = StepCommands::new(&ctx);
        let batch = self.upload(&mut cmd, inputs, targets)?;
        let (top, tapes) = self.record_forward(&mut cmd, &batch.input, Pass::Train(dropout))?;
        let ol = self.output_layer(t, b);
        let mut rec = Recorder::new(&ctx);
        let (losses, grad_out) = self.record_head(&mut rec, &top, &ol, &batch)?;
        let grad_seq = GpuTensor::pooled(&ctx, "d RNN output", &[t, b, ol.hidden])?;
        self.record_head_backward(&mut rec, &top, &ol, &grad_out, &grad_seq)?;
        cmd.record(rec)?;

        // Backward through the layers (dropout masks again on the upstream gradients).
        let drop = Dropout::new(self.model.config.dropout)?;
        let mut upstream = grad_seq;
        for k in (0..self.layers.len()).rev() {
            if let Some(key) = dropout {
                let mut rec = Recorder::new(&ctx);
                let stream = self.model.stream(key, k);
                self.train
                    .record_dropout(&mut rec, &upstream, &drop, key.seed, stream)?;
                cmd.record(rec)?;
            }
            let params = self.layer_grads[k]
                .iter()
                .map(|g| LayerGradIo {
                    w_ih: &g.w_ih,
                    w_hh: &g.w_hh,
                    bias: g.bias.as_ref().map(|(i, h)| (i, h)),
                })
                .collect();
            let grads = GpuUpstreamGrads::new(&upstream);
            upstream = self.layers[k].backward_into(&tapes[k], &grads, params, &mut cmd.sink())?;
        }

        // Embedding gradient, norm and clipping, guard, update.
        let train = &*self.train;
        let mut rec = Recorder::new(&ctx);
        if let (Some(tokens), Some(embedding)) = (&batch.tokens, &self.model.embedding) {
            let (vocab, dim) = embedding.weight.dim();
            let table = Embedded {
                vocab,
                dim,
                offset: 0,
            };
            train.record_embedding_backward(&mut rec, tokens, &upstream, table, &self.grads)?;
        }
        let (grads, norm) = (&self.grads, &self.norm);
        match clip {
            Clip::None => train.record_grad_norm(&mut rec, grads, f32::MAX, norm)?,
            Clip::Norm(max) => train.record_clip_grad_norm(&mut rec, grads, max as f32, norm)?,
            Clip::Value(v) => {
                // The norm after clamping: clamped infinities are finite, as on the CPU.
                train.record_clip_grad_value(&mut rec, grads, v as f32)?;
                train.record_grad_norm(&mut rec, grads, f32::MAX, norm)?;
            }
        }
        let check = StepCheck {
            norm,
            loss_sum: &self.loss_sum,
            loss_count: losses.len(),
            log: &self.log.tensor,
            slot,
        };
        train.record_guard(&mut rec, &check, &self.optimizer)?;
        self.optimizer
            .record_step(&mut rec, train, &self.params, &self.grads)?;
        cmd.record(rec)?;
        cmd.submit(&ctx)?;
        self.log.rows.push(call);
        Ok(())
    }

    fn unflatten(&mut self, flat: &[f32]) -> Result<()> {
        for (i, target) in self.model.tensors_mut().into_iter().enumerate() {
            target.copy_from_slice(self.layout.tensor(flat, i)?);
        }
        Ok(())
    }

    /// The name of the loss in errors, as the CPU names it.
    fn loss_name(&self) -> &'static str {
        if self.model.embedding.is_some() {
            "cross-entropy loss"
        } else {
            "mse loss"
        }
    }

    /// The mean loss of every step since the last call, read back at once; an error naming
    /// the first step since the last readback that was skipped for a non-finite loss or
    /// gradient (the losses of the others are kept for the next call).
    pub fn take_losses(&mut self) -> Result<Vec<f64>> {
        self.log.check(&self.ctx, self.loss_name())?;
        Ok(std::mem::take(&mut self.log.read)
            .into_iter()
            .map(|(_, loss, _)| f64::from(loss))
            .collect())
    }

    /// The current parameters, read back into a [`SeqModel`]; an error first if a step since
    /// the last readback was skipped (as [`GpuTrainer::take_losses`]).
    pub fn model(&mut self) -> Result<SeqModel<f32>> {
        self.log.check(&self.ctx, self.loss_name())?;
        let flat = self.params.to_vec(&self.ctx)?;
        self.unflatten(&flat)?;
        Ok(self.model.clone())
    }

    /// The optimizer state, read back (for
    /// [`save_checkpoint`](super::checkpoint::save_checkpoint)); an error first if a step
    /// since the last readback was skipped (as [`GpuTrainer::take_losses`]).
    pub fn optimizer(&mut self) -> Result<Optimizer<f32>> {
        self.log.check(&self.ctx, self.loss_name())?;
        self.optimizer.to_host(&self.ctx)
    }

    /// Optimizer steps applied (read back): skipped steps do not count.
    pub fn steps(&self) -> Result<u64> {
        self.optimizer.steps(&self.ctx)
    }
}

/// An error naming `tensor` and the index of its first non-finite value, if any.
fn check_finite(tensor: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(RnnError::NonFinite {
            tensor: tensor.into(),
            index,
        }),
        None => Ok(()),
    }
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
