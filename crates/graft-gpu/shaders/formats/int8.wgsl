// Int8 (`load_in_8bit`'s vector-wise form): signed bytes, four per word, rows padded to whole
// words; one f32 scale per row in `ws`.
fn i8x4(w: u32) -> vec4<f32> {
    let s = i32(w);
    return vec4<f32>(f32((s << 24u) >> 24u), f32((s << 16u) >> 24u), f32((s << 8u) >> 24u), f32(s >> 24u));
}

fn w8(row: u32, c8: u32) -> W8 {
    let b = row * P.wd.row_words + c8 * 2u;
    let d = bitcast<f32>(ws[row]);
    return W8(i8x4(wq[b]) * d, i8x4(wq[b + 1u]) * d);
}

fn w1(row: u32, col: u32) -> f32 {
    let w = wq[row * P.wd.row_words + col / 4u];
    let q = (i32(w) << (24u - 8u * (col & 3u))) >> 24u;
    return f32(q) * bitcast<f32>(ws[row]);
}
