"""Parity with torch: from_torch on every option, wgpu_rnn.torch gradients, a 50-step Adam
loop and PackedSequence batches. Needs torch (CI installs it)."""

import itertools
import os

import numpy as np
import pytest

# CI sets WGPU_RNN_REQUIRE_TORCH=1: there a missing torch fails instead of skipping.
torch = (__import__("torch") if os.environ.get("WGPU_RNN_REQUIRE_TORCH") == "1"
         else pytest.importorskip("torch"))
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import wgpu_rnn  # noqa: E402
import wgpu_rnn.torch as wt  # noqa: E402
from conftest import DEVICE_IDS, DEVICES, assert_close  # noqa: E402

CELLS = [("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}),
         ("GRU", {})]
CELL_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
# (num_layers, bidirectional, bias, batch_first): each option both ways, for every cell.
OPTIONS = [(1, False, True, False), (2, True, True, True), (2, False, False, False),
           (1, True, False, True)]


def torch_module(name, extra, seed, **kwargs):
    torch.manual_seed(seed)
    return getattr(nn, name)(**extra, **kwargs)


def states(name, num_layers, directions, batch, hidden, dtype=torch.float32):
    h0 = torch.randn(num_layers * directions, batch, hidden, dtype=dtype)
    if name == "LSTM":
        return (h0, torch.randn(num_layers * directions, batch, hidden, dtype=dtype))
    return h0


def flat(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "L{}-bi{:d}-bias{:d}-bf{:d}".format(*o))
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_from_torch_matches_torch_forward(cell, options, device):
    name, extra = cell
    num_layers, bidirectional, bias, batch_first = options
    module = torch_module(name, extra, 1, input_size=3, hidden_size=5, num_layers=num_layers,
                          bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    copy = wgpu_rnn.from_torch(module, device=device)
    x = torch.randn((2, 4, 3) if batch_first else (4, 2, 3))
    hx = states(name, num_layers, 1 + bidirectional, 2, 5)
    with torch.no_grad():
        expected, expected_hidden = module(x, hx)
    output, hidden = copy(x, hx)
    assert_close("output", output, expected, 1e-5)
    for got, want in zip(flat(hidden), flat(expected_hidden)):
        assert_close("state", got, want, 1e-5)


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_torch_module_gradients_match_torch(cell, device):
    name, extra = cell
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    reference = torch_module(name, extra, 2, **kwargs).double()
    module = getattr(wt, name)(**extra, **kwargs, adapter=device)
    module.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    torch.manual_seed(3)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    hx = states(name, 2, 2, 2, 4, torch.float64)
    upstream = [torch.randn(5, 2, 8, dtype=torch.float64)] + [
        torch.randn(4, 2, 4, dtype=torch.float64) for _ in flat(hx)]

    def run(rnn, dtype):
        inputs = [t.to(dtype).requires_grad_() for t in [x, *flat(hx)]]
        state = tuple(inputs[1:]) if name == "LSTM" else inputs[1]
        output, hidden = rnn(inputs[0], state)
        loss = sum((o * u.to(dtype)).sum() for o, u in zip([output, *flat(hidden)], upstream))
        params = list(rnn.parameters())
        return torch.autograd.grad(loss, inputs + params)

    names = ["input", "h_0", "c_0"][:1 + len(flat(hx))] + [n for n, _ in reference.named_parameters()]
    assert names[len(flat(hx)) + 1:] == [n for n, _ in module.named_parameters()]
    for grad_name, got, want in zip(names, run(module, torch.float32), run(reference, torch.float64)):
        assert got.dtype == torch.float32
        assert_close(f"grad {grad_name}", got, want, 1e-4)


def test_torch_module_is_initialised_and_named_like_torch():
    torch.manual_seed(4)
    reference = nn.GRU(3, 5, num_layers=2, bidirectional=True, bias=False)
    torch.manual_seed(4)
    module = wt.GRU(3, 5, num_layers=2, bidirectional=True, bias=False, adapter="cpu")
    assert list(reference.state_dict()) == list(module.state_dict())
    for (n, a), (_, b) in zip(reference.state_dict().items(), module.state_dict().items()):
        assert torch.equal(a, b), n
    module.load_state_dict(reference.state_dict())  # strict: same names and shapes
    reference.load_state_dict(module.state_dict())


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_adam_training_loop_matches_nn_lstm(device):
    def train(rnn_cls, **kwargs):
        torch.manual_seed(5)
        rnn = rnn_cls(4, 8, num_layers=2, batch_first=True, **kwargs)
        head = nn.Linear(8, 1)
        params = list(rnn.parameters()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=0.01)
        data = torch.Generator().manual_seed(6)
        x = torch.randn(4, 10, 4, generator=data)
        target = x.sum(dim=(1, 2)).unsqueeze(1) * 0.1
        losses = []
        for _ in range(50):
            optimizer.zero_grad()
            output, _ = rnn(x)
            loss = nn.functional.mse_loss(head(output[:, -1]), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return np.array(losses)

    expected = train(nn.LSTM)
    got = train(wt.LSTM, adapter=device)
    assert expected[-1] < 0.5 * expected[0], "the loop learns"
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_sequence_matches_torch(batch_first, device):
    reference = torch_module("LSTM", {}, 7, input_size=3, hidden_size=4, num_layers=2,
                             bidirectional=True, batch_first=batch_first)
    module = wt.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                     adapter=device)
    module.load_state_dict(reference.state_dict())
    lengths = torch.tensor([3, 6, 1, 6])
    padded = torch.randn((4, 6, 3) if batch_first else (6, 4, 3))
    hx = states("LSTM", 2, 2, 4, 4)

    def run(rnn):
        x = padded.clone().requires_grad_()
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        output, (h_n, c_n) = rnn(packed, hx)
        loss = (output.data ** 2).sum() + h_n.sum() + 2 * c_n.sum()
        loss.backward()
        return output, h_n, c_n, x.grad

    got, want = run(module), run(reference)
    assert torch.equal(got[0].batch_sizes, want[0].batch_sizes)
    assert torch.equal(got[0].unsorted_indices, want[0].unsorted_indices)
    for what, g, w in zip(["output", "h_n", "c_n", "grad input"],
                          [got[0].data, *got[1:]], [want[0].data, *want[1:]]):
        assert_close(what, g, w, 1e-4 if what.startswith("grad") else 1e-5)


def test_unbatched_input_and_no_grad():
    reference = torch_module("GRU", {}, 8, input_size=3, hidden_size=4)
    module = wt.GRU(3, 4, adapter="cpu")
    module.load_state_dict(reference.state_dict())
    x = torch.randn(5, 3)
    with torch.no_grad():
        output, h_n = module(x, torch.zeros(1, 4))
        expected, expected_h = reference(x, torch.zeros(1, 4))
    assert output.shape == (5, 4) and h_n.shape == (1, 4)
    assert_close("output", output, expected, 1e-5)
    assert_close("h_n", h_n, expected_h, 1e-5)


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(9)
    module = wt.LSTM(3, 4, num_layers=3, dropout=0.5, adapter="cpu")
    plain = wt.LSTM(3, 4, num_layers=3, adapter="cpu")
    plain.load_state_dict(module.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    module.eval()
    assert_close("eval output", module(x)[0].detach(), plain(x)[0].detach(), 1e-6)
    module.train()
    output, (h_n, _) = module(x)
    assert (output - plain(x)[0]).abs().max() > 1e-3, "dropout changes the training output"
    output.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_optimizer_step_reaches_the_device():
    module = wt.RNN(2, 3, adapter="cpu")
    x = torch.randn(4, 1, 2)
    before = module(x)[0].detach()
    with torch.no_grad():
        module.weight_hh_l0.mul_(0.5)
    after = module(x)[0].detach()
    reference = nn.RNN(2, 3)
    reference.load_state_dict(module.state_dict())
    assert (before - after).abs().max() > 1e-4
    assert_close("output after an in-place change", after, reference(x)[0].detach(), 1e-5)


def test_torch_bad_input_raises():
    module = wt.LSTM(3, 4, adapter="cpu")
    with pytest.raises(TypeError, match="tensor `input` has dtype torch.float64"):
        module(torch.zeros(2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="tensor `input` has shape"):
        module(torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="tensor `h0` has shape"):
        module(torch.zeros(2, 1, 3), (torch.zeros(2, 1, 4), torch.zeros(1, 1, 4)))
    with pytest.raises(ValueError, match="proj_size"):
        wgpu_rnn.from_torch(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="from_torch takes"):
        wgpu_rnn.from_torch(nn.Linear(3, 4))
