//! Inference memory does not grow with the sequence length (issue: a GRU with H = 3 once took
//! 1.3 GB at T = 10^6). Its own test binary, one test: the process's peak resident memory is the
//! measure (lavapipe's buffers are host memory), and no other test may run beside it.

mod common;

use std::sync::Arc;

use ndarray::Array3;
use wgpu_rnn::gpu::{GpuRnn, GpuSequenceBatch, GpuTensor};
use wgpu_rnn::{CellKind, RnnConfig, RnnParams};

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runs a GRU (I = 1, H = 3, B = 1) forward over `t` steps and checks the output's last row is
/// finite (so the work is not optimised away).
fn run(rnn: &GpuRnn, t: usize) {
    let ctx = rnn.context();
    let x = Array3::from_shape_fn((t, 1, 1), |(k, _, _)| ((k % 97) as f32 * 0.1).sin());
    let x = GpuTensor::from_array(ctx, "x", x.view().into_dyn()).expect("upload");
    let out = rnn
        .forward_gpu(&GpuSequenceBatch::new(&x))
        .expect("forward");
    let h_n = out.h_n.to_vec(ctx).expect("readback");
    assert!(h_n.iter().all(|v| v.is_finite()));
}

#[test]
fn inference_memory_is_bounded_independently_of_the_sequence_length() {
    let Some(ctx) = common::gpu() else { return };
    if peak_rss().is_none() {
        eprintln!("no /proc/self/status: skipping the memory measurement");
        return;
    }
    let params = RnnParams::init(&RnnConfig::new(CellKind::Gru, 1, 3), 1).expect("init");
    let rnn = GpuRnn::new(Arc::clone(&ctx), &params).expect("model");
    // Warm up at a length that already fills whole chunks.
    run(&rnn, 4_000);
    let before = peak_rss().unwrap();
    // WGPU_RNN_MEMORY_STEPS=1000000 measures the T = 10^6 (minutes on lavapipe).
    let long = std::env::var("WGPU_RNN_MEMORY_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000usize);
    run(&rnn, long);
    let grown = peak_rss().unwrap().saturating_sub(before);
    // Input and output (4 + 12 bytes per step) may grow with T, nothing else: before chunking,
    // 100 000 steps took ~25 MB of kernel parameters and ~100 MB of recorded commands.
    let io = 16 * long as u64;
    let allowance = 4 * io + (24 << 20);
    eprintln!(
        "T = {long}: peak RSS grew by {:.1} MiB (allowance {:.1} MiB)",
        grown as f64 / 1048576.0,
        allowance as f64 / 1048576.0
    );
    assert!(
        grown <= allowance,
        "peak memory grew by {grown} bytes at T = {long}"
    );
}
