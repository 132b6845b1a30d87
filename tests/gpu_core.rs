//! The GPU host layer as an embedding application meets it: handles checked against the model
//! and context they are passed to, views and application buffers, steady calls that create no
//! buffers, recording into a caller's encoder, and readback as a future.

mod common;

use std::sync::Arc;

use ndarray::Array3;
use rand::{RngExt, SeedableRng};
use wgpu_rnn::gpu::{GpuContext, GpuRnn, GpuSequenceBatch, GpuTensor, GpuUpstreamGrads};
use wgpu_rnn::{CellKind, Nonlinearity, RnnConfig, RnnError, RnnParams, SequenceBatch};

fn random3(seed: u64, shape: (usize, usize, usize)) -> Array3<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array3::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0))
}

fn upload(ctx: &GpuContext, label: &str, a: &Array3<f32>) -> GpuTensor {
    GpuTensor::from_array(ctx, label, a.view().into_dyn()).expect("upload")
}

fn model(ctx: &Arc<GpuContext>, config: &RnnConfig, seed: u64) -> GpuRnn {
    let params = RnnParams::init(config, seed).expect("init");
    GpuRnn::new(Arc::clone(ctx), &params).expect("model")
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn expect_config_error(result: wgpu_rnn::Result<impl std::fmt::Debug>, words: &[&str]) {
    match result {
        Err(RnnError::Config(message)) => {
            for word in words {
                assert!(message.contains(word), "`{word}` missing from: {message}");
            }
        }
        other => panic!("expected a Config error naming {words:?}, got {other:?}"),
    }
}

#[test]
fn backward_refuses_a_tape_of_another_cell_nonlinearity_size_or_context() {
    let Some(ctx) = common::gpu() else { return };
    let other_ctx = Arc::new(GpuContext::new().expect("second context"));
    let (t, b, i, h) = (3, 2, 3, 5);
    let configs = [
        RnnConfig::new(CellKind::Lstm, i, h),
        RnnConfig::new(CellKind::Gru, i, h),
        RnnConfig::new(CellKind::Rnn(Nonlinearity::Tanh), i, h),
        RnnConfig::new(CellKind::Rnn(Nonlinearity::Relu), i, h),
        RnnConfig::new(CellKind::Lstm, i, h + 1),
    ];
    let models: Vec<GpuRnn> = configs.iter().map(|c| model(&ctx, c, 1)).collect();
    let x = random3(2, (t, b, i));
    let grad = random3(3, (t, b, h));
    for (a, recorder) in models.iter().enumerate() {
        let (_, tape) = recorder
            .forward_train(&SequenceBatch::new(x.view()))
            .expect("forward_train");
        for (m, other) in models.iter().enumerate() {
            let out = if m == 4 {
                random3(3, (t, b, h + 1))
            } else {
                grad.clone()
            };
            let upstream = wgpu_rnn::UpstreamGrads::new(out.view());
            let result = other.backward(&tape, &upstream);
            if a == m {
                result.expect("own tape");
            } else {
                expect_config_error(result, &["tape"]);
            }
        }
    }
    // The same configuration on another context.
    let elsewhere = model(&other_ctx, &configs[0], 1);
    let (_, tape) = models[0]
        .forward_train(&SequenceBatch::new(x.view()))
        .expect("forward_train");
    let upstream = wgpu_rnn::UpstreamGrads::new(grad.view());
    expect_config_error(elsewhere.backward(&tape, &upstream), &["tape", "context"]);
}

#[test]
fn tensors_of_another_context_are_refused_by_name() {
    let Some(ctx) = common::gpu() else { return };
    let other_ctx = GpuContext::new().expect("second context");
    let config = RnnConfig::new(CellKind::Gru, 3, 4);
    let gru = model(&ctx, &config, 5);
    let x = random3(6, (2, 3, 3));
    let foreign = upload(&other_ctx, "foreign input", &x);
    let result = gru.forward_gpu(&GpuSequenceBatch::new(&foreign));
    expect_config_error(result, &["foreign input", "context"]);
    // And in a gradient.
    let local = upload(&ctx, "input", &x);
    let (_, tape) = gru
        .forward_train_gpu(&GpuSequenceBatch::new(&local))
        .expect("forward_train_gpu");
    let foreign_grad = upload(&other_ctx, "foreign grad", &random3(7, (2, 3, 4)));
    let result = gru.backward_gpu(&tape, &GpuUpstreamGrads::new(&foreign_grad));
    expect_config_error(result, &["foreign grad", "context"]);
    // A readback through the wrong context.
    expect_config_error(local.to_vec(&other_ctx), &["input", "context"]);
}

#[test]
fn views_and_application_buffers_run_like_tensors_of_their_own() {
    let Some(ctx) = common::gpu() else { return };
    let (t, b, i, h) = (5, 3, 33, 7);
    let config = RnnConfig::new(CellKind::Lstm, i, h).layers(2);
    let lstm = model(&ctx, &config, 8);
    let x = random3(9, (t, b, i));
    let want = lstm
        .forward_gpu(&GpuSequenceBatch::new(&upload(&ctx, "x", &x)))
        .expect("forward")
        .to_host()
        .expect("readback");

    // The input as a view in the middle of a larger tensor.
    let align = ctx.limits().min_storage_buffer_offset_alignment as usize / 4;
    let len = t * b * i;
    let mut flat = vec![f32::NAN; 2 * align + len + 3];
    flat[align..align + len].copy_from_slice(x.as_slice().unwrap());
    let big = GpuTensor::from_slice(&ctx, "big", &[flat.len()], &flat).expect("big");
    let view = big.view(&ctx, align, &[t, b, i]).expect("view");
    let got = lstm
        .forward_gpu(&GpuSequenceBatch::new(&view))
        .expect("forward on a view")
        .to_host()
        .expect("readback");
    assert_eq!(
        bits(got.output.as_slice().unwrap()),
        bits(want.output.as_slice().unwrap())
    );
    expect_config_error(big.view(&ctx, align + 1, &[t, b, i]), &["multiple"]);
    expect_config_error(big.view(&ctx, 2 * align, &[t, b, i + 1]), &["past"]);
    expect_config_error(big.view(&ctx, usize::MAX, &[1]), &["past"]);

    // The application's own buffer, written by the application.
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let app = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("app"),
        size: (4 * (align + len)) as u64,
        usage,
        mapped_at_creation: false,
    });
    ctx.queue().write_buffer(
        &app,
        4 * align as u64,
        bytemuck::cast_slice(x.as_slice().unwrap()),
    );
    let wrapped = GpuTensor::from_buffer(&ctx, &app, 4 * align as u64, &[t, b, i]).expect("wrap");
    let got = lstm
        .forward_gpu(&GpuSequenceBatch::new(&wrapped))
        .expect("forward on an app buffer")
        .to_host()
        .expect("readback");
    assert_eq!(
        bits(got.h_n.as_slice().unwrap()),
        bits(want.h_n.as_slice().unwrap())
    );
    expect_config_error(
        GpuTensor::from_buffer(&ctx, &app, 4 * align as u64, &[t, b, i + 1]),
        &["past"],
    );
    let uniform_only = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("uniform"),
        size: 64,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    expect_config_error(
        GpuTensor::from_buffer(&ctx, &uniform_only, 0, &[4]),
        &["STORAGE"],
    );
}

/// Buffers created by the second and third of three `call`s.
fn buffers_after_warmup(ctx: &GpuContext, mut call: impl FnMut()) -> u64 {
    call();
    let before = ctx.counters();
    call();
    call();
    (ctx.counters() - before).buffers_created
}

#[test]
fn steady_calls_of_one_shape_create_no_buffers() {
    if common::gpu().is_none() {
        return;
    }
    // A context of its own: other tests' calls must not count.
    let ctx = Arc::new(GpuContext::new().expect("context"));
    for config in [
        RnnConfig::new(CellKind::Lstm, 3, 33).layers(2),
        RnnConfig::new(CellKind::Gru, 3, 5)
            .bidirectional(true)
            .batch_first(true),
    ] {
        let rnn = model(&ctx, &config, 10);
        let (t, b) = (7, 3);
        let x = random3(11, config.sequence_shape(t, b, 3).into());
        let batch = SequenceBatch::new(x.view());
        let x_gpu = upload(&ctx, "x", &x);
        let grad = random3(12, config.sequence_shape(t, b, config.output_size()).into());
        let grad_gpu = upload(&ctx, "grad", &grad);

        let created = buffers_after_warmup(&ctx, || {
            rnn.forward_gpu(&GpuSequenceBatch::new(&x_gpu))
                .expect("forward_gpu");
        });
        assert_eq!(created, 0, "{config:?}: forward_gpu");
        let created = buffers_after_warmup(&ctx, || {
            rnn.forward(&batch).expect("forward");
        });
        assert_eq!(created, 0, "{config:?}: forward (host arrays)");
        let created = buffers_after_warmup(&ctx, || {
            let (_, tape) = rnn
                .forward_train_gpu(&GpuSequenceBatch::new(&x_gpu))
                .expect("forward_train_gpu");
            rnn.backward_gpu(&tape, &GpuUpstreamGrads::new(&grad_gpu))
                .expect("backward_gpu");
        });
        assert_eq!(created, 0, "{config:?}: training forward + backward");
        if !config.bidirectional {
            let mut stream = rnn.stream(b).expect("stream");
            let xk = random3(13, (2, b, 3));
            let created = buffers_after_warmup(&ctx, || {
                stream.step(xk.view()).expect("step");
            });
            assert_eq!(created, 0, "{config:?}: stream step");
        }
    }
}

#[test]
fn recording_into_a_caller_encoder_equals_the_submitted_calls() {
    let Some(ctx) = common::gpu() else { return };
    let (t, b, i, h) = (6, 3, 4, 33);
    let config = RnnConfig::new(CellKind::Gru, i, h).layers(2);
    let gru = model(&ctx, &config, 14).poison_outputs(true);
    let x = upload(&ctx, "x", &random3(15, (t, b, i)));
    let grad = upload(&ctx, "grad", &random3(16, (t, b, h)));
    let batch = GpuSequenceBatch::new(&x);
    let submitted = gru
        .forward_gpu(&batch)
        .expect("forward")
        .to_host()
        .expect("host");
    let (_, tape) = gru.forward_train_gpu(&batch).expect("forward_train");
    let grads = gru
        .backward_gpu(&tape, &GpuUpstreamGrads::new(&grad))
        .expect("backward")
        .to_host()
        .expect("host");

    let before = ctx.counters();
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    let recorded = gru
        .record_forward(&mut encoder, &batch)
        .expect("record_forward");
    let (_, tape) = gru
        .record_forward_train(&mut encoder, &batch)
        .expect("record_forward_train");
    let recorded_grads = gru
        .record_backward(&mut encoder, &tape, &GpuUpstreamGrads::new(&grad))
        .expect("record_backward");
    assert_eq!(
        (ctx.counters() - before).submits,
        0,
        "recording submits nothing"
    );
    ctx.queue().submit([encoder.finish()]);
    let got = recorded.to_host().expect("host");
    assert_eq!(
        bits(got.output.as_slice().unwrap()),
        bits(submitted.output.as_slice().unwrap())
    );
    assert_eq!(
        bits(got.h_n.as_slice().unwrap()),
        bits(submitted.h_n.as_slice().unwrap())
    );
    let got_grads = recorded_grads.to_host().expect("host");
    assert_eq!(
        bits(got_grads.input.as_slice().unwrap()),
        bits(grads.input.as_slice().unwrap())
    );
    let w =
        |g: &wgpu_rnn::Gradients<f32>| g.params.layers[1].w_hh.iter().copied().collect::<Vec<_>>();
    assert_eq!(bits(&w(&got_grads)), bits(&w(&grads)));

    // A stream step recorded into an encoder advances the state like `step`.
    let xk = random3(17, (2, b, i));
    let mut stepped = gru.stream(b).expect("stream");
    let want = stepped.step(xk.view()).expect("step");
    let mut stream = gru.stream(b).expect("stream");
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
    let out = stream
        .record_step(&mut encoder, &upload(&ctx, "xk", &xk))
        .expect("record_step");
    ctx.queue().submit([encoder.finish()]);
    let got = out.output.to_vec(&ctx).expect("readback");
    assert_eq!(bits(&got), bits(want.as_slice().unwrap()));
    assert_eq!(
        bits(stream.state().unwrap().0.as_slice().unwrap()),
        bits(stepped.state().unwrap().0.as_slice().unwrap())
    );
}

#[test]
fn readback_is_a_future_that_resolves_without_a_blocking_wait() {
    let Some(ctx) = common::gpu() else { return };
    for len in [1usize, 3, 33, 257] {
        let values: Vec<f32> = (0..len).map(|k| (k as f32 * 0.37).sin()).collect();
        let tensor = GpuTensor::from_slice(&ctx, "values", &[len], &values).expect("upload");
        let readback = tensor.read(&ctx).expect("read");
        // pollster only parks the thread between polls; the future polls the device itself.
        let got = pollster::block_on(readback).expect("values");
        assert_eq!(bits(&got), bits(&values), "len {len}");
    }
    // A readback dropped before it resolved leaves its staging buffer usable by the next.
    let tensor = GpuTensor::from_slice(&ctx, "again", &[3], &[1.0, 2.0, 3.0]).expect("upload");
    drop(tensor.read(&ctx).expect("read"));
    assert_eq!(tensor.to_vec(&ctx).expect("readback"), [1.0, 2.0, 3.0]);
}

#[test]
fn a_device_error_is_reported_by_the_call_that_caused_it_not_by_others() {
    if common::gpu().is_none() {
        return;
    }
    let ctx = Arc::new(GpuContext::new().expect("context"));
    let lstm = model(&ctx, &RnnConfig::new(CellKind::Lstm, 3, 4), 18);
    let x = random3(19, (4, 2, 3));
    // Another thread misuses the device directly (MAP_READ with MAP_WRITE is invalid).
    std::thread::scope(|s| {
        s.spawn(|| {
            let _invalid = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("invalid"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
                mapped_at_creation: false,
            });
        });
    });
    // The library's calls are not blamed for it...
    lstm.forward(&SequenceBatch::new(x.view()))
        .expect("forward does not report another call's error");
    // ...and the application still finds its own error where uncaptured errors go.
    assert!(matches!(ctx.sync(), Err(RnnError::Device(_))));
    ctx.sync().expect("reported once");
}
