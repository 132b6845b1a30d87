//! The README's usage example: an LSTM on the CPU reference and on the GPU, same result.
//! `cargo run --release --example quickstart`

use ndarray::Array3;
use wgpu_rnn::{CellKind, RnnConfig, RnnParams, SequenceBatch};

fn main() -> wgpu_rnn::Result<()> {
    let (t, b, i, h) = (10, 4, 8, 16);
    let cfg = RnnConfig::new(CellKind::Lstm, i, h);
    let params = RnnParams::<f32>::init(&cfg, 42)?;
    let x = Array3::<f32>::from_shape_fn((t, b, i), |(t, b, i)| ((t + 2 * b + 3 * i) as f32).sin());

    // CPU reference: output (T, B, H), h_n and c_n (layers·directions, B, H).
    let cpu = wgpu_rnn::cpu::forward(&params, &SequenceBatch::new(x.view()))?;

    // GPU: weights are uploaded once; each call records the whole sequence into one submit.
    let ctx = std::sync::Arc::new(wgpu_rnn::gpu::GpuContext::new()?);
    let gpu = wgpu_rnn::gpu::GpuRnn::new(ctx, &params)?.forward(&SequenceBatch::new(x.view()))?;
    assert!((&gpu.output - &cpu.output).iter().all(|d| d.abs() < 1e-4));
    println!(
        "GPU output equals the CPU reference: {:?}",
        gpu.output.dim()
    );
    Ok(())
}
