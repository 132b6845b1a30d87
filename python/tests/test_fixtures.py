"""Every torch fixture (tests/fixtures/torch, see its README) through the Python API: outputs
within 1e-5 and gradients within 1e-4 relative, as `wgpu-rnn verify`."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import wgpu_rnn
from conftest import DEVICE_IDS, DEVICES, assert_close

FIXTURES = sorted((Path(__file__).parents[2] / "tests" / "fixtures" / "torch").glob("*.safetensors"))
OUTPUT_TOL = 1e-5
GRAD_TOL = 1e-4
PARAM_PREFIXES = ("weight_", "bias_")


def load_fixture(path):
    with safe_open(str(path), framework="numpy") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return meta, tensors


def build(meta, device):
    kwargs = dict(num_layers=meta["num_layers"], bias=meta["bias"],
                  bidirectional=meta["bidirectional"], device=device, seed=1)
    if meta["cell"] == "rnn":
        return wgpu_rnn.RNN(meta["input_size"], meta["hidden_size"],
                            nonlinearity=meta["nonlinearity"], **kwargs)
    cls = {"lstm": wgpu_rnn.LSTM, "gru": wgpu_rnn.GRU}[meta["cell"]]
    return cls(meta["input_size"], meta["hidden_size"], **kwargs)


def test_every_fixture_is_found():
    assert len(FIXTURES) >= 8, FIXTURES


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_forward_and_backward_match_torch(path, device):
    meta, t = load_fixture(path)
    model = build(meta, device)
    model.load_state_dict({k: v for k, v in t.items() if k.startswith(PARAM_PREFIXES)})
    lstm = meta["cell"] == "lstm"
    hx = None
    if meta["has_h0"]:
        hx = (t["h_0"], t["c_0"]) if lstm else t["h_0"]
    lengths = t.get("lengths")

    output, hidden = model(t["input"], hx, lengths=lengths)
    tape = model.forward(t["input"], hx, lengths=lengths, train=True)
    for got in (output, tape.output):
        assert got.dtype == np.float32
        assert_close("output", got, t["output"], OUTPUT_TOL)
    for h in (hidden, tape.hidden):
        assert_close("h_n", h[0] if lstm else h, t["h_n"], OUTPUT_TOL)
        if lstm:
            assert_close("c_n", h[1], t["c_n"], OUTPUT_TOL)

    grads = tape.backward(t["grad_output"], t.get("grad_h_n"), t.get("grad_c_n"))
    expected = {k[len("grad."):]: v for k, v in t.items() if k.startswith("grad.")}
    for name, value in expected.items():
        assert_close(f"grad.{name}", grads[name], value, GRAD_TOL)
    # Every parameter has a gradient, the fixture checks each.
    assert {k for k in grads if k.startswith(PARAM_PREFIXES)} == {
        k for k in expected if k.startswith(PARAM_PREFIXES)}
