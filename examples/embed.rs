//! An application that owns the GPU device and embeds wgpu-rnn in its own frame of work:
//!
//! 1. its own compute shader fills the input sequence x (T, B, I) in its own buffer;
//! 2. a 2-layer LSTM runs on that buffer, recorded into the application's command encoder;
//! 3. its own shader reads h_n (L, B, H) straight from the library's tensor and writes, per
//!    sequence, the squared norm of the top layer's final state;
//!
//! all in one submit of the application's encoder. The result is checked against the CPU
//! reference. `cargo run --release --example embed`

use std::sync::Arc;

use ndarray::Array3;
use wgpu_rnn::gpu::{GpuContext, GpuRnn, GpuSequenceBatch, GpuTensor};
use wgpu_rnn::{cpu, CellKind, RnnConfig, RnnError, RnnParams, SequenceBatch};

const T: usize = 12;
const B: usize = 3;
const I: usize = 5;
const H: usize = 33;
const LAYERS: usize = 2;

/// The application's shaders: `fill` writes x[i] = sin(0.37 i); `energy` sums h_n's top layer.
const APP_SHADERS: &str = r#"
@group(0) @binding(0) var<storage, read_write> x: array<f32>;          // (T, B, I)

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) id: vec3u) {
    if id.x < arrayLength(&x) {
        x[id.x] = sin(0.37 * f32(id.x));
    }
}

struct Sizes { batch: u32, hidden: u32, top: u32 }
@group(0) @binding(0) var<uniform> sizes: Sizes;
@group(0) @binding(1) var<storage, read> h_n: array<f32>;             // (L, B, H)
@group(0) @binding(2) var<storage, read_write> energy: array<f32>;    // (B)

@compute @workgroup_size(64)
fn sum_squares(@builtin(global_invocation_id) id: vec3u) {
    let b = id.x;
    if b >= sizes.batch {
        return;
    }
    var sum = 0.0;
    for (var j = 0u; j < sizes.hidden; j++) {
        let v = h_n[(sizes.top * sizes.batch + b) * sizes.hidden + j];
        sum += v * v;
    }
    energy[b] = sum;
}
"#;

fn main() -> Result<(), RnnError> {
    // The application's device (the high-performance adapter, its own limits).
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| RnnError::NoAdapter(e.to_string()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .map_err(|e| RnnError::Device(e.to_string()))?;
    println!("adapter: {}", adapter.get_info().name);
    let ctx = Arc::new(GpuContext::from_device(
        adapter.get_info(),
        device.clone(),
        queue.clone(),
    )?);

    // Its buffers: the input the application fills, and its result.
    let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let x_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app x"),
        size: (T * B * I * 4) as u64,
        usage: storage,
        mapped_at_creation: false,
    });
    let energy_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app energy"),
        size: (B * 4) as u64,
        usage: storage,
        mapped_at_creation: false,
    });
    let sizes = [B as u32, H as u32, (LAYERS - 1) as u32, 0];
    let sizes_buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app sizes"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&sizes_buffer, 0, bytemuck::cast_slice(&sizes));
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("app"),
        source: wgpu::ShaderSource::Wgsl(APP_SHADERS.into()),
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (fill, sum_squares) = (pipeline("fill"), pipeline("sum_squares"));

    // The model, and the application's buffer seen as the model's input.
    let config = RnnConfig::new(CellKind::Lstm, I, H).layers(LAYERS);
    let params = RnnParams::<f32>::init(&config, 7)?;
    let lstm = GpuRnn::new(Arc::clone(&ctx), &params)?;
    let x = GpuTensor::from_buffer(&ctx, &x_buffer, 0, &[T, B, I])?;

    // One frame: fill, LSTM, consume — one encoder, one submit.
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fill"),
            layout: &fill.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: x_buffer.as_entire_binding(),
            }],
        });
        pass.set_pipeline(&fill);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((T * B * I).div_ceil(64) as u32, 1, 1);
    }
    let out = lstm.record_forward(&mut encoder, &GpuSequenceBatch::new(&x))?;
    {
        let h_n = wgpu::BufferBinding {
            buffer: out.h_n.buffer(),
            offset: out.h_n.byte_offset(),
            size: wgpu::BufferSize::new(out.h_n.byte_len()),
        };
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("sum_squares"),
            layout: &sum_squares.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: sizes_buffer.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::Buffer(h_n),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: energy_buffer.as_entire_binding(),
                },
            ],
        });
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&sum_squares);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(B.div_ceil(64) as u32, 1, 1);
    }
    queue.submit([encoder.finish()]);

    // The result, read through the library's readback, against the CPU reference.
    let energy = GpuTensor::from_buffer(&ctx, &energy_buffer, 0, &[B])?.to_vec(&ctx)?;
    let host_x = Array3::from_shape_fn((T, B, I), |(t, b, i)| {
        (0.37 * ((t * B + b) * I + i) as f32).sin()
    });
    let reference = cpu::forward(&params, &SequenceBatch::new(host_x.view()))?;
    let mut worst = 0.0f32;
    for (b, &got) in energy.iter().enumerate() {
        let top = reference.h_n.index_axis(ndarray::Axis(0), LAYERS - 1);
        let want: f32 = top.row(b).iter().map(|v| v * v).sum();
        let rel = (got - want).abs() / want.abs().max(f32::MIN_POSITIVE);
        worst = worst.max(rel);
        println!("sequence {b}: |h_n|² GPU {got:.6}, CPU {want:.6}");
    }
    ctx.sync()?;
    if worst > 1e-5 {
        return Err(RnnError::Device(format!(
            "GPU and CPU differ: relative error {worst:.2e}"
        )));
    }
    println!("max relative error {worst:.2e}: ok");
    Ok(())
}
