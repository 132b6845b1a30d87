//! Text generation from a trained character model: feed a prime string, then draw one
//! character at a time from softmax(logits / temperature), carrying every layer's state.

use ndarray::{Array2, Array3, Axis};
use rand::{RngExt, SeedableRng};
use wgpu_rnn::batch::SequenceBatch;
use wgpu_rnn::cpu;
use wgpu_rnn::error::{Result, RnnError};
use wgpu_rnn::scalar::Scalar;
use wgpu_rnn::train::{ModelInput, SeqModel};

/// How [`sample_text`] draws characters.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    /// Fed to the model first and kept at the start of the result; every character must be
    /// in the vocabulary.
    pub prime: String,
    /// Characters generated after the prime.
    pub len: usize,
    /// Logits are divided by this before the softmax (> 0): below 1 sharpens, above 1 flattens.
    pub temperature: f64,
    pub seed: u64,
}

impl Default for SampleOptions {
    /// Prime `"The "`, 200 characters, temperature 0.8, seed 0.
    fn default() -> Self {
        SampleOptions {
            prime: "The ".into(),
            len: 200,
            temperature: 0.8,
            seed: 0,
        }
    }
}

/// The prime followed by `opts.len` sampled characters. `model` must read tokens from a
/// vocabulary of `vocab.len()` symbols (`vocab[id]` is the character of id) and predict the
/// next one; runs on the CPU reference, without dropout.
pub fn sample_text<F: Scalar>(
    model: &SeqModel<F>,
    vocab: &[char],
    opts: &SampleOptions,
) -> Result<String> {
    model.validate()?;
    match model.config.input {
        ModelInput::Tokens { vocab: v, .. } if v == vocab.len() && model.config.outputs == v => {}
        _ => {
            return Err(RnnError::Config(format!(
                "sampling needs a model reading and predicting {} characters, got input {:?} \
                 and {} outputs",
                vocab.len(),
                model.config.input,
                model.config.outputs
            )))
        }
    }
    if !(opts.temperature > 0.0 && opts.temperature.is_finite()) {
        return Err(RnnError::Config(format!(
            "sampling temperature must be positive and finite, got {}",
            opts.temperature
        )));
    }
    let prime: Vec<usize> = opts
        .prime
        .chars()
        .map(|c| {
            vocab.iter().position(|&v| v == c).ok_or_else(|| {
                RnnError::Config(format!(
                    "prime character {c:?} is not in the model's vocabulary"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if prime.is_empty() {
        return Err(RnnError::Config(
            "the sampling prime must hold at least one character".into(),
        ));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut state = LayerStates::default();
    let mut logits = state.advance(model, &prime)?;
    let mut text = opts.prime.clone();
    for _ in 0..opts.len {
        let next = draw(&logits, opts.temperature, rng.random::<f64>());
        text.push(vocab[next]);
        logits = state.advance(model, &[next])?;
    }
    Ok(text)
}

/// Every layer's (h, c) after the characters fed so far; empty before the first.
#[derive(Default)]
struct LayerStates<F> {
    /// Per layer: h (1, 1, H) and, for an LSTM, c (1, 1, H).
    layers: Vec<(Array3<F>, Option<Array3<F>>)>,
}

impl<F: Scalar> LayerStates<F> {
    /// Feeds `tokens` in order and returns the logits after the last one (as f64).
    fn advance(&mut self, model: &SeqModel<F>, tokens: &[usize]) -> Result<Vec<f64>> {
        let embedding = model.embedding.as_ref().ok_or_else(|| {
            RnnError::Config("sampling needs a model with a token embedding".into())
        })?;
        let ids = Array2::from_shape_vec((tokens.len(), 1), tokens.to_vec())
            .map_err(|e| RnnError::Config(e.to_string()))?;
        let mut x = embedding.forward(ids.view())?;
        let mut next = Vec::with_capacity(model.rnn.len());
        for (k, params) in model.rnn.iter().enumerate() {
            let mut batch = SequenceBatch::new(x.view());
            if let Some((h, c)) = self.layers.get(k) {
                batch = batch.h0(h.view());
                if let Some(c) = c {
                    batch = batch.c0(c.view());
                }
            }
            let out = cpu::forward(params, &batch)?;
            next.push((out.h_n, out.c_n));
            x = out.output;
        }
        self.layers = next;
        let last = x.index_axis(Axis(0), tokens.len() - 1).to_owned();
        let logits = model.linear.forward(last.view())?;
        Ok(logits.iter().map(|&v| Scalar::to_f64(v)).collect())
    }
}

/// The index drawn from softmax(logits / temperature) by the uniform `u` ∈ [0, 1).
fn draw(logits: &[f64], temperature: f64, u: f64) -> usize {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&z| ((z - max) / temperature).exp())
        .collect();
    let mut target = u * weights.iter().sum::<f64>();
    for (i, &w) in weights.iter().enumerate() {
        if target < w {
            return i;
        }
        target -= w;
    }
    weights.len() - 1
}
