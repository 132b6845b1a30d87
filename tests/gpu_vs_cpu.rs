//! The GPU model against the CPU reference (computed in f64 from the same f32 values) and the
//! torch fixtures: every cell and option, odd sizes, outputs poisoned with NaN before each run.

mod common;

use std::sync::Arc;

use common::fixture::{check_fixture, relative_error, Fixture, GRAD_TOL, OUTPUT_TOL};
use ndarray::{Array3, ArrayView3, Axis};
use rand::{RngExt, SeedableRng};
use wgpu_rnn::gpu::{GpuContext, GpuRnn};
use wgpu_rnn::{
    cpu, CellKind, ForwardOutput, Gradients, Nonlinearity, RnnConfig, RnnError, RnnParams,
    SequenceBatch, UpstreamGrads,
};

const CELLS: [CellKind; 5] = [
    CellKind::Rnn(Nonlinearity::Tanh),
    CellKind::Rnn(Nonlinearity::Relu),
    CellKind::Rnn(Nonlinearity::Identity),
    CellKind::Lstm,
    CellKind::Gru,
];

/// One randomized case: sizes, options and the seed of every value.
#[derive(Clone, Debug)]
struct Case {
    cell: CellKind,
    h: usize,
    b: usize,
    t: usize,
    i: usize,
    layers: usize,
    bidirectional: bool,
    bias: bool,
    batch_first: bool,
    initial_state: bool,
    varlen: bool,
    state_grads: bool,
    seed: u64,
}

impl Case {
    fn config(&self) -> RnnConfig {
        RnnConfig::new(self.cell, self.i, self.h)
            .layers(self.layers)
            .bidirectional(self.bidirectional)
            .bias(self.bias)
            .batch_first(self.batch_first)
    }
}

/// Seeded values in [-scale, scale); never all zero.
fn random3(rng: &mut rand::rngs::StdRng, shape: (usize, usize, usize), scale: f32) -> Array3<f32> {
    Array3::from_shape_fn(shape, |_| rng.random_range(-scale..scale))
}

/// The inputs of one case, owned.
struct Inputs {
    params: RnnParams<f32>,
    input: Array3<f32>,
    h0: Option<Array3<f32>>,
    c0: Option<Array3<f32>>,
    lengths: Option<Vec<usize>>,
    grad_output: Array3<f32>,
    grad_h_n: Option<Array3<f32>>,
    grad_c_n: Option<Array3<f32>>,
}

impl Inputs {
    fn new(case: &Case, input_scale: f32) -> Self {
        let config = case.config();
        let mut rng = rand::rngs::StdRng::seed_from_u64(case.seed);
        let params = RnnParams::init(&config, case.seed ^ 0x5eed).expect("init");
        let seq = |f| {
            if case.batch_first {
                (case.b, case.t, f)
            } else {
                (case.t, case.b, f)
            }
        };
        let state = (case.layers * config.num_directions(), case.b, case.h);
        let lstm = case.cell == CellKind::Lstm;
        let input = random3(&mut rng, seq(case.i), input_scale);
        let h0 = case.initial_state.then(|| random3(&mut rng, state, 1.0));
        let c0 = (case.initial_state && lstm).then(|| random3(&mut rng, state, 1.0));
        // Unsorted lengths in 1..=T with at least one full-length sequence.
        let lengths = case.varlen.then(|| {
            let mut l: Vec<usize> = (0..case.b).map(|_| rng.random_range(1..=case.t)).collect();
            l[case.b / 2] = case.t;
            l
        });
        let grad_output = random3(&mut rng, seq(config.output_size()), 1.0);
        let grad_h_n = case.state_grads.then(|| random3(&mut rng, state, 1.0));
        let grad_c_n = (case.state_grads && lstm).then(|| random3(&mut rng, state, 1.0));
        Inputs {
            params,
            input,
            h0,
            c0,
            lengths,
            grad_output,
            grad_h_n,
            grad_c_n,
        }
    }

    fn batch(&self) -> SequenceBatch<'_, f32> {
        SequenceBatch {
            input: self.input.view(),
            h0: self.h0.as_ref().map(|a| a.view()),
            c0: self.c0.as_ref().map(|a| a.view()),
            lengths: self.lengths.as_deref(),
        }
    }

    fn upstream(&self) -> UpstreamGrads<'_, f32> {
        UpstreamGrads {
            output: self.grad_output.view(),
            h_n: self.grad_h_n.as_ref().map(|a| a.view()),
            c_n: self.grad_c_n.as_ref().map(|a| a.view()),
        }
    }
}

fn to_f64(a: &Array3<f32>) -> Array3<f64> {
    a.mapv(f64::from)
}

/// CPU reference in f64 from the same f32 values, cast back to f32 for comparison.
fn reference(inputs: &Inputs) -> (ForwardOutput<f64>, Gradients<f64>) {
    let params = inputs.params.cast::<f64>();
    let input = to_f64(&inputs.input);
    let h0 = inputs.h0.as_ref().map(to_f64);
    let c0 = inputs.c0.as_ref().map(to_f64);
    let batch = SequenceBatch {
        input: input.view(),
        h0: h0.as_ref().map(|a| a.view()),
        c0: c0.as_ref().map(|a| a.view()),
        lengths: inputs.lengths.as_deref(),
    };
    let (output, tape) = cpu::forward_train(&params, &batch).expect("cpu forward");
    let grad_output = to_f64(&inputs.grad_output);
    let grad_h_n = inputs.grad_h_n.as_ref().map(to_f64);
    let grad_c_n = inputs.grad_c_n.as_ref().map(to_f64);
    let upstream = UpstreamGrads {
        output: grad_output.view(),
        h_n: grad_h_n.as_ref().map(|a| a.view()),
        c_n: grad_c_n.as_ref().map(|a| a.view()),
    };
    let grads = cpu::backward(&params, &tape, &upstream).expect("cpu backward");
    (output, grads)
}

fn gpu_run(ctx: &Arc<GpuContext>, inputs: &Inputs) -> (ForwardOutput<f32>, Gradients<f32>) {
    let model = GpuRnn::new(Arc::clone(ctx), &inputs.params)
        .expect("upload")
        .poison_outputs(true);
    let (output, tape) = model
        .forward_train(&inputs.batch())
        .expect("gpu forward_train");
    let grads = model
        .backward(&tape, &inputs.upstream())
        .expect("gpu backward");
    (output, grads)
}

/// (name, ‖got − ref‖/‖ref‖, tolerance).
fn row(
    name: String,
    got: ndarray::ArrayViewD<f32>,
    reference: ndarray::ArrayViewD<f64>,
    tol: f64,
) -> (String, f64, f64) {
    let got = got.mapv(f64::from);
    (name, relative_error(got.view(), reference), tol)
}

/// Every (name, got, reference, tolerance) of a forward + backward result.
fn compare(
    got: &(ForwardOutput<f32>, Gradients<f32>),
    reference: &(ForwardOutput<f64>, Gradients<f64>),
) -> Vec<(String, f64, f64)> {
    let mut rows = Vec::new();
    let (out, grads) = got;
    let (rout, rgrads) = reference;
    rows.push(row(
        "output".into(),
        out.output.view().into_dyn(),
        rout.output.view().into_dyn(),
        OUTPUT_TOL,
    ));
    rows.push(row(
        "h_n".into(),
        out.h_n.view().into_dyn(),
        rout.h_n.view().into_dyn(),
        OUTPUT_TOL,
    ));
    match (&out.c_n, &rout.c_n) {
        (Some(g), Some(r)) => rows.push(row(
            "c_n".into(),
            g.view().into_dyn(),
            r.view().into_dyn(),
            OUTPUT_TOL,
        )),
        (None, None) => {}
        _ => rows.push(("c_n presence".into(), f64::INFINITY, 0.0)),
    }
    rows.push(row(
        "grad.input".into(),
        grads.input.view().into_dyn(),
        rgrads.input.view().into_dyn(),
        GRAD_TOL,
    ));
    rows.push(row(
        "grad.h0".into(),
        grads.h0.view().into_dyn(),
        rgrads.h0.view().into_dyn(),
        GRAD_TOL,
    ));
    match (&grads.c0, &rgrads.c0) {
        (Some(g), Some(r)) => rows.push(row(
            "grad.c0".into(),
            g.view().into_dyn(),
            r.view().into_dyn(),
            GRAD_TOL,
        )),
        (None, None) => {}
        _ => rows.push(("grad.c0 presence".into(), f64::INFINITY, 0.0)),
    }
    let reference: Vec<_> = rgrads.params.named();
    let named = grads.params.named();
    if named.len() != reference.len() {
        rows.push(("parameter gradient count".into(), f64::INFINITY, 0.0));
    }
    for ((name, g), (_, r)) in named.iter().zip(&reference) {
        rows.push(row(format!("grad.{name}"), g.view(), r.view(), GRAD_TOL));
    }
    rows
}

/// Runs `cases` and fails listing every tensor of every case over its tolerance.
fn check_cases(ctx: &Arc<GpuContext>, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let inputs = Inputs::new(case, 1.0);
        let got = gpu_run(ctx, &inputs);
        let want = reference(&inputs);
        for (name, err, tol) in compare(&got, &want) {
            // A NaN error is a failure too.
            if err.is_nan() || err > tol {
                failures.push(format!(
                    "{case:?}\n    {name}: rel_err {err:.3e} > {tol:.0e}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "GPU differs from the CPU reference:\n{}",
        failures.join("\n")
    );
}

/// The sweep for one cell: odd sizes, every option at least once.
fn sweep(cell: CellKind, seed: u64) -> Vec<Case> {
    let base = Case {
        cell,
        h: 1,
        b: 1,
        t: 1,
        i: 2,
        layers: 1,
        bidirectional: false,
        bias: true,
        batch_first: false,
        initial_state: false,
        varlen: false,
        state_grads: false,
        seed,
    };
    vec![
        base.clone(),
        Case {
            h: 3,
            b: 5,
            t: 37,
            i: 4,
            layers: 2,
            bidirectional: true,
            varlen: true,
            initial_state: true,
            state_grads: true,
            seed: seed + 1,
            ..base.clone()
        },
        // B = 33: three 16-row step tiles, the last ragged, and both rows of each invocation.
        Case {
            h: 33,
            b: 33,
            t: 2,
            i: 7,
            layers: 3,
            bias: false,
            batch_first: true,
            varlen: true,
            state_grads: true,
            seed: seed + 2,
            ..base.clone()
        },
        Case {
            h: 65,
            b: 1,
            t: 37,
            i: 3,
            bidirectional: true,
            batch_first: true,
            initial_state: true,
            seed: seed + 3,
            ..base.clone()
        },
        // B = 3: the one-workgroup-per-unit steps with several rows, forward and backward.
        Case {
            h: 33,
            b: 3,
            t: 9,
            i: 5,
            layers: 2,
            initial_state: true,
            varlen: true,
            state_grads: true,
            seed: seed + 4,
            ..base
        },
    ]
}

#[test]
fn rnn_tanh_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_cases(&ctx, &sweep(CELLS[0], 100));
}

#[test]
fn rnn_relu_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_cases(&ctx, &sweep(CELLS[1], 200));
}

#[test]
fn rnn_identity_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_cases(&ctx, &sweep(CELLS[2], 300));
}

#[test]
fn lstm_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_cases(&ctx, &sweep(CELLS[3], 400));
}

#[test]
fn gru_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    check_cases(&ctx, &sweep(CELLS[4], 500));
}

/// H = 257 crosses the 64-unit workgroup tile and the 64-wide GEMM tiles with a ragged edge.
#[test]
fn wide_hidden_257_matches_cpu_reference() {
    let Some(ctx) = common::gpu() else { return };
    let case = |cell, seed| Case {
        cell,
        h: 257,
        b: 5,
        t: 3,
        i: 33,
        layers: 2,
        bidirectional: true,
        bias: true,
        batch_first: false,
        initial_state: true,
        varlen: true,
        state_grads: true,
        seed,
    };
    check_cases(&ctx, &[case(CellKind::Lstm, 600), case(CellKind::Gru, 601)]);
}

#[test]
fn torch_fixtures_pass_on_gpu() {
    let Some(ctx) = common::gpu() else { return };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no fixtures in {dir}");
    let mut failures = Vec::new();
    for path in &paths {
        let fx = Fixture::<f32>::load(path).expect("fixture");
        let model = GpuRnn::new(Arc::clone(&ctx), &fx.params)
            .expect("upload")
            .poison_outputs(true);
        let (output, tape) = model.forward_train(&fx.batch()).expect("forward_train");
        let grads = model.backward(&tape, &fx.upstream()).expect("backward");
        for check in check_fixture(&fx, &output, &grads) {
            if !check.passed() {
                failures.push(format!("{}: {check}", fx.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failed on the GPU:\n{}",
        failures.join("\n")
    );
}

fn bidirectional_lstm_case() -> Case {
    Case {
        cell: CellKind::Lstm,
        h: 33,
        b: 5,
        t: 9,
        i: 7,
        layers: 2,
        bidirectional: true,
        bias: true,
        batch_first: false,
        initial_state: true,
        varlen: true,
        state_grads: true,
        seed: 700,
    }
}

fn bits(a: &Array3<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn repeated_runs_are_bitwise_identical() {
    let Some(ctx) = common::gpu() else { return };
    let inputs = Inputs::new(&bidirectional_lstm_case(), 1.0);
    let (out1, g1) = gpu_run(&ctx, &inputs);
    let (out2, g2) = gpu_run(&ctx, &inputs);
    assert_eq!(bits(&out1.output), bits(&out2.output), "output");
    assert_eq!(bits(&g1.input), bits(&g2.input), "grad input");
    assert_eq!(bits(&g1.h0), bits(&g2.h0), "grad h0");
    for ((name, a), (_, b)) in g1.params.named().iter().zip(g2.params.named().iter()) {
        let a: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
        let b: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
        assert_eq!(a, b, "grad {name}");
    }
}

#[test]
fn inference_forward_equals_training_forward() {
    let Some(ctx) = common::gpu() else { return };
    let inputs = Inputs::new(&bidirectional_lstm_case(), 1.0);
    let model = GpuRnn::new(Arc::clone(&ctx), &inputs.params)
        .expect("upload")
        .poison_outputs(true);
    let inference = model.forward(&inputs.batch()).expect("forward");
    let (train, _) = model.forward_train(&inputs.batch()).expect("forward_train");
    assert_eq!(bits(&inference.output), bits(&train.output));
    assert_eq!(bits(&inference.h_n), bits(&train.h_n));
}

#[test]
fn stream_steps_equal_full_forward() {
    let Some(ctx) = common::gpu() else { return };
    for (cell, seed) in [
        (CellKind::Lstm, 800),
        (CellKind::Gru, 801),
        (CellKind::Rnn(Nonlinearity::Tanh), 802),
    ] {
        let case = Case {
            cell,
            h: 33,
            b: 3,
            t: 7,
            i: 5,
            layers: 2,
            bidirectional: false,
            bias: true,
            batch_first: false,
            initial_state: false,
            varlen: false,
            state_grads: false,
            seed,
        };
        let inputs = Inputs::new(&case, 1.0);
        let model = GpuRnn::new(Arc::clone(&ctx), &inputs.params).expect("upload");
        let full = model.forward(&inputs.batch()).expect("forward");
        for chunk in [1, 3] {
            let mut stream = model.stream(case.b).expect("stream");
            let mut pieces = Vec::new();
            for start in (0..case.t).step_by(chunk) {
                let end = (start + chunk).min(case.t);
                let x = inputs.input.slice_axis(Axis(0), (start..end).into());
                pieces.push(stream.step(x).expect("step"));
            }
            let views: Vec<ArrayView3<f32>> = pieces.iter().map(|p| p.view()).collect();
            let streamed = ndarray::concatenate(Axis(0), &views).expect("concatenate");
            let err = relative_error(streamed.view(), full.output.view());
            assert!(
                err <= 1e-6,
                "{cell:?} chunk {chunk}: stream output rel_err {err:.3e}"
            );
            let (h, c) = stream.state().expect("state");
            assert!(
                relative_error(h.view(), full.h_n.view()) <= 1e-6,
                "{cell:?} chunk {chunk}: h"
            );
            if let (Some(c), Some(c_n)) = (c, &full.c_n) {
                assert!(
                    relative_error(c.view(), c_n.view()) <= 1e-6,
                    "{cell:?} chunk {chunk}: c"
                );
            }
            stream.reset().expect("reset");
            let (h, _) = stream.state().expect("state after reset");
            assert!(h.iter().all(|&v| v == 0.0), "reset leaves a nonzero state");
        }
    }
}

#[test]
fn large_inputs_give_finite_results() {
    let Some(ctx) = common::gpu() else { return };
    for (cell, seed) in CELLS.iter().zip(900..) {
        let case = Case {
            cell: *cell,
            h: 3,
            b: 2,
            t: 4,
            i: 3,
            layers: 1,
            bidirectional: true,
            bias: true,
            batch_first: false,
            initial_state: false,
            varlen: false,
            state_grads: true,
            seed,
        };
        // |x| up to 200: pre-activations far beyond ±50.
        let inputs = Inputs::new(&case, 200.0);
        let (out, grads) = gpu_run(&ctx, &inputs);
        assert!(out.output.iter().all(|v| v.is_finite()), "{cell:?}: output");
        assert!(
            grads.input.iter().all(|v| v.is_finite()),
            "{cell:?}: grad input"
        );
        if !matches!(
            cell,
            CellKind::Rnn(Nonlinearity::Relu | Nonlinearity::Identity)
        ) {
            assert!(
                out.output.iter().all(|v| v.abs() <= 1.0),
                "{cell:?}: |h| > 1"
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let Some(ctx) = common::gpu() else { return };
    let inputs = Inputs::new(&bidirectional_lstm_case(), 1.0);
    let model = GpuRnn::new(Arc::clone(&ctx), &inputs.params).expect("upload");
    let wrong_input = Array3::<f32>::ones((9, 5, 6));
    assert!(matches!(
        model.forward(&SequenceBatch::new(wrong_input.view())),
        Err(RnnError::Shape { .. })
    ));
    let wrong_h0 = Array3::<f32>::ones((3, 5, 33));
    assert!(matches!(
        model.forward(&inputs.batch().h0(wrong_h0.view())),
        Err(RnnError::Shape { .. })
    ));
    let zero_length = [1, 2, 0, 4, 5];
    assert!(matches!(
        model.forward(&SequenceBatch::new(inputs.input.view()).lengths(&zero_length)),
        Err(RnnError::Lengths(_))
    ));
    let (_, tape) = model.forward_train(&inputs.batch()).expect("forward_train");
    let wrong_grad = Array3::<f32>::ones((9, 5, 33));
    assert!(matches!(
        model.backward(&tape, &UpstreamGrads::new(wrong_grad.view())),
        Err(RnnError::Shape { .. })
    ));
    assert!(matches!(model.stream(5), Err(RnnError::Unsupported(_))));
    let mut other = inputs.params.clone();
    other.config.hidden_size = 34;
    assert!(GpuRnn::new(Arc::clone(&ctx), &other).is_err());

    let uni = Case {
        bidirectional: false,
        ..bidirectional_lstm_case()
    };
    let uni = Inputs::new(&uni, 1.0);
    let model = GpuRnn::new(Arc::clone(&ctx), &uni.params).expect("upload");
    let mut stream = model.stream(5).expect("stream");
    let wrong_batch = Array3::<f32>::ones((2, 4, 7));
    assert!(matches!(
        stream.step(wrong_batch.view()),
        Err(RnnError::Shape { .. })
    ));
    let nan = Array3::<f32>::from_elem((1, 5, 7), f32::NAN);
    assert!(matches!(
        stream.step(nan.view()),
        Err(RnnError::NonFinite { .. })
    ));
}

/// `half_recurrent_weights`: inference reads W_hh rounded to f16 and stays within f16 rounding
/// of the CPU reference, with the rows kernel (B ≤ 8) and the tiled one, odd H (rows of f16
/// pairs end half-filled); streams use it too; the training forward keeps f32 (bitwise the
/// model without it); `update_params` refreshes the f16 copy.
#[test]
fn half_recurrent_weights_stay_within_f16_rounding() {
    let Some(ctx) = common::gpu() else { return };
    let base = Case {
        cell: CellKind::Lstm,
        h: 33,
        b: 1,
        t: 20,
        i: 5,
        layers: 1,
        bidirectional: false,
        bias: true,
        batch_first: false,
        initial_state: true,
        varlen: false,
        state_grads: false,
        seed: 700,
    };
    let cases = [
        base.clone(),
        Case {
            cell: CellKind::Gru,
            h: 257,
            b: 3,
            t: 5,
            layers: 2,
            bidirectional: true,
            seed: 701,
            ..base.clone()
        },
        Case {
            cell: CellKind::Rnn(Nonlinearity::Tanh),
            b: 33,
            t: 6,
            varlen: true,
            seed: 702,
            ..base.clone()
        },
        Case {
            h: 64,
            b: 17,
            t: 9,
            layers: 2,
            batch_first: true,
            seed: 703,
            ..base.clone()
        },
    ];
    // f16 keeps 11 significant bits: errors near 1e-4, far above f32's 1e-7 (so a path that
    // ignored the option fails too).
    let within_f16 = |what: &str, case: &Case, got: &Array3<f32>, want: &Array3<f64>| {
        let err = relative_error(got.mapv(f64::from).view(), want.view());
        assert!(
            (1e-6..1e-2).contains(&err),
            "{case:?}\n    {what}: rel_err {err:.3e} outside [1e-6, 1e-2)"
        );
    };
    for case in &cases {
        let inputs = Inputs::new(case, 1.0);
        let (want, _) = reference(&inputs);
        let model = |half: bool| {
            GpuRnn::new(Arc::clone(&ctx), &inputs.params)
                .expect("upload")
                .poison_outputs(true)
                .half_recurrent_weights(half)
                .expect("half weights")
        };
        let (full, half) = (model(false), model(true));
        let out = half.forward(&inputs.batch()).expect("half forward");
        within_f16("output", case, &out.output, &want.output);
        within_f16("h_n", case, &out.h_n, &want.h_n);

        let (train_half, _) = half.forward_train(&inputs.batch()).expect("train");
        let (train_full, _) = full.forward_train(&inputs.batch()).expect("train");
        assert_eq!(
            bits(&train_half.output),
            bits(&train_full.output),
            "{case:?}: the training forward must stay f32"
        );
    }

    // Streams read the f16 copy; update_params refreshes it.
    let inputs = Inputs::new(&cases[0], 1.0);
    let mut half = GpuRnn::new(Arc::clone(&ctx), &inputs.params)
        .expect("upload")
        .half_recurrent_weights(true)
        .expect("half weights");
    let zero_state = SequenceBatch::new(inputs.input.view());
    let whole = half.forward(&zero_state).expect("forward");
    let streamed = half
        .stream(cases[0].b)
        .expect("stream")
        .step(inputs.input.view())
        .expect("step");
    assert_eq!(
        bits(&streamed),
        bits(&whole.output),
        "stream of a half model"
    );
    let other = Inputs::new(
        &Case {
            seed: 799,
            ..cases[0].clone()
        },
        1.0,
    );
    half.update_params(&other.params).expect("update");
    let (want, _) = reference(&other);
    let out = half.forward(&other.batch()).expect("forward after update");
    within_f16(
        "output after update_params",
        &cases[0],
        &out.output,
        &want.output,
    );

    // A model shared with a stream cannot switch.
    let _stream = half.stream(1).expect("stream");
    assert!(matches!(
        half.half_recurrent_weights(false),
        Err(RnnError::Config(_))
    ));
}
