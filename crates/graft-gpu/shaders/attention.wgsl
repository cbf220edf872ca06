// Causal attention with a KV cache and grouped-query heads, for prefill (n queries) and decode
// (n = 1), with the rotary embedding and the cache write folded in (one dispatch per layer
// instead of two). One workgroup per (head, query). Query t sits at position state[0] + t.
//
// - The query is rotated (Hugging Face's rotate-half layout; with an odd head_dim the last
//   value is left as is, as on the CPU) into workgroup memory.
// - Keys and values of positions before state[0] come from the cache; those of this call's
//   tokens come straight from the q/k/v rows, their keys rotated here. No workgroup reads a
//   cache position this dispatch writes.
// - The first query head of each KV group writes its token's rotated key and value into the
//   cache at position state[0] + t (below `cap`), for later calls.
// - Keys are walked in tiles of TILE positions with an online softmax (running max and sum), so
//   the history never has to fit in workgroup memory. A query sees positions start ..= itself,
//   where start is 0 or, with a sliding window, position + 1 − window.
// The cos/sin table is computed on the host exactly as the CPU path computes it; with R_LONG
// it holds a second set (LongRoPE's long factors) at rows cap.., used for every token of a call
// whose last position is past `long_after`, as transformers picks the set per call.
// - With R_QKNORM each head of q and k is RMS-normalised (weights at aux[qn_off..],
//   aux[kn_off..]) before the rotation (Qwen3, Gemma 3).
// - With R_SOFTCAP the scores become softcap · tanh(s / softcap) (Gemma 2).
// - With R_ROWS (a batched pass of several sequences) each query row t has its own sequence:
//   `state` is then the pass's row table, row t at state[8t ..] = (cache slot, the sequence's
//   first position in this pass, its first row, its row count); the caches hold `cap`
//   positions per slot, and the query attends to its own slot and its own sequence's rows.

const R_ROPE: u32 = 1u;
const R_QKNORM: u32 = 2u;
const R_SOFTCAP: u32 = 4u;
const R_LONG: u32 = 8u;
const R_ROWS: u32 = 16u;
const ROW_WORDS: u32 = 8u;

struct Params {
    n: u32,
    nh: u32,
    nkv: u32,
    hd: u32,
    qkv_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    out_stride: u32,
    window: u32,
    flags: u32,
    cap: u32,
    scale: f32,
    softcap: f32,
    qn_off: u32,
    kn_off: u32,
    eps: f32,
    long_after: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> state: array<u32>;
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> qkv: array<f32>;
@group(0) @binding(4) var<storage, read_write> kc: array<f32>;
@group(0) @binding(5) var<storage, read_write> vc: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> aux: array<f32>;

const TILE: u32 = 64u;
// head_dim ≤ MAX_HD (checked on the host)
const MAX_HD: u32 = 256u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, MAX_HD>;
var<workgroup> sc: array<f32, TILE>;
// the query's sequence uses LongRoPE's long set (its last position in this pass is past
// long_after)
var<private> long_set: bool;

// 1 / rms of the head starting at qkv[b] when its norm's weights are at aux[wo..] (else 1).
fn head_inv(b: u32, wo: u32) -> f32 {
    if ((P.flags & R_QKNORM) == 0u) {
        return 1.0;
    }
    var s = 0.0;
    for (var d = 0u; d < P.hd; d++) {
        let x = qkv[b + d];
        s += x * x;
    }
    return 1.0 / sqrt(s / f32(P.hd) + P.eps);
}

// Value d of the head starting at qkv[b], normalised (inv from head_inv).
fn hval(b: u32, d: u32, inv: f32, wo: u32) -> f32 {
    if ((P.flags & R_QKNORM) == 0u) {
        return qkv[b + d];
    }
    return qkv[b + d] * inv * aux[wo + d];
}

// Value d of the head starting at qkv[b], normalised and rotated for position `pos`.
fn rotated(b: u32, d: u32, pos: u32, inv: f32, wo: u32) -> f32 {
    let half = P.hd / 2u;
    let x = hval(b, d, inv, wo);
    if ((P.flags & R_ROPE) == 0u || d >= 2u * half) {
        return x;
    }
    var row = pos;
    if (long_set) {
        row = pos + P.cap;
    }
    let j = d % half;
    let cs = rope[row * half + j];
    if (d < half) {
        return x * cs.x - hval(b, d + half, inv, wo) * cs.y;
    }
    return x * cs.x + hval(b, d - half, inv, wo) * cs.y;
}

@compute @workgroup_size(TILE)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let t = wid.y;
    let hd = P.hd;
    let rep = P.nh / P.nkv;
    let kvh = h / rep;
    let kv_stride = P.nkv * hd;
    // the query's sequence: its cache slot, first position and first row in this pass
    var p0 = state[0];
    var row0 = 0u;
    var seg_n = P.n;
    var slot = 0u;
    if ((P.flags & R_ROWS) != 0u) {
        let rb = t * ROW_WORDS;
        slot = state[rb];
        p0 = state[rb + 1u];
        row0 = state[rb + 2u];
        seg_n = state[rb + 3u];
    }
    long_set = (P.flags & R_LONG) != 0u && p0 + seg_n > P.long_after;
    let slot_base = slot * P.cap * kv_stride;
    let qpos = p0 + (t - row0);
    var start = 0u;
    if (P.window > 0u && qpos + 1u > P.window) {
        start = qpos + 1u - P.window;
    }
    let qb = t * P.qkv_stride + P.q_off + h * hd;
    let qinv = head_inv(qb, P.qn_off);
    for (var d = li; d < hd; d += TILE) {
        qs[d] = rotated(qb, d, qpos, qinv, P.qn_off);
    }
    if (h % rep == 0u && qpos < P.cap) {
        let kb = t * P.qkv_stride + P.k_off + kvh * hd;
        let vb = t * P.qkv_stride + P.v_off + kvh * hd;
        let cb = slot_base + qpos * kv_stride + kvh * hd;
        let kinv = head_inv(kb, P.kn_off);
        for (var d = li; d < hd; d += TILE) {
            kc[cb + d] = rotated(kb, d, qpos, kinv, P.kn_off);
            vc[cb + d] = qkv[vb + d];
        }
    }
    workgroupBarrier();
    var m = NEG;
    var l = 0.0;
    var o = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var tile = start; tile <= qpos; tile += TILE) {
        let j = tile + li;
        var s = NEG;
        if (j <= qpos) {
            var acc = 0.0;
            if (j < p0) {
                let kb = slot_base + j * kv_stride + kvh * hd;
                for (var d = 0u; d < hd; d++) {
                    acc += qs[d] * kc[kb + d];
                }
            } else {
                let kb = (row0 + j - p0) * P.qkv_stride + P.k_off + kvh * hd;
                let kinv = head_inv(kb, P.kn_off);
                for (var d = 0u; d < hd; d++) {
                    acc += qs[d] * rotated(kb, d, j, kinv, P.kn_off);
                }
            }
            s = acc * P.scale;
            if ((P.flags & R_SOFTCAP) != 0u) {
                s = P.softcap * tanh_(s / P.softcap);
            }
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
            let jj = tile + k;
            for (var u = 0u; u < 4u; u++) {
                let d = li + u * TILE;
                if (d < hd) {
                    var v: f32;
                    if (jj < p0) {
                        v = vc[slot_base + jj * kv_stride + kvh * hd + d];
                    } else {
                        v = qkv[(row0 + jj - p0) * P.qkv_stride + P.v_off + kvh * hd + d];
                    }
                    o[u] += p * v;
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
