//! `wgpu-rnn`: adapter info, fixture verification, the CPU-vs-GPU benchmark, training demos.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wgpu_rnn::gpu::{enumerate_adapters, GpuContext, GpuOptions, GpuRnn};
use wgpu_rnn::train::Backend;
use wgpu_rnn::{cpu, CellKind, Result};
use wgpu_rnn_cli::bench::{self, BenchCase, BenchOptions, Mode};
use wgpu_rnn_cli::fixture::{check_fixture, Fixture};
use wgpu_rnn_cli::{
    gradflow_with, train_adding, train_charlm, AddingOptions, CharLmOptions, GradFlowOptions,
    GradFlowWeights,
};

#[derive(Parser)]
#[command(
    name = "wgpu-rnn",
    version,
    about = "RNN, LSTM and GRU on any GPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Cpu,
    Gpu,
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu sees and which one would be used.
    Info,
    /// Run torch fixtures forward and backward and compare every tensor.
    Verify {
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendArg,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Time the CPU reference and the GPU path on the same inputs.
    Bench {
        /// rnn, rnn_relu, rnn_identity, lstm or gru; omit all sizes for the default sweep.
        #[arg(long)]
        cell: Option<String>,
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        seq: Option<usize>,
        #[arg(long)]
        input: Option<usize>,
        #[arg(long)]
        hidden: Option<usize>,
        #[arg(long, default_value_t = 1)]
        layers: usize,
        #[arg(long)]
        bidirectional: bool,
        /// Time forward only, or forward and backward (default: both modes).
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = 10)]
        reps: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long, value_enum, default_value = "both")]
        backend: BackendArg,
        /// Write every figure as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw a CPU-vs-GPU bar chart PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// GPU forward cases read W_hh rounded to f16 (GpuRnn::half_recurrent_weights);
        /// forward+backward stays f32.
        #[arg(long)]
        half_weights: bool,
    },
    /// Train on a demonstration task.
    Train {
        #[command(subcommand)]
        task: TrainTask,
    },
    /// Plot ‖∂L/∂h_t‖ against t for RNN, LSTM and GRU: the vanishing gradient, measured.
    Gradflow {
        #[arg(long, default_value_t = 100)]
        seq_len: usize,
        #[arg(long, default_value_t = 32)]
        hidden: usize,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The LSTM's initial forget-gate bias; `none` keeps torch's init.
        #[arg(long, default_value = "1")]
        forget_bias: String,
        /// Adding-problem training steps before measuring (0: at init).
        #[arg(long, default_value_t = 0)]
        train_steps: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

/// Options every training task shares.
#[derive(clap::Args)]
struct TrainArgs {
    /// rnn, rnn_relu, rnn_identity, lstm or gru.
    #[arg(long, default_value = "lstm")]
    cell: String,
    #[arg(long)]
    seq_len: Option<usize>,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    /// Adam learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Clip gradients to this global norm (0 disables clipping).
    #[arg(long)]
    clip: Option<f64>,
    #[arg(long, value_enum, default_value = "cpu")]
    backend: TrainBackendArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loss history and final metric as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Loss curve PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TrainBackendArg {
    Cpu,
    Gpu,
}

#[derive(Subcommand)]
enum TrainTask {
    /// The adding problem (Hochreiter & Schmidhuber 1997): target = sum of two marked values.
    Adding {
        #[command(flatten)]
        args: TrainArgs,
    },
    /// A character-level language model on a text file (default: the bundled text).
    Charlm {
        #[command(flatten)]
        args: TrainArgs,
        #[arg(long)]
        text: Option<PathBuf>,
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long)]
        dropout: Option<f32>,
        /// Save model and optimizer state here at the end.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Go on from this checkpoint (same text and model options) up to --steps.
        #[arg(long)]
        resume: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Info => {
            let opts = GpuOptions::default();
            for adapter in enumerate_adapters(&opts) {
                println!("{adapter}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { backend, files } => verify(backend, &files),
        Command::Train { task } => train(task),
        Command::Gradflow {
            seq_len,
            hidden,
            batch,
            seed,
            forget_bias,
            train_steps,
            json,
            plot,
        } => {
            let forget_bias = match forget_bias.as_str() {
                "none" => None,
                value => Some(value.parse::<f64>().map_err(|_| {
                    wgpu_rnn::RnnError::Config(format!(
                        "--forget-bias takes a number or `none`, got `{value}`"
                    ))
                })?),
            };
            let report = gradflow_with(
                &GradFlowOptions {
                    seq_len,
                    hidden,
                    batch,
                    seed,
                },
                &GradFlowWeights {
                    forget_bias,
                    train_steps,
                },
            )?;
            for curve in &report.curves {
                println!(
                    "{:<10} ‖dL/dh_0‖ / ‖dL/dh_T-1‖ = {:.3e}",
                    curve.cell, curve.first_last_ratio
                );
            }
            write_outputs(json, plot, |p| report.write_json(p), |p| report.plot(p))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            cell,
            batch,
            seq,
            input,
            hidden,
            layers,
            bidirectional,
            mode,
            reps,
            warmup,
            backend,
            json,
            plot,
            half_weights,
        } => {
            let (backend, ctx) = match backend {
                BackendArg::Cpu => (bench::Backend::Cpu, None),
                BackendArg::Gpu => (bench::Backend::Gpu, Some(Arc::new(GpuContext::new()?))),
                // Without an adapter the default run still times the CPU, and says why.
                BackendArg::Both => match GpuContext::new() {
                    Ok(ctx) => (bench::Backend::Both, Some(Arc::new(ctx))),
                    Err(e) => {
                        eprintln!("{e}\ntiming the CPU reference only (see README: Prerequisites)");
                        (bench::Backend::Cpu, None)
                    }
                },
            };
            let custom = cell.is_some()
                || [batch, seq, input, hidden].iter().any(Option::is_some)
                || layers != 1
                || bidirectional
                || mode.is_some();
            let cases = if custom {
                let modes = match mode.as_deref() {
                    None => vec![Mode::Forward, Mode::ForwardBackward],
                    Some("fwd") => vec![Mode::Forward],
                    Some("fwdbwd") => vec![Mode::ForwardBackward],
                    Some(other) => {
                        return Err(wgpu_rnn::RnnError::Config(format!(
                            "unknown --mode `{other}` (expected fwd or fwdbwd)"
                        )))
                    }
                };
                let cell = CellKind::parse(cell.as_deref().unwrap_or("lstm"))?;
                let hidden = hidden.unwrap_or(256);
                modes
                    .into_iter()
                    .map(|mode| BenchCase {
                        cell,
                        batch: batch.unwrap_or(16),
                        seq: seq.unwrap_or(100),
                        input: input.unwrap_or(hidden),
                        hidden,
                        layers,
                        bidirectional,
                        mode,
                    })
                    .collect()
            } else {
                let on_cpu = ctx.as_ref().is_none_or(|c| c.is_cpu());
                let (cases, note) = bench::default_sweep(on_cpu);
                if let Some(note) = note {
                    println!("{note}");
                }
                cases
            };
            let opts = BenchOptions {
                backend,
                reps,
                warmup,
                progress: true,
                half_recurrent_weights: half_weights,
            };
            let report = bench::run_sweep(ctx, &cases, &opts)?;
            println!("{}", report.table());
            write_outputs(json, plot, |p| report.write_json(p), |p| report.plot(p))?;
            let mismatches = report.mismatches();
            if mismatches.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for r in &mismatches {
                    eprintln!(
                        "{}: GPU and CPU disagree beyond {:e}",
                        r.case.label(),
                        r.tolerance()
                    );
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Runs a training task and prints its loss history.
fn train(task: TrainTask) -> Result<ExitCode> {
    let (args, report) = match task {
        TrainTask::Adding { args } => {
            let defaults = AddingOptions::default();
            let opts = AddingOptions {
                cell: CellKind::parse(&args.cell)?,
                seq_len: args.seq_len.unwrap_or(defaults.seq_len),
                hidden: args.hidden.unwrap_or(defaults.hidden),
                batch: args.batch.unwrap_or(defaults.batch),
                steps: args.steps.unwrap_or(defaults.steps),
                lr: args.lr.unwrap_or(defaults.lr),
                clip: args.clip.map_or(defaults.clip, positive),
                backend: train_backend(args.backend),
                seed: args.seed,
                ..defaults
            };
            let report = train_adding(&opts)?;
            (args, report)
        }
        TrainTask::Charlm {
            args,
            text,
            layers,
            dropout,
            checkpoint,
            resume,
        } => {
            let defaults = CharLmOptions::default();
            let opts = CharLmOptions {
                text,
                cell: CellKind::parse(&args.cell)?,
                layers: layers.unwrap_or(defaults.layers),
                dropout: dropout.unwrap_or(defaults.dropout),
                seq_len: args.seq_len.unwrap_or(defaults.seq_len),
                hidden: args.hidden.unwrap_or(defaults.hidden),
                batch: args.batch.unwrap_or(defaults.batch),
                steps: args.steps.unwrap_or(defaults.steps),
                lr: args.lr.unwrap_or(defaults.lr),
                clip: args.clip.map_or(defaults.clip, positive),
                backend: train_backend(args.backend),
                seed: args.seed,
                checkpoint,
                resume,
                ..defaults
            };
            let report = train_charlm(&opts)?;
            (args, report)
        }
    };
    for line in report.history_lines() {
        println!("{line}");
    }
    println!("{} = {:.5}", report.final_metric, report.final_value);
    if let Some(perplexity) = report.final_perplexity() {
        println!("final perplexity = {perplexity:.3}");
    }
    if let Some(sample) = &report.sample {
        println!("sample:\n{sample}");
    }
    write_outputs(
        args.json,
        args.plot,
        |p| report.write_json(p),
        |p| report.plot(p),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `Some(v)` for a positive threshold, `None` (no clipping) for 0.
fn positive(v: f64) -> Option<f64> {
    (v > 0.0).then_some(v)
}

fn train_backend(arg: TrainBackendArg) -> Backend {
    match arg {
        TrainBackendArg::Cpu => Backend::Cpu,
        TrainBackendArg::Gpu => Backend::Gpu,
    }
}

/// Writes the JSON and PNG a command was asked for.
fn write_outputs(
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    write_json: impl Fn(&std::path::Path) -> Result<()>,
    write_plot: impl Fn(&std::path::Path) -> Result<()>,
) -> Result<()> {
    if let Some(path) = json {
        write_json(&path)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = plot {
        write_plot(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs every fixture forward and backward on one backend and prints a line per tensor.
fn verify(backend: BackendArg, files: &[PathBuf]) -> Result<ExitCode> {
    let ctx = match backend {
        BackendArg::Cpu => None,
        BackendArg::Gpu => Some(Arc::new(GpuContext::new()?)),
        BackendArg::Both => {
            return Err(wgpu_rnn::RnnError::Config(
                "verify takes --backend cpu or --backend gpu".into(),
            ))
        }
    };
    if let Some(ctx) = &ctx {
        let info = ctx.adapter_info();
        println!("adapter: {} ({:?})", info.name, info.backend);
    }
    let mut failed = 0;
    for path in files {
        let fx = Fixture::<f32>::load(path)?;
        let (batch, upstream) = (fx.batch(), fx.upstream());
        let (output, grads) = match &ctx {
            None => {
                let (output, tape) = cpu::forward_train(&fx.params, &batch)?;
                (output, cpu::backward(&fx.params, &tape, &upstream)?)
            }
            Some(ctx) => {
                let model = GpuRnn::new(ctx.clone(), &fx.params)?;
                let (output, tape) = model.forward_train(&batch)?;
                let grads = model.backward(&tape, &upstream)?;
                (output, grads)
            }
        };
        println!("{}", path.display());
        let checks = check_fixture(&fx, &output, &grads);
        let ok = checks.iter().all(|c| c.passed());
        for check in &checks {
            println!("  {check}");
        }
        println!("{}", if ok { "PASS" } else { "FAIL" });
        failed += usize::from(!ok);
    }
    println!("{} of {} files passed", files.len() - failed, files.len());
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
