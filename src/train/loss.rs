//! Losses on the output layer's rows (N, O): softmax cross-entropy and mean squared error.
//! Both use torch's default `reduction="mean"`.

use crate::error::{check_shape, Result, RnnError};
use crate::scalar::Scalar;
use ndarray::{Array2, ArrayView2};

/// A loss value with its gradient with respect to the logits or predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct LossGrad<F> {
    pub loss: F,
    /// (N, O)
    pub grad: Array2<F>,
}

/// Mean over rows of `−log softmax(logits)[target]`; gradient (softmax − onehot)/N.
/// Computed with the max subtracted, so large logits do not overflow.
pub fn cross_entropy<F: Scalar>(
    logits: ArrayView2<'_, F>,
    targets: &[usize],
) -> Result<LossGrad<F>> {
    let (n, classes) = logits.dim();
    check_shape("targets", &[n], &[targets.len()])?;
    if n == 0 || classes == 0 {
        return Err(RnnError::Config(format!(
            "cross-entropy needs at least one row and one class, got logits {:?}",
            logits.shape()
        )));
    }
    if let Some((row, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= classes) {
        return Err(RnnError::Config(format!(
            "target {t} of row {row} is outside the {classes} classes"
        )));
    }
    let inv_n = F::one() / F::from_f64(n as f64);
    let mut grad = Array2::zeros((n, classes));
    let mut total = F::zero();
    for (row, (z, mut g)) in logits.outer_iter().zip(grad.outer_iter_mut()).enumerate() {
        let max = z.iter().copied().fold(F::neg_infinity(), F::max);
        let sum: F = z.iter().map(|&v| (v - max).exp()).sum();
        let log_sum = sum.ln() + max;
        total += log_sum - z[targets[row]];
        for (gi, &zi) in g.iter_mut().zip(z.iter()) {
            *gi = (zi - log_sum).exp() * inv_n;
        }
        g[targets[row]] -= inv_n;
    }
    let loss = total * inv_n;
    if !loss.is_finite() {
        return Err(RnnError::NonFinite {
            tensor: "cross-entropy loss".into(),
            index: 0,
        });
    }
    Ok(LossGrad { loss, grad })
}

/// Mean over all elements of (prediction − target)²; gradient 2·(prediction − target)/(N·O).
pub fn mse<F: Scalar>(
    predictions: ArrayView2<'_, F>,
    targets: ArrayView2<'_, F>,
) -> Result<LossGrad<F>> {
    check_shape("targets", predictions.shape(), targets.shape())?;
    if predictions.is_empty() {
        return Err(RnnError::Config(
            "mean squared error of an empty tensor".into(),
        ));
    }
    let diff = &predictions - &targets;
    let inv_count = F::one() / F::from_f64(diff.len() as f64);
    let loss = diff.iter().map(|&d| d * d).sum::<F>() * inv_count;
    if !loss.is_finite() {
        return Err(RnnError::NonFinite {
            tensor: "mse loss".into(),
            index: 0,
        });
    }
    let grad = diff.mapv(|d| F::from_f64(2.0) * d * inv_count);
    Ok(LossGrad { loss, grad })
}

/// Cross-entropy in nats → bits (per character when each row is one character).
pub fn nats_to_bits(nats: f64) -> f64 {
    nats / std::f64::consts::LN_2
}
