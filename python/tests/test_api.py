"""The numpy API without torch: streams, weights I/O, states, lengths and every error path."""

import threading
import time

import numpy as np
import pytest

import wgpu_rnn
from conftest import DEVICE_IDS, DEVICES, assert_close, randn

TOL = 1e-5


def test_version_and_adapters():
    assert wgpu_rnn.__version__.count(".") == 2
    for adapter in wgpu_rnn.adapters():
        assert set(adapter) == {"name", "backend", "device_type", "driver", "selected"}
    assert sum(a["selected"] for a in wgpu_rnn.adapters()) <= 1


def test_import_does_not_need_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import wgpu_rnn; "
            "wgpu_rnn.LSTM(2, 3, device='cpu')")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_gpu_and_cpu_agree_with_states_lengths_and_batch_first(device):
    rng = np.random.default_rng(3)
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True, seed=7)
    reference = wgpu_rnn.LSTM(4, 5, device="cpu", **kwargs)
    model = wgpu_rnn.LSTM(4, 5, device=device, **kwargs)
    assert model.device == "cpu" if device == "cpu" else model.device != "cpu"
    x, h0, c0 = randn(rng, 3, 6, 4), randn(rng, 4, 3, 5), randn(rng, 4, 3, 5)
    lengths = [6, 2, 4]
    out, (h_n, c_n) = model(x, (h0, c0), lengths=lengths)
    ref_out, (ref_h, ref_c) = reference(x, (h0, c0), lengths=lengths)
    assert out.shape == (3, 6, 10) and h_n.shape == (4, 3, 5)
    assert_close("output", out, ref_out, TOL)
    assert_close("h_n", h_n, ref_h, TOL)
    assert_close("c_n", c_n, ref_c, TOL)
    assert not out[1, 2:].any(), "outputs past a sequence's length are zero"


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
@pytest.mark.parametrize("cls", [wgpu_rnn.LSTM, wgpu_rnn.GRU, wgpu_rnn.RNN])
def test_stream_steps_equal_one_forward(cls, device):
    rng = np.random.default_rng(5)
    model = cls(3, 4, num_layers=2, device=device, seed=2)
    x = randn(rng, 7, 2, 3)
    full, hidden = model(x)
    stream = model.stream(2)
    parts = [stream.step(x[0]), stream.step(x[1:4]), stream.step(x[4:])]
    assert parts[0].shape == (2, 4)
    assert_close("stream output", np.concatenate([parts[0][None], *parts[1:]]), full, TOL)
    state = stream.state()
    for got, expected in zip(state if cls is wgpu_rnn.LSTM else [state],
                             hidden if cls is wgpu_rnn.LSTM else [hidden]):
        assert_close("stream state", got, expected, TOL)
    stream.reset()
    assert_close("after reset", stream.step(x[:2]), full[:2], TOL)


def test_stream_rejects_bidirectional_and_wrong_batch():
    model = wgpu_rnn.GRU(3, 4, bidirectional=True, device="cpu")
    with pytest.raises(NotImplementedError, match="bidirectional"):
        model.stream(2)
    stream = wgpu_rnn.GRU(3, 4, device="cpu").stream(2)
    with pytest.raises(ValueError, match="stream input"):
        stream.step(np.ones((1, 3, 3), np.float32))


@pytest.mark.parametrize("device", DEVICES, ids=DEVICE_IDS)
def test_save_load_round_trip_and_state_dict(tmp_path, device):
    rng = np.random.default_rng(9)
    source = wgpu_rnn.GRU(3, 4, num_layers=2, device=device, seed=11)
    path = tmp_path / "gru.safetensors"
    source.save(path)
    copy = wgpu_rnn.GRU(3, 4, num_layers=2, device=device, seed=12)
    x = randn(rng, 5, 2, 3)
    assert np.abs(copy(x)[0] - source(x)[0]).max() > 1e-3, "different seeds, different weights"
    copy.load(path)
    assert list(copy.state_dict()) == list(source.state_dict())
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(copy.state_dict()[name], value)
    assert_close("output", copy(x)[0], source(x)[0], 0)


def test_state_dict_names_are_torchs():
    model = wgpu_rnn.LSTM(3, 4, num_layers=2, bidirectional=True, device="cpu")
    names = list(model.state_dict())
    assert names[:5] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse"]
    assert model.state_dict()["weight_ih_l1"].shape == (16, 8)


def test_backward_after_new_weights_is_refused():
    model = wgpu_rnn.RNN(2, 3, device="cpu")
    x = np.ones((2, 1, 2), np.float32)
    tape = model.forward(x, train=True)
    tape.backward(np.ones((2, 1, 3), np.float32))
    model.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="weights changed"):
        tape.backward(np.ones((2, 1, 3), np.float32))


def test_threads_run_concurrently_without_errors():
    model = wgpu_rnn.LSTM(3, 4, device=DEVICES[0] if DEVICES[0] is None else "cpu")
    x = np.ones((4, 2, 3), np.float32)
    expected = model(x)[0]
    results = []

    def work():
        results.append(model(x)[0])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r, expected)


def test_the_gil_is_released_during_a_call():
    """A Python thread keeps running while the main thread is inside a long call."""
    model = wgpu_rnn.LSTM(64, 64, device="cpu")
    x = np.ones((2000, 16, 64), np.float32)
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=count)
    thread.start()
    time.sleep(0.05)  # sleeping releases the GIL: the counter's rate alone
    rate = counter[0] / 0.05
    before, start = counter[0], time.perf_counter()
    model(x)
    seconds = time.perf_counter() - start
    counted = counter[0] - before
    stop.set()
    thread.join()
    assert seconds > 0.05, "the call must be long enough to tell"
    assert counted > 0.1 * rate * seconds, (
        f"the counter ran {counted} times in a {seconds:.3f} s call, {rate:.0f}/s alone")


# Bad input: each a Python exception whose message names the tensor or option.

@pytest.fixture(scope="module")
def lstm():
    return wgpu_rnn.LSTM(3, 4, num_layers=2, device="cpu", seed=1)


X = np.ones((5, 2, 3), np.float32)
STATE = np.zeros((2, 2, 4), np.float32)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda m: m(X.astype(np.int32)), TypeError, "tensor `input` has dtype int32"),
    (lambda m: m(X[:, :, :2]), ValueError, r"tensor `input` has shape \[5, 2, 2\], expected \[5, 2, 3\]"),
    (lambda m: m(X[0]), ValueError, "tensor `input` must have 3 dimensions"),
    (lambda m: m(np.where(X > 0, np.nan, X)), ValueError, "tensor `input` holds a non-finite"),
    (lambda m: m(X, (STATE[:1], STATE)), ValueError, "tensor `h0` has shape"),
    (lambda m: m(X, (STATE, STATE[:, :1])), ValueError, "tensor `c0` has shape"),
    (lambda m: m(X, STATE), ValueError, r"hx of an LSTM must be a tuple \(h0, c0\)"),
    (lambda m: m(X, lengths=[5]), ValueError, "invalid lengths: 1 lengths given"),
    (lambda m: m(X, lengths=[5, 6]), ValueError, r"lengths\[1\] = 6 is outside 1..=5"),
    (lambda m: m(X, lengths=[5, -1]), ValueError, r"lengths\[1\] = -1 is negative"),
    (lambda m: m(X, lengths=[5.0, 1.0]), ValueError, "invalid lengths"),
    (lambda m: m.forward(X, train=True).backward(X), ValueError, "tensor `grad_output` has shape"),
    (lambda m: m.forward(X, train=True).backward(np.ones((5, 2, 4), np.float32), STATE[:1]),
     ValueError, "tensor `grad_h_n` has shape"),
    (lambda m: m.stream(0), ValueError, "batch size"),
    (lambda m: m.load("/nonexistent/w.safetensors"), OSError, "/nonexistent/w.safetensors"),
])
def test_bad_input_raises_naming_it(lstm, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(lstm)


@pytest.mark.parametrize("edit, pattern", [
    (lambda sd: sd.pop("bias_hh_l1"), "missing tensor `bias_hh_l1`"),
    (lambda sd: sd.update(weight_hh_l0=np.ones((16, 5), np.float32)),
     r"tensor `weight_hh_l0` has shape \[16, 5\], expected \[16, 4\]"),
    (lambda sd: sd.update(weight_ih_l2=np.ones((16, 4), np.float32)),
     "unexpected tensor `weight_ih_l2`"),
])
def test_bad_state_dict_raises_and_keeps_the_weights(lstm, edit, pattern):
    before = lstm.state_dict()
    state_dict = lstm.state_dict()
    edit(state_dict)
    with pytest.raises(ValueError, match=pattern):
        lstm.load_state_dict(state_dict)
    for name, value in lstm.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_numpy_integer_sizes_are_accepted():
    assert wgpu_rnn.GRU(np.int64(3), np.int32(4), device="cpu").hidden_size == 4


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="hidden_size must be"):
        wgpu_rnn.GRU(3, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        wgpu_rnn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        wgpu_rnn.GRU(3, 4, dropout=1.5, device="cpu")
    with pytest.raises(RuntimeError, match="no GPU adapter"):
        wgpu_rnn.GRU(3, 4, device="no such adapter xyz")
