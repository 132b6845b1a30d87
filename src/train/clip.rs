//! Gradient clipping by global norm and by value (torch's `clip_grad_norm_`, `clip_grad_value_`).

use crate::error::{Result, RnnError};
use crate::scalar::Scalar;

/// √(Σ g²) over all tensors.
pub fn global_norm<F: Scalar>(grads: &[&[F]]) -> F {
    grads
        .iter()
        .map(|g| g.iter().map(|&v| v * v).sum::<F>())
        .sum::<F>()
        .sqrt()
}

/// Scales all gradients by min(1, max_norm / (norm + 1e-6)) as torch does; returns the norm
/// before clipping. `max_norm` must be positive.
pub fn clip_grad_norm<F: Scalar>(grads: &mut [&mut [F]], max_norm: f64) -> Result<F> {
    if max_norm.is_nan() || max_norm <= 0.0 {
        return Err(RnnError::Config(format!(
            "max_norm must be positive, got {max_norm}"
        )));
    }
    let views: Vec<&[F]> = grads.iter().map(|g| &**g).collect();
    let norm = global_norm(&views);
    let coef = clip_coefficient(norm, max_norm);
    if coef < F::one() {
        for g in grads.iter_mut() {
            g.iter_mut().for_each(|v| *v *= coef);
        }
    }
    Ok(norm)
}

/// min(1, max_norm / (norm + 1e-6)), in `F` as torch computes it.
pub fn clip_coefficient<F: Scalar>(norm: F, max_norm: f64) -> F {
    let coef = F::from_f64(max_norm) / (norm + F::from_f64(1e-6));
    coef.min(F::one())
}

/// Clamps every gradient to [−clip, clip]. `clip` must be positive.
pub fn clip_grad_value<F: Scalar>(grads: &mut [&mut [F]], clip: f64) -> Result<()> {
    if clip.is_nan() || clip <= 0.0 {
        return Err(RnnError::Config(format!(
            "clip value must be positive, got {clip}"
        )));
    }
    let (lo, hi) = (F::from_f64(-clip), F::from_f64(clip));
    for g in grads.iter_mut() {
        g.iter_mut().for_each(|v| *v = v.max(lo).min(hi));
    }
    Ok(())
}
