//! Demonstration tasks: the adding problem and character-level language modelling.

use ndarray::{Array2, Array3};
use rand::{RngExt, SeedableRng};
use std::collections::BTreeSet;
use wgpu_rnn::error::{Result, RnnError};
use wgpu_rnn::scalar::Scalar;

/// MSE of always predicting 1 on the adding problem: Var(U₁ + U₂) = 1/6.
pub const ADDING_BASELINE_MSE: f64 = 1.0 / 6.0;

/// A generator seeded per (seed, batch index), so that any batch can be regenerated.
fn batch_rng(seed: u64, index: u64) -> rand::rngs::StdRng {
    let mixed = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    rand::rngs::StdRng::seed_from_u64(mixed)
}

/// The adding problem (Hochreiter & Schmidhuber 1997): every step carries (value ~ U[0, 1],
/// marker ∈ {0, 1}); exactly two markers, one in the first half and one in the second; the
/// target is the sum of the two marked values. Returns inputs (T, B, 2) and targets (B, 1).
/// Batch `index` under `seed` is always the same.
pub fn adding_batch<F: Scalar>(
    seq_len: usize,
    batch: usize,
    seed: u64,
    index: u64,
) -> Result<(Array3<F>, Array2<F>)> {
    if seq_len < 2 || batch == 0 {
        return Err(RnnError::Config(format!(
            "the adding problem needs seq_len ≥ 2 and batch ≥ 1, got {seq_len} and {batch}"
        )));
    }
    if seq_len
        .checked_mul(batch)
        .and_then(|n| n.checked_mul(2 * std::mem::size_of::<F>()))
        .is_none_or(|bytes| bytes > isize::MAX as usize)
    {
        return Err(RnnError::Config(format!(
            "the adding problem's inputs of seq_len {seq_len} × batch {batch} overflow"
        )));
    }
    let mut rng = batch_rng(seed, index);
    let mut inputs = Array3::zeros((seq_len, batch, 2));
    let mut targets = Array2::zeros((batch, 1));
    let half = seq_len / 2;
    for b in 0..batch {
        for t in 0..seq_len {
            inputs[[t, b, 0]] = F::from_f64(rng.random::<f64>());
        }
        let first = rng.random_range(0..half);
        let second = rng.random_range(half..seq_len);
        inputs[[first, b, 1]] = F::one();
        inputs[[second, b, 1]] = F::one();
        targets[[b, 0]] = inputs[[first, b, 0]] + inputs[[second, b, 0]];
    }
    Ok((inputs, targets))
}

/// Which part of a corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    HeldOut,
}

/// A character corpus: the vocabulary (sorted distinct characters) and the text as ids,
/// split into a training part and a held-out tail.
#[derive(Clone, Debug, PartialEq)]
pub struct CharCorpus {
    pub vocab: Vec<char>,
    pub train: Vec<usize>,
    pub held_out: Vec<usize>,
}

impl CharCorpus {
    /// Builds the vocabulary from all of `text` and holds out its last `held_out_fraction`.
    pub fn from_text(text: &str, held_out_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&held_out_fraction) || held_out_fraction == 0.0 {
            return Err(RnnError::Config(format!(
                "held-out fraction must be in (0, 1), got {held_out_fraction}"
            )));
        }
        let vocab: Vec<char> = text.chars().collect::<BTreeSet<_>>().into_iter().collect();
        let ids: Vec<usize> = text
            .chars()
            .map(|c| vocab.binary_search(&c).unwrap_or_default())
            .collect();
        let split = ((ids.len() as f64) * (1.0 - held_out_fraction)) as usize;
        let (train, held_out) = ids.split_at(split);
        if train.len() < 2 || held_out.len() < 2 {
            return Err(RnnError::Config(format!(
                "text of {} characters is too short to split",
                ids.len()
            )));
        }
        Ok(CharCorpus {
            vocab,
            train: train.to_vec(),
            held_out: held_out.to_vec(),
        })
    }

    fn part(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.train,
            Split::HeldOut => &self.held_out,
        }
    }

    /// `batch` windows of `seq_len + 1` characters at random offsets: inputs (T, B) and the
    /// next-character targets, row t·B + b. Batch `index` under `seed` is always the same.
    pub fn random_batch(
        &self,
        split: Split,
        seq_len: usize,
        batch: usize,
        seed: u64,
        index: u64,
    ) -> Result<(Array2<usize>, Vec<usize>)> {
        let ids = self.part(split);
        self.check_window(split, seq_len, batch)?;
        let mut rng = batch_rng(seed, index);
        let starts: Vec<usize> = (0..batch)
            .map(|_| rng.random_range(0..ids.len() - seq_len))
            .collect();
        Ok(windows(ids, &starts, seq_len))
    }

    /// Consecutive non-overlapping batches covering `split` from its start (the tail that does
    /// not fill a batch is dropped): for a deterministic held-out score.
    pub fn sequential_batches(
        &self,
        split: Split,
        seq_len: usize,
        batch: usize,
    ) -> Result<Vec<(Array2<usize>, Vec<usize>)>> {
        let ids = self.part(split);
        self.check_window(split, seq_len, batch)?;
        let per_batch = seq_len * batch;
        let count = (ids.len() - 1) / per_batch;
        Ok((0..count)
            .map(|k| {
                let starts: Vec<usize> = (0..batch).map(|b| k * per_batch + b * seq_len).collect();
                windows(ids, &starts, seq_len)
            })
            .collect())
    }

    /// `batch` windows of `seq_len` characters (+ 1 target) fit in `split`; the error names
    /// the split and the whole text's length.
    fn check_window(&self, split: Split, seq_len: usize, batch: usize) -> Result<()> {
        let ids = self.part(split);
        let fits = seq_len
            .checked_mul(batch)
            .is_some_and(|chars| seq_len > 0 && batch > 0 && chars < ids.len());
        if !fits {
            let part = match split {
                Split::Train => "training part",
                Split::HeldOut => "held-out tail",
            };
            return Err(RnnError::Config(format!(
                "cannot cut {batch} windows of {seq_len} characters from the {part} of the text \
                 ({} of its {} characters); use a longer text or a smaller --batch / --seq-len",
                ids.len(),
                self.train.len() + self.held_out.len()
            )));
        }
        Ok(())
    }
}

fn windows(ids: &[usize], starts: &[usize], seq_len: usize) -> (Array2<usize>, Vec<usize>) {
    let batch = starts.len();
    let inputs = Array2::from_shape_fn((seq_len, batch), |(t, b)| ids[starts[b] + t]);
    let targets = (0..seq_len * batch)
        .map(|row| ids[starts[row % batch] + row / batch + 1])
        .collect();
    (inputs, targets)
}
