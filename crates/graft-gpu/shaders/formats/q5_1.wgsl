// GGML Q5_1: blocks of 32 values, value = q·d + m, q = a nibble | a fifth bit << 4.
// Layout: the file's 24-byte blocks are whole words, so `wq` holds them as they are, 6 words per
// block: (d, m) as one f16 pair, qh (bit e is the fifth bit of element e), then qs[16] (low
// nibbles are elements 0..16, high nibbles 16..32). `ws` is unused.
fn q5_nib4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u));
}

// Bits 0..4 of `h`, each as 16 or 0.
fn q5_bit4(h: u32) -> vec4<f32> {
    return vec4<f32>(f32(h & 1u), f32((h >> 1u) & 1u), f32((h >> 2u) & 1u), f32((h >> 3u) & 1u)) * 16.0;
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 4u;
    let ch = c8 & 3u;
    let base = row * P.wd.row_words + blk * 6u;
    let b = base + 2u + (ch & 1u) * 2u;
    let sh = (ch >> 1u) * 4u;
    let hb = wq[base + 1u] >> (ch * 8u);
    let dm = h2(wq[base]);
    // d·q is exact (an f16 times a 5-bit integer), so only the + m rounds, fused or not
    return W8(
        (q5_nib4(wq[b] >> sh) + q5_bit4(hb)) * dm.x + dm.y,
        (q5_nib4(wq[b + 1u] >> sh) + q5_bit4(hb >> 4u)) * dm.x + dm.y,
    );
}

fn w1(row: u32, col: u32) -> f32 {
    let blk = col / 32u;
    let j = col & 31u;
    let byte = j & 15u;
    let base = row * P.wd.row_words + blk * 6u;
    let lo = (wq[base + 2u + byte / 4u] >> ((byte & 3u) * 8u + (j / 16u) * 4u)) & 15u;
    let q = lo | (((wq[base + 1u] >> j) & 1u) << 4u);
    let dm = h2(wq[base]);
    return f32(q) * dm.x + dm.y;
}
