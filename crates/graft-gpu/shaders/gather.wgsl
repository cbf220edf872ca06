// Copies rows of `src` picked by index into consecutive rows of `dst`: the last row of each
// sequence of a batched pass, before the final norm and the head (which then run over one row
// per sequence). Row i comes from src row idx[idx_off + i · idx_stride].

struct Params {
    rows: u32,
    width: u32,
    idx_off: u32,
    idx_stride: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = wid.y;
    let c = gid.x;
    if (i >= P.rows || c >= P.width) {
        return;
    }
    let r = idx[P.idx_off + i * P.idx_stride];
    dst[i * P.width + c] = src[r * P.width + c];
}
