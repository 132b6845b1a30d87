"""PyTorch's RNN, LSTM and GRU, exact, on any GPU (Vulkan, Metal, DX12, GL) through wgpu.

    import numpy as np, wgpu_rnn
    lstm = wgpu_rnn.LSTM(8, 16, num_layers=2)          # device=None: the default GPU adapter
    x = np.random.default_rng(0).standard_normal((10, 3, 8), dtype=np.float32)
    output, (h_n, c_n) = lstm(x)                      # (10, 3, 16), (2, 3, 16), (2, 3, 16)

Inputs are anything numpy can view as a real floating array (numpy arrays, torch CPU tensors),
taken as float32; outputs are numpy float32 arrays. Bad shapes or values raise ValueError, a
wrong dtype TypeError, device problems RuntimeError, host memory that a workload needs but
cannot get MemoryError, each with wgpu-rnn's message. The GIL is released while the library
works. `wgpu_rnn.torch` has `torch.nn.Module` drop-ins.
"""

import numbers
import os
from collections import OrderedDict

import numpy as np

from . import _native

__version__ = _native.__version__
__all__ = ["RNN", "LSTM", "GRU", "Stream", "Tape", "adapters", "from_torch", "__version__"]

_NONLINEARITIES = ("tanh", "relu", "identity")


def adapters():
    """Every adapter wgpu sees: a list of dicts with name, backend, device_type, driver and
    selected (the one `device=None` picks; WGPU_BACKEND and WGPU_ADAPTER_NAME narrow it)."""
    return _native.adapters()


def _float32(name, value):
    """`value` (numpy array, torch tensor, nested list) as a C-contiguous float32 array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without torch
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind != "f":
        raise TypeError(f"tensor `{name}` has dtype {array.dtype}, expected a floating dtype")
    return np.ascontiguousarray(array, dtype=np.float32)


def _lengths(lengths):
    if lengths is None:
        return None
    if hasattr(lengths, "detach"):
        lengths = lengths.detach().cpu().numpy()
    array = np.asarray(lengths)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(
            f"invalid lengths: expected a 1-D sequence of integers, got shape "
            f"{list(array.shape)} of dtype {array.dtype}"
        )
    return [int(v) for v in array]


class _Recurrent:
    """What RNN, LSTM and GRU share; `_cell` names the cell for the library."""

    _cell = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, *, device=None, seed=None):
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"invalid configuration: {name} must be an integer >= 1, "
                                 f"got {value!r}")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.input_size = input_size = int(input_size)
        self.hidden_size = hidden_size = int(hidden_size)
        self.num_layers = num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self._model = _native.Model(self._cell, input_size, hidden_size, num_layers, self.bias,
                                    self.batch_first, self.bidirectional, self.dropout, device,
                                    seed)

    @property
    def device(self):
        """The adapter's name, or "cpu"."""
        return self._model.device

    @property
    def _has_cell_state(self):
        return self._cell == "lstm"

    def __repr__(self):
        options = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                                  ("dropout", 0.0), ("bidirectional", False))
            if getattr(self, name) != default
        )
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}{options}, "
                f"device={self.device!r})")

    def _states(self, hx):
        """(h0, c0) from torch's hx: h0, or (h0, c0) for an LSTM; either may be None."""
        if hx is None:
            return None, None
        if self._has_cell_state:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx of an LSTM must be a tuple (h0, c0)")
            h0, c0 = hx
            return (None if h0 is None else _float32("h0", h0),
                    None if c0 is None else _float32("c0", c0))
        return _float32("h0", hx), None

    def _hidden(self, h_n, c_n):
        return (h_n, c_n) if self._has_cell_state else h_n

    def __call__(self, input, hx=None, *, lengths=None):
        return self.forward(input, hx, lengths=lengths)

    def forward(self, input, hx=None, *, lengths=None, train=False):
        """torch's call: returns (output, h_n), or (output, (h_n, c_n)) for an LSTM.

        `lengths`: per-sequence lengths (B), any order; outputs past a sequence's length are
        zero and h_n is its state at its last valid step. With `train=True`, returns a `Tape`
        whose `backward` gives the gradients.
        """
        h0, c0 = self._states(hx)
        args = (_float32("input", input), h0, c0, _lengths(lengths))
        if not train:
            output, h_n, c_n = self._model.forward(*args)
            return output, self._hidden(h_n, c_n)
        if self.dropout > 0 and self.num_layers > 1:
            raise NotImplementedError(
                "dropout between layers is not implemented by wgpu-rnn: build with dropout=0 "
                "(wgpu_rnn.torch applies torch's dropout between layers)")
        output, h_n, c_n, tape = self._model.forward_train(*args)
        return Tape(self, tape, output, self._hidden(h_n, c_n))

    def state_dict(self):
        """Every parameter by torch's name, as float32 numpy arrays (copies)."""
        return OrderedDict(self._model.named())

    def load_state_dict(self, state_dict):
        """Replaces every parameter from a mapping with torch's names (numpy arrays or torch
        tensors). A missing, extra or misshaped tensor raises ValueError naming it and leaves
        the weights unchanged."""
        self._model.load_named({str(name): _float32(name, value)
                                for name, value in state_dict.items()})

    def load(self, path):
        """Loads a safetensors state_dict (e.g. `safetensors.torch.save_file(module.state_dict(),
        path)`), float32 or float64."""
        self._model.load(os.fspath(path))

    def save(self, path):
        """Saves the parameters as a float32 safetensors state_dict, loadable by torch."""
        self._model.save(os.fspath(path))

    def stream(self, batch_size):
        """A `Stream` over `batch_size` sequences, state starting at zero (unidirectional)."""
        return Stream(self, self._model.stream(batch_size))


class RNN(_Recurrent):
    """torch.nn.RNN: nonlinearity 'tanh', 'relu' or 'identity' (no activation)."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, device=None,
                 seed=None):
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"invalid configuration: unknown nonlinearity {nonlinearity!r} "
                             f"(expected one of {', '.join(_NONLINEARITIES)})")
        self.nonlinearity = nonlinearity
        self._cell = "rnn_" + nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device=device, seed=seed)


class LSTM(_Recurrent):
    """torch.nn.LSTM (gates i, f, g, o); hx and the final state are (h, c) pairs."""

    _cell = "lstm"


class GRU(_Recurrent):
    """torch.nn.GRU (gates r, z, n; the reset gate multiplies W_hn h + b_hn)."""

    _cell = "gru"


class Tape:
    """A training forward: `output`, `hidden` (h_n, or (h_n, c_n)) and `backward`."""

    def __init__(self, module, tape, output, hidden):
        self._module = module
        self._tape = tape
        self.output = output
        self.hidden = hidden

    def __iter__(self):
        """Unpacks like the call: `output, hidden = module.forward(x, train=True)`."""
        return iter((self.output, self.hidden))

    def backward(self, grad_output, grad_h_n=None, grad_c_n=None):
        """Gradients of a loss from its gradients with respect to output, h_n and c_n (None:
        zero), as a dict: 'input', 'h_0', 'c_0' (LSTM) and every parameter by torch's name.
        Raises ValueError when the module's weights changed since the forward call."""
        params, grad_input, grad_h0, grad_c0 = self._tape.backward(
            _float32("grad_output", grad_output),
            None if grad_h_n is None else _float32("grad_h_n", grad_h_n),
            None if grad_c_n is None else _float32("grad_c_n", grad_c_n))
        grads = OrderedDict(input=grad_input, h_0=grad_h0)
        if grad_c0 is not None:
            grads["c_0"] = grad_c0
        grads.update(params)
        return grads


class Stream:
    """Streaming inference: `step(x)` runs x from the state the previous steps left (kept on
    the GPU for a GPU model). x is one step (B, I), or k steps (k, B, I) ((B, k, I) when the
    module is batch_first); the result has the same layout with H features."""

    def __init__(self, module, stream):
        self._module = module
        self._stream = stream

    def step(self, x):
        x = _float32("stream input", x)
        if x.ndim == 2:
            return self._stream.step(x[np.newaxis])[0]
        if x.ndim == 3 and self._module.batch_first:
            return self._stream.step(np.ascontiguousarray(x.swapaxes(0, 1))).swapaxes(0, 1)
        return self._stream.step(x)

    def state(self):
        """The current h, or (h, c) for an LSTM, each (L, B, H)."""
        h, c = self._stream.state()
        return self._module._hidden(h, c)

    def reset(self):
        """Sets the state back to zero."""
        self._stream.reset()


def from_torch(module, device=None):
    """A wgpu-rnn copy of a `torch.nn.RNN`, `LSTM` or `GRU` (configuration and weights)."""
    mode = getattr(module, "mode", None)
    kinds = {"LSTM": (LSTM, {}), "GRU": (GRU, {}),
             "RNN_TANH": (RNN, {"nonlinearity": "tanh"}),
             "RNN_RELU": (RNN, {"nonlinearity": "relu"})}
    if mode not in kinds:
        raise ValueError(f"from_torch takes a torch.nn.RNN, LSTM or GRU, got "
                         f"{type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"invalid configuration: proj_size = {module.proj_size} (LSTM "
                         f"projections) is not supported")
    cls, extra = kinds[mode]
    copy = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
               bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
               bidirectional=module.bidirectional, device=device, **extra)
    copy.load_state_dict(module.state_dict())
    return copy
