//! GPU time of compute passes from timestamp queries (`Features::TIMESTAMP_QUERY`).
//!
//! While timing is on ([`GpuContext::start_pass_timing`]), every compute pass of the RNN
//! kernels (forward and backward sequences) writes a timestamp at its start and end;
//! [`GpuContext::stop_pass_timing`] sums end − start over the passes. That is the time the GPU
//! spent in the library's kernels, without the host's recording and submit time or the gaps
//! between submits.

use super::context::GpuContext;
use super::tensor::Readback;
use crate::error::{Result, RnnError};

/// Passes one timing can cover (two queries each; wgpu allows 4096 queries per set).
const MAX_PASSES: u32 = 2048;

/// A query set and the count of passes timed since the last start.
#[derive(Debug)]
pub(crate) struct PassTimer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// Passes that got a query pair since the last start.
    passes: u32,
    /// Passes recorded after the query set was full.
    missed: u32,
    /// Between a start and a stop.
    active: bool,
}

impl PassTimer {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        PassTimer {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("pass timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * MAX_PASSES,
            }),
            resolved: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("resolved timestamps"),
                size: 2 * u64::from(MAX_PASSES) * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            passes: 0,
            missed: 0,
            active: false,
        }
    }

    /// Starts a timing: no passes counted yet.
    pub(crate) fn start(&mut self) {
        self.passes = 0;
        self.missed = 0;
        self.active = true;
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active
    }

    /// The query set and the index of the next pass's start query, if one is left.
    pub(crate) fn next_pass(&mut self) -> Option<(wgpu::QuerySet, u32)> {
        if !self.active {
            return None;
        }
        if self.passes == MAX_PASSES {
            self.missed += 1;
            return None;
        }
        self.passes += 1;
        Some((self.queries.clone(), 2 * (self.passes - 1)))
    }

    /// Ends the timing; waits for the GPU and returns the summed pass durations (ms).
    pub(crate) fn stop(&mut self, ctx: &GpuContext) -> Result<f64> {
        self.active = false;
        if self.missed > 0 {
            return Err(RnnError::TooLarge(format!(
                "{} compute passes to time, above the {MAX_PASSES} one timing covers",
                self.passes + self.missed
            )));
        }
        if self.passes == 0 {
            return Ok(0.0);
        }
        let queries = 2 * self.passes;
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("resolve timestamps"),
            });
        encoder.resolve_query_set(&self.queries, 0..queries, &self.resolved, 0);
        ctx.submit(encoder.finish());
        let bytes = u64::from(queries) * 8;
        let readback = Readback::start(ctx, &self.resolved, 0, bytes, "resolved timestamps");
        ctx.wait()?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&pollster::block_on(readback)?);
        let ns_per_tick = f64::from(ctx.queue().get_timestamp_period());
        let total: u64 = ticks
            .chunks_exact(2)
            .map(|pair| pair[1].saturating_sub(pair[0]))
            .sum();
        Ok(total as f64 * ns_per_tick * 1e-6)
    }
}
