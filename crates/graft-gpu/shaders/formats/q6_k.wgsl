// GGML Q6_K: super-blocks of 256 values in 16 sub-blocks of 16, each with a signed 8-bit scale;
// value = (d·sc)·(q − 32) with q of 6 bits.
// Layout: the file's 210-byte block is not whole words, so the upload moves each block's f16 d
// (its last two bytes) into `ws` (two per word, the even block in the lower half; rows padded
// to whole words) and keeps the first 208 bytes, as in the file, as 52 words of `wq`: ql[128]
// (words 0..32), qh[64] (words 32..48), scales[16] (i8, words 48..52). Per half h of 128 values,
// element 128h + r takes nibble r/64 of ql[64h + r%64] and bit pair r/32 of qh[32h + r%32].

fn q6k_d(row: u32, blk: u32) -> f32 {
    return h2(ws[row * P.wd.row_swords + blk / 2u])[blk & 1u];
}

// The signed scale of sub-block j.
fn q6k_scale(base: u32, j: u32) -> f32 {
    let w = wq[base + 48u + j / 4u];
    return f32((i32(w) << (24u - 8u * (j & 3u))) >> 24u);
}

// Four values from a word of ql (nibble at bit `lsh` of each byte) and a word of qh (pair at
// bit `hsh`), minus 32.
fn q6k_q4(l: u32, lsh: u32, h: u32, hsh: u32) -> vec4<f32> {
    let q = ((l >> lsh) & 0x0f0f0f0fu) | (((h >> hsh) & 0x03030303u) << 4u);
    return vec4<f32>(f32(q & 255u), f32((q >> 8u) & 255u), f32((q >> 16u) & 255u), f32(q >> 24u)) - 32.0;
}

fn w8(row: u32, c8: u32) -> W8 {
    let blk = c8 / 32u;
    let base = row * P.wd.row_words + blk * 52u;
    let cb = c8 & 31u;
    // elements 8·cb .. 8·cb + 8: half h, r0 = 8·(cb % 16) within it, sub-block cb/2
    let h = cb / 16u;
    let rb = cb & 15u;
    let lw = base + 16u * h + (rb & 7u) * 2u;
    let hw = base + 32u + 8u * h + (rb & 3u) * 2u;
    let lsh = 4u * (rb / 8u);
    let hsh = 2u * (rb / 4u);
    let dl = q6k_d(row, blk) * q6k_scale(base, cb / 2u);
    return W8(q6k_q4(wq[lw], lsh, wq[hw], hsh) * dl, q6k_q4(wq[lw + 1u], lsh, wq[hw + 1u], hsh) * dl);
}

fn w1(row: u32, col: u32) -> f32 {
    let blk = col / 256u;
    let base = row * P.wd.row_words + blk * 52u;
    let e = col & 255u;
    let h = e / 128u;
    let r = e & 127u;
    let kl = 64u * h + (r & 63u);
    let kh = 128u + 32u * h + (r & 31u);
    let lo = (wq[base + kl / 4u] >> (8u * (kl & 3u) + 4u * (r / 64u))) & 15u;
    let hi = (wq[base + kh / 4u] >> (8u * (kh & 3u) + 2u * (r / 32u))) & 3u;
    let q = f32(lo | (hi << 4u)) - 32.0;
    return q * (q6k_d(row, blk) * q6k_scale(base, e / 16u));
}
