//! The GPU-resident API: results equal the ndarray API bitwise, outputs feed a second model
//! without readback, long sequences run in time chunks in bounded memory.

mod common;

use std::sync::Arc;

use common::fixture::{relative_error, GRAD_TOL, OUTPUT_TOL};
use ndarray::Array3;
use rand::{RngExt, SeedableRng};
use wgpu_rnn::gpu::{GpuContext, GpuRnn, GpuSequenceBatch, GpuTensor, GpuUpstreamGrads};
use wgpu_rnn::{cpu, CellKind, RnnConfig, RnnError, RnnParams, SequenceBatch, UpstreamGrads};

fn random3(seed: u64, shape: (usize, usize, usize)) -> Array3<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0))
}

fn upload(ctx: &GpuContext, label: &str, a: &Array3<f32>) -> GpuTensor {
    GpuTensor::from_array(ctx, label, a.view().into_dyn()).expect("upload")
}

fn bits(a: &Array3<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn f64s(a: &Array3<f32>) -> Array3<f64> {
    a.mapv(f64::from)
}

/// Fails with the relative error when `got` differs from `want` by more than `tol`.
fn assert_close(name: &str, got: &Array3<f32>, want: &Array3<f64>, tol: f64) {
    let err = relative_error(f64s(got).view(), want.view());
    assert!(err <= tol, "{name}: rel_err {err:.3e} > {tol:.0e}");
}

#[test]
fn gpu_resident_results_equal_the_ndarray_api_bitwise() {
    let Some(ctx) = common::gpu() else { return };
    // Batch-first with B = T too, so that a transpose mistaken for a copy shows.
    for (seed, (b, t)) in [(5usize, 9usize), (4, 4)].into_iter().enumerate() {
        let seed = seed as u64;
        let config = RnnConfig::new(CellKind::Lstm, 7, 33)
            .layers(2)
            .bidirectional(true)
            .batch_first(true);
        let params = RnnParams::init(&config, 11 + seed).expect("init");
        let model = GpuRnn::new(Arc::clone(&ctx), &params)
            .expect("upload")
            .poison_outputs(true);
        let input = random3(20 + seed, (b, t, 7));
        let h0 = random3(30 + seed, (4, b, 33));
        let c0 = random3(40 + seed, (4, b, 33));
        let grad_output = random3(50 + seed, (b, t, 66));
        let grad_h_n = random3(60 + seed, (4, b, 33));
        let mut lengths: Vec<usize> = (0..b).map(|i| 1 + (i * 7) % t).collect();
        lengths[b / 2] = t;

        let batch = SequenceBatch::new(input.view())
            .h0(h0.view())
            .c0(c0.view())
            .lengths(&lengths);
        let host = model.forward(&batch).expect("forward");
        let (host_train, tape) = model.forward_train(&batch).expect("forward_train");
        let upstream = UpstreamGrads::new(grad_output.view()).h_n(grad_h_n.view());
        let host_grads = model.backward(&tape, &upstream).expect("backward");

        let (x, h0_g, c0_g) = (
            upload(&ctx, "x", &input),
            upload(&ctx, "h0", &h0),
            upload(&ctx, "c0", &c0),
        );
        let gpu_batch = GpuSequenceBatch::new(&x)
            .h0(&h0_g)
            .c0(&c0_g)
            .lengths(&lengths);
        let resident = model.forward_gpu(&gpu_batch).expect("forward_gpu");
        assert_eq!(resident.output.shape(), &[b, t, 66]);
        let resident = resident.to_host().expect("readback");
        let (train, tape) = model.forward_train_gpu(&gpu_batch).expect("train");
        let train = train.to_host().expect("readback");
        let (d_out, d_h_n) = (
            upload(&ctx, "d_out", &grad_output),
            upload(&ctx, "d_h_n", &grad_h_n),
        );
        let grads = model
            .backward_gpu(&tape, &GpuUpstreamGrads::new(&d_out).h_n(&d_h_n))
            .expect("backward_gpu")
            .to_host()
            .expect("readback");

        for (name, got, want) in [
            ("output", &resident.output, &host.output),
            ("h_n", &resident.h_n, &host.h_n),
            ("train output", &train.output, &host_train.output),
            ("grad input", &grads.input, &host_grads.input),
            ("grad h0", &grads.h0, &host_grads.h0),
        ] {
            assert_eq!(bits(got), bits(want), "{name} (B={b}, T={t})");
        }
        for ((name, g), (_, w)) in grads.params.named().iter().zip(host_grads.params.named()) {
            let g: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            let w: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
            assert_eq!(g, w, "grad {name}");
        }
        // And the CPU reference, so that both paths cannot be wrong the same way.
        let cpu = cpu::forward(
            &params.cast::<f64>(),
            &SequenceBatch::new(f64s(&input).view())
                .h0(f64s(&h0).view())
                .c0(f64s(&c0).view())
                .lengths(&lengths),
        )
        .expect("cpu");
        assert_close("output vs cpu", &resident.output, &cpu.output, OUTPUT_TOL);
    }
}

#[test]
fn output_fed_to_a_second_model_equals_the_stacked_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    let (t, b) = (6, 3);
    let lower =
        RnnParams::init(&RnnConfig::new(CellKind::Gru, 5, 7).bidirectional(true), 1).expect("init");
    let upper = RnnParams::init(&RnnConfig::new(CellKind::Lstm, 14, 9), 2).expect("init");
    let gpu_lower = GpuRnn::new(Arc::clone(&ctx), &lower)
        .expect("upload")
        .poison_outputs(true);
    let gpu_upper = GpuRnn::new(Arc::clone(&ctx), &upper)
        .expect("upload")
        .poison_outputs(true);
    let input = random3(3, (t, b, 5));
    let grad_output = random3(4, (t, b, 9));

    let x = upload(&ctx, "x", &input);
    let (mid, lower_tape) = gpu_lower
        .forward_train_gpu(&GpuSequenceBatch::new(&x))
        .expect("lower");
    let (top, upper_tape) = gpu_upper
        .forward_train_gpu(&GpuSequenceBatch::new(&mid.output))
        .expect("upper");
    let d_top = upload(&ctx, "d_top", &grad_output);
    let upper_grads = gpu_upper
        .backward_gpu(&upper_tape, &GpuUpstreamGrads::new(&d_top))
        .expect("upper backward");
    let lower_grads = gpu_lower
        .backward_gpu(&lower_tape, &GpuUpstreamGrads::new(&upper_grads.input))
        .expect("lower backward")
        .to_host()
        .expect("readback");
    let top = top.to_host().expect("readback");

    let (lower64, upper64) = (lower.cast::<f64>(), upper.cast::<f64>());
    let input64 = f64s(&input);
    let (cpu_mid, cpu_lower_tape) =
        cpu::forward_train(&lower64, &SequenceBatch::new(input64.view())).expect("cpu lower");
    let (cpu_top, cpu_upper_tape) =
        cpu::forward_train(&upper64, &SequenceBatch::new(cpu_mid.output.view()))
            .expect("cpu upper");
    let grad64 = f64s(&grad_output);
    let cpu_upper_grads = cpu::backward(
        &upper64,
        &cpu_upper_tape,
        &UpstreamGrads::new(grad64.view()),
    )
    .expect("cpu upper backward");
    let cpu_lower_grads = cpu::backward(
        &lower64,
        &cpu_lower_tape,
        &UpstreamGrads::new(cpu_upper_grads.input.view()),
    )
    .expect("cpu lower backward");

    assert_close("stacked output", &top.output, &cpu_top.output, OUTPUT_TOL);
    assert_close("stacked h_n", &top.h_n, &cpu_top.h_n, OUTPUT_TOL);
    assert_close(
        "grad input",
        &lower_grads.input,
        &cpu_lower_grads.input,
        GRAD_TOL,
    );
    for ((name, g), (_, w)) in lower_grads
        .params
        .named()
        .iter()
        .zip(cpu_lower_grads.params.named())
    {
        let err = relative_error(g.mapv(f64::from).view(), w.view());
        assert!(err <= GRAD_TOL, "lower grad {name}: rel_err {err:.3e}");
    }
}

#[test]
fn gpu_shapes_are_checked_with_clear_errors() {
    let Some(ctx) = common::gpu() else { return };
    let params = RnnParams::init(&RnnConfig::new(CellKind::Gru, 4, 6), 1).expect("init");
    let model = GpuRnn::new(Arc::clone(&ctx), &params).expect("upload");
    let x = upload(&ctx, "x", &random3(1, (3, 2, 5)));
    match model.forward_gpu(&GpuSequenceBatch::new(&x)) {
        Err(RnnError::Shape { tensor, .. }) => assert_eq!(tensor, "input"),
        other => panic!("wrong input width: {other:?}"),
    }
    let x = upload(&ctx, "x", &random3(2, (3, 2, 4)));
    let c0 = upload(&ctx, "c0", &random3(3, (1, 2, 6)));
    assert!(matches!(
        model.forward_gpu(&GpuSequenceBatch::new(&x).c0(&c0)),
        Err(RnnError::Config(_))
    ));
    let h0 = upload(&ctx, "h0", &random3(4, (1, 3, 6)));
    match model.forward_gpu(&GpuSequenceBatch::new(&x).h0(&h0)) {
        Err(RnnError::Shape { tensor, .. }) => assert_eq!(tensor, "h0"),
        other => panic!("wrong h0 batch: {other:?}"),
    }
    assert!(matches!(
        model.forward_gpu(&GpuSequenceBatch::new(&x).lengths(&[3, 4])),
        Err(RnnError::Lengths(_))
    ));
    let (_, tape) = model
        .forward_train_gpu(&GpuSequenceBatch::new(&x))
        .expect("train");
    let d_out = upload(&ctx, "d_out", &random3(5, (4, 2, 6)));
    match model.backward_gpu(&tape, &GpuUpstreamGrads::new(&d_out)) {
        Err(RnnError::Shape { tensor, .. }) => assert_eq!(tensor, "grad_output"),
        other => panic!("wrong grad_output length: {other:?}"),
    }
}

/// A long LSTM sequence (T = 3 000) in time chunks (777 steps: the last one shorter) equals
/// the unchunked run bitwise and the CPU reference.
#[test]
fn long_sequence_in_time_chunks_equals_unchunked_and_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let (t, b, i, h) = (3_000, 1, 3, 8);
    let params = RnnParams::init(&RnnConfig::new(CellKind::Lstm, i, h), 7).expect("init");
    let input = random3(8, (t, b, i));
    let batch = SequenceBatch::new(input.view());
    let run = |chunk| {
        let start = std::time::Instant::now();
        let out = GpuRnn::new(Arc::clone(&ctx), &params)
            .expect("upload")
            .poison_outputs(true)
            .with_time_chunk(chunk)
            .forward(&batch)
            .expect("forward");
        eprintln!("T = {t}, chunk {chunk}: {:?}", start.elapsed());
        out
    };
    let chunked = run(777);
    let whole = run(t);
    assert_eq!(bits(&chunked.output), bits(&whole.output), "output");
    assert_eq!(bits(&chunked.h_n), bits(&whole.h_n), "h_n");
    let c_bits = |out: &wgpu_rnn::ForwardOutput<f32>| out.c_n.as_ref().map(bits);
    assert_eq!(c_bits(&chunked), c_bits(&whole), "c_n");
    let cpu = cpu::forward(
        &params.cast::<f64>(),
        &SequenceBatch::new(f64s(&input).view()),
    )
    .expect("cpu");
    assert_close("output", &chunked.output, &cpu.output, OUTPUT_TOL);
    assert_close("h_n", &chunked.h_n, &cpu.h_n, OUTPUT_TOL);
}

/// Chunked inference through several layers (chunk by chunk when unidirectional, layer by layer
/// when bidirectional) with initial states, lengths and batch-first equals the unchunked run.
#[test]
fn chunked_multilayer_inference_equals_unchunked() {
    let Some(ctx) = common::gpu() else { return };
    let (t, b) = (23, 3);
    for (seed, cell, bidirectional) in [(1, CellKind::Gru, false), (2, CellKind::Lstm, true)] {
        let config = RnnConfig::new(cell, 5, 6)
            .layers(3)
            .bidirectional(bidirectional)
            .batch_first(true);
        let states = (3 * config.num_directions(), b, 6);
        let params = RnnParams::init(&config, seed).expect("init");
        let input = random3(seed + 10, (b, t, 5));
        let h0 = random3(seed + 20, states);
        let c0 = random3(seed + 30, states);
        let lengths = [t, 9, 17];
        let mut batch = SequenceBatch::new(input.view())
            .h0(h0.view())
            .lengths(&lengths);
        if cell == CellKind::Lstm {
            batch = batch.c0(c0.view());
        }
        let run = |chunk| {
            GpuRnn::new(Arc::clone(&ctx), &params)
                .expect("upload")
                .poison_outputs(true)
                .with_time_chunk(chunk)
                .forward(&batch)
                .expect("forward")
        };
        let whole = run(t);
        for chunk in [1, 4, 22] {
            let chunked = run(chunk);
            let what = format!("{cell:?} bidirectional={bidirectional} chunk {chunk}");
            assert_eq!(bits(&chunked.output), bits(&whole.output), "output, {what}");
            assert_eq!(bits(&chunked.h_n), bits(&whole.h_n), "h_n, {what}");
            let c_bits = |out: &wgpu_rnn::ForwardOutput<f32>| out.c_n.as_ref().map(bits);
            assert_eq!(c_bits(&chunked), c_bits(&whole), "c_n, {what}");
        }
    }
}

/// A context on the same adapter, with the same features, whose storage bindings and buffers
/// are capped at `bytes`.
fn capped_context(shared: &GpuContext, bytes: u32) -> Arc<GpuContext> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let want = shared.adapter_info();
    let adapter = adapters
        .into_iter()
        .find(|a| {
            let info = a.get_info();
            info.name == want.name && info.backend == want.backend
        })
        .expect("the shared context's adapter");
    let mut limits = adapter.limits();
    limits.max_storage_buffer_binding_size = bytes.into();
    limits.max_buffer_size = bytes.into();
    // The same features, so that both contexts run the same kernels (subgroup or not).
    let desc = wgpu::DeviceDescriptor {
        required_features: shared.features(),
        required_limits: limits,
        ..Default::default()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("device");
    Arc::new(GpuContext::from_device(adapter.get_info(), device, queue).expect("context"))
}

/// With buffers capped at 128 KiB, inference over T = 3 000 (output 94 KiB, input projections
/// of all steps 375 KiB) still runs: its workspace does not grow with T. Training, which keeps
/// O(T) activations, and an output above the cap are TooLarge errors before any work.
#[test]
fn inference_workspace_is_bounded_beyond_the_output() {
    let Some(shared) = common::gpu() else { return };
    let ctx = capped_context(&shared, 128 << 10);
    let (t, b, i, h) = (3_000, 1, 3, 8);
    let params = RnnParams::init(&RnnConfig::new(CellKind::Lstm, i, h), 9).expect("init");
    let input = random3(10, (t, b, i));
    let model = GpuRnn::new(Arc::clone(&ctx), &params)
        .expect("upload")
        .poison_outputs(true);
    let out = model
        .forward(&SequenceBatch::new(input.view()))
        .expect("chunked inference under a 128 KiB cap");
    let reference = GpuRnn::new(Arc::clone(&shared), &params)
        .expect("upload")
        .forward(&SequenceBatch::new(input.view()))
        .expect("uncapped");
    assert_eq!(bits(&out.output), bits(&reference.output), "output");
    assert!(matches!(
        model.forward_train(&SequenceBatch::new(input.view())),
        Err(RnnError::TooLarge(_))
    ));
    let too_long = random3(11, (6_000, b, i));
    match model.forward(&SequenceBatch::new(too_long.view())) {
        Err(RnnError::TooLarge(message)) => assert!(message.contains("output"), "{message}"),
        other => panic!("an output above the cap must be TooLarge: {other:?}"),
    }
    ctx.sync().expect("no device error was recorded");
}

/// Pass timing: off until started, a positive finite GPU time for the passes of a forward
/// while on (when the device has timestamp queries; CI's lavapipe has), off again after a stop;
/// timing does not change results.
#[test]
fn pass_timing_measures_the_sequence_kernels_and_changes_nothing() {
    let Some(ctx) = common::gpu() else { return };
    assert_eq!(ctx.stop_pass_timing().expect("stop"), None);
    let config = RnnConfig::new(CellKind::Gru, 5, 33);
    let params = RnnParams::init(&config, 3).expect("init");
    let model = GpuRnn::new(Arc::clone(&ctx), &params).expect("upload");
    let input = upload(&ctx, "x", &random3(4, (17, 3, 5)));
    let run = || {
        let out = model
            .forward_gpu(&GpuSequenceBatch::new(&input))
            .expect("forward_gpu");
        out.output.to_vec(&ctx).expect("readback")
    };
    let untimed = run();
    let timed_on = ctx.start_pass_timing();
    let has_timestamps = ctx.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(timed_on, has_timestamps);
    let timed = run();
    let ms = ctx.stop_pass_timing().expect("stop");
    assert_eq!(untimed, timed, "results changed under timing");
    if has_timestamps {
        let ms = ms.expect("a time while timing was on");
        assert!(ms.is_finite() && ms > 0.0, "GPU time {ms} ms");
    } else {
        assert_eq!(ms, None);
    }
    run();
    assert_eq!(
        ctx.stop_pass_timing().expect("stop"),
        None,
        "timing stays off"
    );
}
