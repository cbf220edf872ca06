//! Weight matrices in the GPU layouts of `shaders/formats/`: GGML blocks are split into u32
//! words of packed values and a separate scale array, so that every load is a whole aligned
//! word (an 18- or 34-byte block is not) while the bytes per weight stay those of the file.
//! Blocks that are whole words (Q5_1, Q2_K, Q4_K, Q5_K) are kept as they are; Q5_0, Q3_K and
//! Q6_K (22, 110 and 210 bytes) move their f16 scale `d` into the scale array.

use graft_quant::{QMatrix, QType};
use wgpu::util::DeviceExt;

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::{Fmt, WeightDesc};

/// A matrix packed for the GPU, still on the host.
#[derive(Debug, Clone)]
pub struct Packed {
    pub fmt: Fmt,
    pub desc: WeightDesc,
    /// Chunks of 8 columns the kernels may read with `w8` (the rest go through `w1`).
    pub c8n: u32,
    pub wq: Vec<u32>,
    pub ws: Vec<u32>,
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

fn f16_pairs(halves: &[u16]) -> Vec<u32> {
    halves
        .chunks(2)
        .map(|c| c[0] as u32 | (c.get(1).copied().unwrap_or(0) as u32) << 16)
        .collect()
}

fn to_u32(v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::LimitExceeded {
        what: "elements in one matrix",
        need: v as u64,
        limit: u32::MAX as u64,
    })
}

impl Packed {
    /// A dense f32 (rows, cols) matrix.
    pub fn f32(rows: usize, cols: usize, values: &[f32]) -> Result<Packed> {
        Ok(Packed {
            fmt: Fmt::F32,
            desc: WeightDesc {
                rows: to_u32(rows)?,
                cols: to_u32(cols)?,
                row_words: to_u32(cols)?,
                row_swords: 0,
            },
            c8n: to_u32(cols / 8)?,
            wq: values.iter().map(|v| v.to_bits()).collect(),
            ws: Vec::new(),
        })
    }

    /// A dense matrix rounded to f16.
    pub fn f16(rows: usize, cols: usize, values: &[f32]) -> Result<Packed> {
        let mut wq = Vec::with_capacity(rows * cols.div_ceil(2));
        for r in 0..rows {
            let row: Vec<u16> = values[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect();
            wq.extend(f16_pairs(&row));
        }
        Ok(Packed {
            fmt: Fmt::F16,
            desc: WeightDesc {
                rows: to_u32(rows)?,
                cols: to_u32(cols)?,
                row_words: to_u32(cols.div_ceil(2))?,
                row_swords: 0,
            },
            c8n: to_u32(cols / 8)?,
            wq,
            ws: Vec::new(),
        })
    }

    /// A quantized matrix in its GPU layout.
    pub fn from_qmatrix(q: &QMatrix) -> Result<Packed> {
        let (rows, cols) = (q.rows, q.cols);
        let data: &[u8] = &q.data;
        let rb = data.len().checked_div(rows).unwrap_or(0);
        let mut wq = Vec::new();
        let mut ws = Vec::new();
        let (fmt, row_words, row_swords, c8n) = match q.qtype {
            QType::F32 => (Fmt::F32, cols, 0, cols / 8),
            QType::F16 | QType::BF16 => {
                for r in 0..rows {
                    wq.extend(words(&data[r * rb..(r + 1) * rb]));
                }
                let f = if q.qtype == QType::F16 {
                    Fmt::F16
                } else {
                    Fmt::Bf16
                };
                (f, cols.div_ceil(2), 0, cols / 8)
            }
            QType::Int8 => {
                for r in 0..rows {
                    wq.extend(words(&data[r * rb..(r + 1) * rb]));
                }
                ws = q.scales.iter().map(|s| s.to_bits()).collect();
                (Fmt::Int8, cols.div_ceil(4), 1, cols / 8)
            }
            QType::Nf4 => {
                wq = words(data);
                ws = q.scales.iter().map(|s| s.to_bits()).collect();
                let c8n = if cols % 8 == 0 { cols / 8 } else { 0 };
                (Fmt::Nf4, 0, 0, c8n)
            }
            QType::Q8_0 | QType::Q4_0 | QType::Q4_1 => {
                let blocks = cols / 32;
                let (bb, hdr) = match q.qtype {
                    QType::Q8_0 => (34, 2),
                    QType::Q4_0 => (18, 2),
                    _ => (20, 4),
                };
                let mut scales16: Vec<u16> = Vec::new();
                for r in 0..rows {
                    let row = &data[r * rb..(r + 1) * rb];
                    let mut rs: Vec<u16> = Vec::with_capacity(blocks * 2);
                    for b in row.chunks_exact(bb) {
                        rs.push(u16::from_le_bytes([b[0], b[1]]));
                        if hdr == 4 {
                            rs.push(u16::from_le_bytes([b[2], b[3]]));
                        }
                        wq.extend(words(&b[hdr..]));
                    }
                    if hdr == 2 && rs.len() % 2 == 1 {
                        rs.push(0); // rows keep whole words of scales
                    }
                    scales16.extend(rs);
                }
                ws = f16_pairs(&scales16);
                let (fmt, rw, rsw) = match q.qtype {
                    QType::Q8_0 => (Fmt::Q8_0, blocks * 8, blocks.div_ceil(2)),
                    QType::Q4_0 => (Fmt::Q4_0, blocks * 4, blocks.div_ceil(2)),
                    _ => (Fmt::Q4_1, blocks * 4, blocks),
                };
                (fmt, rw, rsw, cols / 8)
            }
            QType::Q5_0
            | QType::Q5_1
            | QType::Q2_K
            | QType::Q3_K
            | QType::Q4_K
            | QType::Q5_K
            | QType::Q6_K => {
                let (bl, bb) = (q.qtype.block_len(), q.qtype.block_bytes());
                let blocks = cols / bl;
                // (format, where the f16 d sits in a block that is not whole words)
                let (fmt, d_at) = match q.qtype {
                    QType::Q5_0 => (Fmt::Q5_0, Some(0)),
                    QType::Q5_1 => (Fmt::Q5_1, None),
                    QType::Q2_K => (Fmt::Q2K, None),
                    QType::Q3_K => (Fmt::Q3K, Some(108)),
                    QType::Q4_K => (Fmt::Q4K, None),
                    QType::Q5_K => (Fmt::Q5K, None),
                    _ => (Fmt::Q6K, Some(208)),
                };
                let mut scales16: Vec<u16> = Vec::new();
                for r in 0..rows {
                    let row = &data[r * rb..(r + 1) * rb];
                    let mut rs: Vec<u16> = Vec::with_capacity(blocks + 1);
                    for b in row.chunks_exact(bb) {
                        match d_at {
                            Some(at) => {
                                rs.push(u16::from_le_bytes([b[at], b[at + 1]]));
                                wq.extend(words(&b[..at]));
                                wq.extend(words(&b[at + 2..]));
                            }
                            None => wq.extend(words(b)),
                        }
                    }
                    if rs.len() % 2 == 1 {
                        rs.push(0); // rows keep whole words of scales
                    }
                    scales16.extend(rs);
                }
                ws = f16_pairs(&scales16);
                let (rw, rsw) = match d_at {
                    Some(_) => (blocks * (bb - 2) / 4, blocks.div_ceil(2)),
                    None => (blocks * bb / 4, 0),
                };
                (fmt, rw, rsw, cols / 8)
            }
        };
        if q.qtype == QType::F32 {
            wq = words(data);
        }
        Ok(Packed {
            fmt,
            desc: WeightDesc {
                rows: to_u32(rows)?,
                cols: to_u32(cols)?,
                row_words: to_u32(row_words)?,
                row_swords: to_u32(row_swords)?,
            },
            c8n: to_u32(c8n)?,
            wq,
            ws,
        })
    }

    /// Stacks matrices of one format and width row-wise (q, k and v as one matrix). `None`
    /// when their layouts cannot be joined (NF4 blocks straddling the seam).
    pub fn concat(parts: &[Packed]) -> Option<Packed> {
        let first = parts.first()?;
        let same = parts.iter().all(|p| {
            p.fmt == first.fmt
                && p.desc.cols == first.desc.cols
                && p.desc.row_words == first.desc.row_words
                && p.desc.row_swords == first.desc.row_swords
        });
        if !same {
            return None;
        }
        if first.fmt == Fmt::Nf4
            && parts
                .iter()
                .any(|p| !(p.desc.rows as u64 * p.desc.cols as u64).is_multiple_of(64))
        {
            return None;
        }
        let rows: u32 = parts.iter().map(|p| p.desc.rows).sum();
        Some(Packed {
            fmt: first.fmt,
            desc: WeightDesc { rows, ..first.desc },
            c8n: first.c8n,
            wq: parts.iter().flat_map(|p| p.wq.iter().copied()).collect(),
            ws: parts.iter().flat_map(|p| p.ws.iter().copied()).collect(),
        })
    }

    /// Rows r0..r1 as a matrix of their own (`None` for NF4, whose blocks run across rows).
    pub fn slice_rows(&self, r0: usize, r1: usize) -> Option<Packed> {
        if self.fmt == Fmt::Nf4 || r0 > r1 || r1 > self.desc.rows as usize {
            return None;
        }
        let (rw, rsw) = (self.desc.row_words as usize, self.desc.row_swords as usize);
        Some(Packed {
            fmt: self.fmt,
            desc: WeightDesc {
                rows: (r1 - r0) as u32,
                ..self.desc
            },
            c8n: self.c8n,
            wq: self.wq.get(r0 * rw..r1 * rw)?.to_vec(),
            ws: if rsw == 0 {
                self.ws.clone()
            } else {
                self.ws.get(r0 * rsw..r1 * rsw)?.to_vec()
            },
        })
    }

    /// Row ranges of at most `limit` bytes of values and of scales each, as (first row, rows).
    pub fn row_parts(&self, limit: u64) -> Result<Vec<(usize, usize)>> {
        let rows = self.desc.rows as usize;
        let per_row = 4
            * (self.desc.row_words as u64)
                .max(self.desc.row_swords as u64)
                .max(1);
        let whole = 4 * (self.wq.len().max(self.ws.len())) as u64;
        if whole <= limit {
            return Ok(vec![(0, rows)]);
        }
        let step = (limit / per_row) as usize;
        if step == 0 || self.fmt == Fmt::Nf4 {
            return Err(Error::LimitExceeded {
                what: "bytes in one storage binding (a weight matrix that cannot be split)",
                need: whole,
                limit,
            });
        }
        Ok((0..rows)
            .step_by(step)
            .map(|r| (r, step.min(rows - r)))
            .collect())
    }

    /// Bytes of weights a pass over the matrix reads.
    pub fn nbytes(&self) -> u64 {
        4 * (self.wq.len() + self.ws.len()) as u64
    }
}

/// A matrix resident on the GPU.
#[derive(Debug, Clone)]
pub struct GpuWeight {
    pub fmt: Fmt,
    pub desc: WeightDesc,
    pub c8n: u32,
    pub wq: wgpu::Buffer,
    pub ws: wgpu::Buffer,
    pub nbytes: u64,
}

/// A storage buffer holding `data` (at least four words: an empty binding is invalid, and a
/// binding must hold at least one element of the shader's array, up to a vec4).
pub fn storage(gpu: &Gpu, label: &'static str, data: &[u32]) -> Result<wgpu::Buffer> {
    let bytes = (data.len().max(4) * 4) as u64;
    gpu.check_binding(label, bytes)?;
    let buf = if data.len() < 4 {
        let mut padded = [0u32; 4];
        padded[..data.len()].copy_from_slice(data);
        gpu.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(&padded),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            })
    } else {
        gpu.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
            })
    };
    Ok(buf)
}

/// f32 data as a storage buffer.
pub fn storage_f32(gpu: &Gpu, label: &'static str, data: &[f32]) -> Result<wgpu::Buffer> {
    let w: &[u32] = bytemuck::cast_slice(data);
    storage(gpu, label, w)
}

impl GpuWeight {
    /// Uploads `p` as one or more row ranges, each within the device's binding limit.
    pub fn upload_split(gpu: &Gpu, p: &Packed) -> Result<Vec<(usize, GpuWeight)>> {
        let limit = gpu.binding_limit();
        let parts = p.row_parts(limit)?;
        if parts.len() == 1 {
            return Ok(vec![(0, GpuWeight::upload(gpu, p)?)]);
        }
        parts
            .into_iter()
            .map(|(r0, n)| {
                let part = p.slice_rows(r0, r0 + n).ok_or(Error::LimitExceeded {
                    what: "bytes in one storage binding",
                    need: p.nbytes(),
                    limit,
                })?;
                Ok((r0, GpuWeight::upload(gpu, &part)?))
            })
            .collect()
    }

    pub fn upload(gpu: &Gpu, p: &Packed) -> Result<GpuWeight> {
        Ok(GpuWeight {
            fmt: p.fmt,
            desc: p.desc,
            c8n: p.c8n,
            wq: storage(gpu, "weights", &p.wq)?,
            ws: storage(gpu, "scales", &p.ws)?,
            nbytes: p.nbytes(),
        })
    }
}
