#!/usr/bin/env bash
# wgpu-rnn's CPU path against PyTorch's CPU nn.RNN/LSTM/GRU at equal threads, alternating the
# two sides case group by case group for ROUNDS rounds, then one table of medians over the
# rounds with the speed ratio per case (torch ms / wgpu-rnn ms: > 1 means wgpu-rnn is faster).
#
#   scripts/cpu_compare.sh [THREADS [ROUNDS]]      (defaults: 2 threads, 5 rounds)
#
# Needs python3 with torch (pip install torch numpy). Writes its JSON under target/cpu_compare/.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
rounds=${2:-5}
reps=${REPS:-5}
warmup=${WARMUP:-2}
out=target/cpu_compare
mkdir -p "$out"
rm -f "$out"/*.json
cargo build --release --quiet
bin=target/release/wgpu-rnn
export WGPU_RNN_NUM_THREADS=$threads
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (dirty)'), $threads threads, $rounds rounds"
echo "load before: $(cat /proc/loadavg)"
# (B, T, H) groups, I = H.
groups=("1 100 256" "16 50 256" "64 50 512")
for round in $(seq "$rounds"); do
  for group in "${groups[@]}"; do
    read -r b t h <<<"$group"
    for cell in rnn lstm gru; do
      "$bin" bench --backend cpu --cell "$cell" --batch "$b" --seq "$t" --hidden "$h" \
        --reps "$reps" --warmup "$warmup" --json "$out/ours_${round}_${cell}_$b.json" >/dev/null
    done
    python3 benches/torch_baseline.py --device cpu --threads "$threads" --cells rnn_tanh lstm gru \
      --batch "$b" --hidden "$h" --seq "$t" --reps "$reps" --warmup "$warmup" \
      --out "$out/torch_${round}_$b.json" 2>/dev/null
  done
  echo "round $round done, load $(cut -d' ' -f1-3 /proc/loadavg)"
done
python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
for side in ("ours", "torch"):
    records = []
    for path in sorted(glob.glob(f"{out}/{side}_*.json")):
        with open(path, encoding="utf-8") as f:
            records += json.load(f)
    with open(f"{out}/{side}_all.json", "w", encoding="utf-8") as f:
        json.dump(records, f)
PY
python3 benches/torch_baseline.py --compare "$out/ours_all.json" --torch-json "$out/torch_all.json"
echo "load after: $(cat /proc/loadavg)"
