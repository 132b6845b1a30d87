#!/usr/bin/env bash
# Runs on the lent GPU machine with devbin/ and .gl/ carried (scripts/device_prepare.sh):
# adapter info, the torch fixtures on the GPU, the GPU tests, the issue #4 target cases and the
# default sweep, and PyTorch on the same cases, side by side; the forward targets with f16 W_hh;
# with devbin/base/ (BASE=… in device_prepare.sh) the target cases on that commit's binary too.
# Everything lands in $OUT.
# HIDDEN and SEQ (default 1024 and 100) shrink the target cases for a trial run elsewhere.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
# The test binaries were built in /work/main and find tests/ and shaders/ there.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
export WGPU_RNN_REQUIRE_GPU=1 WGPU_BACKEND=vulkan
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
devbin/wgpu-rnn info 2>&1 | tee "$OUT/info.txt"
devbin/wgpu-rnn verify --backend gpu tests/fixtures/torch/*.safetensors 2>&1 | tee "$OUT/verify.txt"
for t in gpu_smoke gpu_vs_cpu gpu_resident train; do
    devbin/$t --test-threads=1 2>&1 | tail -3 | tee -a "$OUT/tests.txt"
done
targets() {  # the issue #4 target cases: T=100, I=H=1024
    "$@" --cell lstm --batch 1 --mode fwd
    "$@" --cell lstm --batch 64 --mode fwd
    "$@" --cell gru --batch 64 --mode fwd
    "$@" --cell lstm --batch 64 --mode fwdbwd
}
HIDDEN=${HIDDEN:-1024} SEQ=${SEQ:-100}
run_ours() { devbin/wgpu-rnn bench --hidden "$HIDDEN" --seq "$SEQ" --reps 20 --warmup 5 \
    --json "$OUT/targets_$(date +%s%N).json" "$@" 2>&1 | tee -a "$OUT/targets.txt"; }
targets run_ours
# The forward targets again with W_hh in f16 (opt-in; its own tolerance).
for c in "lstm --batch 1" "lstm --batch 64" "gru --batch 64"; do
    # shellcheck disable=SC2086
    devbin/wgpu-rnn bench --cell $c --mode fwd --backend gpu --half-weights --hidden "$HIDDEN" \
        --seq "$SEQ" --reps 20 --warmup 5 2>&1 | tee -a "$OUT/targets_half.txt"
done
if [ -x devbin/base/wgpu-rnn ]; then  # the BASE commit's kernels, same cases, GPU only
    targets devbin/base/wgpu-rnn bench --backend gpu --hidden "$HIDDEN" --seq "$SEQ" --reps 20 \
        --warmup 5 2>&1 | tee -a "$OUT/targets_base.txt"
fi
python3 - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
records = [r for f in sorted(glob.glob(f"{out}/targets_*.json")) for r in json.load(open(f))]
json.dump(records, open(f"{out}/targets.json", "w"), indent=1)
PY
devbin/wgpu-rnn bench --json "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.txt"
python3 benches/torch_baseline.py --cells lstm gru --batch 1 64 --hidden "$HIDDEN" --seq "$SEQ" \
    --out "$OUT/torch_targets.json" --compare "$OUT/targets.json" 2>&1 | tee "$OUT/compare_targets.txt"
python3 benches/torch_baseline.py --out "$OUT/torch_sweep.json" --compare "$OUT/sweep.json" \
    2>&1 | tee "$OUT/compare_sweep.txt"
