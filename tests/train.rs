//! The training stack: gradients of the output layer, losses and embedding against finite
//! differences, the WGSL training kernels against their CPU twins, one SGD step against a hand
//! computation, checkpoint resume, and convergence on the adding problem.

mod common;

use common::{f64s, rel_err};
use ndarray::{Array2, Array3};
use rand::{RngExt, SeedableRng};
use wgpu_rnn::gpu::{GpuTensor, Recorder};
use wgpu_rnn::train::gpu::{upload_targets, GpuOptimizer, NormScratch, TrainKernels};
use wgpu_rnn::train::{
    clip_grad_norm, clip_grad_value, cross_entropy, dropout_hash, train_step, AdamConfig, Clip,
    Dropout, DropoutKey, GpuTrainer, Inputs, ModelInput, Optimizer, OptimizerConfig, Readout,
    SeqModel, SeqModelConfig, SgdConfig, Targets,
};
use wgpu_rnn::{CellKind, Nonlinearity, RnnError};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn random_vec(len: usize, scale: f64, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..len).map(|_| r.random_range(-scale..scale)).collect()
}

fn first_mismatch(a: &[f64], b: &[f64]) -> String {
    let (i, (x, y)) = a
        .iter()
        .zip(b)
        .enumerate()
        .max_by(|(_, (a1, b1)), (_, (a2, b2))| (*a1 - *b1).abs().total_cmp(&(*a2 - *b2).abs()))
        .expect("non-empty");
    format!("worst at {i}: {x} vs {y}")
}

/// Batch data for a model: inputs and targets of the right kind.
struct Data {
    features: Option<Array3<f64>>,
    tokens: Option<Array2<usize>>,
    classes: Vec<usize>,
    values: Option<Array2<f64>>,
}

impl Data {
    fn new(config: &SeqModelConfig, t: usize, b: usize, seed: u64) -> Self {
        let mut r = rng(seed);
        let (features, tokens) = match config.input {
            ModelInput::Features(n) => (
                Some(Array3::from_shape_simple_fn((t, b, n), || {
                    r.random_range(-1.0..1.0)
                })),
                None,
            ),
            ModelInput::Tokens { vocab, .. } => (
                None,
                Some(Array2::from_shape_simple_fn((t, b), || {
                    r.random_range(0..vocab)
                })),
            ),
        };
        let rows = config.readout.rows(t, b);
        let classes = (0..rows)
            .map(|_| r.random_range(0..config.outputs))
            .collect();
        let values =
            Array2::from_shape_simple_fn((rows, config.outputs), || r.random_range(-1.0..1.0));
        Data {
            features,
            tokens,
            classes,
            values: Some(values),
        }
    }

    fn inputs(&self) -> Inputs<'_, f64> {
        match (&self.features, &self.tokens) {
            (Some(x), _) => Inputs::Features(x.view()),
            (_, Some(x)) => Inputs::Tokens(x.view()),
            _ => unreachable!(),
        }
    }

    fn targets(&self, ce: bool) -> Targets<'_, f64> {
        if ce {
            Targets::Classes(&self.classes)
        } else {
            Targets::Values(self.values.as_ref().unwrap().view())
        }
    }
}

/// Central differences on every parameter of the model (small models only).
fn check_model_gradients(
    config: &SeqModelConfig,
    ce: bool,
    dropout: Option<DropoutKey>,
    label: &str,
) {
    let (t, b) = (4, 3);
    let model = SeqModel::<f64>::init(config, 7).unwrap();
    let data = Data::new(config, t, b, 11);
    let (_, grads) = model
        .loss_and_grads(&data.inputs(), &data.targets(ce), dropout)
        .unwrap();
    let loss_of = |m: &SeqModel<f64>| -> f64 {
        // The training loss with the same dropout masks: run loss_and_grads and keep the loss.
        m.loss_and_grads(&data.inputs(), &data.targets(ce), dropout)
            .unwrap()
            .0
    };
    let names = model.tensor_names();
    let analytic: Vec<Vec<f64>> = grads
        .tensors()
        .unwrap()
        .iter()
        .map(|g| g.to_vec())
        .collect();
    let h = 1e-5;
    for (k, name) in names.iter().enumerate() {
        let len = analytic[k].len();
        let mut numeric = vec![0.0; len];
        for (i, slot) in numeric.iter_mut().enumerate() {
            let mut plus = model.clone();
            plus.tensors_mut()[k][i] += h;
            let mut minus = model.clone();
            minus.tensors_mut()[k][i] -= h;
            *slot = (loss_of(&plus) - loss_of(&minus)) / (2.0 * h);
        }
        let err = rel_err(&analytic[k], &numeric);
        assert!(
            err <= 1e-6,
            "{label}: d loss / d {name}: rel err {err:e}; {}",
            first_mismatch(&analytic[k], &numeric)
        );
    }
}

fn features_config(readout: Readout, outputs: usize) -> SeqModelConfig {
    SeqModelConfig {
        cell: CellKind::Gru,
        input: ModelInput::Features(3),
        hidden: 4,
        layers: 1,
        outputs,
        dropout: 0.0,
        readout,
    }
}

#[test]
fn output_layer_and_losses_match_finite_differences() {
    for readout in [Readout::EveryStep, Readout::LastStep] {
        check_model_gradients(
            &features_config(readout, 2),
            false,
            None,
            &format!("mse {readout:?}"),
        );
        check_model_gradients(
            &features_config(readout, 5),
            true,
            None,
            &format!("ce {readout:?}"),
        );
    }
}

#[test]
fn embedding_and_dropout_stack_match_finite_differences() {
    let config = SeqModelConfig {
        cell: CellKind::Lstm,
        input: ModelInput::Tokens { vocab: 5, dim: 3 },
        hidden: 4,
        layers: 2,
        outputs: 5,
        dropout: 0.3,
        readout: Readout::EveryStep,
    };
    let key = Some(DropoutKey { seed: 3, step: 1 });
    check_model_gradients(&config, true, key, "char-LM, 2 layers, dropout 0.3");
    let config = SeqModelConfig {
        cell: CellKind::Rnn(Nonlinearity::Tanh),
        readout: Readout::LastStep,
        ..config
    };
    check_model_gradients(&config, true, key, "rnn, last step, dropout 0.3");
}

#[test]
fn cross_entropy_is_stable_for_large_logits() {
    let logits =
        Array2::from_shape_vec((2, 3), vec![1000.0f64, -1000.0, 0.0, -80.0, 80.0, 79.0]).unwrap();
    let out = cross_entropy(logits.view(), &[0, 2]).unwrap();
    assert!(out.loss.is_finite() && out.grad.iter().all(|g| g.is_finite()));
    // Row 0 is certain and right (loss 0); row 1: logsumexp − 79 = 1 + ln(1 + e⁻¹ + e⁻¹⁶⁰).
    let expected = (1.0 + (1.0 + (-1.0f64).exp()).ln()) / 2.0;
    assert!(
        (out.loss - expected).abs() < 1e-12,
        "{} vs {expected}",
        out.loss
    );
}

#[test]
fn bad_inputs_are_errors_naming_the_problem() {
    let config = SeqModelConfig {
        cell: CellKind::Lstm,
        input: ModelInput::Tokens { vocab: 4, dim: 2 },
        hidden: 3,
        layers: 1,
        outputs: 4,
        dropout: 0.0,
        readout: Readout::EveryStep,
    };
    let model = SeqModel::<f64>::init(&config, 0).unwrap();
    let tokens = Array2::from_elem((2, 2), 9usize);
    let err = model
        .loss(&Inputs::Tokens(tokens.view()), &Targets::Classes(&[0; 4]))
        .unwrap_err();
    assert!(err.to_string().contains("token id 9"), "{err}");
    let tokens = Array2::from_elem((2, 2), 1usize);
    let err = model
        .loss(&Inputs::Tokens(tokens.view()), &Targets::Classes(&[0; 3]))
        .unwrap_err();
    assert!(matches!(err, RnnError::Shape { .. }), "{err}");
    let err = model
        .loss(
            &Inputs::Tokens(tokens.view()),
            &Targets::Classes(&[0, 0, 0, 7]),
        )
        .unwrap_err();
    assert!(err.to_string().contains("target 7"), "{err}");
    assert!(Dropout::new(1.0).is_err());
    let mut grads = [1.0f64; 3];
    assert!(clip_grad_norm(&mut [&mut grads[..]], 0.0).is_err());
}

/// Elman RNN with identity activation, I = H = O = 1, T = 2, B = 1, MSE on the last step,
/// one plain SGD step: every gradient written out by hand.
#[test]
fn sgd_step_matches_hand_computation() {
    let config = SeqModelConfig {
        cell: CellKind::Rnn(Nonlinearity::Identity),
        input: ModelInput::Features(1),
        hidden: 1,
        layers: 1,
        outputs: 1,
        dropout: 0.0,
        readout: Readout::LastStep,
    };
    let mut model = SeqModel::<f64>::init(&config, 0).unwrap();
    let (w, u, bi, bh, v, c) = (0.5, -0.3, 0.1, 0.2, 1.5, -0.4);
    {
        let l = &mut model.rnn[0].layers[0];
        l.w_ih[[0, 0]] = w;
        l.w_hh[[0, 0]] = u;
        l.b_ih.as_mut().unwrap()[0] = bi;
        l.b_hh.as_mut().unwrap()[0] = bh;
        model.linear.weight[[0, 0]] = v;
        model.linear.bias[0] = c;
    }
    let (x1, x2, target) = (0.7, -1.2, 0.9);
    let h1 = w * x1 + bi + bh;
    let h2 = w * x2 + bi + u * h1 + bh;
    let y = v * h2 + c;
    let dy = 2.0 * (y - target);
    let dh2 = dy * v;
    let dh1 = dh2 * u;
    let expected_grads = [
        dh2 * x2 + dh1 * x1, // w_ih
        dh2 * h1,            // w_hh
        dh2 + dh1,           // b_ih
        dh2 + dh1,           // b_hh
        dy * h2,             // linear.weight
        dy,                  // linear.bias
    ];
    let lr = 0.1;
    let before: Vec<f64> = model.tensors().unwrap().iter().map(|t| t[0]).collect();
    let mut optimizer =
        Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(lr, 0.0)), &[1; 6]).unwrap();
    let x = Array3::from_shape_vec((2, 1, 1), vec![x1, x2]).unwrap();
    let t = Array2::from_elem((1, 1), target);
    let stats = train_step(
        &mut model,
        &mut optimizer,
        &Inputs::Features(x.view()),
        &Targets::Values(t.view()),
        Clip::None,
        None,
    )
    .unwrap();
    assert!((stats.loss - (y - target).powi(2)).abs() < 1e-14);
    let after: Vec<f64> = model.tensors().unwrap().iter().map(|t| t[0]).collect();
    for (k, name) in model.tensor_names().iter().enumerate() {
        let expected = before[k] - lr * expected_grads[k];
        assert!(
            (after[k] - expected).abs() < 1e-14,
            "{name}: {} vs hand {expected}",
            after[k]
        );
    }
}

#[test]
fn forget_bias_sets_b_if_and_clears_b_hf_and_rejects_other_cells() {
    let mut config = features_config(Readout::LastStep, 1);
    config.cell = CellKind::Lstm;
    config.layers = 2;
    let mut model = SeqModel::<f64>::init(&config, 4).unwrap();
    let before = model.clone();
    model.set_forget_bias(1.5).unwrap();
    let h = config.hidden;
    for (layer, old) in model.rnn.iter().zip(&before.rnn) {
        let (new, old) = (&layer.layers[0], &old.layers[0]);
        let (b_ih, b_hh) = (new.b_ih.as_ref().unwrap(), new.b_hh.as_ref().unwrap());
        for g in 0..4 * h {
            let forget = (h..2 * h).contains(&g);
            let want_ih = if forget {
                1.5
            } else {
                old.b_ih.as_ref().unwrap()[g]
            };
            let want_hh = if forget {
                0.0
            } else {
                old.b_hh.as_ref().unwrap()[g]
            };
            assert_eq!((b_ih[g], b_hh[g]), (want_ih, want_hh), "gate row {g}");
        }
    }
    config.cell = CellKind::Gru;
    let err = SeqModel::<f64>::init(&config, 4)
        .unwrap()
        .set_forget_bias(1.0)
        .unwrap_err();
    assert!(err.to_string().contains("LSTM"), "{err}");
}

// ---- GPU kernels against the CPU ----

const SIZES: [usize; 6] = [1, 3, 33, 257, 4099, 70001];

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn dropout_hash_is_a_spread_out_permutation_of_counters() {
    let values: Vec<u32> = (0..10_000).map(|i| dropout_hash(7, 3, i)).collect();
    let distinct: std::collections::HashSet<u32> = values.iter().copied().collect();
    assert_eq!(distinct.len(), values.len());
    let drop = Dropout::new(0.3).unwrap();
    let kept = (0..100_000).filter(|&i| drop.keeps(7, 3, i)).count() as f64 / 100_000.0;
    assert!((kept - 0.7).abs() < 0.01, "kept fraction {kept}");
    assert_ne!(dropout_hash(7, 3, 5), dropout_hash(7, 4, 5));
    assert_ne!(dropout_hash(7, 3, 5), dropout_hash(8, 3, 5));
}

#[test]
fn gpu_dropout_masks_are_bitwise_equal_to_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let kernels = TrainKernels::new(&ctx).unwrap();
    for (k, &n) in SIZES.iter().enumerate() {
        for p in [0.1f32, 0.5, 0.9] {
            let drop = Dropout::new(p).unwrap();
            let data = f32s(&random_vec(n, 2.0, k as u64));
            let mut expected = data.clone();
            drop.apply(&mut expected, 99, k as u32 + 1).unwrap();
            let x = GpuTensor::from_slice(&ctx, "x", &[n], &data).unwrap();
            let mut rec = Recorder::new(&ctx);
            kernels
                .record_dropout(&mut rec, &x, &drop, 99, k as u32 + 1)
                .unwrap();
            rec.submit().unwrap();
            let got = x.to_vec(&ctx).unwrap();
            let bad = got
                .iter()
                .zip(&expected)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(bad.is_none(), "n={n} p={p}: element {bad:?} differs");
        }
    }
}

#[test]
fn gpu_softmax_cross_entropy_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let kernels = TrainKernels::new(&ctx).unwrap();
    for (rows, classes) in [(1, 1), (3, 33), (33, 257), (257, 3), (5, 1000)] {
        // Large logits check the max subtraction.
        let logits = random_vec(rows * classes, 60.0, rows as u64);
        let mut r = rng(classes as u64);
        let targets: Vec<usize> = (0..rows).map(|_| r.random_range(0..classes)).collect();
        let l32 = f32s(&logits);
        let cpu = cross_entropy(
            Array2::from_shape_vec((rows, classes), f64s(&l32))
                .unwrap()
                .view(),
            &targets,
        )
        .unwrap();
        let z = GpuTensor::from_slice(&ctx, "logits", &[rows, classes], &l32).unwrap();
        let t = upload_targets(&ctx, &targets, classes).unwrap();
        let grad = GpuTensor::filled(&ctx, "grad", &[rows, classes], f32::NAN).unwrap();
        let loss = GpuTensor::filled(&ctx, "loss", &[rows], f32::NAN).unwrap();
        let mut rec = Recorder::new(&ctx);
        kernels
            .record_softmax_cross_entropy(&mut rec, &z, &t, &grad, &loss)
            .unwrap();
        rec.submit().unwrap();
        let row_loss = f64s(&loss.to_vec(&ctx).unwrap());
        let mean = row_loss.iter().sum::<f64>() / rows as f64;
        let g = f64s(&grad.to_vec(&ctx).unwrap());
        let loss_err = (mean - cpu.loss).abs() / cpu.loss.abs().max(1.0);
        assert!(
            loss_err < 1e-5,
            "({rows}, {classes}): loss {mean} vs {}",
            cpu.loss
        );
        let cpu_grad = cpu.grad.iter().copied().collect::<Vec<_>>();
        let err = rel_err(&g, &cpu_grad);
        assert!(
            err < 1e-5,
            "({rows}, {classes}): grad rel err {err:e}; {}",
            first_mismatch(&g, &cpu_grad)
        );
    }
    let err = upload_targets(&ctx, &[5], 3).unwrap_err();
    assert!(err.to_string().contains("target 5"), "{err}");
}

#[test]
fn gpu_clipping_matches_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let kernels = TrainKernels::new(&ctx).unwrap();
    for (k, &n) in SIZES.iter().enumerate() {
        let g32 = f32s(&random_vec(n, 3.0, 100 + k as u64));
        // Norm clipping that does and does not engage.
        for max_norm in [0.5f32, 1e6] {
            let mut cpu = g32.clone();
            let norm = clip_grad_norm(&mut [&mut cpu[..]], max_norm as f64).unwrap();
            let g = GpuTensor::from_slice(&ctx, "g", &[n], &g32).unwrap();
            let scratch = NormScratch::new(&ctx, n).unwrap();
            let mut rec = Recorder::new(&ctx);
            kernels
                .record_clip_grad_norm(&mut rec, &g, max_norm, &scratch)
                .unwrap();
            rec.submit().unwrap();
            let result = scratch.result.to_vec(&ctx).unwrap();
            assert!(
                ((result[0] - norm) / norm).abs() < 1e-5,
                "n={n}: norm {} vs {norm}",
                result[0]
            );
            let got = f64s(&g.to_vec(&ctx).unwrap());
            let err = rel_err(&got, &f64s(&cpu));
            assert!(err < 1e-5, "n={n} max_norm={max_norm}: rel err {err:e}");
        }
        let mut cpu = g32.clone();
        clip_grad_value(&mut [&mut cpu[..]], 1.25).unwrap();
        let g = GpuTensor::from_slice(&ctx, "g", &[n], &g32).unwrap();
        let mut rec = Recorder::new(&ctx);
        kernels.record_clip_grad_value(&mut rec, &g, 1.25).unwrap();
        rec.submit().unwrap();
        assert_eq!(
            g.to_vec(&ctx).unwrap(),
            cpu,
            "n={n}: value clipping differs"
        );
    }
}

#[test]
fn gpu_optimizers_match_cpu() {
    let Some(ctx) = common::gpu() else { return };
    let kernels = TrainKernels::new(&ctx).unwrap();
    let configs = [
        OptimizerConfig::Sgd(SgdConfig::new(0.05, 0.0)),
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
        }),
        OptimizerConfig::Adam(AdamConfig::new(1e-2)),
        OptimizerConfig::Adam(AdamConfig {
            weight_decay: 0.1,
            beta1: 0.6,
            ..AdamConfig::new(1e-3)
        }),
    ];
    for config in configs {
        for (k, &n) in SIZES.iter().enumerate() {
            let mut cpu_params = f32s(&random_vec(n, 1.0, 200 + k as u64));
            let params = GpuTensor::from_slice(&ctx, "params", &[n], &cpu_params).unwrap();
            let mut cpu_opt = Optimizer::<f32>::new(config, &[n]).unwrap();
            let mut gpu_opt = GpuOptimizer::new(&ctx, config, n).unwrap();
            for step in 0..3u64 {
                let grads = f32s(&random_vec(n, 0.5, 300 + step * 7 + k as u64));
                cpu_opt
                    .step(&mut [&mut cpu_params[..]], &[&grads[..]])
                    .unwrap();
                let g = GpuTensor::from_slice(&ctx, "grads", &[n], &grads).unwrap();
                let mut rec = Recorder::new(&ctx);
                gpu_opt
                    .record_step(&mut rec, &kernels, &params, &g)
                    .unwrap();
                rec.submit().unwrap();
            }
            let got = f64s(&params.to_vec(&ctx).unwrap());
            let err = rel_err(&got, &f64s(&cpu_params));
            assert!(
                err < 1e-6,
                "{config:?} n={n}: params rel err {err:e}; {}",
                first_mismatch(&got, &f64s(&cpu_params))
            );
            for (j, state) in gpu_opt.state.iter().enumerate() {
                let got = f64s(&state.to_vec(&ctx).unwrap());
                let err = rel_err(&got, &f64s(&cpu_opt.state[j][0]));
                assert!(err < 1e-6, "{config:?} n={n}: state {j} rel err {err:e}");
            }
        }
    }
}

/// Two full GPU-resident steps (forward, dropout between and after the layers, output layer,
/// loss, backward, clipping, Adam) against the CPU reference's steps.
#[test]
fn gpu_resident_training_step_matches_cpu_step() {
    let Some(ctx) = common::gpu() else { return };
    let features = ModelInput::Features(3);
    let tokens = ModelInput::Tokens { vocab: 7, dim: 4 };
    let tanh = CellKind::Rnn(Nonlinearity::Tanh);
    let cases = [
        (
            CellKind::Gru,
            features,
            Readout::LastStep,
            1,
            false,
            Clip::Norm(0.05),
        ),
        (
            CellKind::Lstm,
            features,
            Readout::EveryStep,
            5,
            true,
            Clip::Value(0.01),
        ),
        (tanh, features, Readout::LastStep, 3, false, Clip::None),
        (
            CellKind::Lstm,
            tokens,
            Readout::EveryStep,
            7,
            true,
            Clip::Norm(0.5),
        ),
    ];
    for (case, &(cell, input, readout, outputs, ce, clip)) in cases.iter().enumerate() {
        let config = SeqModelConfig {
            cell,
            input,
            hidden: 9,
            layers: 2,
            outputs,
            dropout: 0.3,
            readout,
        };
        let (t, b) = (5, 3);
        let mut cpu_model = SeqModel::<f32>::init(&config, 40 + case as u64).unwrap();
        let initial = f64s(&cpu_model.tensors().unwrap().concat());
        let adam = OptimizerConfig::Adam(AdamConfig::new(1e-2));
        let lens: Vec<usize> = cpu_model
            .tensors()
            .unwrap()
            .iter()
            .map(|t| t.len())
            .collect();
        let mut cpu_opt = Optimizer::<f32>::new(adam, &lens).unwrap();
        let mut trainer = GpuTrainer::new(ctx.clone(), &cpu_model, adam).unwrap();
        for step in 0..2u32 {
            let data = Data::new(&config, t, b, 100 + step as u64);
            let x = data.features.as_ref().map(|f| f.mapv(|v| v as f32));
            let inputs = match (&x, &data.tokens) {
                (Some(x), _) => Inputs::Features(x.view()),
                (None, Some(ids)) => Inputs::Tokens(ids.view()),
                (None, None) => unreachable!("data holds features or tokens"),
            };
            let values = data.values.as_ref().unwrap().mapv(|v| v as f32);
            let targets = if ce {
                Targets::Classes(&data.classes)
            } else {
                Targets::Values(values.view())
            };
            let key = Some(DropoutKey { seed: 7, step });
            let cpu =
                train_step(&mut cpu_model, &mut cpu_opt, &inputs, &targets, clip, key).unwrap();
            trainer.step(&inputs, &targets, clip, key).unwrap();
            let gpu_loss = trainer.take_losses().unwrap()[0];
            assert!(
                (gpu_loss - cpu.loss).abs() <= 1e-5 * cpu.loss.abs(),
                "{cell:?} step {step}: loss gpu {gpu_loss} cpu {}",
                cpu.loss
            );
            let gpu_eval = trainer.evaluate(&inputs, &targets).unwrap();
            let cpu_eval = cpu_model.loss(&inputs, &targets).unwrap() as f64;
            assert!(
                (gpu_eval - cpu_eval).abs() <= 1e-5 * cpu_eval.abs(),
                "{cell:?} step {step}: evaluation loss gpu {gpu_eval} cpu {cpu_eval}"
            );
            let got = f64s(&trainer.model().unwrap().tensors().unwrap().concat());
            let want = f64s(&cpu_model.tensors().unwrap().concat());
            let err = rel_err(&got, &want);
            assert!(
                err < 1e-5,
                "{cell:?} step {step}: parameters rel err {err:e}, {}",
                first_mismatch(&got, &want)
            );
            let delta =
                |p: &[f64]| -> Vec<f64> { p.iter().zip(&initial).map(|(a, b)| a - b).collect() };
            let update_err = rel_err(&delta(&got), &delta(&want));
            eprintln!("{cell:?} step {step}: parameters {err:.1e}, update {update_err:.1e}");
            assert!(
                update_err < 1e-3,
                "{cell:?} step {step}: update rel err {update_err:e}"
            );
        }
        assert_eq!(trainer.steps().unwrap(), 2);
        let gpu_opt = trainer.optimizer().unwrap();
        assert_eq!(gpu_opt.step, 2);
        for (name, (g, c)) in ["exp_avg", "exp_avg_sq"]
            .iter()
            .zip(gpu_opt.state.iter().zip(&cpu_opt.state))
        {
            let err = rel_err(&f64s(&g.concat()), &f64s(&c.concat()));
            assert!(err < 1e-4, "{cell:?}: optimizer {name} rel err {err:e}");
        }
    }
    let config = features_config(Readout::LastStep, 2);
    let model = SeqModel::<f32>::init(&config, 1).unwrap();
    let adam = OptimizerConfig::Adam(AdamConfig::new(1e-2));
    let mut trainer = GpuTrainer::new(ctx.clone(), &model, adam).unwrap();
    let input_size = config.layer_config(0).input_size;
    let x = Array3::<f32>::from_elem((4, 3, input_size + 1), 0.5);
    let y = Array2::<f32>::from_elem((3, 2), 0.5);
    let err = trainer
        .step(
            &Inputs::Features(x.view()),
            &Targets::Values(y.view()),
            Clip::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("inputs"), "{err}");
    let x = Array3::<f32>::from_elem((4, 3, input_size), 0.5);
    let err = trainer
        .step(
            &Inputs::Features(x.view()),
            &Targets::Classes(&[0, 1, 2]),
            Clip::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("target 2"), "{err}");
    let err = trainer
        .step(
            &Inputs::Tokens(Array2::<usize>::zeros((4, 3)).view()),
            &Targets::Values(y.view()),
            Clip::None,
            None,
        )
        .unwrap_err();
    assert!(err.to_string().contains("token ids"), "{err}");
}
