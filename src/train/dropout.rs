//! Dropout masks from a counter-based generator, identical on the CPU and in `shaders/dropout.wgsl`.
//!
//! Element `index` of dropout stream `stream` under `seed` is kept when
//! `dropout_hash(seed, stream, index) < threshold` with `threshold = ⌊(1 − p)·2³²⌋`, and kept
//! values are scaled by `1/(1 − p)`. The hash uses only wrapping u32 multiply, add, xor and
//! shifts, so the WGSL kernel (`dropout_apply`) produces bitwise the same masks.
//!
//! Dropout is applied between RNN layers and before the output layer, never on the recurrent
//! connection (Zaremba et al. 2014): the trainer runs a multi-layer network as a stack of
//! single-layer [`crate::RnnParams`] and applies a mask to each layer's output sequence.

use crate::error::{Result, RnnError};
use crate::scalar::Scalar;

/// PCG-style integer permutation (output function of PCG-RXS-M-XS on a single LCG step).
pub fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// Uniform u32 for element `index` of stream `stream` under `seed`.
pub fn dropout_hash(seed: u32, stream: u32, index: u32) -> u32 {
    pcg_hash(index.wrapping_add(pcg_hash(stream.wrapping_add(pcg_hash(seed)))))
}

/// Dropout with probability `p` of zeroing an element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    p: f32,
    threshold: u32,
    scale: f64,
}

impl Dropout {
    /// `p` must be in [0, 1).
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(RnnError::Config(format!(
                "dropout must be in [0, 1), got {p}"
            )));
        }
        let keep = 1.0 - p as f64;
        Ok(Dropout {
            p,
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: 1.0 / keep,
        })
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// Hash values below this are kept.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Factor applied to kept values, 1/(1 − p), rounded to `F`.
    pub fn scale<F: Scalar>(&self) -> F {
        F::from_f64(self.scale)
    }

    /// Whether element `index` of `stream` is kept.
    pub fn keeps(&self, seed: u32, stream: u32, index: u32) -> bool {
        self.p == 0.0 || dropout_hash(seed, stream, index) < self.threshold
    }

    /// The mask of `len` elements: 0 where dropped, 1/(1 − p) where kept.
    pub fn mask<F: Scalar>(&self, seed: u32, stream: u32, len: usize) -> Result<Vec<F>> {
        check_len(len)?;
        let scale = self.scale::<F>();
        Ok((0..len as u32)
            .map(|i| {
                if self.keeps(seed, stream, i) {
                    scale
                } else {
                    F::zero()
                }
            })
            .collect())
    }

    /// Multiplies `x` in place by the mask of stream `stream` (forward and backward alike).
    pub fn apply<F: Scalar>(&self, x: &mut [F], seed: u32, stream: u32) -> Result<()> {
        if self.p == 0.0 {
            return Ok(());
        }
        check_len(x.len())?;
        let scale = self.scale::<F>();
        for (i, v) in x.iter_mut().enumerate() {
            *v = if self.keeps(seed, stream, i as u32) {
                *v * scale
            } else {
                F::zero()
            };
        }
        Ok(())
    }
}

fn check_len(len: usize) -> Result<()> {
    if len > u32::MAX as usize {
        return Err(RnnError::TooLarge(format!(
            "dropout over {len} elements: the mask index is a u32"
        )));
    }
    Ok(())
}
