//! The two demonstration runs, [`train_adding`] and [`train_charlm`], on the library's
//! [`Trainer`], with a progress bar and a [`TrainReport`].

use crate::limits::{check_host_memory, product, sum};
use crate::report::{LossPoint, TrainReport};
use crate::sample::{sample_text, SampleOptions};
use crate::tasks::{adding_batch, CharCorpus, Split};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use wgpu_rnn::config::{CellKind, RnnConfig};
use wgpu_rnn::error::{Result, RnnError};
use wgpu_rnn::train::loss::nats_to_bits;
use wgpu_rnn::train::{
    load_checkpoint, load_run_metadata, AdamConfig, Backend, Clip, DropoutKey, Inputs, ModelInput,
    Optimizer, OptimizerConfig, Readout, RunMetadata, SeqModel, SeqModelConfig, Targets, Trainer,
};

/// Settings of [`train_adding`]. The model: the cell → linear(H, 1) on the last step, MSE.
#[derive(Clone, Debug, PartialEq)]
pub struct AddingOptions {
    pub cell: CellKind,
    pub seq_len: usize,
    pub hidden: usize,
    pub batch: usize,
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Global-norm clipping threshold; `None` for no clipping.
    pub clip: Option<f64>,
    pub backend: Backend,
    pub seed: u64,
    /// Evaluate on the held-out batch every this many steps (and after the last).
    pub eval_every: usize,
    /// Size of the fixed held-out batch.
    pub eval_batch: usize,
    /// LSTM only: initial forget-gate bias ([`SeqModel::set_forget_bias`]); `None` keeps
    /// torch's init.
    pub forget_bias: Option<f64>,
}

impl Default for AddingOptions {
    /// LSTM, T = 20, H = 32, B = 64, 600 steps of Adam at 1e-2, clip 1.0.
    fn default() -> Self {
        AddingOptions {
            cell: CellKind::Lstm,
            seq_len: 20,
            hidden: 32,
            batch: 64,
            steps: 600,
            lr: 1e-2,
            clip: Some(1.0),
            backend: Backend::Cpu,
            seed: 0,
            eval_every: 50,
            eval_batch: 512,
            forget_bias: None,
        }
    }
}

fn check_positive(values: &[(&str, usize)]) -> Result<()> {
    match values.iter().find(|(_, v)| *v == 0) {
        Some((what, _)) => Err(RnnError::Config(format!("{what} must be at least 1"))),
        None => Ok(()),
    }
}

/// The host memory a run of `config` on batches of `batch` × `seq_len` needs, checked before
/// the model is made: parameters with their gradients and Adam's two moments, and one batch's
/// activations through every layer and the output (a lower bound), with checked arithmetic.
fn check_run_memory(config: &SeqModelConfig, seq_len: usize, batch: usize) -> Result<()> {
    let what = "this run (--hidden, --layers, --seq-len, --batch, the text's vocabulary)";
    let (mul, add) = (|f: &[usize]| product(f, what), |t: &[usize]| sum(t, what));
    let (first_input, embedding) = match config.input {
        ModelInput::Features(width) => (width, 0),
        ModelInput::Tokens { vocab, dim } => (dim, mul(&[vocab, dim])?),
    };
    let rnn = RnnConfig::new(config.cell, first_input, config.hidden).layers(config.layers);
    let mut params = add(&[embedding, mul(&[config.hidden + 1, config.outputs])?])?;
    for layer in 0..config.layers {
        let width = add(&[rnn.layer_input_size(layer), config.hidden, 2])?;
        params = add(&[params, mul(&[rnn.gate_rows(), width])?])?;
    }
    let per_row = add(&[
        mul(&[
            config.layers,
            add(&[rnn.gate_rows(), config.hidden, config.hidden])?,
        ])?,
        config.outputs,
    ])?;
    let activations = mul(&[seq_len, batch, per_row, 2])?;
    check_host_memory(
        add(&[mul(&[params, 4])?, activations])?,
        what,
        "lower one of them",
    )
}

fn clip_of(clip: Option<f64>) -> Clip {
    clip.map_or(Clip::None, Clip::Norm)
}

/// Trains a cell on the adding problem (f32) and reports the held-out MSE. On the gpu backend
/// the whole step runs on the GPU ([`wgpu_rnn::train::GpuTrainer`]); the losses are read back every
/// `eval_every` steps.
pub fn train_adding(opts: &AddingOptions) -> Result<TrainReport> {
    fit_adding(opts).map(|(_, report)| report)
}

/// The untrained adding-problem model of `opts`: the cell → linear(H, 1) on the last step,
/// seeded init, with the forget-gate bias if one is set.
pub(crate) fn adding_model(opts: &AddingOptions) -> Result<SeqModel<f32>> {
    let mut model = SeqModel::<f32>::init(&adding_config(opts), opts.seed)?;
    if let Some(bias) = opts.forget_bias {
        model.set_forget_bias(bias)?;
    }
    Ok(model)
}

/// The adding-problem model's configuration.
fn adding_config(opts: &AddingOptions) -> SeqModelConfig {
    SeqModelConfig {
        cell: opts.cell,
        input: ModelInput::Features(2),
        hidden: opts.hidden,
        layers: 1,
        outputs: 1,
        dropout: 0.0,
        readout: Readout::LastStep,
    }
}

/// A progress bar over training steps with the last held-out loss as its message; drawn only
/// when stderr is a terminal.
fn progress_bar(steps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(steps as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps, {elapsed} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// [`train_adding`], also returning the trained model.
pub(crate) fn fit_adding(opts: &AddingOptions) -> Result<(SeqModel<f32>, TrainReport)> {
    check_positive(&[
        ("steps", opts.steps),
        ("eval_every", opts.eval_every),
        ("eval_batch", opts.eval_batch),
    ])?;
    check_run_memory(
        &adding_config(opts),
        opts.seq_len,
        opts.batch.max(opts.eval_batch),
    )?;
    let model = adding_model(opts)?;
    let adam = OptimizerConfig::Adam(AdamConfig::new(opts.lr));
    // The held-out batch comes from a generator stream training never uses.
    let (eval_x, eval_y) =
        adding_batch::<f32>(opts.seq_len, opts.eval_batch, opts.seed ^ 0x5EED_E7A1, 0)?;
    let optimizer = Optimizer::new(adam, &model.tensor_lens())?;
    let mut run = Trainer::new(opts.backend, model, optimizer)?;
    let (eval_inputs, eval_targets) = (
        Inputs::Features(eval_x.view()),
        Targets::Values(eval_y.view()),
    );
    let start = Instant::now();
    let mut history = vec![LossPoint {
        step: 0,
        epoch: None,
        loss: run.evaluate(&eval_inputs, &eval_targets)?,
        train_loss: f64::NAN,
    }];
    let bar = progress_bar(opts.steps);
    for step in 0..opts.steps {
        let (x, y) = adding_batch::<f32>(opts.seq_len, opts.batch, opts.seed, step as u64)?;
        let (inputs, targets) = (Inputs::Features(x.view()), Targets::Values(y.view()));
        run.step(&inputs, &targets, clip_of(opts.clip), None)?;
        bar.inc(1);
        if (step + 1) % opts.eval_every == 0 || step + 1 == opts.steps {
            let train_loss = run.take_mean_loss()?;
            let loss = run.evaluate(&eval_inputs, &eval_targets)?;
            bar.set_message(format!("held-out MSE {loss:.5}"));
            history.push(LossPoint {
                step: step + 1,
                epoch: None,
                loss,
                train_loss,
            });
        }
    }
    bar.finish_and_clear();
    let model = run.finish(None)?;
    let final_value = history.last().map_or(f64::NAN, |p| p.loss);
    let report = TrainReport {
        task: "adding".into(),
        cell: cell_name(opts.cell),
        backend: opts.backend.name().into(),
        settings: vec![
            ("seq_len".into(), json!(opts.seq_len)),
            ("hidden".into(), json!(opts.hidden)),
            ("batch".into(), json!(opts.batch)),
            ("steps".into(), json!(opts.steps)),
            ("lr".into(), json!(opts.lr)),
            ("clip".into(), json!(opts.clip)),
            ("seed".into(), json!(opts.seed)),
            ("forget_bias".into(), json!(opts.forget_bias)),
            (
                "baseline_mse".into(),
                json!(crate::tasks::ADDING_BASELINE_MSE),
            ),
        ],
        history,
        final_metric: "final_mse",
        final_value,
        seconds: start.elapsed().as_secs_f64(),
        sample: None,
    };
    Ok((model, report))
}

/// `rnn_tanh`, `rnn_relu`, `lstm`, `gru`, …
pub fn cell_name(cell: CellKind) -> String {
    match cell {
        CellKind::Rnn(nl) => format!("rnn_{}", nl.name()),
        other => other.name().to_string(),
    }
}

/// The text bundled with the crate (public-domain US documents, see `data/README.md`).
pub const BUNDLED_TEXT: &str = include_str!("data/public_domain.txt");

/// Settings of [`train_charlm`]. The model: embedding → `layers` cells with dropout between
/// layers and before the output → linear(H, V) on every step, cross-entropy.
#[derive(Clone, Debug, PartialEq)]
pub struct CharLmOptions {
    /// A UTF-8 text file; `None` uses [`BUNDLED_TEXT`].
    pub text: Option<PathBuf>,
    pub cell: CellKind,
    pub embed: usize,
    pub hidden: usize,
    pub layers: usize,
    pub dropout: f32,
    pub seq_len: usize,
    pub batch: usize,
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Global-norm clipping threshold; `None` for no clipping.
    pub clip: Option<f64>,
    pub backend: Backend,
    pub seed: u64,
    /// Evaluate on the held-out text every this many steps; `None`: at the end of every epoch
    /// (one epoch = ⌈training characters / (batch · seq_len)⌉ steps: as many characters as
    /// the training split holds, drawn as random windows). Always also after the last step.
    pub eval_every: Option<usize>,
    /// Fraction of the text held out (its tail).
    pub held_out_fraction: f64,
    /// If set, the final model and optimizer state are saved here.
    pub checkpoint: Option<PathBuf>,
    /// If set, training goes on from this checkpoint (same text and model options): from its
    /// optimizer step up to `steps`, drawing the same batches and dropout masks as an
    /// uninterrupted run.
    pub resume: Option<PathBuf>,
    /// Characters sampled from the final model into [`TrainReport::sample`] (0: no sample).
    pub sample_len: usize,
    /// Fed to the model before sampling; the sample starts with it.
    pub sample_prime: String,
    /// Sampling temperature (> 0); the sampler is seeded from `seed`.
    pub temperature: f64,
}

impl Default for CharLmOptions {
    /// 2-layer LSTM, E = 32, H = 128, dropout 0.1, T = 64, B = 32, 300 steps of Adam at 3e-3,
    /// evaluated every epoch; 200 characters sampled at temperature 0.8 after the prime "The ".
    fn default() -> Self {
        CharLmOptions {
            text: None,
            cell: CellKind::Lstm,
            embed: 32,
            hidden: 128,
            layers: 2,
            dropout: 0.1,
            seq_len: 64,
            batch: 32,
            steps: 300,
            lr: 3e-3,
            clip: Some(1.0),
            backend: Backend::Cpu,
            seed: 0,
            eval_every: None,
            held_out_fraction: 0.1,
            checkpoint: None,
            resume: None,
            sample_len: 200,
            sample_prime: "The ".into(),
            temperature: 0.8,
        }
    }
}

/// Trains a character-level language model (f32) and reports held-out bits per character and
/// perplexity per evaluation, then samples text from the final model (CPU). On the gpu backend
/// the whole step runs on the GPU ([`wgpu_rnn::train::GpuTrainer`]).
pub fn train_charlm(opts: &CharLmOptions) -> Result<TrainReport> {
    check_positive(&[
        ("steps", opts.steps),
        ("batch", opts.batch),
        ("seq_len", opts.seq_len),
        ("eval_every", opts.eval_every.unwrap_or(1)),
    ])?;
    let text = match &opts.text {
        Some(path) => std::fs::read_to_string(path).map_err(|e| RnnError::io(path, e))?,
        None => BUNDLED_TEXT.to_string(),
    };
    let corpus = CharCorpus::from_text(&text, opts.held_out_fraction)?;
    let vocab = corpus.vocab.len();
    let config = SeqModelConfig {
        cell: opts.cell,
        input: ModelInput::Tokens {
            vocab,
            dim: opts.embed,
        },
        hidden: opts.hidden,
        layers: opts.layers,
        outputs: vocab,
        dropout: opts.dropout,
        readout: Readout::EveryStep,
    };
    // Everything knowable before training is checked before training.
    check_run_memory(&config, opts.seq_len, opts.batch)?;
    let chars_per_step = product(&[opts.batch, opts.seq_len], "--batch × --seq-len")?;
    let eval_batches =
        corpus.sequential_batches(Split::HeldOut, opts.seq_len, opts.batch.min(8))?;
    if opts.sample_len > 0 {
        if let Some(c) = opts
            .sample_prime
            .chars()
            .find(|c| !corpus.vocab.contains(c))
        {
            return Err(RnnError::Config(format!(
                "the sample prime {:?} holds {c:?}, which the text does not contain \
                 (choose a prime from the text's characters, e.g. --prime {:?})",
                opts.sample_prime, corpus.vocab[0]
            )));
        }
    }
    let run_metadata = charlm_run_metadata(opts, &corpus.vocab);
    let (model, optimizer, resume_changes) = match &opts.resume {
        Some(path) => resume_charlm(path, &config, opts.steps, &run_metadata)?,
        None => {
            let model = SeqModel::<f32>::init(&config, opts.seed)?;
            let adam = OptimizerConfig::Adam(AdamConfig::new(opts.lr));
            let optimizer = Optimizer::new(adam, &model.tensor_lens())?;
            (model, optimizer, Vec::new())
        }
    };
    for (key, before, now) in &resume_changes {
        eprintln!("resume: {key} was {before} in the checkpoint, this run uses {now}");
    }
    let first_step = optimizer.step as usize;
    let epoch_steps = corpus.train.len().div_ceil(chars_per_step);
    let eval_every = opts.eval_every.unwrap_or(epoch_steps);
    let epoch_at =
        |step: usize| Some(step as f64 * chars_per_step as f64 / corpus.train.len() as f64);
    let mut run = Trainer::new(opts.backend, model, optimizer)?;
    let evaluate = |run: &Trainer| -> Result<f64> {
        let mut total = 0.0;
        for (x, y) in &eval_batches {
            total += run.evaluate(&Inputs::Tokens(x.view()), &Targets::Classes(y))?;
        }
        Ok(nats_to_bits(total / eval_batches.len() as f64))
    };
    let start = Instant::now();
    let mut history = vec![LossPoint {
        step: first_step,
        epoch: epoch_at(first_step),
        loss: evaluate(&run)?,
        train_loss: f64::NAN,
    }];
    let dropout_seed = (opts.seed as u32) ^ 0xD80F;
    let bar = progress_bar(opts.steps);
    bar.set_position(first_step as u64);
    for step in first_step..opts.steps {
        let (x, y) = corpus.random_batch(
            Split::Train,
            opts.seq_len,
            opts.batch,
            opts.seed,
            step as u64,
        )?;
        run.step(
            &Inputs::Tokens(x.view()),
            &Targets::Classes(&y),
            clip_of(opts.clip),
            (opts.dropout > 0.0).then_some(DropoutKey {
                seed: dropout_seed,
                step: step as u32,
            }),
        )?;
        bar.inc(1);
        if (step + 1) % eval_every == 0 || step + 1 == opts.steps {
            let train_loss = nats_to_bits(run.take_mean_loss()?);
            let loss = evaluate(&run)?;
            bar.set_message(format!("held-out {loss:.3} bits/char"));
            history.push(LossPoint {
                step: step + 1,
                epoch: epoch_at(step + 1),
                loss,
                train_loss,
            });
        }
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let model = run.finish(opts.checkpoint.as_deref().map(|path| (path, &run_metadata)))?;
    let sample = (opts.sample_len > 0)
        .then(|| {
            sample_text(
                &model,
                &corpus.vocab,
                &SampleOptions {
                    prime: opts.sample_prime.clone(),
                    len: opts.sample_len,
                    temperature: opts.temperature,
                    seed: opts.seed,
                },
            )
        })
        .transpose()?;
    let final_value = history.last().map_or(f64::NAN, |p| p.loss);
    Ok(TrainReport {
        task: "charlm".into(),
        cell: cell_name(opts.cell),
        backend: opts.backend.name().into(),
        settings: vec![
            ("vocab".into(), json!(vocab)),
            ("train_chars".into(), json!(corpus.train.len())),
            ("held_out_chars".into(), json!(corpus.held_out.len())),
            ("embed".into(), json!(opts.embed)),
            ("hidden".into(), json!(opts.hidden)),
            ("layers".into(), json!(opts.layers)),
            ("dropout".into(), json!(opts.dropout)),
            ("seq_len".into(), json!(opts.seq_len)),
            ("batch".into(), json!(opts.batch)),
            ("steps".into(), json!(opts.steps)),
            ("lr".into(), json!(opts.lr)),
            ("clip".into(), json!(opts.clip)),
            ("seed".into(), json!(opts.seed)),
            (
                "resume_changes".into(),
                resume_changes
                    .iter()
                    .map(|(key, before, now)| {
                        (key.clone(), json!({"checkpoint": before, "now": now}))
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            ),
            (
                "resumed_at_step".into(),
                json!(opts.resume.is_some().then_some(first_step)),
            ),
            ("epoch_steps".into(), json!(epoch_steps)),
            ("eval_every".into(), json!(eval_every)),
            ("sample_prime".into(), json!(opts.sample_prime)),
            ("temperature".into(), json!(opts.temperature)),
        ],
        history,
        final_metric: "final_bpc",
        final_value,
        seconds,
        sample,
    })
}

/// The settings a character-LM checkpoint stores for its resumption, JSON-encoded: the
/// vocabulary itself and what draws the batches and steps the optimizer.
fn charlm_run_metadata(opts: &CharLmOptions, vocab: &[char]) -> RunMetadata {
    let vocab: String = vocab.iter().collect();
    [
        ("vocab", json!(vocab)),
        ("lr", json!(opts.lr)),
        ("clip", json!(opts.clip)),
        ("batch", json!(opts.batch)),
        ("seq_len", json!(opts.seq_len)),
        ("seed", json!(opts.seed)),
        ("held_out_fraction", json!(opts.held_out_fraction)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect()
}

/// A setting that differs between a checkpoint and the run resuming it: (name, the
/// checkpoint's value, this run's value). The run's value is used.
type Change = (String, String, String);

/// The model and optimizer of a character-LM checkpoint, checked against the run's model
/// `config`, step count and vocabulary (in `run`, from [`charlm_run_metadata`]); the settings
/// that differ are returned, and this run's learning rate is applied to the optimizer.
fn resume_charlm(
    path: &std::path::Path,
    config: &SeqModelConfig,
    steps: usize,
    run: &RunMetadata,
) -> Result<(SeqModel<f32>, Optimizer<f32>, Vec<Change>)> {
    let in_checkpoint =
        |e: RnnError| RnnError::Config(format!("resume checkpoint {}: {e}", path.display()));
    let (model, mut optimizer) = load_checkpoint::<f32>(path).map_err(in_checkpoint)?;
    let stored = load_run_metadata(path).map_err(in_checkpoint)?;
    if let Some(vocab) = stored.get("vocab") {
        if Some(vocab) != run.get("vocab") {
            return Err(RnnError::Config(format!(
                "checkpoint {} was trained on a text with the vocabulary {vocab}; this text's \
                 vocabulary is {} (resume on the same text)",
                path.display(),
                run.get("vocab").map_or("", String::as_str)
            )));
        }
    }
    if model.config != *config {
        return Err(RnnError::Config(format!(
            "checkpoint {} holds a model {:?}, these options make {:?} (same text, cell, \
             embed, hidden, layers and dropout are needed to resume)",
            path.display(),
            model.config,
            config
        )));
    }
    if optimizer.step as usize > steps {
        return Err(RnnError::Config(format!(
            "checkpoint {} is at step {}, beyond steps = {steps}",
            path.display(),
            optimizer.step
        )));
    }
    let mut changes: Vec<Change> = run
        .iter()
        .filter_map(|(key, now)| {
            let before = stored.get(key)?;
            (before != now).then(|| (key.clone(), before.clone(), now.clone()))
        })
        .collect();
    if let OptimizerConfig::Adam(adam) = &mut optimizer.config {
        let lr: f64 = run
            .get("lr")
            .and_then(|v| v.parse().ok())
            .unwrap_or(adam.lr);
        if lr != adam.lr && !changes.iter().any(|(key, ..)| key == "lr") {
            changes.push((
                "lr".into(),
                json!(adam.lr).to_string(),
                json!(lr).to_string(),
            ));
        }
        adam.lr = lr;
    }
    Ok((model, optimizer, changes))
}
