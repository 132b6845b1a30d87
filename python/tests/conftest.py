"""Shared helpers: the device list, relative errors, seeded inputs."""

import os

import numpy as np
import pytest

import wgpu_rnn

try:
    # Before any GPU context: see the note on triton in wgpu_rnn/torch.py.
    import wgpu_rnn.torch  # noqa: F401
except ImportError:  # no torch: the torch tests skip
    pass


def _gpu_available():
    try:
        return any(a["selected"] for a in wgpu_rnn.adapters())
    except RuntimeError:
        return False


def _devices():
    """"cpu" always; None (the default adapter) when there is one. WGPU_RNN_REQUIRE_GPU=1 (CI)
    makes a missing adapter a failure instead of a skip."""
    if _gpu_available():
        return [None, "cpu"]
    if os.environ.get("WGPU_RNN_REQUIRE_GPU") == "1":
        raise RuntimeError("WGPU_RNN_REQUIRE_GPU=1 but wgpu finds no adapter")
    return [pytest.param(None, marks=pytest.mark.skip(reason="no GPU adapter")), "cpu"]


DEVICES = _devices()
DEVICE_IDS = ["gpu", "cpu"]


def _float64(array):
    """numpy float64 copy of a numpy array or torch tensor."""
    return np.asarray(array.detach() if hasattr(array, "detach") else array, dtype=np.float64)


def relative_error(got, expected):
    """||got - expected|| / ||expected|| in float64 (absolute when expected is zero)."""
    got, expected = _float64(got), _float64(expected)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    assert np.isfinite(got).all(), "result holds NaN or infinity"
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(got - expected)
    return diff / scale if scale > 0 else diff


def assert_close(name, got, expected, tol):
    err = relative_error(got, expected)
    max_abs = np.max(np.abs(_float64(got) - _float64(expected)), initial=0.0)
    assert err <= tol, f"{name}: ||d||/||ref|| = {err:.3g} > {tol:g} (max abs {max_abs:.3g})"


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)
