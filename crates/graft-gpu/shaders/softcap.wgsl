// Soft-capping of the logits (Gemma 2): y = cap · tanh(y / cap), in place, over `n` rows of
// `dim` values `stride` apart. One thread per value.

struct Params {
    n: u32,
    dim: u32,
    stride: u32,
    cap: f32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let t = gid.y;
    if (d >= P.dim || t >= P.n) {
        return;
    }
    let i = t * P.stride + d;
    y[i] = P.cap * tanh_(y[i] / P.cap);
}
