// Causal attention with a KV cache and grouped-query heads, for prefill (n queries) and decode
// (n = 1). One workgroup per (head, query); the keys are walked in tiles of TILE positions with
// an online softmax (running max and sum), so the whole history never sits in workgroup memory.
// Query t sits at position state[0] + t and sees positions start ..= itself, where start is 0
// or, with a sliding window, position + 1 − window.

struct Params {
    n: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    q_stride: u32,
    q_off: u32,
    out_stride: u32,
    window: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(4) var<storage, read> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
// head_dim ≤ MAX_HD (checked on the host)
const MAX_HD: u32 = 256u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> sc: array<f32, TILE>;

@compute @workgroup_size(TILE)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let hd = P.hd;
    let kvh = h / (P.nh / P.nkv);
    let kv_stride = P.nkv * hd;
    let qpos = state[0] + t;
    var start = 0u;
    if (P.window > 0u && qpos + 1u > P.window) {
        start = qpos + 1u - P.window;
    }
    let qb = t * P.q_stride + P.q_off + h * hd;
    for (var d = li; d < hd; d += TILE) {
        qs[d] = q[qb + d];
    }
    workgroupBarrier();
    var m = NEG;
    var l = 0.0;
    var o = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var tile = start; tile <= qpos; tile += TILE) {
        let j = tile + li;
        var s = NEG;
        if (j <= qpos) {
            let kb = j * kv_stride + kvh * hd;
            var acc = 0.0;
            for (var d = 0u; d < hd; d++) {
                acc += qs[d] * kc[kb + d];
            }
            s = acc * P.scale;
        }
        sc[li] = s;
        workgroupBarrier();
        let count = min(TILE, qpos + 1u - tile);
        var tm = m;
        for (var k = 0u; k < count; k++) {
            tm = max(tm, sc[k]);
        }
        let corr = exp(m - tm);
        l *= corr;
        for (var u = 0u; u < 4u; u++) {
            o[u] *= corr;
        }
        for (var k = 0u; k < count; k++) {
            let p = exp(sc[k] - tm);
            l += p;
            let vb = (tile + k) * kv_stride + kvh * hd;
            for (var u = 0u; u < 4u; u++) {
                let d = li + u * TILE;
                if (d < hd) {
                    o[u] += p * vc[vb + d];
                }
            }
        }
        m = tm;
        workgroupBarrier();
    }
    let ob = t * P.out_stride + h * hd;
    for (var u = 0u; u < 4u; u++) {
        let d = li + u * TILE;
        if (d < hd) {
            out[ob + d] = o[u] / l;
        }
    }
}
