// f32: one word per value.
fn w8(row: u32, c8: u32) -> W8 {
    let b = row * P.wd.row_words + c8 * 8u;
    return W8(
        vec4<f32>(bitcast<f32>(wq[b]), bitcast<f32>(wq[b + 1u]), bitcast<f32>(wq[b + 2u]), bitcast<f32>(wq[b + 3u])),
        vec4<f32>(bitcast<f32>(wq[b + 4u]), bitcast<f32>(wq[b + 5u]), bitcast<f32>(wq[b + 6u]), bitcast<f32>(wq[b + 7u])),
    );
}

fn w1(row: u32, col: u32) -> f32 {
    return bitcast<f32>(wq[row * P.wd.row_words + col]);
}
