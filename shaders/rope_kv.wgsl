// Rotary embeddings (Hugging Face's rotate-half layout) on the queries in place, and the keys
// rotated and written with the values into the layer's KV cache at positions state[0] + t.
// One workgroup per (head, token); heads 0..nh are query heads, nh..nh+nkv are KV heads. The
// cos/sin table is computed on the host exactly as the CPU path computes it.

const R_ROPE: u32 = 1u;

struct Params {
    n: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    qkv_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    flags: u32,
    cap: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> kc: array<f32>;
@group(0) @binding(5) var<storage, read_write> vc: array<f32>;

override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let head = wid.x;
    let t = wid.y;
    let pos = state[0] + t;
    let half = P.hd / 2u;
    let rot = (P.flags & R_ROPE) != 0u;
    let row = t * P.qkv_stride;
    if (head < P.nh) {
        if (!rot) {
            return;
        }
        let b = row + P.q_off + head * P.hd;
        for (var j = li; j < half; j += WG) {
            let cs = rope[pos * half + j];
            let x1 = qkv[b + j];
            let x2 = qkv[b + j + half];
            qkv[b + j] = x1 * cs.x - x2 * cs.y;
            qkv[b + j + half] = x2 * cs.x + x1 * cs.y;
        }
        return;
    }
    let g = head - P.nh;
    if (pos >= P.cap) {
        return;
    }
    let kb = row + P.k_off + g * P.hd;
    let vb = row + P.v_off + g * P.hd;
    let cb = pos * P.nkv * P.hd + g * P.hd;
    for (var j = li; j < half; j += WG) {
        let x1 = qkv[kb + j];
        let x2 = qkv[kb + j + half];
        if (rot) {
            let cs = rope[pos * half + j];
            kc[cb + j] = x1 * cs.x - x2 * cs.y;
            kc[cb + j + half] = x2 * cs.x + x1 * cs.y;
        } else {
            kc[cb + j] = x1;
            kc[cb + j + half] = x2;
        }
        vc[cb + j] = qkv[vb + j];
        vc[cb + j + half] = qkv[vb + j + half];
    }
    // an odd head_dim leaves one last value
    if ((P.hd & 1u) == 1u && li == 0u) {
        kc[cb + P.hd - 1u] = qkv[kb + P.hd - 1u];
        vc[cb + P.hd - 1u] = qkv[vb + P.hd - 1u];
    }
}
