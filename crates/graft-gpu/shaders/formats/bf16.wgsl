// bf16: two values per word, the lower half first; a bf16 is the top half of an f32.
fn bf2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

fn w8(row: u32, c8: u32) -> W8 {
    let b = row * P.wd.row_words + c8 * 4u;
    return W8(vec4<f32>(bf2(wq[b]), bf2(wq[b + 1u])), vec4<f32>(bf2(wq[b + 2u]), bf2(wq[b + 3u])));
}

fn w1(row: u32, col: u32) -> f32 {
    return bf2(wq[row * P.wd.row_words + col / 2u])[col & 1u];
}
