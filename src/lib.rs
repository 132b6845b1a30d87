//! wgpu-rnn: Elman RNN, LSTM and GRU on any GPU through WGSL compute shaders, exact to PyTorch.
//!
//! ```
//! use ndarray::Array3;
//! use wgpu_rnn::{cpu, CellKind, RnnConfig, RnnParams, SequenceBatch};
//!
//! // A 2-layer GRU in torch's layout, T = 5 steps of a batch of 3, 4 features in, 6 hidden.
//! let config = RnnConfig::new(CellKind::Gru, 4, 6).layers(2);
//! let params = RnnParams::<f64>::init(&config, 1)?;
//! let x = Array3::from_shape_fn((5, 3, 4), |(t, b, i)| (t as f64 - b as f64 + i as f64).sin());
//! let out = cpu::forward(&params, &SequenceBatch::new(x.view()))?;
//! assert_eq!(out.output.dim(), (5, 3, 6));
//! assert_eq!(out.h_n.dim(), (2, 3, 6));
//! // The last output row is the top layer's final state.
//! assert_eq!(out.output.index_axis(ndarray::Axis(0), 4), out.h_n.index_axis(ndarray::Axis(0), 1));
//! # Ok::<(), wgpu_rnn::RnnError>(())
//! ```

pub mod batch;
pub mod config;
pub mod cpu;
pub mod error;
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
