// GGML Q4_0: blocks of 32 four-bit values (4 words) with one f16 scale, value = (q − 8)·d.
// Low nibbles of the block's 16 bytes are elements 0..16, high nibbles 16..32 (as llama.cpp).
fn nib4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u));
}

fn q4_scale(row: u32, blk: u32) -> f32 {
    return h2(ws[row * P.wd.row_swords + blk / 2u])[blk & 1u];
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 4u;
    let ch = c8 & 3u;
    let b = row * P.wd.row_words + blk * 4u + (ch & 1u) * 2u;
    let sh = (ch >> 1u) * 4u;
    let d = q4_scale(row, blk);
    return W8((nib4(wq[b] >> sh) - 8.0) * d, (nib4(wq[b + 1u] >> sh) - 8.0) * d);
}

fn w1(row: u32, col: u32) -> f32 {
    let blk = col / 32u;
    let j = col & 31u;
    let byte = j & 15u;
    let w = wq[row * P.wd.row_words + blk * 4u + byte / 4u];
    let q = (w >> ((byte & 3u) * 8u + (j / 16u) * 4u)) & 15u;
    return (f32(q) - 8.0) * q4_scale(row, blk);
}
