//! The GPU context: adapter selection, the device, one pending command
//! stream, the buffer pool and the pipeline cache.
//!
//! Everything the engine launches goes through [`Gpu::launch`], which records
//! into a single open compute pass. Nothing is submitted until the caller reads
//! a tensor back ([`Gpu::read`]), uploads new data, or calls [`Gpu::submit`];
//! a training step is therefore one queue submission.

mod kernel;
mod pool;
mod template;
mod tensor;
mod timing;

pub use kernel::{Access, Caps, Kernel, Shader, ALL_SHADERS};
pub use pool::PoolStats;
pub use tensor::{Tensor, VIEW_ALIGN_ELEMS};
pub use timing::{KernelTime, Profile, Timing};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};

use kernel::{Pipeline, PipelineKey};
use pool::{BufferKind, Pool};

/// Bytes reserved for one launch's parameters in the uniform ring. Every
/// kernel's `Params` struct must fit (checked at launch).
pub const PARAM_SLOT_BYTES: u64 = 256;
/// Launch parameters recorded before a forced submit.
const PARAM_RING_SLOTS: u64 = 4096;
/// WebGPU's per-dimension dispatch limit; larger grids fold into `y`.
pub const MAX_WORKGROUPS_PER_DIM: u32 = 65535;

/// A kernel's launch parameters as laid out in memory: the struct's size
/// and each field's (name, byte offset, bytes), to compare with the WGSL
/// struct the kernel declares.
#[derive(Clone, Copy, Debug)]
pub struct ParamsLayout {
    pub size: usize,
    pub fields: &'static [(&'static str, usize, usize)],
}

/// Declares a kernel's `Params` (the `#[repr(C)]` uniform struct its WGSL
/// mirrors) and, beside it, `PARAMS_LAYOUT`: its [`ParamsLayout`].
macro_rules! kernel_params {
    ($(#[$meta:meta])* struct $name:ident { $($(#[$field_meta:meta])* $field:ident: $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        struct $name {
            $($(#[$field_meta])* $field: $ty),*
        }

        /// The layout of `Params`, for the test against the shader's struct.
        pub const PARAMS_LAYOUT: $crate::gpu::ParamsLayout = $crate::gpu::ParamsLayout {
            size: std::mem::size_of::<$name>(),
            fields: &[$((stringify!($field), std::mem::offset_of!($name, $field), std::mem::size_of::<$ty>())),*],
        };
    };
}
pub(crate) use kernel_params;

/// Run `make` inside an error scope catching `filter`'s errors, and return
/// what it made with the error, if any. On the web a scope cannot be waited
/// on, so the error goes to the device's handler and surfaces at the next
/// readback ([`Gpu::read_async`]).
pub(crate) fn scoped<T>(
    device: &wgpu::Device,
    filter: wgpu::ErrorFilter,
    make: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let scope = device.push_error_scope(filter);
        let made = make();
        (made, pollster::block_on(scope.pop()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (device, filter);
        (make(), None)
    }
}

/// How to pick an adapter. `None` fields defer to `WGPU_BACKEND` and
/// `WGPU_ADAPTER_NAME`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// `vulkan`, `metal`, `dx12` or `gl` (comma-separated list allowed).
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name.
    pub adapter_name: Option<String>,
    /// Disable subgroup kernels even when the adapter has them (to test or
    /// benchmark the portable path).
    pub no_subgroups: bool,
    /// Share values across subgroups with shuffles, as on adapters whose
    /// subgroups are wider than 8 lanes, even where broadcasts would do
    /// (to test that path on an 8-lane adapter).
    pub force_subgroup_shuffle: bool,
    /// Take the tiles made for SwiftShader's compiler ([`DeviceInfo::few_loads`])
    /// on any adapter (to test them elsewhere).
    pub few_loads: bool,
    /// Fill every uninitialised tensor with NaN, so kernels that leave an
    /// output element unwritten are caught by tests.
    pub poison_uninit: bool,
    /// Which of the equally good adapters to open, counting round: the
    /// candidates are those matching `adapter_name`, or else those of the
    /// best adapter's backend and device type (rank r of a host takes its r-th).
    pub ordinal: usize,
}

/// What the engine knows about the adapter it runs on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub backend: wgpu::Backend,
    pub device_type: wgpu::DeviceType,
    pub driver: String,
    pub driver_info: String,
    /// Subgroup kernels are used (feature present, size >= 8, not disabled).
    pub subgroups: bool,
    /// Subgroups are exactly 8 lanes, so kernels may broadcast from a
    /// constant lane; otherwise they shuffle within aligned groups of 8.
    pub subgroup_is_8: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// GPU timestamps between commands are available (for benchmarks).
    pub timestamps: bool,
    /// The shader compiler is SwiftShader's: the adapter is named so, or is
    /// a browser's software fallback (Chrome's is SwiftShader). It takes
    /// minutes over loop bodies that load many inputs (NOTES.md, "In the
    /// browser"), so kernels take tiles that load fewer ([`Caps::few_loads`]).
    pub few_loads: bool,
    pub max_storage_binding: u64,
    pub max_buffer_size: u64,
    pub max_workgroup_storage: u32,
    pub max_invocations_per_workgroup: u32,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?}, {})", self.name, self.backend, self.driver_info)
    }
}

pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    poison_uninit: bool,
    poison: Mutex<Option<wgpu::Buffer>>,
    pool: Arc<Mutex<Pool>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    bind_groups: Mutex<BindGroupCache>,
    params_layout: wgpu::BindGroupLayout,
    params_ring: wgpu::Buffer,
    params_bind_group: wgpu::BindGroup,
    param_align: u64,
    recording: Mutex<Recording>,
    /// The first error wgpu reported outside an error scope (on the web,
    /// where scopes cannot be waited on: see [`scoped`]), for the next readback.
    late_error: Arc<Mutex<Option<String>>>,
}

/// Which tensors a bind group binds: the layout, then each binding's
/// buffer, byte offset and length.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BindKey {
    layout: wgpu::BindGroupLayout,
    tensors: Vec<(wgpu::Buffer, u64, u64)>,
}

/// Bind groups by what they bind. Pooled buffers come back to the same
/// tensors step after step, so a training step's bind groups are all made
/// in its first steps. Entries keep their buffers alive, so the cache is
/// emptied when the pool is trimmed and when it grows past a bound.
#[derive(Default)]
struct BindGroupCache {
    groups: HashMap<BindKey, wgpu::BindGroup>,
    created: u64,
}

const MAX_CACHED_BIND_GROUPS: usize = 1 << 14;

/// Commands recorded since the last submit.
#[derive(Default)]
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Launch parameters, copied into the uniform ring just before submit.
    params: Vec<u8>,
    launches: u64,
    copies: u64,
    submissions: u64,
    /// While [`Gpu::profile`] runs: every launch is timestamped.
    profiling: Option<timing::Profiling>,
}

fn parse_backends(list: &str) -> Result<wgpu::Backends> {
    let mut backends = wgpu::Backends::empty();
    for name in list.split(',').map(|s| s.trim().to_lowercase()) {
        backends |= match name.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            other => bail!("unknown backend '{other}': use vulkan, metal, dx12 or gl"),
        };
    }
    Ok(backends)
}

#[cfg(not(target_arch = "wasm32"))]
fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn device_type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The wgpu instance for the given options' backends (on the web: the
/// browser's WebGPU, never WebGL, which has no compute shaders).
fn instance(options: &GpuOptions) -> Result<(wgpu::Instance, wgpu::Backends)> {
    let backends = if cfg!(target_arch = "wasm32") {
        wgpu::Backends::BROWSER_WEBGPU
    } else {
        match options.backend.clone().or_else(|| std::env::var("WGPU_BACKEND").ok()) {
            Some(list) => parse_backends(&list)?,
            None => wgpu::Backends::all(),
        }
    };
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    Ok((wgpu::Instance::new(desc), backends))
}

/// Every adapter wgpu can reach with the given options' backends, best first.
#[cfg(not(target_arch = "wasm32"))]
pub fn enumerate_adapters(options: &GpuOptions) -> Result<Vec<wgpu::Adapter>> {
    let (instance, backends) = instance(options)?;
    let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
    adapters.sort_by_key(|a| {
        let info = a.get_info();
        (backend_rank(info.backend), device_type_rank(info.device_type))
    });
    Ok(adapters)
}

#[cfg(not(target_arch = "wasm32"))]
const NO_ADAPTER_HELP: &str = "no GPU adapter found. Install a Vulkan, Metal or DX12 driver for your GPU; \
on Linux without a GPU, install the software Vulkan driver: \
`sudo apt-get install mesa-vulkan-drivers libvulkan1` (run `ddpm devices` to list what wgpu sees)";

impl Gpu {
    /// Open the best adapter allowed by `options` and the environment (the
    /// `options.ordinal`-th of the equally good ones).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(options: &GpuOptions) -> Result<Gpu> {
        let adapters = enumerate_adapters(options)?;
        let wanted =
            options.adapter_name.clone().or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok()).map(|s| s.to_lowercase());
        let mut candidates: Vec<wgpu::Adapter> = match &wanted {
            Some(name) => adapters.into_iter().filter(|a| a.get_info().name.to_lowercase().contains(name)).collect(),
            None => {
                let kind = |a: &wgpu::Adapter| (a.get_info().backend, a.get_info().device_type);
                let best = adapters.first().map(kind);
                adapters.into_iter().filter(|a| Some(kind(a)) == best).collect()
            }
        };
        if candidates.is_empty() {
            match &wanted {
                Some(name) => bail!("no adapter whose name contains '{name}' (`ddpm devices` lists them)"),
                None => bail!(NO_ADAPTER_HELP),
            }
        }
        let pick = options.ordinal % candidates.len();
        pollster::block_on(Self::from_adapter(candidates.swap_remove(pick), options))
    }

    /// Open the browser's WebGPU adapter (the web has one, and no way to
    /// list others). `options` still chooses kernel paths and poisoning.
    #[cfg(target_arch = "wasm32")]
    pub async fn new(options: &GpuOptions) -> Result<Gpu> {
        let (instance, _) = instance(options)?;
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("this browser offers no WebGPU adapter ({e}): try a recent Chrome, Edge or Safari"))?;
        Self::from_adapter(adapter, options).await
    }

    async fn from_adapter(adapter: wgpu::Adapter, options: &GpuOptions) -> Result<Gpu> {
        let adapter_info = adapter.get_info();
        let features = adapter.features();
        // Kernels share values across subgroups in groups of 8 lanes, so
        // smaller subgroups take the portable path.
        let subgroups =
            features.contains(wgpu::Features::SUBGROUP) && adapter_info.subgroup_min_size >= 8 && !options.no_subgroups;
        let timestamps = features.contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut required_features = wgpu::Features::empty();
        if subgroups {
            required_features |= wgpu::Features::SUBGROUP;
        }
        let timestamps = timestamps && features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS);
        if timestamps {
            required_features |= wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        // Ask for everything the adapter offers: big storage bindings and many
        // storage buffers per stage matter for fused kernels.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("ddpm-wgpu"),
                required_features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .with_context(|| format!("could not open device on adapter {}", adapter_info.name))?;
        let late_error = Arc::new(Mutex::new(None));
        if cfg!(target_arch = "wasm32") {
            let slot = late_error.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                slot.lock().unwrap().get_or_insert_with(|| e.to_string());
            }));
        }

        let info = DeviceInfo {
            name: adapter_info.name.clone(),
            backend: adapter_info.backend,
            device_type: adapter_info.device_type,
            driver: adapter_info.driver.clone(),
            driver_info: adapter_info.driver_info.clone(),
            subgroups,
            subgroup_is_8: subgroups && adapter_info.subgroup_max_size == 8 && !options.force_subgroup_shuffle,
            subgroup_min_size: adapter_info.subgroup_min_size,
            subgroup_max_size: adapter_info.subgroup_max_size,
            timestamps,
            few_loads: options.few_loads
                || adapter_info.name.to_lowercase().contains("swiftshader")
                || (adapter_info.backend == wgpu::Backend::BrowserWebGpu
                    && adapter_info.device_type == wgpu::DeviceType::Cpu),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        };

        let param_align = (limits.min_uniform_buffer_offset_alignment as u64).max(PARAM_SLOT_BYTES);
        let params_ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: param_align * PARAM_RING_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let params_bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("params"),
            layout: &params_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params_ring,
                    offset: 0,
                    size: wgpu::BufferSize::new(PARAM_SLOT_BYTES),
                }),
            }],
        });

        Ok(Gpu {
            device,
            queue,
            info,
            poison_uninit: options.poison_uninit,
            poison: Mutex::new(None),
            pool: Arc::new(Mutex::new(Pool::default())),
            pipelines: Mutex::new(HashMap::new()),
            bind_groups: Mutex::new(BindGroupCache::default()),
            params_layout,
            params_ring,
            params_bind_group,
            param_align,
            recording: Mutex::new(Recording::default()),
            late_error,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// What kernel variants are chosen by on this adapter.
    pub fn caps(&self) -> Caps {
        Caps { subgroups: self.info.subgroups, sg8: self.info.subgroup_is_8, few_loads: self.info.few_loads }
    }

    /// Every kernel built so far (the pipeline cache's keys).
    pub fn built_kernels(&self) -> Vec<Kernel> {
        self.pipelines.lock().unwrap().keys().cloned().collect()
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.lock().unwrap().stats()
    }

    /// Free every pooled buffer that no tensor holds.
    pub fn trim_pool(&self) {
        self.bind_groups.lock().unwrap().groups.clear();
        self.pool.lock().unwrap().trim();
    }

    fn pooled_buffer(&self, bytes: u64, kind: BufferKind) -> Result<wgpu::Buffer> {
        // Larger than one binding is fine for flat buffers that kernels
        // only see through views; `launch` checks each binding.
        if bytes > self.info.max_buffer_size {
            bail!(
                "a tensor of {} MiB exceeds this adapter's largest buffer ({} MiB)",
                bytes >> 20,
                self.info.max_buffer_size >> 20
            );
        }
        Pool::take(&self.pool, &self.device, bytes, kind)
    }

    /// A tensor whose contents are undefined (NaN when `poison_uninit`).
    pub fn uninit(&self, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::new(self, shape)?;
        if self.poison_uninit && !t.is_empty() {
            let source = self.poison_source(t.byte_len())?;
            self.with_encoder(|enc| enc.copy_buffer_to_buffer(&source, 0, t.buffer(), t.byte_offset(), t.byte_len()));
        }
        Ok(t)
    }

    /// A buffer of at least `bytes` bytes of NaN (all bits set), grown as needed.
    fn poison_source(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut poison = self.poison.lock().unwrap();
        if let Some(b) = poison.as_ref().filter(|b| b.size() >= bytes) {
            return Ok(b.clone());
        }
        let size = bytes.next_power_of_two().min(self.info.max_buffer_size).max(bytes);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("NaN poison"),
            size,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        buffer
            .slice(..)
            .get_mapped_range_mut()
            .map_err(|e| anyhow!("filling the poison buffer: {e:?}"))?
            .copy_from_slice(&vec![0xFF; size as usize]);
        buffer.unmap();
        *poison = Some(buffer.clone());
        Ok(buffer)
    }

    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let t = Tensor::new(self, shape)?;
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), 0, None));
        Ok(t)
    }

    /// Set every element of `t` (which may be a view) to zero.
    pub fn clear(&self, t: &Tensor) -> Result<()> {
        self.with_encoder(|enc| enc.clear_buffer(t.buffer(), t.byte_offset(), Some(t.byte_len())));
        Ok(())
    }

    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let t = Tensor::new(self, shape)?;
        self.write(&t, data)?;
        Ok(t)
    }

    /// Overwrite a tensor's contents from the host.
    pub fn write(&self, t: &Tensor, data: &[f32]) -> Result<()> {
        if data.len() != t.len() {
            bail!("write: {} values for a tensor of shape {:?}", data.len(), t.shape());
        }
        // Queue writes run before the next submission's commands, so anything
        // already recorded (which may read this pooled buffer's previous
        // owner) must be submitted first.
        self.submit();
        self.queue.write_buffer(t.buffer(), t.byte_offset(), bytemuck::cast_slice(data));
        Ok(())
    }

    /// Copy a tensor back to the host (submits and waits).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_async(t))
    }

    /// Copy a tensor back to the host once the GPU has finished what was
    /// recorded before. The only readback on the web, where the answer
    /// arrives through the page's event loop.
    pub async fn read_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        let bytes = t.byte_len();
        let staging = self.pooled_buffer(bytes.max(4), BufferKind::Readback)?;
        self.with_encoder(|enc| enc.copy_buffer_to_buffer(t.buffer(), t.byte_offset(), &staging, 0, bytes));
        self.submit();
        let out = self.map_read_async(&staging, bytes).await?;
        // Only a buffer that mapped and unmapped cleanly goes back to the pool.
        Pool::give_back(&self.pool, staging, BufferKind::Readback);
        Ok(out)
    }

    /// The first `bytes` of a `MAP_READ` buffer whose contents have been
    /// submitted (waits for the GPU), as `T`s; unmapped again after.
    #[cfg(not(target_arch = "wasm32"))]
    fn map_read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        pollster::block_on(self.map_read_async(buffer, bytes))
    }

    async fn map_read_async<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = buffer.slice(0..bytes);
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // Natively the callback runs inside the poll; on the web, when the
        // browser resolves the mapping.
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        let mapped = rx.await.context("readback callback dropped")?;
        // An error reported since (a kernel that did not build, say) is the cause of any failure here.
        if let Some(e) = self.late_error.lock().unwrap().take() {
            bail!("the GPU reported an error: {e}");
        }
        mapped.context("mapping readback buffer")?;
        let view = slice.get_mapped_range().map_err(|e| anyhow!("reading back: {e:?}"))?;
        let v = bytemuck::cast_slice::<u8, T>(&view).to_vec();
        drop(view);
        buffer.unmap();
        Ok(v)
    }

    /// Copy `src` into `dst` (same element count) on the GPU.
    pub fn copy(&self, src: &Tensor, dst: &Tensor) -> Result<()> {
        if src.len() != dst.len() {
            bail!("copy: shapes {:?} and {:?} differ in size", src.shape(), dst.shape());
        }
        self.copy_region(src, 0, dst, 0, src.len())
    }

    /// Copy `len` elements of `src` from element `src_offset` into `dst` at
    /// element `dst_offset`, on the GPU.
    pub fn copy_region(
        &self,
        src: &Tensor,
        src_offset: usize,
        dst: &Tensor,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src_offset + len > src.len() || dst_offset + len > dst.len() {
            bail!(
                "copy_region: {len} elements from {src_offset} of {:?} to {dst_offset} of {:?} out of range",
                src.shape(),
                dst.shape()
            );
        }
        self.recording.lock().unwrap().copies += 1;
        self.with_encoder(|enc| {
            enc.copy_buffer_to_buffer(
                src.buffer(),
                src.byte_offset() + (src_offset * 4) as u64,
                dst.buffer(),
                dst.byte_offset() + (dst_offset * 4) as u64,
                (len * 4) as u64,
            )
        });
        Ok(())
    }

    /// Block until every submitted command has finished.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("waiting for the GPU: {e}"))?;
        Ok(())
    }

    /// Submit everything recorded so far (does not wait).
    pub fn submit(&self) {
        let mut rec = self.recording.lock().unwrap();
        self.submit_locked(&mut rec);
    }

    /// Number of kernel launches recorded since the context was created.
    pub fn launch_count(&self) -> u64 {
        self.recording.lock().unwrap().launches
    }

    /// Number of queue submissions that carried commands.
    pub fn submission_count(&self) -> u64 {
        self.recording.lock().unwrap().submissions
    }

    /// Number of buffer-to-buffer copies recorded (readbacks excluded).
    pub fn copy_count(&self) -> u64 {
        self.recording.lock().unwrap().copies
    }

    /// Number of bind groups created since the context was created.
    pub fn bind_group_count(&self) -> u64 {
        self.bind_groups.lock().unwrap().created
    }

    fn submit_locked(&self, rec: &mut Recording) {
        rec.pass = None;
        let Some(encoder) = rec.encoder.take() else { return };
        if !rec.params.is_empty() {
            self.queue.write_buffer(&self.params_ring, 0, &rec.params);
            rec.params.clear();
        }
        self.queue.submit([encoder.finish()]);
        rec.submissions += 1;
    }

    /// Run `f` on the pending encoder outside any compute pass.
    fn with_encoder(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut rec = self.recording.lock().unwrap();
        rec.pass = None;
        let encoder = rec.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") })
        });
        f(encoder);
    }

    /// Record one dispatch of `kernel` with `params` (a `#[repr(C)]` struct
    /// mirrored in the shader) and `tensors` bound in declaration order.
    pub fn launch<P: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        params: &P,
        tensors: &[&Tensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let param_bytes = bytemuck::bytes_of(params);
        if param_bytes.len() as u64 > PARAM_SLOT_BYTES {
            bail!(
                "{}: params struct of {} bytes exceeds the {PARAM_SLOT_BYTES}-byte slot",
                kernel.entry,
                param_bytes.len()
            );
        }
        if tensors.len() != kernel.bindings.len() {
            bail!("{}: {} tensors given, kernel binds {}", kernel.entry, tensors.len(), kernel.bindings.len());
        }
        if workgroups.iter().any(|&w| w > MAX_WORKGROUPS_PER_DIM) {
            bail!(
                "{}: dispatch {:?} exceeds {MAX_WORKGROUPS_PER_DIM} workgroups per dimension",
                kernel.entry,
                workgroups
            );
        }
        if let Some(t) = tensors.iter().find(|t| t.byte_len() > self.info.max_storage_binding) {
            bail!(
                "{}: a tensor of shape {:?} ({} MiB) exceeds this adapter's largest storage binding ({} MiB)",
                kernel.entry,
                t.shape(),
                t.byte_len() >> 20,
                self.info.max_storage_binding >> 20
            );
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel)?;
        let bind_group = self.bind_group(kernel, &pipeline.tensors_layout, tensors);

        let mut rec = self.recording.lock().unwrap();
        // While profiling: a pass of its own, timestamped at its start and end
        // (checked first, so a full profile records nothing of this launch).
        let timestamps = match &mut rec.profiling {
            Some(p) => Some(p.next(kernel)?),
            None => None,
        };
        if rec.params.len() as u64 >= self.param_align * PARAM_RING_SLOTS {
            self.submit_locked(&mut rec);
        }
        let offset = rec.params.len() as u64;
        rec.params.extend_from_slice(param_bytes);
        rec.params.resize((offset + self.param_align) as usize, 0);
        rec.launches += 1;
        if timestamps.is_some() {
            rec.pass = None;
        }
        if rec.pass.is_none() {
            let Recording { encoder, profiling, .. } = &mut *rec;
            let encoder = encoder.get_or_insert_with(|| {
                self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") })
            });
            let timestamp_writes = match (timestamps, profiling) {
                (Some(first), Some(p)) => Some(wgpu::ComputePassTimestampWrites {
                    query_set: &p.queries,
                    beginning_of_pass_write_index: Some(first),
                    end_of_pass_write_index: Some(first + 1),
                }),
                _ => None,
            };
            let pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("kernels"), timestamp_writes })
                .forget_lifetime();
            rec.pass = Some(pass);
        }
        let pass = rec.pass.as_mut().unwrap();
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &self.params_bind_group, &[offset as u32]);
        pass.set_bind_group(1, &bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        Ok(())
    }

    /// The bind group of `tensors` for `layout`, from the cache when it has it.
    fn bind_group(&self, kernel: &Kernel, layout: &wgpu::BindGroupLayout, tensors: &[&Tensor]) -> wgpu::BindGroup {
        let key = BindKey {
            layout: layout.clone(),
            tensors: tensors.iter().map(|t| (t.buffer().clone(), t.byte_offset(), t.byte_len())).collect(),
        };
        let mut cache = self.bind_groups.lock().unwrap();
        if let Some(group) = cache.groups.get(&key) {
            return group.clone();
        }
        let entries: Vec<wgpu::BindGroupEntry> = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| wgpu::BindGroupEntry { binding: i as u32, resource: t.binding() })
            .collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout,
            entries: &entries,
        });
        if cache.groups.len() >= MAX_CACHED_BIND_GROUPS {
            cache.groups.clear();
        }
        cache.created += 1;
        cache.groups.insert(key, group.clone());
        group
    }

    /// Workgroup grid for `n` workgroups in a 1-D launch, folding into `y`
    /// past the per-dimension limit. Shaders recover the linear index as
    /// `wid.x + wid.y * num_workgroups.x`.
    pub fn grid_1d(n: u32) -> [u32; 3] {
        if n <= MAX_WORKGROUPS_PER_DIM {
            [n, 1, 1]
        } else {
            let y = n.div_ceil(MAX_WORKGROUPS_PER_DIM);
            [n.div_ceil(y), y, 1]
        }
    }
}
