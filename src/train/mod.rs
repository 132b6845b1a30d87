//! Training around the RNN: embedding and output layers, losses, dropout, gradient clipping,
//! optimizers, checkpoints and one [`Trainer`] over the CPU and GPU backends. CPU reference
//! generic over f32/f64; the fused WGSL kernels for the loss, dropout, clipping and optimizer
//! updates are in [`gpu`] (one `shaders/*.wgsl` per family). The demonstration tasks (adding
//! problem, character LM, gradient-flow study) live in the `wgpu-rnn-cli` application crate.

pub mod checkpoint;
pub mod clip;
pub mod dropout;
pub mod gpu;
pub mod gpu_step;
pub mod layers;
pub mod loss;
pub mod model;
pub mod optim;
pub mod trainer;

pub use checkpoint::{
    load_checkpoint, load_run_metadata, save_checkpoint, save_checkpoint_with_run, RunMetadata,
};
pub use clip::{clip_grad_norm, clip_grad_value, global_norm};
pub use dropout::{dropout_hash, Dropout};
pub use gpu_step::GpuTrainer;
pub use layers::{Embedding, Linear, Readout};
pub use loss::{cross_entropy, mse};
pub use model::{DropoutKey, Inputs, ModelInput, SeqModel, SeqModelConfig, Targets};
pub use optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
pub use trainer::{train_step, Backend, Clip, StepStats, Trainer};
