//! Running the program: forward passes in chunks through the KV cache, and generation with the
//! next token chosen on the GPU, step k+1 submitted before step k's id is read back.

use candle_core::Tensor;
use graft_adapters::AdapterRegistry;
use graft_arch::table::ModuleTable;

use super::plan::{Pick, PlanKey};
use super::{u32_of, GpuModel, B};
use crate::error::{Error, Result};
use crate::readback::map_read;

/// How generation picks the next token on the GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DevicePick {
    /// The most likely token (argmax; the first on ties).
    Greedy,
    /// A sample at `temperature` (Gumbel-max with a counter hash seeded by `seed`).
    Sample { temperature: f32, seed: u64 },
}

impl DevicePick {
    fn pick(self) -> Pick {
        match self {
            DevicePick::Greedy => Pick::Greedy,
            DevicePick::Sample { temperature, seed } => Pick::Gumbel {
                inv_temp: 1.0 / temperature,
                // the kernel's counter hash takes 32 bits of seed
                seed: seed as u32,
            },
        }
    }
}

impl GpuModel {
    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Input("no tokens to run".into()));
        }
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Input(format!(
                "token id {t} is outside the vocabulary ({})",
                self.vocab
            )));
        }
        if self.len + tokens.len() > self.cap {
            return Err(Error::LimitExceeded {
                what: "positions in the GPU KV cache (its max_context)",
                need: (self.len + tokens.len()) as u64,
                limit: self.cap as u64,
            });
        }
        Ok(())
    }

    /// Writes the cache length, for the next submitted step.
    fn write_len(&self) -> Result<()> {
        let len = u32_of(self.len)?;
        self.gpu
            .queue
            .write_buffer(&self.state, 0, bytemuck::cast_slice(&[len]));
        Ok(())
    }

    /// Prepares one chunk (≤ `chunk` tokens), optionally picking the next token on the GPU.
    fn run_chunk(&mut self, tokens: &[u32], last_only: bool, pick: Pick) -> Result<PlanKey> {
        let key = PlanKey::new(tokens.len(), last_only, pick);
        self.plan(key, pick)?;
        self.write_len()?;
        self.gpu
            .queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(tokens));
        Ok(key)
    }

    pub(super) async fn submit(
        &mut self,
        key: &PlanKey,
        read: Option<(&wgpu::Buffer, u64)>,
    ) -> Result<Vec<u8>> {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let d = self.encode(key, &mut enc);
        let bytes = read.map_or(0, |r| r.1);
        if let Some((src, size)) = read {
            let need = size.next_multiple_of(4).max(4);
            let rb = match &self.readback {
                Some((b, cap)) if *cap >= need => b.clone(),
                _ => {
                    let b = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("readback"),
                        size: need,
                        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    self.readback = Some((b.clone(), need));
                    b
                }
            };
            enc.copy_buffer_to_buffer(src, 0, &rb, 0, need);
        }
        let idx = self.gpu.queue.submit([enc.finish()]);
        self.stats.submits += 1;
        self.stats.dispatches += d as u64;
        if bytes == 0 {
            self.gpu.take_error()?;
            return Ok(Vec::new());
        }
        let Some((rb, _)) = &self.readback else {
            return Err(Error::Readback("no readback buffer".into()));
        };
        map_read(&self.gpu, rb, bytes, Some(idx)).await
    }

    /// Logits (n, vocab) of `tokens` after what the cache holds (the last position's only
    /// with `last_only`), appending them to the cache; the adapters are `reg`'s. Blocks on the
    /// device (native only; see [`GpuModel::forward_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward(
        &mut self,
        table: &ModuleTable,
        reg: &AdapterRegistry,
        tokens: &[u32],
        last_only: bool,
    ) -> Result<Tensor> {
        pollster::block_on(self.forward_async(table, reg, tokens, last_only))
    }

    /// [`GpuModel::forward`] as a future: awaits each read-back instead of blocking, so it runs
    /// in the browser (WebGPU) as well as under any executor natively.
    pub async fn forward_async(
        &mut self,
        table: &ModuleTable,
        reg: &AdapterRegistry,
        tokens: &[u32],
        last_only: bool,
    ) -> Result<Tensor> {
        self.sync(table, reg)?;
        self.check_tokens(tokens)?;
        let v = self.dims.vocab;
        let mut out: Vec<f32> = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk).collect();
        let nchunks = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let key = self.run_chunk(c, last_only, Pick::None)?;
            let rows = if last_only { 1 } else { c.len() };
            let logits = self.act(B::Logits).clone();
            let need_read = !last_only || i + 1 == nchunks;
            let bytes = self
                .submit(&key, need_read.then_some((&logits, (rows * v * 4) as u64)))
                .await?;
            self.len += c.len();
            if need_read {
                out.extend_from_slice(bytemuck::cast_slice(&bytes[..rows * v * 4]));
            }
        }
        let rows = out.len() / v.max(1);
        Ok(Tensor::from_vec(out, (rows, v), &candle_core::Device::Cpu)?)
    }

    /// Generation from an empty cache with the next token chosen on the GPU: the prompt in
    /// chunks, then one submit per token that reads back only the chosen id. Blocks on the
    /// device (native only; see [`GpuModel::generate_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        table: &ModuleTable,
        reg: &AdapterRegistry,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        pick: DevicePick,
        on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        pollster::block_on(self.generate_async(
            table,
            reg,
            prompt,
            max_new_tokens,
            eos,
            pick,
            on_token,
        ))
    }

    /// [`GpuModel::generate`] as a future: awaits each read-back instead of blocking (in the
    /// browser, `on_token` is called between returns to the event loop).
    #[allow(clippy::too_many_arguments)]
    pub async fn generate_async(
        &mut self,
        table: &ModuleTable,
        reg: &AdapterRegistry,
        prompt: &[u32],
        max_new_tokens: usize,
        eos: &[u32],
        pick: DevicePick,
        mut on_token: impl FnMut(u32),
    ) -> Result<Vec<u32>> {
        self.sync(table, reg)?;
        self.reset();
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            return Ok(out);
        }
        self.check_tokens(prompt)?;
        // prompt: all chunks but the last without logits
        let chunks: Vec<&[u32]> = prompt.chunks(self.chunk).collect();
        let Some((last_chunk, head)) = chunks.split_last() else {
            return Ok(out);
        };
        for c in head {
            let key = self.run_chunk(c, true, Pick::None)?;
            self.submit(&key, None).await?;
            self.len += c.len();
        }
        self.decode_pipelined(
            last_chunk,
            pick.pick(),
            max_new_tokens,
            eos,
            &mut out,
            &mut on_token,
        )
        .await?;
        Ok(out)
    }

    /// Decode with the sampled id never leaving the GPU between steps: step k+1 (whose input
    /// is the id step k's argmax wrote into `ids`) is submitted before step k's id is read
    /// back, so the read-back round trip overlaps the next token's work. A step enqueued past
    /// EOS is discarded (the cache length is the host's, rewritten before every step).
    async fn decode_pipelined(
        &mut self,
        prompt_tail: &[u32],
        pick: Pick,
        max_new_tokens: usize,
        eos: &[u32],
        out: &mut Vec<u32>,
        on_token: &mut impl FnMut(u32),
    ) -> Result<()> {
        let key = self.run_chunk(prompt_tail, true, pick)?;
        let mut pending = self.submit_id(&key, 0)?;
        self.len += prompt_tail.len();
        let mut slot = 0;
        let decode_key = PlanKey::decode(pick);
        loop {
            let more = out.len() + 1 < max_new_tokens && self.len < self.cap;
            let next = if more {
                self.plan(decode_key, pick)?;
                self.write_len()?;
                Some(self.submit_id(&decode_key, 1 - slot)?)
            } else {
                None
            };
            let id = self.read_id(slot, pending).await?;
            out.push(id);
            on_token(id);
            match next {
                Some(n) if !eos.contains(&id) => {
                    self.len += 1;
                    pending = n;
                    slot = 1 - slot;
                }
                _ => return Ok(()),
            }
        }
    }

    /// Submits a planned step and copies the chosen id into read-back slot `slot`.
    fn submit_id(&mut self, key: &PlanKey, slot: usize) -> Result<wgpu::SubmissionIndex> {
        let mut enc = self
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let d = self.encode(key, &mut enc);
        enc.copy_buffer_to_buffer(&self.ids, 0, &self.id_slots[slot], 0, 4);
        let idx = self.gpu.queue.submit([enc.finish()]);
        self.stats.submits += 1;
        self.stats.dispatches += d as u64;
        Ok(idx)
    }

    async fn read_id(&self, slot: usize, idx: wgpu::SubmissionIndex) -> Result<u32> {
        let b = map_read(&self.gpu, &self.id_slots[slot], 4, Some(idx)).await?;
        match b[..] {
            [a, b, c, d] => Ok(u32::from_le_bytes([a, b, c, d])),
            _ => Err(Error::Readback(format!("{} bytes for an id", b.len()))),
        }
    }
}
