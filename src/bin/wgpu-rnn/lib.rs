//! The `wgpu-rnn` application on top of the `wgpu_rnn` library: the CPU-vs-GPU benchmark, the
//! torch-fixture verification, the demonstration tasks (adding problem, character LM,
//! gradient-flow study) with their reports, plots and text sampling. The command line is
//! `main.rs`; the examples in the repository's `examples/` that train use this crate too.

pub mod bench;
pub mod demo;
#[path = "../../../tests/common/fixture.rs"]
pub mod fixture;
pub mod gradflow;
pub mod limits;
pub mod report;
pub mod sample;
pub mod tasks;

pub use demo::{cell_name, train_adding, train_charlm, AddingOptions, CharLmOptions, BUNDLED_TEXT};
pub use gradflow::{
    gradflow, gradflow_with, GradFlowCurve, GradFlowOptions, GradFlowReport, GradFlowWeights,
};
pub use report::{plot_many, LossPoint, TrainReport};
pub use sample::{sample_text, SampleOptions};
pub use tasks::{adding_batch, CharCorpus, Split};
