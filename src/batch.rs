//! The inputs and outputs of one forward/backward call, shared by the CPU reference and the GPU.

use crate::config::RnnConfig;
use crate::error::{check_shape, Result, RnnError};
use crate::params::RnnParams;
use crate::scalar::Scalar;
use ndarray::{Array3, ArrayView, ArrayView3, Dimension};

/// One forward call's inputs. Layout (T, B, I), or (B, T, I) when `config.batch_first`.
#[derive(Clone, Debug)]
pub struct SequenceBatch<'a, F> {
    /// (T, B, I), or (B, T, I) when batch_first
    pub input: ArrayView3<'a, F>,
    /// (L·D, B, H); zeros when None
    pub h0: Option<ArrayView3<'a, F>>,
    /// (L·D, B, H), LSTM only; zeros when None
    pub c0: Option<ArrayView3<'a, F>>,
    /// (B): sequence b is valid for t < `lengths[b]`; each in 1..=T, any order. All T when None.
    pub lengths: Option<&'a [usize]>,
}

impl<'a, F: Scalar> SequenceBatch<'a, F> {
    /// A batch of full-length sequences starting from zero states.
    pub fn new(input: ArrayView3<'a, F>) -> Self {
        SequenceBatch {
            input,
            h0: None,
            c0: None,
            lengths: None,
        }
    }

    /// Sets the initial hidden state (L·D, B, H).
    pub fn h0(mut self, h0: ArrayView3<'a, F>) -> Self {
        self.h0 = Some(h0);
        self
    }

    /// Sets the initial cell state (L·D, B, H); LSTM only.
    pub fn c0(mut self, c0: ArrayView3<'a, F>) -> Self {
        self.c0 = Some(c0);
        self
    }

    /// Sets per-sequence lengths (B).
    pub fn lengths(mut self, lengths: &'a [usize]) -> Self {
        self.lengths = Some(lengths);
        self
    }

    /// Validates every shape, length and value against `config`; returns (T, B).
    pub fn validate(&self, config: &RnnConfig) -> Result<(usize, usize)> {
        config.validate()?;
        let (t, b) = seq_and_batch(config, self.input.dim());
        if t == 0 || b == 0 {
            return Err(RnnError::Config(format!(
                "input must hold at least one time step and one sequence, got shape {:?}",
                self.input.shape()
            )));
        }
        let input_shape = config.sequence_shape(t, b, config.input_size);
        check_shape("input", &input_shape, self.input.shape())?;
        check_finite("input", &self.input)?;
        let state_shape = config.state_shape(b);
        if let Some(h0) = &self.h0 {
            check_shape("h0", &state_shape, h0.shape())?;
            check_finite("h0", h0)?;
        }
        if let Some(c0) = &self.c0 {
            if !config.cell.has_cell_state() {
                return Err(RnnError::Config(format!(
                    "c0 was given but a {} cell has no cell state",
                    config.cell.name()
                )));
            }
            check_shape("c0", &state_shape, c0.shape())?;
            check_finite("c0", c0)?;
        }
        if let Some(lengths) = self.lengths {
            check_lengths(lengths, t, b)?;
        }
        Ok((t, b))
    }
}

/// Checks that there are `b` lengths, each in 1..=t.
pub(crate) fn check_lengths(lengths: &[usize], t: usize, b: usize) -> Result<()> {
    if lengths.len() != b {
        return Err(RnnError::Lengths(format!(
            "{} lengths given for a batch of {b} sequences",
            lengths.len()
        )));
    }
    match lengths.iter().position(|&l| l == 0 || l > t) {
        Some(i) => Err(RnnError::Lengths(format!(
            "lengths[{i}] = {} is outside 1..={t}",
            lengths[i]
        ))),
        None => Ok(()),
    }
}

/// (T, B) from an input or output shape, honouring batch_first.
fn seq_and_batch(config: &RnnConfig, dim: (usize, usize, usize)) -> (usize, usize) {
    if config.batch_first {
        (dim.1, dim.0)
    } else {
        (dim.0, dim.1)
    }
}

/// Returns an error naming the first NaN or infinity in `a` (any dimension).
pub fn check_finite<'a, F: Scalar, D: Dimension>(
    tensor: &str,
    a: impl Into<ArrayView<'a, F, D>>,
) -> Result<()> {
    let a = a.into();
    // A branch-free pass first (it vectorises), the search for the index only on failure.
    let all_finite = match a.as_slice_memory_order() {
        Some(values) => values
            .iter()
            .fold(true, |ok, v| ok & (v.abs() <= F::max_value())),
        None => false,
    };
    if all_finite {
        return Ok(());
    }
    match a.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(RnnError::NonFinite {
            tensor: tensor.to_string(),
            index,
        }),
        None => Ok(()),
    }
}

/// Checks that `params` has every tensor of its config in the right shape, all values finite.
pub fn check_params<F: Scalar>(params: &RnnParams<F>) -> Result<()> {
    let config = &params.config;
    config.validate()?;
    let d = config.num_directions();
    let count = config.num_layers * d;
    if params.layers.len() != count {
        return Err(RnnError::Config(format!(
            "parameters hold {} layer-directions, the config needs {count}",
            params.layers.len()
        )));
    }
    let rows = config.gate_rows();
    for (i, p) in params.layers.iter().enumerate() {
        let (layer, dir) = (i / d, i % d);
        let name = |kind| crate::params::param_name(kind, layer, dir);
        use crate::params::ParamKind;
        let input = config.layer_input_size(layer);
        for (kind, w, columns) in [
            (ParamKind::WeightIh, &p.w_ih, input),
            (ParamKind::WeightHh, &p.w_hh, config.hidden_size),
        ] {
            check_shape(&name(kind), &[rows, columns], w.shape())?;
            check_finite(&name(kind), w)?;
        }
        for (kind, bias) in [(ParamKind::BiasIh, &p.b_ih), (ParamKind::BiasHh, &p.b_hh)] {
            match (config.bias, bias) {
                (true, Some(b)) => {
                    check_shape(&name(kind), &[rows], b.shape())?;
                    check_finite(&name(kind), b)?;
                }
                (true, None) => return Err(RnnError::MissingTensor(name(kind))),
                (false, Some(_)) => return Err(RnnError::UnexpectedTensor(name(kind))),
                (false, None) => {}
            }
        }
    }
    Ok(())
}

/// The result of a forward call.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardOutput<F> {
    /// (T, B, D·H), or (B, T, D·H) when batch_first; zero where t >= `lengths[b]`
    pub output: Array3<F>,
    /// (L·D, B, H): the state at each sequence's last valid step (reverse direction: t = 0)
    pub h_n: Array3<F>,
    /// (L·D, B, H), LSTM only
    pub c_n: Option<Array3<F>>,
}

/// Gradients of the loss with respect to a forward call's outputs.
#[derive(Clone, Debug)]
pub struct UpstreamGrads<'a, F> {
    /// Like `ForwardOutput::output`
    pub output: ArrayView3<'a, F>,
    /// (L·D, B, H); zeros when None
    pub h_n: Option<ArrayView3<'a, F>>,
    /// (L·D, B, H), LSTM only; zeros when None
    pub c_n: Option<ArrayView3<'a, F>>,
}

impl<'a, F: Scalar> UpstreamGrads<'a, F> {
    /// Upstream gradient of the output sequence only.
    pub fn new(output: ArrayView3<'a, F>) -> Self {
        UpstreamGrads {
            output,
            h_n: None,
            c_n: None,
        }
    }

    /// Sets the gradient of h_n (L·D, B, H).
    pub fn h_n(mut self, h_n: ArrayView3<'a, F>) -> Self {
        self.h_n = Some(h_n);
        self
    }

    /// Sets the gradient of c_n (L·D, B, H); LSTM only.
    pub fn c_n(mut self, c_n: ArrayView3<'a, F>) -> Self {
        self.c_n = Some(c_n);
        self
    }

    /// Validates every shape and value against `config` and the forward call's (T, B).
    pub fn validate(&self, config: &RnnConfig, t: usize, b: usize) -> Result<()> {
        let output_shape = config.sequence_shape(t, b, config.output_size());
        check_shape("grad_output", &output_shape, self.output.shape())?;
        check_finite("grad_output", &self.output)?;
        let state_shape = config.state_shape(b);
        if let Some(h_n) = &self.h_n {
            check_shape("grad_h_n", &state_shape, h_n.shape())?;
            check_finite("grad_h_n", h_n)?;
        }
        if let Some(c_n) = &self.c_n {
            if !config.cell.has_cell_state() {
                return Err(RnnError::Config(format!(
                    "grad_c_n was given but a {} cell has no cell state",
                    config.cell.name()
                )));
            }
            check_shape("grad_c_n", &state_shape, c_n.shape())?;
            check_finite("grad_c_n", c_n)?;
        }
        Ok(())
    }
}

/// d loss / d everything a forward call took.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients<F> {
    /// Same layout as the parameters
    pub params: RnnParams<F>,
    /// Like the input: (T, B, I) or (B, T, I)
    pub input: Array3<F>,
    /// (L·D, B, H), also when h0 was not given (then it is the gradient at the zero state)
    pub h0: Array3<F>,
    /// (L·D, B, H), LSTM only
    pub c0: Option<Array3<F>>,
}
