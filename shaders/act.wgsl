// Element-wise activations over (n, width): SiLU(gate)·up (Llama's MLP, gate and up side by
// side in one row), ReLU and exact (erf) GELU (OPT).

const A_SILU_MUL: u32 = 0u;
const A_RELU: u32 = 1u;
const A_GELU: u32 = 2u;

struct Params {
    n: u32,
    width: u32,
    in_stride: u32,
    out_stride: u32,
    kind: u32,
    a_off: u32,
    b_off: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let t = gid.y;
    if (i >= P.width || t >= P.n) {
        return;
    }
    let a = inp[t * P.in_stride + P.a_off + i];
    var v: f32;
    switch P.kind {
        case 0u: {
            let b = inp[t * P.in_stride + P.b_off + i];
            v = a / (1.0 + exp(-a)) * b;
        }
        case 1u: {
            v = max(a, 0.0);
        }
        default: {
            v = 0.5 * a * (1.0 + erf_(a * 0.70710678118654752));
        }
    }
    out[t * P.out_stride + i] = v;
}
