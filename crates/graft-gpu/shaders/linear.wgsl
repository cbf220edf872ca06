// y = epilogue(W · x) for `n` tokens: the matmul (prefill) and mat-vec (decode) of every Linear
// module, with the adapters folded in. W is (rows, cols) in any format (the decoder appended to
// this file); x is (n, cols) with row stride x_stride.
//
// A workgroup computes RPW output rows for TN tokens (TN is a per-variant constant in the
// preamble; 1 for decode). The WG / RPW threads of a row split the columns in chunks of 8 and
// reduce through workgroup memory, which works on every device (subgroups are not required).
//
// Epilogue, in PEFT's order for one module (see ARCHITECTURE.md, "adapters on the GPU"):
//   v = Σ W·(x ⊙ in_scale)          IA3 on a feed-forward input
//   v = v · dora                    DoRA's m / ‖W + s·B·A‖ (at most one DoRA adapter)
//   v = v + bias
//   v = v · out_scale               IA3 on the output
//   v = v + post_bias               lora_bias terms, s·b_B
//   v = v + Σ_j t[j] · B[row, j]    LoRA's expand; t = x·Aᵀ came from a shrink dispatch and the
//                                   scale (and DoRA factor) is folded into B at load
//   y = v (+ y)                     ACCUM: the residual add
//
// Several modules that share an input (q, k, v; gate, up) run as one dispatch over their
// concatenated rows; `seg` says where each module's rows end and where its LoRA ranks sit.
//
// The input may be transformed as it is read (`xform`), which saves the dispatch that would
// otherwise write it out: the RMSNorm / LayerNorm before q/k/v and gate/up (each workgroup
// reduces its tokens' rows first), or the activation before down_proj / fc2 (SiLU(gate)·up
// with up at column + act_off, ReLU, GELU).
//
// Mixed adapters (F_MIXED): in a batched pass every token carries its adapter's slot
// (rowinfo[ad_off + tok · ad_stride], NO_ADAPTER for none), and the epilogue's adapter terms
// (flags, IA3 scales, DoRA factor, lora_bias, LoRA segments) come from that slot's descriptor
// (rowinfo[desc_off + slot · DESC_WORDS ..]) with its vectors in `lb`, instead of from P and
// `aux`; each token gets the operations, in the order, it would get with that adapter alone.
// The shrink of a mixed pass (F_GATHER, one token per workgroup) reads the token's own slot
// of the stacked A rows (rows slot · gather_rows ..), BGMV-style.

const F_BIAS: u32 = 1u;
const F_OUT_SCALE: u32 = 2u;
const F_IN_SCALE: u32 = 4u;
const F_DORA: u32 = 8u;
const F_POST_BIAS: u32 = 16u;
const F_LORA: u32 = 32u;
const F_ACCUM: u32 = 64u;
const F_MIXED: u32 = 128u;
const F_GATHER: u32 = 256u;
// the flags a mixed pass takes from the token's adapter descriptor
const F_ADAPTER: u32 = 62u;
const NO_ADAPTER: u32 = 0xffffffffu;
const DESC_WORDS: u32 = 24u;

const X_NONE: u32 = 0u;
const X_RMS: u32 = 1u;
const X_LAYER_NORM: u32 = 2u;
const X_SILU_MUL: u32 = 3u;
const X_RELU: u32 = 4u;
const X_GELU: u32 = 5u;
const X_GELU_TANH_MUL: u32 = 6u;

struct Seg {
    // one past the module's last row in the group
    end: u32,
    // the module's first rank in a token's row of `lt`
    t_off: u32,
    // the module's total rank (all active adapters)
    r: u32,
    // offset of the module's first B row in `lb` (rows of r values)
    b_off: u32,
}

struct Params {
    wd: WeightDesc,
    n: u32,
    x_stride: u32,
    y_stride: u32,
    y_off: u32,
    flags: u32,
    bias_off: u32,
    scale_off: u32,
    dora_off: u32,
    post_off: u32,
    in_off: u32,
    t_stride: u32,
    nseg: u32,
    c8n: u32,
    xform: u32,
    // SiLU·mul: columns of the second operand (up) after the first (gate)
    act_off: u32,
    // the norm's weight and (with has_nb) bias in `aux`, and its eps
    nw_off: u32,
    nb_off: u32,
    eps: f32,
    has_nb: u32,
    desc_off: u32,
    ad_off: u32,
    ad_stride: u32,
    gather_rows: u32,
    _pad0: u32,
    seg: array<Seg, 4>,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read> ws: array<u32>;
@group(0) @binding(4) var<storage, read> aux: array<f32>;
@group(0) @binding(5) var<storage, read> lt: array<f32>;
@group(0) @binding(6) var<storage, read> lb: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<storage, read> rowinfo: array<u32>;

override WG: u32 = 256u;
override RPW: u32 = 8u;

// WG · TN partial sums; WG ≤ 256 and TN ≤ 8.
var<workgroup> red: array<f32, 2048>;
// per token of the workgroup's tile: the norm's mean and 1/sqrt(var + eps)
var<workgroup> nstat: array<vec2<f32>, 8>;

// The input value of token t (lt: its index in the tile) at column c, transformed.
fn xval(t: u32, lt: u32, c: u32) -> f32 {
    let b = t * P.x_stride + c;
    let v = x[b];
    switch P.xform {
        case 0u: {
            return v;
        }
        case 1u, 2u: {
            var r = (v - nstat[lt].x) * nstat[lt].y * aux[P.nw_off + c];
            if (P.has_nb != 0u) {
                r += aux[P.nb_off + c];
            }
            return r;
        }
        case 3u: {
            return v / (1.0 + exp(-v)) * x[b + P.act_off];
        }
        case 4u: {
            return max(v, 0.0);
        }
        case 6u: {
            // GELU's tanh approximation on the gate, times up (Gemma's GeGLU)
            let u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
            return 0.5 * v * (1.0 + tanh_(u)) * x[b + P.act_off];
        }
        default: {
            return 0.5 * v * (1.0 + erf_(v * 0.70710678118654752));
        }
    }
}

fn xv(t: u32, lt: u32, c: u32) -> vec4<f32> {
    if (P.xform == X_NONE) {
        let b = t * P.x_stride + c;
        return vec4<f32>(x[b], x[b + 1u], x[b + 2u], x[b + 3u]);
    }
    return vec4<f32>(xval(t, lt, c), xval(t, lt, c + 1u), xval(t, lt, c + 2u), xval(t, lt, c + 3u));
}

fn sv(c: u32) -> vec4<f32> {
    let b = P.in_off + c;
    return vec4<f32>(aux[b], aux[b + 1u], aux[b + 2u], aux[b + 3u]);
}

// A mixed pass's IA3 input scale at lb[b..b + 4].
fn svb(b: u32) -> vec4<f32> {
    return vec4<f32>(lb[b], lb[b + 1u], lb[b + 2u], lb[b + 3u]);
}

// The adapter slot of token `tok` in a mixed pass.
fn slot_of(tok: u32) -> u32 {
    return rowinfo[P.ad_off + tok * P.ad_stride];
}

// Threads that compute the norm statistics: few, so that the reduction takes two barriers
// rather than a tree of eight (each workgroup redoes it for its tokens; the rows are short).
const NSTAT_THREADS: u32 = 32u;

// Sums of the NSTAT_THREADS partials per token (red[t · NSTAT_THREADS + i]) → red[t · NSTAT_THREADS].
fn reduce_partials(li: u32) {
    workgroupBarrier();
    if (li < TN) {
        var s = 0.0;
        for (var i = 0u; i < NSTAT_THREADS; i++) {
            s += red[li * NSTAT_THREADS + i];
        }
        red[li * NSTAT_THREADS] = s;
    }
    workgroupBarrier();
}

// The norm statistics of the tile's tokens, computed as transformers does: mean(x²) for RMSNorm;
// mean, then mean((x − mean)²) for LayerNorm.
fn norm_stats(li: u32, t0: u32) {
    let cols = P.wd.cols;
    var mean = array<f32, TN>();
    if (P.xform == X_LAYER_NORM) {
        if (li < NSTAT_THREADS) {
            for (var t = 0u; t < TN; t++) {
                let tt = min(t0 + t, P.n - 1u);
                var s = 0.0;
                for (var c = li; c < cols; c += NSTAT_THREADS) {
                    s += x[tt * P.x_stride + c];
                }
                red[t * NSTAT_THREADS + li] = s;
            }
        }
        reduce_partials(li);
        for (var t = 0u; t < TN; t++) {
            mean[t] = red[t * NSTAT_THREADS] / f32(cols);
        }
        workgroupBarrier();
    }
    if (li < NSTAT_THREADS) {
        for (var t = 0u; t < TN; t++) {
            let tt = min(t0 + t, P.n - 1u);
            var s = 0.0;
            for (var c = li; c < cols; c += NSTAT_THREADS) {
                let d = x[tt * P.x_stride + c] - mean[t];
                s += d * d;
            }
            red[t * NSTAT_THREADS + li] = s;
        }
    }
    reduce_partials(li);
    if (li < TN) {
        nstat[li] = vec2<f32>(mean[li], 1.0 / sqrt(red[li * NSTAT_THREADS] / f32(cols) + P.eps));
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let tpr = WG / RPW;
    let lane = li % tpr;
    let row = wid.x * RPW + li / tpr;
    let t0 = wid.y * TN;
    let mixed = (P.flags & F_MIXED) != 0u;
    // the weight row this thread reads, and the rows this dispatch computes
    var wrow = row;
    var nrows = P.wd.rows;
    var live = true;
    if ((P.flags & F_GATHER) != 0u) {
        // TN is 1 here: the workgroup's token picks its adapter's A rows
        let a = slot_of(t0);
        live = a != NO_ADAPTER;
        wrow = row + select(0u, a, live) * P.gather_rows;
        nrows = P.gather_rows;
    }
    // a mixed pass: each token's IA3 input scale (its offset in lb, or NO_ADAPTER)
    var in_at: array<u32, TN>;
    var any_in = false;
    for (var t = 0u; t < TN; t++) {
        in_at[t] = NO_ADAPTER;
        if (mixed) {
            let a = slot_of(min(t0 + t, P.n - 1u));
            if (a != NO_ADAPTER) {
                let d = P.desc_off + a * DESC_WORDS;
                if ((rowinfo[d] & F_IN_SCALE) != 0u) {
                    in_at[t] = rowinfo[d + 4u];
                    any_in = true;
                }
            }
        }
    }
    if (P.xform == X_RMS || P.xform == X_LAYER_NORM) {
        norm_stats(li, t0);
    }
    var acc: array<f32, TN>;
    if (live && row < nrows) {
        let in_scaled = (P.flags & F_IN_SCALE) != 0u;
        for (var c = lane; c < P.c8n; c += tpr) {
            let w = w8(wrow, c);
            var wa = w.a;
            var wb = w.b;
            if (in_scaled) {
                wa *= sv(c * 8u);
                wb *= sv(c * 8u + 4u);
            }
            for (var t = 0u; t < TN; t++) {
                let tt = min(t0 + t, P.n - 1u);
                var ta = wa;
                var tb = wb;
                if (any_in && in_at[t] != NO_ADAPTER) {
                    ta = wa * svb(in_at[t] + c * 8u);
                    tb = wb * svb(in_at[t] + c * 8u + 4u);
                }
                acc[t] += dot(ta, xv(tt, t, c * 8u)) + dot(tb, xv(tt, t, c * 8u + 4u));
            }
        }
        for (var c = P.c8n * 8u + lane; c < P.wd.cols; c += tpr) {
            var w = w1(wrow, c);
            if (in_scaled) {
                w *= aux[P.in_off + c];
            }
            for (var t = 0u; t < TN; t++) {
                let tt = min(t0 + t, P.n - 1u);
                var tw = w;
                if (any_in && in_at[t] != NO_ADAPTER) {
                    tw = w * lb[in_at[t] + c];
                }
                acc[t] += tw * xval(tt, t, c);
            }
        }
    }
    for (var t = 0u; t < TN; t++) {
        red[li * TN + t] = acc[t];
    }
    workgroupBarrier();
    let tok = t0 + lane;
    if (!live || row >= nrows || lane >= TN || tok >= P.n) {
        return;
    }
    let first = (li - lane) * TN + lane;
    var v = 0.0;
    for (var j = 0u; j < tpr; j++) {
        v += red[first + j * TN];
    }
    var f = P.flags;
    // where the adapter's vectors and LoRA segments are: P and aux, or the token's descriptor
    // and lb
    var d = NO_ADAPTER;
    var dora_off = P.dora_off;
    var scale_off = P.scale_off;
    var post_off = P.post_off;
    if (mixed) {
        f &= ~F_ADAPTER;
        let a = slot_of(tok);
        if (a != NO_ADAPTER) {
            d = P.desc_off + a * DESC_WORDS;
            f |= rowinfo[d] & F_ADAPTER;
            scale_off = rowinfo[d + 1u];
            dora_off = rowinfo[d + 2u];
            post_off = rowinfo[d + 3u];
        }
    }
    let own = d != NO_ADAPTER;
    if ((f & F_DORA) != 0u) {
        if (own) {
            v *= lb[dora_off + row];
        } else {
            v *= aux[dora_off + row];
        }
    }
    if ((f & F_BIAS) != 0u) {
        v += aux[P.bias_off + row];
    }
    if ((f & F_OUT_SCALE) != 0u) {
        if (own) {
            v *= lb[scale_off + row];
        } else {
            v *= aux[scale_off + row];
        }
    }
    if ((f & F_POST_BIAS) != 0u) {
        if (own) {
            v += lb[post_off + row];
        } else {
            v += aux[post_off + row];
        }
    }
    if ((f & F_LORA) != 0u) {
        var start = 0u;
        for (var s = 0u; s < P.nseg; s++) {
            var sg = P.seg[s];
            if (own) {
                let e = d + 8u + s * 4u;
                sg.t_off = rowinfo[e];
                sg.r = rowinfo[e + 1u];
                sg.b_off = rowinfo[e + 2u];
            }
            if (row < sg.end) {
                let tb = tok * P.t_stride + sg.t_off;
                let bb = sg.b_off + (row - start) * sg.r;
                for (var j = 0u; j < sg.r; j++) {
                    v += lt[tb + j] * lb[bb + j];
                }
                break;
            }
            start = sg.end;
        }
    }
    let yi = tok * P.y_stride + P.y_off + row;
    if ((f & F_ACCUM) != 0u) {
        v += y[yi];
    }
    y[yi] = v;
}
