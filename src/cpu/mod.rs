//! The CPU reference, generic over f32 and f64: forward (inference or training) and
//! backpropagation through time, with torch's exact semantics, on [`num_threads`] threads.
//! Workspaces and tapes of finished calls are kept for the next ones (at most 128 MiB in all),
//! which spares a page fault per 4 KiB of them.
//!
//! `RnnConfig::dropout` is ignored here: dropout between layers is a training feature that
//! this reference does not implement.

mod gru;
mod lstm;
mod packed;
mod pool;
mod rnn;
mod rows;
mod sequence;
mod threads;

pub use sequence::Tape;
use threads::Team;
pub use threads::{num_threads, set_num_threads, THREADS_ENV};

use crate::batch::{ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use crate::error::Result;
use crate::params::RnnParams;
use crate::scalar::Scalar;

/// Inference: runs every layer and direction over the batch.
pub fn forward<F: Scalar>(
    params: &RnnParams<F>,
    batch: &SequenceBatch<'_, F>,
) -> Result<ForwardOutput<F>> {
    sequence::run_forward(&Team::current()?, params, batch, false).map(|(output, _)| output)
}

/// Training forward: like [`forward`], and also returns the [`Tape`] that [`backward`] needs.
pub fn forward_train<F: Scalar>(
    params: &RnnParams<F>,
    batch: &SequenceBatch<'_, F>,
) -> Result<(ForwardOutput<F>, Tape<F>)> {
    let (output, tape) = sequence::run_forward(&Team::current()?, params, batch, true)?;
    match tape {
        Some(tape) => Ok((output, tape)),
        None => unreachable!("a training forward always records a tape"),
    }
}

/// Backpropagation through time: d loss / d (parameters, input, h0, c0) from the upstream
/// gradients of a [`forward_train`] call's outputs.
pub fn backward<F: Scalar>(
    params: &RnnParams<F>,
    tape: &Tape<F>,
    grads: &UpstreamGrads<'_, F>,
) -> Result<Gradients<F>> {
    sequence::run_backward(&Team::current()?, params, tape, grads)
}
