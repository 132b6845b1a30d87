#!/usr/bin/env python3
"""PyTorch baseline for `wgpu-rnn bench`: times torch.nn.RNN/LSTM/GRU on the same cases.

Writes the JSON schema that `wgpu-rnn bench --json` writes (a list with one object per case
and backend), so the two files can be concatenated and compared.

Timing: `reps` repetitions after `warmup`, each measured as wall time (time.perf_counter) from a
torch.cuda.synchronize() before the call to one after it ("timer": "wall"). Inputs, initial
states, weights and upstream gradients live on the device already, and outputs stay there:
unlike wgpu-rnn's default timing, no host<->device copies are included unless
--include-transfers is given (then the input is copied to the device and every result back to
the host inside the timed region, as wgpu-rnn's `forward` does).

On CUDA every case is run twice: strict fp32 (TF32 off for both cuDNN and matmul) and TF32;
the "tf32" key says which. On CPU only fp32 is run.

Examples:
    python3 benches/torch_baseline.py --out torch.json
    python3 benches/torch_baseline.py --cells lstm --batch 1 64 --hidden 1024 --modes fwd
    python3 benches/torch_baseline.py --device cpu --threads 2 --reps 5 --out torch_cpu.json
    python3 benches/torch_baseline.py --out torch.json --compare wgpu.json
    python3 benches/torch_baseline.py --compare wgpu.json --torch-json torch.json  # no torch needed
    scripts/cpu_compare.sh 2 5   # CPU against CPU at 2 threads, 5 alternating rounds
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# The default sweep of `wgpu-rnn bench` on a real GPU (src/bench.rs, `default_sweep(false)`):
# (B, H) pairs with I = H and T = 100, for each cell and mode.
DEFAULT_CELLS = ["rnn_tanh", "lstm", "gru"]
DEFAULT_SIZES = [(1, 256), (1, 1024), (64, 512), (64, 1024)]
DEFAULT_SEQ = 100
# Cell names as `wgpu-rnn bench --json` writes them, with their gate count G.
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def forward_flops(cell, batch, seq, inp, hidden, layers, bidirectional):
    """2*T*B*G*H*(I_l + H) per layer and direction; the formula in docs/PERFORMANCE.md."""
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        layer_in = inp if layer == 0 else directions * hidden
        total += directions * 2 * seq * batch * GATES[cell] * hidden * (layer_in + hidden)
    return float(total)


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_module(torch, cell, inp, hidden, layers, bidirectional):
    kwargs = dict(input_size=inp, hidden_size=hidden, num_layers=layers,
                  bidirectional=bidirectional)
    if cell.startswith("rnn_"):
        return torch.nn.RNN(nonlinearity=cell[len("rnn_"):], **kwargs)
    if cell == "lstm":
        return torch.nn.LSTM(**kwargs)
    if cell == "gru":
        return torch.nn.GRU(**kwargs)
    raise ValueError(f"unknown cell {cell!r} (expected one of {sorted(GATES)})")


def time_case(torch, device, cell, batch, seq, inp, hidden, layers, bidirectional, mode,
              reps, warmup, include_transfers, input_sets, seed):
    """Returns the list of per-repetition times in ms."""
    torch.manual_seed(seed)
    directions = 2 if bidirectional else 1
    module = make_module(torch, cell, inp, hidden, layers, bidirectional).to(device)
    state_shape = (layers * directions, batch, hidden)
    out_shape = (seq, batch, directions * hidden)
    train = mode == "fwdbwd"

    # Rotate between a few input sets so that caches do not flatter the figures.
    sets = []
    for _ in range(input_sets):
        x_host = torch.randn(seq, batch, inp)
        h0 = torch.randn(state_shape, device=device, requires_grad=train)
        c0 = torch.randn(state_shape, device=device, requires_grad=train)
        upstream = [torch.randn(out_shape, device=device), torch.randn(state_shape, device=device)]
        if cell == "lstm":
            upstream.append(torch.randn(state_shape, device=device))
        x_dev = x_host.to(device)
        sets.append((x_host, x_dev, h0, c0, upstream))

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_once(i):
        x_host, x_dev, h0, c0, upstream = sets[i % len(sets)]
        if include_transfers:
            x = x_host.to(device)
        else:
            x = x_dev
        if train:
            x = x.detach().requires_grad_(True)
            module.zero_grad(set_to_none=True)
            for state in (h0, c0):
                state.grad = None
        hx = (h0, c0) if cell == "lstm" else h0
        if train:
            out, state = module(x, hx)
            outputs = [out] + (list(state) if cell == "lstm" else [state])
            torch.autograd.backward(outputs, upstream)
            results = [x.grad, h0.grad] + [p.grad for p in module.parameters()]
            if cell == "lstm":
                results.append(c0.grad)
        else:
            with torch.no_grad():
                out, state = module(x, hx)
            results = [out] + (list(state) if cell == "lstm" else [state])
        if include_transfers:
            for r in results:
                r.cpu()

    for i in range(warmup):
        run_once(i)
    synchronize()
    times = []
    for i in range(reps):
        synchronize()
        start = time.perf_counter()
        run_once(i)
        synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return times


CASE_KEYS = ("cell", "B", "T", "I", "H", "layers", "bidirectional", "mode")


def load_records(path):
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        sys.exit(f"{path}: expected a JSON list of records")
    return records


def compare(wgpu_records, torch_records):
    """Prints one line per wgpu-rnn case: its GPU and CPU medians beside torch's, and the speed
    ratios (torch ms / wgpu-rnn ms, > 1: wgpu-rnn is faster) of the GPU against CUDA fp32 and of
    the CPU path against torch's CPU. Where several records share a case and side (rounds of
    scripts/cpu_compare.sh), each figure is the median of their medians."""
    def key(r):
        return tuple(r.get(k) for k in CASE_KEYS)

    def median_of(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def torch_ms(k, backend, tf32):
        return median_of(r["ms_median"] for r in torch_records
                         if r.get("lib") == "torch" and key(r) == k and r["backend"] == backend
                         and bool(r.get("tf32")) == tf32)

    def fmt(v):
        return f"{v:10.3f}" if v is not None else f"{'-':>10}"

    def ratio(theirs, ours):
        return f"{theirs / ours:8.2f}x" if theirs and ours else f"{'-':>9}"

    cases = []
    for r in wgpu_records:
        if key(r) not in cases:
            cases.append(key(r))
    threads = sorted({r.get("adapter", "") for r in wgpu_records + torch_records
                      if r.get("backend") == "cpu"})
    if threads:
        print("CPU sides: " + "; ".join(threads))
    print(f"{'case':<40} {'wgpu gpu':>10} {'wgpu cpu':>10} {'cuda fp32':>10} {'cuda tf32':>10} "
          f"{'torch cpu':>10} {'fp32/gpu':>9} {'tcpu/cpu':>9}  (median wall ms, to a device sync)")
    for k in cases:
        # wgpu-rnn's wall median (its ms_median may be timestamp GPU time): torch's is wall.
        def mine(backend):
            return median_of(r.get("ms_wall_median", r["ms_median"])
                             for r in wgpu_records if key(r) == k and r["backend"] == backend)
        gpu, cpu = mine("gpu"), mine("cpu")
        fp32, tf32 = torch_ms(k, "cuda", False), torch_ms(k, "cuda", True)
        torch_cpu = torch_ms(k, "cpu", False)
        cell, b, t, i, h, layers, bidir, mode = k
        label = f"{cell} B={b} T={t} I={i} H={h}" + (f" L={layers}" if layers != 1 else "")
        label += (" bi" if bidir else "") + f" {mode}"
        print(f"{label:<40} {fmt(gpu)} {fmt(cpu)} {fmt(fp32)} {fmt(tf32)} {fmt(torch_cpu)} "
              f"{ratio(fp32, gpu)} {ratio(torch_cpu, cpu)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=DEFAULT_CELLS, choices=sorted(GATES))
    parser.add_argument("--batch", nargs="+", type=int,
                        help="batch sizes (with --hidden: their cartesian product replaces the "
                             "default (B, H) pairs)")
    parser.add_argument("--hidden", nargs="+", type=int, help="hidden sizes; input size = hidden")
    parser.add_argument("--input", type=int, help="input size I (default: I = H)")
    parser.add_argument("--seq", type=int, default=DEFAULT_SEQ, help="sequence length T")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--input-sets", type=int, default=3,
                        help="distinct input sets rotated between repetitions")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--precision", choices=["both", "fp32", "tf32"], default="both",
                        help="on CUDA: strict fp32, TF32 or both (CPU is always fp32)")
    parser.add_argument("--include-transfers", action="store_true",
                        help="time host->device input copy and device->host result copies too")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON file to write (default: print to stdout)")
    parser.add_argument("--compare", metavar="WGPU_JSON",
                        help="after running, print these `wgpu-rnn bench --json` figures beside "
                             "torch's (cases are matched on cell, B, T, I, H, layers, "
                             "bidirectional, mode)")
    parser.add_argument("--torch-json", metavar="TORCH_JSON",
                        help="with --compare: take torch's figures from this file instead of "
                             "running torch")
    args = parser.parse_args()

    if args.torch_json:
        if not args.compare:
            parser.error("--torch-json needs --compare")
        compare(load_records(args.compare), load_records(args.torch_json))
        return

    for name in ("reps", "warmup", "seq", "layers", "input_sets"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")

    try:
        import torch
    except ImportError:
        sys.exit("torch_baseline.py needs PyTorch: pip install torch")

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            sys.exit("--device cuda given but torch.cuda.is_available() is False")
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.batch or args.hidden:
        sizes = list(itertools.product(args.batch or [1, 64], args.hidden or [256, 1024]))
    else:
        sizes = DEFAULT_SIZES

    if device.type == "cuda":
        precisions = {"both": [False, True], "fp32": [False], "tf32": [True]}[args.precision]
        adapter = torch.cuda.get_device_name(device)
        adapter_backend = f"cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}"
    else:
        precisions = [False]
        adapter = f"{cpu_name()} ({torch.get_num_threads()} threads)"
        adapter_backend = "cpu"

    commit = git_commit()
    records = []
    cases = list(itertools.product(args.cells, sizes, args.modes, precisions))
    for n, (cell, (batch, hidden), mode, tf32) in enumerate(cases, 1):
        inp = args.input or hidden
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
        times = time_case(torch, device, cell, batch, args.seq, inp, hidden, args.layers,
                          args.bidirectional, mode, args.reps, args.warmup,
                          args.include_transfers, args.input_sets, args.seed)
        flops = forward_flops(cell, batch, args.seq, inp, hidden, args.layers, args.bidirectional)
        if mode == "fwdbwd":
            flops *= 3.0
        median = statistics.median(times)
        record = {
            "lib": "torch",
            "version": torch.__version__,
            "backend": device.type,
            "adapter": adapter,
            "adapter_backend": adapter_backend,
            "cell": cell,
            "B": batch,
            "T": args.seq,
            "I": inp,
            "H": hidden,
            "layers": args.layers,
            "bidirectional": args.bidirectional,
            "mode": mode,
            "ms_median": median,
            "ms_min": min(times),
            "ms_mean": statistics.fmean(times),
            "reps": len(times),
            "warmup": args.warmup,
            "gflops": flops / (median * 1e-3) / 1e9,
            "timer": "wall",
            "includes_transfers": args.include_transfers,
            "max_rel_err": None,
            "git_commit": commit,
            "tf32": tf32,
        }
        records.append(record)
        print(f"[{n}/{len(cases)}] {cell} B={batch} T={args.seq} I={inp} H={hidden} {mode} "
              f"{'tf32' if tf32 else 'fp32'} {device.type}: median {median:.3f} ms, "
              f"min {min(times):.3f} ms, {record['gflops']:.1f} GFLOP/s", file=sys.stderr)

    text = json.dumps(records, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    elif not args.compare:
        print(text)
    if args.compare:
        compare(load_records(args.compare), records)


if __name__ == "__main__":
    main()
