//! `GpuTensor`: an f32 storage buffer with a shape, and its upload and readback.

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::context::GpuContext;
use crate::error::{Result, RnnError};

const F32_BYTES: u64 = std::mem::size_of::<f32>() as u64;

/// A dense row-major f32 tensor in a storage buffer (usage STORAGE | COPY_SRC | COPY_DST).
///
/// A tensor with zero elements still owns a 4-byte buffer, because wgpu forbids zero-size
/// bindings; `len()` is 0 and readback returns no values. Kernels must not read past `len()`.
#[derive(Debug)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    label: String,
    shape: Vec<usize>,
    len: usize,
}

impl GpuTensor {
    /// Creates a zero-filled tensor (wgpu zero-initialises new buffers).
    pub fn zeros(ctx: &GpuContext, label: &str, shape: &[usize]) -> Result<Self> {
        let len = element_count(label, shape)?;
        let size = buffer_size(ctx, label, shape, len)?;
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuTensor {
            buffer,
            label: label.to_string(),
            shape: shape.to_vec(),
            len,
        })
    }

    /// Uploads `data` (row-major, `shape.iter().product()` values).
    pub fn from_slice(
        ctx: &GpuContext,
        label: &str,
        shape: &[usize],
        data: &[f32],
    ) -> Result<Self> {
        let len = element_count(label, shape)?;
        if data.len() != len {
            return Err(RnnError::shape(label, shape, &[data.len()]));
        }
        let tensor = Self::zeros(ctx, label, shape)?;
        tensor.write(ctx, data)?;
        Ok(tensor)
    }

    /// Uploads an array of any layout (non-contiguous views are copied to row-major first).
    pub fn from_array(ctx: &GpuContext, label: &str, a: ArrayViewD<f32>) -> Result<Self> {
        match a.as_slice() {
            Some(data) => Self::from_slice(ctx, label, a.shape(), data),
            None => {
                let data: Vec<f32> = a.iter().copied().collect();
                Self::from_slice(ctx, label, a.shape(), &data)
            }
        }
    }

    /// A tensor with every element `value`; `filled(.., f32::NAN)` poisons outputs in tests.
    pub fn filled(ctx: &GpuContext, label: &str, shape: &[usize], value: f32) -> Result<Self> {
        let len = element_count(label, shape)?;
        Self::from_slice(ctx, label, shape, &vec![value; len])
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The storage buffer; at least 4 bytes even when the tensor is empty.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Overwrites the contents with `data` (queued; lands before the next submit).
    pub fn write(&self, ctx: &GpuContext, data: &[f32]) -> Result<()> {
        if data.len() != self.len {
            return Err(RnnError::shape(&self.label, &self.shape, &[data.len()]));
        }
        if !data.is_empty() {
            ctx.queue()
                .write_buffer(&self.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Waits for all submitted work and reads back exactly `len()` values.
    ///
    /// Device errors raised before or during the readback are returned as
    /// [`RnnError::Device`].
    pub fn to_vec(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        if self.len == 0 {
            ctx.sync()?;
            return Ok(Vec::new());
        }
        let bytes = read_bytes(ctx, &self.buffer, self.len as u64 * F32_BYTES, &self.label)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads back into an array of `shape()`.
    pub fn to_array(&self, ctx: &GpuContext) -> Result<ArrayD<f32>> {
        let values = self.to_vec(ctx)?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), values)
            .map_err(|e| RnnError::Device(format!("readback shape {:?}: {e}", self.shape)))
    }

    /// The label given at creation, used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Product of `shape`, or `TooLarge` when it overflows.
fn element_count(label: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| RnnError::TooLarge(format!("tensor `{label}` of shape {shape:?}")))
}

/// Buffer size in bytes for `len` f32 values (at least 4), checked against the device limits.
fn buffer_size(ctx: &GpuContext, label: &str, shape: &[usize], len: usize) -> Result<u64> {
    let too_large = |limit_name: &str, limit: u64| {
        RnnError::TooLarge(format!(
            "tensor `{label}` of shape {shape:?} needs {len} x 4 bytes, \
             above {limit_name} = {limit}"
        ))
    };
    let limits = ctx.limits();
    let bytes = (len as u64)
        .checked_mul(F32_BYTES)
        .ok_or_else(|| too_large("u64::MAX", u64::MAX))?;
    if bytes > limits.max_buffer_size {
        return Err(too_large("max_buffer_size", limits.max_buffer_size));
    }
    if bytes > limits.max_storage_buffer_binding_size {
        return Err(too_large(
            "max_storage_buffer_binding_size",
            limits.max_storage_buffer_binding_size,
        ));
    }
    Ok(bytes.max(F32_BYTES))
}

/// Waits for all submitted work and reads back the first `size` bytes of `buffer` (which must
/// allow `COPY_SRC`); `label` names it in errors.
pub(crate) fn read_bytes(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    size: u64,
    label: &str,
) -> Result<Vec<u8>> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    ctx.queue().submit([encoder.finish()]);

    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    staging.map_async(wgpu::MapMode::Read, .., move |mapped| {
        sender.send(mapped).ok();
    });
    ctx.sync()?;
    let mapped = pollster::block_on(receiver.receive()).ok_or_else(|| {
        RnnError::Device(format!("readback of `{label}`: map callback never ran"))
    })?;
    mapped.map_err(|e| RnnError::Device(format!("mapping `{label}`: {e}")))?;
    let bytes = staging
        .get_mapped_range(..)
        .map_err(|e| RnnError::Device(format!("mapped range of `{label}`: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(bytes)
}
