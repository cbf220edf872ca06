//! The GPU device: adapter and device selection (async, so that the browser can await it),
//! the features and limits graft asks for, and error capture.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// How to pick a GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Prefer a software adapter (lavapipe, SwiftShader) even where a hardware one exists.
    pub force_fallback: bool,
    /// Ask for at most this many bytes per storage binding (to test the splitting of large
    /// tensors, or to behave as a smaller device would).
    pub max_binding: Option<u32>,
}

/// What the chosen adapter is.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub driver: String,
    pub device_type: String,
    /// A CPU pretending to be a GPU (lavapipe, SwiftShader, WARP).
    pub is_software: bool,
}

/// A device and its queue, with the errors wgpu reported since they were last taken.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub limits: wgpu::Limits,
    errors: Arc<Mutex<Vec<Error>>>,
}

/// The wgpu features graft's kernels use: none beyond core WebGPU, so one set of shaders runs
/// natively and in every browser (SwiftShader has no `shader-f16`; f16 weights are unpacked
/// with `unpack2x16float`, which is core WGSL).
pub fn required_features() -> wgpu::Features {
    wgpu::Features::empty()
}

/// The naga capabilities matching [`required_features`], used to validate the shaders in tests.
pub fn naga_capabilities() -> u32 {
    // No optional capability: core WGSL only.
    0
}

/// What the kernels need beyond WebGPU's downlevel defaults: 256 threads per workgroup (in x)
/// and eight storage bindings per stage (the linear kernel has seven). Both equal WebGPU's
/// defaults, so every WebGPU adapter has them; a native downlevel adapter may not. Workgroup
/// memory stays at the downlevel 16352 bytes (the linear kernel's reduction takes about 8 KiB).
fn kernel_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffers_per_shader_stage: 8,
        max_compute_invocations_per_workgroup: 256,
        max_compute_workgroup_size_x: 256,
        ..wgpu::Limits::downlevel_defaults()
    }
}

/// Limits graft asks for: the adapter's own storage-buffer sizes (a 135M model's f32 embedding
/// is 113 MB), [`kernel_limits`] for what the kernels use, and WebGPU's downlevel defaults for
/// the rest, each clamped to the adapter's (WebGPU's `requestDevice` rejects any limit better
/// than the adapter's; one worse than the default is raised to the default).
fn wanted_limits(adapter: &wgpu::Limits) -> Result<wgpu::Limits> {
    let need = kernel_limits();
    let mut short = Vec::new();
    for (name, want, have) in [
        (
            "max_storage_buffers_per_shader_stage",
            need.max_storage_buffers_per_shader_stage,
            adapter.max_storage_buffers_per_shader_stage,
        ),
        (
            "max_compute_workgroup_storage_size",
            need.max_compute_workgroup_storage_size,
            adapter.max_compute_workgroup_storage_size,
        ),
        (
            "max_compute_invocations_per_workgroup",
            need.max_compute_invocations_per_workgroup,
            adapter.max_compute_invocations_per_workgroup,
        ),
        (
            "max_compute_workgroup_size_x",
            need.max_compute_workgroup_size_x,
            adapter.max_compute_workgroup_size_x,
        ),
    ] {
        if have < want {
            short.push(format!("{name} = {want} (the adapter allows {have})"));
        }
    }
    if !short.is_empty() {
        return Err(Error::RequestDevice(format!(
            "graft's kernels need {}",
            short.join(", ")
        )));
    }
    let mut l = need.or_worse_values_from(adapter);
    l.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size;
    l.max_buffer_size = adapter.max_buffer_size;
    Ok(l)
}

/// A CPU pretending to be a GPU: wgpu reports a software adapter as [`wgpu::DeviceType::Cpu`]
/// (natively from the driver; on the `webgpu` backend from `GPUAdapterInfo.isFallbackAdapter`,
/// which Chrome sets for SwiftShader). Browsers without that attribute, or drivers that call
/// themselves something else, are recognised by name.
pub fn is_software_adapter(info: &wgpu::AdapterInfo) -> bool {
    if info.device_type == wgpu::DeviceType::Cpu {
        return true;
    }
    let name = info.name.to_ascii_lowercase();
    [
        "swiftshader",
        "llvmpipe",
        "lavapipe",
        "softpipe",
        "microsoft basic render",
    ]
    .iter()
    .any(|s| name.contains(s))
}

impl Gpu {
    /// Finds an adapter and opens a device on it.
    pub async fn new(opts: &GpuOptions) -> Result<Gpu> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all()),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: opts.force_fallback,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let mut limits = wanted_limits(&adapter.limits())?;
        if let Some(m) = opts.max_binding {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(u64::from(m));
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("graft"),
                required_features: required_features(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice(e.to_string()))?;
        let i = adapter.get_info();
        let info = GpuInfo {
            is_software: is_software_adapter(&i),
            name: i.name,
            backend: format!("{:?}", i.backend),
            driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
            device_type: format!("{:?}", i.device_type),
        };
        Ok(Gpu::from_device(device, queue, info))
    }

    /// [`Gpu::new`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: &GpuOptions) -> Result<Gpu> {
        pollster::block_on(Gpu::new(opts))
    }

    /// Wraps a device made elsewhere (a test, an embedding application), installing graft's
    /// error capture in place of wgpu's panicking default.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: GpuInfo) -> Gpu {
        let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(e.to_string()),
                wgpu::Error::Validation { description, .. } => Error::Validation(description),
                wgpu::Error::Internal { description, .. } => Error::Validation(description),
            };
            if let Ok(mut v) = sink.lock() {
                v.push(err);
            }
        }));
        let lost = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                if let Ok(mut v) = lost.lock() {
                    v.push(Error::DeviceLost(format!("{reason:?}: {msg}")));
                }
            }
        });
        let limits = device.limits();
        Gpu {
            device,
            queue,
            info,
            limits,
            errors,
        }
    }

    /// The first error wgpu reported since the last call, if any.
    pub fn take_error(&self) -> Result<()> {
        let mut v = match self.errors.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if v.is_empty() {
            return Ok(());
        }
        let first = v.remove(0);
        v.clear();
        Err(first)
    }

    /// Bytes one storage binding may hold on this device.
    pub fn binding_limit(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Checks that one binding of `bytes` fits the device.
    pub fn check_binding(&self, what: &'static str, bytes: u64) -> Result<()> {
        let limit = self.binding_limit();
        if bytes > limit {
            return Err(Error::LimitExceeded {
                what,
                need: bytes,
                limit,
            });
        }
        Ok(())
    }

    /// Waits for all submitted work (native only: the browser cannot block; read back with
    /// [`crate::map_read`], which awaits there).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.take_error()
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("info", &self.info).finish()
    }
}
