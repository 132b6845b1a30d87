#!/usr/bin/env python3
"""Regenerates the PyTorch reference fixtures of tests/fixtures/torch/ (format: its README.md).

Each case stores float32 weights and inputs, and reference values (output, h_n, c_n and every
gradient) computed in float64 from exactly those float32 values. The loss that is differentiated is

    loss = sum(output * grad_output) + sum(h_n * grad_h_n) [+ sum(c_n * grad_c_n) for lstm]

Variable-length cases run through pack_padded_sequence(enforce_sorted=False) with an unsorted
batch; the padded output is zero for t >= lengths[b].

Usage: python scripts/make_torch_fixtures.py [--out tests/fixtures/torch] [--seed 0] [--case NAME ...]
Needs torch and safetensors.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file

# name: (cell, nonlinearity, num_layers, bidirectional, bias, batch, seq_len, input, hidden,
#        has_h0, lengths)
CASES = {
    "rnn_tanh_1layer": ("rnn", "tanh", 1, False, True, 3, 5, 4, 6, True, None),
    "rnn_relu_2layer_bidir": ("rnn", "relu", 2, True, True, 2, 4, 3, 5, True, None),
    "lstm_1layer_noh0": ("lstm", None, 1, False, True, 4, 6, 5, 8, False, None),
    "lstm_2layer_bidir": ("lstm", None, 2, True, True, 3, 7, 5, 8, True, None),
    "lstm_varlen": ("lstm", None, 1, False, True, 4, 6, 3, 5, True, [6, 3, 1, 5]),
    "gru_1layer": ("gru", None, 1, False, True, 3, 6, 5, 7, True, None),
    "gru_2layer_bidir": ("gru", None, 2, True, True, 2, 5, 4, 6, True, None),
    "gru_nobias": ("gru", None, 1, False, False, 2, 4, 3, 4, True, None),
}

LOSS = "sum(output*grad_output)+sum(h_n*grad_h_n)[+sum(c_n*grad_c_n)]"
LAYOUT = "seq_major (T, B, F)"


def build_module(cell, nonlinearity, num_layers, bidirectional, bias, input_size, hidden):
    common = dict(
        input_size=input_size,
        hidden_size=hidden,
        num_layers=num_layers,
        bias=bias,
        bidirectional=bidirectional,
    )
    if cell == "rnn":
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"torch.nn.RNN has no nonlinearity {nonlinearity!r}")
        return torch.nn.RNN(nonlinearity=nonlinearity, **common)
    if cell == "lstm":
        return torch.nn.LSTM(**common)
    if cell == "gru":
        return torch.nn.GRU(**common)
    raise ValueError(f"unknown cell {cell!r}")


def make_case(name, spec, seed):
    (cell, nonlinearity, num_layers, bidirectional, bias, batch, seq_len, input_size, hidden,
     has_h0, lengths) = spec
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    directions = 2 if bidirectional else 1
    states = (num_layers * directions, batch, hidden)

    # float32 values: these are what the file stores and what everything is computed from.
    module32 = build_module(cell, nonlinearity, num_layers, bidirectional, bias, input_size, hidden)
    params32 = {k: v.detach().clone().float().contiguous() for k, v in module32.state_dict().items()}
    x32 = torch.randn(seq_len, batch, input_size, generator=gen, dtype=torch.float32)
    h0_32 = torch.randn(*states, generator=gen, dtype=torch.float32) if has_h0 else None
    c0_32 = (torch.randn(*states, generator=gen, dtype=torch.float32)
             if has_h0 and cell == "lstm" else None)

    # The float64 reference run, from the float32 values.
    module = build_module(cell, nonlinearity, num_layers, bidirectional, bias, input_size, hidden)
    module = module.double()
    module.load_state_dict({k: v.double() for k, v in params32.items()})
    x = x32.double().requires_grad_(True)
    h0 = h0_32.double().requires_grad_(True) if h0_32 is not None else None
    c0 = c0_32.double().requires_grad_(True) if c0_32 is not None else None
    if cell == "lstm":
        state = (h0, c0) if has_h0 else None
    else:
        state = h0

    if lengths is not None:
        lengths_t = torch.tensor(lengths, dtype=torch.int64)
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths_t, enforce_sorted=False)
        packed_out, final = module(packed, state)
        output, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=seq_len)
    else:
        output, final = module(x, state)
    h_n, c_n = final if cell == "lstm" else (final, None)

    grad_output = torch.randn(output.shape, generator=gen, dtype=torch.float64)
    grad_h_n = torch.randn(h_n.shape, generator=gen, dtype=torch.float64)
    grad_c_n = torch.randn(c_n.shape, generator=gen, dtype=torch.float64) if c_n is not None else None
    loss = (output * grad_output).sum() + (h_n * grad_h_n).sum()
    if c_n is not None:
        loss = loss + (c_n * grad_c_n).sum()
    loss.backward()

    tensors = dict(params32)
    tensors["input"] = x32
    if h0_32 is not None:
        tensors["h_0"] = h0_32
    if c0_32 is not None:
        tensors["c_0"] = c0_32
    if lengths is not None:
        tensors["lengths"] = lengths_t
    tensors["output"] = output.detach()
    tensors["h_n"] = h_n.detach()
    tensors["grad_output"] = grad_output
    tensors["grad_h_n"] = grad_h_n
    if c_n is not None:
        tensors["c_n"] = c_n.detach()
        tensors["grad_c_n"] = grad_c_n
    for pname, p in module.named_parameters():
        tensors[f"grad.{pname}"] = p.grad.detach()
    tensors["grad.input"] = x.grad.detach()
    if h0 is not None:
        tensors["grad.h_0"] = h0.grad.detach()
    if c0 is not None:
        tensors["grad.c_0"] = c0.grad.detach()

    metadata = {
        "torch": torch.__version__,
        "cell": cell,
        "nonlinearity": nonlinearity,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "bias": bias,
        "batch": batch,
        "seq_len": seq_len,
        "input_size": input_size,
        "hidden_size": hidden,
        "has_h0": has_h0,
        "layout": LAYOUT,
        "loss": LOSS,
    }
    metadata = {k: json.dumps(v) for k, v in metadata.items()}
    return {k: v.contiguous() for k, v in tensors.items()}, metadata


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures/torch", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="base seed (case i uses seed + i)")
    parser.add_argument("--case", action="append", choices=sorted(CASES),
                        help="only these cases (repeatable); default: all")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for i, (name, spec) in enumerate(CASES.items()):
        if args.case and name not in args.case:
            continue
        tensors, metadata = make_case(name, spec, args.seed + i)
        path = os.path.join(args.out, f"{name}.safetensors")
        save_file(tensors, path, metadata=metadata)
        print(f"wrote {path}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
