//! GPU foundation: upload and readback, the utility kernels of shaders/util.wgsl against CPU
//! results, and errors (shape, size, validation) returned as `RnnError`, never panics.

mod common;

use common::gpu;
use ndarray::{ArrayD, IxDyn};
use rand::{RngExt, SeedableRng};
use wgpu_rnn::gpu::params::{FillParams, TransposeParams};
use wgpu_rnn::gpu::{Access, GpuContext, GpuTensor, Kernel, PipelineKey, Recorder};
use wgpu_rnn::RnnError;

const UTIL: &str = include_str!("../shaders/util.wgsl");
const ODD_LENGTHS: [usize; 5] = [1, 3, 33, 257, 100_003];

fn random_vec(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn util_key(entry: &'static str, workgroup_size: u32) -> PipelineKey {
    PipelineKey {
        label: "util",
        source: UTIL,
        entry,
        constants: vec![("WORKGROUP_SIZE", f64::from(workgroup_size))],
    }
}

/// Runs one util.wgsl entry point over `items` invocations through the library's launch path,
/// `storage` at bindings 1.., `params` at binding 0.
fn dispatch<P: bytemuck::Pod>(
    ctx: &GpuContext,
    entry: &'static str,
    workgroup_size: u32,
    storage: &[&GpuTensor],
    params: &P,
    items: usize,
) -> wgpu_rnn::Result<()> {
    let access = match storage.len() {
        1 => vec![Access::ReadWrite],
        n => [vec![Access::Read; n - 1], vec![Access::ReadWrite]].concat(),
    };
    let kernel = Kernel::new(
        ctx,
        util_key(entry, workgroup_size),
        &access,
        workgroup_size as usize,
    )?;
    let mut rec = Recorder::new(ctx);
    rec.dispatch_1d(&kernel, storage, params, items)?;
    rec.submit()?;
    ctx.sync()
}

/// Transposes (a, b, f) -> (b, a, f) on the GPU into a NaN-poisoned output.
fn gpu_transpose(
    ctx: &GpuContext,
    input: &[f32],
    (a, b, f): (usize, usize, usize),
    workgroup_size: u32,
) -> Vec<f32> {
    let x = GpuTensor::from_slice(ctx, "transpose input", &[a, b, f], input).unwrap();
    let out = GpuTensor::filled(ctx, "transpose output", &[b, a, f], f32::NAN).unwrap();
    let params = TransposeParams {
        a: a as u32,
        b: b as u32,
        f: f as u32,
    };
    dispatch(
        ctx,
        "transpose",
        workgroup_size,
        &[&x, &out],
        &params,
        a * b * f,
    )
    .unwrap();
    out.to_vec(ctx).unwrap()
}

fn cpu_transpose(input: &[f32], (a, b, f): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; input.len()];
    for ai in 0..a {
        for bi in 0..b {
            for fi in 0..f {
                out[(bi * a + ai) * f + fi] = input[(ai * b + bi) * f + fi];
            }
        }
    }
    out
}

/// Index and values of the first element where `got` differs from `want` (NaN counts as different).
fn first_mismatch(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    assert_eq!(got.len(), want.len(), "readback length");
    got.iter()
        .zip(want)
        .position(|(g, w)| g.to_bits() != w.to_bits())
        .map(|i| (i, got[i], want[i]))
}

#[test]
fn upload_then_readback_returns_the_same_values_for_odd_lengths() {
    let Some(ctx) = gpu() else { return };
    for (seed, &len) in ODD_LENGTHS.iter().enumerate() {
        let data = random_vec(seed as u64, len);
        let tensor = GpuTensor::from_slice(&ctx, "roundtrip", &[len], &data).unwrap();
        assert_eq!((tensor.len(), tensor.shape()), (len, &[len][..]));
        let back = tensor.to_vec(&ctx).unwrap();
        assert_eq!(first_mismatch(&back, &data), None, "len {len}");
    }
}

#[test]
fn write_overwrites_and_to_array_keeps_the_shape() {
    let Some(ctx) = gpu() else { return };
    let tensor = GpuTensor::filled(&ctx, "written", &[3, 11], f32::NAN).unwrap();
    let data = random_vec(7, 33);
    tensor.write(&ctx, &data).unwrap();
    let back = tensor.to_array(&ctx).unwrap();
    assert_eq!(back.shape(), &[3, 11]);
    assert_eq!(first_mismatch(back.as_slice().unwrap(), &data), None);
}

#[test]
fn from_array_copies_non_contiguous_views_in_logical_order() {
    let Some(ctx) = gpu() else { return };
    let a = ArrayD::from_shape_vec(IxDyn(&[5, 3]), random_vec(11, 15)).unwrap();
    let transposed = a.t();
    assert!(transposed.as_slice().is_none());
    let tensor = GpuTensor::from_array(&ctx, "transposed view", transposed.view()).unwrap();
    let back = tensor.to_array(&ctx).unwrap();
    assert_eq!(back, transposed);
}

#[test]
fn transpose_kernel_matches_cpu_on_odd_shapes() {
    let Some(ctx) = gpu() else { return };
    let shapes = [(1, 1, 1), (3, 1, 33), (33, 3, 1), (257, 3, 5), (3, 257, 33)];
    for (seed, &shape) in shapes.iter().enumerate() {
        let input = random_vec(100 + seed as u64, shape.0 * shape.1 * shape.2);
        let got = gpu_transpose(&ctx, &input, shape, 256);
        let want = cpu_transpose(&input, shape);
        if let Some((i, g, w)) = first_mismatch(&got, &want) {
            panic!("transpose {shape:?}: element {i} is {g}, expected {w}");
        }
        // Swapping the axes back restores the input.
        let round = gpu_transpose(&ctx, &got, (shape.1, shape.0, shape.2), 64);
        assert_eq!(first_mismatch(&round, &input), None, "round trip {shape:?}");
    }
}

#[test]
fn dispatch_grid_beyond_the_per_dimension_limit_covers_every_element() {
    let Some(ctx) = gpu() else { return };
    // Workgroups of one invocation: 100 003 workgroups need a 2-D grid.
    let shape = (100_003, 1, 1);
    let (x, y) = ctx.grid_1d(100_003).unwrap();
    assert!(y > 1 || ctx.limits().max_compute_workgroups_per_dimension >= 100_003);
    assert!(x as usize * y as usize >= 100_003);
    let input = random_vec(5, 100_003);
    let got = gpu_transpose(&ctx, &input, shape, 1);
    assert_eq!(first_mismatch(&got, &input), None);
}

#[test]
fn fill_kernel_writes_exactly_len_elements() {
    let Some(ctx) = gpu() else { return };
    for &len in &ODD_LENGTHS {
        let out = GpuTensor::filled(&ctx, "fill output", &[len + 1], f32::NAN).unwrap();
        let params = FillParams {
            len: len as u32,
            value: 2.5,
        };
        dispatch(&ctx, "fill", 64, &[&out], &params, len).unwrap();
        let got = out.to_vec(&ctx).unwrap();
        let mut want = vec![2.5; len];
        want.push(f32::NAN);
        assert_eq!(first_mismatch(&got, &want), None, "fill len {len}");
    }
}

#[test]
fn pipelines_are_cached_per_entry_point_and_constants() {
    let Some(ctx) = gpu() else { return };
    let a = ctx.pipeline(&util_key("fill", 64)).unwrap();
    let b = ctx.pipeline(&util_key("fill", 64)).unwrap();
    let c = ctx.pipeline(&util_key("fill", 128)).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
}

#[test]
fn shape_mismatch_on_upload_or_write_is_a_shape_error() {
    let Some(ctx) = gpu() else { return };
    let err = GpuTensor::from_slice(&ctx, "x", &[3, 11], &[0.5; 32]).unwrap_err();
    assert!(
        matches!(err, RnnError::Shape { ref tensor, .. } if tensor == "x"),
        "{err}"
    );
    let tensor = GpuTensor::zeros(&ctx, "h", &[4]).unwrap();
    let err = tensor.write(&ctx, &[1.0; 5]).unwrap_err();
    assert!(
        matches!(err, RnnError::Shape { ref tensor, .. } if tensor == "h"),
        "{err}"
    );
}

#[test]
fn tensor_above_the_binding_limit_is_too_large_before_allocation() {
    let Some(ctx) = gpu() else { return };
    let max_floats = (ctx.limits().max_storage_buffer_binding_size / 4) as usize;
    let err = GpuTensor::zeros(&ctx, "huge", &[max_floats + 1]).unwrap_err();
    assert!(matches!(err, RnnError::TooLarge(_)), "{err}");
    let err = GpuTensor::zeros(&ctx, "overflow", &[usize::MAX, 2]).unwrap_err();
    assert!(matches!(err, RnnError::TooLarge(_)), "{err}");
    ctx.sync().unwrap();
}

#[test]
fn empty_tensor_is_allowed_and_reads_back_nothing() {
    let Some(ctx) = gpu() else { return };
    let tensor = GpuTensor::zeros(&ctx, "empty", &[0, 3]).unwrap();
    assert!(tensor.is_empty());
    assert!(tensor.buffer().size() >= 4);
    assert_eq!(tensor.to_vec(&ctx).unwrap(), Vec::<f32>::new());
    assert_eq!(tensor.to_array(&ctx).unwrap().shape(), &[0, 3]);
    tensor.write(&ctx, &[]).unwrap();
}

#[test]
fn validation_errors_are_returned_as_device_errors_not_panics() {
    if gpu().is_none() {
        return;
    }
    // A context of its own: the shared one must not see this test's deliberate errors.
    let ctx = GpuContext::new().unwrap();
    // Mapping for reading and writing at once is invalid without MAPPABLE_PRIMARY_BUFFERS.
    let _invalid = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    let err = ctx.sync().unwrap_err();
    assert!(matches!(err, RnnError::Device(_)), "{err}");
    // transpose needs two storage bindings; a pipeline layout with one fails validation.
    let out = GpuTensor::zeros(&ctx, "out", &[8]).unwrap();
    let params = FillParams { len: 8, value: 1.0 };
    let err = dispatch(&ctx, "transpose", 64, &[&out], &params, 8).unwrap_err();
    assert!(matches!(err, RnnError::Device(_)), "{err}");
    // Reported once, then the context is usable again.
    ctx.sync().unwrap();
    let tensor = GpuTensor::from_slice(&ctx, "after", &[3], &[1.0, 2.0, 3.0]).unwrap();
    assert_eq!(tensor.to_vec(&ctx).unwrap(), [1.0, 2.0, 3.0]);

    let err = ctx.pipeline(&util_key("no_such_entry", 64)).unwrap_err();
    assert!(err.to_string().contains("no_such_entry"), "{err}");
    ctx.sync().unwrap();
}
