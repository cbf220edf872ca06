// NF4 (`load_in_4bit`): bitsandbytes' layout, blocks of 64 over the flattened matrix, two
// values per byte with the even element in the high nibble; one f32 absmax per block in `ws`.
// `w8` needs cols to be a multiple of 8 (the host uses `w1` otherwise).
var<private> NF4: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.091050036, 0.0,
    0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0,
);

fn nf4_pair(w: u32, i: u32) -> vec2<f32> {
    let byte = (w >> (8u * i)) & 255u;
    return vec2<f32>(NF4[byte >> 4u], NF4[byte & 15u]);
}

fn w8(row: u32, c8: u32) -> W8 {
    let e = row * P.wd.cols + c8 * 8u;
    let w = wq[e / 8u];
    let s = bitcast<f32>(ws[e / 64u]);
    return W8(vec4<f32>(nf4_pair(w, 0u), nf4_pair(w, 1u)) * s, vec4<f32>(nf4_pair(w, 2u), nf4_pair(w, 3u)) * s);
}

fn w1(row: u32, col: u32) -> f32 {
    let e = row * P.wd.cols + col;
    let byte = (wq[e / 8u] >> (8u * ((e / 2u) & 3u))) & 255u;
    let q = select(byte & 15u, byte >> 4u, (e & 1u) == 0u);
    return NF4[q] * bitcast<f32>(ws[e / 64u]);
}
