//! wgpu-rnn: Elman RNN, LSTM and GRU on any GPU through WGSL compute shaders, exact to PyTorch.

pub mod batch;
pub mod bench;
pub mod config;
pub mod cpu;
pub mod error;
pub mod fixture;
pub mod gpu;
pub mod params;
pub mod scalar;
pub mod tensorfile;
pub mod train;

pub use batch::{ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
pub use config::{CellKind, Nonlinearity, RnnConfig};
pub use error::{Result, RnnError};
pub use params::{LayerParams, RnnParams};
pub use scalar::Scalar;
