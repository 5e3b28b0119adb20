#!/usr/bin/env bash
# The GPU benchmark suite: one command, about 8 minutes on one GPU, prints JSON lines and tables.
#
#   bash benchmarks/gpu_suite.sh [OUT_DIR]
#
# 1. Training step, ours vs the official algorithm in PyTorch (tests/reference/official_torch.py
#    on the same GPU, torch device "cuda"), at the paper config (3 models of widths 768/384/768,
#    6144 concepts, k = 32, 6272 rows) and at 4x the concepts (24576): rows/s of both and the ratio
#    (benchmarks/step_vs_official.py --config=paper,paper4x).
# 2. The loaders' rates feeding the GPU: the memmap store's prefetch to the device
#    (benchmarks/loader_throughput.py) and the Grain pipeline against the raw read rate of the
#    page cache and of the disk with 2 and 8 read threads and 2 worker processes, one round over
#    a 0.77 GB store (benchmarks/input_pipeline.py; its default is 3 rounds over 1.5 GB).
#
# What it needs beside this repository: jax with CUDA, torch, flax, optax, orbax-checkpoint,
# absl-py, grain and tensorstore. A machine without a network gets what is missing from wheels
# carried in ./wheels (made on a networked machine with
#   pip download --only-binary=:all: --python-version 3.X -d wheels grain absl-py ...),
# installed with --no-index --no-deps so that nothing already installed (jax, torch) changes.
# USAE_GPU_SUITE_ALLOW_CPU=1 runs it on the CPU (a smoke test of the script, e.g. with
# USAE_GPU_SUITE_CONFIGS=small USAE_GPU_SUITE_STEPS=1 USAE_GPU_SUITE_ROUNDS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_suite_out}}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# step_vs_official runs each side in its own process on the same GPU (and measures the GEMM
# rate in a third): no process may take 75% of the GPU's memory up front, as JAX does by default
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [[ -d wheels ]] && compgen -G "wheels/*.whl" >/dev/null; then
  python -m pip install -q --no-index --no-deps wheels/*.whl
fi
python - <<'EOF' | tee "$out/machine.txt"
import importlib.util, os, sys
import jax
missing = [m for m in ("torch", "flax", "optax", "orbax.checkpoint", "absl", "grain", "tensorstore")
           if importlib.util.find_spec(m.split(".")[0]) is None]
if missing:
    sys.exit(f"missing packages: {missing} (carry them as wheels in ./wheels)")
import torch
platform = jax.devices()[0].platform
print(f"jax {jax.__version__} on {jax.devices()}, torch {torch.__version__} "
      f"(cuda available: {torch.cuda.is_available()})")
if platform != "gpu" and os.environ.get("USAE_GPU_SUITE_ALLOW_CPU") != "1":
    sys.exit(f"jax runs on {platform}, not a GPU (USAE_GPU_SUITE_ALLOW_CPU=1 to run anyway)")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv \
  | tee -a "$out/machine.txt"

configs="${USAE_GPU_SUITE_CONFIGS:-paper,paper4x}"  # small: for the CPU smoke test
steps="${USAE_GPU_SUITE_STEPS:-10}"
rounds="${USAE_GPU_SUITE_ROUNDS:-3}"
# Each part has its own time limit so that one slow part cannot take the whole budget; a part
# that fails or runs out of time is reported and the next one still runs.
status=0
part() {  # part NAME SECONDS COMMAND...
  local name="$1" seconds="$2"
  shift 2
  if ! timeout "$seconds" "$@" | tee "$out/$name.txt"; then
    echo "PART $name FAILED OR TIMED OUT (limit ${seconds} s)" | tee -a "$out/$name.txt"
    status=1
  fi
}
part step_vs_official 330 python benchmarks/step_vs_official.py --config="$configs" \
  --steps="$steps" --rounds="$rounds"
part loader_throughput 45 python benchmarks/loader_throughput.py --steps=20
part input_pipeline 100 python benchmarks/input_pipeline.py --rows=100352 --rounds=1 --steps=6 \
  --threads=2,8 --workers=0,2
echo "results in $out"
exit "$status"
