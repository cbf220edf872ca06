// Embedding lookup: y[t] = E[id_t] (+ Σ_j A[j, id_t] · B[:, j] for LoRA on the embedding, scale
// folded into B) (+ y[t] with ACCUM, e.g. OPT's learned positions added to the tokens). The
// table may be in any weight format (decoder appended), e.g. SmolLM2's Q8_0 `token_embd`.
// With POSITIONS the ids are positions: state[0] (the cache length) + t + pos_offset.
// LoRA's A is (r, total_rows) row-major and B (cols, r), both f32.

const E_LORA: u32 = 1u;
const E_ACCUM: u32 = 2u;
const E_POSITIONS: u32 = 4u;
const E_SCALE: u32 = 8u;

struct Params {
    wd: WeightDesc,
    n: u32,
    y_stride: u32,
    flags: u32,
    lora_r: u32,
    pos_offset: u32,
    // A table larger than one binding is split by rows: this part holds rows row0 ..
    // row0 + wd.rows of `total_rows`, and writes only the tokens whose ids fall in it.
    row0: u32,
    total_rows: u32,
    // E_SCALE: multiplies the row (Gemma's √hidden), adapters included
    scale: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read> ws: array<u32>;
@group(0) @binding(4) var<storage, read> la: array<f32>;
@group(0) @binding(5) var<storage, read> lb: array<f32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let t = gid.y;
    if (d >= P.wd.cols || t >= P.n) {
        return;
    }
    var id: u32;
    if ((P.flags & E_POSITIONS) != 0u) {
        id = state[0] + t + P.pos_offset;
    } else {
        id = ids[t];
    }
    // Out-of-range ids are refused on the host; clamp so a stray id can never read out of bounds.
    id = min(id, P.total_rows - 1u);
    if (id < P.row0 || id >= P.row0 + P.wd.rows) {
        return;
    }
    var v = w1(id - P.row0, d);
    if ((P.flags & E_LORA) != 0u) {
        for (var j = 0u; j < P.lora_r; j++) {
            v += la[j * P.total_rows + id] * lb[d * P.lora_r + j];
        }
    }
    if ((P.flags & E_SCALE) != 0u) {
        v *= P.scale;
    }
    let yi = t * P.y_stride + d;
    if ((P.flags & E_ACCUM) != 0u) {
        v += y[yi];
    }
    y[yi] = v;
}
