//! The layers around the RNN: token embedding and the time-distributed linear output layer.

use crate::error::{check_shape, try_zeros, Result, RnnError};
use crate::scalar::Scalar;
use ndarray::{Array1, Array2, Array3, ArrayView2, ArrayView3, Axis};
use rand::{RngExt, SeedableRng};

/// Token embedding: `x_t = E[token_t]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding<F> {
    /// (V, E)
    pub weight: Array2<F>,
}

impl<F: Scalar> Embedding<F> {
    /// torch's default init: N(0, 1), reproducible from `seed`. Sizes whose table overflows
    /// or does not fit in memory are an error naming `embedding.weight` and its size.
    pub fn init(vocab: usize, dim: usize, seed: u64) -> Result<Self> {
        let mut weight: Array2<F> = try_zeros("embedding.weight", (vocab, dim))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        weight.iter_mut().for_each(|w| {
            // Box–Muller from two uniforms in (0, 1].
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            *w = F::from_f64((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos());
        });
        Ok(Embedding { weight })
    }

    /// V.
    pub fn vocab(&self) -> usize {
        self.weight.nrows()
    }

    /// E.
    pub fn dim(&self) -> usize {
        self.weight.ncols()
    }

    /// (T, B) token ids → (T, B, E) vectors; an id ≥ V is an error.
    pub fn forward(&self, tokens: ArrayView2<'_, usize>) -> Result<Array3<F>> {
        self.check_tokens(tokens)?;
        let (t, b) = tokens.dim();
        let mut out: Array3<F> = try_zeros("embedded input", (t, b, self.dim()))?;
        for ((ti, bi), &tok) in tokens.indexed_iter() {
            out.slice_mut(ndarray::s![ti, bi, ..])
                .assign(&self.weight.row(tok));
        }
        Ok(out)
    }

    /// dL/dE (V, E) from dL/dx (T, B, E): rows of repeated tokens add up.
    pub fn backward(
        &self,
        tokens: ArrayView2<'_, usize>,
        grad_x: ArrayView3<'_, F>,
    ) -> Result<Array2<F>> {
        self.check_tokens(tokens)?;
        let (t, b) = tokens.dim();
        check_shape("grad_embedded", &[t, b, self.dim()], grad_x.shape())?;
        let mut grad = Array2::zeros(self.weight.raw_dim());
        for ((ti, bi), &tok) in tokens.indexed_iter() {
            let mut row = grad.row_mut(tok);
            row += &grad_x.slice(ndarray::s![ti, bi, ..]);
        }
        Ok(grad)
    }

    fn check_tokens(&self, tokens: ArrayView2<'_, usize>) -> Result<()> {
        match tokens.iter().find(|&&tok| tok >= self.vocab()) {
            Some(&tok) => Err(RnnError::Config(format!(
                "token id {tok} is outside the vocabulary of {} symbols",
                self.vocab()
            ))),
            None => Ok(()),
        }
    }
}

/// Linear layer applied to every row (every time step of every sequence): y = V h + c.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<F> {
    /// (O, H)
    pub weight: Array2<F>,
    /// (O)
    pub bias: Array1<F>,
}

/// Gradients of a [`Linear`] layer and of its input.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrads<F> {
    /// (O, H)
    pub weight: Array2<F>,
    /// (O)
    pub bias: Array1<F>,
    /// (N, H)
    pub input: Array2<F>,
}

impl<F: Scalar> Linear<F> {
    /// torch's default init: weight and bias from U(−1/√H, 1/√H), reproducible from `seed`
    /// (H = 0: an empty weight and a zero bias, as torch). Sizes whose tensors overflow or do
    /// not fit in memory are an error naming `linear.weight` or `linear.bias` and the size.
    pub fn init(input: usize, output: usize, seed: u64) -> Result<Self> {
        let mut weight: Array2<F> = try_zeros("linear.weight", (output, input))?;
        let mut bias: Array1<F> = try_zeros("linear.bias", output)?;
        if input > 0 {
            let bound = 1.0 / (input as f64).sqrt();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for v in weight.iter_mut().chain(bias.iter_mut()) {
                *v = F::from_f64(rng.random_range(-bound..bound));
            }
        }
        Ok(Linear { weight, bias })
    }

    /// H.
    pub fn input_size(&self) -> usize {
        self.weight.ncols()
    }

    /// O.
    pub fn output_size(&self) -> usize {
        self.weight.nrows()
    }

    fn check(&self, x: &ArrayView2<'_, F>) -> Result<()> {
        check_shape("linear.bias", &[self.output_size()], self.bias.shape())?;
        check_shape("linear input", &[x.nrows(), self.input_size()], x.shape())
    }

    /// (N, H) → (N, O).
    pub fn forward(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        self.check(&x)?;
        Ok(x.dot(&self.weight.t()) + &self.bias)
    }

    /// dL/dV = dyᵀ x, dL/dc = Σ_rows dy, dL/dx = dy V.
    pub fn backward(
        &self,
        x: ArrayView2<'_, F>,
        grad_y: ArrayView2<'_, F>,
    ) -> Result<LinearGrads<F>> {
        self.check(&x)?;
        check_shape(
            "grad_linear_output",
            &[x.nrows(), self.output_size()],
            grad_y.shape(),
        )?;
        Ok(LinearGrads {
            weight: grad_y.t().dot(&x),
            bias: grad_y.sum_axis(Axis(0)),
            input: grad_y.dot(&self.weight),
        })
    }
}

/// Which time steps the output layer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    /// Every step of every sequence: N = T·B rows, row t·B + b.
    EveryStep,
    /// Only each sequence's last step: N = B rows.
    LastStep,
}

impl Readout {
    /// The rows the output layer reads from an RNN output (T, B, H): (N, H), in order t·B + b
    /// for every step, or b for the last step.
    pub fn select<F: Scalar>(&self, h: ArrayView3<'_, F>) -> Result<Array2<F>> {
        let (t, b, width) = h.dim();
        if t == 0 {
            return Err(RnnError::Config("readout of an empty sequence".into()));
        }
        match self {
            Readout::EveryStep => {
                let mut rows: Array2<F> = try_zeros("readout rows", (t * b, width))?;
                rows.iter_mut().zip(h.iter()).for_each(|(r, &v)| *r = v);
                Ok(rows)
            }
            Readout::LastStep => Ok(h.index_axis(Axis(0), t - 1).to_owned()),
        }
    }

    /// Scatters the gradient of the selected rows (N, H) back to the RNN output (T, B, H).
    pub fn scatter<F: Scalar>(
        &self,
        grad_rows: Array2<F>,
        t: usize,
        b: usize,
    ) -> Result<Array3<F>> {
        let width = grad_rows.ncols();
        let rows = match self {
            Readout::EveryStep => t.checked_mul(b),
            Readout::LastStep => Some(b),
        };
        let size = t
            .checked_mul(b)
            .and_then(|n| n.checked_mul(width))
            .and_then(|n| n.checked_mul(std::mem::size_of::<F>()))
            .filter(|&bytes| bytes <= isize::MAX as usize);
        let (Some(rows), Some(_), true) = (rows, size, t > 0) else {
            return Err(RnnError::Config(format!(
                "cannot scatter readout rows into a (T, B) = ({t}, {b}) sequence"
            )));
        };
        check_shape("grad_selected_rows", &[rows, width], grad_rows.shape())?;
        match self {
            Readout::EveryStep => {
                let mut out: Array3<F> = try_zeros("grad_output", (t, b, width))?;
                out.iter_mut()
                    .zip(grad_rows.iter())
                    .for_each(|(o, &g)| *o = g);
                Ok(out)
            }
            Readout::LastStep => {
                let mut out: Array3<F> = try_zeros("grad_output", (t, b, width))?;
                out.index_axis_mut(Axis(0), t - 1).assign(&grad_rows);
                Ok(out)
            }
        }
    }

    /// N: the number of rows read from a (T, B) sequence batch.
    pub fn rows(&self, t: usize, b: usize) -> usize {
        match self {
            Readout::EveryStep => t * b,
            Readout::LastStep => b,
        }
    }
}
