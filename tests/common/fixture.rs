//! PyTorch reference fixtures (see tests/fixtures/torch/README.md) and the comparison of a
//! forward + backward result against them.

use ndarray::{Array3, ArrayD, ArrayView, ArrayViewD, Dimension, Ix3};
use safetensors::Dtype;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use wgpu_rnn::batch::{ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use wgpu_rnn::config::{CellKind, Nonlinearity, RnnConfig};
use wgpu_rnn::error::{check_shape, Result, RnnError};
use wgpu_rnn::params::RnnParams;
use wgpu_rnn::scalar::Scalar;
use wgpu_rnn::tensorfile;

/// Tolerance on ‖Δ‖/‖ref‖ for output, h_n and c_n.
pub const OUTPUT_TOL: f64 = 1e-5;
/// Tolerance on ‖Δ‖/‖ref‖ for every gradient.
pub const GRAD_TOL: f64 = 1e-4;

/// The only layout the fixtures use.
const SEQ_MAJOR: &str = "seq_major (T, B, F)";

/// One complete torch forward + backward case.
#[derive(Clone, Debug)]
pub struct Fixture<F> {
    /// The file name without extension.
    pub name: String,
    pub config: RnnConfig,
    pub params: RnnParams<F>,
    /// (T, B, I)
    pub input: Array3<F>,
    /// (L·D, B, H), when the case gave one
    pub h0: Option<Array3<F>>,
    /// (L·D, B, H), LSTM cases that gave h0
    pub c0: Option<Array3<F>>,
    /// (B), variable-length cases only
    pub lengths: Option<Vec<usize>>,
    /// (T, B, D·H)
    pub expected_output: Array3<F>,
    /// (L·D, B, H)
    pub expected_h_n: Array3<F>,
    /// (L·D, B, H), LSTM only
    pub expected_c_n: Option<Array3<F>>,
    /// (T, B, D·H)
    pub grad_output: Array3<F>,
    /// (L·D, B, H)
    pub grad_h_n: Option<Array3<F>>,
    /// (L·D, B, H), LSTM only
    pub grad_c_n: Option<Array3<F>>,
    /// Every `grad.<name>` tensor of the file (parameters by torch name, input, h_0, c_0),
    /// sorted by name.
    pub expected_grads: Vec<(String, ArrayD<F>)>,
}

impl<F: Scalar> Fixture<F> {
    /// Reads a fixture file; values are converted to `F`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = tensorfile::read_bytes(path)?;
        let metadata = Metadata(tensorfile::metadata(path, &bytes)?);
        let file = tensorfile::parse(path, &bytes)?;
        let config = metadata.config()?;
        let (t, b) = (metadata.usize("seq_len")?, metadata.usize("batch")?);
        let has_h0 = metadata.bool("has_h0")?;
        let layout = metadata.string("layout")?;
        if layout != SEQ_MAJOR {
            return Err(metadata_error(format!(
                "key `layout` is `{layout}`, only `{SEQ_MAJOR}` is supported"
            )));
        }

        let mut tensors: HashMap<String, ArrayD<F>> = HashMap::new();
        let mut lengths = None;
        for (name, view) in file.tensors() {
            if name == "lengths" {
                lengths = Some(read_lengths(&view)?);
            } else {
                let array = tensorfile::view_to_array(&name, &view)?;
                tensors.insert(name, array);
            }
        }
        let param_tensors: HashMap<String, ArrayD<F>> = tensors
            .iter()
            .filter(|(name, _)| name.starts_with("weight_") || name.starts_with("bias_"))
            .map(|(name, a)| (name.clone(), a.clone()))
            .collect();
        let params = RnnParams::from_named(&config, &param_tensors)?;

        let states = [
            config.num_layers * config.num_directions(),
            b,
            config.hidden_size,
        ];
        let sequence = [t, b, config.output_size()];
        let lstm = config.cell.has_cell_state();
        let mut take = |name: &str, shape: &[usize], required: bool| -> Result<Option<Array3<F>>> {
            match tensors.remove(name) {
                Some(a) => {
                    check_shape(name, shape, a.shape())?;
                    Ok(Some(
                        a.into_dimensionality::<Ix3>()
                            .map_err(|_| RnnError::shape(name, shape, &[]))?,
                    ))
                }
                None if required => Err(RnnError::MissingTensor(name.to_string())),
                None => Ok(None),
            }
        };
        let require = |a: Option<Array3<F>>, name: &str| {
            a.ok_or_else(|| RnnError::MissingTensor(name.to_string()))
        };
        let input = require(take("input", &[t, b, config.input_size], true)?, "input")?;
        let h0 = take("h_0", &states, has_h0)?;
        let c0 = take("c_0", &states, has_h0 && lstm)?;
        let expected_output = require(take("output", &sequence, true)?, "output")?;
        let expected_h_n = require(take("h_n", &states, true)?, "h_n")?;
        let expected_c_n = take("c_n", &states, lstm)?;
        let grad_output = require(take("grad_output", &sequence, true)?, "grad_output")?;
        let grad_h_n = take("grad_h_n", &states, false)?;
        let grad_c_n = take("grad_c_n", &states, false)?;
        let mut expected_grads: Vec<(String, ArrayD<F>)> = tensors
            .into_iter()
            .filter(|(name, _)| name.starts_with("grad."))
            .collect();
        expected_grads.sort_by(|a, b| a.0.cmp(&b.0));

        let fixture = Fixture {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            config,
            params,
            input,
            h0,
            c0,
            lengths,
            expected_output,
            expected_h_n,
            expected_c_n,
            grad_output,
            grad_h_n,
            grad_c_n,
            expected_grads,
        };
        fixture.batch().validate(&fixture.config)?;
        fixture.upstream().validate(&fixture.config, t, b)?;
        Ok(fixture)
    }

    /// The forward call's inputs.
    pub fn batch(&self) -> SequenceBatch<'_, F> {
        SequenceBatch {
            input: self.input.view(),
            h0: self.h0.as_ref().map(|a| a.view()),
            c0: self.c0.as_ref().map(|a| a.view()),
            lengths: self.lengths.as_deref(),
        }
    }

    /// The upstream gradients of the loss.
    pub fn upstream(&self) -> UpstreamGrads<'_, F> {
        UpstreamGrads {
            output: self.grad_output.view(),
            h_n: self.grad_h_n.as_ref().map(|a| a.view()),
            c_n: self.grad_c_n.as_ref().map(|a| a.view()),
        }
    }
}

/// The header's `__metadata__`, each value JSON-encoded.
struct Metadata(HashMap<String, String>);

impl Metadata {
    fn value(&self, key: &str) -> Result<Value> {
        let raw = self
            .0
            .get(key)
            .ok_or_else(|| metadata_error(format!("missing key `{key}`")))?;
        serde_json::from_str(raw)
            .map_err(|e| metadata_error(format!("key `{key}`: `{raw}` is not JSON: {e}")))
    }

    fn invalid(key: &str, value: &Value, expected: &str) -> RnnError {
        metadata_error(format!("key `{key}` is {value}, expected {expected}"))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.value(key)?;
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| Self::invalid(key, &v, "a non-negative integer"))
    }

    fn bool(&self, key: &str) -> Result<bool> {
        let v = self.value(key)?;
        v.as_bool()
            .ok_or_else(|| Self::invalid(key, &v, "true or false"))
    }

    fn string(&self, key: &str) -> Result<String> {
        let v = self.value(key)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Self::invalid(key, &v, "a string"))
    }

    fn config(&self) -> Result<RnnConfig> {
        let cell_name = self.string("cell")?;
        let nonlinearity = self.value("nonlinearity")?;
        let cell = match cell_name.as_str() {
            "lstm" => CellKind::Lstm,
            "gru" => CellKind::Gru,
            "rnn" => {
                let name = nonlinearity.as_str().unwrap_or_default();
                CellKind::Rnn(Nonlinearity::parse(name).map_err(|_| {
                    Self::invalid(
                        "nonlinearity",
                        &nonlinearity,
                        "\"tanh\", \"relu\" or \"identity\"",
                    )
                })?)
            }
            _ => {
                return Err(metadata_error(format!(
                    "key `cell` is `{cell_name}`, expected rnn, lstm or gru"
                )))
            }
        };
        let config = RnnConfig::new(cell, self.usize("input_size")?, self.usize("hidden_size")?)
            .layers(self.usize("num_layers")?)
            .bidirectional(self.bool("bidirectional")?)
            .bias(self.bool("bias")?);
        config.validate()?;
        Ok(config)
    }
}

fn metadata_error(message: String) -> RnnError {
    RnnError::Metadata(format!("fixture metadata: {message}"))
}

/// Reads the `lengths` tensor (i64, (B)).
fn read_lengths(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<usize>> {
    if view.dtype() != Dtype::I64 {
        return Err(RnnError::Dtype {
            tensor: "lengths".into(),
            expected: "I64".into(),
            got: format!("{:?}", view.dtype()),
        });
    }
    view.data()
        .chunks_exact(8)
        .map(|bytes| {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            let len = i64::from_le_bytes(le);
            usize::try_from(len)
                .map_err(|_| RnnError::Lengths(format!("negative length {len} in fixture")))
        })
        .collect()
}

/// The comparison of one computed tensor with its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorCheck {
    /// `output`, `h_n`, `c_n` or the reference's `grad.<name>`.
    pub name: String,
    /// ‖got − ref‖ / ‖ref‖ (‖got − ref‖ when ‖ref‖ = 0); infinite if missing or misshaped.
    pub rel_err: f64,
    /// max |got − ref|
    pub max_abs: f64,
    pub tol: f64,
}

impl TensorCheck {
    /// Whether `rel_err <= tol` (false for NaN).
    pub fn passed(&self) -> bool {
        self.rel_err <= self.tol
    }

    fn compare<F: Scalar, D: Dimension>(
        name: &str,
        got: Option<ArrayView<'_, F, D>>,
        reference: ArrayView<'_, F, D>,
        tol: f64,
    ) -> Self {
        let (rel_err, max_abs) = match got {
            Some(got) => error_norms(got.into_dyn(), reference.into_dyn()),
            None => (f64::INFINITY, f64::INFINITY),
        };
        TensorCheck {
            name: name.to_string(),
            rel_err,
            max_abs,
            tol,
        }
    }
}

impl fmt::Display for TensorCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} rel_err {:.3e}  max_abs {:.3e}  tol {:.0e}  {}",
            self.name,
            self.rel_err,
            self.max_abs,
            self.tol,
            if self.passed() { "ok" } else { "FAIL" }
        )
    }
}

/// (‖got − ref‖ / ‖ref‖, max |got − ref|) in f64; ‖got − ref‖ when ‖ref‖ = 0; infinite when
/// the shapes differ.
fn error_norms<F: Scalar>(got: ArrayViewD<'_, F>, reference: ArrayViewD<'_, F>) -> (f64, f64) {
    if got.shape() != reference.shape() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let (mut diff_sq, mut ref_sq, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&g, &r) in got.iter().zip(reference.iter()) {
        let (g, r) = (g.to_f64(), r.to_f64());
        let d = g - r;
        diff_sq += d * d;
        ref_sq += r * r;
        max_abs = if d.is_nan() {
            f64::NAN
        } else {
            max_abs.max(d.abs())
        };
    }
    let diff = diff_sq.sqrt();
    let rel = if ref_sq > 0.0 {
        diff / ref_sq.sqrt()
    } else {
        diff
    };
    (rel, max_abs)
}

/// ‖got − ref‖ / ‖ref‖ computed in f64 (‖got − ref‖ when ‖ref‖ = 0; infinite when the shapes
/// differ; NaN when `got` holds NaN).
pub fn relative_error<F: Scalar, D: Dimension>(
    got: ArrayView<'_, F, D>,
    reference: ArrayView<'_, F, D>,
) -> f64 {
    error_norms(got.into_dyn(), reference.into_dyn()).0
}

/// Compares a forward result and its gradients with the fixture: output, h_n, c_n with
/// [`OUTPUT_TOL`], every `grad.*` reference with [`GRAD_TOL`]. A tensor the fixture has but the
/// result lacks (or the other way round) is a failed check.
pub fn check_fixture<F: Scalar>(
    fx: &Fixture<F>,
    output: &ForwardOutput<F>,
    grads: &Gradients<F>,
) -> Vec<TensorCheck> {
    let mut checks = vec![
        TensorCheck::compare(
            "output",
            Some(output.output.view()),
            fx.expected_output.view(),
            OUTPUT_TOL,
        ),
        TensorCheck::compare(
            "h_n",
            Some(output.h_n.view()),
            fx.expected_h_n.view(),
            OUTPUT_TOL,
        ),
    ];
    match (&fx.expected_c_n, &output.c_n) {
        (Some(reference), got) => checks.push(TensorCheck::compare(
            "c_n",
            got.as_ref().map(|a| a.view()),
            reference.view(),
            OUTPUT_TOL,
        )),
        (None, Some(_)) => checks.push(TensorCheck {
            name: "c_n (not in fixture)".into(),
            rel_err: f64::INFINITY,
            max_abs: f64::INFINITY,
            tol: OUTPUT_TOL,
        }),
        (None, None) => {}
    }
    let named_grads = grads.params.named();
    let param_grads: HashMap<&str, &ArrayD<F>> =
        named_grads.iter().map(|(n, a)| (n.as_str(), a)).collect();
    for (name, reference) in &fx.expected_grads {
        let got = match name.strip_prefix("grad.") {
            Some("input") => Some(grads.input.view().into_dyn()),
            Some("h_0") => Some(grads.h0.view().into_dyn()),
            Some("c_0") => grads.c0.as_ref().map(|a| a.view().into_dyn()),
            Some(param) => param_grads.get(param).map(|a| a.view()),
            None => None,
        };
        checks.push(TensorCheck::compare(name, got, reference.view(), GRAD_TOL));
    }
    let has_reference = |name: &str| fx.expected_grads.iter().any(|(n, _)| n == name);
    for (name, _) in &named_grads {
        let full = format!("grad.{name}");
        if !has_reference(&full) {
            checks.push(TensorCheck {
                name: format!("{full} (not in fixture)"),
                rel_err: f64::INFINITY,
                max_abs: f64::INFINITY,
                tol: GRAD_TOL,
            });
        }
    }
    if !has_reference("grad.input") {
        checks.push(TensorCheck {
            name: "grad.input (not in fixture)".into(),
            rel_err: f64::INFINITY,
            max_abs: f64::INFINITY,
            tol: GRAD_TOL,
        });
    }
    checks
}
