//! Kernel families (WGSL source, entry point, bindings, override constants) and their
//! pipelines, launched through a [`Recorder`].
//!
//! Every kernel reads its parameter struct ([`super::params`]) from binding 0, a uniform at a
//! dynamic offset into the recording's parameter arena. That needs explicit bind group layouts
//! (automatic layouts have no dynamic offsets); the pipelines come from the context's cache
//! (`GpuContext::dynamic_uniform_pipeline`), shared by every model on it.

use std::sync::Arc;

use super::context::{GpuContext, PipelineKey, ShaderChecks};
use super::params::{ColumnSumParams, GemmParams, PackParams, TransposeParams};
use super::recorder::Recorder;
use super::tensor::GpuTensor;
use crate::config::{CellKind, Nonlinearity};
use crate::error::{Result, RnnError};

/// How a kernel accesses one storage binding (bindings 1..).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
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

/// A compute pipeline with its explicit bind group layout: binding 0 its parameter struct
/// (a uniform at a dynamic offset), bindings 1.. storage. Launched by a
/// [`Recorder`].
#[derive(Debug)]
pub struct Kernel {
    label: &'static str,
    pipeline: Arc<wgpu::ComputePipeline>,
    layout: wgpu::BindGroupLayout,
    storage_bindings: usize,
    workgroup_size: usize,
}

impl Kernel {
    /// The pipeline of `key` (from the context's cache) with storage bindings `storage`, for a
    /// kernel whose 1-D workgroups have `workgroup_size` invocations.
    pub fn new(
        ctx: &GpuContext,
        key: PipelineKey,
        storage: &[Access],
        workgroup_size: usize,
    ) -> Result<Self> {
        Self::with_checks(ctx, key, storage, workgroup_size, ShaderChecks::Runtime)
    }

    fn with_checks(
        ctx: &GpuContext,
        key: PipelineKey,
        storage: &[Access],
        workgroup_size: usize,
        checks: ShaderChecks,
    ) -> Result<Self> {
        let read_only: Vec<bool> = storage.iter().map(|&a| a == Read).collect();
        let pipeline = ctx.dynamic_uniform_pipeline(&key, &read_only, checks)?;
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Kernel {
            label: key.label,
            pipeline,
            layout,
            storage_bindings: storage.len(),
            workgroup_size,
        })
    }

    pub fn label(&self) -> &'static str {
        self.label
    }

    pub(crate) fn pipeline(&self) -> &wgpu::ComputePipeline {
        &self.pipeline
    }

    pub(crate) fn layout(&self) -> &wgpu::BindGroupLayout {
        &self.layout
    }

    pub(crate) fn storage_bindings(&self) -> usize {
        self.storage_bindings
    }

    pub(crate) fn workgroup_size(&self) -> usize {
        self.workgroup_size
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
    gemm: [Kernel; 4],
    /// reduce.wgsl: column sums.
    column_sum: Kernel,
    /// util.wgsl: swaps the two leading axes (seq-major <-> batch-first).
    transpose: Kernel,
    /// util.wgsl: rows of f32 to f16 pairs.
    pack_half: Kernel,
}

impl CellKernels {
    pub fn new(ctx: &GpuContext, cell: CellKind) -> Result<Arc<Self>> {
        use ShaderChecks::ProvenInRange;
        let subgroups = ctx.features().contains(wgpu::Features::SUBGROUP);
        let source = cell_source(cell, subgroups);
        let step = |entry, storage, half: bool| {
            let mut constants = cell_constants(cell);
            constants.push(("HALF_WEIGHTS", f64::from(u8::from(half))));
            let key = PipelineKey {
                label: cell.name(),
                source,
                entry,
                constants,
            };
            Kernel::with_checks(ctx, key, storage, 1, ProvenInRange)
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
            let key = PipelineKey {
                label: "gemm",
                source: include_str!("../../shaders/gemm.wgsl"),
                entry: "gemm",
                constants: vec![
                    ("A_ALONG_K", f64::from(u8::from(a_along_k))),
                    ("B_ALONG_K", f64::from(u8::from(b_along_k))),
                ],
            };
            let storage = &[Read, Read, Read, ReadWrite];
            Kernel::with_checks(ctx, key, storage, 1, ProvenInRange)
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
                PipelineKey {
                    label: "column_sum",
                    source: include_str!("../../shaders/reduce.wgsl"),
                    entry: "column_sum",
                    constants: Vec::new(),
                },
                &[Read, ReadWrite],
                REDUCE_TILE,
            )?,
            transpose: util_kernel(ctx, "transpose", &[Read, ReadWrite])?,
            pack_half: util_kernel(ctx, "pack_half", &[Read, ReadWrite])?,
        }))
    }

    /// Queues a gemm.wgsl dispatch: C = A·B (+ bias) (+ C), all operands checked to hold every
    /// element `g` addresses (gemm.wgsl is built without runtime bounds checks: this is the
    /// check that makes that sound).
    pub fn gemm<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        a: &GpuTensor,
        b: &GpuTensor,
        bias: Option<&GpuTensor>,
        c: &GpuTensor,
        g: Gemm,
    ) -> Result<()> {
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let last = |off: usize, rows: usize, rs: usize, cols: usize, cs: usize| {
            // The largest index read, off + (rows-1)·rs + (cols-1)·cs, in checked arithmetic.
            (rows.max(1) - 1)
                .checked_mul(rs)
                .and_then(|r| (cols.max(1) - 1).checked_mul(cs).map(|c| (r, c)))
                .and_then(|(r, c)| off.checked_add(r)?.checked_add(c))
        };
        let fits = |t: &GpuTensor, index: Option<usize>, empty: bool| {
            empty || index.is_some_and(|i| i < t.len())
        };
        let k_empty = g.k == 0;
        let checks = [
            (a, last(g.a_off, g.m, g.a_rs, g.k, g.a_cs), k_empty),
            (b, last(g.b_off, g.k, g.b_rs, g.n, g.b_cs), k_empty),
            (c, last(g.c_off, g.m, g.ldc, g.n, 1), false),
        ];
        for (t, index, empty) in checks {
            if !fits(t, index, empty) {
                return Err(RnnError::Config(format!(
                    "gemm {g:?} addresses past the {} values of `{}`",
                    t.len(),
                    t.label()
                )));
            }
        }
        if let Some(bias) = bias {
            if !fits(bias, g.bias_off.checked_add(g.n - 1), false) {
                return Err(RnnError::Config(format!(
                    "gemm bias at {} + {} past the {} values of `{}`",
                    g.bias_off,
                    g.n,
                    bias.len(),
                    bias.label()
                )));
            }
        }
        // Tile loads walk the operands' unit strides.
        let kernel = &self.gemm[2 * usize::from(g.a_cs == 1) + usize::from(g.b_rs == 1)];
        let binding = rec.bind(kernel, &[a, b, bias.unwrap_or(b), c])?;
        let params = crate::params!(GemmParams {
            m: g.m,
            n: g.n,
            k: g.k,
            a_off: g.a_off,
            a_rs: g.a_rs,
            a_cs: g.a_cs,
            b_off: g.b_off,
            b_rs: g.b_rs,
            b_cs: g.b_cs,
            c_off: g.c_off,
            ldc: g.ldc,
            accumulate: g.accumulate,
            use_bias: bias.is_some(),
            bias_off: g.bias_off,
        })?;
        let groups = (g.n.div_ceil(GEMM_TILE_N), g.m.div_ceil(GEMM_TILE_M));
        rec.dispatch(kernel, binding, &params, groups)
    }

    /// Queues column sums of the (rows, cols) block at `src_off` of `src` into `dst` at
    /// `dst_off`.
    pub fn column_sum<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        src: &GpuTensor,
        dst: &GpuTensor,
        (rows, cols): (usize, usize),
        src_off: usize,
        dst_off: usize,
    ) -> Result<()> {
        let params = crate::params!(ColumnSumParams {
            rows: rows,
            cols: cols,
            src_off: src_off,
            dst_off: dst_off,
        })?;
        let binding = rec.bind(&self.column_sum, &[src, dst])?;
        let groups = (cols.div_ceil(REDUCE_TILE), 1);
        rec.dispatch(&self.column_sum, binding, &params, groups)
    }

    /// Queues a transpose of `src` (A, B, F) into `dst` (B, A, F).
    pub fn transpose<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        src: &GpuTensor,
        dst: &GpuTensor,
        (a, b, f): (usize, usize, usize),
    ) -> Result<()> {
        let params = crate::params!(TransposeParams { a: a, b: b, f: f })?;
        rec.dispatch_1d(&self.transpose, &[src, dst], &params, a * b * f)
    }

    /// Queues the packing of `src` (rows, cols) f32 into `dst` (rows, ⌈cols/2⌉) f16 pairs.
    pub fn pack_half<'k>(
        &'k self,
        rec: &mut Recorder<'k>,
        src: &GpuTensor,
        dst: &GpuTensor,
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        let params = crate::params!(PackParams {
            rows: rows,
            cols: cols
        })?;
        let outputs = rows * cols.div_ceil(2);
        rec.dispatch_1d(&self.pack_half, &[src, dst], &params, outputs)
    }
}

/// A util.wgsl entry point.
pub fn util_kernel(ctx: &GpuContext, entry: &'static str, storage: &[Access]) -> Result<Kernel> {
    let key = PipelineKey {
        label: "util",
        source: include_str!("../../shaders/util.wgsl"),
        entry,
        constants: vec![("WORKGROUP_SIZE", UTIL_WORKGROUP as f64)],
    };
    Kernel::new(ctx, key, storage, UTIL_WORKGROUP)
}

/// One gemm.wgsl call in elements: C[c_off + i·ldc + j] (+)= Σ_k A[a_off + i·a_rs + k·a_cs] ·
/// B[b_off + k·b_rs + j·b_cs] (+ bias[bias_off + j]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gemm {
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
    pub bias_off: usize,
}
