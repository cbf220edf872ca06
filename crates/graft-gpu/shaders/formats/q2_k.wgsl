// GGML Q2_K: super-blocks of 256 values in 16 sub-blocks of 16, each with a 4-bit scale and a
// 4-bit min; value = (d·sc)·q − dmin·m with q of 2 bits.
// Layout: the file's 84-byte blocks are whole words, so `wq` holds them as they are, 21 words per
// block: scales[16] (words 0..4; byte j: low nibble the scale, high nibble the min of sub-block
// j), qs[64] (words 4..20; bits 2s..2s+2 of byte 32h + l are element 128h + 32s + l), then
// (d, dmin) as one f16 pair (word 20). `ws` is unused. All products are exact, so only the
// − dmin·m rounds, fused or not.

// Bits sh..sh+2 of each byte of `w`.
fn q2k_crumb4(w: u32, sh: u32) -> vec4<f32> {
    let v = w >> sh;
    return vec4<f32>(f32(v & 3u), f32((v >> 8u) & 3u), f32((v >> 16u) & 3u), f32((v >> 24u) & 3u));
}

fn q2k_byte(base: u32, k: u32) -> u32 {
    return (wq[base + k / 4u] >> (8u * (k & 3u))) & 255u;
}

fn w8(row: u32, c8: u32) -> W8 {
    let base = row * P.wd.row_words + (c8 / 32u) * 21u;
    let cb = c8 & 31u;
    // elements 8·cb .. 8·cb + 8: half h, shift pair s, bytes l0..l0+8, sub-block j
    let h = cb / 16u;
    let s = (cb / 4u) & 3u;
    let b = base + 4u + 8u * h + (cb & 3u) * 2u;
    let sm = q2k_byte(base, cb / 2u);
    let dm = h2(wq[base + 20u]);
    let dl = dm.x * f32(sm & 15u);
    let ml = dm.y * f32(sm >> 4u);
    return W8(q2k_crumb4(wq[b], 2u * s) * dl - ml, q2k_crumb4(wq[b + 1u], 2u * s) * dl - ml);
}

fn w1(row: u32, col: u32) -> f32 {
    let base = row * P.wd.row_words + (col / 256u) * 21u;
    let e = col & 255u;
    let k = 32u * (e / 128u) + (e & 31u);
    let q = (q2k_byte(base + 4u, k) >> (2u * ((e / 32u) & 3u))) & 3u;
    let sm = q2k_byte(base, e / 16u);
    let dm = h2(wq[base + 20u]);
    return f32(q) * (dm.x * f32(sm & 15u)) - dm.y * f32(sm >> 4u);
}
