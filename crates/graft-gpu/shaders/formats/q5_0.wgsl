// GGML Q5_0: blocks of 32 values, value = (q − 16)·d, q = a nibble | a fifth bit << 4.
// Layout: the file's 22-byte block is not whole words, so the upload moves each block's f16 d
// into `ws` (two per word, the even block in the lower half; rows padded to whole words) and
// keeps the other 20 bytes, as in the file, as 5 words of `wq`: qh (bit e is the fifth bit of
// element e), then qs[16] (low nibbles are elements 0..16, high nibbles 16..32).
fn q5_nib4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u));
}

// Bits 0..4 of `h`, each as 16 or 0.
fn q5_bit4(h: u32) -> vec4<f32> {
    return vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32((h >> 3u) & 1u)) * 16.0;
}

fn q5_0_scale(row: u32, blk: u32) -> f32 {
    return h2(ws[row * P.wd.row_swords + blk / 2u])[blk & 1u];
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 4u;
    let ch = c8 & 3u;
    let base = row * P.wd.row_words + blk * 5u;
    let b = base + 1u + (ch & 1u) * 2u;
    let sh = (ch >> 1u) * 4u;
    let hb = wq[base] >> (ch * 8u);
    let d = q5_0_scale(row, blk);
    return W8(
        (q5_nib4(wq[b] >> sh) + q5_bit4(hb) - 16.0) * d,
        (q5_nib4(wq[b + 1u] >> sh) + q5_bit4(hb >> 4u) - 16.0) * d,
    );
}

fn w1(row: u32, col: u32) -> f32 {
    let blk = col / 32u;
    let j = col & 31u;
    let byte = j & 15u;
    let base = row * P.wd.row_words + blk * 5u;
    let lo = (wq[base + 1u + byte / 4u] >> ((byte & 3u) * 8u + (j / 16u) * 4u)) & 15u;
    let q = lo | (((wq[base] >> j) & 1u) << 4u);
    return (f32(q) - 16.0) * q5_0_scale(row, blk);
}
