//! The float types the CPU reference is generic over.

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::Float;
use std::fmt::{Debug, Display};

/// f32 or f64: what the CPU reference computes in.
pub trait Scalar:
    LinalgScalar
    + Float
    + ScalarOperand
    + Debug
    + Display
    + Default
    + Send
    + Sync
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + bytemuck::Zeroable
    + 'static
{
    /// The matching safetensors dtype.
    const DTYPE: safetensors::Dtype;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Little-endian bytes of one value.
    fn to_le(self) -> Vec<u8>;
    /// The logistic function 1 / (1 + e^−x), without overflow for any x. f64: from libm's exp.
    /// f32: branch-free, so that loops over it vectorise, and within 2.5 ulp down to the
    /// subnormal range (x ≈ −87).
    fn sigmoid(self) -> Self;
    /// tanh(x). f64: libm's. f32: branch-free, so that loops over it vectorise, and within
    /// 1.5 ulp.
    fn tanh_activation(self) -> Self;
}

impl Scalar for f32 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F32;
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + exp_f32(-self))
    }
    /// Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 − 2 / (e^2|x| + 1) above.
    #[inline(always)]
    fn tanh_activation(self) -> Self {
        let z = self * self;
        let p: f32 = -5.704_988_7e-3;
        let p = p.mul_add(z, 2.063_908_8e-2);
        let p = p.mul_add(z, -5.373_971_5e-2);
        let p = p.mul_add(z, 1.333_144_2e-1);
        let p = p.mul_add(z, -3.333_328e-1);
        let small = (p * z).mul_add(self, self);
        let large = 1.0 - 2.0 / (exp_f32(2.0 * self.abs()) + 1.0);
        if self.abs() < 0.625 {
            small
        } else {
            large.copysign(self)
        }
    }
}

/// e^x within 1 ulp for x in [−87, 88], clamped to that range (NaN stays NaN): Cephes' expf,
/// x = n ln 2 + r with |r| ≤ ln 2 / 2, e^r by a polynomial, 2^n by the exponent bits.
/// Its multiply-adds are fused, as are [`Scalar::tanh_activation`]'s for f32: one instruction
/// each in the AVX2 and FMA row kernels (half the arithmetic of separate ones), a libm call on
/// an x86_64 CPU without FMA.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    // ln 2 = 0.693359375 − 2.12194440e-4, the first part short enough for n times it to be exact.
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
    let p: f32 = 1.987_569_1e-4;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_6e-1);
    let p = p.mul_add(r, 0.5);
    let e_r = p.mul_add(r * r, r) + 1.0;
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    e_r * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

impl Scalar for f64 {
    const DTYPE: safetensors::Dtype = safetensors::Dtype::F64;
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn to_le(self) -> Vec<u8> {
        self.to_le_bytes().to_vec()
    }
    fn sigmoid(self) -> Self {
        if self >= 0.0 {
            1.0 / (1.0 + (-self).exp())
        } else {
            let e = self.exp();
            e / (1.0 + e)
        }
    }
    fn tanh_activation(self) -> Self {
        self.tanh()
    }
}

#[cfg(test)]
mod tests {
    use super::Scalar;

    /// |got − want| in units in the last place of want rounded to f32.
    fn ulps(got: f32, want: f64) -> f64 {
        let w = (want as f32).abs();
        let ulp = f32::from_bits(w.to_bits() + 1) - w;
        (got as f64 - want).abs() / ulp as f64
    }

    #[test]
    fn f32_activations_are_within_their_ulp_bounds() {
        // About 260 000 magnitudes from 1e-30 to 100, each with both signs (the bounds were
        // checked once over every f32: at most 2.48 ulp for σ, 1.33 for tanh).
        for bits in (1e-30f32.to_bits()..=100f32.to_bits()).step_by(4099) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                let exact = x as f64;
                let tanh = ulps(x.tanh_activation(), exact.tanh());
                assert!(tanh <= 1.5, "tanh({x:e}): {tanh} ulp");
                if x >= -87.0 {
                    let sigmoid = ulps(x.sigmoid(), 1.0 / (1.0 + (-exact).exp()));
                    assert!(sigmoid <= 2.5, "σ({x:e}): {sigmoid} ulp");
                }
            }
        }
    }

    #[test]
    fn f32_activations_at_the_edges() {
        assert!(f32::NAN.sigmoid().is_nan());
        assert!(f32::NAN.tanh_activation().is_nan());
        assert_eq!(f32::INFINITY.sigmoid(), 1.0);
        assert!((0.0..1e-38).contains(&f32::NEG_INFINITY.sigmoid()));
        assert_eq!(f32::INFINITY.tanh_activation(), 1.0);
        assert_eq!(f32::NEG_INFINITY.tanh_activation(), -1.0);
        assert_eq!(0.0f32.tanh_activation(), 0.0);
        assert_eq!(1e-40f32.tanh_activation(), 1e-40);
    }
}
