//! Where a model runs. The [`Model`] owns the choice, as candle's `Device` is chosen on the
//! tensors: the CPU, or a GPU through wgpu (behind the `gpu` cargo feature, on by default), so
//! that faces (the CLI, the browser) ask for a device and never juggle backends themselves.
//! [`Model::logits`] and generation run on the chosen device; the explicit-cache
//! [`Model::forward`] is the CPU's.

#[cfg(feature = "gpu")]
use candle_core::DType;
use candle_core::Tensor;

#[cfg(not(feature = "gpu"))]
use crate::error::Error;
use crate::error::Result;
use crate::model::Model;
#[cfg(feature = "gpu")]
use crate::sampling::Sampler;
use crate::sampling::Sampling;

/// A device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// Any GPU adapter wgpu finds, software ones (lavapipe, SwiftShader) included.
    Gpu,
    /// A hardware GPU when there is one and the model runs there, else the CPU: a software
    /// adapter is slower than graft's CPU path.
    Auto,
}

impl Device {
    /// `cpu`, `gpu` or `auto`.
    pub fn parse(s: &str) -> Option<Device> {
        match s {
            "cpu" => Some(Device::Cpu),
            "gpu" => Some(Device::Gpu),
            "auto" => Some(Device::Auto),
            _ => None,
        }
    }
}

/// How to set up a GPU.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Positions the GPU's KV cache holds (default: the model's maximum, at most 4096).
    pub max_context: Option<usize>,
    /// Upload every Linear weight as f16 whatever its format.
    pub f16_weights: bool,
    /// Adapter selection (a software adapter, a smaller binding limit).
    #[cfg(feature = "gpu")]
    pub gpu: graft_gpu::GpuOptions,
    /// A GPU already open (several models sharing one device); `gpu` is then unused.
    #[cfg(feature = "gpu")]
    pub open_gpu: Option<graft_gpu::Gpu>,
}

/// What [`Model::set_device`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// [`Device::Cpu`] or [`Device::Gpu`].
    pub device: Device,
    /// The adapter's name and backend, or "the CPU".
    pub name: String,
    /// Why `auto` took the CPU, in a few words.
    pub reason: Option<String>,
    /// The underlying error behind `reason`, in full (wgpu's adapter search can be long).
    pub detail: Option<String>,
}

impl std::fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "running on the CPU ({r})"),
            None => write!(f, "running on {}", self.name),
        }
    }
}

/// The backend a model runs on.
#[derive(Default)]
pub(crate) enum Backend {
    #[default]
    Cpu,
    /// Behind a lock: the GPU model's KV cache and buffers change on every call, while the
    /// model's calls take `&self` (as `model(input_ids)` does not mutate in Python).
    #[cfg(feature = "gpu")]
    Gpu(Box<std::sync::Mutex<graft_gpu::GpuModel>>),
}

fn cpu(reason: Option<String>, detail: Option<String>) -> DeviceReport {
    DeviceReport {
        device: Device::Cpu,
        name: "the CPU".into(),
        reason,
        detail,
    }
}

impl Model {
    /// Moves forward passes and generation to `device` (see [`Device`]). With
    /// [`Device::Auto`], anything that keeps the GPU from running this model falls back to the
    /// CPU and says why; with [`Device::Gpu`] it is an error. Blocks while the adapter is
    /// requested (native only; see [`Model::set_device_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn set_device(&mut self, device: Device, opts: &DeviceOptions) -> Result<DeviceReport> {
        pollster::block_on(self.set_device_async(device, opts))
    }

    /// [`Model::set_device`] as a future (WebGPU's adapter request is asynchronous).
    pub async fn set_device_async(
        &mut self,
        device: Device,
        opts: &DeviceOptions,
    ) -> Result<DeviceReport> {
        self.backend = Backend::Cpu;
        if device == Device::Cpu {
            return Ok(cpu(None, None));
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = opts;
            let why = "graft was built without its `gpu` feature";
            if device == Device::Gpu {
                return Err(Error::NoGpu(why.into()));
            }
            Ok(cpu(Some(why.into()), None))
        }
        #[cfg(feature = "gpu")]
        {
            let found = match &opts.open_gpu {
                Some(g) => Ok(g.clone()),
                None => graft_gpu::Gpu::new(&opts.gpu).await,
            };
            let gpu = match found {
                Ok(g) => g,
                Err(e) if device == Device::Auto => {
                    return Ok(cpu(Some("no GPU found".into()), Some(e.to_string())))
                }
                Err(e) => return Err(e.into()),
            };
            if device == Device::Auto && gpu.info.is_software {
                return Ok(cpu(
                    Some(format!(
                        "the only GPU adapter, {}, is a software one",
                        gpu.info.name
                    )),
                    None,
                ));
            }
            let gopts = graft_gpu::GpuModelOptions {
                max_context: opts.max_context,
                f16_weights: opts.f16_weights,
            };
            let g = match graft_gpu::GpuModel::new(
                &gpu,
                self.network(),
                self.table(),
                self.registry(),
                &gopts,
            ) {
                Ok(g) => g,
                Err(e) if device == Device::Auto => {
                    return Ok(cpu(
                        Some(format!("the GPU cannot run this model: {e}")),
                        None,
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            self.backend = Backend::Gpu(Box::new(std::sync::Mutex::new(g)));
            let soft = if gpu.info.is_software {
                ", a software adapter"
            } else {
                ""
            };
            // browsers may not name their adapter
            let named = if gpu.info.name.is_empty() {
                "an unnamed adapter"
            } else {
                gpu.info.name.as_str()
            };
            Ok(DeviceReport {
                device: Device::Gpu,
                name: format!("{named} ({}{soft})", gpu.info.backend),
                reason: None,
                detail: None,
            })
        }
    }

    /// Where forward passes and generation run now: [`Device::Cpu`] or [`Device::Gpu`].
    pub fn device(&self) -> Device {
        match self.backend {
            Backend::Cpu => Device::Cpu,
            #[cfg(feature = "gpu")]
            Backend::Gpu(_) => Device::Gpu,
        }
    }

    /// Runs `f` on the GPU model, its module table and adapters, when the model is on a GPU
    /// (for the GPU benchmark's counters and kernels).
    #[cfg(feature = "gpu")]
    pub fn with_gpu<R>(
        &self,
        f: impl FnOnce(
            &mut graft_gpu::GpuModel,
            &graft_arch::ModuleTable,
            &graft_adapters::AdapterRegistry,
        ) -> R,
    ) -> Option<R> {
        match &self.backend {
            Backend::Gpu(g) => {
                let mut g = lock(g);
                Some(f(&mut g, self.table(), self.registry()))
            }
            Backend::Cpu => None,
        }
    }

    /// `model(input_ids).logits`: one forward pass over `tokens` from an empty cache, on the
    /// model's device; (n, vocab). Blocks on a GPU (native only; see [`Model::logits_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        pollster::block_on(self.logits_async(tokens))
    }

    /// [`Model::logits`] as a future (awaits GPU read-backs; runs in the browser).
    // On a GPU the lock is held across the read-back on purpose: the call owns the GPU's
    // cache until it returns (natively the future is blocked on; in the browser there is one
    // thread, and the facade refuses a second call while one runs).
    #[allow(clippy::await_holding_lock)]
    pub async fn logits_async(&self, tokens: &[u32]) -> Result<Tensor> {
        match &self.backend {
            Backend::Cpu => self.forward(tokens, &mut graft_cpu::KvCache::new()),
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => {
                self.check_tokens(tokens, 0)?;
                let mut g = lock(g);
                g.reset();
                Ok(
                    g.forward_async(self.table(), self.registry(), tokens, false)
                        .await?,
                )
            }
        }
    }

    /// Greedy generation: up to `max_new_tokens`, stopping at any of `eos`. `on_token` sees
    /// each new token as it comes.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.generate_with(prompt, max_new_tokens, eos, &Sampling::default(), on_token)
    }

    /// Generation with a sampling configuration (greedy when the temperature is 0), on the
    /// model's device. Blocks (native only; see [`Model::generate_with_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        sampling: &Sampling,
        on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        pollster::block_on(self.generate_with_async(
            prompt,
            max_new_tokens,
            eos,
            sampling,
            on_token,
        ))
    }

    /// [`Model::generate_with`] as a future. On a GPU, greedy decoding and plain temperature
    /// sampling pick each token on the device (only its id comes back); top-k / top-p read the
    /// last logits back and the CPU's sampler picks.
    #[allow(clippy::await_holding_lock)]
    pub async fn generate_with_async(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        sampling: &Sampling,
        #[allow(unused_mut)] mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Cpu => self.generate_cpu(prompt, max_new_tokens, eos, sampling, on_token),
            #[cfg(feature = "gpu")]
            Backend::Gpu(g) => {
                if max_new_tokens == 0 {
                    return Ok(Vec::new());
                }
                self.check_tokens(prompt, 0)?;
                let (table, reg) = (self.table(), self.registry());
                let mut g = lock(g);
                let on_device = if sampling.temperature <= 0.0 {
                    Some(graft_gpu::DevicePick::Greedy)
                } else if sampling.top_k == 0 && sampling.top_p >= 1.0 {
                    Some(graft_gpu::DevicePick::Sample {
                        temperature: sampling.temperature,
                        seed: sampling.seed,
                    })
                } else {
                    None
                };
                if let Some(pick) = on_device {
                    return Ok(g
                        .generate_async(table, reg, prompt, max_new_tokens, eos, pick, on_token)
                        .await?);
                }
                let mut sampler = Sampler::new(sampling.clone());
                g.reset();
                let mut out = Vec::new();
                let mut input = prompt.to_vec();
                loop {
                    let logits = g.forward_async(table, reg, &input, true).await?;
                    let last = logits.get(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                    let next = sampler.pick(&last);
                    out.push(next);
                    on_token(next);
                    if eos.contains(&next)
                        || out.len() == max_new_tokens
                        || g.len + 1 > g.capacity()
                    {
                        return Ok(out);
                    }
                    input = vec![next];
                }
            }
        }
    }
}

/// The GPU model, even if a panicking thread poisoned its lock (its state is rebuilt on the
/// next call: the cache is reset and the adapters re-synced).
#[cfg(feature = "gpu")]
fn lock(
    g: &std::sync::Mutex<graft_gpu::GpuModel>,
) -> std::sync::MutexGuard<'_, graft_gpu::GpuModel> {
    match g.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
