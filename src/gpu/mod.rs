//! GPU execution through wgpu.
//!
//! Data flow of one call, recorded by the sequence driver (`sequence.rs`, one for every cell):
//! forward: x → input GEMM (all steps of a chunk at once) → per-step fused cell kernel → output,
//! h_n, c_n; backward: upstream gradients → reverse per-step fused kernels (gate gradients,
//! dh_{t-1}) → weight- and input-gradient GEMMs over all steps.
//!
//! - [`context`]: adapter and device (or the application's), pipeline cache, buffer pool.
//! - [`tensor`]: [`GpuTensor`], a view (buffer, offset, shape) tied to its context.
//! - [`recorder`]: [`Recorder`], the one launch path: parameter structs ([`params`]) from one
//!   arena, into its own submits or a caller's encoder.
//! - [`kernels`]: the kernel families and their pipelines.
//! - [`model`]: [`GpuRnn`], its tapes and streams.

pub mod context;
pub mod kernels;
pub mod model;
pub mod params;
pub mod recorder;
mod sequence;
pub mod tensor;
mod timer;

pub use context::{
    enumerate_adapters, AdapterSummary, GpuContext, GpuCounters, GpuOptions, PipelineKey,
};
pub use kernels::{util_kernel, Access, Kernel};
pub use model::{
    GpuForwardOutput, GpuGradients, GpuLayerGradients, GpuRnn, GpuSequenceBatch, GpuStream,
    GpuStreamOutput, GpuTape, GpuUpstreamGrads,
};
pub use recorder::{BindingId, Recorded, Recorder};
pub(crate) use sequence::{LayerGradIo, LayerWeights};
pub use tensor::{GpuTensor, Readback};
