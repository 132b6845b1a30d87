//! The training kernels on [`GpuTensor`]s (f32), one shader file per family: fused softmax
//! cross-entropy (`cross_entropy.wgsl`), MSE (`mse.wgsl`), dropout masks bitwise equal to
//! [`Dropout`] (`dropout.wgsl`), global-norm clipping in two deterministic passes and value
//! clipping (`clip.wgsl`), SGD / SGD-momentum / Adam over one flat parameter buffer behind a
//! finite-step guard (`optim.wgsl`), and the embedding (`embedding.wgsl`). Every operation is
//! recorded into a caller's [`Recorder`] (`record_*`), so that a training step is one submit.

use std::sync::Arc;

use super::dropout::Dropout;
use super::optim::{AdamConfig, Optimizer, OptimizerConfig};
use crate::error::{check_shape, Result, RnnError};
use crate::gpu::params::{
    CeParams, ClipParams, DropoutParams, EmbeddingParams, MseParams, OptimParams,
};
use crate::gpu::{Access, GpuContext, GpuTensor, Kernel, PipelineKey, Recorder};
use crate::params;

/// Invocations per workgroup of every training kernel but the one-invocation ones (`WG`).
const WORKGROUP: usize = 256;
/// Elements reduced by one workgroup of the first norm pass (`CHUNK` in clip.wgsl).
const NORM_CHUNK: usize = 1024;

/// Every training kernel, from the context's pipeline cache.
#[derive(Debug)]
pub struct TrainKernels {
    softmax_ce: Kernel,
    mse: Kernel,
    dropout: Kernel,
    sumsq_partial: Kernel,
    norm_finalize: Kernel,
    scale_by_coefficient: Kernel,
    clip_value: Kernel,
    guard: Kernel,
    begin_step: Kernel,
    sgd: Kernel,
    sgd_momentum: Kernel,
    adam: Kernel,
    embedding_forward: Kernel,
    embedding_backward: Kernel,
}

impl TrainKernels {
    pub fn new(ctx: &GpuContext) -> Result<Arc<Self>> {
        use Access::{Read, ReadWrite};
        let kernel = |source: &'static str, entry: &'static str, storage: &[Access]| {
            let key = PipelineKey {
                label: entry,
                source,
                entry,
                constants: Vec::new(),
            };
            Kernel::new(ctx, key, storage, WORKGROUP)
        };
        let single = |entry: &'static str, storage: &[Access]| {
            let key = PipelineKey {
                label: entry,
                source: OPTIM,
                entry,
                constants: Vec::new(),
            };
            Kernel::new(ctx, key, storage, 1)
        };
        const CE: &str = concat!(
            include_str!("../../shaders/cross_entropy.wgsl"),
            include_str!("../../shaders/workgroup_reduce.wgsl")
        );
        const MSE: &str = include_str!("../../shaders/mse.wgsl");
        const DROPOUT: &str = include_str!("../../shaders/dropout.wgsl");
        const CLIP: &str = concat!(
            include_str!("../../shaders/clip.wgsl"),
            include_str!("../../shaders/workgroup_reduce.wgsl")
        );
        const OPTIM: &str = include_str!("../../shaders/optim.wgsl");
        const EMBEDDING: &str = include_str!("../../shaders/embedding.wgsl");
        Ok(Arc::new(TrainKernels {
            softmax_ce: kernel(CE, "softmax_ce", &[Read, Read, ReadWrite, ReadWrite])?,
            mse: kernel(MSE, "mse_loss_grad", &[Read, Read, ReadWrite, ReadWrite])?,
            dropout: kernel(DROPOUT, "dropout_apply", &[ReadWrite])?,
            sumsq_partial: kernel(CLIP, "sumsq_partial", &[Read, ReadWrite])?,
            norm_finalize: kernel(CLIP, "norm_finalize", &[Read, ReadWrite])?,
            scale_by_coefficient: kernel(CLIP, "scale_by_coefficient", &[Read, ReadWrite])?,
            clip_value: kernel(CLIP, "clip_value", &[ReadWrite])?,
            guard: single("guard", &[Read, Read, ReadWrite, ReadWrite])?,
            begin_step: single("begin_step", &[ReadWrite])?,
            sgd: kernel(OPTIM, "sgd_update", &[Read, ReadWrite, Read])?,
            sgd_momentum: kernel(
                OPTIM,
                "sgd_momentum_update",
                &[Read, ReadWrite, Read, ReadWrite],
            )?,
            adam: kernel(
                OPTIM,
                "adam_update",
                &[Read, ReadWrite, Read, ReadWrite, ReadWrite, Read],
            )?,
            embedding_forward: kernel(EMBEDDING, "embedding_forward", &[Read, Read, ReadWrite])?,
            embedding_backward: kernel(EMBEDDING, "embedding_backward", &[Read, Read, ReadWrite])?,
        }))
    }

    /// Softmax cross-entropy of `logits` (N, V) against `targets` (N, from [`upload_targets`]):
    /// writes `row_loss` (N) = `−log softmax(z_n)[target_n]` and `grad` (N, V) = d mean / d
    /// logits.
    pub fn record_softmax_cross_entropy<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        logits: &GpuTensor,
        targets: &GpuTensor,
        grad: &GpuTensor,
        row_loss: &GpuTensor,
    ) -> Result<()> {
        let &[rows, classes] = logits.shape() else {
            return Err(RnnError::Config(format!(
                "logits must be (N, V), got {:?}",
                logits.shape()
            )));
        };
        if rows == 0 || classes == 0 {
            return Err(RnnError::Config(format!(
                "empty logits {:?}",
                logits.shape()
            )));
        }
        check_shape("targets", &[rows], targets.shape())?;
        check_shape("grad_logits", &[rows, classes], grad.shape())?;
        check_shape("row_loss", &[rows], row_loss.shape())?;
        let p = params!(CeParams {
            rows: rows,
            classes: classes,
            inv_rows: 1.0 / rows as f32,
        })?;
        // One workgroup per row.
        let storage = [logits, targets, grad, row_loss];
        rec.dispatch_1d(&self.softmax_ce, &storage, &p, rows * WORKGROUP)
    }

    /// Mean squared error of `outputs` against `targets` (both (N, O)): writes the squared
    /// errors `sq` and `grad` = d mean / d outputs, both (N, O).
    pub fn record_mse<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        outputs: &GpuTensor,
        targets: &GpuTensor,
        sq: &GpuTensor,
        grad: &GpuTensor,
    ) -> Result<()> {
        let count = outputs.len();
        if count == 0 {
            return Err(RnnError::Config(
                "mean squared error of an empty tensor".into(),
            ));
        }
        for (what, t) in [("targets", targets), ("squared errors", sq), ("grad", grad)] {
            check_shape(what, outputs.shape(), t.shape())?;
        }
        let p = params!(MseParams {
            count: count,
            inv_count: 1.0 / count as f32,
        })?;
        rec.dispatch_1d(&self.mse, &[outputs, targets, sq, grad], &p, count)
    }

    /// Multiplies `x` in place by the dropout mask of (`seed`, `stream`), bitwise as
    /// [`Dropout::apply`] does. Nothing is recorded when p = 0.
    pub fn record_dropout<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        x: &GpuTensor,
        dropout: &Dropout,
        seed: u32,
        stream: u32,
    ) -> Result<()> {
        if dropout.p() == 0.0 || x.is_empty() {
            return Ok(());
        }
        let p = params!(DropoutParams {
            len: x.len(),
            seed: seed,
            stream: stream,
            threshold: dropout.threshold(),
            scale: dropout.scale::<f32>(),
        })?;
        rec.dispatch_1d(&self.dropout, &[x], &p, x.len())
    }

    /// The global L2 norm of `grads` into `scratch.result[0]` (per-workgroup partial sums, then
    /// one final reduction; deterministic), and min(1, `limit` / (norm + 1e-6)) into
    /// `scratch.result[1]`.
    pub(crate) fn record_grad_norm<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        grads: &GpuTensor,
        limit: f32,
        scratch: &NormScratch,
    ) -> Result<()> {
        let partials = grads.len().div_ceil(NORM_CHUNK).max(1);
        check_shape("norm partials", &[partials], scratch.partials.shape())?;
        check_shape("norm result", &[2], scratch.result.shape())?;
        let p = params!(ClipParams {
            len: grads.len(),
            partials: partials,
            limit: limit,
        })?;
        let storage = [grads, &scratch.partials];
        rec.dispatch_1d(&self.sumsq_partial, &storage, &p, partials * WORKGROUP)?;
        let storage = [&scratch.partials, &scratch.result];
        rec.dispatch_1d(&self.norm_finalize, &storage, &p, 1)
    }

    /// Global-norm clipping of the flat gradient buffer `grads` (torch's `clip_grad_norm_`):
    /// the norm as `TrainKernels::record_grad_norm`, then a scale by the coefficient.
    /// `scratch.result` holds (norm, coefficient).
    pub fn record_clip_grad_norm<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        grads: &GpuTensor,
        max_norm: f32,
        scratch: &NormScratch,
    ) -> Result<()> {
        if max_norm.is_nan() || max_norm <= 0.0 {
            return Err(RnnError::Config(format!(
                "max_norm must be positive, got {max_norm}"
            )));
        }
        self.record_grad_norm(rec, grads, max_norm, scratch)?;
        if grads.is_empty() {
            return Ok(());
        }
        let p = params!(ClipParams {
            len: grads.len(),
            limit: max_norm,
        })?;
        let storage = [&scratch.result, grads];
        rec.dispatch_1d(&self.scale_by_coefficient, &storage, &p, grads.len())
    }

    /// Clamps every element of `grads` to [−clip, clip].
    pub fn record_clip_grad_value<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        grads: &GpuTensor,
        clip: f32,
    ) -> Result<()> {
        if clip.is_nan() || clip <= 0.0 {
            return Err(RnnError::Config(format!(
                "clip value must be positive, got {clip}"
            )));
        }
        if grads.is_empty() {
            return Ok(());
        }
        let p = params!(ClipParams {
            len: grads.len(),
            limit: clip,
        })?;
        rec.dispatch_1d(&self.clip_value, &[grads], &p, grads.len())
    }

    /// Records the guard of a training step: the next [`GpuOptimizer::record_step`] of
    /// `optimizer` updates only if the mean loss (`loss_sum[0]` / `loss_count`) and the
    /// gradient norm (`norm.result[0]`, from [`TrainKernels::record_grad_norm`]) are finite.
    /// Writes (mean loss, [`StepCode`]) into row `slot` of `log` (steps, 2).
    pub(crate) fn record_guard<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        step: &StepCheck<'_>,
        optimizer: &GpuOptimizer,
    ) -> Result<()> {
        check_shape("loss sum", &[1], step.loss_sum.shape())?;
        let rows = step.log.shape().first().copied().unwrap_or(0);
        check_shape("step log", &[rows, 2], step.log.shape())?;
        if step.slot >= rows {
            return Err(RnnError::Config(format!(
                "step log slot {} of {rows}",
                step.slot
            )));
        }
        let p = params!(OptimParams {
            loss_scale: 1.0 / step.loss_count as f32,
            log_slot: step.slot,
        })?;
        let storage = [
            &step.norm.result,
            step.loss_sum,
            &optimizer.status,
            step.log,
        ];
        rec.dispatch_1d(&self.guard, &storage, &p, 1)
    }

    /// Records one embedding lookup: `out` (T, B, D) = rows `tokens` (T, B) of the (V, D)
    /// table at element `offset` of `params`.
    pub(crate) fn record_embedding_forward<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        tokens: &GpuTensor,
        params: &GpuTensor,
        table: Embedded,
        out: &GpuTensor,
    ) -> Result<()> {
        let p = table.params(tokens, params)?;
        check_shape("embedded", &[tokens.len() * table.dim], &[out.len()])?;
        let storage = [tokens, params, out];
        rec.dispatch_1d(&self.embedding_forward, &storage, &p, out.len())
    }

    /// Records the embedding gradient: the (V, D) table at element `offset` of `grads` from
    /// `grad_out` (T, B, D) and `tokens` (T, B).
    pub(crate) fn record_embedding_backward<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        tokens: &GpuTensor,
        grad_out: &GpuTensor,
        table: Embedded,
        grads: &GpuTensor,
    ) -> Result<()> {
        let p = table.params(tokens, grads)?;
        check_shape(
            "embedding output gradient",
            &[tokens.len() * table.dim],
            &[grad_out.len()],
        )?;
        let storage = [tokens, grad_out, grads];
        rec.dispatch_1d(
            &self.embedding_backward,
            &storage,
            &p,
            table.vocab * table.dim,
        )
    }
}

/// An embedding table (V, D) at element `offset` of a flat buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Embedded {
    pub vocab: usize,
    pub dim: usize,
    pub offset: usize,
}

impl Embedded {
    /// The kernel parameters over `tokens`, checking that the table lies inside `flat`.
    fn params(&self, tokens: &GpuTensor, flat: &GpuTensor) -> Result<EmbeddingParams> {
        let end = self.vocab * self.dim + self.offset;
        if end > flat.len() {
            return Err(RnnError::Config(format!(
                "embedding table ({}, {}) at {} runs past the {} values of `{}`",
                self.vocab,
                self.dim,
                self.offset,
                flat.len(),
                flat.label()
            )));
        }
        params!(EmbeddingParams {
            positions: tokens.len(),
            dim: self.dim,
            vocab: self.vocab,
            offset: self.offset,
        })
    }
}

/// Ids below `bound` as u32 bit patterns, for a (N) id tensor; `what` names them in errors.
pub(crate) fn id_words(ids: &[usize], bound: usize, what: &str) -> Result<Vec<f32>> {
    ids.iter()
        .enumerate()
        .map(|(row, &id)| {
            if id >= bound {
                Err(RnnError::Config(format!(
                    "{what} {id} of row {row} is outside the {bound} classes"
                )))
            } else {
                Ok(f32::from_bits(id as u32))
            }
        })
        .collect()
}

/// Class targets for [`TrainKernels::record_softmax_cross_entropy`]: a (N) tensor of u32 ids
/// (bit patterns stored in a [`GpuTensor`]). Every id must be below `classes`.
pub fn upload_targets(ctx: &GpuContext, targets: &[usize], classes: usize) -> Result<GpuTensor> {
    let words = id_words(targets, classes, "target")?;
    let tensor = GpuTensor::pooled(ctx, "targets", &[targets.len()])?;
    tensor.write(ctx, &words)?;
    Ok(tensor)
}

/// Scratch space of the norm kernels for gradients of `len` elements.
#[derive(Debug)]
pub struct NormScratch {
    /// (⌈len / 1024⌉) partial sums of squares
    pub partials: GpuTensor,
    /// (2): the norm before clipping and the applied coefficient
    pub result: GpuTensor,
}

impl NormScratch {
    pub fn new(ctx: &GpuContext, len: usize) -> Result<Self> {
        Ok(NormScratch {
            partials: GpuTensor::zeros(ctx, "norm partials", &[len.div_ceil(NORM_CHUNK).max(1)])?,
            result: GpuTensor::zeros(ctx, "norm result", &[2])?,
        })
    }
}

/// What the guard of one training step reads and where it logs the step.
pub(crate) struct StepCheck<'a> {
    /// The gradient norm (its `result[0]`)
    pub norm: &'a NormScratch,
    /// (1): Σ of the step's loss values
    pub loss_sum: &'a GpuTensor,
    /// Number of loss values (the mean divides by it)
    pub loss_count: usize,
    /// (steps, 2) u32: mean loss bits, [`StepCode`]
    pub log: &'a GpuTensor,
    pub slot: usize,
}

/// Why a training step changed nothing (optim.wgsl's log codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepCode {
    Applied,
    LossNotFinite,
    GradientsNotFinite,
}

impl StepCode {
    pub fn from_word(word: u32) -> Self {
        match word {
            0 => StepCode::Applied,
            1 => StepCode::LossNotFinite,
            _ => StepCode::GradientsNotFinite,
        }
    }
}

/// Where each tensor of a model lies in one flat buffer (parameters, gradients, optimizer
/// state): tensor i at `offsets[i]`, `lens[i]` values long, `len` values in all. Offsets may be
/// padded (with zeros) so that every tensor can be bound as a view of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatLayout {
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    pub len: usize,
}

impl FlatLayout {
    /// Tensors of `lens` values back to back, each starting at a multiple of `align` values.
    pub fn aligned(lens: &[usize], align: usize) -> Result<Self> {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut len = 0usize;
        for &n in lens {
            let offset = len.next_multiple_of(align.max(1));
            offsets.push(offset);
            len = offset
                .checked_add(n)
                .ok_or_else(|| RnnError::TooLarge(format!("{} parameters", lens.len())))?;
        }
        if u32::try_from(len).is_err() {
            return Err(RnnError::TooLarge(format!(
                "parameters: {len} elements exceed u32"
            )));
        }
        Ok(FlatLayout {
            offsets,
            lens: lens.to_vec(),
            len,
        })
    }

    /// The tensors laid out in one vector, `padding` between them.
    pub fn flatten(&self, tensors: &[&[f32]], padding: f32) -> Result<Vec<f32>> {
        check_shape(
            "flattened tensors",
            &self.lens,
            &tensors.iter().map(|t| t.len()).collect::<Vec<_>>(),
        )?;
        let mut flat = vec![padding; self.len];
        for (t, &offset) in tensors.iter().zip(&self.offsets) {
            flat[offset..offset + t.len()].copy_from_slice(t);
        }
        Ok(flat)
    }

    /// Tensor `i` of `flat`.
    pub fn tensor<'a>(&self, flat: &'a [f32], i: usize) -> Result<&'a [f32]> {
        let (offset, len) = (self.offsets[i], self.lens[i]);
        flat.get(offset..offset + len).ok_or_else(|| {
            RnnError::Device(format!(
                "flat buffer holds {} values, tensor {i} needs {}..{}",
                flat.len(),
                offset,
                offset + len
            ))
        })
    }
}

/// Adam's bias corrections (step_size, √(1 − β2ᵗ)) for steps 1..=entries, computed in f64 as
/// the CPU does, on the GPU. A step past the table uses its last entry, which is exact once
/// the f32 values have reached their limits (`complete`); until then the table grows ahead of
/// the steps recorded.
#[derive(Debug)]
struct BiasCorrections {
    config: AdamConfig,
    /// (entries, 2)
    table: GpuTensor,
    complete: bool,
}

/// Entries of the first bias-correction table.
const FIRST_CORRECTIONS: usize = 1024;

impl BiasCorrections {
    /// A table covering at least steps 1..=`steps`.
    fn new(ctx: &GpuContext, config: AdamConfig, steps: u64) -> Result<Self> {
        let entries = usize::try_from(steps)
            .ok()
            .and_then(|s| s.checked_next_power_of_two())
            .ok_or_else(|| RnnError::TooLarge(format!("{steps} optimizer steps")))?
            .max(FIRST_CORRECTIONS);
        let limit = (config.lr as f32, 1.0f32);
        let mut words = Vec::with_capacity(2 * entries);
        for t in 1..=entries as u64 {
            let (step_size, correction2_sqrt) = config.bias_corrections(t);
            words.extend([step_size as f32, correction2_sqrt as f32]);
        }
        let complete = words[words.len() - 2..] == [limit.0, limit.1];
        let table = GpuTensor::from_slice(ctx, "adam bias corrections", &[entries, 2], &words)?;
        Ok(BiasCorrections {
            config,
            table,
            complete,
        })
    }

    fn entries(&self) -> usize {
        self.table.shape()[0]
    }

    /// Grows the table (twice as long) when `step` is past it and it is not complete.
    fn cover(&mut self, ctx: &GpuContext, step: u64) -> Result<()> {
        if !self.complete && step > self.entries() as u64 {
            *self = Self::new(ctx, self.config, step.max(2 * self.entries() as u64))?;
        }
        Ok(())
    }
}

/// An optimizer whose state lives on the GPU, updating one flat parameter buffer in place
/// with the same arithmetic as [`super::optim::Optimizer`]. Its step counter lives on the GPU
/// too (optim.wgsl `status`), so that a step its guard rejects is not counted.
#[derive(Debug)]
pub struct GpuOptimizer {
    pub config: OptimizerConfig,
    /// One buffer per name in `config.state_names()`, laid out as the parameters.
    pub state: Vec<GpuTensor>,
    /// (2) u32: ok, steps applied.
    status: GpuTensor,
    /// Adam only.
    corrections: Option<BiasCorrections>,
    /// Steps recorded: at least the steps applied.
    recorded: u64,
    layout: FlatLayout,
}

impl GpuOptimizer {
    /// Zero state for `len` parameters.
    pub fn new(ctx: &GpuContext, config: OptimizerConfig, len: usize) -> Result<Self> {
        let layout = FlatLayout::aligned(&[len], 1)?;
        Self::from_host(ctx, &Optimizer::new(config, &[len])?, &layout)
    }

    /// Uploads a host optimizer's step count and state (one tensor per entry of `layout`).
    pub fn from_host(ctx: &GpuContext, host: &Optimizer<f32>, layout: &FlatLayout) -> Result<Self> {
        host.config.validate()?;
        host.check_buffers()?;
        host.check_lens(&layout.lens)?;
        let state = host
            .config
            .state_names()
            .iter()
            .zip(&host.state)
            .map(|(name, tensors)| {
                let slices: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
                let flat = layout.flatten(&slices, 0.0)?;
                GpuTensor::from_slice(ctx, name, &[flat.len()], &flat)
            })
            .collect::<Result<Vec<_>>>()?;
        let applied = u32::try_from(host.step)
            .map_err(|_| RnnError::TooLarge(format!("{} optimizer steps", host.step)))?;
        let status = [f32::from_bits(1), f32::from_bits(applied)];
        let corrections = match host.config {
            OptimizerConfig::Adam(c) => Some(BiasCorrections::new(ctx, c, host.step + 1)?),
            OptimizerConfig::Sgd(_) => None,
        };
        Ok(GpuOptimizer {
            config: host.config,
            state,
            status: GpuTensor::from_slice(ctx, "optimizer status", &[2], &status)?,
            corrections,
            recorded: host.step,
            layout: layout.clone(),
        })
    }

    /// Reads the state and the count of applied steps back into a host optimizer.
    pub fn to_host(&self, ctx: &GpuContext) -> Result<Optimizer<f32>> {
        let mut host = Optimizer::new(self.config, &self.layout.lens)?;
        host.step = self.steps(ctx)?;
        for (buffer, tensors) in self.state.iter().zip(&mut host.state) {
            let flat = buffer.to_vec(ctx)?;
            for (i, tensor) in tensors.iter_mut().enumerate() {
                tensor.copy_from_slice(self.layout.tensor(&flat, i)?);
            }
        }
        Ok(host)
    }

    /// Steps applied (read back).
    pub fn steps(&self, ctx: &GpuContext) -> Result<u64> {
        Ok(u64::from(self.status.to_vec(ctx)?[1].to_bits()))
    }

    /// Records one update of `params` from `grads` (both flat, `len` elements): counted and
    /// applied unless a guard recorded before it rejected the step.
    pub fn record_step<'k>(
        &mut self,
        rec: &mut Recorder<'k>,
        kernels: &'k TrainKernels,
        params: &GpuTensor,
        grads: &GpuTensor,
    ) -> Result<()> {
        let flat_len = self.layout.len;
        check_shape("parameters", &[flat_len], &[params.len()])?;
        check_shape("gradients", &[flat_len], &[grads.len()])?;
        let step = self.recorded + 1;
        if u32::try_from(step).is_err() {
            return Err(RnnError::TooLarge(format!("{step} optimizer steps")));
        }
        rec.dispatch_1d(
            &kernels.begin_step,
            &[&self.status],
            &OptimParams::default(),
            1,
        )?;
        match self.config {
            OptimizerConfig::Sgd(c) if flat_len > 0 => {
                let p = params!(OptimParams {
                    len: flat_len,
                    lr: c.lr as f32,
                    momentum: c.momentum as f32,
                    keep: (1.0 - c.dampening) as f32,
                    weight_decay: c.weight_decay as f32,
                })?;
                if c.momentum == 0.0 {
                    let storage = [&self.status, params, grads];
                    rec.dispatch_1d(&kernels.sgd, &storage, &p, flat_len)?;
                } else {
                    let storage = [&self.status, params, grads, &self.state[0]];
                    rec.dispatch_1d(&kernels.sgd_momentum, &storage, &p, flat_len)?;
                }
            }
            OptimizerConfig::Adam(c) if flat_len > 0 => {
                let ctx = rec.context();
                let Some(corrections) = self.corrections.as_mut() else {
                    return Err(RnnError::Config("Adam without its bias corrections".into()));
                };
                corrections.cover(ctx, step)?;
                let p = params!(OptimParams {
                    len: flat_len,
                    momentum: (1.0 - c.beta1) as f32,
                    beta2: c.beta2 as f32,
                    w2: (1.0 - c.beta2) as f32,
                    eps: c.eps as f32,
                    weight_decay: c.weight_decay as f32,
                    corrections: corrections.entries(),
                })?;
                let storage = [
                    &self.status,
                    params,
                    grads,
                    &self.state[0],
                    &self.state[1],
                    &corrections.table,
                ];
                rec.dispatch_1d(&kernels.adam, &storage, &p, flat_len)?;
            }
            _ => {}
        }
        self.recorded = step;
        Ok(())
    }
}
