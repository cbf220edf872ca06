// Prepended to the kernels that read a weight matrix (linear, embed): the matrix's shape and
// strides, and the eight values a format decoder returns. A decoder (formats/*.wgsl) is appended to each kernel
// and defines `w8(row, c8)` (columns 8·c8 .. 8·c8+8) and `w1(row, col)` over the kernel's
// `wq` (packed values) and `ws` (scales) bindings.
struct WeightDesc {
    rows: u32,
    cols: u32,
    // u32 words of `wq` per row, and of `ws` per row (0 where the layout is flat).
    row_words: u32,
    row_swords: u32,
}

struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

// Two f16 values (the lower half first) as f32, exactly, with integer operations only:
// `unpack2x16float` needs a capability that wgpu does not grant on every device (Mesa without
// `shader-f16`), and this costs a few ALU operations per scale.
fn h2f(h: u32) -> f32 {
    let a = h & 0x7fffu;
    // normal: move the exponent and mantissa into an f32 and rebias by 2^112
    let normal = bitcast<f32>(a << 13u) * 5.192296858534828e33;
    // subnormal (and zero): m · 2^-24
    let sub = f32(a) * 5.960464477539063e-8;
    let v = select(normal, sub, a < 0x400u);
    return select(v, -v, (h & 0x8000u) != 0u);
}

fn h2(w: u32) -> vec2<f32> {
    return vec2<f32>(h2f(w & 0xffffu), h2f(w >> 16u));
}

// erf from erfc's Chebyshev fit (Numerical Recipes `erfcc`), fractional error below 1.2e-7.
fn erf_(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, x >= 0.0);
}
