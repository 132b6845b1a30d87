//! Criterion benches at sizes small enough for lavapipe: CPU and GPU forward of an LSTM and a
//! GRU (B = 4, T = 16, I = H = 32). `cargo bench --bench rnn`; GPU benches are skipped with a
//! message when no adapter is found. For the full CPU-vs-GPU sweep use `wgpu-rnn bench`.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array3;
use rand::{RngExt, SeedableRng};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use wgpu_rnn::gpu::{GpuContext, GpuRnn};
use wgpu_rnn::{cpu, CellKind, RnnConfig, RnnParams, SequenceBatch};

const BATCH: usize = 4;
const SEQ: usize = 16;
const HIDDEN: usize = 32;

/// Seeded parameters and a seeded (T, B, I) input.
fn setup(cell: CellKind) -> (RnnParams<f32>, Array3<f32>) {
    let config = RnnConfig::new(cell, HIDDEN, HIDDEN);
    let params = RnnParams::init(&config, 7).expect("valid bench config");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let input =
        Array3::from_shape_simple_fn((SEQ, BATCH, HIDDEN), || rng.random_range(-1.0f32..1.0));
    (params, input)
}

fn forward(c: &mut Criterion) {
    let gpu = match GpuContext::new() {
        Ok(ctx) => Some(Arc::new(ctx)),
        Err(e) => {
            eprintln!("skipping GPU benches: {e}");
            None
        }
    };
    let mut group = c.benchmark_group("forward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let (params, input) = setup(cell);
        let name = cell.name();
        group.bench_function(format!("cpu/{name}"), |b| {
            b.iter(|| {
                let batch = SequenceBatch::new(input.view());
                black_box(cpu::forward(&params, &batch).expect("CPU forward"))
            })
        });
        if let Some(ctx) = &gpu {
            let model = GpuRnn::new(Arc::clone(ctx), &params).expect("GPU model");
            group.bench_function(format!("gpu/{name}"), |b| {
                b.iter(|| {
                    let batch = SequenceBatch::new(input.view());
                    let output = model.forward(&batch).expect("GPU forward");
                    ctx.sync().expect("GPU sync");
                    black_box(output)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
