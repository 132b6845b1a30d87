//! `wgpu-rnn`: adapter info, fixture verification, the CPU-vs-GPU benchmark, training demos.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wgpu_rnn::gpu::{enumerate_adapters, GpuContext, GpuOptions, GpuRnn};
use wgpu_rnn::train::Backend;
use wgpu_rnn::{cpu, CellKind, Result};
use wgpu_rnn_cli::bench::{self, BenchCase, BenchOptions, Mode};
use wgpu_rnn_cli::fixture::{check_fixture, Fixture, TensorCheck};
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
        #[arg(long, allow_hyphen_values = true, value_parser = size)]
        batch: Option<usize>,
        #[arg(long, allow_hyphen_values = true, value_parser = size)]
        seq: Option<usize>,
        #[arg(long, allow_hyphen_values = true, value_parser = size)]
        input: Option<usize>,
        #[arg(long, allow_hyphen_values = true, value_parser = size)]
        hidden: Option<usize>,
        #[arg(long, default_value_t = 1, allow_hyphen_values = true, value_parser = size)]
        layers: usize,
        #[arg(long)]
        bidirectional: bool,
        /// Time forward only, or forward and backward (default: both modes).
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = 10, allow_hyphen_values = true, value_parser = size)]
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
        #[arg(long, default_value_t = 100, allow_hyphen_values = true, value_parser = size)]
        seq_len: usize,
        #[arg(long, default_value_t = 32, allow_hyphen_values = true, value_parser = size)]
        hidden: usize,
        #[arg(long, default_value_t = 16, allow_hyphen_values = true, value_parser = size)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The LSTM's initial forget-gate bias; `none` keeps torch's init.
        #[arg(long, default_value = "1", allow_hyphen_values = true)]
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
    #[arg(long, allow_hyphen_values = true, value_parser = size)]
    seq_len: Option<usize>,
    #[arg(long, allow_hyphen_values = true, value_parser = size)]
    hidden: Option<usize>,
    #[arg(long, allow_hyphen_values = true, value_parser = size)]
    batch: Option<usize>,
    #[arg(long, allow_hyphen_values = true, value_parser = size)]
    steps: Option<usize>,
    /// Adam learning rate.
    #[arg(long, allow_hyphen_values = true, value_parser = positive_finite)]
    lr: Option<f64>,
    /// Clip gradients to this global norm (0 disables clipping).
    #[arg(long, allow_hyphen_values = true, value_parser = non_negative_finite)]
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
        #[arg(long, allow_hyphen_values = true, value_parser = size)]
        layers: Option<usize>,
        /// Dropout probability in [0, 1).
        #[arg(long, allow_hyphen_values = true, value_parser = probability)]
        dropout: Option<f32>,
        /// Save model and optimizer state here at the end.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Go on from this checkpoint (same text and model options) up to --steps.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// The text the final sample starts with (its characters must occur in the text).
        #[arg(long)]
        prime: Option<String>,
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
            for adapter in enumerate_adapters(&opts)? {
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
            check_destination(json.as_deref(), "--json", &[])?;
            check_destination(plot.as_deref(), "--plot", &[])?;
            let forget_bias = match forget_bias.as_str() {
                "none" => None,
                value => Some(
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            wgpu_rnn::RnnError::Config(format!(
                                "--forget-bias takes a finite number or `none`, got `{value}`"
                            ))
                        })?,
                ),
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
            check_destination(json.as_deref(), "--json", &[])?;
            check_destination(plot.as_deref(), "--plot", &[])?;
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

/// An output file `option` names can be written where it points: its folder exists and it is
/// not a folder itself, nor one of the run's `inputs`. Checked before the run, not after it.
fn check_destination(
    path: Option<&std::path::Path>,
    option: &str,
    inputs: &[Option<&std::path::Path>],
) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let problem = if path.is_dir() {
        Some("is a folder")
    } else if inputs.iter().flatten().any(|input| {
        input == &path
            || (path.exists()
                && std::fs::canonicalize(input).ok() == std::fs::canonicalize(path).ok())
    }) {
        Some("is one of the run's inputs")
    } else {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        parent
            .is_some_and(|p| !p.is_dir())
            .then_some("is in a folder that does not exist")
    };
    match problem {
        Some(problem) => Err(wgpu_rnn::RnnError::Config(format!(
            "{option} {} {problem}",
            path.display()
        ))),
        None => Ok(()),
    }
}

/// Runs a training task and prints its loss history.
fn train(task: TrainTask) -> Result<ExitCode> {
    let (args, report) = match task {
        TrainTask::Adding { args } => {
            check_destination(args.json.as_deref(), "--json", &[])?;
            check_destination(args.plot.as_deref(), "--plot", &[])?;
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
            prime,
        } => {
            let inputs = [text.as_deref(), resume.as_deref()];
            check_destination(args.json.as_deref(), "--json", &inputs)?;
            check_destination(args.plot.as_deref(), "--plot", &inputs)?;
            // Resuming from and saving to the same checkpoint is the usual way on.
            check_destination(checkpoint.as_deref(), "--checkpoint", &inputs[..1])?;
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
                sample_prime: prime.unwrap_or(defaults.sample_prime.clone()),
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

/// A size or count ≥ 1 (clap reports the option's name with the error).
fn size(arg: &str) -> std::result::Result<usize, String> {
    match arg.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("`{arg}` is not a whole number: {e}")),
    }
}

/// `arg` as a number for which `valid` holds; otherwise an error saying it `must be ...`
/// (clap reports the option's name with the error).
fn number_where<T>(
    arg: &str,
    valid: impl Fn(T) -> bool,
    must_be: &str,
) -> std::result::Result<T, String>
where
    T: std::str::FromStr + Copy,
    T::Err: std::fmt::Display,
{
    let v: T = arg
        .parse()
        .map_err(|e| format!("`{arg}` is not a number: {e}"))?;
    if valid(v) {
        Ok(v)
    } else {
        Err(format!("must be {must_be}, got {arg}"))
    }
}

/// A finite number > 0.
fn positive_finite(arg: &str) -> std::result::Result<f64, String> {
    number_where(
        arg,
        |v: f64| v.is_finite() && v > 0.0,
        "a finite number > 0",
    )
}

/// A finite number ≥ 0.
fn non_negative_finite(arg: &str) -> std::result::Result<f64, String> {
    number_where(
        arg,
        |v: f64| v.is_finite() && v >= 0.0,
        "a finite number >= 0 (0: off)",
    )
}

/// A probability in [0, 1).
fn probability(arg: &str) -> std::result::Result<f32, String> {
    number_where(arg, |v: f32| (0.0..1.0).contains(&v), "in [0, 1)")
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
    let mut failed = Vec::new();
    for path in files {
        println!("{}", path.display());
        let verdict = match verify_file(ctx.as_ref(), path) {
            Ok(checks) => {
                for check in &checks {
                    println!("  {check}");
                }
                if checks.iter().all(|c| c.passed()) {
                    "PASS"
                } else {
                    "FAIL"
                }
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                "ERROR"
            }
        };
        println!("{verdict}");
        if verdict != "PASS" {
            failed.push(format!("{} ({verdict})", path.display()));
        }
    }
    println!(
        "{} of {} files passed",
        files.len() - failed.len(),
        files.len()
    );
    if !failed.is_empty() {
        println!("not passed: {}", failed.join(", "));
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One fixture forward and backward on the CPU (`ctx` = None) or the GPU, compared tensor by
/// tensor.
fn verify_file(ctx: Option<&Arc<GpuContext>>, path: &std::path::Path) -> Result<Vec<TensorCheck>> {
    let fx = Fixture::<f32>::load(path)?;
    let (batch, upstream) = (fx.batch(), fx.upstream());
    let (output, grads) = match ctx {
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
    Ok(check_fixture(&fx, &output, &grads))
}
