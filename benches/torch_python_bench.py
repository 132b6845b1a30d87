#!/usr/bin/env python3
"""wgpu_rnn (the Python package) against torch.nn on the cases of `wgpu-rnn bench`.

For each case, in one run: torch.nn.RNN/LSTM/GRU on CUDA when there is one, else on the CPU
(timed by `torch_baseline.time_case`), and `wgpu_rnn.LSTM/GRU/RNN` on the default adapter
(WGPU_BACKEND / WGPU_ADAPTER_NAME narrow it), called as a user calls it: numpy input, numpy
results, so every wgpu_rnn figure includes the host<->GPU transfers ("includes_transfers": true;
the CUDA baseline is timed with transfers too, for the same work).

The Python layer's overhead: at a small size (--overhead-case, default LSTM B=1 T=10 I=H=32,
forward), on the GPU and on the CPU reference, `model(x)` and the library's own forward call
beneath it (same uploads, GPU work and readback, timed inside Rust, no Python conversions) are
timed alternately --overhead-reps times; those records add "rust_ms_median" and
"python_overhead_ms" (median of the per-pair differences).

Writes the JSON schema of `wgpu-rnn bench --json` and `benches/torch_baseline.py` (one object
per case and library; "lib" is "torch" or "wgpu-rnn-python").

Examples:
    python3 benches/torch_python_bench.py --out python_bench.json            # the bench's sweep
    python3 benches/torch_python_bench.py --cells lstm --batch 1 8 --hidden 64 --seq 20 --reps 5
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_baseline as tb  # noqa: E402

import wgpu_rnn  # noqa: E402

# `wgpu-rnn bench`'s cell names -> (wgpu_rnn class, its extra constructor arguments).
CLASSES = {"rnn_tanh": (wgpu_rnn.RNN, {"nonlinearity": "tanh"}),
           "rnn_relu": (wgpu_rnn.RNN, {"nonlinearity": "relu"}),
           "lstm": (wgpu_rnn.LSTM, {}), "gru": (wgpu_rnn.GRU, {})}


def make_wgpu(cell, inp, hidden, layers, bidirectional, seed, device=None):
    cls, extra = CLASSES[cell]
    return cls(inp, hidden, num_layers=layers, bidirectional=bidirectional, seed=seed,
               device=device, **extra)


def time_wgpu(cell, batch, seq, inp, hidden, layers, bidirectional, mode, reps, warmup, seed):
    """The adapter's name and the per-repetition ms of wgpu_rnn's call."""
    model = make_wgpu(cell, inp, hidden, layers, bidirectional, seed)
    rng = np.random.default_rng(seed)
    directions = 2 if bidirectional else 1
    state_shape = (layers * directions, batch, hidden)
    x = rng.standard_normal((seq, batch, inp), dtype=np.float32)
    h0 = rng.standard_normal(state_shape, dtype=np.float32)
    hx = (h0, rng.standard_normal(state_shape, dtype=np.float32)) if cell == "lstm" else h0
    upstream = [rng.standard_normal((seq, batch, directions * hidden), dtype=np.float32),
                rng.standard_normal(state_shape, dtype=np.float32)]
    if cell == "lstm":
        upstream.append(rng.standard_normal(state_shape, dtype=np.float32))

    def run_once():
        if mode == "fwd":
            model(x, hx)
        else:
            model.forward(x, hx, train=True).backward(*upstream)

    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run_once()
        times.append((time.perf_counter() - start) * 1e3)
    return model.device, times


def time_overhead(batch, seq, inp, hidden, reps, seed, device):
    """ms of `model(x)` and of the Rust forward beneath it, timed alternately (LSTM)."""
    model = make_wgpu("lstm", inp, hidden, 1, False, seed, device)
    x = np.random.default_rng(seed).standard_normal((seq, batch, inp), dtype=np.float32)
    python_ms, rust_ms = [], []
    for _ in range(reps + 2):  # the first two pairs warm up
        start = time.perf_counter()
        model(x)
        python_ms.append((time.perf_counter() - start) * 1e3)
        rust_ms.append(model._model.time_forward(x, 1)[0] * 1e3)
    return model.device, python_ms[2:], rust_ms[2:]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=tb.DEFAULT_CELLS, choices=sorted(CLASSES))
    parser.add_argument("--batch", nargs="+", type=int,
                        help="batch sizes (with --hidden: their product replaces the default "
                             "(B, H) pairs)")
    parser.add_argument("--hidden", nargs="+", type=int, help="hidden sizes; input size = hidden")
    parser.add_argument("--seq", type=int, default=tb.DEFAULT_SEQ)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--overhead-case", nargs=4, type=int, metavar=("B", "T", "I", "H"),
                        default=[1, 10, 32, 32],
                        help="the LSTM forward case that measures the Python layer's overhead")
    parser.add_argument("--overhead-reps", type=int, default=100)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for a CPU baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file to write (default: stdout)")
    args = parser.parse_args()
    for name in ("reps", "seq", "layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be positive")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = device.type == "cuda"
    torch_adapter = (torch.cuda.get_device_name(device) if on_cuda
                     else f"{tb.cpu_name()} ({torch.get_num_threads()} threads)")
    selected = [a for a in wgpu_rnn.adapters() if a["selected"]]
    adapter_backend = selected[0]["backend"] if selected else "unknown"

    if args.batch or args.hidden:
        sizes = list(itertools.product(args.batch or [1, 64], args.hidden or [256, 1024]))
    else:
        sizes = tb.DEFAULT_SIZES
    cases = [(cell, b, args.seq, h, h, args.layers, args.bidirectional, mode)
             for cell, (b, h), mode in itertools.product(args.cells, sizes, args.modes)]

    commit = tb.git_commit()
    records = []

    def record(lib, version, backend, adapter, adapter_backend, shape, times, flops,
               transfers):
        median = statistics.median(times)
        records.append({"lib": lib, "version": version, "backend": backend, "adapter": adapter,
                        "adapter_backend": adapter_backend, **shape, "ms_median": median,
                        "ms_min": min(times), "ms_mean": statistics.fmean(times),
                        "reps": len(times), "warmup": args.warmup,
                        "gflops": flops / (median * 1e-3) / 1e9, "timer": "wall",
                        "includes_transfers": transfers, "max_rel_err": None,
                        "git_commit": commit})
        return records[-1]

    print(f"{'case':<36} {'torch ' + device.type:>11} {'wgpu_rnn':>10}  (median ms)",
          file=sys.stderr)
    for cell, batch, seq, inp, hidden, layers, bidirectional, mode in cases:
        shape = dict(cell=cell, B=batch, T=seq, I=inp, H=hidden, layers=layers,
                     bidirectional=bidirectional, mode=mode)
        flops = tb.forward_flops(cell, batch, seq, inp, hidden, layers, bidirectional)
        flops *= 3.0 if mode == "fwdbwd" else 1.0
        torch_ms = tb.time_case(torch, device, cell, batch, seq, inp, hidden, layers,
                                bidirectional, mode, args.reps, args.warmup, on_cuda, 1,
                                args.seed)
        adapter, wgpu_ms = time_wgpu(cell, batch, seq, inp, hidden, layers, bidirectional,
                                     mode, args.reps, args.warmup, args.seed)
        record("torch", torch.__version__, device.type, torch_adapter,
               f"cuda {torch.version.cuda}" if on_cuda else "cpu", shape, torch_ms, flops,
               on_cuda)
        record("wgpu-rnn-python", wgpu_rnn.__version__, "gpu", adapter, adapter_backend, shape,
               wgpu_ms, flops, True)
        print(f"{cell} B={batch} T={seq} I={inp} H={hidden} {mode}".ljust(36)
              + f" {statistics.median(torch_ms):11.3f} {statistics.median(wgpu_ms):10.3f}",
              file=sys.stderr)

    batch, seq, inp, hidden = args.overhead_case
    shape = dict(cell="lstm", B=batch, T=seq, I=inp, H=hidden, layers=1, bidirectional=False,
                 mode="fwd")
    flops = tb.forward_flops("lstm", batch, seq, inp, hidden, 1, False)
    print(f"Python layer overhead, LSTM B={batch} T={seq} I={inp} H={hidden} forward, "
          f"{args.overhead_reps} alternating pairs (median ms):", file=sys.stderr)
    for backend, device_arg, name_backend in (("gpu", None, adapter_backend),
                                              ("cpu", "cpu", "cpu")):
        adapter, python_ms, rust_ms = time_overhead(batch, seq, inp, hidden,
                                                    args.overhead_reps, args.seed, device_arg)
        r = record("wgpu-rnn-python", wgpu_rnn.__version__, backend, adapter, name_backend,
                   shape, python_ms, flops, backend == "gpu")
        r["rust_ms_median"] = statistics.median(rust_ms)
        r["python_overhead_ms"] = statistics.median(p - q for p, q in zip(python_ms, rust_ms))
        print(f"  {backend}: wgpu_rnn call {r['ms_median']:.4f}, Rust call "
              f"{r['rust_ms_median']:.4f}, overhead {r['python_overhead_ms']:.4f} "
              f"({r['python_overhead_ms'] / r['rust_ms_median']:.1%} of the Rust call)",
              file=sys.stderr)

    text = json.dumps(records, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
