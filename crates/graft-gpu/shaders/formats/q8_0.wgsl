// GGML Q8_0: blocks of 32 signed bytes (8 words) with one f16 scale; scales are packed two per
// word in `ws`, row by row.
fn i8x4(w: u32) -> vec4<f32> {
    let s = i32(w);
    return vec4<f32>(f32((s << 24u) >> 24u), f32((s << 16u) >> 24u), f32((s << 8u) >> 24u), f32(s >> 24u));
}

fn q8_scale(row: u32, blk: u32) -> f32 {
    return h2(ws[row * P.wd.row_swords + blk / 2u])[blk & 1u];
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 4u;
    let b = row * P.wd.row_words + blk * 8u + (c8 & 3u) * 2u;
    let d = q8_scale(row, blk);
    return W8(i8x4(wq[b]) * d, i8x4(wq[b + 1u]) * d);
}

fn w1(row: u32, col: u32) -> f32 {
    let w = wq[row * P.wd.row_words + col / 4u];
    let q = (i32(w) << (24u - 8u * (col & 3u))) >> 24u;
    return f32(q) * q8_scale(row, col / 32u);
}
