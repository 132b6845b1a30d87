//! GPU execution through wgpu: device context, tensors and WGSL kernels.

pub mod buffer;
pub mod context;
pub(crate) mod kernels;
pub mod model;
mod sequence;
mod timer;

pub use buffer::GpuTensor;
pub use context::{enumerate_adapters, AdapterSummary, GpuContext, GpuOptions, PipelineKey};
pub use model::{
    GpuForwardOutput, GpuGradients, GpuLayerGradients, GpuRnn, GpuSequenceBatch, GpuStream,
    GpuTape, GpuUpstreamGrads,
};
