//! Cell kinds and the model configuration, mirroring `torch.nn.RNN/LSTM/GRU`.

use crate::error::{Result, RnnError};

/// Activation of the Elman RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nonlinearity {
    Tanh,
    Relu,
    /// No activation: the linear RNN of textbook worked examples.
    Identity,
}

impl Nonlinearity {
    /// Name as used by torch and the fixtures.
    pub fn name(self) -> &'static str {
        match self {
            Nonlinearity::Tanh => "tanh",
            Nonlinearity::Relu => "relu",
            Nonlinearity::Identity => "identity",
        }
    }

    /// Parses `tanh`, `relu` or `identity`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "tanh" => Ok(Nonlinearity::Tanh),
            "relu" => Ok(Nonlinearity::Relu),
            "identity" | "linear" => Ok(Nonlinearity::Identity),
            other => Err(RnnError::Config(format!(
                "unknown nonlinearity `{other}` (expected tanh, relu or identity)"
            ))),
        }
    }
}

/// The recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Elman RNN: h' = φ(W_ih x + b_ih + W_hh h + b_hh).
    Rnn(Nonlinearity),
    /// LSTM with gates i, f, g, o (torch order).
    Lstm,
    /// GRU with gates r, z, n; the reset gate multiplies (W_hn h + b_hn) as in torch.
    Gru,
}

impl CellKind {
    /// Number of gate blocks G in the weight matrices (rows = G·H).
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn(_) => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the cell carries a cell state c besides h.
    pub fn has_cell_state(self) -> bool {
        matches!(self, CellKind::Lstm)
    }

    /// Values per hidden unit the GPU training forward saves for backward (`SAVED` of the
    /// cell's .wgsl file): h' (RNN); i, f, g, o (LSTM); r, z, n, W_hn h + b_hn (GRU).
    pub fn gpu_saved_per_unit(self) -> usize {
        match self {
            CellKind::Rnn(_) => 1,
            CellKind::Lstm | CellKind::Gru => 4,
        }
    }

    /// Planes of gate gradients in backward: 2 where the input-side and hidden-side gradients
    /// differ (GRU, whose reset gate multiplies only the hidden side of n), else 1
    /// (`GRAD_PLANES` of the cell's .wgsl file).
    pub fn gate_gradient_planes(self) -> usize {
        match self {
            CellKind::Gru => 2,
            CellKind::Rnn(_) | CellKind::Lstm => 1,
        }
    }

    /// `rnn`, `lstm` or `gru`.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Rnn(_) => "rnn",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }

    /// Parses `rnn` (tanh), `rnn_tanh`, `rnn_relu`, `rnn_identity`, `lstm` or `gru`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            "rnn" => Ok(CellKind::Rnn(Nonlinearity::Tanh)),
            other => match other.strip_prefix("rnn_") {
                Some(nl) => Ok(CellKind::Rnn(Nonlinearity::parse(nl)?)),
                None => Err(RnnError::Config(format!(
                    "unknown cell `{other}` (expected rnn, rnn_relu, rnn_identity, lstm or gru)"
                ))),
            },
        }
    }
}

/// A (possibly multi-layer, bidirectional) recurrent network, as torch's constructor arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct RnnConfig {
    pub cell: CellKind,
    pub input_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub bidirectional: bool,
    pub bias: bool,
    /// Inputs and outputs are (B, T, F) instead of (T, B, F).
    pub batch_first: bool,
    /// Dropout probability on the outputs of every layer but the last (training only).
    pub dropout: f32,
}

impl RnnConfig {
    /// One layer, unidirectional, with bias, seq-major, no dropout.
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize) -> Self {
        RnnConfig {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
            bidirectional: false,
            bias: true,
            batch_first: false,
            dropout: 0.0,
        }
    }

    pub fn layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }

    pub fn bidirectional(mut self, bidirectional: bool) -> Self {
        self.bidirectional = bidirectional;
        self
    }

    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    pub fn batch_first(mut self, batch_first: bool) -> Self {
        self.batch_first = batch_first;
        self
    }

    pub fn dropout(mut self, dropout: f32) -> Self {
        self.dropout = dropout;
        self
    }

    /// D: 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Rows of every weight matrix: G·H.
    pub fn gate_rows(&self) -> usize {
        self.cell.gates() * self.hidden_size
    }

    /// Features entering `layer`: I for layer 0, D·H above it.
    pub fn layer_input_size(&self, layer: usize) -> usize {
        if layer == 0 {
            self.input_size
        } else {
            self.num_directions() * self.hidden_size
        }
    }

    /// Features of the output sequence: D·H.
    pub fn output_size(&self) -> usize {
        self.num_directions() * self.hidden_size
    }

    /// Shape of a sequence tensor with `features` columns: (T, B, F), or (B, T, F) when
    /// batch_first.
    pub fn sequence_shape(&self, t: usize, b: usize, features: usize) -> [usize; 3] {
        if self.batch_first {
            [b, t, features]
        } else {
            [t, b, features]
        }
    }

    /// Shape of h0, c0, h_n and c_n: (L·D, B, H).
    pub fn state_shape(&self, b: usize) -> [usize; 3] {
        [self.num_layers * self.num_directions(), b, self.hidden_size]
    }

    /// Checks that every size is positive and dropout is a probability.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("input_size", self.input_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
        ] {
            if v == 0 {
                return Err(RnnError::Config(format!("{what} must be at least 1")));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(RnnError::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }
}
