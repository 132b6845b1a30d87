"""`torch.nn.Module` drop-ins for `nn.RNN`, `nn.LSTM` and `nn.GRU` that run on wgpu-rnn.

    import torch, wgpu_rnn.torch
    lstm = wgpu_rnn.torch.LSTM(8, 16, num_layers=2)   # instead of torch.nn.LSTM(8, 16, 2)
    output, (h_n, c_n) = lstm(torch.randn(10, 3, 8))
    output.sum().backward()                           # gradients from wgpu-rnn's backward

Constructor and call are torch's, plus `adapter=` (None: the default GPU adapter, "cpu": the CPU
reference, else a substring of an adapter's name). Parameters are `nn.Parameter`s with torch's
names, created and initialised in torch's order, so `state_dict()`, optimizers and an `nn.LSTM`
checkpoint work unchanged; PackedSequence and unbatched inputs are accepted as torch accepts them.
Dropout between layers (training mode) is torch's own `F.dropout`, applied between per-layer
wgpu-rnn models.

Cost of this first version: each call copies the input (and h0, c0) from torch to the host and
the outputs back, each backward the upstream gradients in and every gradient out; parameters are
uploaded again only after they change (an optimizer step), detected by their version counters.
Inputs on another torch device (e.g. CUDA) travel through the host as well.
"""

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _native

__all__ = ["RNN", "LSTM", "GRU"]

# torch loads triton lazily (e.g. in an optimizer's constructor). Loading triton's LLVM after
# the one of Mesa's software Vulkan driver (lavapipe) crashes the process; the other order works.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401


def _host(tensor):
    """A float32 numpy array holding `tensor` (None stays None)."""
    return None if tensor is None else tensor.detach().cpu().contiguous().numpy()


class _Stage:
    """One wgpu-rnn model over some of the module's layers, and the names of its parameters
    in the module (in the model's state_dict order)."""

    def __init__(self, model, first_layer, layers, rename):
        self.model = model
        self.first_layer = first_layer
        self.layers = layers
        self._rename = rename  # module name -> the model's name
        self.names = list(rename)
        self._synced = None

    def sync(self, params):
        """Uploads `params` unless the model already has exactly these tensors' values."""
        key = tuple((p.data_ptr(), p._version) for p in params)
        if key != self._synced:
            self.model.load_named({self._rename[name]: _host(p)
                                   for name, p in zip(self.names, params)})
            self._synced = key


class _Run(torch.autograd.Function):
    """Forward and backward of one stage through wgpu-rnn."""

    @staticmethod
    def forward(ctx, stage, lengths, input, h0, c0, *params):
        stage.sync(params)
        args = (_host(input), _host(h0), _host(c0), lengths)
        if any(ctx.needs_input_grad):
            output, h_n, c_n, ctx.tape = stage.model.forward_train(*args)
            ctx.save_for_backward(*params)  # torch then refuses in-place changes before backward
        else:
            output, h_n, c_n = stage.model.forward(*args)
        ctx.device = input.device
        ctx.has_states = (h0 is not None, c0 is not None)
        results = [torch.from_numpy(output), torch.from_numpy(h_n)]
        if c_n is not None:
            results.append(torch.from_numpy(c_n))
        return tuple(r.to(input.device) for r in results)

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n=None):
        params, grad_input, grad_h0, grad_c0 = ctx.tape.backward(
            _host(grad_output), _host(grad_h_n), _host(grad_c_n))
        has_h0, has_c0 = ctx.has_states

        def out(array, wanted=True):
            return torch.from_numpy(array).to(ctx.device) if wanted else None

        return (None, None, out(grad_input), out(grad_h0, has_h0),
                out(grad_c0, has_c0 and grad_c0 is not None),
                *(out(g) for _, g in params))


class _Recurrent(nn.Module):
    """What RNN, LSTM and GRU share; `_cell` names the cell for the library."""

    _cell = None
    _gates = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, adapter=None):
        super().__init__()
        if dtype not in (None, torch.float32):
            raise ValueError(f"invalid configuration: dtype {dtype} (wgpu-rnn computes in "
                             f"float32)")
        if not 0 <= dropout < 1:
            raise ValueError(f"invalid configuration: dropout must be in [0, 1), got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.adapter = adapter
        rows = self._gates * hidden_size
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self._directions * hidden_size
            shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, hidden_size),
                      "bias_ih": (rows,), "bias_hh": (rows,)}
            for name in self._layer_names(layer):
                setattr(self, name, nn.Parameter(torch.empty(shapes[name.split("_l")[0]], device=device)))
                self._flat_weights_names.append(name)
        self.reset_parameters()
        self._stages = self._build_stages()

    @property
    def _directions(self):
        return 2 if self.bidirectional else 1

    def _layer_names(self, layer, as_layer=None):
        """torch's names of `layer`'s parameters, in state_dict order; with `as_layer`, the
        names they have as that layer of another model."""
        tag = layer if as_layer is None else as_layer
        prefixes = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return [f"{prefix}_l{tag}{suffix}" for suffix in ["", "_reverse"][:self._directions]
                for prefix in prefixes]

    def _build_stages(self):
        """One wgpu-rnn model for the whole stack, or one per layer when there is dropout
        between layers."""
        per_layer = self.dropout > 0 and self.num_layers > 1
        spans = ([(layer, 1) for layer in range(self.num_layers)] if per_layer
                 else [(0, self.num_layers)])
        stages = []
        for first, count in spans:
            layer_input = self.input_size if first == 0 else self._directions * self.hidden_size
            model = _native.Model(self._cell, layer_input, self.hidden_size, count, self.bias,
                                  self.batch_first, self.bidirectional, 0.0, self.adapter, 0)
            rename = {name: renamed for layer in range(first, first + count)
                      for name, renamed in zip(self._layer_names(layer),
                                               self._layer_names(layer, layer - first))}
            stages.append(_Stage(model, first, count, rename))
        return stages

    def reset_parameters(self):
        """torch's init: every parameter from U(-1/sqrt(H), 1/sqrt(H)), in torch's order."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self):
        """Does nothing (torch's cuDNN weight packing has no counterpart here)."""

    def extra_repr(self):
        text = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False), ("adapter", None)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)!r}"
        return text

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            sequence = input
            input, lengths_tensor = pad_packed_sequence(sequence, batch_first=self.batch_first)
            lengths = [int(v) for v in lengths_tensor]
        unbatched = not packed and input.dim() == 2
        if unbatched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            hx = self._map_states(hx, lambda s: s.unsqueeze(1))
        if input.dtype != torch.float32:
            raise TypeError(f"tensor `input` has dtype {input.dtype}, expected torch.float32")
        h0, c0 = hx if self._cell == "lstm" and hx is not None else (hx, None)
        output, h_n, c_n = self._run(input, h0, c0, lengths)
        if packed:
            output = self._repack(output, sequence, lengths_tensor)
        hidden = (h_n, c_n) if self._cell == "lstm" else h_n
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            hidden = self._map_states(hidden, lambda s: s.squeeze(1))
        return output, hidden

    def _map_states(self, hx, f):
        if hx is None:
            return None
        return tuple(f(s) for s in hx) if isinstance(hx, tuple) else f(hx)

    def _run(self, input, h0, c0, lengths):
        """All stages, torch's dropout between them in training mode; (output, h_n, c_n)."""
        if len(self._stages) > 1:  # each stage checks its slice of the states: check them whole
            batch = input.shape[0 if self.batch_first else 1]
            expected = [self.num_layers * self._directions, batch, self.hidden_size]
            for name, state in (("h0", h0), ("c0", c0)):
                if state is not None and list(state.shape) != expected:
                    raise ValueError(f"tensor `{name}` has shape {list(state.shape)}, "
                                     f"expected {expected}")
        h_parts, c_parts = [], []
        for i, stage in enumerate(self._stages):
            rows = slice(stage.first_layer * self._directions,
                         (stage.first_layer + stage.layers) * self._directions)
            params = [getattr(self, name) for name in stage.names]
            stage_h0, stage_c0 = (s if s is None or len(self._stages) == 1 else s[rows]
                                  for s in (h0, c0))
            results = _Run.apply(stage, lengths, input, stage_h0, stage_c0, *params)
            input = results[0]
            h_parts.append(results[1])
            if len(results) == 3:
                c_parts.append(results[2])
            if i + 1 < len(self._stages) and self.training:
                input = F.dropout(input, self.dropout, training=True)
        return input, torch.cat(h_parts), torch.cat(c_parts) if c_parts else None

    def _repack(self, output, sequence, lengths):
        """The padded output as a PackedSequence with the input's batch order and sizes."""
        batch_dim = 0 if self.batch_first else 1
        if sequence.sorted_indices is not None:
            output = output.index_select(batch_dim, sequence.sorted_indices.to(output.device))
            lengths = lengths[sequence.sorted_indices.cpu()]
        data = pack_padded_sequence(output, lengths, batch_first=self.batch_first).data
        return PackedSequence(data, sequence.batch_sizes, sequence.sorted_indices,
                              sequence.unsorted_indices)


class RNN(_Recurrent):
    """torch.nn.RNN on wgpu-rnn; nonlinearity 'tanh', 'relu' or 'identity'."""

    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, adapter=None):
        if nonlinearity not in ("tanh", "relu", "identity"):
            raise ValueError(f"invalid configuration: unknown nonlinearity {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self._cell = "rnn_" + nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, adapter=adapter)

    def extra_repr(self):
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else text + f", nonlinearity={self.nonlinearity!r}"


class LSTM(_Recurrent):
    """torch.nn.LSTM on wgpu-rnn (no proj_size)."""

    _cell = "lstm"
    _gates = 4


class GRU(_Recurrent):
    """torch.nn.GRU on wgpu-rnn."""

    _cell = "gru"
    _gates = 3
