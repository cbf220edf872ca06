// f16: two values per word, the lower half first (decoded with integer operations: no
// `shader-f16` needed).
fn w8(row: u32, c8: u32) -> W8 {
    let b = row * P.wd.row_words + c8 * 4u;
    return W8(
        vec4<f32>(h2(wq[b]), h2(wq[b + 1u])),
        vec4<f32>(h2(wq[b + 2u]), h2(wq[b + 3u])),
    );
}

fn w1(row: u32, col: u32) -> f32 {
    return h2(wq[row * P.wd.row_words + col / 2u])[col & 1u];
}
