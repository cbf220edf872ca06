// GGML Q5_K: Q4_K with a fifth bit per value; value = (d·sc)·q − dmin·m with q of 5 bits.
// Layout: the file's 176-byte blocks are whole words, so `wq` holds them as they are, 44 words
// per block: (d, dmin) as one f16 pair (word 0), scales[12] (words 1..4, packed as Q4_K's),
// qh[32] (words 4..12; bit e/32 of byte e%32 is element e's fifth bit), qs[128] (words 12..44,
// placed as Q4_K's). `ws` is unused. All products are exact, so only the − dmin·m rounds.

fn q5k_nib4(w: u32) -> vec4<f32> {
    return vec4<f32>(f32(w & 15u), f32((w >> 8u) & 15u), f32((w >> 16u) & 15u), f32((w >> 24u) & 15u));
}

// Bit `sh` of each byte of `w`, as 16 or 0.
fn q5k_bit4(w: u32, sh: u32) -> vec4<f32> {
    let v = w >> sh;
    return vec4<f32>(f32(v & 1u), f32((v >> 8u) & 1u), f32((v >> 16u) & 1u), f32((v >> 24u) & 1u)) * 16.0;
}

// Byte k of the block's scales.
fn q5k_sbyte(base: u32, k: u32) -> u32 {
    return (wq[base + 1u + k / 4u] >> (8u * (k & 3u))) & 255u;
}

// (scale, min) of sub-block j.
fn q5k_scale_min(base: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(q5k_sbyte(base, j) & 63u), f32(q5k_sbyte(base, j + 4u) & 63u));
    }
    let b = q5k_sbyte(base, j + 4u);
    return vec2<f32>(
        f32((b & 15u) | ((q5k_sbyte(base, j - 4u) >> 6u) << 4u)),
        f32((b >> 4u) | ((q5k_sbyte(base, j) >> 6u) << 4u)),
    );
}

fn w8(row: u32, c8: u32) -> W8 {
    let base = row * P.wd.row_words + (c8 / 32u) * 44u;
    let cb = c8 & 31u;
    // elements 8·cb .. 8·cb + 8: sub-block j = cb/4, in the bytes of 64-value chunk cb/8
    let j = cb / 4u;
    let p = (cb & 3u) * 2u;
    let b = base + 12u + 8u * (cb / 8u) + p;
    let sh = 4u * (j & 1u);
    let dm = h2(wq[base]);
    let sm = q5k_scale_min(base, j);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    return W8(
        (q5k_nib4(wq[b] >> sh) + q5k_bit4(wq[base + 4u + p], j)) * dl - ml,
        (q5k_nib4(wq[b + 1u] >> sh) + q5k_bit4(wq[base + 5u + p], j)) * dl - ml,
    );
}

fn w1(row: u32, col: u32) -> f32 {
    let base = row * P.wd.row_words + (col / 256u) * 44u;
    let e = col & 255u;
    let j = e / 32u;
    let l = e & 31u;
    let k = 32u * (e / 64u) + l;
    let lo = (wq[base + 12u + k / 4u] >> (8u * (k & 3u) + 4u * (j & 1u))) & 15u;
    let hi = (wq[base + 4u + l / 4u] >> (8u * (l & 3u) + j)) & 1u;
    let dm = h2(wq[base]);
    let sm = q5k_scale_min(base, j);
    return f32(lo | (hi << 4u)) * (dm.x * sm.x) - dm.y * sm.y;
}
