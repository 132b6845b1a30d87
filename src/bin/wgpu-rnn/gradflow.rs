//! Gradient flow through time: ‖∂L/∂h_t‖ against t for an Elman RNN, an LSTM and a GRU on the
//! same adding-problem batch (the loss reads only the last step), at initialisation or after
//! `train_steps` steps of training on the adding problem.
//!
//! ∂L/∂h_t is the total derivative through all later steps. It is measured exactly as the
//! gradient of the initial state of a run over x_{t+1..T} that starts from (h_t, c_t): the loss
//! depends on h_t only through those later steps. For the LSTM this includes the path through
//! the cell state, whose per-step factor is the forget gate: with torch's init f ≈ σ(0) = 0.5
//! and that path vanishes too, hence [`GradFlowWeights::forget_bias`].

use crate::demo::{adding_model, cell_name, fit_adding, AddingOptions};
use crate::limits::{check_host_memory, product, sum};
use crate::report::{plot_lines, write_json};
use crate::tasks::adding_batch;
use ndarray::{s, Array2, Array3, Axis};
use serde_json::json;
use std::path::Path;
use wgpu_rnn::batch::{SequenceBatch, UpstreamGrads};
use wgpu_rnn::config::{CellKind, Nonlinearity};
use wgpu_rnn::cpu;
use wgpu_rnn::error::{Result, RnnError};
use wgpu_rnn::params::RnnParams;
use wgpu_rnn::train::{mse, Linear, Readout};

/// Settings of [`gradflow`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradFlowOptions {
    pub seq_len: usize,
    pub hidden: usize,
    /// Sequences of the measured batch.
    pub batch: usize,
    pub seed: u64,
}

impl Default for GradFlowOptions {
    /// T = 100, H = 32, B = 16.
    fn default() -> Self {
        GradFlowOptions {
            seq_len: 100,
            hidden: 32,
            batch: 16,
            seed: 0,
        }
    }
}

/// At which weights [`gradflow_with`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct GradFlowWeights {
    /// The LSTM's initial forget-gate bias (b_if; b_hf = 0, see
    /// [`SeqModel::set_forget_bias`](wgpu_rnn::train::SeqModel::set_forget_bias)); `None` keeps
    /// torch's init (forget gate ≈ 0.5).
    pub forget_bias: Option<f64>,
    /// Adding-problem training steps (f32, [`AddingOptions`]' defaults for batch, learning rate
    /// and clipping, at the measured `seq_len` and `hidden`) before measuring; 0: at init.
    pub train_steps: usize,
}

impl Default for GradFlowWeights {
    /// At init, LSTM forget bias 1.
    fn default() -> Self {
        GradFlowWeights {
            forget_bias: Some(1.0),
            train_steps: 0,
        }
    }
}

/// One cell's gradient norms.
#[derive(Clone, Debug, PartialEq)]
pub struct GradFlowCurve {
    pub cell: String,
    /// ‖∂L/∂h_t‖ (Frobenius over batch and hidden units) for t = 0..T.
    pub norms: Vec<f64>,
    /// `norms[0] / norms[T−1]`: how much of the last step's gradient reaches the first step.
    pub first_last_ratio: f64,
    /// Held-out adding-problem MSE after the training steps (`None` at init).
    pub trained_mse: Option<f64>,
}

/// The outcome of [`gradflow`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradFlowReport {
    pub seq_len: usize,
    pub hidden: usize,
    pub batch: usize,
    pub forget_bias: Option<f64>,
    pub train_steps: usize,
    pub curves: Vec<GradFlowCurve>,
}

impl GradFlowReport {
    /// `{"seq_len","hidden","batch","forget_bias","train_steps","curves":[{"cell","norms",
    /// "first_last_ratio","trained_mse"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let curves: Vec<serde_json::Value> = self
            .curves
            .iter()
            .map(|c| {
                json!({"cell": c.cell, "norms": c.norms, "first_last_ratio": c.first_last_ratio,
                       "trained_mse": c.trained_mse})
            })
            .collect();
        json!({"seq_len": self.seq_len, "hidden": self.hidden, "batch": self.batch,
               "forget_bias": self.forget_bias, "train_steps": self.train_steps,
               "curves": curves})
    }

    /// Writes [`GradFlowReport::to_json`] to `path`.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        write_json(path.as_ref(), &self.to_json())
    }

    /// PNG of log10 ‖∂L/∂h_t‖ against t, one line per cell.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<()> {
        let series: Vec<(String, Vec<(f64, f64)>)> = self
            .curves
            .iter()
            .map(|c| {
                let points = c
                    .norms
                    .iter()
                    .enumerate()
                    .map(|(t, &n)| (t as f64, n))
                    .collect();
                (c.cell.clone(), points)
            })
            .collect();
        plot_lines(
            path.as_ref(),
            &format!(
                "gradient flow, adding problem T={} H={}, {}{}",
                self.seq_len,
                self.hidden,
                match self.train_steps {
                    0 => "at init".to_string(),
                    n => format!("after {n} training steps"),
                },
                self.forget_bias
                    .map_or(String::new(), |b| format!(", LSTM forget bias {b}")),
            ),
            "t",
            "log10 ||dL/dh_t||",
            &series,
            true,
        )
    }
}

/// [`gradflow_with`] at init with the LSTM's forget bias at 1 ([`GradFlowWeights::default`]).
pub fn gradflow(opts: &GradFlowOptions) -> Result<GradFlowReport> {
    gradflow_with(opts, &GradFlowWeights::default())
}

/// ‖∂L/∂h_t‖ against t for rnn_tanh, lstm and gru (f64, CPU), same data, seeded init,
/// optionally after training each cell on the adding problem.
pub fn gradflow_with(opts: &GradFlowOptions, weights: &GradFlowWeights) -> Result<GradFlowReport> {
    if opts.seq_len < 2 || opts.hidden == 0 || opts.batch == 0 {
        return Err(RnnError::Config(format!(
            "gradflow needs seq_len ≥ 2, hidden ≥ 1 and batch ≥ 1, got {}, {}, {}",
            opts.seq_len, opts.hidden, opts.batch
        )));
    }
    // f64 host arrays of the widest cell (LSTM: 4 gates): weights, and per step and row the
    // gates, states and their gradients (a lower bound), checked before they are allocated.
    let what = "gradflow (--seq-len, --hidden, --batch)";
    let gates = product(&[4, opts.hidden], what)?;
    let weights_len = product(&[gates, sum(&[opts.hidden, 4], what)?, 2], what)?;
    let per_step = product(
        &[
            opts.seq_len,
            opts.batch,
            sum(&[gates, opts.hidden], what)?,
            2,
        ],
        what,
    )?;
    check_host_memory(
        product(&[sum(&[weights_len, per_step], what)?, 2], what)?,
        what,
        "lower one of them",
    )?;
    let (x, y) = adding_batch::<f64>(opts.seq_len, opts.batch, opts.seed, 0)?;
    let cells = [
        CellKind::Rnn(Nonlinearity::Tanh),
        CellKind::Lstm,
        CellKind::Gru,
    ];
    let curves = cells
        .iter()
        .map(|&cell| {
            let (params, linear, trained_mse) = measured_model(cell, opts, weights)?;
            let norms = hidden_grad_norms(&params, &linear, &x, &y)?;
            let first_last_ratio = norms[0] / norms[opts.seq_len - 1];
            Ok(GradFlowCurve {
                cell: cell_name(cell),
                norms,
                first_last_ratio,
                trained_mse,
            })
        })
        .collect::<Result<_>>()?;
    Ok(GradFlowReport {
        seq_len: opts.seq_len,
        hidden: opts.hidden,
        batch: opts.batch,
        forget_bias: weights.forget_bias,
        train_steps: weights.train_steps,
        curves,
    })
}

/// The RNN and output layer whose gradients are measured (f64), with the held-out MSE when
/// they were trained: an adding-problem model at init (`train_steps` = 0) or after
/// [`fit_adding`].
fn measured_model(
    cell: CellKind,
    opts: &GradFlowOptions,
    weights: &GradFlowWeights,
) -> Result<(RnnParams<f64>, Linear<f64>, Option<f64>)> {
    let forget_bias = weights.forget_bias.filter(|_| cell == CellKind::Lstm);
    let adding = AddingOptions {
        cell,
        seq_len: opts.seq_len,
        hidden: opts.hidden,
        steps: weights.train_steps.max(1),
        seed: opts.seed,
        forget_bias,
        ..AddingOptions::default()
    };
    let (model, trained_mse) = if weights.train_steps == 0 {
        (adding_model(&adding)?, None)
    } else {
        let (model, report) = fit_adding(&adding)?;
        (model, Some(report.final_value))
    };
    let params = model.rnn[0].cast::<f64>();
    let linear = Linear {
        weight: model.linear.weight.mapv(f64::from),
        bias: model.linear.bias.mapv(f64::from),
    };
    Ok((params, linear, trained_mse))
}

/// ‖∂L/∂h_t‖ for t = 0..T, L = MSE(linear(h_{T−1}), y).
fn hidden_grad_norms(
    params: &RnnParams<f64>,
    linear: &Linear<f64>,
    x: &Array3<f64>,
    y: &Array2<f64>,
) -> Result<Vec<f64>> {
    let t_len = x.len_of(Axis(0));
    let mut norms = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let prefix = x.slice(s![..=t, .., ..]);
        let state = cpu::forward(params, &SequenceBatch::new(prefix))?;
        let grad_h = if t + 1 == t_len {
            let h_last = state.h_n.index_axis(Axis(0), 0).to_owned();
            let loss = mse(linear.forward(h_last.view())?.view(), y.view())?;
            linear.backward(h_last.view(), loss.grad.view())?.input
        } else {
            let suffix = x.slice(s![t + 1.., .., ..]);
            let mut batch = SequenceBatch::new(suffix).h0(state.h_n.view());
            if let Some(c) = &state.c_n {
                batch = batch.c0(c.view());
            }
            let (out, tape) = cpu::forward_train(params, &batch)?;
            let rows = Readout::LastStep.select(out.output.view())?;
            let loss = mse(linear.forward(rows.view())?.view(), y.view())?;
            let grad_rows = linear.backward(rows.view(), loss.grad.view())?.input;
            let (steps, b) = tape.dims();
            let upstream = Readout::LastStep.scatter(grad_rows, steps, b)?;
            let grads = cpu::backward(params, &tape, &UpstreamGrads::new(upstream.view()))?;
            grads.h0.index_axis(Axis(0), 0).to_owned()
        };
        norms.push(grad_h.iter().map(|v| v * v).sum::<f64>().sqrt());
    }
    Ok(norms)
}
