//! The training kernels of `shaders/train.wgsl` on [`GpuTensor`]s (f32): fused softmax
//! cross-entropy, dropout masks bitwise equal to [`Dropout`], global-norm clipping in two
//! deterministic passes, value clipping, and fused SGD-momentum / Adam updates over one flat
//! parameter buffer. Each operation records into a caller's compute pass (`record_*`), so a
//! training step can put all of them in one submit; [`run_pass`] is the one-pass convenience.

use super::dropout::Dropout;
use super::optim::{Optimizer, OptimizerConfig};
use crate::error::{check_shape, Result, RnnError};
use crate::gpu::{GpuContext, GpuTensor, PipelineKey};
use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

const SOURCE: &str = include_str!("../../shaders/train.wgsl");
const WORKGROUP: usize = 256;
/// Elements reduced by one workgroup of the first norm pass (`CHUNK` in the shader).
const NORM_CHUNK: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CeParams {
    rows: u32,
    classes: u32,
    inv_rows: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DropoutParams {
    len: u32,
    seed: u32,
    stream: u32,
    threshold: u32,
    scale: f32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ClipParams {
    len: u32,
    partials: u32,
    limit: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SgdParams {
    len: u32,
    first: u32,
    lr: f32,
    momentum: f32,
    keep: f32,
    weight_decay: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AdamParams {
    len: u32,
    _pad0: u32,
    step_size: f32,
    correction2_sqrt: f32,
    w1: f32,
    beta2: f32,
    w2: f32,
    eps: f32,
    weight_decay: f32,
    _pad1: [u32; 3],
}

/// Records `f`'s dispatches into one compute pass and submits it.
pub fn run_pass(
    ctx: &GpuContext,
    f: impl FnOnce(&mut wgpu::ComputePass<'_>) -> Result<()>,
) -> Result<()> {
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("train"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("train"),
            timestamp_writes: None,
        });
        f(&mut pass)?;
    }
    ctx.submit(encoder.finish());
    ctx.take_errors()
}

/// Binds `buffers` (binding number, buffer) and `params` (as a uniform at `uniform_binding`)
/// to `entry` and dispatches `workgroups` groups.
pub(super) fn dispatch<P: Pod>(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
    entry: &'static str,
    buffers: &[(u32, &wgpu::Buffer)],
    uniform_binding: u32,
    params: &P,
    workgroups: usize,
) -> Result<()> {
    let pipeline = ctx.pipeline(&PipelineKey {
        label: "train",
        source: SOURCE,
        entry,
        constants: Vec::new(),
    })?;
    let uniform = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(entry),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
    let mut entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
        .iter()
        .map(|&(binding, buffer)| wgpu::BindGroupEntry {
            binding,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    entries.push(wgpu::BindGroupEntry {
        binding: uniform_binding,
        resource: uniform.as_entire_binding(),
    });
    let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(entry),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let (x, y) = ctx.grid_1d(workgroups)?;
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}

pub(super) fn check_u32(what: &str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| RnnError::TooLarge(format!("{what}: {len} elements exceed u32")))
}

pub(super) fn elementwise_groups(len: usize) -> usize {
    len.div_ceil(WORKGROUP)
}

/// Class targets for [`record_softmax_cross_entropy`]: a (N) buffer of u32 ids (bit patterns
/// stored in a [`GpuTensor`]). Every id must be below `classes`.
pub fn upload_targets(ctx: &GpuContext, targets: &[usize], classes: usize) -> Result<GpuTensor> {
    let ids = targets
        .iter()
        .enumerate()
        .map(|(row, &t)| {
            if t >= classes {
                Err(RnnError::Config(format!(
                    "target {t} of row {row} is outside the {classes} classes"
                )))
            } else {
                Ok(f32::from_bits(t as u32))
            }
        })
        .collect::<Result<Vec<f32>>>()?;
    GpuTensor::from_slice(ctx, "targets", &[targets.len()], &ids)
}

/// Softmax cross-entropy of `logits` (N, V) against `targets` (N, from [`upload_targets`]):
/// writes `row_loss` (N) = `−log softmax(z_n)[target_n]` and `grad` (N, V) = d mean / d logits.
pub fn record_softmax_cross_entropy(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
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
    let params = CeParams {
        rows: check_u32("rows", rows)?,
        classes: check_u32("classes", classes)?,
        inv_rows: 1.0 / rows as f32,
        _pad: 0,
    };
    dispatch(
        ctx,
        pass,
        "softmax_ce",
        &[
            (0, logits.buffer()),
            (1, targets.buffer()),
            (2, grad.buffer()),
            (3, row_loss.buffer()),
        ],
        4,
        &params,
        rows,
    )
}

/// Multiplies `x` in place by the dropout mask of (`seed`, `stream`), bitwise as
/// [`Dropout::apply`] does. Nothing is recorded when p = 0.
pub fn record_dropout(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
    x: &GpuTensor,
    dropout: &Dropout,
    seed: u32,
    stream: u32,
) -> Result<()> {
    if dropout.p() == 0.0 || x.is_empty() {
        return Ok(());
    }
    let params = DropoutParams {
        len: check_u32("dropout input", x.len())?,
        seed,
        stream,
        threshold: dropout.threshold(),
        scale: dropout.scale::<f32>(),
        _pad: [0; 3],
    };
    dispatch(
        ctx,
        pass,
        "dropout_apply",
        &[(5, x.buffer())],
        6,
        &params,
        elementwise_groups(x.len()),
    )
}

/// Scratch space of [`record_clip_grad_norm`] for gradients of `len` elements.
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

/// Global-norm clipping of the flat gradient buffer `grads` (torch's `clip_grad_norm_`):
/// per-workgroup partial sums, one final reduction, then a scale by
/// min(1, max_norm / (norm + 1e-6)). Deterministic. `scratch.result` holds (norm, coefficient).
pub fn record_clip_grad_norm(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
    grads: &GpuTensor,
    max_norm: f32,
    scratch: &NormScratch,
) -> Result<()> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(RnnError::Config(format!(
            "max_norm must be positive, got {max_norm}"
        )));
    }
    let partials = grads.len().div_ceil(NORM_CHUNK).max(1);
    check_shape("norm partials", &[partials], scratch.partials.shape())?;
    check_shape("norm result", &[2], scratch.result.shape())?;
    let params = ClipParams {
        len: check_u32("gradients", grads.len())?,
        partials: check_u32("partials", partials)?,
        limit: max_norm,
        _pad: 0,
    };
    dispatch(
        ctx,
        pass,
        "sumsq_partial",
        &[(7, grads.buffer()), (8, scratch.partials.buffer())],
        10,
        &params,
        partials,
    )?;
    dispatch(
        ctx,
        pass,
        "norm_finalize",
        &[(8, scratch.partials.buffer()), (9, scratch.result.buffer())],
        10,
        &params,
        1,
    )?;
    if grads.is_empty() {
        return Ok(());
    }
    dispatch(
        ctx,
        pass,
        "scale_by_coefficient",
        &[(9, scratch.result.buffer()), (11, grads.buffer())],
        10,
        &params,
        elementwise_groups(grads.len()),
    )
}

/// Clamps every element of `grads` to [−clip, clip].
pub fn record_clip_grad_value(
    ctx: &GpuContext,
    pass: &mut wgpu::ComputePass<'_>,
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
    let params = ClipParams {
        len: check_u32("gradients", grads.len())?,
        partials: 0,
        limit: clip,
        _pad: 0,
    };
    dispatch(
        ctx,
        pass,
        "clip_value",
        &[(11, grads.buffer())],
        10,
        &params,
        elementwise_groups(grads.len()),
    )
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
        check_u32("parameters", len)?;
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

/// An optimizer whose state lives on the GPU, updating one flat parameter buffer in place
/// with the same arithmetic as [`super::optim::Optimizer`].
#[derive(Debug)]
pub struct GpuOptimizer {
    pub config: OptimizerConfig,
    /// Completed steps.
    pub step: u64,
    /// One buffer per name in `config.state_names()`, laid out as the parameters.
    pub state: Vec<GpuTensor>,
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
        Ok(GpuOptimizer {
            config: host.config,
            step: host.step,
            state,
            layout: layout.clone(),
        })
    }

    /// Reads the state back into a host optimizer.
    pub fn to_host(&self, ctx: &GpuContext) -> Result<Optimizer<f32>> {
        let mut host = Optimizer::new(self.config, &self.layout.lens)?;
        host.step = self.step;
        for (buffer, tensors) in self.state.iter().zip(&mut host.state) {
            let flat = buffer.to_vec(ctx)?;
            for (i, tensor) in tensors.iter_mut().enumerate() {
                tensor.copy_from_slice(self.layout.tensor(&flat, i)?);
            }
        }
        Ok(host)
    }

    /// Records one update of `params` from `grads` (both flat, `len` elements).
    pub fn record_step(
        &mut self,
        ctx: &GpuContext,
        pass: &mut wgpu::ComputePass<'_>,
        params: &GpuTensor,
        grads: &GpuTensor,
    ) -> Result<()> {
        let flat_len = self.layout.len;
        check_shape("parameters", &[flat_len], &[params.len()])?;
        check_shape("gradients", &[flat_len], &[grads.len()])?;
        self.step += 1;
        if flat_len == 0 {
            return Ok(());
        }
        let len = check_u32("parameters", flat_len)?;
        let groups = elementwise_groups(flat_len);
        match self.config {
            OptimizerConfig::Sgd(c) => {
                let params_u = SgdParams {
                    len,
                    first: u32::from(self.step == 1),
                    lr: c.lr as f32,
                    momentum: c.momentum as f32,
                    keep: (1.0 - c.dampening) as f32,
                    weight_decay: c.weight_decay as f32,
                    _pad: [0; 2],
                };
                if c.momentum == 0.0 {
                    dispatch(
                        ctx,
                        pass,
                        "sgd_update",
                        &[(12, params.buffer()), (13, grads.buffer())],
                        16,
                        &params_u,
                        groups,
                    )
                } else {
                    dispatch(
                        ctx,
                        pass,
                        "sgd_momentum_update",
                        &[
                            (12, params.buffer()),
                            (13, grads.buffer()),
                            (14, self.state[0].buffer()),
                        ],
                        16,
                        &params_u,
                        groups,
                    )
                }
            }
            OptimizerConfig::Adam(c) => {
                let (step_size, correction2_sqrt) = c.bias_corrections(self.step);
                let params_u = AdamParams {
                    len,
                    _pad0: 0,
                    step_size: step_size as f32,
                    correction2_sqrt: correction2_sqrt as f32,
                    w1: (1.0 - c.beta1) as f32,
                    beta2: c.beta2 as f32,
                    w2: (1.0 - c.beta2) as f32,
                    eps: c.eps as f32,
                    weight_decay: c.weight_decay as f32,
                    _pad1: [0; 3],
                };
                dispatch(
                    ctx,
                    pass,
                    "adam_update",
                    &[
                        (12, params.buffer()),
                        (13, grads.buffer()),
                        (14, self.state[0].buffer()),
                        (15, self.state[1].buffer()),
                    ],
                    17,
                    &params_u,
                    groups,
                )
            }
        }
    }
}
