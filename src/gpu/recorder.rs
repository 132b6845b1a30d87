//! [`Recorder`]: the one way every kernel of the library is launched.
//!
//! A recording is a list of commands in order: dispatches (each with its parameter struct),
//! buffer copies and clears. Parameters of all dispatches go into one uniform buffer from the
//! context's pool (the arena), each read at a dynamic offset by binding 0; storage tensors bind
//! at 1.. . Consecutive dispatches share a compute pass. The recording either submits itself
//! ([`Recorder::submit`], in growing chunks so that the GPU starts while the host still
//! encodes) or goes into a caller's encoder ([`Recorder::record_into`]), the caller submitting.

use std::sync::Arc;

use bytemuck::Pod;

use super::context::GpuContext;
use super::kernels::Kernel;
use super::tensor::{GpuTensor, F32_BYTES};
use crate::error::{Result, RnnError};

/// Index of a set of storage bindings registered with [`Recorder::bind`].
#[derive(Clone, Copy, Debug)]
pub struct BindingId(usize);

/// One storage binding: a tensor's buffer range.
#[derive(Clone, Debug)]
struct Bound {
    buffer: Arc<wgpu::Buffer>,
    offset: u64,
    size: u64,
}

impl From<&GpuTensor> for Bound {
    fn from(t: &GpuTensor) -> Self {
        Bound {
            buffer: Arc::clone(t.shared_buffer()),
            offset: t.byte_offset(),
            size: t.byte_len(),
        }
    }
}

struct PendingBinding<'k> {
    kernel: &'k Kernel,
    storage: Vec<Bound>,
}

enum Command<'k> {
    Dispatch {
        kernel: &'k Kernel,
        binding: BindingId,
        param_offset: u32,
        groups: (u32, u32),
    },
    Copy {
        source: Bound,
        destination: Bound,
        size: u64,
    },
    Clear(Bound),
}

/// Dispatches per submit on wgpu's GL backend. It holds one context lock for a whole submit and
/// panics when another thread waits for that lock more than 6 s, which a software GL
/// (llvmpipe) takes for a few thousand dispatches: smaller submits keep each hold short.
const GL_DISPATCHES_PER_SUBMIT: usize = 256;
/// Dispatches in the first submit of a recording; each later submit doubles.
const FIRST_SUBMIT: usize = 16;

/// Records commands for one submit (or a caller's encoder); see the module doc.
pub struct Recorder<'k> {
    ctx: &'k GpuContext,
    params: Vec<u8>,
    stride: usize,
    bindings: Vec<PendingBinding<'k>>,
    commands: Vec<Command<'k>>,
}

/// What a recording put into a caller's encoder refers to: keep it until that encoder is
/// submitted, so that the pool hands none of its buffers (parameters, workspaces) to other
/// work before the GPU has run it.
#[derive(Debug, Default)]
pub struct Recorded {
    _buffers: Vec<Arc<wgpu::Buffer>>,
}

impl Recorded {
    /// Keeps `other`'s buffers too.
    pub fn extend(&mut self, other: Recorded) {
        self._buffers.extend(other._buffers);
    }

    /// Keeps the buffers of `tensors` too.
    pub(crate) fn keep<'a>(&mut self, tensors: impl IntoIterator<Item = &'a GpuTensor>) {
        self._buffers
            .extend(tensors.into_iter().map(|t| Arc::clone(t.shared_buffer())));
    }
}

/// Where finished recordings go.
pub(crate) enum Sink<'e> {
    /// Each recording submits itself.
    Submit,
    /// Into a caller's encoder; `recorded` keeps their buffers until the caller's submit.
    Encoder {
        encoder: &'e mut wgpu::CommandEncoder,
        recorded: &'e mut Recorded,
    },
}

/// Bytes of the parameter arena per dispatch.
pub(crate) fn param_stride(ctx: &GpuContext) -> usize {
    (ctx.limits().min_uniform_buffer_offset_alignment as usize).max(64)
}

impl<'k> Recorder<'k> {
    pub fn new(ctx: &'k GpuContext) -> Self {
        Recorder {
            ctx,
            params: Vec::new(),
            stride: param_stride(ctx),
            bindings: Vec::new(),
            commands: Vec::new(),
        }
    }

    pub fn context(&self) -> &'k GpuContext {
        self.ctx
    }

    /// Registers the storage tensors of bindings 1.. of `kernel`, in order. Every tensor must
    /// belong to the recorder's context.
    pub fn bind(&mut self, kernel: &'k Kernel, storage: &[&GpuTensor]) -> Result<BindingId> {
        if storage.len() != kernel.storage_bindings() {
            return Err(RnnError::Config(format!(
                "kernel `{}` has {} storage bindings, {} tensors given",
                kernel.label(),
                kernel.storage_bindings(),
                storage.len()
            )));
        }
        for t in storage {
            t.check_context(self.ctx)?;
        }
        self.bindings.push(PendingBinding {
            kernel,
            storage: storage.iter().map(|&t| Bound::from(t)).collect(),
        });
        Ok(BindingId(self.bindings.len() - 1))
    }

    /// Queues a dispatch of `groups` workgroups reading `params` at binding 0.
    pub fn dispatch<P: Pod>(
        &mut self,
        kernel: &'k Kernel,
        binding: BindingId,
        params: &P,
        groups: (usize, usize),
    ) -> Result<()> {
        let max = self.ctx.limits().max_compute_workgroups_per_dimension as usize;
        if groups.0 > max || groups.1 > max {
            return Err(RnnError::TooLarge(format!(
                "kernel `{}` needs {}x{} workgroups, the adapter allows {max} per dimension",
                kernel.label(),
                groups.0,
                groups.1
            )));
        }
        let bytes = bytemuck::bytes_of(params);
        assert!(
            bytes.len() <= self.stride,
            "parameter struct above 64 bytes"
        );
        let offset = self.params.len();
        self.params.extend_from_slice(bytes);
        self.params.resize(offset + self.stride, 0);
        let param_offset = u32::try_from(offset).map_err(|_| {
            RnnError::TooLarge(format!("{} dispatches in one recording", self.dispatches()))
        })?;
        self.commands.push(Command::Dispatch {
            kernel,
            binding,
            param_offset,
            groups: (groups.0.max(1) as u32, groups.1.max(1) as u32),
        });
        Ok(())
    }

    /// Binds `storage` and queues one dispatch of `params` over `invocations` invocations of
    /// `kernel`'s 1-D workgroup, split into an (x, y) grid ([`GpuContext::grid_1d`]).
    pub fn dispatch_1d<P: Pod>(
        &mut self,
        kernel: &'k Kernel,
        storage: &[&GpuTensor],
        params: &P,
        invocations: usize,
    ) -> Result<()> {
        let binding = self.bind(kernel, storage)?;
        let (x, y) = self
            .ctx
            .grid_1d(invocations.div_ceil(kernel.workgroup_size()))?;
        self.dispatch(kernel, binding, params, (x as usize, y as usize))
    }

    fn dispatches(&self) -> usize {
        self.commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count()
    }

    /// Queues a copy of `len` values from element `src_off` of `src` to element `dst_off` of
    /// `dst`, both checked to be in range.
    pub fn copy(
        &mut self,
        src: &GpuTensor,
        src_off: usize,
        dst: &GpuTensor,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        let source = range(self.ctx, src, src_off, len)?;
        let destination = range(self.ctx, dst, dst_off, len)?;
        if len > 0 {
            self.ctx.count_copies(1);
            self.commands.push(Command::Copy {
                source,
                destination,
                size: len as u64 * F32_BYTES,
            });
        }
        Ok(())
    }

    /// Queues setting every value of `t` to zero.
    pub fn clear(&mut self, t: &GpuTensor) -> Result<()> {
        let bound = range(self.ctx, t, 0, t.len())?;
        if !t.is_empty() {
            self.commands.push(Command::Clear(bound));
        }
        Ok(())
    }

    /// Submits the recording or records it into the caller's encoder, as `sink` says.
    pub(crate) fn finish(self, sink: &mut Sink<'_>) -> Result<()> {
        match sink {
            Sink::Submit => self.submit(),
            Sink::Encoder { encoder, recorded } => {
                recorded.extend(self.record_into(encoder)?);
                Ok(())
            }
        }
    }

    /// Encodes everything into `encoder` (one compute pass per run of dispatches) and writes
    /// the parameters (they land before the caller's next submit). Keep the returned
    /// [`Recorded`] until that submit.
    pub fn record_into(self, encoder: &mut wgpu::CommandEncoder) -> Result<Recorded> {
        let (uniform, bind_groups) = self.prepare()?;
        self.encode(encoder, &bind_groups, 0..self.commands.len());
        Ok(self.recorded(uniform))
    }

    /// Encodes and submits everything: the first `FIRST_SUBMIT` (16) dispatches, then twice as
    /// many per submit (at most `GL_DISPATCHES_PER_SUBMIT` (256) on the GL backend).
    pub fn submit(self) -> Result<()> {
        let (_uniform, bind_groups) = self.prepare()?;
        let max = if self.ctx.adapter_info().backend == wgpu::Backend::Gl {
            GL_DISPATCHES_PER_SUBMIT
        } else {
            usize::MAX
        };
        let is_dispatch = self
            .commands
            .iter()
            .map(|c| matches!(c, Command::Dispatch { .. }));
        for commands in submit_ranges(is_dispatch, max) {
            let mut encoder =
                self.ctx
                    .device()
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("wgpu-rnn"),
                    });
            self.encode(&mut encoder, &bind_groups, commands);
            self.ctx.submit(encoder.finish());
        }
        Ok(())
    }

    /// The parameter arena, written, and one bind group per registered binding.
    fn prepare(&self) -> Result<(Arc<wgpu::Buffer>, Vec<wgpu::BindGroup>)> {
        let max = self.ctx.limits().max_buffer_size;
        let bytes = self.params.len().max(self.stride) as u64;
        if bytes > max {
            return Err(RnnError::TooLarge(format!(
                "{} dispatches need {bytes} bytes of parameters, above max_buffer_size = {max}",
                self.dispatches()
            )));
        }
        // Power-of-two sizes, so that recordings of similar length share pooled arenas.
        let size = bytes.next_power_of_two().min(max);
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        let uniform = self.ctx.pooled_buffer("kernel parameters", size, usage);
        if !self.params.is_empty() {
            self.ctx.queue().write_buffer(&uniform, 0, &self.params);
        }
        let uniform_size = wgpu::BufferSize::new(self.stride as u64);
        let device = self.ctx.device();
        let bind_groups = self
            .bindings
            .iter()
            .map(|pending| {
                let params = wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniform,
                        offset: 0,
                        size: uniform_size,
                    }),
                };
                let storage =
                    pending
                        .storage
                        .iter()
                        .zip(1..)
                        .map(|(b, binding)| wgpu::BindGroupEntry {
                            binding,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &b.buffer,
                                offset: b.offset,
                                size: wgpu::BufferSize::new(b.size),
                            }),
                        });
                let entries: Vec<_> = std::iter::once(params).chain(storage).collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(pending.kernel.label()),
                    layout: pending.kernel.layout(),
                    entries: &entries,
                })
            })
            .collect();
        Ok((uniform, bind_groups))
    }

    /// Encodes `commands[range]`: each run of dispatches in one compute pass (timed while the
    /// context times passes), copies and clears between passes.
    fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        bind_groups: &[wgpu::BindGroup],
        range: std::ops::Range<usize>,
    ) {
        let commands = &self.commands[range];
        let mut i = 0;
        while i < commands.len() {
            match &commands[i] {
                Command::Copy {
                    source,
                    destination,
                    size,
                } => {
                    encoder.copy_buffer_to_buffer(
                        &source.buffer,
                        source.offset,
                        &destination.buffer,
                        destination.offset,
                        *size,
                    );
                    i += 1;
                }
                Command::Clear(b) => {
                    encoder.clear_buffer(&b.buffer, b.offset, Some(b.size));
                    i += 1;
                }
                Command::Dispatch { .. } => {
                    let timestamps = self.ctx.pass_timestamps();
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("wgpu-rnn"),
                        timestamp_writes: timestamps.as_ref().map(|(query_set, start)| {
                            wgpu::ComputePassTimestampWrites {
                                query_set,
                                beginning_of_pass_write_index: Some(*start),
                                end_of_pass_write_index: Some(start + 1),
                            }
                        }),
                    });
                    let mut current: Option<&wgpu::ComputePipeline> = None;
                    while let Some(Command::Dispatch {
                        kernel,
                        binding,
                        param_offset,
                        groups,
                    }) = commands.get(i)
                    {
                        let pipeline = kernel.pipeline();
                        if current != Some(pipeline) {
                            pass.set_pipeline(pipeline);
                            current = Some(pipeline);
                        }
                        pass.set_bind_group(0, &bind_groups[binding.0], &[*param_offset]);
                        pass.dispatch_workgroups(groups.0, groups.1, 1);
                        i += 1;
                    }
                }
            }
        }
    }

    fn recorded(&self, uniform: Arc<wgpu::Buffer>) -> Recorded {
        let storage = self
            .bindings
            .iter()
            .flat_map(|b| b.storage.iter().map(|s| Arc::clone(&s.buffer)));
        let moved = self.commands.iter().flat_map(|c| match c {
            Command::Copy {
                source,
                destination,
                ..
            } => vec![Arc::clone(&source.buffer), Arc::clone(&destination.buffer)],
            Command::Clear(b) => vec![Arc::clone(&b.buffer)],
            Command::Dispatch { .. } => Vec::new(),
        });
        Recorded {
            _buffers: std::iter::once(uniform)
                .chain(storage)
                .chain(moved)
                .collect(),
        }
    }
}

/// The byte range of `len` values from element `off` of `t`, checked against `t`.
fn range(ctx: &GpuContext, t: &GpuTensor, off: usize, len: usize) -> Result<Bound> {
    t.check_context(ctx)?;
    if off.checked_add(len).is_none_or(|end| end > t.len()) {
        return Err(RnnError::Config(format!(
            "{len} values from element {off} run past the {} values of `{}`",
            t.len(),
            t.label()
        )));
    }
    let mut bound = Bound::from(t);
    bound.offset += off as u64 * F32_BYTES;
    bound.size = len as u64 * F32_BYTES;
    Ok(bound)
}

/// Splits a recording whose commands are dispatches where `is_dispatch` says so into submits
/// of [`FIRST_SUBMIT`] dispatches, then twice as many each time (at most `max` each; one empty
/// range when there is nothing). A split falls only before a dispatch. The GPU starts on the
/// first steps while the host still encodes the later ones.
fn submit_ranges(
    is_dispatch: impl ExactSizeIterator<Item = bool>,
    max: usize,
) -> Vec<std::ops::Range<usize>> {
    let len = is_dispatch.len();
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut in_submit = 0;
    let mut size = FIRST_SUBMIT.min(max);
    for (i, dispatch) in is_dispatch.enumerate() {
        if dispatch {
            if in_submit == size {
                ranges.push(start..i);
                start = i;
                in_submit = 0;
                size = (2 * size).min(max);
            }
            in_submit += 1;
        }
    }
    ranges.push(start..len);
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dispatches per submit for a pattern of dispatches ('d') and copies ('c'), checking that
    /// every command is submitted once, in order.
    fn dispatches_per_submit(pattern: &str, max: usize) -> Vec<usize> {
        let dispatch: Vec<bool> = pattern.chars().map(|c| c == 'd').collect();
        let ranges = submit_ranges(dispatch.iter().copied(), max);
        let flat: Vec<usize> = ranges.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(flat, (0..pattern.len()).collect::<Vec<_>>());
        ranges
            .iter()
            .map(|r| dispatch[r.clone()].iter().filter(|&&d| d).count())
            .collect()
    }

    #[test]
    fn submits_double_from_the_first_respect_the_cap_and_keep_copies_in_place() {
        assert_eq!(dispatches_per_submit("", usize::MAX), vec![0]);
        assert_eq!(dispatches_per_submit("cddddd", usize::MAX), vec![5]);
        let long = "d".repeat(101);
        assert_eq!(dispatches_per_submit(&long, usize::MAX), vec![16, 32, 53]);
        let longer = "d".repeat(1000);
        assert_eq!(
            dispatches_per_submit(&longer, 256),
            vec![16, 32, 64, 128, 256, 256, 248]
        );
        assert_eq!(dispatches_per_submit("dcdd", 2), vec![2, 1]);
    }
}
