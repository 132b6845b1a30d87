//! The CPU reference against the torch fixtures, edge shapes, masking, batch_first and every
//! input error.

mod common;

use common::fixture::{check_fixture, relative_error, Fixture};
use ndarray::{s, Array, Array3, Dimension, ShapeBuilder};
use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use wgpu_rnn::cpu;
use wgpu_rnn::{
    CellKind, Nonlinearity, RnnConfig, RnnError, RnnParams, Scalar, SequenceBatch, UpstreamGrads,
};

const ALL_CELLS: [CellKind; 5] = [
    CellKind::Rnn(Nonlinearity::Tanh),
    CellKind::Rnn(Nonlinearity::Relu),
    CellKind::Rnn(Nonlinearity::Identity),
    CellKind::Lstm,
    CellKind::Gru,
];

fn fixture_paths() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    paths.sort();
    assert_eq!(
        paths.len(),
        8,
        "expected the 8 shipped fixtures in {}",
        dir.display()
    );
    paths
}

/// Runs forward + backward on a fixture; returns the failing checks, printed, when any exceed
/// `tol` (None: each check's own tolerance).
fn run_fixture<F: Scalar>(path: &Path, tol: Option<f64>) -> Vec<String> {
    let fx = Fixture::<F>::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (output, tape) = cpu::forward_train(&fx.params, &fx.batch()).unwrap();
    let inference = cpu::forward(&fx.params, &fx.batch()).unwrap();
    assert_eq!(
        inference, output,
        "{}: inference differs from training forward",
        fx.name
    );
    let grads = cpu::backward(&fx.params, &tape, &fx.upstream()).unwrap();
    let checks = check_fixture(&fx, &output, &grads);
    assert!(checks.len() >= 5, "{}: too few checks", fx.name);
    checks
        .iter()
        .filter(|c| c.rel_err.is_nan() || c.rel_err > tol.unwrap_or(c.tol))
        .map(|c| format!("{} ({}): {c}", fx.name, std::any::type_name::<F>()))
        .collect()
}

#[test]
fn every_torch_fixture_matches_in_f32() {
    let failures: Vec<String> = fixture_paths()
        .iter()
        .flat_map(|p| run_fixture::<f32>(p, None))
        .collect();
    assert!(
        failures.is_empty(),
        "failing checks:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_torch_fixture_matches_in_f64_to_1e12() {
    let failures: Vec<String> = fixture_paths()
        .iter()
        .flat_map(|p| run_fixture::<f64>(p, Some(1e-12)))
        .collect();
    assert!(
        failures.is_empty(),
        "failing checks:\n{}",
        failures.join("\n")
    );
}

fn uniform<F: Scalar, Sh: ShapeBuilder>(
    rng: &mut rand::rngs::StdRng,
    shape: Sh,
) -> Array<F, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || F::from_f64(rng.random_range(-1.0..1.0)))
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One step of a cell with every size 1, written out by hand: returns (h', c').
fn scalar_step(cell: CellKind, p: &RnnParams<f64>, x: f64, h: f64, c: f64) -> (f64, f64) {
    let l = &p.layers[0];
    let gate = |k: usize| {
        let bias = l.b_ih.as_ref().unwrap()[k] + l.b_hh.as_ref().unwrap()[k];
        l.w_ih[[k, 0]] * x + l.w_hh[[k, 0]] * h + bias
    };
    match cell {
        CellKind::Rnn(Nonlinearity::Tanh) => (gate(0).tanh(), 0.0),
        CellKind::Rnn(Nonlinearity::Relu) => (gate(0).max(0.0), 0.0),
        CellKind::Rnn(Nonlinearity::Identity) => (gate(0), 0.0),
        CellKind::Lstm => {
            let (i, f, g, o) = (
                sigmoid(gate(0)),
                sigmoid(gate(1)),
                gate(2).tanh(),
                sigmoid(gate(3)),
            );
            let c = f * c + i * g;
            (o * c.tanh(), c)
        }
        CellKind::Gru => {
            let (r, z) = (sigmoid(gate(0)), sigmoid(gate(1)));
            let hn = l.w_hh[[2, 0]] * h + l.b_hh.as_ref().unwrap()[2];
            let n = (l.w_ih[[2, 0]] * x + l.b_ih.as_ref().unwrap()[2] + r * hn).tanh();
            ((1.0 - z) * n + z * h, 0.0)
        }
    }
}

#[test]
fn size_one_everything_matches_hand_written_cells() {
    for cell in ALL_CELLS {
        let config = RnnConfig::new(cell, 1, 1);
        let params = RnnParams::<f64>::init(&config, 11).unwrap();
        let input = Array3::from_elem((1, 1, 1), 0.7);
        let h0 = Array3::from_elem((1, 1, 1), -0.4);
        let c0 = Array3::from_elem((1, 1, 1), 0.3);
        let mut batch = SequenceBatch::new(input.view()).h0(h0.view());
        if cell == CellKind::Lstm {
            batch = batch.c0(c0.view());
        }
        let out = cpu::forward(&params, &batch).unwrap();
        let (h, c) = scalar_step(cell, &params, 0.7, -0.4, 0.3);
        assert!(
            (out.output[[0, 0, 0]] - h).abs() < 1e-15,
            "{cell:?}: output"
        );
        assert_eq!(out.h_n[[0, 0, 0]], out.output[[0, 0, 0]], "{cell:?}: h_n");
        if let Some(c_n) = &out.c_n {
            assert!((c_n[[0, 0, 0]] - c).abs() < 1e-15, "{cell:?}: c_n");
        }
        // Backward at size one runs and yields finite values of the right shapes.
        let (_, tape) = cpu::forward_train(&params, &batch).unwrap();
        let g = Array3::from_elem((1, 1, 1), 1.0);
        let grads = cpu::backward(&params, &tape, &UpstreamGrads::new(g.view())).unwrap();
        assert_eq!(grads.input.dim(), (1, 1, 1));
        assert!(grads
            .input
            .iter()
            .chain(grads.h0.iter())
            .all(|v| v.is_finite()));
    }
}

/// Runs forward + backward in f64 with h0, c0 and upstream gradients for h_n and c_n.
struct Case {
    config: RnnConfig,
    params: RnnParams<f64>,
    input: Array3<f64>,
    h0: Array3<f64>,
    c0: Array3<f64>,
    g_out: Array3<f64>,
    g_h_n: Array3<f64>,
    g_c_n: Array3<f64>,
}

impl Case {
    fn random(config: RnnConfig, t: usize, b: usize, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let states = (
            config.num_layers * config.num_directions(),
            b,
            config.hidden_size,
        );
        let (i, o) = (config.input_size, config.output_size());
        let seq = |f| {
            if config.batch_first {
                (b, t, f)
            } else {
                (t, b, f)
            }
        };
        Case {
            params: RnnParams::init(&config, seed + 1).unwrap(),
            input: uniform(&mut rng, seq(i)),
            h0: uniform(&mut rng, states),
            c0: uniform(&mut rng, states),
            g_out: uniform(&mut rng, seq(o)),
            g_h_n: uniform(&mut rng, states),
            g_c_n: uniform(&mut rng, states),
            config,
        }
    }

    fn run(
        &self,
        lengths: Option<&[usize]>,
    ) -> (wgpu_rnn::ForwardOutput<f64>, wgpu_rnn::Gradients<f64>) {
        let lstm = self.config.cell == CellKind::Lstm;
        let mut batch = SequenceBatch::new(self.input.view()).h0(self.h0.view());
        let mut upstream = UpstreamGrads::new(self.g_out.view()).h_n(self.g_h_n.view());
        if lstm {
            batch = batch.c0(self.c0.view());
            upstream = upstream.c_n(self.g_c_n.view());
        }
        if let Some(lengths) = lengths {
            batch = batch.lengths(lengths);
        }
        let (out, tape) = cpu::forward_train(&self.params, &batch).unwrap();
        let grads = cpu::backward(&self.params, &tape, &upstream).unwrap();
        (out, grads)
    }

    /// The same case restricted to sequence `b` and its first `len` steps.
    fn single(&self, b: usize, len: usize) -> Case {
        let seq = |a: &Array3<f64>| a.slice(s![..len, b..b + 1, ..]).to_owned();
        let state = |a: &Array3<f64>| a.slice(s![.., b..b + 1, ..]).to_owned();
        Case {
            config: self.config.clone(),
            params: self.params.clone(),
            input: seq(&self.input),
            h0: state(&self.h0),
            c0: state(&self.c0),
            g_out: seq(&self.g_out),
            g_h_n: state(&self.g_h_n),
            g_c_n: state(&self.g_c_n),
        }
    }
}

fn assert_close<D: Dimension>(
    what: &str,
    got: ArrayView3Like<'_, D>,
    reference: ArrayView3Like<'_, D>,
    tol: f64,
) {
    let err = relative_error(got, reference);
    assert!(err <= tol, "{what}: relative error {err:.3e} > {tol:.0e}");
}

type ArrayView3Like<'a, D> = ndarray::ArrayView<'a, f64, D>;

#[test]
fn variable_lengths_equal_each_sequence_run_alone() {
    // Unsorted, including 1 and T.
    let lengths = [3usize, 5, 1, 4, 5];
    let t = 5;
    for cell in ALL_CELLS {
        let config = RnnConfig::new(cell, 3, 4).layers(2).bidirectional(true);
        let case = Case::random(config, t, lengths.len(), 21);
        let (out, grads) = case.run(Some(&lengths));
        let mut param_sum = RnnParams::<f64>::zeros(&case.config).unwrap();
        for (b, &len) in lengths.iter().enumerate() {
            let what = |name: &str| format!("{cell:?} sequence {b} (len {len}): {name}");
            let single = case.single(b, len);
            let (s_out, s_grads) = single.run(None);
            let col = |a: &Array3<f64>| a.slice(s![..len, b..b + 1, ..]).to_owned();
            let state = |a: &Array3<f64>| a.slice(s![.., b..b + 1, ..]).to_owned();
            assert_close(
                &what("output"),
                col(&out.output).view(),
                s_out.output.view(),
                1e-13,
            );
            assert!(
                out.output.slice(s![len.., b, ..]).iter().all(|&v| v == 0.0),
                "{}",
                what("padding")
            );
            assert_close(
                &what("h_n"),
                state(&out.h_n).view(),
                s_out.h_n.view(),
                1e-13,
            );
            if let (Some(c_n), Some(s_c_n)) = (&out.c_n, &s_out.c_n) {
                assert_close(&what("c_n"), state(c_n).view(), s_c_n.view(), 1e-13);
            }
            assert_close(
                &what("grad input"),
                col(&grads.input).view(),
                s_grads.input.view(),
                1e-12,
            );
            assert!(
                grads
                    .input
                    .slice(s![len.., b, ..])
                    .iter()
                    .all(|&v| v == 0.0),
                "{}",
                what("grad padding")
            );
            assert_close(
                &what("grad h0"),
                state(&grads.h0).view(),
                s_grads.h0.view(),
                1e-12,
            );
            if let (Some(c0), Some(s_c0)) = (&grads.c0, &s_grads.c0) {
                assert_close(&what("grad c0"), state(c0).view(), s_c0.view(), 1e-12);
            }
            for (sum, single) in param_sum.layers.iter_mut().zip(&s_grads.params.layers) {
                sum.w_ih += &single.w_ih;
                sum.w_hh += &single.w_hh;
                *sum.b_ih.as_mut().unwrap() += single.b_ih.as_ref().unwrap();
                *sum.b_hh.as_mut().unwrap() += single.b_hh.as_ref().unwrap();
            }
        }
        for ((name, got), (_, reference)) in grads.params.named().iter().zip(param_sum.named()) {
            assert_close(
                &format!("{cell:?}: grad {name}"),
                got.view(),
                reference.view(),
                1e-12,
            );
        }
    }
}

#[test]
fn lengths_all_t_equal_no_lengths() {
    for cell in ALL_CELLS {
        let config = RnnConfig::new(cell, 2, 3).bidirectional(true);
        let case = Case::random(config, 4, 3, 5);
        assert_eq!(case.run(Some(&[4, 4, 4])), case.run(None), "{cell:?}");
    }
}

#[test]
fn batch_first_equals_seq_major_transposed() {
    let swap = |a: &Array3<f64>| {
        a.view()
            .permuted_axes([1, 0, 2])
            .as_standard_layout()
            .into_owned()
    };
    for cell in ALL_CELLS {
        let config = RnnConfig::new(cell, 3, 4).layers(2).bidirectional(true);
        let seq_major = Case::random(config.clone(), 5, 3, 8);
        let batch_first = Case {
            config: config.clone().batch_first(true),
            params: RnnParams {
                config: config.clone().batch_first(true),
                layers: seq_major.params.layers.clone(),
            },
            input: swap(&seq_major.input),
            g_out: swap(&seq_major.g_out),
            h0: seq_major.h0.clone(),
            c0: seq_major.c0.clone(),
            g_h_n: seq_major.g_h_n.clone(),
            g_c_n: seq_major.g_c_n.clone(),
        };
        let lengths = [2, 5, 4];
        let (out, grads) = seq_major.run(Some(&lengths));
        let (bf_out, bf_grads) = batch_first.run(Some(&lengths));
        assert_eq!(swap(&bf_out.output), out.output, "{cell:?}: output");
        assert_eq!(bf_out.h_n, out.h_n, "{cell:?}: h_n");
        assert_eq!(bf_out.c_n, out.c_n, "{cell:?}: c_n");
        assert_eq!(swap(&bf_grads.input), grads.input, "{cell:?}: grad input");
        assert_eq!(bf_grads.h0, grads.h0, "{cell:?}: grad h0");
        assert_eq!(
            bf_grads.params.layers, grads.params.layers,
            "{cell:?}: grad params"
        );
    }
}

fn large_inputs_stay_finite<F: Scalar>() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    for cell in ALL_CELLS {
        let config = RnnConfig::new(cell, 3, 5).bidirectional(true);
        let mut params = RnnParams::<F>::init(&config, 3).unwrap();
        params.for_each_mut(|_, mut a| a.mapv_inplace(|v| v * F::from_f64(20.0)));
        // |x| in [50, 100] with random signs.
        let input = Array3::from_shape_simple_fn((4, 2, 3), || {
            let magnitude = rng.random_range(50.0..100.0);
            F::from_f64(if rng.random_bool(0.5) {
                magnitude
            } else {
                -magnitude
            })
        });
        let (out, tape) = cpu::forward_train(&params, &SequenceBatch::new(input.view())).unwrap();
        let g_out = uniform::<F, _>(&mut rng, out.output.raw_dim());
        let grads = cpu::backward(&params, &tape, &UpstreamGrads::new(g_out.view())).unwrap();
        // The identity RNN legitimately grows large; finiteness is what is checked.
        let finite = |a: &[F]| a.iter().all(|v| v.is_finite());
        assert!(
            finite(out.output.as_slice().unwrap()),
            "{cell:?}: output not finite"
        );
        assert!(
            finite(out.h_n.as_slice().unwrap()),
            "{cell:?}: h_n not finite"
        );
        assert!(
            finite(grads.input.as_slice().unwrap()),
            "{cell:?}: grad input not finite"
        );
        assert!(
            finite(grads.h0.as_slice().unwrap()),
            "{cell:?}: grad h0 not finite"
        );
        for (name, g) in grads.params.named() {
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{cell:?}: grad {name} not finite"
            );
        }
    }
}

#[test]
fn inputs_of_magnitude_50_and_more_give_finite_results_f32() {
    large_inputs_stay_finite::<f32>();
}

#[test]
fn inputs_of_magnitude_50_and_more_give_finite_results_f64() {
    large_inputs_stay_finite::<f64>();
}

fn shape_error(result: Result<impl std::fmt::Debug, RnnError>, tensor: &str) {
    match result {
        Err(e @ RnnError::Shape { .. }) => {
            println!("{e}");
            if let RnnError::Shape {
                tensor: t,
                expected,
                got,
            } = e
            {
                assert_eq!(t, tensor);
                assert_ne!(expected, got);
            }
        }
        other => panic!("expected a shape error on `{tensor}`, got {other:?}"),
    }
}

#[test]
fn every_bad_input_is_an_error() {
    let config = RnnConfig::new(CellKind::Lstm, 3, 4).layers(2);
    let params = RnnParams::<f64>::init(&config, 1).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let input: Array3<f64> = uniform(&mut rng, (5, 2, 3));
    let state: Array3<f64> = uniform(&mut rng, (2, 2, 4));
    let run = |batch: SequenceBatch<'_, f64>| cpu::forward(&params, &batch);

    let wide: Array3<f64> = Array3::ones((5, 2, 4));
    shape_error(run(SequenceBatch::new(wide.view())), "input");
    let empty: Array3<f64> = Array3::zeros((0, 2, 3));
    assert!(matches!(
        run(SequenceBatch::new(empty.view())),
        Err(RnnError::Config(_))
    ));
    let bad_state: Array3<f64> = Array3::ones((2, 3, 4));
    shape_error(
        run(SequenceBatch::new(input.view()).h0(bad_state.view())),
        "h0",
    );
    shape_error(
        run(SequenceBatch::new(input.view()).c0(bad_state.view())),
        "c0",
    );
    for lengths in [&[0usize, 5][..], &[6, 5], &[5], &[5, 5, 5]] {
        let result = run(SequenceBatch::new(input.view()).lengths(lengths));
        assert!(
            matches!(result, Err(RnnError::Lengths(_))),
            "lengths {lengths:?}: {result:?}"
        );
    }
    let poisoned = |a: &Array3<f64>, v: f64| {
        let mut a = a.clone();
        a[[1, 1, 2]] = v;
        a
    };
    let nan_input = poisoned(&input, f64::NAN);
    let inf_h0 = poisoned(&state, f64::INFINITY);
    let nan_c0 = poisoned(&state, f64::NAN);
    for (result, tensor) in [
        (run(SequenceBatch::new(nan_input.view())), "input"),
        (
            run(SequenceBatch::new(input.view()).h0(inf_h0.view())),
            "h0",
        ),
        (
            run(SequenceBatch::new(input.view()).c0(nan_c0.view())),
            "c0",
        ),
    ] {
        assert!(
            matches!(&result, Err(RnnError::NonFinite { tensor: t, .. }) if t == tensor),
            "{tensor}: {result:?}"
        );
    }

    // c0 given to a cell without cell state.
    let gru = RnnConfig::new(CellKind::Gru, 3, 4).layers(2);
    let gru_params = RnnParams::<f64>::init(&gru, 1).unwrap();
    let result = cpu::forward(
        &gru_params,
        &SequenceBatch::new(input.view()).c0(state.view()),
    );
    assert!(matches!(result, Err(RnnError::Config(_))), "{result:?}");

    // Parameters that do not fit their config.
    let mut misshaped = params.clone();
    misshaped.layers[1].w_hh = ndarray::Array2::zeros((16, 5));
    shape_error(
        cpu::forward(&misshaped, &SequenceBatch::new(input.view())),
        "weight_hh_l1",
    );
    let mut no_bias = params.clone();
    no_bias.layers[0].b_ih = None;
    assert!(matches!(
        cpu::forward(&no_bias, &SequenceBatch::new(input.view())),
        Err(RnnError::MissingTensor(name)) if name == "bias_ih_l0"
    ));

    // Upstream gradients.
    let (_, tape) = cpu::forward_train(&params, &SequenceBatch::new(input.view())).unwrap();
    let g_out: Array3<f64> = uniform(&mut rng, (5, 2, 4));
    let short: Array3<f64> = Array3::ones((4, 2, 4));
    shape_error(
        cpu::backward(&params, &tape, &UpstreamGrads::new(short.view())),
        "grad_output",
    );
    shape_error(
        cpu::backward(
            &params,
            &tape,
            &UpstreamGrads::new(g_out.view()).h_n(bad_state.view()),
        ),
        "grad_h_n",
    );
    let result = cpu::backward(
        &params,
        &tape,
        &UpstreamGrads::new(g_out.view()).c_n(inf_h0.view()),
    );
    assert!(
        matches!(result, Err(RnnError::NonFinite { .. })),
        "{result:?}"
    );
    let (_, gru_tape) = cpu::forward_train(&gru_params, &SequenceBatch::new(input.view())).unwrap();
    let result = cpu::backward(
        &gru_params,
        &gru_tape,
        &UpstreamGrads::new(g_out.view()).c_n(state.view()),
    );
    assert!(matches!(result, Err(RnnError::Config(_))), "{result:?}");
    // Parameters of another config than the tape's.
    let result = cpu::backward(&gru_params, &tape, &UpstreamGrads::new(g_out.view()));
    assert!(matches!(result, Err(RnnError::Config(_))), "{result:?}");
    // Wrong-rank tensors cannot be built: the API takes 3-D views. A batch_first config with
    // a seq-major tensor is a shape error.
    let bf = params.clone();
    let bf = RnnParams {
        config: bf.config.clone().batch_first(true),
        layers: bf.layers,
    };
    let long: Array3<f64> = uniform(&mut rng, (2, 5, 4));
    shape_error(cpu::forward(&bf, &SequenceBatch::new(long.view())), "input");
}

/// Writes a copy of a fixture with one metadata key changed (None: removed).
fn fixture_with_metadata(key: &str, value: Option<&str>) -> PathBuf {
    let source = &fixture_paths()[0];
    let bytes = std::fs::read(source).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let metadata = header["__metadata__"].as_object_mut().unwrap();
    match value {
        Some(v) => metadata.insert(key.into(), serde_json::Value::String(v.into())),
        None => metadata.remove(key),
    };
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    let path = std::env::temp_dir().join(format!(
        "wgpu_rnn_fixture_{}_{key}_{}.safetensors",
        std::process::id(),
        value.map_or("removed".to_string(), |v| v
            .replace(['"', ' ', '(', ')', ','], "_"))
    ));
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn bad_fixture_metadata_names_the_key() {
    for (key, value) in [
        ("cell", Some("\"transformer\"")),
        ("hidden_size", None),
        ("layout", Some("\"batch_major (B, T, F)\"")),
        ("has_h0", None),
    ] {
        let path = fixture_with_metadata(key, value);
        let result = Fixture::<f32>::load(&path);
        std::fs::remove_file(&path).unwrap();
        match result {
            Err(RnnError::Metadata(message)) => assert!(message.contains(key), "{key}: {message}"),
            other => panic!("{key} = {value:?}: expected a metadata error, got {other:?}"),
        }
    }
    // An rnn cell with an unknown nonlinearity.
    let rnn = fixture_paths()
        .into_iter()
        .find(|p| p.ends_with("rnn_tanh_1layer.safetensors"))
        .unwrap();
    let bytes = std::fs::read(&rnn).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&bytes[8..8 + n])
        .unwrap()
        .replace("\"\\\"tanh\\\"\"", "\"\\\"gelu\\\"\"");
    assert_eq!(text.len(), n, "the edit keeps the header length");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    let path = std::env::temp_dir().join(format!(
        "wgpu_rnn_fixture_{}_gelu.safetensors",
        std::process::id()
    ));
    std::fs::write(&path, out).unwrap();
    let result = Fixture::<f64>::load(&path);
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(&result, Err(RnnError::Metadata(m)) if m.contains("nonlinearity")),
        "{result:?}"
    );
}
