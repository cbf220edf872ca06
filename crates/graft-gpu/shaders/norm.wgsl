// RMSNorm (Llama) and LayerNorm (OPT) over each token's row, one workgroup per token, as
// transformers computes them in f32: x / sqrt(mean(x²) + eps) · w, and
// (x − mean) / sqrt(var + eps) · w + b. With N_ACCUM the result is added to y (Gemma's norm
// on a branch's output before the residual add). Gemma's `1 + w` is added on upload.

const N_RMS: u32 = 1u;
const N_BIAS: u32 = 2u;
const N_ACCUM: u32 = 4u;

struct Params {
    n: u32,
    dim: u32,
    x_stride: u32,
    y_stride: u32,
    flags: u32,
    w_off: u32,
    b_off: u32,
    eps: f32,
    // the first input row (the last position alone, for generation's head)
    x_row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.x;
    let xb = (t + P.x_row0) * P.x_stride;
    let dimf = f32(P.dim);
    var mean = 0.0;
    if ((P.flags & N_RMS) == 0u) {
        var s = 0.0;
        for (var i = li; i < P.dim; i += WG) {
            s += x[xb + i];
        }
        mean = reduce_sum(li, s) / dimf;
    }
    var sq = 0.0;
    for (var i = li; i < P.dim; i += WG) {
        let c = x[xb + i] - mean;
        sq += c * c;
    }
    let inv = 1.0 / sqrt(reduce_sum(li, sq) / dimf + P.eps);
    let has_bias = (P.flags & N_BIAS) != 0u;
    for (var i = li; i < P.dim; i += WG) {
        var v = (x[xb + i] - mean) * inv * aux[P.w_off + i];
        if (has_bias) {
            v += aux[P.b_off + i];
        }
        let yi = t * P.y_stride + i;
        if ((P.flags & N_ACCUM) != 0u) {
            v += y[yi];
        }
        y[yi] = v;
    }
}
