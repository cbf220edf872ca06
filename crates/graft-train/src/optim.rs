//! AdamW exactly as `torch.optim.AdamW` computes it, transformers' learning-rate schedules and
//! `clip_grad_norm_`. The update runs on plain f32 slices: it touches every trainable value
//! once per step and needs no graph.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `torch.optim.AdamW`'s hyper-parameters (its defaults, including `weight_decay=0.01`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimizer's state: first and second moments per parameter, and the step count.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            config,
            step: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update with learning rate `lr` (the schedule's value for this step), as torch's
    /// single-tensor AdamW: decoupled decay `p ← p(1 − lr·wd)`, then
    /// `p ← p − (lr / bc1) · m / (√v / √bc2 + eps)`.
    pub fn update(&mut self, params: &[&Var], grads: &[Vec<f32>], lr: f64) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::Config(
                "optimizer state does not match the parameters".into(),
            ));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bc1) as f32;
        let decay = (1.0 - lr * c.weight_decay) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let bc2_sqrt = bc2_sqrt as f32;
        for (i, var) in params.iter().enumerate() {
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let g = &grads[i];
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            if g.len() != p.len() || m.len() != p.len() {
                return Err(Error::Config(
                    "gradient size does not match its parameter".into(),
                ));
            }
            for j in 0..p.len() {
                p[j] *= decay;
                m[j] = b1 * m[j] + (1.0 - b1) * g[j];
                v[j] = b2 * v[j] + (1.0 - b2) * g[j] * g[j];
                let denom = v[j].sqrt() / bc2_sqrt + eps;
                p[j] -= step_size * m[j] / denom;
            }
            var.set(&Tensor::from_vec(p, var.dims(), var.device())?)?;
        }
        Ok(())
    }
}

/// `clip_grad_norm_(max_norm)`: scales all gradients by `max_norm / (norm + 1e-6)` when that is
/// below 1; returns the total L2 norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let total: f64 = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    if max_norm > 0.0 && total.is_finite() {
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            let coef = coef as f32;
            for g in grads.iter_mut() {
                for x in g.iter_mut() {
                    *x *= coef;
                }
            }
        }
    }
    total
}

/// transformers' schedules (`get_scheduler`): the factor applied to the base learning rate at
/// optimizer step `step` (0-based, the first update uses step 0).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            _ => Err(Error::Config(format!(
                "unknown schedule `{s}` (constant, linear or cosine)"
            ))),
        }
    }
}

impl Schedule {
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let rest = total.saturating_sub(warmup).max(1) as f64;
        match self {
            Schedule::Constant => 1.0,
            Schedule::Linear => (total.saturating_sub(step) as f64 / rest).max(0.0),
            Schedule::Cosine => {
                let progress = (step - warmup) as f64 / rest;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(num_warmup_steps=2, num_training_steps=10)
        let f: Vec<f64> = (0..10).map(|s| Schedule::Linear.factor(s, 2, 10)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in f.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{f:?}");
        }
        // get_cosine_schedule_with_warmup(2, 10): 0.5·(1 + cos(π·(s−2)/8)) after warm-up
        let c = Schedule::Cosine.factor(6, 2, 10);
        assert!((c - 0.5).abs() < 1e-12);
        assert!((Schedule::Cosine.factor(2, 2, 10) - 1.0).abs() < 1e-12);
        assert_eq!(Schedule::Constant.factor(1, 2, 10), 0.5);
        assert_eq!(Schedule::Constant.factor(5, 2, 10), 1.0);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![vec![3.0f32, 0.0], vec![4.0]];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        let after: f64 = g
            .iter()
            .flatten()
            .map(|&x| (x * x) as f64)
            .sum::<f64>()
            .sqrt();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        let mut small = vec![vec![0.3f32]];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small[0][0], 0.3);
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        // At step 1, m̂/√v̂ = g/|g|: each value moves by lr·sign(g) after decay.
        let var =
            Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &candle_core::Device::Cpu).unwrap())
                .unwrap();
        let mut opt = AdamW::new(
            AdamWConfig {
                lr: 0.1,
                weight_decay: 0.5,
                ..Default::default()
            },
            &[2],
        );
        opt.update(&[&var], &[vec![0.2, -3.0]], 0.1).unwrap();
        let p = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((p[0] - (1.0 * 0.95 - 0.1)).abs() < 1e-5, "{p:?}");
        assert!((p[1] - (-2.0 * 0.95 + 0.1)).abs() < 1e-5, "{p:?}");
    }
}
