// GGML Q3_K: super-blocks of 256 values in 16 sub-blocks of 16, each with a signed 6-bit scale;
// value = (d·sc)·q, q = two low bits − 4 unless the high bit is set (q in −4..3).
// Layout: the file's 110-byte block is not whole words, so the upload moves each block's f16 d
// (its last two bytes) into `ws` (two per word, the even block in the lower half; rows padded
// to whole words) and keeps the first 108 bytes, as in the file, as 27 words of `wq`:
// hmask[32] (words 0..8; bit e/32 of byte e%32 is element e's high bit), qs[64] (words 8..24;
// bits 2s..2s+2 of byte 32h + l are element 128h + 32s + l), scales[12] (words 24..27; sub-block
// j's low four bits are nibble j/8 of byte j%8, its high two bits pair j/4 of byte 8 + j%4).

fn q3k_byte(base: u32, k: u32) -> u32 {
    return (wq[base + k / 4u] >> (8u * (k & 3u))) & 255u;
}

// The signed scale of sub-block j.
fn q3k_scale(base: u32, j: u32) -> f32 {
    let lo = (q3k_byte(base + 24u, j & 7u) >> (4u * (j / 8u))) & 15u;
    let hi = (q3k_byte(base + 24u, 8u + (j & 3u)) >> (2u * (j / 4u))) & 3u;
    return f32(i32(lo | (hi << 4u)) - 32);
}

// Four values from a word of qs (bits sh..sh+2 of each byte) and a word of hmask (bit hb).
fn q3k_q4(w: u32, sh: u32, m: u32, hb: u32) -> vec4<f32> {
    let v = w >> sh;
    let h = m >> hb;
    let lo = vec4<f32>(f32(v & 3u), f32((v >> 8u) & 3u), f32((v >> 16u) & 3u), f32((v >> 24u) & 3u));
    let hi = vec4<f32>(f32(h & 1u), f32((h >> 8u) & 1u), f32((h >> 16u) & 1u), f32((h >> 24u) & 1u));
    return lo + hi * 4.0 - 4.0;
}

fn q3k_d(row: u32, blk: u32) -> f32 {
    return h2(ws[row * P.wd.row_swords + blk / 2u])[blk & 1u];
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 32u;
    let base = row * P.wd.row_words + blk * 27u;
    let cb = c8 & 31u;
    // elements 8·cb .. 8·cb + 8: half h, shift pair s, bytes l0..l0+8 (word pair p)
    let h = cb / 16u;
    let s = (cb / 4u) & 3u;
    let p = (cb & 3u) * 2u;
    let dl = q3k_d(row, blk) * q3k_scale(base, cb / 2u);
    let b = base + 8u + 8u * h + p;
    return W8(
        q3k_q4(wq[b], 2u * s, wq[base + p], cb / 4u) * dl,
        q3k_q4(wq[b + 1u], 2u * s, wq[base + p + 1u], cb / 4u) * dl,
    );
}

fn w1(row: u32, col: u32) -> f32 {
    let blk = col / 256u;
    let base = row * P.wd.row_words + blk * 27u;
    let e = col & 255u;
    let l = e & 31u;
    let low = (q3k_byte(base + 8u, 32u * (e / 128u) + l) >> (2u * ((e / 32u) & 3u))) & 3u;
    let hb = (q3k_byte(base, l) >> (e / 32u)) & 1u;
    let q = f32(low) + f32(hb) * 4.0 - 4.0;
    return q * (q3k_d(row, blk) * q3k_scale(base, e / 16u));
}
