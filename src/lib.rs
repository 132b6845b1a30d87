//! wgpu-rnn: Elman RNN, LSTM and GRU on any GPU through WGSL compute shaders, exact to PyTorch.

pub mod config;
pub mod error;
pub mod params;
pub mod scalar;
pub mod tensorfile;

pub use config::{CellKind, Nonlinearity, RnnConfig};
pub use error::{Result, RnnError};
pub use params::{LayerParams, RnnParams};
pub use scalar::Scalar;
