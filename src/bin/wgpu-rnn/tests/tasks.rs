//! The demonstration tasks of the CLI crate: the adding problem and the character LM (on both
//! backends, through checkpoints), their reports and plots, text sampling and the
//! gradient-flow study; and checkpoint resume on character-LM batches.

#[path = "../../../../tests/common/mod.rs"]
mod common;

use common::{f64s, rel_err};
use std::time::Instant;
use wgpu_rnn::train::{
    load_checkpoint, save_checkpoint, train_step, AdamConfig, Backend, Clip, DropoutKey, Inputs,
    ModelInput, Optimizer, OptimizerConfig, Readout, SeqModel, SeqModelConfig, SgdConfig, Targets,
};
use wgpu_rnn::CellKind;
use wgpu_rnn_cli::{
    adding_batch, gradflow, gradflow_with, plot_many, sample_text, train_adding, train_charlm,
    AddingOptions, CharCorpus, CharLmOptions, GradFlowOptions, GradFlowWeights, SampleOptions,
    Split, BUNDLED_TEXT,
};

fn charlm_setup() -> (SeqModel<f32>, CharCorpus) {
    let corpus = CharCorpus::from_text(BUNDLED_TEXT, 0.1).unwrap();
    let config = SeqModelConfig {
        cell: CellKind::Gru,
        input: ModelInput::Tokens {
            vocab: corpus.vocab.len(),
            dim: 5,
        },
        hidden: 7,
        layers: 2,
        outputs: corpus.vocab.len(),
        dropout: 0.25,
        readout: Readout::EveryStep,
    };
    (SeqModel::init(&config, 5).unwrap(), corpus)
}

fn charlm_steps(
    model: &mut SeqModel<f32>,
    optimizer: &mut Optimizer<f32>,
    corpus: &CharCorpus,
    steps: std::ops::Range<u64>,
) {
    for step in steps {
        let (x, y) = corpus.random_batch(Split::Train, 9, 3, 1, step).unwrap();
        train_step(
            model,
            optimizer,
            &Inputs::Tokens(x.view()),
            &Targets::Classes(&y),
            Clip::Norm(0.5),
            Some(DropoutKey {
                seed: 2,
                step: step as u32,
            }),
        )
        .unwrap();
    }
}

#[test]
fn checkpoint_resume_gives_identical_parameters() {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configs = [
        OptimizerConfig::Adam(AdamConfig::new(3e-3)),
        OptimizerConfig::Sgd(SgdConfig::new(0.1, 0.9)),
    ];
    for config in configs {
        let (model0, corpus) = charlm_setup();
        let lens: Vec<usize> = model0.tensor_lens();
        let mut straight = model0.clone();
        let mut opt = Optimizer::new(config, &lens).unwrap();
        charlm_steps(&mut straight, &mut opt, &corpus, 0..6);

        let mut first = model0.clone();
        let mut opt1 = Optimizer::new(config, &lens).unwrap();
        charlm_steps(&mut first, &mut opt1, &corpus, 0..3);
        let path = dir.join(format!("{}.safetensors", config.name()));
        save_checkpoint(&path, &first, &opt1).unwrap();
        let (mut resumed, mut opt2) = load_checkpoint::<f32>(&path).unwrap();
        assert_eq!(opt2.step, 3);
        assert_eq!(resumed, first, "{}: loaded model differs", config.name());
        charlm_steps(&mut resumed, &mut opt2, &corpus, 3..6);
        assert_ne!(straight, model0);
        for ((name, a), (_, b)) in straight.named().iter().zip(resumed.named()) {
            assert!(*a == b, "{}: {name} differs after resume", config.name());
        }
        assert_eq!(opt, opt2, "{}: optimizer state differs", config.name());
        // torch names are in the file.
        let names = wgpu_rnn::tensorfile::all_arrays::<f32>(
            &safetensors::SafeTensors::deserialize(&std::fs::read(&path).unwrap()).unwrap(),
        )
        .unwrap();
        for key in [
            "weight_ih_l0",
            "weight_hh_l1",
            "linear.weight",
            "linear.bias",
            "embedding.weight",
        ] {
            assert!(names.contains_key(key), "missing {key}");
        }
        let state = config.state_names()[0];
        assert!(names.contains_key(&format!("optim.{state}.weight_ih_l1")));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn adding_problem_converges_on_cpu() {
    let start = Instant::now();
    let report = train_adding(&AddingOptions::default()).unwrap();
    eprintln!(
        "adding T=20 LSTM: final MSE {:.5} after {} steps in {:.1} s",
        report.final_value,
        AddingOptions::default().steps,
        start.elapsed().as_secs_f64()
    );
    assert!(report.history[0].loss > 0.1);
    assert!(
        report.final_value < 0.01,
        "final MSE {}",
        report.final_value
    );
    let json = report.to_json();
    assert_eq!(
        json["history"].as_array().unwrap().len(),
        report.history.len()
    );
    assert!(json["final_mse"].as_f64().unwrap() < 0.01);
}

#[test]
fn adding_batches_are_reproducible_with_two_markers() {
    let (x, y) = adding_batch::<f64>(33, 5, 9, 4).unwrap();
    let (x2, y2) = adding_batch::<f64>(33, 5, 9, 4).unwrap();
    assert_eq!((&x, &y), (&x2, &y2));
    for b in 0..5 {
        let marked: Vec<usize> = (0..33).filter(|&t| x[[t, b, 1]] == 1.0).collect();
        assert_eq!(marked.len(), 2);
        assert!(marked[0] < 16 && marked[1] >= 16);
        let sum = x[[marked[0], b, 0]] + x[[marked[1], b, 0]];
        assert_eq!(sum, y[[b, 0]]);
    }
}

#[test]
fn gradflow_reports_a_curve_per_cell() {
    let report = gradflow(&GradFlowOptions {
        seq_len: 12,
        hidden: 8,
        batch: 3,
        seed: 1,
    })
    .unwrap();
    assert_eq!(report.curves.len(), 3);
    for c in &report.curves {
        assert_eq!(c.norms.len(), 12);
        assert!(
            c.norms.iter().all(|n| n.is_finite() && *n > 0.0),
            "{}: {:?}",
            c.cell,
            c.norms
        );
        assert_eq!(c.first_last_ratio, c.norms[0] / c.norms[11]);
    }
}

#[test]
fn lstm_forget_bias_keeps_more_gradient_and_training_is_reported() {
    let opts = GradFlowOptions {
        seq_len: 30,
        hidden: 8,
        batch: 3,
        seed: 2,
    };
    let ratio = |weights: &GradFlowWeights| {
        let report = gradflow_with(&opts, weights).unwrap();
        let lstm = report.curves.iter().find(|c| c.cell == "lstm").unwrap();
        (lstm.first_last_ratio, lstm.trained_mse)
    };
    let (torch_init, none) = ratio(&GradFlowWeights {
        forget_bias: None,
        train_steps: 0,
    });
    let (bias3, _) = ratio(&GradFlowWeights {
        forget_bias: Some(3.0),
        train_steps: 0,
    });
    assert!(none.is_none());
    // σ(3) ≈ 0.95 against σ(0) = 0.5 per step on the cell path, over 29 steps.
    assert!(
        bias3 > 1e3 * torch_init,
        "forget bias 3: ratio {bias3:.3e}, torch init {torch_init:.3e}"
    );
    let trained = gradflow_with(
        &opts,
        &GradFlowWeights {
            forget_bias: Some(1.0),
            train_steps: 2,
        },
    )
    .unwrap();
    assert_eq!(trained.train_steps, 2);
    for c in &trained.curves {
        let mse = c.trained_mse.unwrap();
        assert!(mse.is_finite() && mse > 0.0, "{}: {mse}", c.cell);
    }
    let json = trained.to_json();
    assert_eq!(json["forget_bias"], 1.0);
    assert!(json["curves"][0]["trained_mse"].is_number());
}

#[test]
fn sampling_is_seeded_starts_with_the_prime_and_checks_its_inputs() {
    let (model, corpus) = charlm_setup();
    let opts = SampleOptions {
        prime: "We the".into(),
        len: 37,
        temperature: 0.9,
        seed: 3,
    };
    let text = sample_text(&model, &corpus.vocab, &opts).unwrap();
    assert_eq!(text, sample_text(&model, &corpus.vocab, &opts).unwrap());
    assert!(text.starts_with("We the"), "{text:?}");
    assert_eq!(text.chars().count(), 6 + 37);
    assert!(text.chars().all(|c| corpus.vocab.contains(&c)));
    let other = sample_text(
        &model,
        &corpus.vocab,
        &SampleOptions {
            seed: 4,
            ..opts.clone()
        },
    );
    assert_ne!(text, other.unwrap(), "the seed should change the sample");
    let bad_prime = SampleOptions {
        prime: "snow \u{2603}".into(),
        ..opts.clone()
    };
    let err = sample_text(&model, &corpus.vocab, &bad_prime).unwrap_err();
    assert!(
        err.to_string().contains("not in the model's vocabulary"),
        "{err}"
    );
    for temperature in [0.0, -1.0, f64::NAN] {
        let err = sample_text(
            &model,
            &corpus.vocab,
            &SampleOptions {
                temperature,
                ..opts.clone()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
    let err = sample_text(&model, &corpus.vocab[1..], &opts).unwrap_err();
    assert!(err.to_string().contains("sampling needs"), "{err}");
}

#[test]
fn charlm_reports_bits_perplexity_epochs_and_a_sample() {
    let opts = CharLmOptions {
        cell: CellKind::Gru,
        embed: 6,
        hidden: 11,
        layers: 1,
        seq_len: 16,
        batch: 33,
        steps: 50,
        sample_len: 40,
        ..CharLmOptions::default()
    };
    let report = train_charlm(&opts).unwrap();
    let (_, corpus) = charlm_setup();
    let train_chars = corpus.train.len();
    let epoch_steps = train_chars.div_ceil(16 * 33);
    let steps: Vec<usize> = report.history.iter().map(|p| p.step).collect();
    assert_eq!(
        steps,
        vec![0, epoch_steps, 2 * epoch_steps, 50],
        "{steps:?}"
    );
    for p in &report.history {
        let epoch = p.epoch.unwrap();
        assert!((epoch - (p.step * 16 * 33) as f64 / train_chars as f64).abs() < 1e-12);
        assert_eq!(p.perplexity("charlm"), Some(p.loss.exp2()));
    }
    assert!(report.final_value < report.history[0].loss);
    let sample = report.sample.as_deref().unwrap();
    assert!(
        sample.starts_with("The ") && sample.chars().count() == 44,
        "{sample:?}"
    );
    let json = report.to_json();
    assert_eq!(json["sample"], sample);
    assert_eq!(json["final_perplexity"], report.final_value.exp2());
    assert!(json["history"][1]["perplexity"].is_number());
    assert!(json["history"][1]["epoch"].is_number());
    let lines = report.history_lines();
    assert!(
        lines[1].contains("epoch") && lines[1].contains("perplexity"),
        "{}",
        lines[1]
    );
    let err = train_charlm(&CharLmOptions {
        eval_every: Some(0),
        ..opts
    })
    .unwrap_err();
    assert!(err.to_string().contains("eval_every"), "{err}");
}

/// A small two-layer GRU character LM with dropout, 6 steps, evaluated every 3.
fn small_charlm(
    backend: Backend,
    steps: usize,
    dir: &std::path::Path,
    name: &str,
) -> CharLmOptions {
    CharLmOptions {
        cell: CellKind::Gru,
        embed: 5,
        hidden: 9,
        layers: 2,
        dropout: 0.2,
        seq_len: 7,
        batch: 3,
        steps,
        eval_every: Some(3),
        sample_len: 0,
        backend,
        checkpoint: Some(dir.join(format!("{name}.safetensors"))),
        ..CharLmOptions::default()
    }
}

fn checkpoint_of(opts: &CharLmOptions) -> (SeqModel<f32>, Optimizer<f32>) {
    load_checkpoint::<f32>(opts.checkpoint.as_ref().unwrap()).unwrap()
}

/// Runs 6 steps straight and 3 + 3 through a checkpoint on `backend`; returns the reports and
/// the two final checkpoints.
fn straight_and_resumed(
    backend: Backend,
    dir: &std::path::Path,
) -> [(wgpu_rnn_cli::TrainReport, SeqModel<f32>, Optimizer<f32>); 2] {
    let name = backend.name();
    let straight = small_charlm(backend, 6, dir, &format!("{name}_straight"));
    let half = small_charlm(backend, 3, dir, &format!("{name}_half"));
    let resumed = CharLmOptions {
        resume: half.checkpoint.clone(),
        ..small_charlm(backend, 6, dir, &format!("{name}_resumed"))
    };
    let report = train_charlm(&straight).unwrap();
    train_charlm(&half).unwrap();
    let resumed_report = train_charlm(&resumed).unwrap();
    let (m1, o1) = checkpoint_of(&straight);
    let (m2, o2) = checkpoint_of(&resumed);
    [(report, m1, o1), (resumed_report, m2, o2)]
}

#[test]
fn charlm_resumes_from_a_checkpoint_exactly_and_checks_it() {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-charlm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let [(straight, m1, o1), (resumed, m2, o2)] = straight_and_resumed(Backend::Cpu, &dir);
    assert_eq!(m1, m2, "model after resume differs");
    assert_eq!(o1, o2, "optimizer after resume differs");
    assert_eq!(o2.step, 6);
    let steps: Vec<usize> = resumed.history.iter().map(|p| p.step).collect();
    assert_eq!(steps, vec![3, 6]);
    assert_eq!(resumed.history[1].loss, straight.history[2].loss);

    let half = small_charlm(Backend::Cpu, 3, &dir, "cpu_half");
    let other_model = CharLmOptions {
        hidden: 10,
        resume: half.checkpoint.clone(),
        ..half.clone()
    };
    let err = train_charlm(&other_model).unwrap_err();
    assert!(err.to_string().contains("hidden: 10"), "{err}");
    let too_few = CharLmOptions {
        steps: 2,
        resume: half.checkpoint.clone(),
        ..half.clone()
    };
    let err = train_charlm(&too_few).unwrap_err();
    assert!(err.to_string().contains("at step 3"), "{err}");
    let missing = CharLmOptions {
        resume: Some(dir.join("none.safetensors")),
        ..half
    };
    let err = train_charlm(&missing).unwrap_err();
    assert!(err.to_string().contains("none.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The character LM on the GPU (GpuTrainer: embedding, dropout, CE, clipping and Adam on the
/// GPU) follows the CPU run, and its checkpoint resumes exactly.
#[test]
fn gpu_charlm_matches_cpu_and_resumes_exactly() {
    let Some(_ctx) = common::gpu() else { return };
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-gpu-charlm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let [(cpu, cpu_model, cpu_opt), _] = straight_and_resumed(Backend::Cpu, &dir);
    let [(gpu, m1, o1), (_, m2, o2)] = straight_and_resumed(Backend::Gpu, &dir);
    assert_eq!(m1, m2, "GPU model after resume differs");
    assert_eq!(o1, o2, "GPU optimizer after resume differs");
    assert_eq!(gpu.backend, "gpu");
    for (c, g) in cpu.history.iter().zip(&gpu.history) {
        assert!(
            (c.loss - g.loss).abs() <= 1e-5 * c.loss,
            "step {}: held-out bits/char cpu {} gpu {}",
            c.step,
            c.loss,
            g.loss
        );
    }
    let err = rel_err(
        &f64s(&m1.tensors().unwrap().concat()),
        &f64s(&cpu_model.tensors().unwrap().concat()),
    );
    assert!(err < 1e-5, "GPU parameters after 6 steps: rel err {err:e}");
    let err = rel_err(
        &f64s(&o1.state[1].concat()),
        &f64s(&cpu_opt.state[1].concat()),
    );
    assert!(err < 1e-4, "GPU exp_avg_sq after 6 steps: rel err {err:e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plot_many_draws_several_runs_and_rejects_none() {
    let opts = AddingOptions {
        seq_len: 5,
        hidden: 3,
        batch: 4,
        steps: 3,
        eval_every: 1,
        eval_batch: 7,
        ..AddingOptions::default()
    };
    let lstm = train_adding(&opts).unwrap();
    let gru = train_adding(&AddingOptions {
        cell: CellKind::Gru,
        ..opts
    })
    .unwrap();
    assert!(lstm.history.iter().all(|p| p.epoch.is_none()));
    assert!(lstm.sample.is_none() && lstm.to_json().get("sample").is_none());
    let path = std::env::temp_dir().join(format!("wgpu-rnn-plot-many-{}.png", std::process::id()));
    plot_many(&[&lstm, &gru], &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    std::fs::remove_file(&path).ok();
    assert!(plot_many(&[], &path).is_err());
}

#[test]
fn gpu_backend_trains_like_the_cpu_backend() {
    let Some(_ctx) = common::gpu() else { return };
    let opts = AddingOptions {
        seq_len: 7,
        hidden: 9,
        batch: 5,
        steps: 4,
        eval_every: 2,
        eval_batch: 17,
        ..AddingOptions::default()
    };
    let cpu = train_adding(&opts).unwrap();
    let gpu = train_adding(&AddingOptions {
        backend: Backend::Gpu,
        ..opts
    })
    .unwrap();
    for (c, g) in cpu.history.iter().zip(&gpu.history) {
        assert!(
            (c.loss - g.loss).abs() <= 1e-4 * c.loss.abs().max(1.0),
            "step {}: cpu {} gpu {}",
            c.step,
            c.loss,
            g.loss
        );
    }
}
