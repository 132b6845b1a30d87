//! One training orchestration over two backends: [`Trainer`] runs the steps of a model and its
//! optimizer on the CPU reference ([`train_step`]) or GPU-resident ([`GpuTrainer`]).

use super::checkpoint::{save_checkpoint_with_run, RunMetadata};
use super::clip::{clip_grad_norm, clip_grad_value};
use super::gpu_step::GpuTrainer;
use super::model::{DropoutKey, Inputs, SeqModel, Targets};
use super::optim::Optimizer;
use crate::error::{Result, RnnError};
use crate::gpu::GpuContext;
use crate::scalar::Scalar;
use std::path::Path;
use std::sync::Arc;

/// Where the RNN runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
}

impl Backend {
    /// `cpu` or `gpu`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
        }
    }

    /// Parses `cpu` or `gpu`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            other => Err(RnnError::Config(format!(
                "unknown backend `{other}` (expected cpu or gpu)"
            ))),
        }
    }
}

/// Gradient clipping applied before each update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clip {
    None,
    /// Scale all gradients so that their global L2 norm is at most this.
    Norm(f64),
    /// Clamp every gradient to [−v, v].
    Value(f64),
}

/// Statistics of one training step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    /// Global gradient norm before clipping (only computed for `Clip::Norm`, else NaN).
    pub grad_norm: f64,
}

/// One step on the CPU reference: forward, backward, clipping, optimizer update.
pub fn train_step<F: Scalar>(
    model: &mut SeqModel<F>,
    optimizer: &mut Optimizer<F>,
    inputs: &Inputs<'_, F>,
    targets: &Targets<'_, F>,
    clip: Clip,
    dropout: Option<DropoutKey>,
) -> Result<StepStats> {
    let (loss, mut grads) = model.loss_and_grads(inputs, targets, dropout)?;
    let mut grad_slices = grads.tensors_mut();
    let grad_norm = match clip {
        Clip::None => f64::NAN,
        Clip::Norm(max) => clip_grad_norm(&mut grad_slices, max)?.to_f64(),
        Clip::Value(v) => {
            clip_grad_value(&mut grad_slices, v)?;
            f64::NAN
        }
    };
    let grad_views: Vec<&[F]> = grad_slices.iter().map(|g| &**g).collect();
    optimizer.step(&mut model.tensors_mut(), &grad_views)?;
    Ok(StepStats {
        loss: loss.to_f64(),
        grad_norm,
    })
}

/// A training run (f32): a model and its optimizer stepped on a [`Backend`]. On the CPU the
/// reference's host loop; on the GPU a [`GpuTrainer`] (parameters and optimizer state on the
/// GPU, losses read back only by [`Trainer::take_mean_loss`]).
pub struct Trainer(Run);

/// The state of a [`Trainer`] on its backend.
enum Run {
    Cpu {
        model: Box<SeqModel<f32>>,
        optimizer: Optimizer<f32>,
        losses: Vec<f64>,
    },
    Gpu(Box<GpuTrainer>),
}

impl Trainer {
    /// Training of `model` from the state of `optimizer` (fresh, or loaded from a checkpoint)
    /// on `backend`; the gpu backend opens its own [`GpuContext`].
    pub fn new(backend: Backend, model: SeqModel<f32>, optimizer: Optimizer<f32>) -> Result<Self> {
        Ok(Trainer(match backend {
            Backend::Cpu => Run::Cpu {
                model: Box::new(model),
                optimizer,
                losses: Vec::new(),
            },
            Backend::Gpu => Run::Gpu(Box::new(GpuTrainer::resume(
                Arc::new(GpuContext::new()?),
                &model,
                &optimizer,
            )?)),
        }))
    }

    /// Which backend the steps run on.
    pub fn backend(&self) -> Backend {
        match self.0 {
            Run::Cpu { .. } => Backend::Cpu,
            Run::Gpu(_) => Backend::Gpu,
        }
    }

    /// One step: forward, backward, `clip`, optimizer update (with dropout masks of `dropout`
    /// when the model has dropout). Its loss is kept for [`Trainer::take_mean_loss`].
    pub fn step(
        &mut self,
        inputs: &Inputs<'_, f32>,
        targets: &Targets<'_, f32>,
        clip: Clip,
        dropout: Option<DropoutKey>,
    ) -> Result<()> {
        match &mut self.0 {
            Run::Cpu {
                model,
                optimizer,
                losses,
            } => {
                let stats = train_step(model, optimizer, inputs, targets, clip, dropout)?;
                losses.push(stats.loss);
                Ok(())
            }
            Run::Gpu(trainer) => trainer.step(inputs, targets, clip, dropout),
        }
    }

    /// The mean training loss of the steps since the last call (NaN when there were none).
    pub fn take_mean_loss(&mut self) -> Result<f64> {
        let losses = match &mut self.0 {
            Run::Cpu { losses, .. } => std::mem::take(losses),
            Run::Gpu(trainer) => trainer.take_losses()?,
        };
        Ok(losses.iter().sum::<f64>() / losses.len() as f64)
    }

    /// Evaluation loss (no dropout, no update).
    pub fn evaluate(&self, inputs: &Inputs<'_, f32>, targets: &Targets<'_, f32>) -> Result<f64> {
        match &self.0 {
            Run::Cpu { model, .. } => Ok(model.loss(inputs, targets)? as f64),
            Run::Gpu(trainer) => trainer.evaluate(inputs, targets),
        }
    }

    /// The trained model (read back from the GPU), saved with the optimizer state and the
    /// run's settings to `checkpoint` when given: only then does the state leave the GPU.
    pub fn finish(self, checkpoint: Option<(&Path, &RunMetadata)>) -> Result<SeqModel<f32>> {
        match self.0 {
            Run::Cpu {
                model, optimizer, ..
            } => {
                if let Some((path, run)) = checkpoint {
                    save_checkpoint_with_run(path, &model, &optimizer, run)?;
                }
                Ok(*model)
            }
            Run::Gpu(mut trainer) => {
                let model = trainer.model()?;
                if let Some((path, run)) = checkpoint {
                    save_checkpoint_with_run(path, &model, &trainer.optimizer()?, run)?;
                }
                Ok(model)
            }
        }
    }
}
