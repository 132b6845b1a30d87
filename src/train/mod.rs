//! Training around the RNN: embedding and output layers, losses, dropout, gradient clipping,
//! optimizers, checkpoints, the demonstration tasks (adding problem, character LM) and the
//! gradient-flow study. CPU reference generic over f32/f64; the fused WGSL kernels for the
//! loss, dropout, clipping and optimizer updates are in [`gpu`] (one `shaders/*.wgsl` per family).

pub mod checkpoint;
pub mod clip;
pub mod dropout;
pub mod gpu;
pub mod gpu_step;
pub mod gradflow;
pub mod layers;
pub mod loss;
pub mod model;
pub mod optim;
pub mod report;
pub mod sample;
pub mod tasks;
pub mod trainer;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use clip::{clip_grad_norm, clip_grad_value, global_norm};
pub use dropout::{dropout_hash, Dropout};
pub use gpu_step::GpuTrainer;
pub use gradflow::{
    gradflow, gradflow_with, GradFlowCurve, GradFlowOptions, GradFlowReport, GradFlowWeights,
};
pub use layers::{Embedding, Linear, Readout};
pub use loss::{cross_entropy, mse};
pub use model::{DropoutKey, Inputs, ModelInput, SeqModel, SeqModelConfig, Targets};
pub use optim::{AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
pub use report::{plot_many, LossPoint, TrainReport};
pub use sample::{sample_text, SampleOptions};
pub use tasks::{adding_batch, CharCorpus, Split};
pub use trainer::{
    train_adding, train_charlm, train_step, AddingOptions, Backend, CharLmOptions, Clip, StepStats,
};
