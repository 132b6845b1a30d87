//! The CPU-vs-GPU benchmark behind `wgpu-rnn bench`: a sweep of cases, each timed on the CPU
//! reference and on the GPU with the same seeded inputs, with an agreement check, a text table,
//! JSON records (the schema `benches/torch_baseline.py` writes) and a bar chart.
//!
//! What a GPU timing includes: one `GpuRnn::forward_gpu` (or `forward_train_gpu` +
//! `backward_gpu`) call followed by [`GpuContext::sync`]: allocating the result buffers,
//! recording and running the whole sequence. Inputs and parameters are uploaded once per case and
//! results stay on the GPU, as with cuDNN's figures; the agreement check reads them back once,
//! outside the timed region. Each repetition has a wall time and, when the device has timestamp
//! queries, the GPU time of its compute passes ([`GpuContext::start_pass_timing`]).

use crate::fixture::relative_error;
use crate::limits::{check_host_memory, product, sum};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array3;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use wgpu_rnn::batch::{ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use wgpu_rnn::config::{CellKind, Nonlinearity, RnnConfig};
use wgpu_rnn::cpu;
use wgpu_rnn::error::{Result, RnnError};
use wgpu_rnn::gpu::{GpuContext, GpuRnn, GpuSequenceBatch, GpuTensor, GpuUpstreamGrads};
use wgpu_rnn::params::RnnParams;

/// Which implementation(s) to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
    Both,
}

impl Backend {
    fn runs_cpu(self) -> bool {
        matches!(self, Backend::Cpu | Backend::Both)
    }

    fn runs_gpu(self) -> bool {
        matches!(self, Backend::Gpu | Backend::Both)
    }
}

/// What one timed repetition does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Inference forward pass.
    Forward,
    /// Forward pass that keeps what backward needs, then backward with seeded upstream gradients.
    ForwardBackward,
}

impl Mode {
    /// `fwd` or `fwdbwd`, as in the JSON records.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Forward => "fwd",
            Mode::ForwardBackward => "fwdbwd",
        }
    }
}

/// One benchmark configuration. Inputs are (T, B, I) = (seq, batch, input).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchCase {
    pub cell: CellKind,
    pub batch: usize,
    pub seq: usize,
    pub input: usize,
    pub hidden: usize,
    pub layers: usize,
    pub bidirectional: bool,
    pub mode: Mode,
}

impl BenchCase {
    /// The network this case runs (with bias, seq-major).
    pub fn config(&self) -> RnnConfig {
        RnnConfig::new(self.cell, self.input, self.hidden)
            .layers(self.layers)
            .bidirectional(self.bidirectional)
    }

    /// Floating-point operations of one repetition, counting only the matrix products:
    /// forward = Σ over layers and directions of 2·T·B·G·H·(I_l + H), with G gates and I_l the
    /// layer's input width; forward+backward ≈ 3 × forward (two more products of each size).
    pub fn flops(&self) -> f64 {
        let config = self.config();
        let gate_rows = config.gate_rows() as f64;
        let steps = (self.seq * self.batch) as f64;
        let forward: f64 = (0..self.layers)
            .map(|layer| {
                let width = (config.layer_input_size(layer) + self.hidden) as f64;
                config.num_directions() as f64 * 2.0 * steps * gate_rows * width
            })
            .sum();
        match self.mode {
            Mode::Forward => forward,
            Mode::ForwardBackward => 3.0 * forward,
        }
    }

    /// Short description, e.g. `lstm B=64 T=100 I=1024 H=1024 fwd`.
    pub fn label(&self) -> String {
        let mut label = format!(
            "{} B={} T={} I={} H={}",
            cell_name(self.cell),
            self.batch,
            self.seq,
            self.input,
            self.hidden
        );
        if self.layers > 1 {
            label += &format!(" L={}", self.layers);
        }
        if self.bidirectional {
            label += " bi";
        }
        label + " " + self.mode.name()
    }

    /// The case's sizes are valid, their products do not overflow, the weights fit the
    /// adapter's storage-binding limit (when the GPU runs) and the host arrays fit the host's
    /// available memory: checked before anything is allocated.
    fn check(&self, gpu: Option<&GpuContext>) -> Result<()> {
        let config = self.config();
        config.validate()?;
        if self.batch == 0 || self.seq == 0 {
            return Err(RnnError::Config(format!(
                "bench case `{}`: batch and seq must be at least 1",
                self.label()
            )));
        }
        let what = format!("bench case `{}`", self.label());
        let mul = |factors: &[usize]| product(factors, &what);
        let add = |terms: &[usize]| sum(terms, &what);
        let (t, b, h) = (self.seq, self.batch, self.hidden);
        let (gates, planes) = (config.gate_rows(), self.layers * config.num_directions());
        let widest_input = (0..self.layers)
            .map(|layer| config.layer_input_size(layer))
            .max()
            .unwrap_or(self.input);
        let w_ih = mul(&[gates, widest_input])?;
        let w_hh = mul(&[gates, h])?;
        if let Some(ctx) = gpu {
            let limit = ctx.limits().max_storage_buffer_binding_size as usize;
            let bytes = mul(&[w_ih.max(w_hh), 4])?;
            if bytes > limit {
                return Err(RnnError::TooLarge(format!(
                    "{what}: a weight matrix takes {bytes} bytes, above this adapter's storage \
                     binding limit of {limit} bytes (--hidden / --input)"
                )));
            }
        }
        // Host f32 elements: parameters and their gradients, the input sets, and per run the
        // output and saved activations of every layer and direction (a lower bound).
        let params = mul(&[planes, add(&[w_ih, w_hh])?, 2])?;
        let per_set = mul(&[t, b, self.input.max(config.output_size()), 2])?;
        let per_run = mul(&[t, b, planes, add(&[gates, h])?, 2])?;
        let elements = add(&[params, mul(&[per_set, INPUT_SETS])?, per_run])?;
        check_host_memory(
            elements,
            &what,
            "--hidden / --input / --seq / --batch / --layers",
        )
    }
}

/// `rnn_tanh`, `rnn_relu`, `rnn_identity`, `lstm` or `gru` (what [`CellKind::parse`] reads).
fn cell_name(cell: CellKind) -> String {
    match cell {
        CellKind::Rnn(nl) => format!("rnn_{}", nl.name()),
        other => other.name().to_string(),
    }
}

/// How to run a sweep.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub backend: Backend,
    /// Timed repetitions per case and backend (fewer when they exceed [`TIME_BUDGET_S`]).
    pub reps: usize,
    /// Untimed repetitions before timing (also cut by [`TIME_BUDGET_S`]).
    pub warmup: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// GPU inference (forward cases) reads W_hh rounded to f16
    /// ([`GpuRnn::half_recurrent_weights`]), checked against [`HALF_WEIGHTS_TOLERANCE`];
    /// forward+backward stays f32.
    pub half_recurrent_weights: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            backend: Backend::Both,
            reps: 10,
            warmup: 2,
            progress: true,
            half_recurrent_weights: false,
        }
    }
}

/// Seconds of warmup, and separately of timed repetitions, after which a case stops early
/// (keeping at least one timed repetition), so that slow CPU cases do not stall a sweep.
pub const TIME_BUDGET_S: f64 = 3.0;

/// Distinct seeded input sets each case rotates through, so that caches do not flatter.
pub const INPUT_SETS: usize = 3;

/// GPU/CPU relative difference ‖Δ‖/‖ref‖ above which a result counts as a mismatch.
pub const AGREEMENT_TOLERANCE: f64 = 1e-4;
/// The same for a GPU forward that read W_hh in f16 (11 significant bits).
pub const HALF_WEIGHTS_TOLERANCE: f64 = 1e-2;

/// The (B, H) pairs of the real-GPU sweep, with I = H and T = [`GPU_SEQ`].
const GPU_SIZES: [(usize, usize); 4] = [(1, 256), (1, 1024), (64, 512), (64, 1024)];
const GPU_SEQ: usize = 100;
/// The (B, H) pairs and T of the sweep on a CPU adapter (lavapipe, llvmpipe).
const CPU_ADAPTER_SIZES: [(usize, usize); 4] = [(1, 32), (1, 128), (8, 64), (8, 128)];
const CPU_ADAPTER_SEQ: usize = 16;

/// The default sweep: Elman tanh, LSTM and GRU; four (B, H) sizes; forward and
/// forward+backward. On a real GPU: T = 100, H ∈ {256, 512, 1024}, B ∈ {1, 64} (the cuDNN
/// anchor cases). With `gpu_is_cpu` the sizes shrink so that the sweep finishes in a minute or
/// two on a few cores; the returned note says so.
pub fn default_sweep(gpu_is_cpu: bool) -> (Vec<BenchCase>, Option<String>) {
    let (sizes, seq, note) = if gpu_is_cpu {
        let note = format!(
            "the GPU adapter is a CPU implementation: sizes scaled down to B in {{1, 8}}, \
             H in {{32, 64, 128}}, T = {CPU_ADAPTER_SEQ} (a real GPU runs B in {{1, 64}}, \
             H in {{256, 512, 1024}}, T = {GPU_SEQ})"
        );
        (CPU_ADAPTER_SIZES, CPU_ADAPTER_SEQ, Some(note))
    } else {
        (GPU_SIZES, GPU_SEQ, None)
    };
    let cells = [
        CellKind::Rnn(Nonlinearity::Tanh),
        CellKind::Lstm,
        CellKind::Gru,
    ];
    let mut cases = Vec::new();
    for cell in cells {
        for (batch, hidden) in sizes {
            for mode in [Mode::Forward, Mode::ForwardBackward] {
                cases.push(BenchCase {
                    cell,
                    batch,
                    seq,
                    input: hidden,
                    hidden,
                    layers: 1,
                    bidirectional: false,
                    mode,
                });
            }
        }
    }
    (cases, note)
}

/// Statistics of the timed repetitions of one case on one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Repetitions actually timed.
    pub reps: usize,
    /// [`BenchCase::flops`] / median time.
    pub gflops: f64,
    /// How `median_ms`, `min_ms` and `mean_ms` were taken: `"timestamp"` (GPU time of the
    /// kernels' compute passes, from timestamp queries) or `"wall"` (host clock, ending after a
    /// device sync on the GPU).
    pub timer: &'static str,
    /// Median host wall time of the same repetitions (ending after a device sync on the GPU):
    /// `median_ms` when `timer` is `"wall"`.
    pub wall_median_ms: f64,
}

/// The median of `times` (sorted in place).
fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    }
}

impl Timing {
    /// Statistics of `wall` times and, when every repetition had one, `device` times (ms).
    fn new(mut wall: Vec<f64>, device: Option<Vec<f64>>, flops: f64) -> Self {
        let wall_median_ms = median(&mut wall);
        let (mut times, timer) = match device {
            Some(device) => (device, "timestamp"),
            None => (wall, "wall"),
        };
        let median_ms = median(&mut times);
        Timing {
            median_ms,
            min_ms: times[0],
            mean_ms: times.iter().sum::<f64>() / times.len() as f64,
            reps: times.len(),
            gflops: flops / (median_ms * 1e-3) / 1e9,
            timer,
            wall_median_ms,
        }
    }
}

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    pub case: BenchCase,
    pub cpu: Option<Timing>,
    pub gpu: Option<Timing>,
    /// Largest ‖GPU − CPU‖/‖CPU‖ over the outputs (and, for forward+backward, every gradient)
    /// on the same inputs; None when the GPU did not run.
    pub max_rel_err: Option<f64>,
    /// Whether the GPU forward read W_hh in f16.
    pub half_recurrent_weights: bool,
}

impl BenchResult {
    /// CPU wall median / GPU wall median, when both ran.
    pub fn speedup(&self) -> Option<f64> {
        Some(self.cpu.as_ref()?.wall_median_ms / self.gpu.as_ref()?.wall_median_ms)
    }

    /// [`AGREEMENT_TOLERANCE`], or [`HALF_WEIGHTS_TOLERANCE`] for an f16 W_hh forward.
    pub fn tolerance(&self) -> f64 {
        if self.half_recurrent_weights {
            HALF_WEIGHTS_TOLERANCE
        } else {
            AGREEMENT_TOLERANCE
        }
    }

    /// Whether the GPU disagreed with the CPU beyond [`BenchResult::tolerance`].
    pub fn mismatch(&self) -> bool {
        self.max_rel_err
            .is_some_and(|e| e.is_nan() || e > self.tolerance())
    }
}

/// A finished sweep with what is needed to reproduce it.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub results: Vec<BenchResult>,
    /// GPU adapter name and wgpu backend (e.g. `Vulkan`), when the GPU ran.
    pub adapter: Option<(String, String)>,
    /// CPU model and thread count, for the CPU records.
    pub cpu_name: String,
    pub warmup: usize,
    /// `git rev-parse HEAD` at run time, or `unknown`.
    pub git_commit: String,
}

impl BenchReport {
    /// The results that failed the agreement check.
    pub fn mismatches(&self) -> Vec<&BenchResult> {
        self.results.iter().filter(|r| r.mismatch()).collect()
    }

    /// A text table: per case, CPU and GPU median/min ms and GFLOP/s, GPU/CPU speedup and the
    /// agreement check, under a header naming the adapter, CPU and timer.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if let Some((name, backend)) = &self.adapter {
            let timestamps = self
                .results
                .iter()
                .filter_map(|r| r.gpu.as_ref())
                .all(|t| t.timer == "timestamp");
            let timer = if timestamps {
                "GPU time of the kernels' compute passes (timestamp queries)"
            } else {
                "wall time to a device sync"
            };
            out += &format!(
                "GPU: {name} ({backend}); {timer}; `GPU wall`: wall time to a device sync; inputs \
                 already on the GPU, results left there; GPU/CPU from wall times\n"
            );
            if self.results.iter().any(|r| r.half_recurrent_weights) {
                out += "GPU forward cases read W_hh in f16 (rel err checked against \
                        HALF_WEIGHTS_TOLERANCE); forward+backward in f32\n";
            }
        }
        out += &format!("CPU: {}\n", self.cpu_name);
        let label_width = self
            .results
            .iter()
            .map(|r| r.case.label().len())
            .max()
            .unwrap_or(4)
            .max(4);
        out += &format!(
            "{:<label_width$} | {:>10} {:>10} {:>8} | {:>10} {:>10} {:>8} {:>10} | {:>8} | {:>8}\n",
            "case",
            "CPU med ms",
            "CPU min",
            "GFLOP/s",
            "GPU med ms",
            "GPU min",
            "GFLOP/s",
            "GPU wall",
            "GPU/CPU",
            "rel err"
        );
        out += &format!("{}\n", "-".repeat(label_width + 98));
        let timing_cells = |t: &Option<Timing>| match t {
            Some(t) => format!(
                "{:>10.3} {:>10.3} {:>8}",
                t.median_ms,
                t.min_ms,
                two_digits(t.gflops)
            ),
            None => format!("{:>10} {:>10} {:>8}", "-", "-", "-"),
        };
        for r in &self.results {
            let speedup = r
                .speedup()
                .map_or_else(|| "-".to_string(), |s| two_digits(s) + "x");
            let err = match r.max_rel_err {
                Some(e) if r.mismatch() => format!("{e:.1e} MISMATCH"),
                Some(e) => format!("{e:.1e}"),
                None => "-".to_string(),
            };
            let gpu_wall = r
                .gpu
                .as_ref()
                .map_or_else(|| "-".to_string(), |t| format!("{:.3}", t.wall_median_ms));
            out += &format!(
                "{:<label_width$} | {} | {} {:>10} | {:>8} | {:>8}\n",
                r.case.label(),
                timing_cells(&r.cpu),
                timing_cells(&r.gpu),
                gpu_wall,
                speedup,
                err
            );
        }
        out
    }

    /// One JSON record per case and backend, in the schema of `benches/torch_baseline.py`.
    pub fn records(&self) -> Vec<Value> {
        let (gpu_name, gpu_backend) = self.adapter.clone().unwrap_or_default();
        let mut records = Vec::new();
        for r in &self.results {
            let c = &r.case;
            let runs = [
                ("cpu", &r.cpu, self.cpu_name.as_str(), "cpu"),
                ("gpu", &r.gpu, gpu_name.as_str(), gpu_backend.as_str()),
            ];
            for (backend, timing, adapter, adapter_backend) in runs {
                let Some(t) = timing else { continue };
                let half = backend == "gpu" && r.half_recurrent_weights;
                let recurrent_weights = if half { "f16" } else { "f32" };
                records.push(json!({
                    "lib": "wgpu-rnn",
                    "version": env!("CARGO_PKG_VERSION"),
                    "backend": backend,
                    "adapter": adapter,
                    "adapter_backend": adapter_backend,
                    "cell": cell_name(c.cell),
                    "B": c.batch,
                    "T": c.seq,
                    "I": c.input,
                    "H": c.hidden,
                    "layers": c.layers,
                    "bidirectional": c.bidirectional,
                    "mode": c.mode.name(),
                    "ms_median": t.median_ms,
                    "ms_min": t.min_ms,
                    "ms_mean": t.mean_ms,
                    "reps": t.reps,
                    "warmup": self.warmup,
                    "gflops": t.gflops,
                    "timer": t.timer,
                    "ms_wall_median": t.wall_median_ms,
                    "includes_transfers": false,
                    "recurrent_weights": recurrent_weights,
                    "max_rel_err": r.max_rel_err,
                    "git_commit": self.git_commit,
                }));
            }
        }
        records
    }

    /// Writes [`BenchReport::records`] as a pretty-printed JSON array.
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(&Value::Array(self.records()))
            .map_err(|e| RnnError::io(path, std::io::Error::other(e)))?;
        wgpu_rnn::tensorfile::write_atomic(path, (text + "\n").as_bytes())
    }

    /// Writes a PNG bar chart: median ms of CPU and GPU per case, log scale.
    pub fn plot(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        wgpu_rnn::tensorfile::save_atomic(path, |tmp| {
            plot::bars(self, tmp).map_err(|e| RnnError::io(path, std::io::Error::other(e)))
        })
    }
}

/// Runs every case on the chosen backends. `ctx` is needed when the backend includes the GPU.
pub fn run_sweep(
    ctx: Option<Arc<GpuContext>>,
    cases: &[BenchCase],
    opts: &BenchOptions,
) -> Result<BenchReport> {
    if opts.reps == 0 {
        return Err(RnnError::Config("bench reps must be at least 1".into()));
    }
    let gpu = match (opts.backend.runs_gpu(), ctx) {
        (true, Some(ctx)) => Some(ctx),
        (true, None) => {
            return Err(RnnError::Config(
                "the GPU backend was asked for but no GPU context was given".into(),
            ))
        }
        (false, _) => None,
    };
    for case in cases {
        case.check(gpu.as_deref())?;
    }
    let bar = progress_bar(cases.len(), opts.progress);
    let mut results = Vec::with_capacity(cases.len());
    for (index, case) in cases.iter().enumerate() {
        bar.set_message(case.label());
        let result = run_case(gpu.as_ref(), case, opts, index as u64);
        bar.inc(1);
        results.push(result.map_err(|e| match e {
            RnnError::Device(msg) => RnnError::Device(format!("bench `{}`: {msg}", case.label())),
            other => other,
        })?);
    }
    bar.finish_and_clear();
    Ok(BenchReport {
        results,
        adapter: gpu.map(|ctx| {
            let info = ctx.adapter_info();
            (info.name.clone(), format!("{:?}", info.backend))
        }),
        cpu_name: cpu_name(),
        warmup: opts.warmup,
        git_commit: git_commit(),
    })
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed}] {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Seeded parameters and [`INPUT_SETS`] input sets of one case.
struct CaseData {
    params: RnnParams<f32>,
    sets: Vec<InputSet>,
}

/// Inputs, initial states and upstream gradients, all seeded random (never zeros).
struct InputSet {
    /// (T, B, I)
    input: Array3<f32>,
    /// (L·D, B, H)
    h0: Array3<f32>,
    /// (L·D, B, H), LSTM only
    c0: Option<Array3<f32>>,
    /// (T, B, D·H)
    grad_output: Array3<f32>,
    /// (L·D, B, H)
    grad_h_n: Array3<f32>,
    /// (L·D, B, H), LSTM only
    grad_c_n: Option<Array3<f32>>,
}

impl InputSet {
    fn batch(&self) -> SequenceBatch<'_, f32> {
        let batch = SequenceBatch::new(self.input.view()).h0(self.h0.view());
        match &self.c0 {
            Some(c0) => batch.c0(c0.view()),
            None => batch,
        }
    }

    fn upstream(&self) -> UpstreamGrads<'_, f32> {
        let grads = UpstreamGrads::new(self.grad_output.view()).h_n(self.grad_h_n.view());
        match &self.grad_c_n {
            Some(c_n) => grads.c_n(c_n.view()),
            None => grads,
        }
    }
}

impl CaseData {
    fn new(case: &BenchCase, seed: u64) -> Result<Self> {
        let config = case.config();
        let params = RnnParams::init(&config, seed)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_ba7c);
        let mut random = |shape: (usize, usize, usize)| {
            Array3::from_shape_simple_fn(shape, || rng.random_range(-1.0f32..1.0))
        };
        let states = (
            case.layers * config.num_directions(),
            case.batch,
            case.hidden,
        );
        let lstm = config.cell.has_cell_state();
        let sets = (0..INPUT_SETS)
            .map(|_| InputSet {
                input: random((case.seq, case.batch, case.input)),
                h0: random(states),
                c0: lstm.then(|| random(states)),
                grad_output: random((case.seq, case.batch, config.output_size())),
                grad_h_n: random(states),
                grad_c_n: lstm.then(|| random(states)),
            })
            .collect();
        Ok(CaseData { params, sets })
    }
}

/// What one run of a case produced, for the agreement check.
struct RunOutputs {
    forward: ForwardOutput<f32>,
    grads: Option<Gradients<f32>>,
}

fn cpu_run(data: &CaseData, set: &InputSet, mode: Mode) -> Result<RunOutputs> {
    let batch = set.batch();
    match mode {
        Mode::Forward => Ok(RunOutputs {
            forward: cpu::forward(&data.params, &batch)?,
            grads: None,
        }),
        Mode::ForwardBackward => {
            let (forward, tape) = cpu::forward_train(&data.params, &batch)?;
            let grads = cpu::backward(&data.params, &tape, &set.upstream())?;
            Ok(RunOutputs {
                forward,
                grads: Some(grads),
            })
        }
    }
}

fn gpu_run(model: &GpuRnn, set: &InputSet, mode: Mode) -> Result<RunOutputs> {
    let batch = set.batch();
    Ok(match mode {
        Mode::Forward => RunOutputs {
            forward: model.forward(&batch)?,
            grads: None,
        },
        Mode::ForwardBackward => {
            let (forward, tape) = model.forward_train(&batch)?;
            let grads = model.backward(&tape, &set.upstream())?;
            RunOutputs {
                forward,
                grads: Some(grads),
            }
        }
    })
}

/// An [`InputSet`] uploaded once, so that GPU timings exclude host transfers.
struct GpuInputSet {
    input: GpuTensor,
    h0: GpuTensor,
    c0: Option<GpuTensor>,
    grad_output: GpuTensor,
    grad_h_n: GpuTensor,
    grad_c_n: Option<GpuTensor>,
}

impl GpuInputSet {
    fn upload(ctx: &GpuContext, set: &InputSet) -> Result<Self> {
        let up =
            |name: &str, a: &Array3<f32>| GpuTensor::from_array(ctx, name, a.view().into_dyn());
        Ok(GpuInputSet {
            input: up("input", &set.input)?,
            h0: up("h0", &set.h0)?,
            c0: set.c0.as_ref().map(|c0| up("c0", c0)).transpose()?,
            grad_output: up("grad_output", &set.grad_output)?,
            grad_h_n: up("grad_h_n", &set.grad_h_n)?,
            grad_c_n: set
                .grad_c_n
                .as_ref()
                .map(|g| up("grad_c_n", g))
                .transpose()?,
        })
    }

    /// One timed GPU repetition: results stay on the GPU; ends when the device is idle. Pass
    /// timing is on during it where the device has timestamp queries
    /// ([`GpuContext::stop_pass_timing`] reads it, outside the wall time).
    fn run(&self, ctx: &GpuContext, model: &GpuRnn, mode: Mode) -> Result<()> {
        ctx.start_pass_timing();
        let mut batch = GpuSequenceBatch::new(&self.input).h0(&self.h0);
        if let Some(c0) = &self.c0 {
            batch = batch.c0(c0);
        }
        match mode {
            Mode::Forward => drop(model.forward_gpu(&batch)?),
            Mode::ForwardBackward => {
                let (_, tape) = model.forward_train_gpu(&batch)?;
                let mut upstream = GpuUpstreamGrads::new(&self.grad_output).h_n(&self.grad_h_n);
                if let Some(c_n) = &self.grad_c_n {
                    upstream = upstream.c_n(c_n);
                }
                drop(model.backward_gpu(&tape, &upstream)?);
            }
        }
        ctx.sync()
    }
}

fn run_case(
    ctx: Option<&Arc<GpuContext>>,
    case: &BenchCase,
    opts: &BenchOptions,
    seed: u64,
) -> Result<BenchResult> {
    let data = CaseData::new(case, seed)?;
    let flops = case.flops();
    let cpu = if opts.backend.runs_cpu() {
        Some(time_reps(
            opts,
            flops,
            |i| cpu_run(&data, &data.sets[i % INPUT_SETS], case.mode).map(drop),
            || Ok(None),
        )?)
    } else {
        None
    };
    let half = opts.half_recurrent_weights && case.mode == Mode::Forward;
    let (gpu, max_rel_err) = match ctx {
        Some(ctx) => {
            let model = GpuRnn::new(Arc::clone(ctx), &data.params)?.half_recurrent_weights(half)?;
            let reference = cpu_run(&data, &data.sets[0], case.mode)?;
            let got = gpu_run(&model, &data.sets[0], case.mode)?;
            let err = max_rel_err(&reference, &got);
            let sets = data
                .sets
                .iter()
                .map(|set| GpuInputSet::upload(ctx, set))
                .collect::<Result<Vec<_>>>()?;
            let timing = time_reps(
                opts,
                flops,
                |i| sets[i % INPUT_SETS].run(ctx, &model, case.mode),
                || ctx.stop_pass_timing(),
            )?;
            (Some(timing), Some(err))
        }
        None => (None, None),
    };
    Ok(BenchResult {
        case: case.clone(),
        cpu,
        gpu,
        max_rel_err,
        half_recurrent_weights: half && ctx.is_some(),
    })
}

/// Runs `run(i)` for warmup and then for timed repetitions, each within [`TIME_BUDGET_S`];
/// after each, outside its wall time, `device_ms` gives the repetition's device time (ms)
/// when there is one.
fn time_reps(
    opts: &BenchOptions,
    flops: f64,
    mut run: impl FnMut(usize) -> Result<()>,
    mut device_ms: impl FnMut() -> Result<Option<f64>>,
) -> Result<Timing> {
    let warmup_start = Instant::now();
    for i in 0..opts.warmup {
        if warmup_start.elapsed().as_secs_f64() > TIME_BUDGET_S {
            break;
        }
        run(i)?;
        device_ms()?;
    }
    let mut wall = Vec::with_capacity(opts.reps);
    let mut device = Vec::with_capacity(opts.reps);
    let mut spent = 0.0;
    for i in 0..opts.reps {
        if spent > TIME_BUDGET_S {
            break;
        }
        let start = Instant::now();
        run(opts.warmup + i)?;
        let seconds = start.elapsed().as_secs_f64();
        spent += seconds;
        wall.push(seconds * 1e3);
        device.extend(device_ms()?);
    }
    let device = (device.len() == wall.len()).then_some(device);
    Ok(Timing::new(wall, device, flops))
}

/// The largest relative error over every output and gradient tensor the two runs share.
fn max_rel_err(reference: &RunOutputs, got: &RunOutputs) -> f64 {
    let (r, g) = (&reference.forward, &got.forward);
    let mut errs = vec![
        relative_error(g.output.view(), r.output.view()),
        relative_error(g.h_n.view(), r.h_n.view()),
    ];
    if let (Some(rc), Some(gc)) = (&r.c_n, &g.c_n) {
        errs.push(relative_error(gc.view(), rc.view()));
    }
    if let (Some(r), Some(g)) = (&reference.grads, &got.grads) {
        errs.push(relative_error(g.input.view(), r.input.view()));
        errs.push(relative_error(g.h0.view(), r.h0.view()));
        if let (Some(rc), Some(gc)) = (&r.c0, &g.c0) {
            errs.push(relative_error(gc.view(), rc.view()));
        }
        for ((_, rp), (_, gp)) in r.params.named().into_iter().zip(g.params.named()) {
            errs.push(relative_error(gp.view(), rp.view()));
        }
    }
    errs.into_iter().fold(0.0, |worst, e| {
        if e.is_nan() || worst.is_nan() {
            f64::NAN
        } else {
            worst.max(e)
        }
    })
}

/// `v` with about two significant digits: 1234, 12.3, 1.2, 0.012.
fn two_digits(v: f64) -> String {
    if v >= 100.0 || v == 0.0 || !v.is_finite() {
        format!("{v:.0}")
    } else {
        let decimals = (1.0 - v.log10().floor()).max(1.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// CPU model name, from /proc/cpuinfo where available, and the CPU path's thread count.
fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = cpu::num_threads().map_or_else(|e| e.to_string(), |n| n.to_string());
    format!("{model} ({threads} threads)")
}

/// `git rev-parse HEAD` in the current directory, or `unknown`.
fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

mod plot {
    //! The bar chart of [`BenchReport::plot`].

    use super::BenchReport;
    use crate::report::{register_font, FONT};
    use plotters::prelude::*;
    use std::path::Path;

    const CPU_COLOR: RGBColor = RGBColor(70, 110, 190);
    const GPU_COLOR: RGBColor = RGBColor(230, 120, 40);

    pub(super) fn bars(report: &BenchReport, path: &Path) -> Result<(), String> {
        register_font()?;
        let medians: Vec<(String, Option<f64>, Option<f64>)> = report
            .results
            .iter()
            .map(|r| {
                (
                    r.case.label(),
                    r.cpu.as_ref().map(|t| t.median_ms),
                    r.gpu.as_ref().map(|t| t.median_ms),
                )
            })
            .collect();
        let all: Vec<f64> = medians
            .iter()
            .flat_map(|(_, c, g)| [*c, *g])
            .flatten()
            .filter(|v| *v > 0.0)
            .collect();
        if all.is_empty() {
            return Err("no timings to plot".into());
        }
        let low = all.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
        let high = all.iter().copied().fold(0.0, f64::max) * 2.0;
        let n = medians.len();
        let width = (160 + 70 * n as u32).max(800);
        let root = BitMapBackend::new(path, (width, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = match &report.adapter {
            Some((name, backend)) => format!("wgpu-rnn: CPU vs GPU ({name}, {backend})"),
            None => "wgpu-rnn: CPU".to_string(),
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 22))
            .margin(15)
            .x_label_area_size(250)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..n as f64, (low..high).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_style((FONT, 14))
            .y_label_formatter(&|ms| match *ms {
                ms if ms >= 100.0 => format!("{ms:.0}"),
                ms if ms >= 1.0 => format!("{ms:.1}"),
                ms => format!("{ms:.3}"),
            })
            .y_desc("median ms (log scale)")
            .axis_desc_style((FONT, 15))
            .draw()
            .map_err(|e| e.to_string())?;
        for (color, name, is_gpu) in [(CPU_COLOR, "CPU", false), (GPU_COLOR, "GPU", true)] {
            let bars = medians.iter().enumerate().filter_map(|(i, (_, cpu, gpu))| {
                let value = if is_gpu { *gpu } else { *cpu }?;
                let left = i as f64 + if is_gpu { 0.5 } else { 0.1 };
                Some(Rectangle::new(
                    [(left, low), (left + 0.4, value)],
                    color.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        // Case names below the axis, written downwards under each pair of bars.
        let label_style =
            TextStyle::from((FONT, 13).into_font()).transform(FontTransform::Rotate90);
        for (i, (label, _, _)) in medians.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, low));
            root.draw(&Text::new(
                label.clone(),
                (x + 7, y + 8),
                label_style.clone(),
            ))
            .map_err(|e| e.to_string())?;
        }
        // GPU/CPU speedup above each pair that has both.
        let speedups = report.results.iter().enumerate().filter_map(|(i, r)| {
            let top = r.cpu.as_ref()?.median_ms.max(r.gpu.as_ref()?.median_ms);
            Some(Text::new(
                super::two_digits(r.speedup()?) + "x",
                (i as f64 + 0.2, top * 1.25),
                (FONT, 12).into_font(),
            ))
        });
        chart.draw_series(speedups).map_err(|e| e.to_string())?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_case(cell: CellKind, mode: Mode) -> BenchCase {
        BenchCase {
            cell,
            batch: 3,
            seq: 5,
            input: 7,
            hidden: 9,
            layers: 2,
            bidirectional: true,
            mode,
        }
    }

    #[test]
    fn flops_follow_the_documented_formula() {
        let case = tiny_case(CellKind::Lstm, Mode::Forward);
        // Layer 0: 2 dirs · 2·T·B·4H·(I+H); layer 1 input is 2H.
        let layer0 = 2.0 * 2.0 * 15.0 * 36.0 * (7.0 + 9.0);
        let layer1 = 2.0 * 2.0 * 15.0 * 36.0 * (18.0 + 9.0);
        assert_eq!(case.flops(), layer0 + layer1);
        let train = tiny_case(CellKind::Lstm, Mode::ForwardBackward);
        assert_eq!(train.flops(), 3.0 * case.flops());
    }

    #[test]
    fn default_sweeps_cover_every_cell_and_mode() {
        for gpu_is_cpu in [false, true] {
            let (cases, note) = default_sweep(gpu_is_cpu);
            assert_eq!(note.is_some(), gpu_is_cpu);
            assert_eq!(cases.len(), 3 * 4 * 2);
            for cell in ["rnn_tanh", "lstm", "gru"] {
                for mode in [Mode::Forward, Mode::ForwardBackward] {
                    assert!(cases
                        .iter()
                        .any(|c| cell_name(c.cell) == cell && c.mode == mode));
                }
            }
        }
        let (gpu_cases, _) = default_sweep(false);
        assert!(gpu_cases
            .iter()
            .any(|c| c.cell == CellKind::Lstm && c.batch == 64 && c.hidden == 1024));
    }

    #[test]
    fn cpu_sweep_reports_and_round_trips_through_json() {
        let cases = [
            tiny_case(CellKind::Gru, Mode::Forward),
            tiny_case(CellKind::Lstm, Mode::ForwardBackward),
        ];
        let opts = BenchOptions {
            backend: Backend::Cpu,
            reps: 3,
            warmup: 1,
            progress: false,
            half_recurrent_weights: false,
        };
        let report = run_sweep(None, &cases, &opts).expect("CPU sweep");
        assert_eq!(report.results.len(), 2);
        for r in &report.results {
            let cpu = r.cpu.as_ref().expect("CPU timing");
            assert_eq!(cpu.reps, 3);
            assert!(cpu.min_ms > 0.0 && cpu.min_ms <= cpu.median_ms && cpu.gflops > 0.0);
            assert!(r.gpu.is_none() && r.max_rel_err.is_none());
        }
        let table = report.table();
        assert!(table.contains("gru B=3 T=5 I=7 H=9 L=2 bi fwd"), "{table}");

        let dir = std::env::temp_dir().join(format!("wgpu-rnn-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.json");
        report.write_json(&path).unwrap();
        let parsed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let records = report.records();
        assert_eq!(parsed.as_array().map(Vec::len), Some(records.len()));
        for (read, written) in parsed.as_array().unwrap().iter().zip(&records) {
            let (read, written) = (read.as_object().unwrap(), written.as_object().unwrap());
            assert_eq!(read.len(), written.len());
            for (key, value) in written {
                // serde_json's float parsing may differ in the last bit.
                let same = match (value.as_f64(), read[key].as_f64()) {
                    (Some(w), Some(r)) => (w - r).abs() <= 1e-12 * w.abs(),
                    _ => *value == read[key],
                };
                assert!(same, "`{key}`: wrote {value}, read {}", read[key]);
            }
        }
        let first = &parsed[0];
        assert_eq!(first["lib"], "wgpu-rnn");
        assert_eq!(first["backend"], "cpu");
        assert_eq!(first["cell"], "gru");
        assert_eq!(first["mode"], "fwd");
        assert_eq!(
            (first["B"].clone(), first["H"].clone()),
            (json!(3), json!(9))
        );
        assert_eq!(parsed[1]["mode"], "fwdbwd");

        let png = dir.join("bench.png");
        report.plot(&png).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gpu_sweep_agrees_with_cpu_and_reports_the_adapter() {
        let ctx = match GpuContext::new() {
            Ok(ctx) => Arc::new(ctx),
            Err(e) if std::env::var("WGPU_RNN_REQUIRE_GPU").as_deref() == Ok("1") => {
                panic!("WGPU_RNN_REQUIRE_GPU=1 but no GPU context: {e}")
            }
            Err(e) => {
                eprintln!("skipping: no GPU context: {e}");
                return;
            }
        };
        let mut case = tiny_case(CellKind::Lstm, Mode::ForwardBackward);
        (case.layers, case.seq) = (1, 3);
        let opts = BenchOptions {
            backend: Backend::Both,
            reps: 2,
            warmup: 0,
            progress: false,
            half_recurrent_weights: false,
        };
        let report = run_sweep(Some(Arc::clone(&ctx)), &[case], &opts).expect("GPU sweep");
        let result = &report.results[0];
        let err = result.max_rel_err.expect("agreement checked");
        assert!(err < AGREEMENT_TOLERANCE, "GPU vs CPU rel err {err}");
        assert!(result
            .gpu
            .as_ref()
            .is_some_and(|t| t.reps == 2 && t.min_ms > 0.0));
        assert!(result.speedup().is_some());
        let (name, _) = report.adapter.as_ref().expect("adapter named");
        assert_eq!(name, &ctx.adapter_info().name);
        let gpu_record = &report.records()[1];
        assert_eq!(gpu_record["backend"], "gpu");
        assert_eq!(gpu_record["includes_transfers"], false);
    }

    #[test]
    fn agreement_check_sees_a_perturbed_or_nan_output() {
        let case = tiny_case(CellKind::Gru, Mode::ForwardBackward);
        let data = CaseData::new(&case, 3).unwrap();
        let reference = cpu_run(&data, &data.sets[0], case.mode).unwrap();
        let mut got = cpu_run(&data, &data.sets[0], case.mode).unwrap();
        assert_eq!(max_rel_err(&reference, &got), 0.0);
        // 1% off in one parameter gradient only.
        let w = &mut got.grads.as_mut().unwrap().params.layers[3].w_hh;
        *w *= 1.01;
        let err = max_rel_err(&reference, &got);
        assert!((err - 0.01).abs() < 1e-6, "rel err {err}");
        got.forward.output[[4, 2, 17]] = f32::NAN;
        let result = BenchResult {
            case,
            cpu: None,
            gpu: None,
            max_rel_err: Some(max_rel_err(&reference, &got)),
            half_recurrent_weights: false,
        };
        assert!(result.mismatch());
    }

    #[test]
    fn gpu_backend_without_context_is_an_error() {
        let opts = BenchOptions {
            backend: Backend::Gpu,
            ..BenchOptions::default()
        };
        let err = run_sweep(None, &[tiny_case(CellKind::Gru, Mode::Forward)], &opts).unwrap_err();
        assert!(err.to_string().contains("no GPU context"), "{err}");
    }
}
