//! Single kernels run on their own: the kernel tests (each against its CPU reference) and the
//! bandwidth benchmark use this; the model records the same kernels into one pass instead.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::device::Gpu;
use crate::error::Result;
use crate::kernels::{Kernel, Registry};
use crate::readback::map_read;
use crate::weights::{storage, storage_f32};

/// One binding's contents for [`Ops::run`] (binding 0, the uniform, is given separately).
pub enum Input<'a> {
    F32(&'a [f32]),
    U32(&'a [u32]),
    /// A buffer already on the GPU.
    Buffer(&'a wgpu::Buffer),
}

/// Runs single kernels.
pub struct Ops {
    pub gpu: Gpu,
    kernels: Arc<Registry>,
}

impl Ops {
    pub fn new(gpu: &Gpu) -> Ops {
        Ops {
            gpu: gpu.clone(),
            kernels: Arc::new(Registry::default()),
        }
    }

    /// Uploads f32 values as a storage buffer.
    pub fn upload_f32(&self, v: &[f32]) -> Result<wgpu::Buffer> {
        storage_f32(&self.gpu, "ops input", v)
    }

    /// Uploads u32 values as a storage buffer.
    pub fn upload_u32(&self, v: &[u32]) -> Result<wgpu::Buffer> {
        storage(&self.gpu, "ops input", v)
    }

    fn buffers(&self, inputs: &[Input]) -> Result<Vec<wgpu::Buffer>> {
        inputs
            .iter()
            .map(|i| match i {
                Input::F32(v) => self.upload_f32(v),
                Input::U32(v) => self.upload_u32(v),
                Input::Buffer(b) => Ok((*b).clone()),
            })
            .collect()
    }

    fn bind_group(
        &self,
        kernel: Kernel,
        params: &[u8],
        bufs: &[wgpu::Buffer],
    ) -> (wgpu::BindGroup, wgpu::Buffer) {
        let uniform = self
            .gpu
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("ops uniform"),
                contents: params,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let (bgl, _) = self.kernels.layout(&self.gpu, kernel);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for (i, b) in bufs.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bg = self
            .gpu
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &bgl,
                entries: &entries,
            });
        (bg, uniform)
    }

    /// A command buffer of `reps` dispatches of one pipeline in one compute pass.
    fn encode(
        &self,
        pipe: &wgpu::ComputePipeline,
        bg: &wgpu::BindGroup,
        workgroups: (u32, u32, u32),
        reps: usize,
    ) -> wgpu::CommandEncoder {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(pipe);
            pass.set_bind_group(0, bg, &[]);
            for _ in 0..reps {
                pass.dispatch_workgroups(workgroups.0, workgroups.1, workgroups.2);
            }
        }
        enc
    }

    /// Runs `kernel` once over `workgroups` with `params` as its uniform and `inputs` as
    /// bindings 1.., and returns the contents of the bindings listed in `read` as u32 words.
    /// Blocks on the device (native only; see [`Ops::run_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(
        &self,
        kernel: Kernel,
        params: &[u8],
        inputs: &[Input],
        workgroups: (u32, u32, u32),
        read: &[usize],
    ) -> Result<Vec<Vec<u32>>> {
        pollster::block_on(self.run_async(kernel, params, inputs, workgroups, read))
    }

    /// [`Ops::run`] as a future (awaits the read-back; runs in the browser too).
    pub async fn run_async(
        &self,
        kernel: Kernel,
        params: &[u8],
        inputs: &[Input<'_>],
        workgroups: (u32, u32, u32),
        read: &[usize],
    ) -> Result<Vec<Vec<u32>>> {
        let bufs = self.buffers(inputs)?;
        let pipe = self.kernels.pipeline(&self.gpu, kernel);
        let (bg, _u) = self.bind_group(kernel, params, &bufs);
        let mut enc = self.encode(&pipe, &bg, workgroups, 1);
        let mut staging = Vec::new();
        for &r in read {
            let src = &bufs[r - 1];
            let size = src.size();
            let st = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("ops readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            enc.copy_buffer_to_buffer(src, 0, &st, 0, size);
            staging.push(st);
        }
        let idx = self.gpu.queue.submit([enc.finish()]);
        let mut out = Vec::new();
        for st in staging {
            let bytes = map_read(&self.gpu, &st, st.size(), Some(idx.clone())).await?;
            out.push(bytemuck::cast_slice::<u8, u32>(&bytes).to_vec());
        }
        self.gpu.take_error()?;
        Ok(out)
    }

    /// Seconds per dispatch of `kernel` over `workgroups`, from `reps` dispatches in one pass
    /// and one submit (the benchmark's timing: wall clock around submit and wait). Native only:
    /// it blocks, and `std::time::Instant` panics on wasm32-unknown-unknown.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time(
        &self,
        kernel: Kernel,
        params: &[u8],
        inputs: &[Input],
        workgroups: (u32, u32, u32),
        reps: usize,
    ) -> Result<f64> {
        let bufs = self.buffers(inputs)?;
        let pipe = self.kernels.pipeline(&self.gpu, kernel);
        let (bg, _u) = self.bind_group(kernel, params, &bufs);
        let submit = |reps: usize| -> Result<f64> {
            let enc = self.encode(&pipe, &bg, workgroups, reps);
            let t = std::time::Instant::now();
            self.gpu.queue.submit([enc.finish()]);
            self.gpu.wait()?;
            Ok(t.elapsed().as_secs_f64())
        };
        submit(2)?; // warm-up: pipeline and memory residency
        Ok(submit(reps)? / reps as f64)
    }
}
