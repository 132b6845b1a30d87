//! Adapter and device choice, the compute-pipeline cache and device error reporting.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::timer::PassTimer;
use crate::error::{Result, RnnError};

/// Optional features requested when the adapter offers them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::IMMEDIATES);

/// Features listed by `wgpu-rnn info`.
const REPORTED_FEATURES: [(wgpu::Features, &str); 6] = [
    (wgpu::Features::SUBGROUP, "SUBGROUP"),
    (wgpu::Features::SHADER_F16, "SHADER_F16"),
    (wgpu::Features::SHADER_F64, "SHADER_F64"),
    (wgpu::Features::TIMESTAMP_QUERY, "TIMESTAMP_QUERY"),
    (
        wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        "TIMESTAMP_QUERY_INSIDE_PASSES",
    ),
    (wgpu::Features::IMMEDIATES, "IMMEDIATES"),
];

/// How [`GpuContext::with_options`] picks an adapter.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to search; `None` reads `WGPU_BACKEND` (e.g. `vulkan`, `gl`), else all.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; `None` reads `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
    /// Preferred device type when several adapters match.
    pub power_preference: wgpu::PowerPreference,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            backends: None,
            adapter_name: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
        }
    }
}

impl GpuOptions {
    /// The backends to search: `backends`, else those `WGPU_BACKEND` names, else all. A
    /// `WGPU_BACKEND` that names no backend is an error, not an empty adapter list.
    fn backends(&self) -> Result<wgpu::Backends> {
        if let Some(backends) = self.backends {
            return Ok(backends);
        }
        match std::env::var("WGPU_BACKEND") {
            Ok(value) if !value.trim().is_empty() => {
                let backends = wgpu::Backends::from_comma_list(&value);
                if backends.is_empty() {
                    Err(RnnError::Config(format!(
                        "WGPU_BACKEND=`{value}` names no backend (expected a comma list of \
                         vulkan, metal, dx12, gl, webgpu)"
                    )))
                } else {
                    Ok(backends)
                }
            }
            _ => Ok(wgpu::Backends::all()),
        }
    }

    fn instance(&self) -> Result<wgpu::Instance> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = self.backends()?;
        Ok(wgpu::Instance::new(desc))
    }

    fn name_filter(&self) -> Option<String> {
        self.adapter_name
            .clone()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|name| !name.is_empty())
            .map(|name| name.to_lowercase())
    }

    /// Rank of an adapter under this preference; lower is better.
    fn rank(&self, info: &wgpu::AdapterInfo) -> (u8, u8) {
        use wgpu::DeviceType::*;
        let device_rank = match (self.power_preference, info.device_type) {
            (wgpu::PowerPreference::LowPower, IntegratedGpu) => 0,
            (wgpu::PowerPreference::LowPower, DiscreteGpu) => 1,
            (_, DiscreteGpu) => 0,
            (_, IntegratedGpu) => 1,
            (_, VirtualGpu) => 2,
            (_, Other) => 3,
            (_, Cpu) => 4,
        };
        // The GL backend lacks subgroups and timestamps: prefer native APIs for the same device.
        let backend_rank = u8::from(info.backend == wgpu::Backend::Gl);
        (device_rank, backend_rank)
    }

    /// Index of the adapter `GpuContext::with_options` would pick among `infos`.
    fn pick(&self, infos: &[wgpu::AdapterInfo]) -> Option<usize> {
        let filter = self.name_filter();
        infos
            .iter()
            .enumerate()
            .filter(|(_, info)| {
                filter
                    .as_ref()
                    .is_none_or(|f| info.name.to_lowercase().contains(f))
            })
            .min_by_key(|(_, info)| self.rank(info))
            .map(|(index, _)| index)
    }
}

/// One adapter as seen by [`enumerate_adapters`], for `wgpu-rnn info`.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Whether [`GpuContext::with_options`] with the same options picks this adapter.
    pub selected: bool,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = &self.info;
        let limits = &self.limits;
        let mark = if self.selected { "* " } else { "  " };
        writeln!(
            f,
            "{mark}{} ({:?}, {:?}) driver: {} {}",
            info.name, info.backend, info.device_type, info.driver, info.driver_info
        )?;
        writeln!(
            f,
            "    storage binding {} MiB, buffer {} MiB, {} storage buffers/stage",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_storage_buffers_per_shader_stage
        )?;
        writeln!(
            f,
            "    workgroup: {} KiB shared, {} invocations, {} groups/dim; subgroup {}..{}",
            limits.max_compute_workgroup_storage_size >> 10,
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroups_per_dimension,
            info.subgroup_min_size,
            info.subgroup_max_size
        )?;
        let names: Vec<&str> = REPORTED_FEATURES
            .iter()
            .filter(|(feature, _)| self.features.contains(*feature))
            .map(|(_, name)| *name)
            .collect();
        write!(f, "    features: {}", names.join(" "))
    }
}

/// Every adapter visible under `opts`; the one [`GpuContext::with_options`] would pick is marked.
pub fn enumerate_adapters(opts: &GpuOptions) -> Result<Vec<AdapterSummary>> {
    let instance = opts.instance()?;
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
    let picked = opts.pick(&infos);
    Ok(adapters
        .iter()
        .zip(infos)
        .enumerate()
        .map(|(index, (adapter, info))| AdapterSummary {
            info,
            limits: adapter.limits(),
            features: adapter.features(),
            selected: picked == Some(index),
        })
        .collect())
}

/// A compute pipeline: shader source, entry point and `override` constants.
///
/// Sources are identified by their address and length, so pass the `&'static str` of an
/// `include_str!` (one per shader file) rather than a string built at run time.
#[derive(Clone, Debug)]
pub struct PipelineKey {
    /// Kernel family, used in labels and error messages (e.g. `"lstm"`).
    pub label: &'static str,
    /// WGSL source, normally `include_str!("../../shaders/x.wgsl")`.
    pub source: &'static str,
    /// Compute entry point.
    pub entry: &'static str,
    /// Values of the shader's `override` declarations.
    pub constants: Vec<(&'static str, f64)>,
}

/// The bind group layout of a cached pipeline.
#[derive(Clone, PartialEq, Eq, Hash)]
enum LayoutKind {
    /// wgpu's automatic layout.
    Automatic,
    /// Binding 0: a uniform read at a dynamic offset; bindings 1..: storage buffers, `true`
    /// where read-only.
    DynamicUniform(Vec<bool>),
}

/// Whether wgpu adds its runtime checks (bounds clamps, loop bounds) to a shader module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ShaderChecks {
    /// wgpu's default: every index clamped where the backend does not bound it natively.
    Runtime,
    /// No checks added: only for kernels whose every array index is in range by construction
    /// (guarded by `if` or bounded by constants) and whose loops all terminate: the step and
    /// GEMM kernels, where a clamp costs an instruction per workgroup-memory read of the inner
    /// loops.
    ProvenInRange,
}

/// Shader modules are cached by source address, length and checks.
type ModuleKey = (usize, usize, ShaderChecks);

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    module: ModuleKey,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
    layout: LayoutKind,
}

impl CacheKey {
    fn new(key: &PipelineKey, layout: LayoutKind, checks: ShaderChecks) -> Self {
        CacheKey {
            layout,
            module: (key.source.as_ptr() as usize, key.source.len(), checks),
            entry: key.entry,
            constants: key
                .constants
                .iter()
                .map(|&(name, value)| (name, value.to_bits()))
                .collect(),
        }
    }
}

/// Counts of [`GpuContext::counters`]; subtract two readings to count what happened between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuCounters {
    pub buffers_created: u64,
    pub submits: u64,
    pub copies: u64,
}

impl std::ops::Sub for GpuCounters {
    type Output = GpuCounters;

    fn sub(self, earlier: GpuCounters) -> GpuCounters {
        GpuCounters {
            buffers_created: self.buffers_created - earlier.buffers_created,
            submits: self.submits - earlier.submits,
            copies: self.copies - earlier.copies,
        }
    }
}

/// Identifies a [`GpuContext`] among those of the process (shown in error messages).
pub type ContextId = u64;

/// Device errors recorded by the uncaptured-error handler, until taken.
type ErrorSink = Arc<Mutex<Vec<String>>>;

/// Bytes of unused pooled buffers kept before the pool frees them (see
/// [`GpuContext::release_unused_buffers`]).
const POOL_KEEP_BYTES: u64 = 512 << 20;

/// A wgpu device and queue with a pipeline cache, a buffer pool and a record of device errors.
///
/// `Send + Sync`; share it as `Arc<GpuContext>`.
pub struct GpuContext {
    id: ContextId,
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter_info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// Uncaptured device errors (validation, out of memory, device lost) since the last check.
    errors: ErrorSink,
    /// Workspace, uniform and staging buffers: one is free when the pool holds its only handle.
    pool: Mutex<Vec<Arc<wgpu::Buffer>>>,
    buffers_created: AtomicU64,
    submits: AtomicU64,
    copies: AtomicU64,
    modules: Mutex<HashMap<ModuleKey, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<CacheKey, Arc<wgpu::ComputePipeline>>>,
    /// Set while compute passes are timed ([`GpuContext::start_pass_timing`]).
    pass_timer: Mutex<Option<PassTimer>>,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_info.name)
            .field("backend", &self.adapter_info.backend)
            .finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Picks an adapter with [`GpuOptions::default`] (honours `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`).
    pub fn new() -> Result<Self> {
        Self::with_options(&GpuOptions::default())
    }

    /// Picks an adapter as `opts` says and opens a device with the adapter's own limits and
    /// those of SUBGROUP, SHADER_F16, TIMESTAMP_QUERY(_INSIDE_PASSES), IMMEDIATES it offers.
    pub fn with_options(opts: &GpuOptions) -> Result<Self> {
        let instance = opts.instance()?;
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
        let Some(index) = opts.pick(&infos) else {
            let seen: Vec<String> = infos
                .iter()
                .map(|i| format!("{} ({:?})", i.name, i.backend))
                .collect();
            return Err(RnnError::NoAdapter(format!(
                "name filter {:?}, backends {:?}; adapters seen: [{}]",
                opts.name_filter(),
                opts.backends,
                seen.join(", ")
            )));
        };
        let adapter = &adapters[index];
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgpu-rnn"),
            required_features: adapter.features() & WANTED_FEATURES,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            RnnError::Device(format!("request_device on {}: {e}", infos[index].name))
        })?;
        Self::from_device(infos[index].clone(), device, queue)
    }

    /// Wraps a device the application already has; the library uses its features and limits as
    /// they are. Installs an uncaptured-error handler on it (replacing any other).
    pub fn from_device(
        adapter_info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
    ) -> Result<Self> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&errors);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| {
            lock(&sink).push(error.to_string());
        }));
        let sink = Arc::clone(&errors);
        device.set_device_lost_callback(move |reason, message| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                lock(&sink).push(format!("device lost ({reason:?}): {message}"));
            }
        });
        let limits = device.limits();
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Ok(GpuContext {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            pool: Mutex::new(Vec::new()),
            buffers_created: AtomicU64::new(0),
            submits: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            device,
            queue,
            adapter_info,
            limits,
            errors,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pass_timer: Mutex::new(None),
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// This context's identity, which every tensor, tape and stream made on it carries.
    pub fn id(&self) -> ContextId {
        self.id
    }

    /// What the library has done on this context so far: buffers created (repeated calls of
    /// one shape reuse pooled buffers, so a steady loop adds none), command buffers submitted,
    /// and buffer-to-buffer copies recorded.
    pub fn counters(&self) -> GpuCounters {
        GpuCounters {
            buffers_created: self.buffers_created.load(Ordering::Relaxed),
            submits: self.submits.load(Ordering::Relaxed),
            copies: self.copies.load(Ordering::Relaxed),
        }
    }

    /// Submits one command buffer, counted in [`GpuContext::counters`].
    pub(crate) fn submit(&self, commands: wgpu::CommandBuffer) {
        self.submits.fetch_add(1, Ordering::Relaxed);
        self.queue.submit([commands]);
    }

    /// Counts `n` recorded buffer copies in [`GpuContext::counters`].
    pub(crate) fn count_copies(&self, n: usize) {
        self.copies.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Creates a buffer, counted in [`GpuContext::buffers_created`].
    pub(crate) fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    /// A free pooled buffer of exactly `size` bytes and `usage`, or a new one added to the pool.
    /// It is free again once every handle but the pool's is dropped; GPU work already submitted
    /// on it stays ordered before later work, so it can be handed out at once.
    pub(crate) fn pooled_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Arc<wgpu::Buffer> {
        let mut pool = lock(&self.pool);
        let is_free = |b: &Arc<wgpu::Buffer>| Arc::strong_count(b) == 1;
        if let Some(buffer) = pool
            .iter()
            .find(|b| is_free(b) && b.size() == size && b.usage() == usage)
        {
            return Arc::clone(buffer);
        }
        let free_bytes: u64 = pool.iter().filter(|b| is_free(b)).map(|b| b.size()).sum();
        if free_bytes > POOL_KEEP_BYTES {
            pool.retain(|b| !is_free(b));
        }
        let buffer = Arc::new(self.create_buffer(label, size, usage));
        pool.push(Arc::clone(&buffer));
        buffer
    }

    /// Frees the pooled buffers no tensor uses now (the pool also does so by itself once more
    /// than 512 MiB lie unused).
    pub fn release_unused_buffers(&self) {
        lock(&self.pool).retain(|b| Arc::strong_count(b) > 1);
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.adapter_info
    }

    /// The device's limits (the adapter's own when created by [`GpuContext::with_options`]).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.device.features()
    }

    /// Whether the adapter is a CPU implementation (lavapipe, llvmpipe).
    pub fn is_cpu(&self) -> bool {
        self.adapter_info.device_type == wgpu::DeviceType::Cpu
    }

    /// The cached compute pipeline for `key`, compiled on first use.
    ///
    /// Uses wgpu's automatic layout: take bind group layouts from
    /// `pipeline.get_bind_group_layout(group)`, and bind exactly the bindings the entry point
    /// uses (unused ones are not in the layout). Shader or pipeline errors are returned as
    /// [`RnnError::Device`] naming the kernel, and are not cached.
    pub fn pipeline(&self, key: &PipelineKey) -> Result<Arc<wgpu::ComputePipeline>> {
        self.cached_pipeline(key, LayoutKind::Automatic, ShaderChecks::Runtime)
    }

    /// Like [`GpuContext::pipeline`], from the same cache, with an explicit layout of group 0:
    /// binding 0 a uniform read at a dynamic offset, then one storage binding per entry of
    /// `storage_read_only` (`true` where read-only). Its layout is
    /// `pipeline.get_bind_group_layout(0)`.
    pub(crate) fn dynamic_uniform_pipeline(
        &self,
        key: &PipelineKey,
        storage_read_only: &[bool],
        checks: ShaderChecks,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        self.cached_pipeline(
            key,
            LayoutKind::DynamicUniform(storage_read_only.to_vec()),
            checks,
        )
    }

    fn cached_pipeline(
        &self,
        key: &PipelineKey,
        layout: LayoutKind,
        checks: ShaderChecks,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let cache_key = CacheKey::new(key, layout, checks);
        if let Some(pipeline) = lock(&self.pipelines).get(&cache_key) {
            return Ok(Arc::clone(pipeline));
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.module(key, cache_key.module);
        let pipeline_layout = match &cache_key.layout {
            LayoutKind::Automatic => None,
            LayoutKind::DynamicUniform(read_only) => {
                Some(self.dynamic_uniform_layout(key.label, read_only))
            }
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key.label),
                layout: pipeline_layout.as_ref(),
                module: &module,
                entry_point: Some(key.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &key.constants,
                    // Every kernel in shaders/ writes each workgroup-memory element before
                    // reading it: zeroing it first would only cost time at every launch.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        if let Some(error) = pollster::block_on(scope.pop()) {
            lock(&self.modules).remove(&cache_key.module);
            return Err(RnnError::Device(format!(
                "pipeline `{}` entry `{}` constants {:?}: {error}",
                key.label, key.entry, key.constants
            )));
        }
        let pipeline = Arc::new(pipeline);
        lock(&self.pipelines).insert(cache_key, Arc::clone(&pipeline));
        Ok(pipeline)
    }

    fn dynamic_uniform_layout(&self, label: &str, read_only: &[bool]) -> wgpu::PipelineLayout {
        let buffer = |binding: usize, ty, has_dynamic_offset| wgpu::BindGroupLayoutEntry {
            binding: binding as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset,
                min_binding_size: None,
            },
            count: None,
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> =
            std::iter::once(buffer(0, wgpu::BufferBindingType::Uniform, true))
                .chain(read_only.iter().enumerate().map(|(i, &read_only)| {
                    buffer(i + 1, wgpu::BufferBindingType::Storage { read_only }, false)
                }))
                .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
        self.device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            })
    }

    fn module(&self, key: &PipelineKey, module_key: ModuleKey) -> wgpu::ShaderModule {
        let mut modules = lock(&self.modules);
        modules
            .entry(module_key)
            .or_insert_with(|| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(key.label),
                    source: wgpu::ShaderSource::Wgsl(key.source.into()),
                };
                match module_key.2 {
                    ShaderChecks::Runtime => self.device.create_shader_module(desc),
                    ShaderChecks::ProvenInRange => {
                        let checks = wgpu::ShaderRuntimeChecks {
                            bounds_checks: false,
                            force_loop_bounding: false,
                            ..wgpu::ShaderRuntimeChecks::checked()
                        };
                        // SAFETY: `ShaderChecks::ProvenInRange` is passed only for the step
                        // kernels (a cell file + recurrent.wgsl [+ recurrent_subgroup.wgsl]) and
                        // gemm.wgsl (src/gpu/kernels.rs): their storage indices are in range for
                        // the buffer sizes the host checks before it records a dispatch (tile
                        // loads past an edge are guarded by `if`), workgroup and local arrays
                        // are indexed by expressions bounded by their constant sizes, and every
                        // loop counts up to a dispatch parameter.
                        unsafe { self.device.create_shader_module_trusted(desc, checks) }
                    }
                }
            })
            .clone()
    }

    /// Runs `f` inside validation and out-of-memory error scopes of this thread, so that a device
    /// error `f` causes is its result (named by `what`), and errors of calls on other threads
    /// are not.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        // Popping takes effect at once; on native backends the futures are already resolved.
        let validation = pollster::block_on(validation.pop());
        let out_of_memory = pollster::block_on(out_of_memory.pop());
        match (result, validation.or(out_of_memory)) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(error)) => Err(RnnError::Device(format!("{what}: {error}"))),
            (Ok(value), None) => Ok(value),
        }
    }

    /// Waits for all submitted work (no error check).
    pub(crate) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| RnnError::Device(format!("waiting for the GPU: {e}")))
    }

    /// Waits for all submitted work, then returns the device errors raised since the last call
    /// (validation, out of memory, device lost) as one [`RnnError::Device`].
    ///
    /// These are the errors no call of the library caused (each of those returns its own): an
    /// application's own misuse of the device, or a device loss.
    pub fn sync(&self) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        self.take_errors()?;
        polled
            .map(|_| ())
            .map_err(|e| RnnError::Device(format!("waiting for the GPU: {e}")))
    }

    /// Starts timing the library's sequence compute passes on the GPU (see
    /// [`GpuContext::stop_pass_timing`]).
    /// Returns false, and times nothing, when the device lacks `TIMESTAMP_QUERY`.
    pub fn start_pass_timing(&self) -> bool {
        if !self.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return false;
        }
        lock(&self.pass_timer)
            .get_or_insert_with(|| PassTimer::new(&self.device))
            .start();
        true
    }

    /// Waits for the GPU, stops timing and returns the GPU time of the compute passes recorded
    /// since [`GpuContext::start_pass_timing`] (ms, summed), or `None` if timing was not on.
    pub fn stop_pass_timing(&self) -> Result<Option<f64>> {
        match lock(&self.pass_timer).as_mut() {
            Some(timer) if timer.is_active() => timer.stop(self).map(Some),
            _ => Ok(None),
        }
    }

    /// The timestamp writes of the next compute pass while timing is on.
    pub(crate) fn pass_timestamps(&self) -> Option<(wgpu::QuerySet, u32)> {
        lock(&self.pass_timer).as_mut()?.next_pass()
    }

    /// Returns the errors recorded since the last check without waiting for the GPU.
    pub fn take_errors(&self) -> Result<()> {
        let errors = std::mem::take(&mut *lock(&self.errors));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RnnError::Device(errors.join("\n")))
        }
    }

    /// Splits `workgroups` (at least one) into an `(x, y)` grid within the per-dimension limit, for
    /// kernels that flatten the index as `id.x + id.y * num_workgroups.x * workgroup_size`.
    pub fn grid_1d(&self, workgroups: usize) -> Result<(u32, u32)> {
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        let x = workgroups.clamp(1, max);
        let y = workgroups.div_ceil(x).max(1);
        if y > max {
            return Err(RnnError::TooLarge(format!(
                "{workgroups} workgroups exceed {max}x{max}"
            )));
        }
        Ok((x as u32, y as u32))
    }
}

/// Locks a mutex, ignoring poisoning: every value guarded here stays valid if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        name: &str,
        device_type: wgpu::DeviceType,
        backend: wgpu::Backend,
    ) -> wgpu::AdapterInfo {
        let mut info = wgpu::AdapterInfo::new(device_type, backend);
        info.name = name.to_string();
        info
    }

    #[test]
    fn context_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GpuContext>();
    }

    #[test]
    fn pick_prefers_discrete_then_native_backend_and_honours_name_filter() {
        let infos = [
            info("llvmpipe", wgpu::DeviceType::Cpu, wgpu::Backend::Gl),
            info("lavapipe", wgpu::DeviceType::Cpu, wgpu::Backend::Vulkan),
            info(
                "NVIDIA H100",
                wgpu::DeviceType::DiscreteGpu,
                wgpu::Backend::Vulkan,
            ),
        ];
        let mut opts = GpuOptions {
            adapter_name: Some("pipe".into()),
            ..GpuOptions::default()
        };
        assert_eq!(opts.pick(&infos), Some(1));
        opts.adapter_name = Some("NVIDIA".into());
        assert_eq!(opts.pick(&infos), Some(2));
        opts.adapter_name = Some("LLVM".into());
        assert_eq!(opts.pick(&infos), Some(0));
        opts.adapter_name = Some("radeon".into());
        assert_eq!(opts.pick(&infos), None);
    }
}
