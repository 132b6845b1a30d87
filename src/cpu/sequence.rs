//! The one sequence driver shared by all cells: layers, directions, time steps and masking.
//! Each worker of the team takes a block of hidden units, packs its rows of the weights once
//! per direction, and runs every product of its block with the packed kernel: the per-step
//! products with W_hh between barriers, and a chunk of steps at a time the input projection
//! and (backward) the weight gradients and its columns of dx. Those chunk products do not
//! depend on the current step, so a worker that reaches a barrier before the others works on
//! them while it waits, its own or the other workers', and a worker that finishes first takes
//! the others' too: a core that runs slower (another process, another tenant) holds the team
//! back less.

use super::packed::{self, PackedMatrix};
use super::threads::{Barrier, SharedMatrix, Team};
use super::{gru, lstm, pool, rnn};
use crate::batch::{check_params, ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use crate::config::{CellKind, RnnConfig};
use crate::error::{try_zeros, Result, RnnError};
use crate::params::{LayerParams, RnnParams};
use crate::scalar::Scalar;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What the backward pass needs from a training forward pass.
#[derive(Clone, Debug)]
pub struct Tape<F: Scalar> {
    config: RnnConfig,
    seq_len: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    /// Per layer: (T·B, input features of the layer), seq-major rows t·B + b.
    layer_inputs: Vec<Array2<F>>,
    /// Per layer·D + direction.
    directions: Vec<DirectionTape<F>>,
}

impl<F: Scalar> Tape<F> {
    /// (T, B) of the recorded forward call.
    pub fn dims(&self) -> (usize, usize) {
        (self.seq_len, self.batch)
    }
}

/// Per-step records of one layer and direction; row t·B + b.
#[derive(Clone, Debug)]
struct DirectionTape<F: Scalar> {
    /// The blocks of hidden units the forward's workers took; `saved` is in their order.
    blocks: Vec<Range<usize>>,
    /// (T·B, H) hidden state entering step t
    h_prev: Array2<F>,
    /// (T·B, H) cell state entering step t, LSTM only
    c_prev: Option<Array2<F>>,
    /// (T·B, S·H) the cell's saved activations of step t, block by block: a block of units
    /// u0..u1 holds columns S·u0..S·u1 in the cell's layout for H = u1 − u0.
    saved: Array2<F>,
}

impl<F: Scalar> DirectionTape<F> {
    fn new(cell: CellKind, hidden: usize, rows: usize, blocks: Vec<Range<usize>>) -> Result<Self> {
        // Every element is written by the forward before anything reads it.
        Ok(DirectionTape {
            blocks,
            h_prev: pool::scratch("tape h_prev", rows, hidden)?,
            c_prev: cell
                .has_cell_state()
                .then(|| pool::scratch("tape c_prev", rows, hidden))
                .transpose()?,
            saved: pool::scratch("tape saved activations", rows, saved_blocks(cell) * hidden)?,
        })
    }
}

impl<F: Scalar> Drop for DirectionTape<F> {
    fn drop(&mut self) {
        let take = |a: &mut Array2<F>| std::mem::replace(a, Array2::zeros((0, 0)));
        pool::recycle(take(&mut self.h_prev));
        pool::recycle(take(&mut self.saved));
        if let Some(c_prev) = self.c_prev.as_mut() {
            pool::recycle(take(c_prev));
        }
    }
}

impl<F: Scalar> Drop for Tape<F> {
    fn drop(&mut self) {
        for layer_input in self.layer_inputs.drain(..) {
            pool::recycle(layer_input);
        }
    }
}

/// Recurrent state of a batch (or its gradient): h and, for the LSTM, c; each (B, H).
struct State<F> {
    h: Array2<F>,
    c: Option<Array2<F>>,
}

impl<F: Scalar> State<F> {
    /// State `index` of optional (L·D, B, H) tensors h and c (c only for cells that have it),
    /// zeros where absent.
    fn select(
        cell: CellKind,
        h: Option<&ArrayView3<'_, F>>,
        c: Option<&ArrayView3<'_, F>>,
        index: usize,
        (b, hidden): (usize, usize),
    ) -> Self {
        State {
            h: state_slice(h, index, b, hidden),
            c: cell
                .has_cell_state()
                .then(|| state_slice(c, index, b, hidden)),
        }
    }
}

/// Rows of x (steps × batch) per chunk of a forward's input projection: enough for the kernel
/// to reuse each panel of W_ih, few enough for the chunk's pre-activations to stay in cache.
const PROJECTION_ROWS: usize = 128;

/// Columns per piece of work that a worker does while it waits at a barrier: of a worker's
/// input projection (forward) or of its columns of dx (backward). Few enough for a piece to
/// take a small part of a step, enough for the kernel to reuse each row of the left operand
/// over several panels.
const PIECE_COLUMNS: usize = 64;

/// Gate rows of the weight gradients per piece of work in the backward.
const WEIGHT_PIECE_ROWS: usize = 128;

/// The workers' input projections x·W_ihᵀ + bias, each for its own gate columns, a chunk of
/// steps at a time: chunk i in processing order in slot i % 2 of `gx`, rows
/// (t − its first t)·B + b. While a worker runs chunk i, its chunk i + 1 is open: any worker
/// that waits at a barrier fills [`PIECE_COLUMNS`] columns of an open chunk, its own first,
/// and the owner fills what is left when the chunk begins.
struct Projections<'a, F: Scalar> {
    /// (2·chunk·B, all workers' gate columns in block order)
    gx: SharedMatrix<'a, F>,
    shares: Vec<Share<F>>,
    /// (T·B, In), seq-major rows
    x: ArrayView2<'a, F>,
    steps: &'a Steps<'a>,
    reverse: bool,
    chunk: usize,
}

/// One worker's part of [`Projections`]. Its column groups are numbered through the chunks:
/// group g of chunk i is i·groups + g.
struct Share<F: Scalar> {
    /// Its columns of gx.
    cols: Range<usize>,
    /// Column groups per chunk.
    groups: usize,
    /// Its rows of W_ih, packed, and its bias; published before its first barrier.
    weights: OnceLock<(PackedMatrix<F>, Option<Array1<F>>)>,
    /// The last chunk opened by the owner, how many groups were taken, and how many of those
    /// are filled.
    open: AtomicU64,
    taken: AtomicU64,
    filled: AtomicU64,
}

impl<'a, F: Scalar> Projections<'a, F> {
    fn new(
        gx: ArrayViewMut2<'a, F>,
        cols: impl Iterator<Item = Range<usize>>,
        x: ArrayView2<'a, F>,
        steps: &'a Steps<'a>,
        reverse: bool,
        chunk: usize,
    ) -> Self {
        let shares = cols
            .map(|cols| Share {
                groups: cols.len().div_ceil(PIECE_COLUMNS),
                cols,
                weights: OnceLock::new(),
                open: AtomicU64::new(0),
                taken: AtomicU64::new(0),
                filled: AtomicU64::new(0),
            })
            .collect();
        Projections {
            gx: SharedMatrix::new(gx),
            shares,
            x,
            steps,
            reverse,
            chunk,
        }
    }

    /// Worker k's packed rows of W_ih and its bias: from now on others may fill its chunks.
    fn publish(&self, k: usize, w_ih: PackedMatrix<F>, bias: Option<Array1<F>>) {
        let _ = self.shares[k].weights.set((w_ih, bias));
    }

    /// Fills one column group of worker k's open chunk, if one is left; whether it did.
    fn take(&self, k: usize) -> bool {
        let share = &self.shares[k];
        let Some((w_ih, bias)) = share.weights.get() else {
            return false;
        };
        // The groups of every chunk up to the open one (an older value only stops earlier).
        let chunks = self.steps.seq_len.div_ceil(self.chunk);
        let open = share.open.load(Ordering::Acquire) as usize;
        let end = ((open + 1).min(chunks) * share.groups) as u64;
        let Some(group) = take_next(&share.taken, |group| group < end) else {
            return false;
        };
        let (i, g) = (group as usize / share.groups, group as usize % share.groups);
        let b = self.steps.batch;
        let (first, steps) = self.steps.chunk(i, self.chunk, self.reverse);
        let slot = (i % 2) * self.chunk * b;
        let cols = g * PIECE_COLUMNS..((g + 1) * PIECE_COLUMNS).min(share.cols.len());
        let target = share.cols.start + cols.start..share.cols.start + cols.end;
        // SAFETY: the group was taken once, and the owner reads it only once it is filled.
        let mut gx = unsafe { self.gx.block_mut(slot..slot + steps * b, target) };
        match bias {
            Some(bias) => gx.assign(&bias.slice(s![cols.clone()])),
            None => gx.fill(F::zero()),
        }
        let x = self.x.slice(s![first * b..(first + steps) * b, ..]);
        w_ih.add_product_columns(x, gx, cols);
        share.filled.fetch_add(1, Ordering::Release);
        true
    }

    /// Fills one column group of any open chunk, worker `me`'s first; whether it did.
    fn advance(&self, me: usize) -> bool {
        let n = self.shares.len();
        (0..n).any(|o| self.take((me + o) % n))
    }

    /// Worker k's chunk i, as it begins: fills its groups left, waits for those others
    /// took, and opens chunk i + 1 (whose slot held chunk i − 1, which k has finished).
    fn complete(&self, k: usize, i: usize, barrier: &Barrier) {
        while self.take(k) {}
        let share = &self.shares[k];
        let filled = ((i + 1) * share.groups) as u64;
        barrier.wait_until(|| share.filled.load(Ordering::Acquire) >= filled);
        share.open.store(i as u64 + 1, Ordering::Release);
    }

    /// Worker k's projection of step t, in chunk i: (B, its gate columns).
    ///
    /// # Safety
    /// Only worker k calls it, for its current chunk, which is complete.
    unsafe fn step(&self, k: usize, i: usize, t: usize) -> ArrayViewMut2<'_, F> {
        let b = self.steps.batch;
        let (first, _) = self.steps.chunk(i, self.chunk, self.reverse);
        let row = (i % 2) * self.chunk * b + (t - first) * b;
        // SAFETY: no other worker writes the slot of k's current chunk (the caller's part).
        unsafe { self.gx.block_mut(row..row + b, self.shares[k].cols.clone()) }
    }
}

/// A piece of the backward's products over one chunk of steps.
enum Piece {
    /// These gate rows (block order) of dW_ih and dW_hh, and of the bias gradients.
    Weights(Range<usize>),
    /// These columns of worker k's share of dx's columns.
    Dx(usize, Range<usize>),
}

/// Increments `counter` if `available` holds for its value: the value it had, if it did. What
/// a worker wrote before it stored the counter is visible to the one that increments it.
fn take_next(counter: &AtomicU64, available: impl Fn(u64) -> bool) -> Option<u64> {
    let mut now = counter.load(Ordering::Acquire);
    while available(now) {
        match counter.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(now),
            Err(seen) => now = seen,
        }
    }
    None
}

/// Time steps of a batch and which sequences are masked at each.
struct Steps<'l> {
    seq_len: usize,
    batch: usize,
    lengths: Option<&'l [usize]>,
    /// The first t at which some sequence is masked.
    first_masked: usize,
}

impl<'l> Steps<'l> {
    fn new(seq_len: usize, batch: usize, lengths: Option<&'l [usize]>) -> Self {
        let first_masked = lengths
            .and_then(|l| l.iter().copied().min())
            .unwrap_or(seq_len);
        Steps {
            seq_len,
            batch,
            lengths,
            first_masked,
        }
    }

    /// Time indices in processing order.
    fn order(&self, reverse: bool) -> impl DoubleEndedIterator<Item = usize> {
        let t = self.seq_len;
        (0..t).map(move |s| if reverse { t - 1 - s } else { s })
    }

    fn any_masked(&self, t: usize) -> bool {
        t >= self.first_masked
    }

    /// Sequences with t >= lengths[b].
    fn masked(&self, t: usize) -> impl Iterator<Item = usize> + '_ {
        self.lengths
            .into_iter()
            .flatten()
            .enumerate()
            .filter(move |&(_, &len)| t >= len)
            .map(|(b, _)| b)
    }

    /// Steps per chunk of the chunk products: about [`PROJECTION_ROWS`] rows, at least one
    /// step and at most all.
    fn chunk_len(&self) -> usize {
        (PROJECTION_ROWS / self.batch.max(1)).clamp(1, self.seq_len.max(1))
    }

    /// The first t and the number of steps of chunk i, of `size` steps each in processing
    /// order (from T − 1 down when `reverse`).
    fn chunk(&self, i: usize, size: usize, reverse: bool) -> (usize, usize) {
        let steps = size.min(self.seq_len - i * size);
        let first = if reverse {
            self.seq_len - i * size - steps
        } else {
            i * size
        };
        (first, steps)
    }

    fn rows(&self, t: usize) -> std::ops::Range<usize> {
        t * self.batch..(t + 1) * self.batch
    }
}

fn saved_blocks(cell: CellKind) -> usize {
    match cell {
        CellKind::Rnn(_) => rnn::SAVED_BLOCKS,
        CellKind::Lstm => lstm::SAVED_BLOCKS,
        CellKind::Gru => gru::SAVED_BLOCKS,
    }
}

/// One layer and direction of a network, and the team that runs it.
struct Direction<'a, F> {
    team: &'a Team,
    cell: CellKind,
    params: &'a LayerParams<F>,
    steps: &'a Steps<'a>,
    reverse: bool,
}

impl<'a, F: Scalar> Direction<'a, F> {
    /// Direction `dir` (1: reverse) of `layer`.
    fn new(
        team: &'a Team,
        params: &'a RnnParams<F>,
        steps: &'a Steps<'a>,
        layer: usize,
        dir: usize,
    ) -> Self {
        Direction {
            team,
            cell: params.config.cell,
            params: &params.layers[layer * params.config.num_directions() + dir],
            steps,
            reverse: dir == 1,
        }
    }

    /// Runs the direction over `x` (T·B, In) from `state`, writes h_t into `out` (T·B, H)
    /// (zero at masked steps), records into `tape` if given, and returns the final state.
    /// The team's workers take one block of hidden units each (`blocks`), in lockstep.
    fn forward(
        &self,
        blocks: &[Range<usize>],
        x: ArrayView2<'_, F>,
        state: State<F>,
        out: ArrayViewMut2<'_, F>,
        tape: Option<&mut DirectionTape<F>>,
    ) -> Result<State<F>> {
        let p = self.params;
        let (b, hidden) = (self.steps.batch, p.w_hh.ncols());
        let gates = p.w_hh.nrows() / hidden;
        let saved_width = saved_blocks(self.cell);
        let order = block_gate_order(blocks, gates, hidden);
        let chunk = self.steps.chunk_len();
        // The input projections of two chunks of steps (see `Projections`).
        let mut gx = pool::scratch("input projection", 2 * chunk * b, order.len())?;
        // h entering step s is in h_buffers[s % 2]; each worker writes its units of the other.
        let mut h_buffers = [state.h.clone(), state.h];
        let mut c_final = state.c;
        {
            let h_shared = h_buffers
                .each_mut()
                .map(|h| SharedMatrix::new(h.view_mut()));
            let c_shared = c_final.as_mut().map(|c| SharedMatrix::new(c.view_mut()));
            let out = SharedMatrix::new(out);
            let record = tape.map(|tape| {
                (
                    SharedMatrix::new(tape.h_prev.view_mut()),
                    tape.c_prev
                        .as_mut()
                        .map(|c| SharedMatrix::new(c.view_mut())),
                    SharedMatrix::new(tape.saved.view_mut()),
                )
            });
            let projections = Projections::new(
                gx.view_mut(),
                blocks.iter().map(|u| gates * u.start..gates * u.end),
                x,
                self.steps,
                self.reverse,
                chunk,
            );
            self.team.run(blocks.len(), |k, barrier| {
                let units = blocks[k].clone();
                let gate_cols = gates * units.start..gates * units.end;
                let saved_cols = saved_width * units.start..saved_width * units.end;
                // This block's rows of the weights, in block order, packed once.
                let block_rows = &order[gate_cols.clone()];
                let w_ih = PackedMatrix::transposed_rows(p.w_ih.view(), block_rows);
                let w_hh = PackedMatrix::transposed_rows(p.w_hh.view(), block_rows);
                let b_ih = p.b_ih.as_ref().map(|bias| bias.select(Axis(0), block_rows));
                let b_hh = p.b_hh.as_ref().map(|bias| bias.select(Axis(0), block_rows));
                // The hidden side's pre-activations: apart for the GRU, which needs
                // W_hn h + b_hn alone; for the LSTM and the RNN, which use only the sum of the
                // two sides, added onto the step's rows of the input projection, whose bias
                // then holds b_hh too.
                let mut gh =
                    (self.cell == CellKind::Gru).then(|| Array2::zeros((b, gate_cols.len())));
                let (projection_bias, b_hh) = match (gh.is_some(), b_ih, b_hh) {
                    (false, Some(b_ih), Some(b_hh)) => (Some(b_ih + &b_hh), None),
                    (false, b_ih, b_hh) => (b_ih.or(b_hh), None),
                    (true, b_ih, b_hh) => (b_ih, b_hh),
                };
                projections.publish(k, w_ih, projection_bias);
                let mut scratch = record
                    .is_none()
                    .then(|| Array2::zeros((1, saved_cols.len())));
                // SAFETY (all blocks below): a worker writes only its own units' columns; it
                // reads other workers' columns (all of h_prev) only between the barrier after
                // their writes and the barrier before the next writes to that buffer.
                let mut h = unsafe { h_shared[0].block(0..b, units.clone()) }.to_owned();
                let mut c = c_shared
                    .as_ref()
                    .map(|c| unsafe { c.block(0..b, units.clone()) }.to_owned());
                for (s, t) in self.steps.order(self.reverse).enumerate() {
                    if s % chunk == 0 {
                        projections.complete(k, s / chunk, barrier);
                    }
                    // SAFETY: this worker's current chunk, complete.
                    let mut gates_t = unsafe { projections.step(k, s / chunk, t) };
                    let rows = self.steps.rows(t);
                    let h_prev = unsafe { h_shared[s % 2].block(0..b, 0..hidden) };
                    match gh.as_mut() {
                        Some(gh) => {
                            match &b_hh {
                                Some(bias) => gh.assign(bias),
                                None => gh.fill(F::zero()),
                            }
                            w_hh.add_product(h_prev, gh.view_mut());
                        }
                        None => w_hh.add_product(h_prev, gates_t.view_mut()),
                    }
                    let kept = self.steps.any_masked(t).then(|| (h.clone(), c.clone()));
                    let saved = match (&record, scratch.as_mut()) {
                        (Some((h_rec, c_rec, saved)), _) => {
                            unsafe { h_rec.block_mut(rows.clone(), units.clone()) }.assign(&h);
                            if let (Some(c_rec), Some(c)) = (c_rec, &c) {
                                unsafe { c_rec.block_mut(rows.clone(), units.clone()) }.assign(c);
                            }
                            unsafe { saved.block_mut(rows.clone(), saved_cols.clone()) }
                        }
                        (None, Some(scratch)) => scratch.view_mut(),
                        (None, None) => unreachable!("a scratch exists without a tape"),
                    };
                    let gates = gates_t.view();
                    match (self.cell, c.as_mut(), &gh) {
                        (CellKind::Rnn(nl), _, _) => rnn::step(nl, gates, h.view_mut(), saved),
                        (CellKind::Gru, _, Some(gh)) => {
                            gru::step(gates, gh.view(), h.view_mut(), saved)
                        }
                        (CellKind::Lstm, Some(c), _) => {
                            lstm::step(gates, h.view_mut(), c.view_mut(), saved)
                        }
                        _ => unreachable!("an LSTM state holds c, a GRU its hidden side"),
                    }
                    let mut out_t = unsafe { out.block_mut(rows, units.clone()) };
                    out_t.assign(&h);
                    if let Some((h_kept, c_kept)) = kept {
                        // Frozen: the state stays what it was, the output is zero.
                        for bi in self.steps.masked(t) {
                            h.row_mut(bi).assign(&h_kept.row(bi));
                            if let (Some(c), Some(c_kept)) = (c.as_mut(), &c_kept) {
                                c.row_mut(bi).assign(&c_kept.row(bi));
                            }
                            out_t.row_mut(bi).fill(F::zero());
                        }
                    }
                    unsafe { h_shared[(s + 1) % 2].block_mut(0..b, units.clone()) }.assign(&h);
                    // Waiting for the others, the worker projects next chunks ahead.
                    barrier.wait_working(|| projections.advance(k));
                }
                if let (Some(c_shared), Some(c)) = (&c_shared, &c) {
                    unsafe { c_shared.block_mut(0..b, units) }.assign(c);
                }
            });
        }
        pool::recycle(gx);
        let [even, odd] = h_buffers;
        Ok(State {
            h: if self.steps.seq_len.is_multiple_of(2) {
                even
            } else {
                odd
            },
            c: c_final,
        })
    }

    /// Backpropagates through the direction: `dout` (T·B, H) is d loss/d h_t, `dstate` the
    /// gradient of the final state. Writes the parameter gradients into `grads`, adds d loss/d x
    /// into `dx` (T·B, In) and returns the gradient of the initial state. The team's workers
    /// take the forward's blocks of hidden units, in lockstep. The weight gradients and dx are
    /// added a chunk of steps at a time, in pieces that any worker takes: while it waits at a
    /// barrier for chunks every worker has finished, and after the last step for the rest.
    fn backward(
        &self,
        x: ArrayView2<'_, F>,
        tape: &DirectionTape<F>,
        dout: ArrayView2<'_, F>,
        mut dstate: State<F>,
        grads: &mut LayerParams<F>,
        dx: ArrayViewMut2<'_, F>,
    ) -> Result<State<F>> {
        let p = self.params;
        let (b, hidden, inputs) = (self.steps.batch, p.w_hh.ncols(), x.ncols());
        let gates = p.w_hh.nrows() / hidden;
        let saved_width = saved_blocks(self.cell);
        let blocks = &tape.blocks;
        let order = block_gate_order(blocks, gates, hidden);
        let chunk = self.steps.chunk_len();
        // Gate pre-activation gradients of all steps, input side and (GRU only) hidden side;
        // and the weight gradients, rows in block order. Every element is written by the loop
        // below before anything reads it.
        let (rows, cols) = (self.steps.seq_len * b, order.len());
        let mut dg_x = pool::scratch::<F>("gate gradients", rows, cols)?;
        let mut dg_h_gru = (self.cell == CellKind::Gru)
            .then(|| pool::scratch("hidden gate gradients", rows, cols))
            .transpose()?;
        let mut dw_ih = pool::zeros::<F>("weight_ih gradient", order.len(), inputs)?;
        let mut dw_hh = pool::zeros::<F>("weight_hh gradient", order.len(), hidden)?;
        // Row 0: bias_ih's gradient, row 1: bias_hh's, in block order.
        let mut db = pool::zeros::<F>("bias gradients", 2, order.len())?;
        {
            let dg_x = SharedMatrix::new(dg_x.view_mut());
            let dg_h_gru = dg_h_gru.as_mut().map(|d| SharedMatrix::new(d.view_mut()));
            let dg_h = dg_h_gru.as_ref().unwrap_or(&dg_x);
            let dh_shared = SharedMatrix::new(dstate.h.view_mut());
            let dc_shared = dstate.c.as_mut().map(|c| SharedMatrix::new(c.view_mut()));
            let dx = SharedMatrix::new(dx);
            let (dw_ih, dw_hh, db) = (
                SharedMatrix::new(dw_ih.view_mut()),
                SharedMatrix::new(dw_hh.view_mut()),
                SharedMatrix::new(db.view_mut()),
            );
            // The products over time, in pieces that any worker may take: per chunk of steps
            // in processing order, the weight gradients' gate rows [`WEIGHT_PIECE_ROWS`] at a
            // time with their bias gradients, then dx's columns [`PIECE_COLUMNS`] at a time,
            // each worker's columns of x through its own rows of W_ih.
            let workers = blocks.len();
            let x_cols = |k: usize| inputs * k / workers..inputs * (k + 1) / workers;
            let chunk_pieces: Vec<Piece> = (0..order.len())
                .step_by(WEIGHT_PIECE_ROWS)
                .map(|r| Piece::Weights(r..(r + WEIGHT_PIECE_ROWS).min(order.len())))
                .chain((0..workers).flat_map(|k| {
                    let n = x_cols(k).len();
                    (0..n)
                        .step_by(PIECE_COLUMNS)
                        .map(move |c| Piece::Dx(k, c..(c + PIECE_COLUMNS).min(n)))
                }))
                .collect();
            let per_chunk = chunk_pieces.len();
            let chunks = self.steps.seq_len.div_ceil(chunk);
            // The next piece to take.
            let next_piece = AtomicU64::new(0);
            // Each worker's rows of W_ih for its columns of dx, packed by the worker before
            // its first barrier, so before any dx piece can be taken.
            let w_ih_blocks: Vec<OnceLock<PackedMatrix<F>>> =
                (0..workers).map(|_| OnceLock::new()).collect();
            self.team.run(workers, |k, barrier| {
                let units = blocks[k].clone();
                let gate_cols = gates * units.start..gates * units.end;
                let saved_cols = saved_width * units.start..saved_width * units.end;
                let w_hh = PackedMatrix::rows(p.w_hh.view(), &order, units.clone());
                let _ = w_ih_blocks[k].set(PackedMatrix::rows(p.w_ih.view(), &order, x_cols(k)));
                // SAFETY (all blocks below): a worker writes only its own units' columns of dg,
                // dh and dc; the pieces write disjoint blocks of the weight and bias gradients
                // and of dx, each piece taken by one worker. dg of a step is read (by the
                // others' units or by pieces) only after the barrier that follows its writes,
                // and no row of dg is written twice.
                let mut dh = unsafe { dh_shared.block(0..b, units.clone()) }.to_owned();
                let mut dc = dc_shared
                    .as_ref()
                    .map(|dc| unsafe { dc.block(0..b, units.clone()) }.to_owned());
                // The chunk's x and h_prev, packed for its weight pieces.
                let mut packed_chunk: Option<(usize, PackedMatrix<F>, PackedMatrix<F>)> = None;
                let mut accumulate = |piece: usize| {
                    let j = piece / per_chunk;
                    // Processing runs backwards through the forward's order.
                    let (first, steps) = self.steps.chunk(j, chunk, !self.reverse);
                    let rows = first * b..(first + steps) * b;
                    let gate_rows = match &chunk_pieces[piece % per_chunk] {
                        Piece::Weights(gate_rows) => gate_rows.clone(),
                        Piece::Dx(owner, cols) => {
                            let w_ih = w_ih_blocks[*owner].get().expect("packed before a barrier");
                            let start = x_cols(*owner).start;
                            let target = start + cols.start..start + cols.end;
                            let all_dg_x = unsafe { dg_x.block(rows.clone(), 0..order.len()) };
                            let dx = unsafe { dx.block_mut(rows, target) };
                            w_ih.add_product_columns(all_dg_x, dx, cols.clone());
                            return;
                        }
                    };
                    let (x_packed, h_packed) = match &packed_chunk {
                        Some((packed_j, x_packed, h_packed)) if *packed_j == j => {
                            (x_packed, h_packed)
                        }
                        _ => {
                            let row_list: Vec<usize> = rows.clone().collect();
                            let x_packed = PackedMatrix::rows(x, &row_list, 0..inputs);
                            let h_packed =
                                PackedMatrix::rows(tape.h_prev.view(), &row_list, 0..hidden);
                            let (_, x_packed, h_packed) =
                                packed_chunk.insert((j, x_packed, h_packed));
                            (&*x_packed, &*h_packed)
                        }
                    };
                    let (own_dg_x, own_dg_h) = unsafe {
                        (
                            dg_x.block(rows.clone(), gate_rows.clone()),
                            dg_h.block(rows, gate_rows.clone()),
                        )
                    };
                    // dgᵀ copied row-major once for both weight gradients (the GRU's differ).
                    let own_dg_x_t = packed::row_major(own_dg_x.t());
                    let gru_dg_h_t = dg_h_gru.is_some().then(|| packed::row_major(own_dg_h.t()));
                    let own_dg_h_t = gru_dg_h_t.as_ref().unwrap_or(&own_dg_x_t);
                    x_packed.add_product(own_dg_x_t.view(), unsafe {
                        dw_ih.block_mut(gate_rows.clone(), 0..inputs)
                    });
                    h_packed.add_product(own_dg_h_t.view(), unsafe {
                        dw_hh.block_mut(gate_rows.clone(), 0..hidden)
                    });
                    let mut db = unsafe { db.block_mut(0..2, gate_rows) };
                    for (mut db, dg_t) in db.rows_mut().into_iter().zip([&own_dg_x_t, own_dg_h_t]) {
                        db += &dg_t.sum_axis(Axis(1));
                    }
                    pool::recycle(own_dg_x_t);
                    if let Some(gru_dg_h_t) = gru_dg_h_t {
                        pool::recycle(gru_dg_h_t);
                    }
                };
                for (s, t) in self.steps.order(self.reverse).rev().enumerate() {
                    let rows = self.steps.rows(t);
                    let kept = self.steps.any_masked(t).then(|| (dh.clone(), dc.clone()));
                    dh += &dout.slice(s![rows.clone(), units.clone()]);
                    let saved = tape.saved.slice(s![rows.clone(), saved_cols.clone()]);
                    let mut dg_x_t = unsafe { dg_x.block_mut(rows.clone(), gate_cols.clone()) };
                    let mut dg_h_t = dg_h_gru
                        .as_ref()
                        .map(|d| unsafe { d.block_mut(rows.clone(), gate_cols.clone()) });
                    match (
                        self.cell,
                        dc.as_mut(),
                        tape.c_prev.as_ref(),
                        dg_h_t.as_mut(),
                    ) {
                        (CellKind::Rnn(nl), ..) => {
                            rnn::step_backward(nl, saved, dh.view_mut(), dg_x_t.view_mut())
                        }
                        (CellKind::Lstm, Some(dc), Some(c_prev), _) => lstm::step_backward(
                            saved,
                            c_prev.slice(s![rows.clone(), units.clone()]),
                            dh.view_mut(),
                            dc.view_mut(),
                            dg_x_t.view_mut(),
                        ),
                        (CellKind::Gru, _, _, Some(dg_h_t)) => gru::step_backward(
                            saved,
                            tape.h_prev.slice(s![rows.clone(), units.clone()]),
                            dh.view_mut(),
                            dg_x_t.view_mut(),
                            dg_h_t.view_mut(),
                        ),
                        _ => unreachable!("state, tape and gradients are built for the cell"),
                    }
                    if let Some((dh_kept, dc_kept)) = kept {
                        // Frozen step: gradients pass through unchanged, no gate gradient.
                        for bi in self.steps.masked(t) {
                            dh.row_mut(bi).assign(&dh_kept.row(bi));
                            if let (Some(dc), Some(dc_kept)) = (dc.as_mut(), &dc_kept) {
                                dc.row_mut(bi).assign(&dc_kept.row(bi));
                            }
                            dg_x_t.row_mut(bi).fill(F::zero());
                            if let Some(dg_h_t) = dg_h_t.as_mut() {
                                dg_h_t.row_mut(bi).fill(F::zero());
                            }
                        }
                    }
                    // Waiting for the others, the worker takes pieces of the chunks that are
                    // complete: every step before s (all workers passed its barrier).
                    let ready = (per_chunk * (s / chunk)) as u64;
                    barrier.wait_working(|| {
                        let piece = take_next(&next_piece, |piece| piece < ready);
                        piece.map(|piece| accumulate(piece as usize)).is_some()
                    });
                    let dg_h_t = unsafe { dg_h.block(rows, 0..order.len()) };
                    w_hh.add_product(dg_h_t, dh.view_mut());
                }
                // Every step's dg is complete (the last barrier followed the last writes):
                // the pieces not taken while waiting, shared by whoever is free.
                let all = (per_chunk * chunks) as u64;
                while let Some(piece) = take_next(&next_piece, |piece| piece < all) {
                    accumulate(piece as usize);
                }
                unsafe { dh_shared.block_mut(0..b, units.clone()) }.assign(&dh);
                if let (Some(dc_shared), Some(dc)) = (&dc_shared, &dc) {
                    unsafe { dc_shared.block_mut(0..b, units) }.assign(dc);
                }
            });
        }
        // Each row back to its place in torch's order.
        let (db_ih, db_hh) = (db.row(0), db.row(1));
        for (j, &row) in order.iter().enumerate() {
            grads.w_ih.row_mut(row).assign(&dw_ih.row(j));
            grads.w_hh.row_mut(row).assign(&dw_hh.row(j));
            if let Some(db) = grads.b_ih.as_mut() {
                db[row] = db_ih[j];
            }
            if let Some(db) = grads.b_hh.as_mut() {
                db[row] = db_hh[j];
            }
        }
        for a in [dg_x, dw_ih, dw_hh, db].into_iter().chain(dg_h_gru) {
            pool::recycle(a);
        }
        Ok(dstate)
    }
}

/// The gate rows of a layer (torch's order: gate-major, G·H) in block order: for each block of
/// hidden units, its units' rows of gate 0, then of gate 1, and so on. A block's gate columns
/// are then contiguous and laid out as a cell of its width expects them.
fn block_gate_order(blocks: &[Range<usize>], gates: usize, hidden: usize) -> Vec<usize> {
    blocks
        .iter()
        .flat_map(|units| (0..gates).flat_map(move |g| units.clone().map(move |u| g * hidden + u)))
        .collect()
}

/// A sequence tensor as seq-major rows (T·B, F), permuting (B, T, F) when batch_first.
fn sequence_rows<F: Scalar>(
    tensor: &str,
    a: ArrayView3<'_, F>,
    batch_first: bool,
) -> Result<Array2<F>> {
    let a = if batch_first {
        a.permuted_axes([1, 0, 2])
    } else {
        a
    };
    let (t, b, f) = a.dim();
    let mut rows = pool::scratch(tensor, t * b, f)?;
    for (mut to, from) in rows.rows_mut().into_iter().zip(a.rows()) {
        to.assign(&from);
    }
    Ok(rows)
}

/// Seq-major rows (T·B, F) back to (T, B, F), or (B, T, F) when batch_first.
fn sequence_tensor<F: Scalar>(
    tensor: &str,
    rows: Array2<F>,
    t: usize,
    b: usize,
    batch_first: bool,
) -> Result<Array3<F>> {
    let f = rows.ncols();
    let a = Array3::from_shape_vec((t, b, f), rows.into_raw_vec_and_offset().0)
        .unwrap_or_else(|_| unreachable!("a standard-layout array reshapes"));
    if !batch_first {
        return Ok(a);
    }
    let mut out = try_zeros(tensor, (b, t, f))?;
    out.assign(&a.view().permuted_axes([1, 0, 2]));
    pool::recycle_vec(a.into_raw_vec_and_offset().0);
    Ok(out)
}

/// State `index` of an optional (L·D, B, H) tensor, zeros when absent.
fn state_slice<F: Scalar>(
    a: Option<&ArrayView3<'_, F>>,
    index: usize,
    b: usize,
    h: usize,
) -> Array2<F> {
    match a {
        Some(a) => a.index_axis(Axis(0), index).to_owned(),
        None => Array2::zeros((b, h)),
    }
}

/// Forward over all layers and directions; records a tape when `train`.
pub(super) fn run_forward<F: Scalar>(
    team: &Team,
    params: &RnnParams<F>,
    batch: &SequenceBatch<'_, F>,
    train: bool,
) -> Result<(ForwardOutput<F>, Option<Tape<F>>)> {
    check_params(params)?;
    let config = &params.config;
    let (t, b) = batch.validate(config)?;
    let (hidden, d) = (config.hidden_size, config.num_directions());
    let cell = config.cell;
    let states = config.num_layers * d;
    let steps = Steps::new(t, b, batch.lengths);
    let blocks = team.blocks(hidden);
    let mut h_n = try_zeros("h_n", (states, b, hidden))?;
    let mut c_n = cell
        .has_cell_state()
        .then(|| try_zeros("c_n", (states, b, hidden)))
        .transpose()?;
    let mut layer_inputs = Vec::new();
    let mut directions = Vec::new();
    let mut x = sequence_rows("input", batch.input, config.batch_first)?;
    for layer in 0..config.num_layers {
        // Every element is written by the directions' forwards.
        let mut out = pool::scratch("output", t * b, d * hidden)?;
        for dir in 0..d {
            let index = layer * d + dir;
            let direction = Direction::new(team, params, &steps, layer, dir);
            let initial = State::select(
                cell,
                batch.h0.as_ref(),
                batch.c0.as_ref(),
                index,
                (b, hidden),
            );
            let mut tape = train
                .then(|| DirectionTape::new(cell, hidden, t * b, blocks.clone()))
                .transpose()?;
            let out_dir = out.slice_mut(s![.., dir * hidden..(dir + 1) * hidden]);
            let last = direction.forward(&blocks, x.view(), initial, out_dir, tape.as_mut())?;
            h_n.index_axis_mut(Axis(0), index).assign(&last.h);
            if let (Some(c_n), Some(c)) = (c_n.as_mut(), &last.c) {
                c_n.index_axis_mut(Axis(0), index).assign(c);
            }
            directions.extend(tape);
        }
        let layer_input = std::mem::replace(&mut x, out);
        if train {
            layer_inputs.push(layer_input);
        } else {
            pool::recycle(layer_input);
        }
    }
    let output = ForwardOutput {
        output: sequence_tensor("output", x, t, b, config.batch_first)?,
        h_n,
        c_n,
    };
    let tape = train.then(|| Tape {
        config: config.clone(),
        seq_len: t,
        batch: b,
        lengths: batch.lengths.map(<[usize]>::to_vec),
        layer_inputs,
        directions,
    });
    Ok((output, tape))
}

/// Backward through time over all layers and directions.
pub(super) fn run_backward<F: Scalar>(
    team: &Team,
    params: &RnnParams<F>,
    tape: &Tape<F>,
    upstream: &UpstreamGrads<'_, F>,
) -> Result<Gradients<F>> {
    check_params(params)?;
    let config = &params.config;
    if *config != tape.config {
        return Err(RnnError::Config(format!(
            "the parameters' config {config:?} differs from the tape's {:?}",
            tape.config
        )));
    }
    let (t, b) = (tape.seq_len, tape.batch);
    upstream.validate(config, t, b)?;
    let (hidden, d) = (config.hidden_size, config.num_directions());
    let cell = config.cell;
    let states = config.num_layers * d;
    let steps = Steps::new(t, b, tape.lengths.as_deref());
    // The backward's workers take the forward's blocks: a thread each, even if the thread
    // count was lowered in between.
    let workers = tape.directions.iter().map(|d| d.blocks.len()).max();
    let wider;
    let team = match workers {
        Some(workers) if workers > team.threads() => {
            wider = Team::with_threads(workers)?;
            &wider
        }
        _ => team,
    };
    let mut grads = RnnParams::zeros(config)?;
    let mut dh0 = try_zeros("grad_h0", (states, b, hidden))?;
    let mut dc0 = cell
        .has_cell_state()
        .then(|| try_zeros("grad_c0", (states, b, hidden)))
        .transpose()?;
    // d loss / d (output of the current layer), seq-major rows.
    let mut d_out = sequence_rows("grad_output", upstream.output, config.batch_first)?;
    for layer in (0..config.num_layers).rev() {
        let x = &tape.layer_inputs[layer];
        let mut dx = pool::zeros("grad_input", x.nrows(), x.ncols())?;
        for dir in 0..d {
            let index = layer * d + dir;
            let direction = Direction::new(team, params, &steps, layer, dir);
            let final_grad = State::select(
                cell,
                upstream.h_n.as_ref(),
                upstream.c_n.as_ref(),
                index,
                (b, hidden),
            );
            let initial_grad = direction.backward(
                x.view(),
                &tape.directions[index],
                d_out.slice(s![.., dir * hidden..(dir + 1) * hidden]),
                final_grad,
                &mut grads.layers[index],
                dx.view_mut(),
            )?;
            dh0.index_axis_mut(Axis(0), index).assign(&initial_grad.h);
            if let (Some(dc0), Some(dc)) = (dc0.as_mut(), &initial_grad.c) {
                dc0.index_axis_mut(Axis(0), index).assign(dc);
            }
        }
        pool::recycle(std::mem::replace(&mut d_out, dx));
    }
    Ok(Gradients {
        params: grads,
        input: sequence_tensor("grad_input", d_out, t, b, config.batch_first)?,
        h0: dh0,
        c0: dc0,
    })
}

#[cfg(test)]
mod tests {
    use super::{run_backward, run_forward};
    use crate::batch::{SequenceBatch, UpstreamGrads};
    use crate::config::{CellKind, Nonlinearity, RnnConfig};
    use crate::cpu::threads::Team;
    use crate::params::RnnParams;
    use crate::scalar::Scalar;
    use ndarray::{Array, Array3, ShapeBuilder};
    use rand::{RngExt, SeedableRng};

    fn uniform<F: Scalar, Sh: ShapeBuilder>(
        rng: &mut rand::rngs::StdRng,
        shape: Sh,
    ) -> Array<F, Sh::Dim> {
        Array::from_shape_simple_fn(shape, || F::from_f64(rng.random_range(-1.0..1.0)))
    }

    /// Every output and gradient of a forward + backward on `threads` threads, flattened, in
    /// f64. Two layers, bidirectional, sequence 1 shorter than the others.
    fn run<F: Scalar>(
        cell: CellKind,
        (t, b, h): (usize, usize, usize),
        threads: usize,
    ) -> Vec<f64> {
        let config = RnnConfig::new(cell, 5, h).layers(2).bidirectional(true);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let params = RnnParams::<f64>::init(&config, 3).unwrap().cast::<F>();
        let states = (4, b, h);
        let input: Array3<F> = uniform(&mut rng, (t, b, 5));
        let (h0, c0): (Array3<F>, Array3<F>) =
            (uniform(&mut rng, states), uniform(&mut rng, states));
        let g_out: Array3<F> = uniform(&mut rng, (t, b, 2 * h));
        let (g_h, g_c): (Array3<F>, Array3<F>) =
            (uniform(&mut rng, states), uniform(&mut rng, states));
        let lengths: Vec<usize> = (0..b).map(|i| if i == 1 { t - 1 } else { t }).collect();
        let mut batch = SequenceBatch::new(input.view())
            .h0(h0.view())
            .lengths(&lengths);
        let mut upstream = UpstreamGrads::new(g_out.view()).h_n(g_h.view());
        if cell == CellKind::Lstm {
            batch = batch.c0(c0.view());
            upstream = upstream.c_n(g_c.view());
        }
        let team = Team::with_threads(threads).unwrap();
        let (out, tape) = run_forward(&team, &params, &batch, true).unwrap();
        let tape = tape.unwrap();
        // Backward on fewer threads than the forward's blocks: it takes as many as it needs.
        let one = Team::with_threads(1).unwrap();
        let grads = run_backward(&one, &params, &tape, &upstream).unwrap();
        let (inference, _) = run_forward(&team, &params, &batch, false).unwrap();
        assert_eq!(
            inference.output, out.output,
            "inference and training forward agree"
        );
        let mut all: Vec<F> = Vec::new();
        for a in [&out.output, &out.h_n, &grads.input, &grads.h0] {
            all.extend(a.iter());
        }
        for a in out.c_n.iter().chain(&grads.c0) {
            all.extend(a.iter());
        }
        for (_, a) in grads.params.named() {
            all.extend(a.iter());
        }
        all.into_iter().map(Scalar::to_f64).collect()
    }

    /// (‖a − b‖ / ‖b‖, max |a − b|).
    fn errors(a: &[f64], b: &[f64]) -> (f64, f64) {
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let n = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        let max = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        (d / n, max)
    }

    /// The workers' blocks of hidden units (1, 2 or 3 of them at these sizes, of odd widths;
    /// batches of 1, 3 and 17, the last over several chunks of steps; the backward called with
    /// a team of one thread) give what one thread gives: in f64 to rounding, in f32 within f32
    /// rounding of the f64 one-thread run.
    #[test]
    fn every_thread_count_matches_one_thread() {
        let cells = [
            CellKind::Rnn(Nonlinearity::Tanh),
            CellKind::Lstm,
            CellKind::Gru,
        ];
        for cell in cells {
            for h in [1, 3, 33, 257] {
                // B = 17 over 20 steps: three chunks of 7 steps, filled and accumulated while
                // the workers wait at barriers.
                for (t, b) in [(4, 1), (4, 3), (20, 17)] {
                    let size = (t, b, h);
                    let reference = run::<f64>(cell, size, 1);
                    assert!(reference.iter().all(|v| v.is_finite()));
                    // f32 rounding grows with the largest value (gradients summed over B·T).
                    let peak = reference.iter().fold(1.0, |m: f64, v| m.max(v.abs()));
                    for threads in [2, 3] {
                        let what = format!("{cell:?} H={h} B={b} on {threads} threads");
                        let (rel, max) = errors(&run::<f64>(cell, size, threads), &reference);
                        assert!(
                            rel < 1e-14 && max < 1e-13,
                            "{what}, f64: {rel:.2e} {max:.2e}"
                        );
                        let (rel, max) = errors(&run::<f32>(cell, size, threads), &reference);
                        assert!(
                            rel < 1e-6 && max < 1e-6 * peak,
                            "{what}, f32: {rel:.2e} {max:.2e} (largest value {peak:.2})"
                        );
                    }
                }
            }
        }
    }
}
