//! A trainable sequence model: optional embedding → stack of RNN layers → linear output layer,
//! with dropout between layers and before the output layer (never on recurrent connections).
//!
//! The RNN stack is held as one single-layer [`RnnParams`] per layer so that the trainer can
//! apply a dropout mask to each layer's output sequence between the layer calls; the CPU
//! reference's own multi-layer path ignores `RnnConfig::dropout`. [`SeqModel::rnn_params`]
//! merges the stack into one multi-layer network in torch's layout, and checkpoints use
//! torch's names (`weight_ih_l{k}`, `linear.weight`, `embedding.weight`).

use super::dropout::Dropout;
use super::layers::{Embedding, Linear, Readout};
use super::loss::{cross_entropy, mse, LossGrad};
use crate::batch::{check_finite, SequenceBatch, UpstreamGrads};
use crate::config::{CellKind, RnnConfig};
use crate::cpu;
use crate::error::{check_shape, try_zeros, Result, RnnError};
use crate::params::{
    check_named_shapes, param_count, param_name, param_shapes, ParamKind, RnnParams,
};
use crate::scalar::Scalar;
use ndarray::{Array2, Array3, ArrayD, ArrayView2, ArrayView3, ArrayViewD};
use std::collections::HashMap;

/// What the model reads at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelInput {
    /// A feature vector of this size.
    Features(usize),
    /// A token id from `vocab` symbols, embedded into `dim` features.
    Tokens { vocab: usize, dim: usize },
}

/// Shape of a [`SeqModel`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeqModelConfig {
    pub cell: CellKind,
    pub input: ModelInput,
    pub hidden: usize,
    pub layers: usize,
    /// O: classes (cross-entropy) or target size (MSE).
    pub outputs: usize,
    /// Dropout probability on every layer's output sequence (training only).
    pub dropout: f32,
    pub readout: Readout,
}

impl SeqModelConfig {
    /// The single-layer RNN config of `layer`.
    pub fn layer_config(&self, layer: usize) -> RnnConfig {
        let input = match (layer, self.input) {
            (0, ModelInput::Features(n)) => n,
            (0, ModelInput::Tokens { dim, .. }) => dim,
            _ => self.hidden,
        };
        RnnConfig::new(self.cell, input, self.hidden)
    }

    /// The equivalent multi-layer torch config.
    pub fn rnn_config(&self) -> RnnConfig {
        let mut config = self.layer_config(0).layers(self.layers);
        config.dropout = self.dropout;
        config
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("outputs", self.outputs),
        ] {
            if v == 0 {
                return Err(RnnError::Config(format!("{what} must be at least 1")));
            }
        }
        if let ModelInput::Tokens { vocab: 0, .. } = self.input {
            return Err(RnnError::Config(
                "vocabulary must hold at least one symbol".into(),
            ));
        }
        self.param_count().map(|_| ())
    }

    /// The number of scalar parameters, in checked arithmetic: an error naming the sizes when
    /// it does not fit in memory's address range.
    fn param_count(&self) -> Result<usize> {
        let rnn = param_count(&self.rnn_config())?;
        let embedding = match self.input {
            ModelInput::Tokens { vocab, dim } => vocab.checked_mul(dim),
            ModelInput::Features(_) => Some(0),
        };
        let linear = self.outputs.checked_mul(self.hidden + 1);
        [embedding, linear]
            .into_iter()
            .try_fold(rnn, |total, n| total.checked_add(n?))
            .filter(|&n| n <= isize::MAX as usize / std::mem::size_of::<f64>())
            .ok_or_else(|| {
                RnnError::Config(format!(
                    "input {:?}, hidden {}, outputs {}: the model's size overflows",
                    self.input, self.hidden, self.outputs
                ))
            })
    }

    /// Every tensor's name and shape, in [`SeqModel::named`] order, produced lazily (see
    /// [`param_shapes`]); call after `validate`, which checks the sizes.
    fn tensor_shapes(&self) -> impl Iterator<Item = (String, Vec<usize>)> {
        let embedding = match self.input {
            ModelInput::Tokens { vocab, dim } => {
                Some(("embedding.weight".into(), vec![vocab, dim]))
            }
            ModelInput::Features(_) => None,
        };
        let linear = [
            ("linear.weight".into(), vec![self.outputs, self.hidden]),
            ("linear.bias".into(), vec![self.outputs]),
        ];
        embedding
            .into_iter()
            .chain(param_shapes(&self.rnn_config()))
            .chain(linear)
    }
}

/// The inputs of one batch.
#[derive(Clone, Debug)]
pub enum Inputs<'a, F> {
    /// (T, B, I)
    Features(ArrayView3<'a, F>),
    /// (T, B) token ids
    Tokens(ArrayView2<'a, usize>),
}

impl<F> Inputs<'_, F> {
    /// (T, B).
    pub fn dims(&self) -> (usize, usize) {
        match self {
            Inputs::Features(x) => (x.dim().0, x.dim().1),
            Inputs::Tokens(x) => x.dim(),
        }
    }
}

/// The targets of one batch, one per output row (see [`Readout`]).
#[derive(Clone, Debug)]
pub enum Targets<'a, F> {
    /// (N) classes for softmax cross-entropy
    Classes(&'a [usize]),
    /// (N, O) values for mean squared error
    Values(ArrayView2<'a, F>),
}

/// Which dropout masks a training step uses: streams `step·L + layer` under `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutKey {
    pub seed: u32,
    pub step: u32,
}

/// Embedding (optional), one single-layer RNN per layer, and the output layer.
/// Gradients use the same struct (d loss / d each tensor).
#[derive(Clone, Debug, PartialEq)]
pub struct SeqModel<F> {
    pub config: SeqModelConfig,
    pub embedding: Option<Embedding<F>>,
    /// `rnn[k]`: layer k, a single-layer network
    pub rnn: Vec<RnnParams<F>>,
    pub linear: Linear<F>,
}

/// What one forward pass keeps for the backward pass.
struct ForwardRecord<F: Scalar> {
    tapes: Vec<cpu::Tape<F>>,
    /// The output layer's input rows (N, H)
    rows: Array2<F>,
    /// (N, O)
    outputs: Array2<F>,
}

impl<F: Scalar> SeqModel<F> {
    /// torch-style init, reproducible from `seed`.
    pub fn init(config: &SeqModelConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let embedding = match config.input {
            ModelInput::Tokens { vocab, dim } => Some(Embedding::init(vocab, dim, seed ^ 0xE3B0)?),
            ModelInput::Features(_) => None,
        };
        let rnn = (0..config.layers)
            .map(|k| RnnParams::init(&config.layer_config(k), seed.wrapping_add(1 + k as u64)))
            .collect::<Result<_>>()?;
        let linear = Linear::init(config.hidden, config.outputs, seed ^ 0x11AE)?;
        Ok(SeqModel {
            config: *config,
            embedding,
            rnn,
            linear,
        })
    }

    /// LSTM forget-gate bias init (Jozefowicz et al. 2015): in every layer b_if (rows H..2H of
    /// `bias_ih`) is set to `bias` and b_hf to 0, so the forget gate starts at ≈ σ(bias) and the
    /// cell state keeps its gradient over more steps. An error for other cells or no biases.
    pub fn set_forget_bias(&mut self, bias: f64) -> Result<()> {
        self.validate()?;
        if self.config.cell != CellKind::Lstm {
            return Err(RnnError::Config(format!(
                "a forget-gate bias needs an LSTM, this model has {:?} cells",
                self.config.cell
            )));
        }
        let h = self.config.hidden;
        for layer in self.rnn.iter_mut().flat_map(|p| p.layers.iter_mut()) {
            let (Some(b_ih), Some(b_hh)) = (&mut layer.b_ih, &mut layer.b_hh) else {
                return Err(RnnError::Config(
                    "a forget-gate bias needs an LSTM with biases".into(),
                ));
            };
            b_ih.slice_mut(ndarray::s![h..2 * h])
                .fill(F::from_f64(bias));
            b_hh.slice_mut(ndarray::s![h..2 * h]).fill(F::zero());
        }
        Ok(())
    }

    /// The same model with every tensor zero (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        let mut zeros = self.clone();
        for t in zeros.tensors_mut() {
            t.iter_mut().for_each(|v| *v = F::zero());
        }
        zeros
    }

    /// All layers as one multi-layer network in torch's layout and names.
    pub fn rnn_params(&self) -> RnnParams<F> {
        RnnParams {
            config: self.config.rnn_config(),
            layers: self
                .rnn
                .iter()
                .flat_map(|p| p.layers.iter().cloned())
                .collect(),
        }
    }

    /// Every tensor with its torch name: `embedding.weight`, `weight_ih_l{k}`, `weight_hh_l{k}`,
    /// `bias_ih_l{k}`, `bias_hh_l{k}`, `linear.weight`, `linear.bias`.
    pub fn named(&self) -> Vec<(String, ArrayD<F>)> {
        let mut out = Vec::new();
        if let Some(e) = &self.embedding {
            out.push(("embedding.weight".to_string(), e.weight.clone().into_dyn()));
        }
        out.extend(self.rnn_params().named());
        out.push((
            "linear.weight".to_string(),
            self.linear.weight.clone().into_dyn(),
        ));
        out.push((
            "linear.bias".to_string(),
            self.linear.bias.clone().into_dyn(),
        ));
        out
    }

    /// The names of [`SeqModel::tensors`], in the same order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.views().into_iter().map(|(name, _)| name).collect()
    }

    /// Every tensor with its torch name, as views, in [`SeqModel::named`] order (which names
    /// the RNN layers' tensors as one unidirectional torch network does).
    fn views(&self) -> Vec<(String, ArrayViewD<'_, F>)> {
        let mut out = Vec::new();
        if let Some(e) = &self.embedding {
            out.push(("embedding.weight".into(), e.weight.view().into_dyn()));
        }
        for (k, l) in self.rnn.iter().flat_map(|p| &p.layers).enumerate() {
            let name = |kind| param_name(kind, k, 0);
            out.push((name(ParamKind::WeightIh), l.w_ih.view().into_dyn()));
            out.push((name(ParamKind::WeightHh), l.w_hh.view().into_dyn()));
            let biases = [(ParamKind::BiasIh, &l.b_ih), (ParamKind::BiasHh, &l.b_hh)];
            for (kind, b) in biases {
                out.extend(b.as_ref().map(|b| (name(kind), b.view().into_dyn())));
            }
        }
        out.push(("linear.weight".into(), self.linear.weight.view().into_dyn()));
        out.push(("linear.bias".into(), self.linear.bias.view().into_dyn()));
        out
    }

    /// Every tensor as a flat slice of its elements in row-major order, in
    /// [`SeqModel::named`] order. A tensor that is not in standard (row-major, contiguous)
    /// layout, as a user may assign to the public fields (`w.reversed_axes()`), is not one
    /// slice: an error naming the first such tensor. [`SeqModel::make_standard_layout`] (or
    /// [`SeqModel::tensors_mut`]) brings every tensor into standard layout.
    pub fn tensors(&self) -> Result<Vec<&[F]>> {
        self.views()
            .into_iter()
            .map(|(name, view)| view.to_slice().ok_or(RnnError::Layout { tensor: name }))
            .collect()
    }

    /// Every tensor as a flat mutable slice, in [`SeqModel::named`] order. A tensor that is
    /// not in standard layout is first stored in it, values unchanged (see
    /// [`SeqModel::make_standard_layout`]).
    pub fn tensors_mut(&mut self) -> Vec<&mut [F]> {
        let mut out: Vec<&mut [F]> = Vec::new();
        if let Some(e) = &mut self.embedding {
            out.push(standard_slice_mut(&mut e.weight));
        }
        for l in self.rnn.iter_mut().flat_map(|p| &mut p.layers) {
            out.push(standard_slice_mut(&mut l.w_ih));
            out.push(standard_slice_mut(&mut l.w_hh));
            out.extend(l.b_ih.as_mut().map(standard_slice_mut));
            out.extend(l.b_hh.as_mut().map(standard_slice_mut));
        }
        out.push(standard_slice_mut(&mut self.linear.weight));
        out.push(standard_slice_mut(&mut self.linear.bias));
        out
    }

    /// Stores every tensor that is not in standard (row-major, contiguous) layout in it,
    /// values unchanged; tensors already in it are not touched. Afterwards
    /// [`SeqModel::tensors`] succeeds.
    pub fn make_standard_layout(&mut self) {
        self.tensors_mut();
    }

    /// Builds a model of `config` from named tensors (see [`SeqModel::named`]); a missing,
    /// extra, misshaped or non-finite tensor is an error naming it. The config's sizes are
    /// checked against the tensors before anything of their size is allocated.
    pub fn from_named(
        config: &SeqModelConfig,
        tensors: &HashMap<String, ArrayD<F>>,
    ) -> Result<Self> {
        config.validate()?;
        check_named_shapes(config.tensor_shapes(), tensors)?;
        let mut model = Self::init(config, 0)?;
        let names = model.tensor_names();
        for (name, target) in names.iter().zip(model.tensors_mut()) {
            for (t, s) in target.iter_mut().zip(tensors[name].iter()) {
                *t = *s;
            }
        }
        model.validate()?;
        Ok(model)
    }

    /// Checks every tensor's shape against the config and that its values are finite. Any
    /// memory layout is accepted: only [`SeqModel::tensors`] needs standard layout.
    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        if self.rnn.len() != self.config.layers {
            return Err(RnnError::Config(format!(
                "model holds {} RNN layers, its config {}",
                self.rnn.len(),
                self.config.layers
            )));
        }
        for (k, layer) in self.rnn.iter().enumerate() {
            if layer.config != self.config.layer_config(k) {
                return Err(RnnError::Config(format!(
                    "RNN layer {k} has config {:?}, expected {:?}",
                    layer.config,
                    self.config.layer_config(k)
                )));
            }
            crate::batch::check_params(layer)?;
        }
        match (self.config.input, &self.embedding) {
            (ModelInput::Tokens { vocab, dim }, Some(e)) => {
                check_shape("embedding.weight", &[vocab, dim], e.weight.shape())?;
                check_finite("embedding.weight", &e.weight)?;
            }
            (ModelInput::Features(_), None) => {}
            (ModelInput::Tokens { .. }, None) => {
                return Err(RnnError::MissingTensor("embedding.weight".into()))
            }
            (ModelInput::Features(_), Some(_)) => {
                return Err(RnnError::UnexpectedTensor("embedding.weight".into()))
            }
        }
        check_shape(
            "linear.weight",
            &[self.config.outputs, self.config.hidden],
            self.linear.weight.shape(),
        )?;
        check_shape(
            "linear.bias",
            &[self.config.outputs],
            self.linear.bias.shape(),
        )?;
        check_finite("linear.weight", &self.linear.weight)?;
        check_finite("linear.bias", &self.linear.bias)?;
        Ok(())
    }

    /// The length of every tensor, in [`SeqModel::tensors`] order (any layout).
    pub fn tensor_lens(&self) -> Vec<usize> {
        self.views().iter().map(|(_, t)| t.len()).collect()
    }

    /// Total number of scalar parameters.
    pub fn num_parameters(&self) -> usize {
        self.tensor_lens().iter().sum()
    }

    /// The RNN input sequence (T, B, I) of `inputs`.
    fn embed(&self, inputs: &Inputs<'_, F>) -> Result<Array3<F>> {
        match (inputs, &self.embedding) {
            (Inputs::Features(x), None) => {
                let mut owned: Array3<F> = try_zeros("input", x.raw_dim())?;
                owned.assign(x);
                Ok(owned)
            }
            (Inputs::Tokens(tokens), Some(e)) => e.forward(tokens.view()),
            (Inputs::Features(_), Some(_)) => Err(RnnError::Config(
                "this model reads token ids, got feature vectors".into(),
            )),
            (Inputs::Tokens(_), None) => Err(RnnError::Config(
                "this model reads feature vectors, got token ids".into(),
            )),
        }
    }

    fn forward_record(
        &self,
        inputs: &Inputs<'_, F>,
        dropout: Option<DropoutKey>,
    ) -> Result<ForwardRecord<F>> {
        self.validate()?;
        let drop = Dropout::new(self.config.dropout)?;
        let mut x = self.embed(inputs)?;
        let mut tapes = Vec::with_capacity(self.rnn.len());
        for (k, layer) in self.rnn.iter().enumerate() {
            let (out, tape) = cpu::forward_train(layer, &SequenceBatch::new(x.view()))?;
            x = out.output;
            if let Some(key) = dropout {
                drop.apply(standard_slice_mut(&mut x), key.seed, self.stream(key, k))?;
            }
            tapes.push(tape);
        }
        let rows = self.config.readout.select(x.view())?;
        let outputs = self.linear.forward(rows.view())?;
        Ok(ForwardRecord {
            tapes,
            rows,
            outputs,
        })
    }

    /// The dropout stream of `layer` under `key`: `step·L + layer`.
    pub(crate) fn stream(&self, key: DropoutKey, layer: usize) -> u32 {
        key.step
            .wrapping_mul(self.rnn.len() as u32)
            .wrapping_add(layer as u32)
    }

    /// Evaluation forward (no dropout): the output layer's rows (N, O).
    pub fn predict(&self, inputs: &Inputs<'_, F>) -> Result<Array2<F>> {
        Ok(self.forward_record(inputs, None)?.outputs)
    }

    /// Evaluation loss (no dropout).
    pub fn loss(&self, inputs: &Inputs<'_, F>, targets: &Targets<'_, F>) -> Result<F> {
        Ok(loss_and_grad(self.predict(inputs)?.view(), targets)?.loss)
    }

    /// Training forward and backward: the loss and d loss / d every tensor. With `dropout`,
    /// masks are drawn from `key` (and the model's dropout probability).
    pub fn loss_and_grads(
        &self,
        inputs: &Inputs<'_, F>,
        targets: &Targets<'_, F>,
        dropout: Option<DropoutKey>,
    ) -> Result<(F, SeqModel<F>)> {
        let (t, b) = inputs.dims();
        let record = self.forward_record(inputs, dropout)?;
        let LossGrad { loss, grad } = loss_and_grad(record.outputs.view(), targets)?;
        let mut grads = self.zeros_like();
        let linear = self.linear.backward(record.rows.view(), grad.view())?;
        grads.linear.weight = linear.weight;
        grads.linear.bias = linear.bias;
        let mut upstream = self.config.readout.scatter(linear.input, t, b)?;
        let drop = Dropout::new(self.config.dropout)?;
        for k in (0..self.rnn.len()).rev() {
            if let Some(key) = dropout {
                drop.apply(
                    standard_slice_mut(&mut upstream),
                    key.seed,
                    self.stream(key, k),
                )?;
            }
            let g = cpu::backward(
                &self.rnn[k],
                &record.tapes[k],
                &UpstreamGrads::new(upstream.view()),
            )?;
            grads.rnn[k] = g.params;
            upstream = g.input;
        }
        if let (Inputs::Tokens(tokens), Some(e), Some(ge)) =
            (inputs, &self.embedding, &mut grads.embedding)
        {
            ge.weight = e.backward(tokens.view(), upstream.view())?;
        }
        Ok((loss, grads))
    }
}

/// The loss of output rows (N, O) against `targets`, with its gradient.
pub fn loss_and_grad<F: Scalar>(
    outputs: ArrayView2<'_, F>,
    targets: &Targets<'_, F>,
) -> Result<LossGrad<F>> {
    match targets {
        Targets::Classes(classes) => cross_entropy(outputs, classes),
        Targets::Values(values) => mse(outputs, values.view()),
    }
}

/// A tensor's elements in row-major order, as one mutable slice: a tensor in another layout
/// is first stored in standard layout, values unchanged.
fn standard_slice_mut<F: Clone, D: ndarray::Dimension>(a: &mut ndarray::Array<F, D>) -> &mut [F] {
    if !a.is_standard_layout() {
        *a = a.as_standard_layout().into_owned();
    }
    a.as_slice_mut()
        .unwrap_or_else(|| unreachable!("an owned array in standard layout is one slice"))
}
