//! Helpers shared by the integration tests (`mod common;`): the GPU context and the torch
//! fixture reader. Each test binary uses a part of them.
#![allow(dead_code)]

pub mod fixture;

use std::sync::{Arc, OnceLock};

use wgpu_rnn::gpu::GpuContext;

/// One context per test binary, created on first use; its adapter is printed once.
///
/// `None` (with a message) when no adapter is found, unless `WGPU_RNN_REQUIRE_GPU=1`: then it
/// panics, so that CI cannot pass by skipping every GPU test.
pub fn gpu() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::new() {
        Ok(ctx) => {
            let info = ctx.adapter_info();
            eprintln!(
                "GPU tests run on: {} ({:?}, {:?}, driver {} {})",
                info.name, info.backend, info.device_type, info.driver, info.driver_info
            );
            Some(Arc::new(ctx))
        }
        Err(e) if std::env::var("WGPU_RNN_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("WGPU_RNN_REQUIRE_GPU=1 but no GPU context: {e}")
        }
        Err(e) => {
            eprintln!("skipping GPU test (set WGPU_RNN_REQUIRE_GPU=1 to fail instead): {e}");
            None
        }
    })
    .clone()
}

/// ‖a − b‖ / ‖b‖ (‖a − b‖ when b = 0).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}
