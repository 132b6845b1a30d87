//! Backpropagation through time against central finite differences, in f64, over small random
//! configurations of every cell and option.

mod common;

use common::fixture::relative_error;
use ndarray::{Array, Array3, ArrayViewMutD, ShapeBuilder};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wgpu_rnn::cpu;
use wgpu_rnn::{
    CellKind, ForwardOutput, Nonlinearity, RnnConfig, RnnParams, SequenceBatch, UpstreamGrads,
};

const STEP: f64 = 1e-6;
const TOL: f64 = 1e-6;

fn uniform<Sh: ShapeBuilder>(rng: &mut StdRng, shape: Sh) -> Array<f64, Sh::Dim> {
    Array::from_shape_simple_fn(shape, || rng.random_range(-1.0..1.0))
}

/// A network, its inputs and the weights g of the loss Σ out⊙g + Σ h_n⊙g_h [+ Σ c_n⊙g_c].
struct Problem {
    params: RnnParams<f64>,
    input: Array3<f64>,
    h0: Option<Array3<f64>>,
    c0: Option<Array3<f64>>,
    lengths: Option<Vec<usize>>,
    g_out: Array3<f64>,
    g_h_n: Array3<f64>,
    g_c_n: Array3<f64>,
}

impl Problem {
    fn random(config: RnnConfig, with_h0: bool, with_lengths: bool, rng: &mut StdRng) -> Self {
        let t = rng.random_range(1..=4);
        let b = rng.random_range(1..=3);
        let states = (
            config.num_layers * config.num_directions(),
            b,
            config.hidden_size,
        );
        let lstm = config.cell == CellKind::Lstm;
        let lengths = with_lengths.then(|| {
            // Unsorted, holding T and (when B > 1) 1.
            let mut l: Vec<usize> = (0..b).map(|_| rng.random_range(1..=t)).collect();
            l[b - 1] = t;
            l[0] = 1.min(t);
            l
        });
        Problem {
            params: RnnParams::init(&config, rng.random_range(0..1000)).unwrap(),
            input: uniform(rng, (t, b, config.input_size)),
            h0: with_h0.then(|| uniform(rng, states)),
            c0: (with_h0 && lstm).then(|| uniform(rng, states)),
            lengths,
            g_out: uniform(rng, (t, b, config.output_size())),
            g_h_n: uniform(rng, states),
            g_c_n: uniform(rng, states),
        }
    }

    fn batch(&self) -> SequenceBatch<'_, f64> {
        SequenceBatch {
            input: self.input.view(),
            h0: self.h0.as_ref().map(|a| a.view()),
            c0: self.c0.as_ref().map(|a| a.view()),
            lengths: self.lengths.as_deref(),
        }
    }

    fn loss_of(&self, out: &ForwardOutput<f64>) -> f64 {
        let mut loss = (&out.output * &self.g_out).sum() + (&out.h_n * &self.g_h_n).sum();
        if let Some(c_n) = &out.c_n {
            loss += (c_n * &self.g_c_n).sum();
        }
        loss
    }

    fn loss(&self) -> f64 {
        self.loss_of(&cpu::forward(&self.params, &self.batch()).unwrap())
    }
}

/// Central differences of the loss with respect to every element that `select` returns.
fn numeric_grad(
    problem: &mut Problem,
    select: impl Fn(&mut Problem) -> ArrayViewMutD<'_, f64>,
) -> ndarray::ArrayD<f64> {
    let shape = select(problem).raw_dim();
    let mut grad = ndarray::ArrayD::zeros(shape);
    for (i, g) in grad.iter_mut().enumerate() {
        let original = select(problem).as_slice_mut().unwrap()[i];
        let at = |v: f64, p: &mut Problem| {
            select(p).as_slice_mut().unwrap()[i] = v;
            p.loss()
        };
        let plus = at(original + STEP, problem);
        let minus = at(original - STEP, problem);
        at(original, problem);
        *g = (plus - minus) / (2.0 * STEP);
    }
    grad
}

/// The k-th tensor in state_dict order (w_ih, w_hh[, b_ih, b_hh] per layer and direction).
fn param_view(params: &mut RnnParams<f64>, k: usize) -> ArrayViewMutD<'_, f64> {
    let per_layer = if params.config.bias { 4 } else { 2 };
    let layer = &mut params.layers[k / per_layer];
    match k % per_layer {
        0 => layer.w_ih.view_mut().into_dyn(),
        1 => layer.w_hh.view_mut().into_dyn(),
        2 => layer.b_ih.as_mut().unwrap().view_mut().into_dyn(),
        _ => layer.b_hh.as_mut().unwrap().view_mut().into_dyn(),
    }
}

fn check(problem: &mut Problem, label: &str) {
    let lstm = problem.params.config.cell == CellKind::Lstm;
    let (out, tape) = cpu::forward_train(&problem.params, &problem.batch()).unwrap();
    let mut upstream = UpstreamGrads::new(problem.g_out.view()).h_n(problem.g_h_n.view());
    if lstm {
        upstream = upstream.c_n(problem.g_c_n.view());
    }
    let grads = cpu::backward(&problem.params, &tape, &upstream).unwrap();
    assert!(problem.loss_of(&out).is_finite());

    let mut failures = Vec::new();
    let mut compare =
        |name: &str, analytic: ndarray::ArrayViewD<'_, f64>, numeric: ndarray::ArrayD<f64>| {
            let err = relative_error(analytic.view(), numeric.view());
            if err.is_nan() || err > TOL {
                failures.push(format!(
                    "{name}: rel_err {err:.3e}\n  analytic {analytic}\n  numeric  {numeric}"
                ));
            }
        };
    let numeric = numeric_grad(problem, |p| p.input.view_mut().into_dyn());
    compare("input", grads.input.view().into_dyn(), numeric);
    if problem.h0.is_some() {
        let numeric = numeric_grad(problem, |p| p.h0.as_mut().unwrap().view_mut().into_dyn());
        compare("h0", grads.h0.view().into_dyn(), numeric);
    }
    if problem.c0.is_some() {
        let numeric = numeric_grad(problem, |p| p.c0.as_mut().unwrap().view_mut().into_dyn());
        compare("c0", grads.c0.as_ref().unwrap().view().into_dyn(), numeric);
    }
    for (k, (name, analytic)) in grads.params.named().into_iter().enumerate() {
        let numeric = numeric_grad(problem, |p| param_view(&mut p.params, k));
        compare(&name, analytic.view(), numeric);
    }
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

fn gradcheck_cell(cell: CellKind, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // (layers, bidirectional, bias, h0/c0 given, lengths): every option on and off somewhere.
    let options = [
        (1, false, true, false, false),
        (1, false, true, true, true),
        (2, true, true, true, true),
        (1, true, false, true, false),
        (2, false, false, false, true),
        (2, true, true, false, false),
    ];
    for (layers, bidirectional, bias, with_h0, with_lengths) in options.into_iter().chain(options) {
        let config = RnnConfig::new(cell, rng.random_range(1..=3), rng.random_range(1..=3))
            .layers(layers)
            .bidirectional(bidirectional)
            .bias(bias);
        let mut problem = Problem::random(config.clone(), with_h0, with_lengths, &mut rng);
        let label = format!(
            "{config:?} T={} B={} h0={with_h0} lengths={:?}",
            problem.input.dim().0,
            problem.input.dim().1,
            problem.lengths
        );
        check(&mut problem, &label);
    }
}

#[test]
fn rnn_tanh_gradients_match_finite_differences() {
    gradcheck_cell(CellKind::Rnn(Nonlinearity::Tanh), 1);
}

#[test]
fn rnn_relu_gradients_match_finite_differences() {
    // Random pre-activations lie within STEP of relu's kink with negligible probability.
    gradcheck_cell(CellKind::Rnn(Nonlinearity::Relu), 2);
}

#[test]
fn rnn_identity_gradients_match_finite_differences() {
    gradcheck_cell(CellKind::Rnn(Nonlinearity::Identity), 3);
}

#[test]
fn lstm_gradients_match_finite_differences() {
    gradcheck_cell(CellKind::Lstm, 4);
}

#[test]
fn gru_gradients_match_finite_differences() {
    gradcheck_cell(CellKind::Gru, 5);
}
