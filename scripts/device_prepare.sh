#!/usr/bin/env bash
# Prepares a run on a lent GPU machine (no Rust toolchain there; see ../shared/GUIDE.md §6):
# builds the release binary and the GPU test binaries into devbin/ and downloads the Vulkan
# loader's .deb into .gl/ (both git-ignored). Then carry them: run(carry=["devbin", ".gl"],
# command="bash scripts/device_run.sh").
# BASE=<commit> also builds that commit's binary as devbin/base/wgpu-rnn, which device_run.sh
# then times on the target cases beside this one (an A/B of kernel changes on the same GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
rm -rf devbin && mkdir -p devbin
cp target/release/wgpu-rnn devbin/
for t in gpu_vs_cpu gpu_resident gpu_smoke train; do
    exe=$(cargo test --release --no-run --test "$t" --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    cp "$exe" "devbin/$t"
done
if [ -n "${BASE:-}" ]; then
    rm -rf /tmp/wgpu-rnn-base
    git worktree add --force --detach /tmp/wgpu-rnn-base "$BASE"
    (cd /tmp/wgpu-rnn-base && CARGO_TARGET_DIR=/tmp/wgpu-rnn-base-target cargo build --release)
    mkdir -p devbin/base
    cp /tmp/wgpu-rnn-base-target/release/wgpu-rnn devbin/base/
    git worktree remove --force /tmp/wgpu-rnn-base
fi
# Symbols off: the carry limit is 64 MiB.
find devbin -type f -exec strip {} +
if ! ls .gl/*.deb >/dev/null 2>&1; then
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1)
fi
du -sh devbin .gl
