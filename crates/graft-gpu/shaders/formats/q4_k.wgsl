// GGML Q4_K: super-blocks of 256 values in 8 sub-blocks of 32, each with a 6-bit scale and a
// 6-bit min; value = (d·sc)·q − dmin·m with q of 4 bits.
// Layout: the file's 144-byte blocks are whole words, so `wq` holds them as they are, 36 words
// per block: (d, dmin) as one f16 pair (word 0), scales[12] (words 1..4, packed as ggml's
// get_scale_min_k4 reads them), qs[128] (words 4..36; per 64 values, the low nibbles of 32 bytes
// are the first 32 and the high nibbles the next 32). `ws` is unused. All products are exact, so
// only the − dmin·m rounds, fused or not.

fn q4k_nib4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u));
}

// Byte k of the block's scales.
fn q4k_sbyte(base: u32, k: u32) -> u32 {
    return (wq[base + 1u + k / 4u] >> (8u * (k & 3u))) & 255u;
}

// (scale, min) of sub-block j.
fn q4k_scale_min(base: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(q4k_sbyte(base, j) & 63u), f32(q4k_sbyte(base, j + 4u) & 63u));
    }
    let b = q4k_sbyte(base, j + 4u);
    return vec2<f32>(
        f32((b & 15u) | ((q4k_sbyte(base, j - 4u) >> 6u) << 4u)),
        f32((b >> 4u) | ((q4k_sbyte(base, j) >> 6u) << 4u)),
    );
}

fn w8(row: u32, c8: u32) -> W8 {
    let base = row * P.wd.row_words + (c8 / 32u) * 36u;
    let cb = c8 & 31u;
    // elements 8·cb .. 8·cb + 8: sub-block j = cb/4, in the bytes of 64-value chunk cb/8
    let j = cb / 4u;
    let b = base + 4u + 8u * (cb / 8u) + (cb & 3u) * 2u;
    let sh = 4u * (j & 1u);
    let dm = h2(wq[base]);
    let sm = q4k_scale_min(base, j);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    return W8(q4k_nib4(wq[b] >> sh) * dl - ml, q4k_nib4(wq[b + 1u] >> sh) * dl - ml);
}

fn w1(row: u32, col: u32) -> f32 {
    let base = row * P.wd.row_words + (col / 256u) * 36u;
    let e = col & 255u;
    let j = e / 32u;
    let k = 32u * (e / 64u) + (e & 31u);
    let q = (wq[base + 4u + k / 4u] >> (8u * (k & 3u) + 4u * (j & 1u))) & 15u;
    let dm = h2(wq[base]);
    let sm = q4k_scale_min(base, j);
    return f32(q) * (dm.x * sm.x) - dm.y * sm.y;
}
