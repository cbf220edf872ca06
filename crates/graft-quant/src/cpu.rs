//! Which SIMD instruction set the CPU kernels use: the best the machine has, capped by the
//! environment variable `GRAFT_MAX_ISA` (`avx512`, `avx2` or `portable`) so that one machine
//! can measure what an AVX2-only or a SIMD-less one would do. Read once per process.

use std::sync::OnceLock;

/// An instruction set the kernels are written for, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust (what the compiler makes of it; wasm32 and non-x86 machines).
    Portable,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// AVX-512F (with AVX2, FMA and F16C).
    Avx512,
}

impl Isa {
    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "none" | "scalar" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2 && is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// The instruction set in use: the machine's best, at most `GRAFT_MAX_ISA` (an unknown value is
/// ignored, with a warning on stderr).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let best = detected();
        match std::env::var("GRAFT_MAX_ISA") {
            Ok(v) => match Isa::parse(&v) {
                Some(cap) => best.min(cap),
                None => {
                    eprintln!(
                        "graft: GRAFT_MAX_ISA={v:?} is not avx512, avx2 or portable; ignored"
                    );
                    best
                }
            },
            Err(_) => best,
        }
    })
}
