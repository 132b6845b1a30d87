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
    + 'static
{
    /// The matching safetensors dtype.
    const DTYPE: safetensors::Dtype;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// Little-endian bytes of one value.
    fn to_le(self) -> Vec<u8>;
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
}
