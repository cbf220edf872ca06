// The next token, chosen on the GPU so that decode reads back nothing but one id: the argmax of
// a logits row (the first index on ties, as torch.argmax), or with TEMPERATURE a sample from
// softmax(logits / T) by the Gumbel-max trick, with noise from a counter-based hash of
// (seed, position, index). The id goes to ids[0] (the next step's input) and to
// history[state[0]]; then the cache length state[0] advances by `advance`.

const S_GUMBEL: u32 = 1u;

struct Params {
    len: u32,
    row_off: u32,
    flags: u32,
    seed: u32,
    inv_temp: f32,
    advance: u32,
    history_len: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> history: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;

const WG: u32 = 256u;
var<workgroup> bv: array<f32, WG>;
var<workgroup> bi: array<u32, WG>;

fn hash(a: u32) -> u32 {
    var x = a;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32) {
    let pos = state[0];
    let gumbel = (P.flags & S_GUMBEL) != 0u;
    var best = -3.4e38;
    var besti = 0xffffffffu;
    for (var i = li; i < P.len; i += WG) {
        var v = logits[P.row_off + i];
        if (gumbel) {
            let h = hash(hash(hash(P.seed) ^ pos) ^ i);
            // u in (0, 1): 23 bits, so that k + 0.5 is exact in f32 (with 24 bits the largest
            // k + 0.5 rounds up to 2^24, u = 1 and the noise is infinite)
            let u = (f32(h >> 9u) + 0.5) / 8388608.0;
            // WGSL's log is only ~5e-7 accurate near 1: keep −log(u) positive
            v = v * P.inv_temp - log(max(-log(u), 1e-30));
        }
        if (v > best || besti == 0xffffffffu) {
            best = v;
            besti = i;
        }
    }
    bv[li] = best;
    bi[li] = besti;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            let ov = bv[li + s];
            let oi = bi[li + s];
            if (oi != 0xffffffffu && (ov > bv[li] || (ov == bv[li] && oi < bi[li]) || bi[li] == 0xffffffffu)) {
                bv[li] = ov;
                bi[li] = oi;
            }
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let id = bi[0];
        ids[0] = id;
        if (pos < P.history_len) {
            history[pos] = id;
        }
        state[0] = pos + P.advance;
    }
}
