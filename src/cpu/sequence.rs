//! The one sequence driver shared by all cells: layers, directions, time steps and masking,
//! the input projection of all steps as one product, the per-step products with W_hh packed
//! once per direction, and the weight gradients as big products.

use super::packed::PackedMatrix;
use super::{gru, lstm, rnn};
use crate::batch::{check_params, ForwardOutput, Gradients, SequenceBatch, UpstreamGrads};
use crate::config::{CellKind, RnnConfig};
use crate::error::{Result, RnnError};
use crate::params::{LayerParams, RnnParams};
use crate::scalar::Scalar;
use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, Array3, ArrayView2, ArrayView3, ArrayViewMut2, Axis};

/// What the backward pass needs from a training forward pass.
#[derive(Clone, Debug)]
pub struct Tape<F> {
    config: RnnConfig,
    seq_len: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    /// Per layer: (T·B, input features of the layer), seq-major rows t·B + b.
    layer_inputs: Vec<Array2<F>>,
    /// Per layer·D + direction.
    directions: Vec<DirectionTape<F>>,
}

impl<F> Tape<F> {
    /// (T, B) of the recorded forward call.
    pub fn dims(&self) -> (usize, usize) {
        (self.seq_len, self.batch)
    }
}

/// Per-step records of one layer and direction; row t·B + b (or just b for a one-step scratch).
#[derive(Clone, Debug)]
struct DirectionTape<F> {
    /// (T·B, H) hidden state entering step t
    h_prev: Array2<F>,
    /// (T·B, H) cell state entering step t, LSTM only
    c_prev: Option<Array2<F>>,
    /// (T·B, S·H) the cell's saved activations of step t
    saved: Array2<F>,
}

impl<F: Scalar> DirectionTape<F> {
    fn new(cell: CellKind, hidden: usize, rows: usize) -> Self {
        DirectionTape {
            h_prev: Array2::zeros((rows, hidden)),
            c_prev: cell.has_cell_state().then(|| Array2::zeros((rows, hidden))),
            saved: Array2::zeros((rows, saved_blocks(cell) * hidden)),
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

/// One layer and direction of a network.
struct Direction<'a, F> {
    cell: CellKind,
    params: &'a LayerParams<F>,
    steps: &'a Steps<'a>,
    reverse: bool,
}

impl<'a, F: Scalar> Direction<'a, F> {
    /// Direction `dir` (1: reverse) of `layer`.
    fn new(params: &'a RnnParams<F>, steps: &'a Steps<'a>, layer: usize, dir: usize) -> Self {
        Direction {
            cell: params.config.cell,
            params: &params.layers[layer * params.config.num_directions() + dir],
            steps,
            reverse: dir == 1,
        }
    }

    /// Runs the direction over `x` (T·B, In) from `state`, writes h_t into `out` (T·B, H)
    /// (zero at masked steps), records into `tape` if given, and returns the final state.
    fn forward(
        &self,
        x: ArrayView2<'_, F>,
        mut state: State<F>,
        mut out: ArrayViewMut2<'_, F>,
        tape: Option<&mut DirectionTape<F>>,
    ) -> State<F> {
        let p = self.params;
        let b = self.steps.batch;
        let hidden = p.w_hh.ncols();
        // Input projection of all steps at once: (T·B, G·H).
        let mut gx = x.dot(&p.w_ih.t());
        if let Some(bias) = &p.b_ih {
            gx += bias;
        }
        let w_hh = PackedMatrix::new(p.w_hh.t());
        let mut gh = Array2::zeros((b, p.w_hh.nrows()));
        let keeps_all_steps = tape.is_some();
        let mut scratch;
        let record = match tape {
            Some(tape) => tape,
            None => {
                scratch = DirectionTape::new(self.cell, hidden, b);
                &mut scratch
            }
        };
        for t in self.steps.order(self.reverse) {
            let rows = self.steps.rows(t);
            let rec = if keeps_all_steps { rows.clone() } else { 0..b };
            record
                .h_prev
                .slice_mut(s![rec.clone(), ..])
                .assign(&state.h);
            if let (Some(c_prev), Some(c)) = (record.c_prev.as_mut(), &state.c) {
                c_prev.slice_mut(s![rec.clone(), ..]).assign(c);
            }
            match &p.b_hh {
                Some(bias) => gh.assign(bias),
                None => gh.fill(F::zero()),
            }
            w_hh.add_product(state.h.view(), &mut gh);
            let gx_t = gx.slice(s![rows.clone(), ..]);
            let saved = record.saved.slice_mut(s![rec.clone(), ..]);
            match (self.cell, state.c.as_mut()) {
                (CellKind::Rnn(nl), _) => rnn::step(nl, gx_t, gh.view(), state.h.view_mut(), saved),
                (CellKind::Gru, _) => gru::step(gx_t, gh.view(), state.h.view_mut(), saved),
                (CellKind::Lstm, Some(c)) => {
                    lstm::step(gx_t, gh.view(), state.h.view_mut(), c.view_mut(), saved)
                }
                (CellKind::Lstm, None) => unreachable!("an LSTM state always holds c"),
            }
            let mut out_t = out.slice_mut(s![rows, ..]);
            out_t.assign(&state.h);
            if self.steps.any_masked(t) {
                // Frozen: the state stays what it was, the output is zero.
                for bi in self.steps.masked(t) {
                    state
                        .h
                        .row_mut(bi)
                        .assign(&record.h_prev.row(rec.start + bi));
                    if let (Some(c), Some(c_prev)) = (state.c.as_mut(), record.c_prev.as_ref()) {
                        c.row_mut(bi).assign(&c_prev.row(rec.start + bi));
                    }
                    out_t.row_mut(bi).fill(F::zero());
                }
            }
        }
        state
    }

    /// Backpropagates through the direction: `dout` (T·B, H) is d loss/d h_t, `dstate` the
    /// gradient of the final state. Writes the parameter gradients into `grads`, adds d loss/d x
    /// into `dx` (T·B, In) and returns the gradient of the initial state.
    fn backward(
        &self,
        x: ArrayView2<'_, F>,
        tape: &DirectionTape<F>,
        dout: ArrayView2<'_, F>,
        mut dstate: State<F>,
        grads: &mut LayerParams<F>,
        mut dx: ArrayViewMut2<'_, F>,
    ) -> State<F> {
        let p = self.params;
        let w_hh = PackedMatrix::new(p.w_hh.view());
        let gate_rows = p.w_hh.nrows();
        let all_rows = self.steps.seq_len * self.steps.batch;
        // Gate pre-activation gradients of all steps, input side and (GRU only) hidden side.
        let mut dg_x = Array2::<F>::zeros((all_rows, gate_rows));
        let mut dg_h_gru = (self.cell == CellKind::Gru).then(|| Array2::zeros(dg_x.dim()));
        let mut kept = State {
            h: Array2::zeros(dstate.h.dim()),
            c: dstate.c.as_ref().map(|c| Array2::zeros(c.dim())),
        };
        for t in self.steps.order(self.reverse).rev() {
            let rows = self.steps.rows(t);
            let masked = self.steps.any_masked(t);
            if masked {
                kept.h.assign(&dstate.h);
                if let (Some(k), Some(c)) = (kept.c.as_mut(), &dstate.c) {
                    k.assign(c);
                }
            }
            dstate.h += &dout.slice(s![rows.clone(), ..]);
            let saved = tape.saved.slice(s![rows.clone(), ..]);
            let dg_x_t = dg_x.slice_mut(s![rows.clone(), ..]);
            match (
                self.cell,
                dstate.c.as_mut(),
                tape.c_prev.as_ref(),
                dg_h_gru.as_mut(),
            ) {
                (CellKind::Rnn(nl), ..) => {
                    rnn::step_backward(nl, saved, dstate.h.view_mut(), dg_x_t)
                }
                (CellKind::Lstm, Some(dc), Some(c_prev), _) => lstm::step_backward(
                    saved,
                    c_prev.slice(s![rows.clone(), ..]),
                    dstate.h.view_mut(),
                    dc.view_mut(),
                    dg_x_t,
                ),
                (CellKind::Gru, _, _, Some(dg_h)) => gru::step_backward(
                    saved,
                    tape.h_prev.slice(s![rows.clone(), ..]),
                    dstate.h.view_mut(),
                    dg_x_t,
                    dg_h.slice_mut(s![rows.clone(), ..]),
                ),
                _ => unreachable!("state, tape and gradients are built for the cell"),
            }
            if masked {
                // Frozen step: gradients pass through unchanged, no gate gradient.
                for bi in self.steps.masked(t) {
                    dstate.h.row_mut(bi).assign(&kept.h.row(bi));
                    if let (Some(dc), Some(k)) = (dstate.c.as_mut(), kept.c.as_ref()) {
                        dc.row_mut(bi).assign(&k.row(bi));
                    }
                    dg_x.row_mut(rows.start + bi).fill(F::zero());
                    if let Some(dg_h) = dg_h_gru.as_mut() {
                        dg_h.row_mut(rows.start + bi).fill(F::zero());
                    }
                }
            }
            let dg_h_t = dg_h_gru.as_ref().unwrap_or(&dg_x).slice(s![rows, ..]);
            w_hh.add_product(dg_h_t, &mut dstate.h);
        }
        let dg_h = dg_h_gru.as_ref().unwrap_or(&dg_x);
        general_mat_mul(F::one(), &dg_x.t(), &x, F::zero(), &mut grads.w_ih);
        general_mat_mul(
            F::one(),
            &dg_h.t(),
            &tape.h_prev,
            F::zero(),
            &mut grads.w_hh,
        );
        if let Some(db) = grads.b_ih.as_mut() {
            db.assign(&dg_x.sum_axis(Axis(0)));
        }
        if let Some(db) = grads.b_hh.as_mut() {
            db.assign(&dg_h.sum_axis(Axis(0)));
        }
        general_mat_mul(F::one(), &dg_x, &p.w_ih, F::one(), &mut dx);
        dstate
    }
}

/// A sequence tensor as seq-major rows (T·B, F), permuting (B, T, F) when batch_first.
fn sequence_rows<F: Scalar>(a: ArrayView3<'_, F>, batch_first: bool) -> Array2<F> {
    let a = if batch_first {
        a.permuted_axes([1, 0, 2])
    } else {
        a
    };
    let (t, b, f) = a.dim();
    let rows = a.as_standard_layout().into_owned();
    Array2::from_shape_vec((t * b, f), rows.into_raw_vec_and_offset().0)
        .unwrap_or_else(|_| unreachable!("a standard-layout array reshapes"))
}

/// Seq-major rows (T·B, F) back to (T, B, F), or (B, T, F) when batch_first.
fn sequence_tensor<F: Scalar>(rows: Array2<F>, t: usize, b: usize, batch_first: bool) -> Array3<F> {
    let f = rows.ncols();
    let a = Array3::from_shape_vec((t, b, f), rows.into_raw_vec_and_offset().0)
        .unwrap_or_else(|_| unreachable!("a standard-layout array reshapes"));
    if batch_first {
        a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned()
    } else {
        a
    }
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
    let mut h_n = Array3::zeros((states, b, hidden));
    let mut c_n = cell
        .has_cell_state()
        .then(|| Array3::zeros((states, b, hidden)));
    let mut layer_inputs = Vec::new();
    let mut directions = Vec::new();
    let mut x = sequence_rows(batch.input, config.batch_first);
    for layer in 0..config.num_layers {
        let mut out = Array2::zeros((t * b, d * hidden));
        for dir in 0..d {
            let index = layer * d + dir;
            let direction = Direction::new(params, &steps, layer, dir);
            let initial = State::select(
                cell,
                batch.h0.as_ref(),
                batch.c0.as_ref(),
                index,
                (b, hidden),
            );
            let mut tape = train.then(|| DirectionTape::new(cell, hidden, t * b));
            let out_dir = out.slice_mut(s![.., dir * hidden..(dir + 1) * hidden]);
            let last = direction.forward(x.view(), initial, out_dir, tape.as_mut());
            h_n.index_axis_mut(Axis(0), index).assign(&last.h);
            if let (Some(c_n), Some(c)) = (c_n.as_mut(), &last.c) {
                c_n.index_axis_mut(Axis(0), index).assign(c);
            }
            directions.extend(tape);
        }
        let layer_input = std::mem::replace(&mut x, out);
        if train {
            layer_inputs.push(layer_input);
        }
    }
    let output = ForwardOutput {
        output: sequence_tensor(x, t, b, config.batch_first),
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
    let mut grads = RnnParams::zeros(config)?;
    let mut dh0 = Array3::zeros((states, b, hidden));
    let mut dc0 = cell
        .has_cell_state()
        .then(|| Array3::zeros((states, b, hidden)));
    // d loss / d (output of the current layer), seq-major rows.
    let mut d_out = sequence_rows(upstream.output, config.batch_first);
    for layer in (0..config.num_layers).rev() {
        let x = &tape.layer_inputs[layer];
        let mut dx = Array2::zeros(x.dim());
        for dir in 0..d {
            let index = layer * d + dir;
            let direction = Direction::new(params, &steps, layer, dir);
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
            );
            dh0.index_axis_mut(Axis(0), index).assign(&initial_grad.h);
            if let (Some(dc0), Some(dc)) = (dc0.as_mut(), &initial_grad.c) {
                dc0.index_axis_mut(Axis(0), index).assign(dc);
            }
        }
        d_out = dx;
    }
    Ok(Gradients {
        params: grads,
        input: sequence_tensor(d_out, t, b, config.batch_first),
        h0: dh0,
        c0: dc0,
    })
}
