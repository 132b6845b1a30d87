//! `GpuTensor`: f32 values in a storage buffer seen through (buffer, byte offset, shape), tied to
//! the context that made it; upload, and readback blocking or as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::context::{ContextId, GpuContext};
use crate::error::{Result, RnnError};

pub(crate) const F32_BYTES: u64 = std::mem::size_of::<f32>() as u64;

/// Usage of the buffers the library creates for tensors.
pub(crate) const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// A dense row-major f32 tensor: `shape` values from byte `offset` of a storage buffer.
///
/// The buffer is shared: [`GpuTensor::view`] and `clone` give other tensors over the same
/// memory, and [`GpuTensor::from_buffer`] wraps an application's buffer. A tensor remembers the
/// [`GpuContext`] it was made on; the library refuses it on another one. A tensor with zero
/// elements still binds 4 bytes (wgpu forbids empty bindings); `len()` is 0.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    buffer: Arc<wgpu::Buffer>,
    offset: u64,
    shape: Vec<usize>,
    len: usize,
    context: ContextId,
    label: String,
}

impl GpuTensor {
    /// A zero-filled tensor in a buffer of its own (wgpu zero-initialises new buffers).
    pub fn zeros(ctx: &GpuContext, label: &str, shape: &[usize]) -> Result<Self> {
        let len = element_count(label, shape)?;
        let size = buffer_size(ctx, label, shape, len)?;
        let buffer = ctx.create_buffer(label, size, TENSOR_USAGE);
        Ok(Self::over(ctx, Arc::new(buffer), 0, label, shape, len))
    }

    /// A tensor in a buffer from the context's pool (see [`GpuContext::buffers_created`]):
    /// its contents are whatever the buffer's last user left.
    pub(crate) fn pooled(ctx: &GpuContext, label: &str, shape: &[usize]) -> Result<Self> {
        let len = element_count(label, shape)?;
        let size = buffer_size(ctx, label, shape, len)?;
        let buffer = ctx.pooled_buffer(label, size, TENSOR_USAGE);
        Ok(Self::over(ctx, buffer, 0, label, shape, len))
    }

    fn over(
        ctx: &GpuContext,
        buffer: Arc<wgpu::Buffer>,
        offset: u64,
        label: &str,
        shape: &[usize],
        len: usize,
    ) -> Self {
        GpuTensor {
            buffer,
            offset,
            shape: shape.to_vec(),
            len,
            context: ctx.id(),
            label: label.to_string(),
        }
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

    /// Wraps `shape` f32 values of an application's buffer from `byte_offset` (no copy): the
    /// library's kernels read and write that memory. The buffer must have been created on
    /// `ctx`'s device with `STORAGE` usage (`COPY_SRC` to read it back, `COPY_DST` to write it
    /// from the host), and `byte_offset` must be a multiple of the device's
    /// `min_storage_buffer_offset_alignment`.
    pub fn from_buffer(
        ctx: &GpuContext,
        buffer: &wgpu::Buffer,
        byte_offset: u64,
        shape: &[usize],
    ) -> Result<Self> {
        let label = "application buffer";
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(RnnError::Config(format!(
                "{label}: usage {:?} lacks STORAGE",
                buffer.usage()
            )));
        }
        let len = element_count(label, shape)?;
        buffer_size(ctx, label, shape, len)?;
        let whole = Self::over(ctx, Arc::new(buffer.clone()), 0, label, &[], 0);
        whole.checked_view(ctx.limits(), byte_offset, shape, len, buffer.size())
    }

    /// The tensor of `shape` starting `element_offset` values into this one, over the same
    /// memory. Its start must be aligned as [`GpuTensor::from_buffer`] says.
    pub fn view(&self, ctx: &GpuContext, element_offset: usize, shape: &[usize]) -> Result<Self> {
        self.check_context(ctx)?;
        let len = element_count(&self.label, shape)?;
        let end = element_offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .ok_or_else(|| {
                RnnError::Config(format!(
                    "view of `{}`: {len} values from element {element_offset} run past its {} \
                     values",
                    self.label, self.len
                ))
            })?;
        debug_assert!(end <= self.len);
        let byte_offset = self.offset + element_offset as u64 * F32_BYTES;
        let limit = self.offset + (self.len as u64 * F32_BYTES).max(F32_BYTES);
        self.checked_view(ctx.limits(), byte_offset, shape, len, limit)
    }

    /// A view at `byte_offset` of the same buffer, checked to fit below byte `limit` and to be
    /// bindable there.
    fn checked_view(
        &self,
        limits: &wgpu::Limits,
        byte_offset: u64,
        shape: &[usize],
        len: usize,
        limit: u64,
    ) -> Result<Self> {
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        if !byte_offset.is_multiple_of(align) {
            return Err(RnnError::Config(format!(
                "`{}`: byte offset {byte_offset} is not a multiple of the device's \
                 min_storage_buffer_offset_alignment = {align}",
                self.label
            )));
        }
        let bytes = (len as u64 * F32_BYTES).max(F32_BYTES);
        if byte_offset.checked_add(bytes).is_none_or(|end| end > limit) {
            return Err(RnnError::Config(format!(
                "`{}`: {len} values of shape {shape:?} from byte {byte_offset} run past its \
                 end at byte {limit}",
                self.label
            )));
        }
        Ok(GpuTensor {
            buffer: Arc::clone(&self.buffer),
            offset: byte_offset,
            shape: shape.to_vec(),
            len,
            context: self.context,
            label: self.label.clone(),
        })
    }

    /// The same memory under another name (used in error messages).
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
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

    /// The storage buffer; the tensor starts [`GpuTensor::byte_offset`] bytes into it.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Where the tensor starts in [`GpuTensor::buffer`].
    pub fn byte_offset(&self) -> u64 {
        self.offset
    }

    /// Bytes bound for this tensor: 4 per value, at least 4.
    pub fn byte_len(&self) -> u64 {
        (self.len as u64 * F32_BYTES).max(F32_BYTES)
    }

    /// The label given at creation, used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The buffer shared with the pool, for the recorder's bindings.
    pub(crate) fn shared_buffer(&self) -> &Arc<wgpu::Buffer> {
        &self.buffer
    }

    /// An error unless the tensor was made on `ctx`.
    pub fn check_context(&self, ctx: &GpuContext) -> Result<()> {
        if self.context == ctx.id() {
            Ok(())
        } else {
            Err(RnnError::Config(format!(
                "tensor `{}` belongs to GPU context {}, not to context {} ({}) it was passed to",
                self.label,
                self.context,
                ctx.id(),
                ctx.adapter_info().name
            )))
        }
    }

    fn check_usage(&self, usage: wgpu::BufferUsages, what: &str) -> Result<()> {
        if self.buffer.usage().contains(usage) {
            Ok(())
        } else {
            Err(RnnError::Config(format!(
                "{what} `{}` needs buffer usage {usage:?}; it has {:?}",
                self.label,
                self.buffer.usage()
            )))
        }
    }

    /// Overwrites the contents with `data` (queued; lands before the next submit).
    pub fn write(&self, ctx: &GpuContext, data: &[f32]) -> Result<()> {
        self.check_context(ctx)?;
        if data.len() != self.len {
            return Err(RnnError::shape(&self.label, &self.shape, &[data.len()]));
        }
        if !data.is_empty() {
            self.check_usage(wgpu::BufferUsages::COPY_DST, "writing")?;
            ctx.queue()
                .write_buffer(&self.buffer, self.offset, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// Starts a readback of the values: a copy into a staging buffer, submitted now. The future
    /// resolves once the GPU has done it, without blocking: on native backends each poll of it
    /// polls the device once and, while the copy is not done, asks to be polled again. A failed
    /// copy or mapping is an [`RnnError::Device`].
    pub fn read(&self, ctx: &GpuContext) -> Result<Readback> {
        self.check_context(ctx)?;
        if self.len == 0 {
            return Ok(Readback::done(ctx));
        }
        self.check_usage(wgpu::BufferUsages::COPY_SRC, "reading")?;
        let bytes = self.len as u64 * F32_BYTES;
        ctx.scoped(&format!("reading `{}`", self.label), || {
            Ok(Readback::start(
                ctx,
                &self.buffer,
                self.offset,
                bytes,
                &self.label,
            ))
        })
    }

    /// Waits for all submitted work and reads back exactly `len()` values.
    pub fn to_vec(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        let readback = self.read(ctx)?;
        ctx.wait()?;
        pollster::block_on(readback)
    }

    /// Reads back into an array of `shape()`.
    pub fn to_array(&self, ctx: &GpuContext) -> Result<ArrayD<f32>> {
        let values = self.to_vec(ctx)?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), values)
            .map_err(|e| RnnError::Device(format!("readback shape {:?}: {e}", self.shape)))
    }
}

/// What the map callback reported, once it ran.
type MapResult = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// A pending readback ([`GpuTensor::read`]): a future of the values.
#[must_use = "a readback does nothing unless awaited"]
pub struct Readback {
    device: wgpu::Device,
    /// `None` for an empty tensor.
    staging: Option<(Arc<wgpu::Buffer>, u64)>,
    mapped: MapResult,
    label: String,
}

impl Readback {
    fn done(ctx: &GpuContext) -> Self {
        Readback {
            device: ctx.device().clone(),
            staging: None,
            mapped: Arc::new(Mutex::new(Some(Ok(())))),
            label: String::new(),
        }
    }

    /// Copies `bytes` from `offset` of `source` (usage `COPY_SRC`) into a staging buffer and
    /// starts mapping it; resolves to those bytes as f32 values.
    pub(crate) fn start(
        ctx: &GpuContext,
        source: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
        label: &str,
    ) -> Self {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = ctx.pooled_buffer("readback staging", bytes.next_power_of_two(), usage);
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(source, offset, &staging, 0, bytes);
        ctx.count_copies(1);
        ctx.submit(encoder.finish());
        let mapped: MapResult = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&mapped);
        staging.map_async(wgpu::MapMode::Read, ..bytes, move |result| {
            *super::context::lock(&slot) = Some(result);
        });
        Readback {
            device: ctx.device().clone(),
            staging: Some((staging, bytes)),
            mapped,
            label: label.to_string(),
        }
    }
}

impl Drop for Readback {
    /// A readback dropped before it resolved cancels its mapping, so that the staging buffer
    /// goes back to the pool unmapped.
    fn drop(&mut self) {
        if let Some((staging, _)) = self.staging.take() {
            staging.unmap();
        }
    }
}

impl Future for Readback {
    type Output = Result<Vec<f32>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some((staging, bytes)) = &this.staging else {
            return Poll::Ready(Ok(Vec::new()));
        };
        if super::context::lock(&this.mapped).is_none() {
            if let Err(e) = this.device.poll(wgpu::PollType::Poll) {
                return Poll::Ready(Err(RnnError::Device(format!(
                    "readback of `{}`: {e}",
                    this.label
                ))));
            }
        }
        let Some(result) = super::context::lock(&this.mapped).take() else {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        };
        result.map_err(|e| RnnError::Device(format!("mapping `{}`: {e}", this.label)))?;
        let values = {
            let view = staging
                .get_mapped_range(..*bytes)
                .map_err(|e| RnnError::Device(format!("mapped range of `{}`: {e}", this.label)))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        if let Some((staging, _)) = this.staging.take() {
            staging.unmap();
        }
        Poll::Ready(Ok(values))
    }
}

/// Product of `shape`, or `TooLarge` when it overflows.
pub(crate) fn element_count(label: &str, shape: &[usize]) -> Result<usize> {
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
