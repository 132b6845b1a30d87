//! Checkpoints: model and optimizer state in one safetensors file.
//!
//! Tensors: the model's torch names ([`SeqModel::named`]) and the optimizer state as
//! `optim.<buffer>.<name>` (`optim.exp_avg.weight_ih_l0`, `optim.exp_avg_sq.…`,
//! `optim.momentum_buffer.…`). Metadata (JSON values): `step`, `model` (the
//! [`SeqModelConfig`]) and `optimizer` (the [`OptimizerConfig`]); the settings of the run that
//! wrote it ([`RunMetadata`]) as `run.<key>`. Loading restores model and optimizer exactly, so
//! training resumes as if it had not stopped.

use super::layers::Readout;
use super::model::{ModelInput, SeqModel, SeqModelConfig};
use super::optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
use crate::config::CellKind;
use crate::error::{check_shape, Result, RnnError};
use crate::scalar::Scalar;
use crate::tensorfile;
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The settings of the run that wrote a checkpoint (its data's vocabulary, batch size, seed,
/// ...), as the application names and encodes them: what a resumed run needs to check or
/// continue. Stored as metadata `run.<key>`.
pub type RunMetadata = BTreeMap<String, String>;

/// The prefix of [`RunMetadata`] keys in a checkpoint's metadata.
const RUN_PREFIX: &str = "run.";

/// Writes `model` and `optimizer` to `path` (in `F`'s dtype).
pub fn save_checkpoint<F: Scalar>(
    path: impl AsRef<Path>,
    model: &SeqModel<F>,
    optimizer: &Optimizer<F>,
) -> Result<()> {
    save_checkpoint_with_run(path, model, optimizer, &RunMetadata::new())
}

/// [`save_checkpoint`] with the settings of the run that wrote it ([`load_run_metadata`]
/// reads them back).
pub fn save_checkpoint_with_run<F: Scalar>(
    path: impl AsRef<Path>,
    model: &SeqModel<F>,
    optimizer: &Optimizer<F>,
    run: &RunMetadata,
) -> Result<()> {
    model.validate()?;
    optimizer.check_lens(&model.tensor_lens())?;
    let mut tensors = model.named();
    let shapes: Vec<(String, Vec<usize>)> = tensors
        .iter()
        .map(|(name, a)| (name.clone(), a.shape().to_vec()))
        .collect();
    for (buffer, states) in optimizer.config.state_names().iter().zip(&optimizer.state) {
        for ((name, shape), state) in shapes.iter().zip(states) {
            let array = ArrayD::from_shape_vec(IxDyn(shape), state.clone()).map_err(|_| {
                RnnError::shape(format!("optim.{buffer}.{name}"), shape, &[state.len()])
            })?;
            tensors.push((format!("optim.{buffer}.{name}"), array));
        }
    }
    let mut metadata = HashMap::from([
        ("step".to_string(), optimizer.step.to_string()),
        (
            "model".to_string(),
            model_config_json(&model.config).to_string(),
        ),
        (
            "optimizer".to_string(),
            optimizer_json(&optimizer.config).to_string(),
        ),
    ]);
    metadata.extend(
        run.iter()
            .map(|(k, v)| (format!("{RUN_PREFIX}{k}"), v.clone())),
    );
    tensorfile::write_arrays(path.as_ref(), &tensors, Some(metadata))
}

/// The [`RunMetadata`] of a checkpoint (empty when it was saved without), read from the file's
/// header only.
pub fn load_run_metadata(path: impl AsRef<Path>) -> Result<RunMetadata> {
    let path = path.as_ref();
    let bytes = tensorfile::read_bytes(path)?;
    let metadata = tensorfile::metadata(path, &bytes)?;
    Ok(metadata
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(RUN_PREFIX)?.to_string(), v)))
        .collect())
}

/// Reads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint<F: Scalar>(path: impl AsRef<Path>) -> Result<(SeqModel<F>, Optimizer<F>)> {
    let path = path.as_ref();
    let bytes = tensorfile::read_bytes(path)?;
    let metadata = tensorfile::metadata(path, &bytes)?;
    let field = |key: &str| -> Result<Value> {
        let text = metadata
            .get(key)
            .ok_or_else(|| metadata_error(format!("lacks `{key}`")))?;
        serde_json::from_str(text).map_err(|e| metadata_error(format!("`{key}`: {e}")))
    };
    let step = field("step")?
        .as_u64()
        .ok_or_else(|| metadata_error("`step` is not an unsigned integer".into()))?;
    let config = parse_model_config(&field("model")?)?;
    let optimizer_config = parse_optimizer(&field("optimizer")?)?;
    let file = tensorfile::parse(path, &bytes)?;
    let (mut optim_tensors, model_tensors): (HashMap<String, ArrayD<F>>, _) =
        tensorfile::all_arrays(&file)?
            .into_iter()
            .partition(|(name, _)| name.starts_with("optim."));
    let model = SeqModel::from_named(&config, &model_tensors)?;
    let mut optimizer = Optimizer::new(optimizer_config, &model.tensor_lens())?;
    optimizer.step = step;
    for (buffer, states) in optimizer_config
        .state_names()
        .iter()
        .zip(&mut optimizer.state)
    {
        for ((name, shape), state) in model.named().iter().zip(states.iter_mut()) {
            let key = format!("optim.{buffer}.{name}");
            let a = optim_tensors
                .remove(&key)
                .ok_or_else(|| RnnError::MissingTensor(key.clone()))?;
            check_shape(&key, shape.shape(), a.shape())?;
            state.iter_mut().zip(a.iter()).for_each(|(s, v)| *s = *v);
        }
    }
    if let Some(extra) = optim_tensors.keys().min() {
        return Err(RnnError::UnexpectedTensor(extra.clone()));
    }
    Ok((model, optimizer))
}

fn model_config_json(c: &SeqModelConfig) -> Value {
    let input = match c.input {
        ModelInput::Features(n) => json!({"features": n}),
        ModelInput::Tokens { vocab, dim } => json!({"vocab": vocab, "dim": dim}),
    };
    let cell = match c.cell {
        CellKind::Rnn(nl) => format!("rnn_{}", nl.name()),
        other => other.name().to_string(),
    };
    json!({
        "cell": cell,
        "input": input,
        "hidden": c.hidden,
        "layers": c.layers,
        "outputs": c.outputs,
        "dropout": c.dropout,
        "readout": match c.readout { Readout::EveryStep => "every_step", Readout::LastStep => "last_step" },
    })
}

fn parse_model_config(v: &Value) -> Result<SeqModelConfig> {
    let usize_of = |v: &Value, key: &str| -> Result<usize> {
        v.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| metadata_error(format!("`model` lacks integer `{key}`")))
    };
    let cell = CellKind::parse(
        v.get("cell")
            .and_then(Value::as_str)
            .ok_or_else(|| metadata_error("`model` lacks `cell`".into()))?,
    )?;
    let input_value = v
        .get("input")
        .ok_or_else(|| metadata_error("`model` lacks `input`".into()))?;
    let input = if input_value.get("features").is_some() {
        ModelInput::Features(usize_of(input_value, "features")?)
    } else {
        ModelInput::Tokens {
            vocab: usize_of(input_value, "vocab")?,
            dim: usize_of(input_value, "dim")?,
        }
    };
    let readout = match v.get("readout").and_then(Value::as_str) {
        Some("every_step") => Readout::EveryStep,
        Some("last_step") => Readout::LastStep,
        other => return Err(metadata_error(format!("unknown readout {other:?}"))),
    };
    let dropout = v
        .get("dropout")
        .and_then(Value::as_f64)
        .ok_or_else(|| metadata_error("`model` lacks `dropout`".into()))?;
    Ok(SeqModelConfig {
        cell,
        input,
        hidden: usize_of(v, "hidden")?,
        layers: usize_of(v, "layers")?,
        outputs: usize_of(v, "outputs")?,
        dropout: dropout as f32,
        readout,
    })
}

fn optimizer_json(c: &OptimizerConfig) -> Value {
    match c {
        OptimizerConfig::Sgd(s) => json!({"kind": "sgd", "lr": s.lr, "momentum": s.momentum,
            "dampening": s.dampening, "weight_decay": s.weight_decay}),
        OptimizerConfig::Adam(a) => json!({"kind": "adam", "lr": a.lr, "beta1": a.beta1,
            "beta2": a.beta2, "eps": a.eps, "weight_decay": a.weight_decay}),
    }
}

fn parse_optimizer(v: &Value) -> Result<OptimizerConfig> {
    let f = |key: &str| -> Result<f64> {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| metadata_error(format!("`optimizer` lacks `{key}`")))
    };
    match v.get("kind").and_then(Value::as_str) {
        Some("sgd") => Ok(OptimizerConfig::Sgd(SgdConfig {
            lr: f("lr")?,
            momentum: f("momentum")?,
            dampening: f("dampening")?,
            weight_decay: f("weight_decay")?,
        })),
        Some("adam") => Ok(OptimizerConfig::Adam(AdamConfig {
            lr: f("lr")?,
            beta1: f("beta1")?,
            beta2: f("beta2")?,
            eps: f("eps")?,
            weight_decay: f("weight_decay")?,
        })),
        other => Err(metadata_error(format!("unknown optimizer {other:?}"))),
    }
}

fn metadata_error(message: String) -> RnnError {
    RnnError::Metadata(format!("checkpoint metadata: {message}"))
}
