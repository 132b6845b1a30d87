//! The GPU training step as a whole: one submit and no buffer copy per step, no buffer created
//! by repeated steps of one shape, and a non-finite batch or step that changes nothing and is
//! reported (at once for non-finite features and targets, at the next readback for a loss or
//! gradient that overflows on the GPU).

mod common;

use ndarray::{Array2, Array3};
use rand::{RngExt, SeedableRng};
use std::sync::Arc;
use wgpu_rnn::gpu::GpuContext;
use wgpu_rnn::train::{
    AdamConfig, Clip, DropoutKey, GpuTrainer, Inputs, ModelInput, Optimizer, OptimizerConfig,
    Readout, SeqModel, SeqModelConfig, SgdConfig, Targets,
};
use wgpu_rnn::CellKind;

/// A 2-layer LSTM reading 3 features, dropout between the layers, 2 outputs per step.
fn lstm_config() -> SeqModelConfig {
    SeqModelConfig {
        cell: CellKind::Lstm,
        input: ModelInput::Features(3),
        hidden: 8,
        layers: 2,
        outputs: 2,
        dropout: 0.3,
        readout: Readout::EveryStep,
    }
}

/// Seeded features (T, B, 3) and MSE targets (T·B, 2) in [−1, 1).
fn batch(t: usize, b: usize, seed: u64) -> (Array3<f32>, Array2<f32>) {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let x = Array3::from_shape_fn((t, b, 3), |_| r.random_range(-1.0..1.0f32));
    let y = Array2::from_shape_fn((t * b, 2), |_| r.random_range(-1.0..1.0f32));
    (x, y)
}

/// One step on `batch`, Adam-clipped by norm, dropout keyed by `step`.
fn step(trainer: &mut GpuTrainer, (x, y): &(Array3<f32>, Array2<f32>), step: u32) {
    let key = Some(DropoutKey { seed: 3, step });
    trainer
        .step(
            &Inputs::Features(x.view()),
            &Targets::Values(y.view()),
            Clip::Norm(0.5),
            key,
        )
        .unwrap();
}

fn bits(model: &SeqModel<f32>) -> Vec<u32> {
    model
        .tensors()
        .unwrap()
        .concat()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

fn optimizer_bits(optimizer: &Optimizer<f32>) -> (u64, Vec<u32>) {
    let state = optimizer.state.concat().concat();
    (optimizer.step, state.iter().map(|v| v.to_bits()).collect())
}

fn trainer(ctx: &Arc<GpuContext>, optimizer: OptimizerConfig) -> GpuTrainer {
    let model = SeqModel::<f32>::init(&lstm_config(), 11).unwrap();
    GpuTrainer::new(ctx.clone(), &model, optimizer).unwrap()
}

#[test]
fn repeated_steps_submit_once_copy_nothing_and_create_no_buffer() {
    if common::gpu().is_none() {
        return;
    }
    // A context of its own: the other tests of this binary count on the shared one.
    let ctx = Arc::new(GpuContext::new().unwrap());
    let mut trainer = trainer(&ctx, OptimizerConfig::Adam(AdamConfig::new(1e-2)));
    let (t, b) = (6, 3);
    step(&mut trainer, &batch(t, b, 1), 0);
    let before = ctx.counters();
    step(&mut trainer, &batch(t, b, 2), 1);
    step(&mut trainer, &batch(t, b, 3), 2);
    let per_two = ctx.counters() - before;
    eprintln!("steps 2 and 3 of a 2-layer LSTM: {per_two:?}");
    assert_eq!(per_two.submits, 2, "one submit per step");
    assert_eq!(per_two.copies, 0, "no buffer copy in a step");
    assert_eq!(
        per_two.buffers_created, 0,
        "no buffer created by a repeated step"
    );
    let losses = trainer.take_losses().unwrap();
    assert_eq!(losses.len(), 3);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
}

#[test]
fn a_batch_with_a_non_finite_feature_or_target_changes_nothing_and_is_an_error() {
    let Some(ctx) = common::gpu() else { return };
    let mut trainer = trainer(&ctx, OptimizerConfig::Adam(AdamConfig::new(1e-2)));
    step(&mut trainer, &batch(4, 2, 1), 0);
    let model = bits(&trainer.model().unwrap());
    let optimizer = optimizer_bits(&trainer.optimizer().unwrap());
    let (mut x, mut y) = batch(4, 2, 2);
    x[[2, 1, 0]] = f32::NAN;
    let err = trainer
        .step(
            &Inputs::Features(x.view()),
            &Targets::Values(y.view()),
            Clip::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("`inputs`"), "{err}");
    x[[2, 1, 0]] = 0.5;
    y[[5, 1]] = f32::INFINITY;
    let err = trainer
        .step(
            &Inputs::Features(x.view()),
            &Targets::Values(y.view()),
            Clip::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("`targets`"), "{err}");
    assert_eq!(trainer.take_losses().unwrap().len(), 1);
    assert_eq!(bits(&trainer.model().unwrap()), model);
    assert_eq!(optimizer_bits(&trainer.optimizer().unwrap()), optimizer);
    assert_eq!(trainer.steps().unwrap(), 1);
}

/// A step whose loss overflows on the GPU (finite targets of 1e30: squared errors of 1e60) is
/// skipped by the guard: parameters and optimizer state stay bitwise as they were, the next
/// readback names the step, and the steps after it go on exactly as in a run without it.
#[test]
fn a_step_with_a_non_finite_loss_is_skipped_reported_and_forgotten() {
    let Some(ctx) = common::gpu() else { return };
    let optimizers = [
        OptimizerConfig::Adam(AdamConfig::new(1e-2)),
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
        }),
    ];
    for optimizer in optimizers {
        let good: Vec<_> = (0..3).map(|k| batch(5, 2, 10 + k)).collect();
        let (x, mut y) = batch(5, 2, 99);
        y[[3, 0]] = 1e30;
        let overflowing = (x, y);
        let mut reference = trainer(&ctx, optimizer);
        for (k, data) in good.iter().enumerate() {
            step(&mut reference, data, k as u32);
        }

        // Skipped first: SGD's first momentum update and Adam's bias corrections must follow
        // the applied steps only.
        let mut skipping = trainer(&ctx, optimizer);
        step(&mut skipping, &overflowing, 0);
        step(&mut skipping, &good[0], 0);
        let err = skipping.model().unwrap_err().to_string();
        assert!(err.contains("mse loss") && err.contains("step 0"), "{err}");
        let model = bits(&skipping.model().unwrap());
        let state = optimizer_bits(&skipping.optimizer().unwrap());
        assert_eq!(state.0, 1, "{optimizer:?}: steps applied");
        step(&mut skipping, &overflowing, 7);
        let err = skipping.take_losses().unwrap_err().to_string();
        assert!(err.contains("mse loss") && err.contains("step 2"), "{err}");
        assert_eq!(bits(&skipping.model().unwrap()), model, "{optimizer:?}");
        assert_eq!(
            optimizer_bits(&skipping.optimizer().unwrap()),
            state,
            "{optimizer:?}"
        );
        step(&mut skipping, &good[1], 1);
        step(&mut skipping, &good[2], 2);

        assert_eq!(skipping.steps().unwrap(), 3);
        assert_eq!(
            skipping.take_losses().unwrap(),
            reference.take_losses().unwrap(),
            "{optimizer:?}: losses of the applied steps"
        );
        assert_eq!(
            bits(&skipping.model().unwrap()),
            bits(&reference.model().unwrap()),
            "{optimizer:?}: parameters differ from a run without the skipped steps"
        );
        assert_eq!(
            optimizer_bits(&skipping.optimizer().unwrap()),
            optimizer_bits(&reference.optimizer().unwrap()),
            "{optimizer:?}: optimizer state differs from a run without the skipped steps"
        );
    }
}
