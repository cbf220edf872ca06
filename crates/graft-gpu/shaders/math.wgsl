// Functions several kernels share, prepended to them.

// tanh without the overflow of exp(x) for large |x| (where a driver's tanh may give NaN).
fn tanh_(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    let t = (1.0 - e) / (1.0 + e);
    return select(-t, t, x >= 0.0);
}
