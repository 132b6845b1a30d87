//! Kernel families (WGSL source, entry point, bindings, override constants), their pipelines,
//! and [`Recorder`], which records a whole sequence of dispatches and submits it in a few
//! compute passes.
//!
//! Every kernel reads its parameters from binding 0, a uniform at a dynamic offset into one
//! buffer that holds the parameters of every dispatch of the pass. That needs explicit bind
//! group layouts (automatic layouts have no dynamic offsets); the pipelines come from the
//! context's cache ([`GpuContext::dynamic_uniform_pipeline`]), shared by every model on it.

use std::sync::Arc;

use super::context::{GpuContext, PipelineKey, ShaderChecks};
use crate::config::{CellKind, Nonlinearity};
use crate::error::{Result, RnnError};

/// How a kernel accesses one storage binding (bindings 1..).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite};

/// A cell's step sources: its file followed by recurrent.wgsl, then the same followed by
/// recurrent_subgroup.wgsl (a module that needs the SUBGROUP feature).
macro_rules! step_sources {
    ($cell_file:literal) => {
        [
            concat!(
                include_str!(concat!("../../shaders/", $cell_file)),
                include_str!("../../shaders/recurrent.wgsl")
            ),
            concat!(
                include_str!(concat!("../../shaders/", $cell_file)),
                include_str!("../../shaders/recurrent.wgsl"),
                include_str!("../../shaders/recurrent_subgroup.wgsl")
            ),
        ]
    };
}

/// The fused time-step kernels of one cell, with the subgroup kernels where `subgroups`.
fn cell_source(cell: CellKind, subgroups: bool) -> &'static str {
    let [plain, with_subgroups] = match cell {
        CellKind::Rnn(_) => step_sources!("rnn.wgsl"),
        CellKind::Lstm => step_sources!("lstm.wgsl"),
        CellKind::Gru => step_sources!("gru.wgsl"),
    };
    if subgroups {
        with_subgroups
    } else {
        plain
    }
}

/// Override constants of a cell's step kernels.
fn cell_constants(cell: CellKind) -> Vec<(&'static str, f64)> {
    match cell {
        CellKind::Rnn(nonlinearity) => {
            let code = match nonlinearity {
                Nonlinearity::Tanh => 0.0,
                Nonlinearity::Relu => 1.0,
                Nonlinearity::Identity => 2.0,
            };
            vec![("NONLINEARITY", code)]
        }
        CellKind::Lstm | CellKind::Gru => Vec::new(),
    }
}

/// Hidden units per step workgroup (x) and batch rows per step workgroup (y); see recurrent.wgsl.
pub(crate) const STEP_TILE: (usize, usize) = (32, 16);
/// Batch rows per workgroup of the one-workgroup-per-unit step kernels (recurrent.wgsl `RB`).
pub(crate) const STEP_ROWS_PER_GROUP: usize = 4;
/// Largest batch run by those kernels (⌈B/4⌉ workgroups per hidden unit, each reading its row of
/// W_hh); larger batches run the tiled kernels, which read W_hh once per 16 rows.
pub(crate) const STEP_ROWS_MAX_BATCH: usize = 8;
/// Storage bindings of both forward step kernels.
const FORWARD_STEP_ACCESS: &[Access] = &[
    Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
];
/// Output tile of gemm.wgsl: rows (workgroups along y) and columns (along x).
pub(crate) const GEMM_TILE_M: usize = 128;
const GEMM_TILE_N: usize = 64;
/// Invocations per workgroup of the util.wgsl kernels.
const UTIL_WORKGROUP: usize = 256;
/// Columns per workgroup of reduce.wgsl.
pub(crate) const REDUCE_TILE: usize = 64;

/// A compute pipeline with its explicit bind group layout.
#[derive(Debug)]
pub(crate) struct Kernel {
    label: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    layout: wgpu::BindGroupLayout,
    storage_bindings: usize,
}

impl Kernel {
    fn new(
        ctx: &GpuContext,
        label: &'static str,
        source: &'static str,
        entry: &'static str,
        constants: Vec<(&'static str, f64)>,
        storage: &[Access],
        checks: ShaderChecks,
    ) -> Result<Self> {
        let key = PipelineKey {
            label,
            source,
            entry,
            constants,
        };
        let read_only: Vec<bool> = storage.iter().map(|&a| a == Read).collect();
        let pipeline = ctx.dynamic_uniform_pipeline(&key, &read_only, checks)?;
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Kernel {
            label,
            pipeline,
            layout,
            storage_bindings: storage.len(),
        })
    }
}

/// A time-step kernel of recurrent.wgsl in its two layouts.
#[derive(Debug)]
pub(crate) struct StepKernels {
    /// (units × rows) tiles: one time step of one layer and direction.
    pub tiled: Kernel,
    /// One workgroup per hidden unit: the same for B ≤ [`STEP_ROWS_MAX_BATCH`].
    pub rows: Kernel,
}

/// Every kernel one model needs, taken from the context's pipeline cache.
#[derive(Debug)]
pub(crate) struct CellKernels {
    /// `forward_step` / `forward_step_rows` (recurrent_subgroup.wgsl
    /// `forward_step_rows_subgroup` where the device has SUBGROUP), reading W_hh in f32.
    pub forward: StepKernels,
    /// The same reading W_hh as f16 pairs (inference with half recurrent weights).
    pub forward_half: StepKernels,
    /// `backward_step` / `backward_step_rows` (which reads W_hhᵀ): one reverse time step, or
    /// the final dh_0 step.
    pub backward: StepKernels,
    /// gemm.wgsl: strided C = A·B (+ bias) (+ C), one pipeline per value of its override
    /// constants (A_ALONG_K, B_ALONG_K), indexed `2·A_ALONG_K + B_ALONG_K`.
    pub gemm: [Kernel; 4],
    /// reduce.wgsl: column sums.
    pub column_sum: Kernel,
    /// util.wgsl: swaps the two leading axes (seq-major <-> batch-first).
    pub transpose: Kernel,
    /// util.wgsl: rows of f32 to f16 pairs.
    pub pack_half: Kernel,
}

impl CellKernels {
    pub fn new(ctx: &GpuContext, cell: CellKind) -> Result<Arc<Self>> {
        use ShaderChecks::{ProvenInRange, Runtime};
        let subgroups = ctx.features().contains(wgpu::Features::SUBGROUP);
        let source = cell_source(cell, subgroups);
        let step = |entry, storage, half: bool| {
            let mut constants = cell_constants(cell);
            constants.push(("HALF_WEIGHTS", f64::from(u8::from(half))));
            Kernel::new(
                ctx,
                cell.name(),
                source,
                entry,
                constants,
                storage,
                ProvenInRange,
            )
        };
        let rows_entry = if subgroups {
            "forward_step_rows_subgroup"
        } else {
            "forward_step_rows"
        };
        let forward = |half| -> Result<StepKernels> {
            Ok(StepKernels {
                tiled: step("forward_step", FORWARD_STEP_ACCESS, half)?,
                rows: step(rows_entry, FORWARD_STEP_ACCESS, half)?,
            })
        };
        let backward_access = &[Read, Read, Read, Read, Read, Read, ReadWrite, ReadWrite];
        let gemm = |a_along_k: bool, b_along_k: bool| {
            Kernel::new(
                ctx,
                "gemm",
                include_str!("../../shaders/gemm.wgsl"),
                "gemm",
                vec![
                    ("A_ALONG_K", f64::from(u8::from(a_along_k))),
                    ("B_ALONG_K", f64::from(u8::from(b_along_k))),
                ],
                &[Read, Read, Read, ReadWrite],
                ProvenInRange,
            )
        };
        let util = |entry| {
            Kernel::new(
                ctx,
                "util",
                include_str!("../../shaders/util.wgsl"),
                entry,
                vec![("WORKGROUP_SIZE", UTIL_WORKGROUP as f64)],
                &[Read, ReadWrite],
                Runtime,
            )
        };
        Ok(Arc::new(CellKernels {
            forward: forward(false)?,
            forward_half: forward(true)?,
            backward: StepKernels {
                tiled: step("backward_step", backward_access, false)?,
                rows: step("backward_step_rows", backward_access, false)?,
            },
            gemm: [
                gemm(false, false)?,
                gemm(false, true)?,
                gemm(true, false)?,
                gemm(true, true)?,
            ],
            column_sum: Kernel::new(
                ctx,
                "column_sum",
                include_str!("../../shaders/reduce.wgsl"),
                "column_sum",
                Vec::new(),
                &[Read, ReadWrite],
                Runtime,
            )?,
            transpose: util("transpose")?,
            pack_half: util("pack_half")?,
        }))
    }
}

/// Parameters of one gemm.wgsl dispatch (field order as `struct Gemm`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GemmParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_off: usize,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b_off: usize,
    pub b_rs: usize,
    pub b_cs: usize,
    pub c_off: usize,
    pub ldc: usize,
    pub accumulate: bool,
    pub use_bias: bool,
    pub bias_off: usize,
}

impl GemmParams {
    fn words(&self) -> Vec<usize> {
        vec![
            self.m,
            self.n,
            self.k,
            self.a_off,
            self.a_rs,
            self.a_cs,
            self.b_off,
            self.b_rs,
            self.b_cs,
            self.c_off,
            self.ldc,
            usize::from(self.accumulate),
            usize::from(self.use_bias),
            self.bias_off,
        ]
    }
}

/// Index of a bind group registered with [`Recorder::bind`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct BindingId(usize);

struct PendingBinding<'k> {
    kernel: &'k Kernel,
    buffers: Vec<wgpu::Buffer>,
}

struct Dispatch<'k> {
    kernel: &'k Kernel,
    binding: BindingId,
    param_offset: u32,
    groups: (u32, u32),
}

struct BufferCopy {
    source: wgpu::Buffer,
    source_offset: u64,
    destination: wgpu::Buffer,
    destination_offset: u64,
    size: u64,
}

/// Dispatches per submit on wgpu's GL backend. It holds one context lock for a whole submit and
/// panics when another thread waits for that lock more than 6 s, which a software GL
/// (llvmpipe) takes for a few thousand dispatches: smaller submits keep each hold short.
const GL_DISPATCHES_PER_SUBMIT: usize = 256;
/// Dispatches in the first submit of a recording; each later submit doubles (see
/// [`submit_groups`]).
const FIRST_SUBMIT: usize = 16;

/// Records copies, then the dispatches in compute passes of growing size (one submit each, at
/// most [`GL_DISPATCHES_PER_SUBMIT`] dispatches on the GL backend), then copies.
///
/// Offsets and sizes given to it are in f32 elements.
pub(crate) struct Recorder<'k> {
    ctx: &'k GpuContext,
    params: Vec<u8>,
    stride: usize,
    bindings: Vec<PendingBinding<'k>>,
    dispatches: Vec<Dispatch<'k>>,
    before: Vec<BufferCopy>,
    after: Vec<BufferCopy>,
}

const F32: u64 = 4;

/// Bytes of the parameter buffer per dispatch.
pub(crate) fn param_stride(ctx: &GpuContext) -> usize {
    (ctx.limits().min_uniform_buffer_offset_alignment as usize).max(64)
}

impl<'k> Recorder<'k> {
    pub fn new(ctx: &'k GpuContext) -> Self {
        let stride = param_stride(ctx);
        Recorder {
            ctx,
            params: Vec::new(),
            stride,
            bindings: Vec::new(),
            dispatches: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
        }
    }

    /// Registers the storage buffers of bindings 1.. of `kernel`, in order.
    pub fn bind(&mut self, kernel: &'k Kernel, buffers: &[&wgpu::Buffer]) -> BindingId {
        debug_assert_eq!(buffers.len(), kernel.storage_bindings, "{}", kernel.label);
        self.bindings.push(PendingBinding {
            kernel,
            buffers: buffers.iter().map(|&b| b.clone()).collect(),
        });
        BindingId(self.bindings.len() - 1)
    }

    /// Queues a dispatch of `groups` workgroups with `params` (u32 words) as its uniform.
    pub fn dispatch(
        &mut self,
        kernel: &'k Kernel,
        binding: BindingId,
        params: &[usize],
        groups: (usize, usize),
    ) -> Result<()> {
        let max = self.ctx.limits().max_compute_workgroups_per_dimension as usize;
        if groups.0 > max || groups.1 > max {
            return Err(RnnError::TooLarge(format!(
                "kernel `{}` needs {}x{} workgroups, the adapter allows {max} per dimension",
                kernel.label, groups.0, groups.1
            )));
        }
        let offset = self.params.len();
        for &word in params {
            let word = u32::try_from(word).map_err(|_| {
                RnnError::TooLarge(format!(
                    "kernel `{}`: parameter {word} exceeds 32 bits",
                    kernel.label
                ))
            })?;
            self.params.extend_from_slice(&word.to_le_bytes());
        }
        self.params.resize(offset + self.stride, 0);
        self.dispatches.push(Dispatch {
            kernel,
            binding,
            param_offset: offset as u32,
            groups: (groups.0.max(1) as u32, groups.1.max(1) as u32),
        });
        Ok(())
    }

    /// Queues a gemm.wgsl dispatch: C = A·B (+ bias) (+ C).
    pub fn gemm(
        &mut self,
        kernels: &'k CellKernels,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
        params: GemmParams,
    ) -> Result<()> {
        // Tile loads walk the operands' unit strides.
        let kernel =
            &kernels.gemm[2 * usize::from(params.a_cs == 1) + usize::from(params.b_rs == 1)];
        let binding = self.bind(kernel, &[a, b, bias.unwrap_or(b), c]);
        let params = GemmParams {
            use_bias: bias.is_some(),
            ..params
        };
        let groups = (
            params.n.div_ceil(GEMM_TILE_N),
            params.m.div_ceil(GEMM_TILE_M),
        );
        self.dispatch(kernel, binding, &params.words(), groups)
    }

    /// Queues column sums of the (rows, cols) block at `src_off` into `dst` at `dst_off`.
    pub fn column_sum(
        &mut self,
        kernels: &'k CellKernels,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        (rows, cols): (usize, usize),
        src_off: usize,
        dst_off: usize,
    ) -> Result<()> {
        let binding = self.bind(&kernels.column_sum, &[src, dst]);
        self.dispatch(
            &kernels.column_sum,
            binding,
            &[rows, cols, src_off, dst_off],
            (cols.div_ceil(REDUCE_TILE), 1),
        )
    }

    /// Queues a transpose of `src` (A, B, F) into `dst` (B, A, F).
    pub fn transpose(
        &mut self,
        kernels: &'k CellKernels,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        (a, b, f): (usize, usize, usize),
    ) -> Result<()> {
        self.util(&kernels.transpose, src, dst, &[a, b, f], a * b * f)
    }

    /// Queues the packing of `src` (rows, cols) f32 into `dst` (rows, ⌈cols/2⌉) f16 pairs.
    pub fn pack_half(
        &mut self,
        kernels: &'k CellKernels,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        self.util(
            &kernels.pack_half,
            src,
            dst,
            &[rows, cols],
            rows * cols.div_ceil(2),
        )
    }

    /// Queues a util.wgsl kernel from `src` into `dst`, one invocation per output element.
    fn util(
        &mut self,
        kernel: &'k Kernel,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        params: &[usize],
        outputs: usize,
    ) -> Result<()> {
        let binding = self.bind(kernel, &[src, dst]);
        let (x, y) = self.ctx.grid_1d(outputs.div_ceil(UTIL_WORKGROUP))?;
        self.dispatch(kernel, binding, params, (x as usize, y as usize))
    }

    /// Queues a copy of `len` elements to run before the compute pass.
    pub fn copy_before(
        &mut self,
        src: &wgpu::Buffer,
        src_off: usize,
        dst: &wgpu::Buffer,
        dst_off: usize,
        len: usize,
    ) {
        self.before.push(copy(src, src_off, dst, dst_off, len));
    }

    /// Queues a copy of `len` elements to run after the compute pass.
    pub fn copy_after(
        &mut self,
        src: &wgpu::Buffer,
        src_off: usize,
        dst: &wgpu::Buffer,
        dst_off: usize,
        len: usize,
    ) {
        self.after.push(copy(src, src_off, dst, dst_off, len));
    }

    /// Encodes everything and submits it in [`submit_groups`] order.
    pub fn submit(self) -> Result<()> {
        let device = self.ctx.device();
        let max = self.ctx.limits().max_buffer_size;
        if self.params.len() as u64 > max {
            return Err(RnnError::TooLarge(format!(
                "{} dispatches need {} bytes of parameters, above max_buffer_size = {max}",
                self.dispatches.len(),
                self.params.len()
            )));
        }
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step parameters"),
            size: self.params.len().max(self.stride) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if !self.params.is_empty() {
            self.ctx.queue().write_buffer(&uniform, 0, &self.params);
        }
        let uniform_size = wgpu::BufferSize::new(self.stride as u64);
        let bind_groups: Vec<wgpu::BindGroup> = self
            .bindings
            .iter()
            .map(|pending| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: 0,
                        size: uniform_size,
                    }),
                }];
                for (i, buffer) in pending.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: buffer.as_entire_binding(),
                    });
                }
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(pending.kernel.label),
                    layout: &pending.kernel.layout,
                    entries: &entries,
                })
            })
            .collect();
        let max_per_submit = if self.ctx.adapter_info().backend == wgpu::Backend::Gl {
            GL_DISPATCHES_PER_SUBMIT
        } else {
            usize::MAX
        };
        let groups = submit_groups(&self.dispatches, max_per_submit);
        let last = groups.len() - 1;
        for (index, group) in groups.into_iter().enumerate() {
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sequence"),
            });
            if index == 0 {
                encode_copies(&mut encoder, &self.before);
            }
            {
                let timestamps = self.ctx.pass_timestamps();
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("sequence"),
                    timestamp_writes: timestamps.as_ref().map(|(query_set, start)| {
                        wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: Some(*start),
                            end_of_pass_write_index: Some(start + 1),
                        }
                    }),
                });
                let mut current: Option<&wgpu::ComputePipeline> = None;
                for d in group {
                    if current != Some(&*d.kernel.pipeline) {
                        pass.set_pipeline(&d.kernel.pipeline);
                        current = Some(&*d.kernel.pipeline);
                    }
                    pass.set_bind_group(0, &bind_groups[d.binding.0], &[d.param_offset]);
                    pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
                }
            }
            if index == last {
                encode_copies(&mut encoder, &self.after);
            }
            self.ctx.queue().submit([encoder.finish()]);
        }
        Ok(())
    }
}

/// Splits `dispatches` into submits of FIRST_SUBMIT, then twice as many each time (at most
/// `max` each; one empty group when there is nothing). The GPU starts on the first steps while
/// the host still encodes the later ones, so little of the recording time adds to the wall time.
fn submit_groups<T>(dispatches: &[T], max: usize) -> Vec<&[T]> {
    let mut groups = Vec::new();
    let mut rest = dispatches;
    let mut size = FIRST_SUBMIT.min(max);
    while !rest.is_empty() {
        let (group, tail) = rest.split_at(size.min(rest.len()));
        groups.push(group);
        rest = tail;
        size = (2 * size).min(max);
    }
    if groups.is_empty() {
        groups.push(dispatches);
    }
    groups
}

fn encode_copies(encoder: &mut wgpu::CommandEncoder, copies: &[BufferCopy]) {
    for c in copies {
        encoder.copy_buffer_to_buffer(
            &c.source,
            c.source_offset,
            &c.destination,
            c.destination_offset,
            c.size,
        );
    }
}

fn copy(
    src: &wgpu::Buffer,
    src_off: usize,
    dst: &wgpu::Buffer,
    dst_off: usize,
    len: usize,
) -> BufferCopy {
    BufferCopy {
        source: src.clone(),
        source_offset: src_off as u64 * F32,
        destination: dst.clone(),
        destination_offset: dst_off as u64 * F32,
        size: len as u64 * F32,
    }
}

#[cfg(test)]
mod tests {
    use super::submit_groups;

    #[test]
    fn submit_groups_double_from_the_first_and_respect_the_cap() {
        let sizes = |n: usize, max: usize| -> Vec<usize> {
            let items: Vec<usize> = (0..n).collect();
            let groups = submit_groups(&items, max);
            assert_eq!(groups.concat(), items, "every dispatch once, in order");
            groups.iter().map(|g| g.len()).collect()
        };
        assert_eq!(sizes(0, usize::MAX), vec![0]);
        assert_eq!(sizes(5, usize::MAX), vec![5]);
        assert_eq!(sizes(101, usize::MAX), vec![16, 32, 53]);
        assert_eq!(sizes(1000, 256), vec![16, 32, 64, 128, 256, 256, 248]);
        assert_eq!(sizes(3, 2), vec![2, 1]);
    }
}
