//! `wgpu_rnn._native`: the Rust half of the `wgpu_rnn` Python package.
//!
//! A thin layer over the wgpu-rnn library: a [`Model`] (parameters in torch's layout, run on a
//! GPU adapter or the CPU reference), the [`Tape`] of a training forward, and a [`Stream`]. The
//! pure-Python package (`wgpu_rnn/__init__.py`) gives these torch's call conventions; here every
//! array is float32 and seq-major as the library takes it, the GIL is released around all
//! library work, library errors become Python exceptions and a panic becomes a RuntimeError.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use ndarray::{Array3, ArrayD, IxDyn};
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyMemoryError, PyNotImplementedError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use wgpu_rnn::gpu::{enumerate_adapters, GpuContext, GpuOptions, GpuRnn, GpuStream, GpuTape};
use wgpu_rnn::{
    cpu, CellKind, ForwardOutput, Gradients, RnnConfig, RnnError, RnnParams, SequenceBatch,
    UpstreamGrads,
};

/// The Python exception for a library error: OSError for files, RuntimeError for the device
/// (NotImplementedError, a RuntimeError, for what the library does not provide), MemoryError
/// for host memory that could not be allocated, ValueError for every shape, value or
/// configuration problem. The message is the library's.
fn to_py_err(error: RnnError) -> PyErr {
    let message = error.to_string();
    match error {
        RnnError::Io { .. } => PyOSError::new_err(message),
        RnnError::NoAdapter(_) | RnnError::Device(_) | RnnError::TooLarge(_) => {
            PyRuntimeError::new_err(message)
        }
        RnnError::Unsupported(_) => PyNotImplementedError::new_err(message),
        RnnError::Allocation { .. } => PyMemoryError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

/// Runs `work` with the GIL released; a panic inside it becomes a RuntimeError.
fn detached<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> wgpu_rnn::Result<T> + Send,
) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(work))) {
        Ok(result) => result.map_err(to_py_err),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(PyRuntimeError::new_err(format!(
                "wgpu-rnn internal error: {reason}"
            )))
        }
    }
}

/// Locks `mutex`, also after a panic in another holder (the state is replaced whole, never
/// left half-written).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One GPU context per device request, shared by every model that asks for the same one.
fn gpu_context(py: Python<'_>, adapter_name: Option<&str>) -> PyResult<Arc<GpuContext>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<String, Arc<GpuContext>>>> = OnceLock::new();
    let contexts = CONTEXTS.get_or_init(Default::default);
    let key = adapter_name.unwrap_or("").to_string();
    if let Some(ctx) = lock(contexts).get(&key) {
        return Ok(Arc::clone(ctx));
    }
    let opts = GpuOptions {
        adapter_name: adapter_name.map(str::to_string),
        ..GpuOptions::default()
    };
    let ctx = Arc::new(detached(py, || GpuContext::with_options(&opts))?);
    Ok(Arc::clone(lock(contexts).entry(key).or_insert(ctx)))
}

/// A copy of a numpy array as an owned 3-D array, or a ValueError naming `tensor`.
fn array3(tensor: &str, array: &PyReadonlyArrayDyn<'_, f32>) -> PyResult<Array3<f32>> {
    let shape = array.shape().to_vec();
    let &[a, b, c] = shape.as_slice() else {
        return Err(PyValueError::new_err(format!(
            "tensor `{tensor}` must have 3 dimensions, got shape {shape:?}"
        )));
    };
    let values = array.as_array().iter().copied().collect();
    Array3::from_shape_vec((a, b, c), values).map_err(|e| PyValueError::new_err(e.to_string()))
}

fn optional_array3(
    tensor: &str,
    array: Option<&PyReadonlyArrayDyn<'_, f32>>,
) -> PyResult<Option<Array3<f32>>> {
    array.map(|a| array3(tensor, a)).transpose()
}

/// Per-sequence lengths as the library takes them; a negative one is a ValueError.
fn lengths(values: Option<Vec<i64>>) -> PyResult<Option<Vec<usize>>> {
    values
        .map(|values| {
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    usize::try_from(v).map_err(|_| {
                        to_py_err(RnnError::Lengths(format!("lengths[{i}] = {v} is negative")))
                    })
                })
                .collect()
        })
        .transpose()
}

/// A numpy float32 array holding `array` (any dimension).
fn to_numpy<'py, D: ndarray::Dimension>(
    py: Python<'py>,
    array: ndarray::Array<f32, D>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = array.shape().to_vec();
    let values = array.as_standard_layout().iter().copied().collect();
    PyArray1::from_vec(py, values).reshape(shape)
}

type NumpyArray<'py> = Bound<'py, PyArrayDyn<f32>>;
type Outputs<'py> = (NumpyArray<'py>, NumpyArray<'py>, Option<NumpyArray<'py>>);

fn outputs<'py>(py: Python<'py>, out: ForwardOutput<f32>) -> PyResult<Outputs<'py>> {
    Ok((
        to_numpy(py, out.output)?,
        to_numpy(py, out.h_n)?,
        out.c_n.map(|c| to_numpy(py, c)).transpose()?,
    ))
}

/// Where a model runs.
enum Backend {
    /// The library's CPU reference.
    Cpu,
    Gpu(GpuRnn),
}

/// What a model's weights are now; `version` counts every replacement.
struct Weights {
    params: RnnParams<f32>,
    backend: Backend,
    version: u64,
}

/// The inputs of one forward call, owned so that the GIL can be released while they are used.
struct Inputs {
    input: Array3<f32>,
    h0: Option<Array3<f32>>,
    c0: Option<Array3<f32>>,
    lengths: Option<Vec<usize>>,
}

impl Inputs {
    fn new(
        input: PyReadonlyArrayDyn<'_, f32>,
        h0: Option<PyReadonlyArrayDyn<'_, f32>>,
        c0: Option<PyReadonlyArrayDyn<'_, f32>>,
        lengths_given: Option<Vec<i64>>,
    ) -> PyResult<Self> {
        Ok(Inputs {
            input: array3("input", &input)?,
            h0: optional_array3("h0", h0.as_ref())?,
            c0: optional_array3("c0", c0.as_ref())?,
            lengths: lengths(lengths_given)?,
        })
    }

    fn batch(&self) -> SequenceBatch<'_, f32> {
        SequenceBatch {
            input: self.input.view(),
            h0: self.h0.as_ref().map(|a| a.view()),
            c0: self.c0.as_ref().map(|a| a.view()),
            lengths: self.lengths.as_deref(),
        }
    }
}

/// A recurrent network: its configuration, its weights and where it runs.
#[pyclass(frozen, module = "wgpu_rnn._native")]
struct Model {
    config: RnnConfig,
    /// The adapter's name, or "cpu".
    device_name: String,
    weights: Mutex<Weights>,
}

#[pymethods]
impl Model {
    /// `cell`: rnn_tanh, rnn_relu, rnn_identity, lstm or gru; `device`: None for the default
    /// adapter, "cpu" for the CPU reference, else a substring of an adapter's name.
    #[new]
    #[pyo3(signature = (cell, input_size, hidden_size, num_layers, bias, batch_first,
                        bidirectional, dropout, device, seed))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        cell: &str,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        bias: bool,
        batch_first: bool,
        bidirectional: bool,
        dropout: f32,
        device: Option<&str>,
        seed: u64,
    ) -> PyResult<Self> {
        let config = RnnConfig::new(
            CellKind::parse(cell).map_err(to_py_err)?,
            input_size,
            hidden_size,
        )
        .layers(num_layers)
        .bias(bias)
        .batch_first(batch_first)
        .bidirectional(bidirectional)
        .dropout(dropout);
        let params = RnnParams::init(&config, seed).map_err(to_py_err)?;
        let (backend, device_name) = if device == Some("cpu") {
            (Backend::Cpu, "cpu".to_string())
        } else {
            let ctx = gpu_context(py, device)?;
            let name = ctx.adapter_info().name.clone();
            let gpu = detached(py, || GpuRnn::new(ctx, &params))?;
            (Backend::Gpu(gpu), name)
        };
        Ok(Model {
            config,
            device_name,
            weights: Mutex::new(Weights {
                params,
                backend,
                version: 0,
            }),
        })
    }

    /// The adapter's name, or "cpu".
    #[getter]
    fn device(&self) -> &str {
        &self.device_name
    }

    /// Counts the replacements of the weights (a tape records the version it was made with).
    #[getter]
    fn version(&self) -> u64 {
        lock(&self.weights).version
    }

    /// Inference: (output, h_n, c_n or None).
    #[pyo3(signature = (input, h0=None, c0=None, lengths=None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        input: PyReadonlyArrayDyn<'py, f32>,
        h0: Option<PyReadonlyArrayDyn<'py, f32>>,
        c0: Option<PyReadonlyArrayDyn<'py, f32>>,
        lengths: Option<Vec<i64>>,
    ) -> PyResult<Outputs<'py>> {
        let inputs = Inputs::new(input, h0, c0, lengths)?;
        let out = detached(py, || self.run_forward(&inputs.batch()))?;
        outputs(py, out)
    }

    /// For benchmarks: the wall seconds of each of `reps` library forward calls on `input`
    /// (for a GPU model: upload, GPU work, readback); no Python conversions. Set against a
    /// timed `forward`, it gives the Python layer's overhead.
    fn time_forward(
        &self,
        py: Python<'_>,
        input: PyReadonlyArrayDyn<'_, f32>,
        reps: usize,
    ) -> PyResult<Vec<f64>> {
        let input = array3("input", &input)?;
        detached(py, || {
            let batch = SequenceBatch::new(input.view());
            (0..reps)
                .map(|_| {
                    let start = Instant::now();
                    self.run_forward(&batch)?;
                    Ok(start.elapsed().as_secs_f64())
                })
                .collect()
        })
    }

    /// Training forward: (output, h_n, c_n or None, tape for backward).
    #[pyo3(signature = (input, h0=None, c0=None, lengths=None))]
    fn forward_train<'py>(
        slf: &Bound<'py, Self>,
        input: PyReadonlyArrayDyn<'py, f32>,
        h0: Option<PyReadonlyArrayDyn<'py, f32>>,
        c0: Option<PyReadonlyArrayDyn<'py, f32>>,
        lengths: Option<Vec<i64>>,
    ) -> PyResult<(
        NumpyArray<'py>,
        NumpyArray<'py>,
        Option<NumpyArray<'py>>,
        Tape,
    )> {
        let py = slf.py();
        let this = slf.get();
        let inputs = Inputs::new(input, h0, c0, lengths)?;
        let (out, recording, version) = detached(py, || {
            let weights = lock(&this.weights);
            let (out, recording) = match &weights.backend {
                Backend::Cpu => cpu::forward_train(&weights.params, &inputs.batch())
                    .map(|(out, tape)| (out, Recording::Cpu(tape)))?,
                Backend::Gpu(gpu) => gpu
                    .forward_train(&inputs.batch())
                    .map(|(out, tape)| (out, Recording::Gpu(Box::new(tape))))?,
            };
            Ok((out, recording, weights.version))
        })?;
        let tape = Tape {
            model: slf.clone().unbind(),
            version,
            recording,
        };
        let (output, h_n, c_n) = outputs(py, out)?;
        Ok((output, h_n, c_n, tape))
    }

    /// Every parameter as (torch name, array), in torch's state_dict order.
    fn named<'py>(&self, py: Python<'py>) -> PyResult<Vec<(String, NumpyArray<'py>)>> {
        let named = lock(&self.weights).params.named();
        named
            .into_iter()
            .map(|(name, array)| Ok((name, to_numpy(py, array)?)))
            .collect()
    }

    /// Replaces every parameter from a {torch name: array} mapping; a missing, extra or
    /// misshaped tensor is a ValueError naming it, and leaves the weights as they were.
    fn load_named(&self, py: Python<'_>, tensors: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut named = HashMap::new();
        for (name, array) in tensors.iter() {
            let name: String = name.extract()?;
            let array: PyReadonlyArrayDyn<'_, f32> = array.extract()?;
            let values = array.as_array().iter().copied().collect();
            let owned = ArrayD::from_shape_vec(IxDyn(array.shape()), values)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            named.insert(name, owned);
        }
        detached(py, || {
            let params = RnnParams::from_named(&self.config, &named)?;
            self.replace(params)
        })
    }

    /// Loads a torch state_dict saved as safetensors (f32 or f64).
    fn load(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        detached(py, || {
            let params = RnnParams::load_safetensors(&self.config, path)?;
            self.replace(params)
        })
    }

    /// Saves the parameters as a float32 safetensors state_dict.
    fn save(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        detached(py, || lock(&self.weights).params.save_safetensors(path))
    }

    /// Streaming inference over `batch_size` sequences, state starting at zero.
    fn stream(slf: &Bound<'_, Self>, batch_size: usize) -> PyResult<Stream> {
        let this = slf.get();
        let state = detached(slf.py(), || {
            let weights = lock(&this.weights);
            match &weights.backend {
                Backend::Gpu(gpu) => gpu.stream(batch_size).map(StreamState::Gpu),
                Backend::Cpu => CpuStream::new(&this.config, batch_size).map(StreamState::Cpu),
            }
        })?;
        Ok(Stream {
            model: slf.clone().unbind(),
            state: Mutex::new(state),
        })
    }
}

impl Model {
    /// Inference on the model's backend.
    fn run_forward(&self, batch: &SequenceBatch<'_, f32>) -> wgpu_rnn::Result<ForwardOutput<f32>> {
        let weights = lock(&self.weights);
        match &weights.backend {
            Backend::Cpu => cpu::forward(&weights.params, batch),
            Backend::Gpu(gpu) => gpu.forward(batch),
        }
    }

    /// Makes `params` the model's weights (on the GPU too) and counts a new version.
    fn replace(&self, params: RnnParams<f32>) -> wgpu_rnn::Result<()> {
        let mut weights = lock(&self.weights);
        if let Backend::Gpu(gpu) = &mut weights.backend {
            gpu.update_params(&params)?;
        }
        weights.params = params;
        weights.version += 1;
        Ok(())
    }
}

/// What a training forward kept for backward.
enum Recording {
    Cpu(cpu::Tape<f32>),
    Gpu(Box<GpuTape>),
}

/// The record of one training forward; `backward` may be called any number of times while the
/// model's weights are those of the forward call.
#[pyclass(frozen, module = "wgpu_rnn._native")]
struct Tape {
    model: Py<Model>,
    /// The model's weight version at the forward call.
    version: u64,
    recording: Recording,
}

type ParamGrads<'py> = Vec<(String, NumpyArray<'py>)>;

#[pymethods]
impl Tape {
    /// Gradients from the upstream ones: ([(torch name, grad)], grad input, grad h0, grad c0
    /// or None).
    #[pyo3(signature = (grad_output, grad_h_n=None, grad_c_n=None))]
    fn backward<'py>(
        &self,
        py: Python<'py>,
        grad_output: PyReadonlyArrayDyn<'py, f32>,
        grad_h_n: Option<PyReadonlyArrayDyn<'py, f32>>,
        grad_c_n: Option<PyReadonlyArrayDyn<'py, f32>>,
    ) -> PyResult<(
        ParamGrads<'py>,
        NumpyArray<'py>,
        NumpyArray<'py>,
        Option<NumpyArray<'py>>,
    )> {
        let output = array3("grad_output", &grad_output)?;
        let h_n = optional_array3("grad_h_n", grad_h_n.as_ref())?;
        let c_n = optional_array3("grad_c_n", grad_c_n.as_ref())?;
        let model = self.model.get();
        let grads: Gradients<f32> = detached(py, || {
            let upstream = UpstreamGrads {
                output: output.view(),
                h_n: h_n.as_ref().map(|a| a.view()),
                c_n: c_n.as_ref().map(|a| a.view()),
            };
            let weights = lock(&model.weights);
            if weights.version != self.version {
                return Err(RnnError::Config(format!(
                    "the weights changed since this forward call (version {} -> {}): \
                     run forward again before backward",
                    self.version, weights.version
                )));
            }
            match (&self.recording, &weights.backend) {
                (Recording::Cpu(tape), _) => cpu::backward(&weights.params, tape, &upstream),
                (Recording::Gpu(tape), Backend::Gpu(gpu)) => gpu.backward(tape, &upstream),
                (Recording::Gpu(_), Backend::Cpu) => Err(RnnError::Config(
                    "a GPU tape cannot run backward on a CPU model".into(),
                )),
            }
        })?;
        let params = grads
            .params
            .named()
            .into_iter()
            .map(|(name, g)| Ok((name, to_numpy(py, g)?)))
            .collect::<PyResult<_>>()?;
        Ok((
            params,
            to_numpy(py, grads.input)?,
            to_numpy(py, grads.h0)?,
            grads.c0.map(|c| to_numpy(py, c)).transpose()?,
        ))
    }
}

/// A stream on the CPU reference: the state between calls, the model's current weights.
struct CpuStream {
    batch_size: usize,
    /// (L, B, H)
    h: Array3<f32>,
    /// (L, B, H), LSTM only
    c: Option<Array3<f32>>,
}

impl CpuStream {
    fn new(config: &RnnConfig, batch_size: usize) -> wgpu_rnn::Result<Self> {
        if config.bidirectional {
            return Err(RnnError::Unsupported(
                "streaming needs the whole sequence for a bidirectional model".into(),
            ));
        }
        if batch_size == 0 {
            return Err(RnnError::Config(
                "stream batch size must be at least 1".into(),
            ));
        }
        let shape = (config.num_layers, batch_size, config.hidden_size);
        Ok(CpuStream {
            batch_size,
            h: Array3::zeros(shape),
            c: config.cell.has_cell_state().then(|| Array3::zeros(shape)),
        })
    }

    fn step(&mut self, params: &RnnParams<f32>, x: &Array3<f32>) -> wgpu_rnn::Result<Array3<f32>> {
        let config = &params.config;
        let (k, b, i) = x.dim();
        wgpu_rnn::error::check_shape(
            "stream input",
            &[k, self.batch_size, config.input_size],
            &[k, b, i],
        )?;
        // The stream is seq-major whatever the model's layout.
        let mut seq_major = params.clone();
        seq_major.config.batch_first = false;
        let batch = SequenceBatch {
            input: x.view(),
            h0: Some(self.h.view()),
            c0: self.c.as_ref().map(|c| c.view()),
            lengths: None,
        };
        let out = cpu::forward(&seq_major, &batch)?;
        self.h = out.h_n;
        self.c = out.c_n;
        Ok(out.output)
    }

    fn reset(&mut self) {
        self.h.fill(0.0);
        if let Some(c) = &mut self.c {
            c.fill(0.0);
        }
    }
}

enum StreamState {
    Cpu(CpuStream),
    Gpu(GpuStream),
}

/// Streaming inference: k time steps at a time, the state kept between calls (on the GPU for
/// a GPU model). Uses the model's current weights.
#[pyclass(frozen, module = "wgpu_rnn._native")]
struct Stream {
    model: Py<Model>,
    state: Mutex<StreamState>,
}

#[pymethods]
impl Stream {
    /// Runs `x` (k, B, I) from the current state; returns the outputs (k, B, H).
    fn step<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<NumpyArray<'py>> {
        let x = array3("stream input", &x)?;
        let model = self.model.get();
        let out = detached(py, || match &mut *lock(&self.state) {
            StreamState::Gpu(stream) => stream.step(x.view()),
            StreamState::Cpu(stream) => stream.step(&lock(&model.weights).params, &x),
        })?;
        to_numpy(py, out)
    }

    /// The current (h, c or None), each (L, B, H).
    fn state<'py>(&self, py: Python<'py>) -> PyResult<(NumpyArray<'py>, Option<NumpyArray<'py>>)> {
        let (h, c) = detached(py, || match &*lock(&self.state) {
            StreamState::Gpu(stream) => stream.state(),
            StreamState::Cpu(stream) => Ok((stream.h.clone(), stream.c.clone())),
        })?;
        Ok((to_numpy(py, h)?, c.map(|c| to_numpy(py, c)).transpose()?))
    }

    /// Sets the state back to zero.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        detached(py, || match &mut *lock(&self.state) {
            StreamState::Gpu(stream) => stream.reset(),
            StreamState::Cpu(stream) => {
                stream.reset();
                Ok(())
            }
        })
    }
}

/// Every adapter wgpu sees, as dicts: name, backend, device_type, driver, selected (whether
/// `device=None` picks it).
#[pyfunction]
fn adapters(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let summaries = detached(py, || enumerate_adapters(&GpuOptions::default()))?;
    summaries
        .into_iter()
        .map(|summary| {
            let info = &summary.info;
            let dict = PyDict::new(py);
            dict.set_item("name", &info.name)?;
            dict.set_item("backend", format!("{:?}", info.backend))?;
            dict.set_item("device_type", format!("{:?}", info.device_type))?;
            dict.set_item(
                "driver",
                format!("{} {}", info.driver, info.driver_info).trim(),
            )?;
            dict.set_item("selected", summary.selected)?;
            Ok(dict)
        })
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Tape>()?;
    m.add_class::<Stream>()?;
    m.add_function(wrap_pyfunction!(adapters, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
